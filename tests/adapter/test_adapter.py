"""funcsparse.adapter against torch.ao.pruning: masks, state dicts, and where it does better."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings
from typing import Any

import pytest
import torch
import torch.ao.pruning as ao
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import funcsparse as fs
import funcsparse.adapter as fa
from funcsparse import schedules


def masks_of(sparsifier: Any) -> dict[str, torch.Tensor]:
    return {
        group["tensor_fqn"]: group["module"].parametrizations[group["tensor_name"]][0].mask.clone()
        for group in sparsifier.groups
    }


def tie_free_linear(
    width: int, height: int, generator: torch.Generator, block: tuple[int, int] = (1, 1)
) -> nn.Linear:
    """A linear layer whose weights leave no ties for WeightNorm, for ``norm`` 1 and 2.

    Block ``b`` of the ``block`` grid (edge blocks partial) gets a distinct id from a random
    permutation, its entries the magnitudes ``id * 64 + e`` for distinct ``e`` in 1..16, with
    random signs. Block means of ``|w|`` and of ``w * w`` then lie in disjoint intervals per
    id, entries rank by ``e`` within a block, and this still holds for the weights a second
    step sees (selected entries zeroed): every gap is far above float32 rounding, whatever
    order a sum is taken in. (Magnitudes that are multiples of ``1/n`` tie under the L1
    norm: 1 + 4 == 2 + 3.)
    """
    rows, cols = block
    grid_rows, grid_cols = -(-height // rows), -(-width // cols)
    ids = torch.randperm(grid_rows * grid_cols, generator=generator).view(grid_rows, grid_cols)
    rank = torch.empty(grid_rows * rows, grid_cols * cols)
    for r in range(grid_rows):
        for c in range(grid_cols):
            rank[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] = (
                torch.randperm(rows * cols, generator=generator).view(rows, cols).float() + 1
            )
    magnitudes = (ids.float() + 1).repeat_interleave(rows, 0).repeat_interleave(cols, 1) * 64
    magnitudes = (magnitudes + rank)[:height, :width]
    signs = torch.randint(0, 2, (height, width), generator=generator).float() * 2 - 1
    layer = nn.Linear(width, height, bias=False)
    with torch.no_grad():
        layer.weight.copy_(magnitudes * signs / 2**14)
    return layer


@st.composite
def models_and_configs(
    draw: st.DrawFn,
) -> tuple[int, list[tuple[int, int]], list[dict[str, Any]], int]:
    n_layers = draw(st.integers(1, 4))
    shapes, configs = [], []
    for i in range(n_layers):
        rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 4))
        size = rows * cols
        zeros = draw(st.integers(0, size))
        # Blocks must divide the weight when 0 < zeros < size: the adapter refuses the shape
        # (padding would stand in for real zeros; torch.ao crashes or keeps a padded mask).
        divisible = zeros not in (0, size) or draw(st.booleans())
        height = rows * draw(st.integers(1, 4)) + (
            0 if divisible else draw(st.integers(0, rows - 1))
        )
        width = cols * draw(st.integers(1, 4)) + (
            0 if divisible else draw(st.integers(0, cols - 1))
        )
        shapes.append((width, height))
        configs.append(
            {
                "tensor_fqn": f"{i}.weight",
                "sparsity_level": draw(st.sampled_from([-0.5, 0.0, 0.3, 0.5, 0.75, 1.0, 1.5])),
                "sparse_block_shape": (rows, cols),
                "zeros_per_block": zeros,
            }
        )
    return draw(st.integers(0, 2**31 - 1)), shapes, configs, draw(st.sampled_from([1, 2]))


def prepared(
    pruning: Any, seed: int, shapes: list[tuple[int, int]], configs: list[dict[str, Any]], norm: int
) -> tuple[nn.Module, Any]:
    generator = torch.Generator().manual_seed(seed)
    blocks = [tuple(config["sparse_block_shape"]) for config in configs]
    model = nn.Sequential(
        *(tie_free_linear(w, h, generator, b) for (w, h), b in zip(shapes, blocks, strict=True))
    )
    sparsifier = pruning.WeightNormSparsifier(norm=norm)
    sparsifier.prepare(model, copy.deepcopy(configs))
    return model, sparsifier


class TestDifferential:
    @given(models_and_configs())
    def test_masks_after_step_equal_torch_ao(
        self, case: tuple[int, list[tuple[int, int]], list[dict[str, Any]], int]
    ) -> None:
        seed, shapes, configs, norm = case
        _, ours = prepared(fa, seed, shapes, configs, norm)
        _, theirs = prepared(ao, seed, shapes, configs, norm)
        ours.step()
        theirs.step()
        assert masks_of(ours).keys() == masks_of(theirs).keys()
        for fqn, mask in masks_of(theirs).items():
            assert torch.equal(masks_of(ours)[fqn], mask), fqn
        # A second step at a higher level scores the masked weights, as torch.ao does.
        for sparsifier in (ours, theirs):
            for group in sparsifier.groups:
                group["sparsity_level"] = min(1.0, group["sparsity_level"] + 0.2)
            sparsifier.step()
        for fqn, mask in masks_of(theirs).items():
            assert torch.equal(masks_of(ours)[fqn], mask), fqn

    def test_nearly_diagonal_and_callable_norm(self) -> None:
        generator = torch.Generator().manual_seed(3)
        for make in (
            lambda p: p.NearlyDiagonalSparsifier(nearliness=3),
            lambda p: p.WeightNormSparsifier(
                sparsity_level=0.6, sparse_block_shape=(2, 2), norm=torch.abs
            ),
        ):
            results = []
            for pruning in (ao, fa):
                model = nn.Sequential(tie_free_linear(12, 8, generator.manual_seed(3)))
                sparsifier = make(pruning)
                sparsifier.prepare(model, None)
                sparsifier.step()
                results.append(masks_of(sparsifier)["0.weight"])
            assert torch.equal(results[0], results[1])


class TestStateDict:
    def _pair(self) -> tuple[Any, Any]:
        def build(pruning: Any, seed: int) -> Any:
            model = nn.Sequential(
                tie_free_linear(8, 6, torch.Generator().manual_seed(seed)),
                tie_free_linear(6, 4, torch.Generator().manual_seed(seed + 1)),
            )
            sparsifier = pruning.WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 2))
            sparsifier.prepare(model, None)
            return sparsifier

        return build, None

    def test_ours_survives_weights_only_and_loads_into_torch_ao(self) -> None:
        build, _ = self._pair()
        ours = build(fa, 0)
        ours.step()
        buffer = io.BytesIO()
        torch.save(ours.state_dict(), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        theirs = build(ao, 10)
        theirs.load_state_dict(loaded)
        assert [{k: v for k, v in g.items() if k != "module"} for g in theirs.groups] == [
            {k: v for k, v in g.items() if k != "module"} for g in ours.groups
        ]
        for fqn, mask in masks_of(ours).items():
            assert torch.equal(masks_of(theirs)[fqn], mask)

    def test_torch_aos_state_dict_is_refused_by_weights_only(self) -> None:
        build, _ = self._pair()
        theirs = build(ao, 0)
        theirs.step()
        buffer = io.BytesIO()
        torch.save(theirs.state_dict(), buffer)
        buffer.seek(0)
        with pytest.raises(pickle.UnpicklingError):  # torch.ao's state is a defaultdict
            torch.load(buffer, weights_only=True)

    def test_torch_aos_state_dict_loads_into_ours_without_being_mutated(self) -> None:
        build, _ = self._pair()
        theirs = build(ao, 0)
        theirs.step()
        state_dict = theirs.state_dict()
        ours = build(fa, 10)
        ours.load_state_dict(state_dict)
        assert all("mask" in entry for entry in state_dict["state"].values())  # torch.ao pops them
        for fqn, mask in masks_of(theirs).items():
            assert torch.equal(masks_of(ours)[fqn], mask)
            assert "mask" not in ours.state[fqn]  # as torch.ao: the masks live in the modules
        assert [g["tensor_fqn"] for g in ours.groups] == [g["tensor_fqn"] for g in theirs.groups]
        # Later steps on one sparsifier do not touch the other's masks.
        before = masks_of(theirs)
        ours.groups[0]["sparsity_level"] = 0.9
        ours.step()
        assert all(torch.equal(masks_of(theirs)[k], v) for k, v in before.items())

    def test_state_dict_of_another_model_is_refused_and_nothing_changes(self) -> None:
        build, _ = self._pair()
        ours = build(fa, 0)
        ours.step()
        before_masks, before_groups = (
            masks_of(ours),
            copy.deepcopy([{k: v for k, v in g.items() if k != "module"} for g in ours.groups]),
        )
        other = nn.Sequential(nn.Linear(8, 5, bias=False), nn.Linear(5, 4, bias=False))
        donor = fa.WeightNormSparsifier()
        donor.prepare(other, None)
        with pytest.raises(
            ValueError,
            match=r"load_state_dict: the mask for '0\.weight' has shape \(5, 8\), the tensor \(6, 8\)",
        ):
            ours.load_state_dict(donor.state_dict())
        donor_bigger = fa.WeightNormSparsifier()
        donor_bigger.prepare(nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(4, 4)), None)
        with pytest.raises(
            ValueError,
            match=r"load_state_dict: tensor_fqn '2\.weight' names no tensor of the Sequential",
        ):
            ours.load_state_dict(donor_bigger.state_dict())
        assert all(torch.equal(masks_of(ours)[k], v) for k, v in before_masks.items())
        assert [{k: v for k, v in g.items() if k != "module"} for g in ours.groups] == before_groups


class TestBadInput:
    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))

    @pytest.mark.parametrize(
        ("config", "error", "message"),
        [
            (
                [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "1.weight"}],
                ValueError,
                r"tensor_fqn '1\.weight' names no tensor of the Sequential",
            ),
            ([{"tensor_fqn": "3.wieght"}], ValueError, r"tensor_fqn '3\.wieght' names no tensor"),
            (["0.weight"], TypeError, "config elements should be dicts"),
            ({"tensor_fqn": "0.weight"}, TypeError, "config must be None or a list of dicts"),
            (
                [{"tensor_fqn": "0.weight", "module_fqn": "2"}],
                ValueError,
                r"config for '0\.weight' gives module_fqn='2'",
            ),
            ([{"sparsity_level": 0.5}], ValueError, "needs a 'tensor_fqn'"),
            (
                [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "0.weight"}],
                ValueError,
                r"'0\.weight' is configured twice",
            ),
        ],
    )
    def test_prepare_refuses_and_changes_nothing(
        self, config: Any, error: type[Exception], message: str
    ) -> None:
        model = self.model()
        sparsifier = fa.WeightNormSparsifier()
        with pytest.raises(error, match=message):
            sparsifier.prepare(model, config)
        assert sparsifier.groups == [] and sparsifier.state == {}
        assert not any(hasattr(m, "parametrizations") for m in model.modules())

    def test_bad_group_is_refused_at_prepare_and_at_step_changing_nothing(self) -> None:
        config = [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight", "zeros_per_block": 3}]
        model = self.model()
        sparsifier = fa.WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 2))
        with pytest.raises(
            ValueError,
            match=r"WeightNormSparsifier\.prepare: group '2\.weight': .*Number of zeros per "
            r"block cannot be more.*zeros_per_block=3",
        ):
            sparsifier.prepare(model, copy.deepcopy(config))
        assert sparsifier.groups == [] and not hasattr(model[0], "parametrizations")
        # A config changed after prepare is refused by step, before any mask is written.
        sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
        sparsifier.groups[1]["zeros_per_block"] = 3
        with pytest.raises(
            ValueError,
            match=r"WeightNormSparsifier\.step: group '2\.weight': .*Number of zeros per block",
        ):
            sparsifier.step()
        assert all(bool(m.all()) for m in masks_of(sparsifier).values())  # '0.weight' too
        theirs = ao.WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 2))
        theirs.prepare(self.model(), config)
        with pytest.raises(ValueError, match="Number of zeros per block cannot be more"):
            theirs.step()
        assert not bool(masks_of(theirs)["0.weight"].all())  # torch.ao: half-updated

    def test_norm_error_is_torch_aos(self) -> None:
        for pruning in (ao, fa):
            with pytest.raises(NotImplementedError, match="L-3 is not yet implemented"):
                pruning.WeightNormSparsifier(norm=3)
        with pytest.raises(ValueError, match="L-3 is not yet implemented"):  # and a ValueError
            fa.WeightNormSparsifier(norm=3)

    def test_scheduler_needs_our_sparsifier(self) -> None:
        with pytest.raises(
            TypeError, match=r"is not an instance of funcsparse\.adapter\.BaseSparsifier"
        ):
            fa.LambdaSL(ao.WeightNormSparsifier(), lambda epoch: 1.0)


class TestBetterThanTorchAO:
    def prepared(self, **kwargs: Any) -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
        sparsifier = fa.WeightNormSparsifier(sparsity_level=0.5, **kwargs)
        sparsifier.prepare(model, None)
        sparsifier.step()
        return model, sparsifier

    def test_bool_masks_take_one_byte_and_give_the_same_model(self) -> None:
        model, _ = self.prepared()
        bool_model, bool_sparsifier = self.prepared(mask_dtype=torch.bool)
        for mask in masks_of(bool_sparsifier).values():
            assert mask.dtype == torch.bool and mask.element_size() == 1
        x = torch.randn(5, 16)
        assert torch.equal(model(x), bool_model(x))
        assert (
            bool_sparsifier.state["0.weight"]["mask"]
            is bool_model[0].parametrizations.weight[0].mask
        )

    def test_prepared_model_and_sparsifier_deepcopy_and_pickle(self) -> None:
        model, sparsifier = self.prepared()
        x = torch.randn(3, 16)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(x), model(x))
            assert torch.equal(
                clone[0].parametrizations.weight[0].mask, model[0].parametrizations.weight[0].mask
            )
        revived = pickle.loads(pickle.dumps(sparsifier))
        revived.groups[0]["sparsity_level"] = 0.75
        revived.step()
        assert float(masks_of(revived)["0.weight"].mean()) == 0.25
        assert float(masks_of(sparsifier)["0.weight"].mean()) == 0.5  # the original is untouched
        theirs = ao.WeightNormSparsifier()
        theirs.prepare(nn.Sequential(nn.Linear(4, 4)), None)
        with pytest.raises(RuntimeError, match="Serialization of parametrized modules"):
            pickle.dumps(theirs)  # torch.ao: neither the model nor the sparsifier pickles

    def test_prepared_model_compiles_with_fullgraph(self) -> None:
        model, _ = self.prepared()
        x = torch.randn(3, 16)
        assert torch.allclose(torch.compile(model, fullgraph=True)(x), model(x))

    def test_squash_leaves_plain_modules(self) -> None:
        model, sparsifier = self.prepared()
        masks = masks_of(sparsifier)
        sparsifier.squash_mask()
        assert type(model[0]) is nn.Linear
        assert torch.equal(model[0].weight == 0, masks["0.weight"] == 0)
        pickle.loads(pickle.dumps(model))


class TestSchedules:
    @given(
        st.floats(0.0, 1.0),
        st.floats(0.0, 1.0),
        st.integers(-5, 60),
        st.integers(0, 10),
        st.integers(1, 5),
        st.integers(1, 8),
        st.booleans(),
    )
    def test_cubic_equals_torch_ao(
        self, s_0: float, s_f: float, t: int, t_0: int, dt: int, n: int, zero: bool
    ) -> None:
        expected = ao.CubicSL.sparsity_compute_fn(s_0, s_f, t, t_0, dt, n, zero)
        got = schedules.cubic_sparsity(
            t,
            initial_sparsity=s_0,
            final_sparsity=s_f,
            initial_step=t_0,
            delta_steps=dt,
            total_steps=n,
            initially_zero=zero,
        )
        assert got == expected

    @pytest.mark.parametrize("scheduler", ["cubic", "lambda"])
    def test_scheduler_levels_follow_torch_ao(self, scheduler: str) -> None:
        levels: list[list[float]] = []
        for pruning in (ao, fa):
            model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
            sparsifier = pruning.WeightNormSparsifier()
            sparsifier.prepare(
                model,
                [
                    {"tensor_fqn": "0.weight", "sparsity_level": 0.8},
                    {"tensor_fqn": "1.weight", "sparsity_level": 0.4},
                ],
            )
            if scheduler == "cubic":
                sched = pruning.CubicSL(sparsifier, init_sl=0.1, init_t=2, delta_t=2, total_t=3)
            else:
                factors = [lambda e: e / 10, lambda e: math.sqrt(e)]
                sched = pruning.LambdaSL(sparsifier, factors)
            trace = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(12):
                    sparsifier.step()
                    sched.step()
                    trace.extend(sched.get_last_sl())
            levels.append(trace)
        assert levels[0] == levels[1]


def test_funcsparse_masks_match_the_adapters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    sparsifier = fa.WeightNormSparsifier(
        sparsity_level=0.5, sparse_block_shape=(1, 4), mask_dtype=torch.bool
    )
    sparsifier.prepare(model, None)
    sparsifier.step()
    functional = fs.compute_masks(
        params, {"*.weight": fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 4))}
    )
    for fqn, mask in masks_of(sparsifier).items():
        assert torch.equal(mask, functional[fqn])
