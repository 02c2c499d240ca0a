"""Magnitude: pinned masks, bit-for-bit agreement with nn.utils.prune, prev_mask, errors, vmap."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils import prune

import funcsparse as fs
from funcsparse.methods.magnitude import Magnitude
from funcsparse.testing import check_leaf_mask, check_masks
from tests.helpers import holder, levels, prune_amount, pruned_count, tie_free

SHAPES = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
FLOATS = st.sampled_from([torch.float32, torch.float64])


def prune_mask(module: nn.Module) -> Tensor:
    mask: Tensor = module.weight_mask
    return mask.bool()


class TestPinned:
    W = torch.tensor([[0.5, -2.0, 0.1], [3.0, -0.2, 1.0]])

    def test_fraction_prunes_lowest_absolute_values(self) -> None:
        assert Magnitude(sparsity=0.5)(self.W).tolist() == [
            [False, True, False],
            [True, False, True],
        ]

    def test_count(self) -> None:
        assert Magnitude(count=2)(self.W).tolist() == [[True, True, False], [True, False, True]]

    def test_fraction_rounds_half_to_even_like_prune(self) -> None:
        # 0.25 * 6 = 1.5 rounds to 2; 0.5 * 5 = 2.5 rounds to 2; 0.1 * 5 = 0.5 rounds to 0.
        assert int((~Magnitude(sparsity=0.25)(self.W)).sum()) == 2
        assert int((~Magnitude(sparsity=0.5)(torch.arange(1.0, 6.0))).sum()) == 2
        assert int((~Magnitude(sparsity=0.1)(torch.arange(1.0, 6.0))).sum()) == 0

    @pytest.mark.parametrize(
        ("level", "zeros"),
        [
            ({"count": 0}, 0),
            ({"sparsity": 0.0}, 0),
            ({"sparsity": 1.0}, 6),
            ({"count": 6}, 6),
            ({"count": 1}, 1),
        ],
    )
    def test_edges(self, level: dict[str, float], zeros: int) -> None:
        mask = Magnitude(**level)(self.W)
        assert mask.dtype == torch.bool and mask.shape == self.W.shape
        assert int((~mask).sum()) == zeros

    def test_count_one_is_one_entry_and_sparsity_one_is_everything(self) -> None:
        assert int((~Magnitude(count=1)(self.W)).sum()) == 1
        assert int((~Magnitude(sparsity=1.0)(self.W)).sum()) == 6

    def test_level_may_be_positional(self) -> None:
        assert Magnitude(0.5) == Magnitude(sparsity=0.5)
        assert torch.equal(Magnitude(0.5)(self.W), Magnitude(sparsity=0.5)(self.W))

    def test_any_shape(self) -> None:
        assert Magnitude(count=1)(torch.tensor(-3.0)).tolist() is False
        w = torch.tensor([[[4.0, -1.0], [2.0, 3.0]]])
        assert Magnitude(count=2)(w).tolist() == [[[True, False], [False, True]]]
        assert Magnitude(sparsity=0.5)(torch.empty(0, 3)).shape == (0, 3)

    def test_ties_prune_lower_flat_index_first_and_nan_is_kept(self) -> None:
        w = torch.tensor([1.0, -1.0, 1.0, math.nan, 1.0])
        assert Magnitude(count=2)(w).tolist() == [False, False, True, True, True]
        assert Magnitude(count=4)(w).tolist() == [False, False, False, True, False]

    def test_scores_rank_as_given_signed(self) -> None:
        # The lowest score is pruned first, sign included: -9 and -7 go before 0.1.
        scores = torch.tensor([[-9.0, 0.1, 5.0], [0.2, -7.0, 0.3]])
        mask = Magnitude(count=3)(self.W, scores=scores)
        assert mask.tolist() == [[False, False, True], [True, False, True]]
        # abs(scores) reproduces the old (and nn.utils.prune's) ranking by |score|.
        mask = Magnitude(count=3)(self.W, scores=scores.abs())
        assert mask.tolist() == [[True, False, True], [False, True, False]]

    def test_movement_scores_prune_the_most_negative_first(self) -> None:
        w = torch.tensor([5.0, 5.0, 5.0, 5.0])
        scores = torch.tensor([-3.0, 1.0, 2.0, 4.0])
        assert Magnitude(count=1)(w, scores=scores).tolist() == [False, True, True, True]
        assert Magnitude(count=2)(w, scores=scores).tolist() == [False, False, True, True]
        # Weights themselves still rank by |w|: -3 is the largest magnitude here.
        assert Magnitude(count=1)(scores).tolist() == [True, False, True, True]

    def test_prev_mask_total_target(self) -> None:
        prev = torch.tensor([[True, True, True], [False, True, True]])  # 3.0 pruned before
        assert Magnitude(count=2)(self.W, prev_mask=prev).tolist() == [
            [True, True, False],
            [False, True, True],
        ]
        # One zero asked for, one there already: nothing new.
        assert torch.equal(Magnitude(count=1)(self.W, prev_mask=prev), prev)

    def test_more_previous_zeros_than_the_level_keeps_them_all(self) -> None:
        prev = torch.tensor([[False, False, True], [False, True, True]])
        assert torch.equal(Magnitude(sparsity=0.25)(self.W, prev_mask=prev), prev)
        assert Magnitude(sparsity=0.25).expected_zeros(self.W, prev_mask=prev) == 3

    def test_inputs_untouched(self) -> None:
        w, scores, prev = self.W.clone(), self.W.flip(0), torch.ones(2, 3, dtype=torch.bool)
        Magnitude(sparsity=0.5)(w, scores=scores, prev_mask=prev)
        assert torch.equal(w, self.W) and torch.equal(scores, self.W.flip(0))
        assert bool(prev.all())

    def test_gradients_do_not_flow_and_mask_is_bool(self) -> None:
        w = self.W.clone().requires_grad_()
        mask = Magnitude(sparsity=0.5)(w)
        assert mask.dtype == torch.bool and not mask.requires_grad


class TestAgainstPrune:
    @given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), dtype=FLOATS, data=st.data())
    def test_equals_l1_unstructured_on_tie_free_input(
        self, shape: tuple[int, ...], seed: int, dtype: torch.dtype, data: st.DataObject
    ) -> None:
        w = tie_free(shape, seed, dtype)
        level = data.draw(levels(w.numel()))
        module = holder(w)
        prune.l1_unstructured(module, "weight", amount=prune_amount(level))
        mask = Magnitude(**level)(w)
        assert torch.equal(mask, prune_mask(module))
        check_leaf_mask(Magnitude(**level), w, mask)

    @given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), data=st.data())
    def test_importance_scores_equal_prune(
        self, shape: tuple[int, ...], seed: int, data: st.DataObject
    ) -> None:
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        scores = tie_free(shape, seed + 1)
        level = data.draw(levels(w.numel()))
        module = holder(w)
        amount = prune_amount(level)
        prune.l1_unstructured(module, "weight", amount=amount, importance_scores=scores)
        # prune ranks |importance_scores|; funcsparse ranks scores as given: pass |s|.
        mask = Magnitude(**level)(w, scores=scores.abs())
        assert torch.equal(mask, prune_mask(module))
        check_leaf_mask(Magnitude(**level), w, mask, data={"scores": scores.abs()})

    def test_large_tensor_takes_the_eager_path_and_still_equals_prune(self) -> None:
        w = tie_free((300, 300), seed=3)
        module = holder(w)
        prune.l1_unstructured(module, "weight", amount=0.37)
        assert torch.equal(Magnitude(sparsity=0.37)(w), prune_mask(module))

    def test_container_semantics_by_arithmetic(self) -> None:
        # 16 weights: prune 0.5 (8), then 0.5 of the 8 that remain (4): 12 in all, which is
        # exactly Magnitude(sparsity=0.75) with the first round's mask.
        w = tie_free((4, 4), seed=11)
        first = Magnitude(sparsity=0.5)(w)
        remaining = int(first.sum())
        assert remaining == 8
        total = (16 - remaining) + round(0.5 * remaining)
        assert total == 12 == round(0.75 * 16)
        second = Magnitude(sparsity=0.75)(w, prev_mask=first)
        assert torch.equal(second, Magnitude(count=total)(w, prev_mask=first))
        assert int((~second).sum()) == 12 and not bool((second & ~first).any())
        module = holder(w)
        prune.l1_unstructured(module, "weight", amount=0.5)
        prune.l1_unstructured(module, "weight", amount=0.5)
        hooks = list(module._forward_pre_hooks.values())
        assert isinstance(hooks[0], prune.PruningContainer)
        assert torch.equal(second, prune_mask(module))

    @given(
        shape=SHAPES,
        seed=st.integers(0, 2**31 - 1),
        first=st.floats(0.0, 1.0),
        then=st.floats(0.0, 1.0),
    )
    def test_pruning_container_equals_total_target(
        self, shape: tuple[int, ...], seed: int, first: float, then: float
    ) -> None:
        w = tie_free(shape, seed)
        module = holder(w)
        prune.l1_unstructured(module, "weight", amount=first)
        prev = prune_mask(module)
        prune.l1_unstructured(module, "weight", amount=then)
        pruned_before = int((~prev).sum())
        total = pruned_before + round(then * (w.numel() - pruned_before))
        assert torch.equal(prev, Magnitude(first)(w))
        ours = fs.compute_masks({"w": w}, {"w": Magnitude(count=total)}, prev_masks={"w": prev})
        assert torch.equal(ours["w"], prune_mask(module))


class TestInvariants:
    @given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), data=st.data())
    def test_counts_nesting_vmap_with_data(
        self, shape: tuple[int, ...], seed: int, data: st.DataObject
    ) -> None:
        # Ties included: values from a small alphabet.
        g = torch.Generator().manual_seed(seed)
        w = torch.randint(-2, 3, shape, generator=g).float()
        level = data.draw(levels(w.numel()))
        kwargs: dict[str, Tensor] = {}
        if data.draw(st.booleans()):
            kwargs["prev_mask"] = torch.rand(shape, generator=g) < 0.7
        if data.draw(st.booleans()):
            kwargs["scores"] = torch.randint(-2, 3, shape, generator=g).float()
        method = Magnitude(**level)
        mask = method(w, **kwargs)
        check_leaf_mask(method, w, mask, data=kwargs)
        prev = kwargs.get("prev_mask")
        if prev is not None:
            assert not bool((mask & ~prev).any()), "a previously pruned weight came back"
        k = pruned_count(level, w.numel())
        pruned_before = 0 if prev is None else int((~prev).sum())
        assert int((~mask).sum()) == max(k, pruned_before)

    @given(data=st.data())
    def test_check_masks_through_compute_masks(self, data: st.DataObject) -> None:
        method = data.draw(Magnitude.configs(st))
        params = {"a.weight": torch.randn(3, 5), "a.bias": torch.randn(3), "b": torch.randn(7)}
        rules = {name: method for name, p in params.items() if method.check_leaf(p) is None}
        if rules:
            check_masks(params, rules)

    def test_vmap_equals_each_member(self) -> None:
        ws = torch.stack([tie_free((5, 4), seed) for seed in range(3)])
        prev = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0)) < 0.8
        method = Magnitude(sparsity=0.6)
        for kwargs in ({}, {"prev_mask": prev}, {"scores": ws.flip(0)}):
            batched = torch.func.vmap(lambda t, d: method(t, **d))(ws, kwargs)
            for i in range(3):
                assert torch.equal(
                    batched[i], method(ws[i], **{k: v[i] for k, v in kwargs.items()})
                )

    def test_ensemble_through_compute_masks(self) -> None:
        ws = torch.stack([tie_free((6, 4), seed) for seed in range(4)])
        masks = fs.compute_masks({"w": ws}, {"w": Magnitude(count=7)}, batch_dims=1)
        for i in range(4):
            assert torch.equal(masks["w"][i], Magnitude(count=7)(ws[i]))


class TestErrors:
    @pytest.mark.parametrize(
        ("level", "error", "message"),
        [
            ({"count": -1}, ValueError, "count=-1 must be a non-negative number"),
            ({"sparsity": -0.1}, ValueError, "sparsity must be a fraction in [0, 1], got -0.1"),
            ({"sparsity": 1.5}, ValueError, "sparsity must be a fraction in [0, 1], got 1.5"),
            ({"sparsity": math.nan}, ValueError, "sparsity must be a fraction in [0, 1], got nan"),
            ({"sparsity": True}, TypeError, "sparsity must be a fraction in [0, 1], got bool True"),
            ({"sparsity": "0.5"}, TypeError, "got str '0.5'"),
            ({"count": True}, TypeError, "count must be an int (a number of entries), got bool"),
            ({"count": 0.5}, TypeError, "got float 0.5; for a fraction use sparsity="),
        ],
    )
    def test_bad_levels(
        self, level: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=re.escape(message)) as info:
            Magnitude(**level)
        assert str(info.value).startswith("Magnitude: ")

    @pytest.mark.parametrize(
        ("level", "given"),
        [({}, "neither"), ({"sparsity": None}, "neither"), ({"sparsity": 0.5, "count": 1}, "both")],
    )
    def test_exactly_one_of_sparsity_and_count(self, level: dict[str, object], given: str) -> None:
        with pytest.raises(TypeError) as info:
            Magnitude(**level)
        assert str(info.value) == (
            "Magnitude: give exactly one of sparsity (a fraction in [0, 1]) and count (a "
            f"number of entries), got {given}; call it as Magnitude(sparsity=None, *, count=None)"
        )

    @pytest.mark.parametrize(
        ("old", "hint"),
        [
            ("amount", "sparsity (a fraction in [0, 1]) or count (a number of entries)"),
            ("sparsity_level", "sparsity"),
        ],
    )
    def test_old_level_names_say_how_to_call_it(self, old: str, hint: str) -> None:
        with pytest.raises(TypeError) as info:
            Magnitude(**{old: 0.5})
        assert str(info.value) == (
            f"Magnitude: got an unexpected keyword argument '{old}' (funcsparse's '{old}' is "
            f"{hint}); call it as Magnitude(sparsity=None, *, count=None)"
        )

    def test_count_is_keyword_only_and_frozen(self) -> None:
        with pytest.raises(TypeError, match=r"too many positional arguments; call it as Magnitude"):
            Magnitude(0.5, 3)
        with pytest.raises(AttributeError):
            Magnitude(sparsity=0.5).sparsity = 0.7

    def test_count_above_size_names_count_and_size(self) -> None:
        with pytest.raises(ValueError, match=r"count=7 is more than the 6 entries there are"):
            Magnitude(count=7)(torch.randn(2, 3))

    def test_count_above_size_through_compute_masks_names_the_leaf(self) -> None:
        params = {"enc.weight": torch.randn(4, 4), "enc.bias": torch.randn(4)}
        with pytest.raises(ValueError) as info:
            fs.compute_masks(params, {"enc.*": Magnitude(count=5)})
        message = str(info.value)
        assert message.startswith("compute_masks: rule 'enc.*' (Magnitude) got a 1-D")
        assert "at 'enc.bias'" in message and "count=5 is more than the 4 entries" in message

    def test_count_above_member_size_with_batch_dims(self) -> None:
        with pytest.raises(ValueError, match=r"count=5 is more than the 4 entries"):
            fs.compute_masks({"w": torch.randn(3, 4)}, {"w": Magnitude(count=5)}, batch_dims=1)

    def test_integer_tensor(self) -> None:
        with pytest.raises(TypeError, match="Magnitude needs a floating-point tensor"):
            Magnitude(count=1)(torch.arange(4))

    def test_bad_scores(self) -> None:
        w = torch.randn(2, 3)
        with pytest.raises(ValueError, match=r"scores of shape \(3, 2\)"):
            Magnitude(count=1)(w, scores=torch.randn(3, 2))
        with pytest.raises(TypeError, match="Magnitude needs floating scores"):
            Magnitude(count=1)(w, scores=torch.ones(2, 3, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"at 'w'; scores must have the tensor's shape"):
            fs.compute_masks({"w": w}, {"w": Magnitude(count=1)}, scores={"w": torch.ones(6)})

    def test_bad_prev_mask(self) -> None:
        with pytest.raises(TypeError, match=r"prev_mask of dtype torch\.float32"):
            Magnitude(count=1)(torch.randn(2, 3), prev_mask=torch.ones(2, 3))

    def test_unknown_data(self) -> None:
        with pytest.raises(TypeError, match=r"keyword data \['grad'\]"):
            Magnitude(count=1)(torch.randn(2, 3), grad=torch.randn(2, 3))


def sorted_keep(ranking: Tensor, k: int, prev: Tensor | None) -> Tensor:
    """The mask stated plainly: -inf where pruned before, the k first of a stable sort."""
    flat = ranking.reshape(-1).double()
    if prev is not None:
        flat = torch.where(prev.reshape(-1), flat, -math.inf)
    pruned = torch.zeros(flat.shape, dtype=torch.bool)
    pruned[torch.sort(flat, stable=True).indices[:k]] = True
    if prev is not None:
        pruned |= ~prev.reshape(-1)
    return (~pruned).view(ranking.shape)


class TestLargeTensors:
    """Large plain tensors take the chunked selection: |w| is never copied whole."""

    @pytest.mark.parametrize("kind", ["distinct", "ties", "nan", "half_zero"])
    @pytest.mark.parametrize("data_kind", ["none", "scores", "prev_mask", "both"])
    def test_equals_a_stable_sort(self, kind: str, data_kind: str) -> None:
        generator = torch.Generator().manual_seed(0)
        w = torch.randn(300, 311, generator=generator)
        if kind == "ties":
            w = torch.randint(-3, 4, w.shape, generator=generator).float()
        elif kind == "nan":
            w[::7, ::3] = math.nan
        elif kind == "half_zero":
            w[:150] = 0.0
        data: dict[str, Tensor] = {}
        if data_kind in ("scores", "both"):
            data["scores"] = torch.randint(-5, 5, w.shape, generator=generator).float()
        if data_kind in ("prev_mask", "both"):
            data["prev_mask"] = torch.rand(w.shape, generator=generator) > 0.3
        ranking = data["scores"] if "scores" in data else w.abs()
        for level in ({"sparsity": 0.5}, {"count": 150 * 311 + 7}, {"sparsity": 0.97}):
            mask = Magnitude(**level)(w, **data)
            k = Magnitude(**level).expected_zeros(w)
            assert torch.equal(mask, sorted_keep(ranking, k or 0, data.get("prev_mask")))

    def test_non_contiguous_weight(self) -> None:
        w = torch.randn(400, 300, generator=torch.Generator().manual_seed(1)).t()
        assert torch.equal(Magnitude(count=40_000)(w), sorted_keep(w.abs(), 40_000, None))


class TestHostile:
    @pytest.mark.parametrize(
        ("level", "error", "field"),
        [
            ({"count": 10**400}, ValueError, "count="),
            ({"sparsity": 10**400}, TypeError, "sparsity="),
            ({"sparsity": 10.0**300}, ValueError, "sparsity"),
            ({"count": -(10**400)}, ValueError, "count="),
        ],
    )
    def test_huge_levels_are_refused_shortly(
        self, level: dict[str, object], error: type[Exception], field: str
    ) -> None:
        with pytest.raises(error) as info:
            Magnitude(**level)(torch.randn(2, 3))
        message = str(info.value)
        assert message.startswith("Magnitude: ") and field in message and len(message) < 300

    def test_a_count_beyond_numel_names_the_count(self) -> None:
        with pytest.raises(ValueError, match=r"Magnitude count=7 is more than the 6 entries"):
            Magnitude(count=7)(torch.randn(2, 3))

    def test_a_raising_call_changes_nothing(self) -> None:
        w, scores = torch.randn(2, 3), torch.randn(2, 3)
        prev = torch.tensor([[True, False, True], [True, True, False]])
        before = [t.clone() for t in (w, scores, prev)]
        versions = [t._version for t in (w, scores, prev)]
        with pytest.raises(ValueError):
            Magnitude(count=7)(w, scores=scores, prev_mask=prev)
        with pytest.raises(ValueError):
            Magnitude(count=1)(w, scores=scores, prev_mask=prev.to("meta"))
        for t, old, version in zip((w, scores, prev), before, versions, strict=True):
            assert torch.equal(t, old) and t._version == version

    @pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.complex64])
    def test_unsupported_dtypes(self, dtype: torch.dtype) -> None:
        with pytest.raises(TypeError, match=r"^Magnitude: .*not supported"):
            Magnitude(0.5)(torch.randn(2, 3).to(dtype))
        with pytest.raises(TypeError, match=r"^Magnitude: "):
            Magnitude(0.5)(torch.randn(2, 3), scores=torch.randn(2, 3).to(dtype))


# Scores with every special value, ties included: -inf must rank after every entry pruned before.
SPECIAL_SCORES = st.sampled_from([-math.inf, -1.0, 0.0, 1.0, math.inf, math.nan])


class TestPrevMaskOutranksEveryScore:
    """Entries pruned before rank below every other entry, a real -inf score included."""

    def test_a_real_minus_inf_score_does_not_take_a_previous_zero_s_place(self) -> None:
        w = torch.zeros(3)
        scores = torch.tensor([-math.inf, 0.0, 5.0])
        prev = torch.tensor([True, False, True])
        assert torch.equal(Magnitude(count=1)(w, scores=scores, prev_mask=prev), prev)
        two = Magnitude(count=2)(w, scores=scores, prev_mask=prev)
        assert two.tolist() == [False, False, True]

    @pytest.mark.parametrize("count", [10, 50, 60, 149, 150, 151, 1000])
    def test_large_tensor_eager_path(self, count: int) -> None:
        # 2**17 entries: the chunked selection. Real -infs on and off the sample's stride.
        n = 1 << 17
        scores = torch.randn(n, generator=torch.Generator().manual_seed(0))
        scores[1::8][:60] = -math.inf
        scores[:320:8] = -math.inf
        prev = torch.ones(n, dtype=torch.bool)
        prev[2::8][:50] = False
        mask = Magnitude(count=count)(torch.zeros(n), scores=scores, prev_mask=prev)
        assert int((~mask).sum()) == max(count, 50)
        assert not bool((mask & ~prev).any()), "a previously pruned weight came back"
        real = scores.isneginf()  # 100 of them, pruned by position after the previous zeros
        assert int((~mask & real).sum()) == min(max(count - 50, 0), 100)

    def test_vmap_through_compute_masks(self) -> None:
        scores = torch.tensor([[-math.inf, 0.0, 5.0, -math.inf], [1.0, -math.inf, 2.0, 3.0]])
        prev = torch.tensor([[True, False, True, True], [False, True, True, True]])
        ws = torch.zeros(2, 4)
        for count in range(5):
            method = Magnitude(count=count)
            masks = fs.compute_masks(
                {"w": ws}, {"w": method}, batch_dims=1, prev_masks={"w": prev}, scores={"w": scores}
            )
            for i in range(2):
                alone = method(ws[i], scores=scores[i], prev_mask=prev[i])
                assert torch.equal(masks["w"][i], alone)
                assert int((~alone).sum()) == max(count, 1)

    @given(
        values=st.lists(SPECIAL_SCORES, min_size=1, max_size=24),
        data=st.data(),
    )
    def test_zeros_are_the_level_or_the_previous_zeros_for_any_scores(
        self, values: list[float], data: st.DataObject
    ) -> None:
        scores = torch.tensor(values)
        n = scores.numel()
        prev = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        count = data.draw(st.integers(0, n))
        method = Magnitude(count=count)
        mask = method(torch.zeros(n), scores=scores, prev_mask=prev)
        assert (
            int((~mask).sum())
            == max(count, int((~prev).sum()))
            == method.expected_zeros(torch.zeros(n), prev_mask=prev)
        )
        assert not bool((mask & ~prev).any()), "a previously pruned weight came back"
        batched = torch.func.vmap(lambda s, p: method(torch.zeros(n), scores=s, prev_mask=p))(
            scores[None], prev[None]
        )
        assert torch.equal(batched[0], mask)
