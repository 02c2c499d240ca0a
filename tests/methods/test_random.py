"""Random: nn.utils.prune's random_unstructured reproduced from a seed, per-leaf streams, errors."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.utils import prune

import funcsparse as fs
from funcsparse.methods._seeds import leaf_seed
from funcsparse.methods.random import Random
from funcsparse.testing import check_leaf_mask, check_masks
from tests.helpers import holder, levels, prune_amount

SHAPES = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
SEEDS = st.integers(0, 2**63 - 1)


def zeros(mask: Tensor) -> int:
    return int((~mask).sum())


class TestAgainstPrune:
    @given(
        shape=SHAPES,
        seed=SEEDS,
        dtype=st.sampled_from([torch.float32, torch.float64]),
        data=st.data(),
    )
    def test_equals_random_unstructured_after_manual_seed(
        self, shape: tuple[int, ...], seed: int, dtype: torch.dtype, data: st.DataObject
    ) -> None:
        w = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed % 997))
        level = data.draw(levels(w.numel()))
        method = Random(**level, seed=seed)
        values = method.random_values(w)
        assume(torch.unique(values).numel() == values.numel())  # topk breaks ties its own way
        module = holder(w)
        torch.manual_seed(seed)
        prune.random_unstructured(module, "weight", amount=prune_amount(level))
        mask = method(w)
        assert torch.equal(mask, module.weight_mask.bool())
        check_leaf_mask(method, w, mask)

    def test_pinned_seed(self) -> None:
        w = torch.zeros(10)
        torch.manual_seed(1234)
        expected = torch.rand(10)
        mask = Random(count=3, seed=1234)(w)
        assert mask.tolist() == (expected < expected.topk(3).values[-1]).tolist()
        module = holder(w)
        torch.manual_seed(1234)
        prune.random_unstructured(module, "weight", amount=3)
        assert torch.equal(mask, module.weight_mask.bool())

    def test_global_rng_is_neither_read_nor_advanced(self) -> None:
        w = torch.randn(6, 6)
        saved = torch.get_rng_state()
        try:
            torch.manual_seed(99)
            before = torch.get_rng_state()
            first = Random(sparsity=0.5)(w)
            assert torch.equal(torch.get_rng_state(), before)
            torch.manual_seed(12345)
            assert torch.equal(Random(sparsity=0.5)(w), first)
        finally:
            torch.set_rng_state(saved)

    def test_same_values_and_dtype_as_rand_like(self) -> None:
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            w = torch.ones(3, 4, dtype=dtype)
            torch.manual_seed(5)
            assert torch.equal(Random(count=0, seed=5).random_values(w), torch.rand_like(w))


class TestSemantics:
    W = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))

    def test_exact_counts_any_shape(self) -> None:
        assert zeros(Random(sparsity=0.25)(self.W)) == 16
        assert zeros(Random(count=5)(self.W)) == 5
        assert zeros(Random(sparsity=1.0)(self.W)) == 64
        assert zeros(Random(count=0)(self.W)) == 0
        assert Random(count=1)(torch.tensor(2.0)).tolist() is False
        assert Random(sparsity=0.5)(torch.empty(0, 4)).shape == (0, 4)

    def test_the_mask_does_not_depend_on_the_values(self) -> None:
        assert torch.equal(
            Random(sparsity=0.5, seed=3)(self.W), Random(sparsity=0.5, seed=3)(-self.W)
        )

    def test_seeds_give_other_masks(self) -> None:
        masks = {tuple(Random(sparsity=0.5, seed=s)(self.W).flatten().tolist()) for s in range(8)}
        assert len(masks) == 8

    def test_higher_level_prunes_a_superset(self) -> None:
        previous = torch.ones(8, 8, dtype=torch.bool)
        for sparsity in [0.0, 0.1, 0.3, 0.5, 0.51, 0.9, 1.0]:
            mask = Random(sparsity, seed=4)(self.W)
            assert not bool((mask & ~previous).any())
            previous = mask

    def test_prev_mask_total_target(self) -> None:
        prev = Random(sparsity=0.5, seed=1)(self.W)
        mask = Random(sparsity=0.75, seed=2)(self.W, prev_mask=prev)
        assert zeros(mask) == 48
        assert not bool((mask & ~prev).any()), "a previously pruned weight came back"
        # The 16 new zeros are the largest random values among the 32 entries left.
        values = Random(sparsity=0.75, seed=2).random_values(self.W)
        left = values[prev]
        threshold = left.topk(16).values[-1]
        assert torch.equal(mask, prev & (values < threshold))

    def test_more_previous_zeros_than_the_level_keeps_them_all(self) -> None:
        prev = Random(sparsity=0.5, seed=1)(self.W)
        assert torch.equal(Random(sparsity=0.25, seed=2)(self.W, prev_mask=prev), prev)
        assert Random(sparsity=0.25).expected_zeros(self.W, prev_mask=prev) == 32

    def test_random_container_semantics_by_arithmetic(self) -> None:
        # Prune 0.5, then 0.5 of what remains: 32 + round(0.5 * 32) = 48 = 0.75 of 64.
        first = Random(sparsity=0.5, seed=1)(self.W)
        total = zeros(first) + round(0.5 * int(first.sum()))
        second = Random(count=total, seed=2)(self.W, prev_mask=first)
        assert total == 48 and zeros(second) == 48 and not bool((second & ~first).any())


class TestGenerator:
    W = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))

    def test_a_generator_replaces_the_seed(self) -> None:
        g = torch.Generator().manual_seed(42)
        assert torch.equal(
            Random(sparsity=0.5)(self.W, generator=g), Random(sparsity=0.5, seed=42)(self.W)
        )

    def test_the_generator_is_not_advanced(self) -> None:
        g = torch.Generator().manual_seed(42)
        state = g.get_state()
        first = Random(sparsity=0.5)(self.W, generator=g)
        assert torch.equal(g.get_state(), state)
        check_leaf_mask(Random(sparsity=0.5), self.W, first, data={"generator": g})

    def test_an_advanced_generator_gives_its_current_state(self) -> None:
        g = torch.Generator().manual_seed(42)
        torch.rand(3, generator=g)
        h = torch.Generator()
        h.set_state(g.get_state())
        expected = torch.rand(self.W.shape, generator=h)
        mask = Random(count=10)(self.W, generator=g)
        assert torch.equal(mask, expected < expected.flatten().topk(10).values[-1])

    def test_generator_through_compute_masks(self) -> None:
        g = torch.Generator().manual_seed(7)
        params = {"w": self.W, "b": torch.randn(5)}
        masks = fs.compute_masks(params, {"w": Random(sparsity=0.5)}, generator={"w": g, "b": None})
        assert torch.equal(masks["w"], Random(sparsity=0.5, seed=7)(self.W))

    def test_not_a_generator(self) -> None:
        with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
            Random(sparsity=0.5)(self.W, generator=7)


class TestPerLeafStreams:
    def test_for_leaf_mixes_the_path_into_the_seed(self) -> None:
        method = Random(sparsity=0.5, seed=3)
        leaf = method.for_leaf("layers.0.weight")
        assert leaf == Random(sparsity=0.5, seed=leaf_seed(3, "layers.0.weight"))
        # Seeds that differ by 2**32 no longer share a stream.
        assert Random(sparsity=0.5, seed=2**32 + 3).for_leaf("layers.0.weight") != leaf
        assert method.for_leaf("layers.0.weight") == leaf
        big = Random(sparsity=0.5, seed=2**64 - 1).for_leaf("w")
        assert 0 <= big.seed < 2**64

    def test_same_shaped_leaves_get_their_own_masks(self) -> None:
        params = {f"l{i}.weight": torch.randn(6, 6) for i in range(4)}
        masks = fs.compute_masks(params, {"*.weight": Random(sparsity=0.5)})
        patterns = {tuple(m.flatten().tolist()) for m in masks.values()}
        assert len(patterns) == 4
        for path, mask in masks.items():
            assert torch.equal(mask, Random(sparsity=0.5).for_leaf(path)(params[path]))
        again = fs.compute_masks(params, {"*.weight": Random(sparsity=0.5)})
        assert all(torch.equal(masks[p], again[p]) for p in params)

    @given(data=st.data())
    def test_check_masks(self, data: st.DataObject) -> None:
        method = data.draw(Random.configs(st))
        params = {"a.weight": torch.randn(3, 5), "a.bias": torch.randn(3), "b": torch.randn(7)}
        rules = {name: method for name, p in params.items() if method.check_leaf(p) is None}
        if rules:
            check_masks(params, rules)

    @given(shape=SHAPES, seed=SEEDS, data=st.data())
    def test_check_leaf_mask_with_prev_mask(
        self, shape: tuple[int, ...], seed: int, data: st.DataObject
    ) -> None:
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed % 991))
        level = data.draw(levels(w.numel()))
        prev = data.draw(st.lists(st.booleans(), min_size=w.numel(), max_size=w.numel()))
        prev_mask = torch.tensor(prev, dtype=torch.bool).reshape(shape)
        method = Random(**level, seed=seed)
        mask = method(w, prev_mask=prev_mask)
        check_leaf_mask(method, w, mask, data={"prev_mask": prev_mask})
        assert not bool((mask & ~prev_mask).any())

    def test_ensemble_members_are_looped_and_each_equals_its_own_call(self) -> None:
        assert Random.vmappable is False
        ws = torch.randn(3, 4, 5)
        masks = fs.compute_masks({"w": ws}, {"w": Random(sparsity=0.5)}, batch_dims=1)
        for i in range(3):
            assert torch.equal(masks["w"][i], Random(sparsity=0.5).for_leaf("w")(ws[i]))


class TestErrors:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"count": -1}, ValueError, "count=-1 must be a non-negative number"),
            ({"sparsity": 1.01}, ValueError, "sparsity must be a fraction in [0, 1], got 1.01"),
            ({"sparsity": math.nan}, ValueError, "sparsity must be a fraction in [0, 1], got nan"),
            ({"sparsity": False}, TypeError, "got bool False"),
            ({"sparsity": "all"}, TypeError, "got str 'all'"),
            ({"count": 2.0}, TypeError, "count must be an int (a number of entries), got float"),
            ({}, TypeError, "give exactly one of sparsity (a fraction in [0, 1]) and count"),
            (
                {"sparsity": 0.5, "count": 2},
                TypeError,
                "got both; call it as Random(sparsity=None, *, count=None, seed=0)",
            ),
            ({"amount": 0.5}, TypeError, "unexpected keyword argument 'amount'"),
            ({"sparsity": 0.5, "seed": -1}, ValueError, "seed=-1 must be in [0, 2**64)"),
            ({"sparsity": 0.5, "seed": 2**64}, ValueError, f"seed={2**64} must be in [0, 2**64)"),
            ({"sparsity": 0.5, "seed": 1.0}, TypeError, "seed must be an int, got float 1.0"),
            ({"sparsity": 0.5, "seed": True}, TypeError, "seed must be an int, got bool True"),
        ],
    )
    def test_bad_configs(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=re.escape(message)) as info:
            Random(**kwargs)
        assert str(info.value).startswith("Random: ")

    def test_count_above_size_through_compute_masks_names_the_leaf(self) -> None:
        params = {"enc.weight": torch.randn(4, 4), "enc.bias": torch.randn(4)}
        with pytest.raises(ValueError) as info:
            fs.compute_masks(params, {"enc.*": Random(count=9)})
        message = str(info.value)
        assert message.startswith("compute_masks: rule 'enc.*' (Random) got a 1-D")
        assert "at 'enc.bias'" in message and "count=9 is more than the 4 entries" in message

    def test_integer_tensor(self) -> None:
        with pytest.raises(TypeError, match="Random needs a floating-point tensor"):
            Random(count=1)(torch.arange(4))

    def test_frozen(self) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            Random(sparsity=0.5).seed = 1


def sorted_keep(values: Tensor, k: int, prev: Tensor | None) -> Tensor:
    """Random's mask stated plainly: the k largest values pruned (ties: lower index first),
    previously pruned entries first."""
    flat = -values.reshape(-1).double()
    if prev is not None:
        flat = torch.where(prev.reshape(-1), flat, -math.inf)
    pruned = torch.zeros(flat.shape, dtype=torch.bool)
    pruned[torch.sort(flat, stable=True).indices[:k]] = True
    if prev is not None:
        pruned |= ~prev.reshape(-1)
    return (~pruned).view(values.shape)


class TestDrawnInChunks:
    """On CPU the values are drawn chunk by chunk (never held whole), the same values."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
    def test_a_cpu_generator_draws_the_same_values_in_pieces(self, dtype: torch.dtype) -> None:
        whole = torch.rand(10_007, dtype=dtype, generator=torch.Generator().manual_seed(5))
        generator = torch.Generator().manual_seed(5)
        pieces = [torch.rand(n, dtype=dtype, generator=generator) for n in (1, 4000, 13, 5993)]
        assert torch.equal(torch.cat(pieces), whole)

    @pytest.mark.parametrize("with_prev", [False, True])
    @pytest.mark.parametrize("with_generator", [False, True])
    def test_large_tensor_equals_one_draw(self, with_prev: bool, with_generator: bool) -> None:
        w = torch.empty(301, 257)
        generator = torch.Generator().manual_seed(2**63 + 9) if with_generator else None
        seeded = torch.Generator().manual_seed(11)
        if generator is not None:
            seeded.set_state(generator.get_state())
        values = torch.rand(w.shape, generator=seeded)
        prev = Random(0.3, seed=4)(w) if with_prev else None  # a gradual schedule's last step
        data: dict[str, object] = {}
        if generator is not None:
            data["generator"] = generator
        if prev is not None:
            data["prev_mask"] = prev
        for level in ({"sparsity": 0.5}, {"count": 12_345}, {"sparsity": 0.999}):
            method = Random(seed=11, **level)
            k = method.expected_zeros(w) or 0
            assert torch.equal(method(w, **data), sorted_keep(values, k, prev))


class TestHostile:
    @pytest.mark.parametrize(
        ("seed", "error"),
        [
            (10**400, ValueError),
            (-(10**400), ValueError),
            (2**64, ValueError),
            (-1, ValueError),
            (0.5, TypeError),
            ("3", TypeError),
            (None, TypeError),
            (torch.tensor(3), TypeError),
            (True, TypeError),
        ],
    )
    def test_bad_seeds_name_the_field_shortly(self, seed: object, error: type[Exception]) -> None:
        with pytest.raises(error) as info:
            Random(0.5, seed=seed)
        message = str(info.value)
        assert message.startswith("Random: seed") and len(message) < 200

    @pytest.mark.parametrize("level", [{"count": 10**400}, {"sparsity": 10**400}])
    def test_huge_levels(self, level: dict[str, object]) -> None:
        with pytest.raises((TypeError, ValueError)) as info:
            Random(**level)(torch.randn(3))
        message = str(info.value)
        assert message.startswith("Random: ") and len(message) < 300

    @pytest.mark.parametrize("generator", [3, "g", torch.tensor(1), torch.Generator])
    def test_not_a_generator(self, generator: object) -> None:
        with pytest.raises(TypeError, match=r"^Random: got generator=.*must be a torch.Generator"):
            Random(0.5)(torch.randn(3), generator=generator)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
    def test_generator_on_another_device(self) -> None:
        with pytest.raises(ValueError, match="the generator must be on the tensor's device"):
            Random(0.5)(torch.randn(3), generator=torch.Generator(device="cuda"))

    def test_a_raising_call_neither_advances_the_generator_nor_touches_inputs(self) -> None:
        generator = torch.Generator().manual_seed(3)
        state = generator.get_state()
        w = torch.randn(2, 3)
        prev = torch.tensor([[True, False, True], [True, True, False]])
        before, prev_before = w.clone(), prev.clone()
        with pytest.raises(ValueError):
            Random(count=7)(w, generator=generator, prev_mask=prev)
        with pytest.raises(ValueError):
            Random(count=1)(w, generator=generator, prev_mask=prev.to("meta"))
        with pytest.raises(TypeError):
            Random(count=1)(w, generator=generator, prev_mask=prev.float())
        assert torch.equal(generator.get_state(), state)
        assert torch.equal(w, before) and torch.equal(prev, prev_before)
        Random(count=1)(w, generator=generator, prev_mask=prev)  # nor does a call that works
        assert torch.equal(generator.get_state(), state)

    def test_global_rng_untouched_on_the_chunked_path(self) -> None:
        torch.manual_seed(0)
        state = torch.get_rng_state()
        Random(0.5, seed=2)(torch.empty(300, 300))
        assert torch.equal(torch.get_rng_state(), state)
