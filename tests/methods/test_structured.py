"""LnStructured and RandomStructured: pinned masks, torch.nn.utils.prune as the oracle, errors."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils import prune

import funcsparse as fs
from funcsparse.methods.structured import LnStructured, RandomStructured, leaf_seed
from funcsparse.testing import check_leaf_mask
from tests.helpers import Level, levels, prune_amount, pruned_count

INF = math.inf
NORMS: list[float | str] = [1, 2, INF, -INF, "fro", 0.5, 3]


# --------------------------------------------------------------------------------------
# torch.nn.utils.prune as the oracle
# --------------------------------------------------------------------------------------


def _module_with(weight: Tensor) -> nn.Module:
    module = nn.Module()
    module.weight = nn.Parameter(weight.clone())
    return module


def prune_ln_mask(
    weight: Tensor, amount: float, n: float | str, dim: int, scores: Tensor | None = None
) -> Tensor:
    """prune.ln_structured's mask, as bool."""
    module = _module_with(weight)
    prune.ln_structured(module, "weight", amount=amount, n=n, dim=dim, importance_scores=scores)
    return module.get_buffer("weight_mask").bool()


def prune_random_mask(weight: Tensor, amount: float, dim: int, seed: int) -> Tensor:
    """``torch.manual_seed(seed); prune.random_structured(...)``'s mask (global RNG restored)."""
    module = _module_with(weight)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prune.random_structured(module, "weight", amount=amount, dim=dim)
    return module.get_buffer("weight_mask").bool()


def prune_norms(weight: Tensor, n: float | str, dim: int) -> Tensor:
    norms: Tensor = prune._compute_norm(weight, n, dim)
    return norms


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------


@st.composite
def tie_free_tensors(
    draw: st.DrawFn, *, min_dims: int = 2, max_dims: int = 4, shape: tuple[int, ...] = ()
) -> Tensor:
    """Distinct magnitudes (a seeded randperm plus a jitter below the gap) with random signs,
    so that slice norms tie only by accident (the tests skip those). Default shape: drawn."""
    if not shape:
        ndim = draw(st.integers(min_dims, max_dims))
        shape = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = math.prod(shape)
    magnitudes = torch.randperm(n, generator=generator).double() + 1
    magnitudes = magnitudes + 0.5 * torch.rand(n, generator=generator, dtype=torch.float64)
    signs = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1
    return (magnitudes * signs / n).to(dtype).reshape(shape)


def distinct(values: Tensor) -> bool:
    return not bool(values.isnan().any()) and torch.unique(values).numel() == values.numel()


def total_target_mask(
    weight: Tensor, prev: Tensor, slice_scores: Tensor, count: int, dim: int
) -> Tensor:
    """The documented prev_mask rule by brute force: slices in rank order (lowest score
    first, ties by index, NaN last) until the zeros, old and new, reach ``count`` slices'
    worth of entries; nothing pruned before comes back."""
    size = weight.shape[dim]
    rows = prev.movedim(dim, 0).reshape(size, -1)
    zeros, target = int((~rows).sum()), count * rows.shape[1]
    keep = torch.ones(size, dtype=torch.bool)
    order = sorted(
        range(size), key=lambda i: (bool(slice_scores[i].isnan()), float(slice_scores[i]), i)
    )
    for i in order:
        if zeros >= target:
            break
        zeros += int(rows[i].sum())
        keep[i] = False
    view = [1] * weight.dim()
    view[dim] = size
    return prev & keep.reshape(view)


def slice_pattern(mask: Tensor, dim: int) -> list[bool]:
    """Per slice along dim: kept (True) or pruned (False); asserts slices are whole."""
    rows = mask.movedim(dim, 0).flatten(1)
    assert bool((rows.all(1) | ~rows.any(1)).all())
    return rows.all(1).tolist()


# --------------------------------------------------------------------------------------
# Pinned masks
# --------------------------------------------------------------------------------------


class TestPinnedLn:
    weight = torch.tensor([[1.0, -2.0, 0.0], [0.1, 0.2, -0.3], [3.0, 0.0, 0.5], [-1.0, 1.0, 1.0]])

    def test_rows_of_a_linear_weight(self) -> None:
        # L2 row norms: 2.24, 0.37, 3.04, 1.73 -> prune rows 1 and 3.
        mask = LnStructured(count=2, n=2, dim=0)(self.weight)
        assert mask.tolist() == [[True] * 3, [False] * 3, [True] * 3, [False] * 3]

    def test_columns(self) -> None:
        # L1 column norms: 5.1, 3.2, 1.8 -> a third of 3 columns is 1: the last one.
        mask = LnStructured(1 / 3, n=1, dim=1)(self.weight)
        assert mask.tolist() == [[True, True, False]] * 4
        assert torch.equal(mask, LnStructured(count=1, n=1, dim=-1)(self.weight))

    def test_inf_and_minus_inf_norms(self) -> None:
        # Row max |w|: 2, 0.3, 3, 1; row min |w|: 0, 0.1, 0, 1.
        by_max = LnStructured(count=1, n=INF, dim=0)(self.weight)
        by_min = LnStructured(count=3, n=-INF, dim=0)(self.weight)
        assert slice_pattern(by_max, 0) == [True, False, True, True]
        # Two rows tie at min 0: the lower index (row 0) is pruned first.
        assert slice_pattern(by_min, 0) == [False, False, False, True]

    def test_conv_filters_of_a_4d_weight(self) -> None:
        weight = torch.ones(4, 2, 3, 3) * torch.tensor([3.0, 1.0, 4.0, 2.0]).view(4, 1, 1, 1)
        mask = LnStructured(sparsity=0.5, n=2, dim=0)(weight)
        assert slice_pattern(mask, 0) == [True, False, True, False]
        assert int((~mask).sum()) == 2 * 2 * 3 * 3
        # Input channels of the same weight (dim=1), by the L1 norm.
        weight = weight * torch.tensor([1.0, -5.0]).view(1, 2, 1, 1)
        mask = LnStructured(count=1, n=1, dim=1)(weight)
        assert slice_pattern(mask, 1) == [False, True]

    def test_level_zero_and_all(self) -> None:
        assert bool(LnStructured(count=0, n=2, dim=0)(self.weight).all())
        assert bool(LnStructured(sparsity=0.0, n=2, dim=0)(self.weight).all())
        assert not bool(LnStructured(count=4, n=2, dim=0)(self.weight).any())
        assert not bool(LnStructured(sparsity=1.0, n=1, dim=1)(self.weight).any())

    def test_sparsity_rounds_half_to_even_like_prune(self) -> None:
        weight = torch.arange(1.0, 6.0)[:, None].expand(5, 2)
        # round(0.5 * 5) == 2, round(0.7 * 5) == 4 (3.5 -> 4), round(0.3 * 5) == 2 (1.5 -> 2).
        for sparsity, pruned in [(0.5, 2), (0.7, 4), (0.3, 2), (0.1, 0)]:
            mask = LnStructured(sparsity, n=1, dim=0)(weight)
            assert slice_pattern(mask, 0) == [False] * pruned + [True] * (5 - pruned)
            assert torch.equal(mask, prune_ln_mask(weight, sparsity, 1, 0))

    def test_all_tied_norms_prune_the_lowest_indices(self) -> None:
        mask = LnStructured(count=2, n=2, dim=1)(torch.ones(3, 5))
        assert slice_pattern(mask, 1) == [False, False, True, True, True]

    def test_nan_norms_rank_highest(self) -> None:
        weight = torch.tensor([[float("nan"), 0.0], [1.0, 1.0], [0.5, 0.5]])
        mask = LnStructured(count=2, n=2, dim=0)(weight)
        assert slice_pattern(mask, 0) == [True, False, False]

    def test_importance_scores_replace_the_weight(self) -> None:
        scores = torch.tensor([[9.0, 9.0, 9.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [7.0] * 3])
        mask = LnStructured(sparsity=0.5, n=1, dim=0)(self.weight, scores=scores)
        assert slice_pattern(mask, 0) == [True, False, False, True]

    def test_a_slice_scores_the_signed_sum_of_its_scores(self) -> None:
        # Row sums: 3, -2, 6, -3 (row 3 has the largest L1 norm of its scores, 9, but the
        # lowest sum): scores rank as given, so rows 3 and 1 go first.
        scores = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0], [2.0] * 3, [-3.0, 3.0, -3.0]])
        mask = LnStructured(count=2, n=1, dim=0)(self.weight, scores=scores)
        assert slice_pattern(mask, 0) == [True, False, True, False]
        # The n of the norm does not touch given scores: only their sums rank.
        for n in (2, INF, "fro"):
            assert torch.equal(LnStructured(count=2, n=n, dim=0)(self.weight, scores=scores), mask)
        # |scores| ** n reproduces prune's importance_scores ranking (the Ln norm of s):
        # |s| row sums 3, 2, 6, 9 prune rows 1 and 0, and row 3 is kept.
        abs_mask = LnStructured(count=2, n=1, dim=0)(self.weight, scores=scores.abs())
        assert slice_pattern(abs_mask, 0) == [False, False, True, True]
        assert torch.equal(abs_mask, prune_ln_mask(self.weight, 2, 1, 0, scores=scores))

    def test_fro_on_4d_is_the_flattened_2_norm(self) -> None:
        weight = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(4))
        with pytest.raises(RuntimeError):  # torch.norm cannot take 'fro' over 3 dims
            prune_ln_mask(weight, 2, "fro", 0)
        fro = LnStructured(count=2, n="fro", dim=0)(weight)
        assert torch.equal(fro, LnStructured(count=2, n=2, dim=0)(weight))

    def test_nuc_on_3d_tensors_matches_prune(self) -> None:
        weight = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(5))
        for dim in (0, 1, 2, -1):
            mask = LnStructured(sparsity=0.4, n="nuc", dim=dim)(weight)
            assert torch.equal(mask, prune_ln_mask(weight, 0.4, "nuc", dim))


class TestPinnedRandom:
    def test_seeded_rows(self) -> None:
        weight = torch.zeros(6, 3)
        values = torch.rand(6, generator=torch.Generator().manual_seed(7))
        lowest = set(values.argsort()[:2].tolist())
        mask = RandomStructured(count=2, dim=0, seed=7)(weight)
        assert slice_pattern(mask, 0) == [i not in lowest for i in range(6)]

    def test_conv_filters(self) -> None:
        weight = torch.zeros(8, 3, 3, 3)
        mask = RandomStructured(sparsity=0.25, dim=0, seed=1)(weight)
        assert sum(not kept for kept in slice_pattern(mask, 0)) == 2
        assert torch.equal(mask, prune_random_mask(weight, 0.25, 0, 1))

    def test_any_dtype(self) -> None:
        mask = RandomStructured(count=1, dim=1, seed=0)(torch.zeros(2, 3, dtype=torch.int64))
        assert int((~mask).sum()) == 2

    def test_generator_overrides_the_seed_without_advancing(self) -> None:
        weight = torch.zeros(10, 2)
        generator = torch.Generator().manual_seed(5)
        first = RandomStructured(count=4, dim=0, seed=0)(weight, generator=generator)
        assert torch.equal(first, RandomStructured(count=4, dim=0, seed=5)(weight))
        state = generator.get_state()
        assert torch.equal(state, torch.Generator().manual_seed(5).get_state())

    def test_no_draw_when_nothing_is_pruned(self) -> None:
        generator = torch.Generator().manual_seed(5)
        before = generator.get_state()
        mask = RandomStructured(sparsity=0.0, dim=0)(torch.zeros(4, 2), generator=generator)
        assert bool(mask.all())
        assert torch.equal(generator.get_state(), before)

    def test_global_rng_is_untouched(self) -> None:
        before = torch.random.get_rng_state()
        RandomStructured(sparsity=0.5, dim=0, seed=3)(torch.zeros(8, 2))
        assert torch.equal(torch.random.get_rng_state(), before)

    def test_tie_at_the_threshold_prunes_exactly_k_lower_index_first(self) -> None:
        # Seed 10's float32 draw of 2048 values repeats one value, at indices 1078 and
        # 1569, and that value is the 1096-th smallest: prune prunes both (<= threshold).
        seed, size, k = 10, 2048, 1096
        values = torch.rand(size, generator=torch.Generator().manual_seed(seed))
        tied = (values == values[1078]).nonzero().flatten().tolist()
        assert tied == [1078, 1569]
        assert int((values < values[1078]).sum()) == k - 1
        weight = torch.zeros(1, size)
        ours = RandomStructured(count=k, dim=1, seed=seed)(weight)
        theirs = prune_random_mask(weight, k, 1, seed)
        assert int((~ours).sum()) == k
        assert int((~theirs).sum()) == k + 1
        assert (ours != theirs).nonzero().tolist() == [[0, 1569]]
        assert not bool(ours[0, 1078]) and bool(ours[0, 1569])

    def test_for_leaf_hashes_the_seed_with_the_path(self) -> None:
        method = RandomStructured(count=2, dim=0, seed=3)
        expected = leaf_seed(3, "layers.0.weight")
        assert method.for_leaf("layers.0.weight") == dataclasses.replace(method, seed=expected)
        assert leaf_seed(3 + 2**32, "layers.0.weight") != expected
        assert 0 <= leaf_seed(2**64 - 1, "a") < 2**64

    def test_a_generator_is_copied_not_advanced(self) -> None:
        generator = torch.Generator().manual_seed(1)
        weight = torch.randn(50, 4)
        state = generator.get_state()
        first = RandomStructured(sparsity=0.5, dim=0)(weight, generator=generator)
        assert torch.equal(generator.get_state(), state)
        assert torch.equal(
            RandomStructured(sparsity=0.5, dim=0)(weight, generator=generator), first
        )

    def test_compute_masks_gives_each_leaf_its_own_stream(self) -> None:
        params = {f"{i}.weight": torch.zeros(32, 4) for i in range(3)}
        method = RandomStructured(sparsity=0.5, dim=0, seed=0)
        masks = fs.compute_masks(params, {"*.weight": method})
        for path, mask in masks.items():
            assert torch.equal(mask, method.for_leaf(path)(params[path]))
            assert int((~mask).all(1).sum()) == 16
        patterns = {tuple(slice_pattern(mask, 0)) for mask in masks.values()}
        assert len(patterns) == 3
        again = fs.compute_masks(params, {"*.weight": method})
        assert all(torch.equal(again[p], masks[p]) for p in masks)

    def test_ensemble_members_loop_and_share_the_leaf_stream(self) -> None:
        method = RandomStructured(count=2, dim=0, seed=1)
        stacked = torch.zeros(3, 6, 2)
        masks = fs.compute_masks({"w": stacked}, {"w": method}, batch_dims=1)["w"]
        expected = method.for_leaf("w")(stacked[0])
        assert all(torch.equal(masks[i], expected) for i in range(3))


# --------------------------------------------------------------------------------------
# Differential tests against torch.nn.utils.prune
# --------------------------------------------------------------------------------------


class TestAgainstPrune:
    @given(st.data())
    def test_ln_structured_bit_for_bit(self, data: st.DataObject) -> None:
        weight = data.draw(tie_free_tensors())
        ndim = weight.dim()
        dim = data.draw(st.integers(-ndim, ndim - 1))
        n = data.draw(st.sampled_from(NORMS + (["nuc"] if ndim == 3 else [])))
        if n == "fro" and ndim > 3:
            n = 2
        level = data.draw(levels(weight.shape[dim]))
        assume(distinct(prune_norms(weight, n, dim)))
        mask = LnStructured(**level, n=n, dim=dim)(weight)
        assert torch.equal(mask, prune_ln_mask(weight, prune_amount(level), n, dim))

    @given(st.data())
    def test_importance_scores_bit_for_bit(self, data: st.DataObject) -> None:
        weight = data.draw(tie_free_tensors())
        scores = data.draw(tie_free_tensors(shape=tuple(weight.shape)))
        dim = data.draw(st.integers(-weight.dim(), weight.dim() - 1))
        # prune ranks the Ln norm of importance_scores; funcsparse ranks the sum of the
        # given scores, so |s| ** n gives prune's order for a finite n > 0 (the norm is a
        # monotone function of that sum). inf / -inf (max / min of |s|) have no such sum:
        # they are not drawn here.
        n = data.draw(st.sampled_from([1, 2, 3, 0.5]))
        level = data.draw(levels(weight.shape[dim]))
        powers = scores.abs() ** n
        dims = [d for d in range(weight.dim()) if d != dim % weight.dim()]
        assume(distinct(prune_norms(scores, n, dim)) and distinct(powers.sum(dims)))
        mask = LnStructured(**level, n=n, dim=dim)(weight, scores=powers)
        expected = prune_ln_mask(weight, prune_amount(level), n, dim, scores=scores)
        assert torch.equal(mask, expected)

    @given(st.data())
    def test_prev_mask_is_a_total_target(self, data: st.DataObject) -> None:
        # Until issue 8 a prev_mask was intersected with the fresh mask, as
        # prune.LnStructured.compute_mask(t, default_mask) does (so 50% then 50% gave ~73%
        # zeros). Now prev_masks means one thing for every method: the norms are taken over
        # the weights as the model sees them (pruned entries are 0), nothing pruned comes
        # back, and slices are taken in rank order until the zeros reach the level's total.
        weight = data.draw(tie_free_tensors(max_dims=3))
        dim = data.draw(st.integers(-weight.dim(), weight.dim() - 1))
        level = data.draw(levels(weight.shape[dim]))
        generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        prev = torch.rand(weight.shape, generator=generator) > data.draw(
            st.sampled_from([0.0, 0.1, 0.3, 0.7])
        )
        seen = torch.where(prev, weight, torch.zeros((), dtype=weight.dtype))
        norms = prune_norms(seen, 2, dim)
        assume(distinct(norms))
        method = LnStructured(**level, n=2, dim=dim)
        mask = method(weight, prev_mask=prev)
        count = pruned_count(level, weight.shape[dim])
        assert torch.equal(mask, total_target_mask(weight, prev, norms, count, dim))
        check_leaf_mask(method, weight, mask, data={"prev_mask": prev})
        # Not prune's intersection: that one adds `count` fresh slices to the previous zeros,
        # this one stops once the zeros reach the total (which can overshoot by part of a
        # slice, so neither count bounds the other; the long profile found such a case).

    @given(st.data())
    def test_random_structured_equals_manual_seed(self, data: st.DataObject) -> None:
        ndim = data.draw(st.integers(2, 4))
        shape = tuple(data.draw(st.integers(1, 6)) for _ in range(ndim))
        dim = data.draw(st.integers(-ndim, ndim - 1))
        level = data.draw(levels(shape[dim]))
        seed = data.draw(st.integers(0, 2**63 - 1))
        weight = torch.zeros(shape)
        values = torch.rand(shape[dim], generator=torch.Generator().manual_seed(seed))
        assume(distinct(values))
        mask = RandomStructured(**level, dim=dim, seed=seed)(weight)
        assert torch.equal(mask, prune_random_mask(weight, prune_amount(level), dim, seed))


# --------------------------------------------------------------------------------------
# Invariants: counts, patterns, nesting, vmap
# --------------------------------------------------------------------------------------


@st.composite
def any_tensors(draw: st.DrawFn) -> Tensor:
    """Tensors of 2 to 4 dims (sides may be 0), with ties, NaN and inf sometimes."""
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(0 if draw(st.booleans()) else 1, 5)) for _ in range(ndim))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    values = torch.randint(-2, 3, shape, generator=generator).double() / 2
    if draw(st.booleans()):
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
    if draw(st.booleans()) and values.numel():
        values.view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return values.to(dtype)


def _valid(method: Any, tensor: Tensor, **data: Any) -> bool:
    return method.check_leaf(tensor, **data) is None


@given(st.data())
def test_ln_invariants(data: st.DataObject) -> None:
    method = data.draw(LnStructured.configs(st))
    tensor = data.draw(any_tensors())
    assume(_valid(method, tensor))
    mask = method(tensor)
    check_leaf_mask(method, tensor, mask)
    if tensor.numel():
        dim = method.dim % tensor.dim()
        level: Level = (
            {"count": method.count} if method.count is not None else {"sparsity": method.sparsity}
        )
        pruned = pruned_count(level, tensor.shape[dim])
        assert slice_pattern(mask, dim).count(False) == pruned


@given(st.data())
def test_random_invariants(data: st.DataObject) -> None:
    method = data.draw(RandomStructured.configs(st))
    tensor = data.draw(any_tensors())
    assume(_valid(method, tensor))
    check_leaf_mask(method, tensor, method(tensor))
    check_leaf_mask(method.for_leaf("a.b"), tensor, method.for_leaf("a.b")(tensor))


@given(st.data())
def test_higher_level_prunes_a_superset(data: st.DataObject) -> None:
    tensor = data.draw(any_tensors())
    assume(tensor.numel() > 0)
    dim = data.draw(st.integers(-tensor.dim(), tensor.dim() - 1))
    size = tensor.shape[dim]
    low, high = sorted(data.draw(st.lists(st.integers(0, size), min_size=2, max_size=2)))
    n = data.draw(st.sampled_from(NORMS[:5]))
    seed = data.draw(st.integers(0, 2**32 - 1))
    for method in (
        LnStructured(count=low, n=n, dim=dim),
        RandomStructured(count=low, dim=dim, seed=seed),
    ):
        higher = dataclasses.replace(method, count=high)
        assert not bool((higher(tensor) & ~method(tensor)).any())
    # Fractions too.
    low_f, high_f = low / size, high / size
    for method in (
        LnStructured(low_f, n=n, dim=dim),
        RandomStructured(low_f, dim=dim, seed=seed),
    ):
        higher = dataclasses.replace(method, sparsity=high_f)
        assert not bool((higher(tensor) & ~method(tensor)).any())


@given(st.data())
def test_ln_vmap_agrees_with_members(data: st.DataObject) -> None:
    first = data.draw(tie_free_tensors(min_dims=2, max_dims=3))
    shape, dtype = first.shape, first.dtype
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    others = torch.randn(3, *shape, generator=generator, dtype=dtype)
    stacked = torch.cat([first[None], others])
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = data.draw(st.sampled_from(NORMS + (["nuc"] if len(shape) == 3 else [])))
    method = LnStructured(**data.draw(levels(shape[dim])), n=n, dim=dim)
    batched = torch.func.vmap(lambda t: method(t))(stacked)
    for i in range(stacked.shape[0]):
        assert torch.equal(batched[i], method(stacked[i]))
    scores = stacked.abs().flip(0)
    masks = fs.compute_masks({"w": stacked}, {"w": method}, batch_dims=1, scores={"w": scores})
    through = masks["w"]
    for i in range(stacked.shape[0]):
        assert torch.equal(through[i], method(stacked[i], scores=scores[i]))


class TestStructureChecks:
    def test_structure_problem_catches_a_partial_slice(self) -> None:
        weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        for method in (LnStructured(count=1, n=2, dim=0), RandomStructured(count=1, dim=0)):
            mask = method(weight).clone()
            assert method.structure_problem(weight, mask) is None
            row = int((~mask).all(1).nonzero()[0])
            mask[row, 0] = True
            assert method.structure_problem(weight, mask) == (
                f"slice {row} along dim=0 has 2 of 3 entries pruned; a slice is all kept or "
                "all pruned"
            )

    def test_structure_problem_counts_slices(self) -> None:
        weight = torch.randn(4, 3)
        method = LnStructured(count=2, n=2, dim=0)
        one_row = torch.ones(4, 3, dtype=torch.bool)
        one_row[1] = False
        assert method.structure_problem(weight, one_row) == (
            "1 of 4 slices along dim=0 are pruned; expected 2 (count=2)"
        )
        assert method.structure_problem(weight, method(weight)) is None
        assert method.expected_zeros(weight) == 6
        assert RandomStructured(sparsity=0.5, dim=-1).expected_zeros(torch.randn(2, 3, 4)) == 12

    def test_structure_problem_with_prev_mask(self) -> None:
        weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
        prev = torch.ones(4, 3, dtype=torch.bool)
        prev[0, 0] = prev[2, 1] = False
        method = RandomStructured(count=1, dim=0, seed=2)
        mask = method(weight, prev_mask=prev)
        assert method.expected_zeros(weight, prev_mask=prev) is None
        assert method.structure_problem(weight, mask, prev_mask=prev) is None
        check_leaf_mask(method, weight, mask, data={"prev_mask": prev})
        assert "keeps entries that prev_mask prunes" in str(
            method.structure_problem(weight, torch.ones(4, 3, dtype=torch.bool), prev_mask=prev)
        )
        bad = prev.clone()
        bad[3, 2] = False  # a new zero that is not a whole slice
        assert "not all pruned" in str(method.structure_problem(weight, bad, prev_mask=prev))

    def test_check_leaf_mask_rejects_a_corrupted_mask(self) -> None:
        weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        method = LnStructured(count=1, n=2, dim=0)
        mask = method(weight).clone()
        mask[0, 0] = not bool(mask[0, 0])
        with pytest.raises(AssertionError):
            check_leaf_mask(method, weight, mask)


# --------------------------------------------------------------------------------------
# Configs and errors
# --------------------------------------------------------------------------------------


class TestConfig:
    def test_frozen_and_keyword_only(self) -> None:
        method = LnStructured(sparsity=0.5, n=2, dim=0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            method.sparsity = 0.3
        with pytest.raises(TypeError, match="too many positional arguments"):
            LnStructured(0.5, 2, 0)
        with pytest.raises(TypeError, match="too many positional arguments"):
            RandomStructured(0.5, 0)
        assert RandomStructured(count=1, dim=0).seed == 0
        assert LnStructured(0.5, n=2, dim=0) == method
        assert RandomStructured(0.5, dim=0, seed=3) == RandomStructured(sparsity=0.5, dim=0, seed=3)

    @pytest.mark.parametrize("cls", [LnStructured, RandomStructured])
    def test_a_wrong_call_says_how_to_call_it(self, cls: type[Any]) -> None:
        extra = {"n": 2} if cls is LnStructured else {}
        with pytest.raises(TypeError) as info:
            cls(amount=0.5, dim=0, **extra)
        message = str(info.value)
        assert message.startswith(
            f"{cls.__name__}: got an unexpected keyword argument 'amount' (funcsparse's "
            "'amount' is sparsity (a fraction in [0, 1]) or count (a number of entries)); "
            f"call it as {cls.__name__}(sparsity=None, *, count=None, dim"
        )
        with pytest.raises(TypeError, match=f"{cls.__name__}: missing a required argument: 'dim'"):
            cls(0.5, **extra)

    @pytest.mark.parametrize("cls", [LnStructured, RandomStructured])
    @pytest.mark.parametrize(
        ("level", "error", "message"),
        [
            ({"count": -1}, ValueError, "count=-1 must be a non-negative number"),
            ({"sparsity": 1.5}, ValueError, r"sparsity must be a fraction in \[0, 1\], got 1.5"),
            ({"sparsity": -0.1}, ValueError, r"sparsity must be a fraction in \[0, 1\], got -0.1"),
            ({"sparsity": float("nan")}, ValueError, r"sparsity must be a fraction .* got nan"),
            ({"sparsity": True}, TypeError, r"sparsity must be a fraction .* got bool True"),
            ({"count": True}, TypeError, r"count must be an int \(a number of slices\), got bool"),
            ({"sparsity": "0.5"}, TypeError, "sparsity must be a fraction"),
            ({"count": 0.5}, TypeError, "count must be an int"),
            ({}, TypeError, "give exactly one of sparsity .* got neither"),
            ({"sparsity": 0.5, "count": 1}, TypeError, "give exactly one of sparsity .* got both"),
        ],
    )
    def test_bad_levels(
        self, cls: type[Any], level: dict[str, object], error: type[Exception], message: str
    ) -> None:
        kwargs: dict[str, object] = {**level, "dim": 0}
        if cls is LnStructured:
            kwargs["n"] = 2
        with pytest.raises(error, match=f"{cls.__name__}: {message}"):
            cls(**kwargs)

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"n": "l1"}, ValueError, "n must be a number, 'fro' or 'nuc', got 'l1'"),
            ({"n": True}, TypeError, "n must be a real number"),
            ({"n": None}, TypeError, "n must be a real number"),
            ({"n": float("nan")}, ValueError, "n must not be NaN"),
            ({"dim": 0.0}, TypeError, "dim must be an int"),
            ({"dim": False}, TypeError, "dim must be an int"),
        ],
    )
    def test_bad_ln_fields(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=f"LnStructured: {message}"):
            LnStructured(**{"sparsity": 0.5, "n": 2, "dim": 0, **kwargs})

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
            ({"seed": 2**64}, ValueError, "seed must be in"),
            ({"seed": 1.0}, TypeError, "seed must be an int"),
            ({"dim": "0"}, TypeError, "dim must be an int"),
        ],
    )
    def test_bad_random_fields(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=f"RandomStructured: {message}"):
            RandomStructured(**{"sparsity": 0.5, "dim": 0, **kwargs})

    def test_prune_rejects_the_same_levels(self) -> None:
        for amount in (-1, 1.5, -0.1):
            with pytest.raises(ValueError):
                prune.LnStructured(amount, n=2, dim=0)
        with pytest.raises(ValueError, match="should be smaller than the number"):
            prune_ln_mask(torch.randn(3, 2), 4, 2, 0)


class TestLeafErrors:
    @pytest.mark.parametrize(
        ("method", "leaf", "error", "message"),
        [
            (
                LnStructured(count=1, n=2, dim=0),
                torch.ones(4),
                ValueError,
                "LnStructured: got a 1-D torch.float32 tensor of shape (4,); structured pruning "
                "needs a tensor of 2 or more dims (LnStructured prunes whole slices along dim=0)",
            ),
            (
                RandomStructured(count=1, dim=0),
                torch.tensor(1.0),
                ValueError,
                "RandomStructured: got a 0-D torch.float32 tensor of shape (); structured "
                "pruning needs a tensor of 2 or more dims",
            ),
            (
                LnStructured(count=1, n=2, dim=2),
                torch.ones(3, 4),
                ValueError,
                "LnStructured: got dim=2 for a 2-D torch.float32 tensor of shape (3, 4); dim "
                "must be in [-2, 1]",
            ),
            (
                RandomStructured(count=1, dim=-4),
                torch.ones(2, 3, 4),
                ValueError,
                "dim=-4 for a 3-D torch.float32 tensor of shape (2, 3, 4); dim must be in [-3, 2]",
            ),
            (
                LnStructured(count=4, n=1, dim=0),
                torch.ones(3, 5),
                ValueError,
                "LnStructured: got count=4 for a 2-D torch.float32 tensor of shape (3, 5); "
                "count=4 is more than the 3 slices along dim=0",
            ),
            (
                RandomStructured(count=6, dim=-1),
                torch.ones(3, 5),
                ValueError,
                "count=6 is more than the 5 slices along dim=-1",
            ),
            (
                LnStructured(count=1, n="nuc", dim=0),
                torch.ones(3, 5),
                ValueError,
                "n='nuc' needs a 3-D tensor",
            ),
            (
                LnStructured(count=1, n=2, dim=0),
                torch.ones(3, 5, dtype=torch.int64),
                TypeError,
                "LnStructured needs floating-point weights",
            ),
            (LnStructured(count=1, n=2, dim=0), [[1.0]], TypeError, "got list"),
            (RandomStructured(count=1, dim=0), [[1.0]], TypeError, "needs a tensor"),
        ],
    )
    def test_bad_leaf(
        self, method: Any, leaf: object, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=re.escape(message)):
            method(leaf)

    def test_bad_data(self) -> None:
        weight = torch.ones(3, 4)
        with pytest.raises(TypeError, match="LnStructured needs floating scores"):
            LnStructured(count=1, n=2, dim=0)(weight, scores=torch.ones(3, 4, dtype=torch.int32))
        with pytest.raises(ValueError, match="scores must have the tensor's shape"):
            LnStructured(count=1, n=2, dim=0)(weight, scores=torch.ones(4, 3))
        with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
            RandomStructured(count=1, dim=0)(weight, generator=3)
        with pytest.raises(TypeError, match=r"LnStructured takes \['prev_mask', 'scores'\]"):
            LnStructured(count=1, n=2, dim=0)(weight, generator=torch.Generator())
        with pytest.raises(TypeError, match=r"RandomStructured takes \['generator', 'prev_mask'\]"):
            RandomStructured(count=1, dim=0)(weight, scores=weight)

    def test_compute_masks_names_the_leaf_path(self) -> None:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        params = {name: p.detach() for name, p in model.named_parameters()}
        with pytest.raises(
            ValueError,
            match=re.escape(
                "compute_masks: rule '0.*' (LnStructured) got a 1-D torch.float32 tensor of "
                "shape (4,) at '0.bias'; structured pruning needs a tensor of 2 or more dims"
            ),
        ):
            fs.compute_masks(params, {"0.*": LnStructured(sparsity=0.5, n=1, dim=0)})
        with pytest.raises(
            ValueError,
            match=re.escape(
                "compute_masks: rule '*.weight' (LnStructured) got count=3 for a 4-D "
                "torch.float32 tensor of shape (2, 4, 3, 3) at '2.weight'; count=3 is more "
                "than the 2 slices along dim=0"
            ),
        ):
            fs.compute_masks(params, {"*.weight": LnStructured(count=3, n=1, dim=0)})
        with pytest.raises(ValueError, match=re.escape("at '0.weight'; dim must be in [-4, 3]")):
            fs.compute_masks(params, {"0.weight": RandomStructured(count=1, dim=4)})

    def test_compute_masks_prunes_conv_filters(self) -> None:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        params = {name: p.detach() for name, p in model.named_parameters()}
        masks = fs.compute_masks(params, {"*.weight": LnStructured(sparsity=0.5, n=1, dim=0)})
        assert masks["0.bias"] is None
        for name in ("0.weight", "2.weight"):
            expected = prune_ln_mask(params[name], 0.5, 1, 0)
            assert torch.equal(masks[name], expected)
            assert slice_pattern(masks[name], 0).count(False) == params[name].shape[0] // 2


@pytest.mark.parametrize("cls", [LnStructured, RandomStructured])
def test_empty_tensors(cls: type[Any]) -> None:
    method = cls(0.5, n=-INF, dim=0) if cls is LnStructured else cls(0.5, dim=0)
    for shape in [(0, 3), (3, 0), (2, 0, 4)]:
        weight = torch.ones(shape)
        mask = method(weight)
        assert mask.shape == weight.shape and mask.dtype == torch.bool
        check_leaf_mask(method, weight, mask)


# -- memory: prev_mask work chunk by chunk, the same masks (issue 9) ------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_prev_mask_chunks_give_the_masks_of_one_pass(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import funcsparse.methods.structured as structured

    generator = torch.Generator().manual_seed(0)
    cases = []
    for shape, dim in (((6, 5), 0), ((6, 5), 1), ((4, 3, 5), -1), ((3, 4, 2, 2), 1)):
        weight = torch.randn(shape, generator=generator)
        prev_mask = torch.rand(shape, generator=generator) > 0.4
        for method in (
            fs.LnStructured(0.5, n=2, dim=dim),
            fs.LnStructured(count=1, n=1, dim=dim),
            fs.LnStructured(0.75, n="fro", dim=dim),
            fs.RandomStructured(0.5, dim=dim, seed=3),
        ):
            cases.append((method, weight, prev_mask, method(weight, prev_mask=prev_mask)))
    monkeypatch.setattr(structured, "_CHUNK", chunk)
    for method, weight, prev_mask, whole in cases:
        assert torch.equal(method(weight, prev_mask=prev_mask), whole), method
        # the per-slice scores themselves, bit for bit, as one masked pass gives them
        if isinstance(method, fs.LnStructured):
            dim = method.dim % weight.dim()
            masked = torch.where(prev_mask, weight, torch.zeros(()))
            expected = structured._norms(masked, method.n, dim)
            got = method.slice_scores(weight, {"prev_mask": prev_mask})
            assert torch.equal(got, expected)


def test_nuclear_norm_of_low_precision_weights() -> None:
    weight = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float16, torch.bfloat16):
        mask = fs.LnStructured(0.5, n="nuc", dim=0)(weight.to(dtype))
        assert int((~mask).flatten(1).all(1).sum()) == 2


@pytest.mark.parametrize("chunk", [1, 5, 1 << 22])
def test_kept_per_slice_counts_in_one_buffer(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The eager path casts every chunk into one reused buffer (a fresh cast per chunk
    # fragmented the heap to ~1.8x the leaf): the same counts as one count_nonzero, and
    # under vmap (the per-chunk path) too; the prev_mask is not touched.
    import funcsparse.methods.structured as structured

    monkeypatch.setattr(structured, "_CHUNK", chunk)
    generator = torch.Generator().manual_seed(2)
    for shape in ((6, 5), (4, 3, 5), (3, 4, 2, 2), (1, 7)):
        mask = torch.rand(shape, generator=generator) > 0.5
        for dim in range(len(shape)):
            expected = torch.count_nonzero(mask.movedim(dim, 0).reshape(shape[dim], -1), 1)
            assert torch.equal(structured._kept_per_slice(mask, dim), expected)
            stacked = torch.stack([mask, ~mask])
            batched = torch.func.vmap(lambda m, d=dim: structured._kept_per_slice(m, d))(stacked)
            assert torch.equal(batched[0], expected)
            assert torch.equal(batched[1], mask.numel() // shape[dim] - expected)
        before = mask.clone()
        out = fs.LnStructured(0.5, n=1, dim=0)(
            torch.randn(shape, generator=generator), prev_mask=mask
        )
        assert torch.equal(mask, before) and out.data_ptr() != mask.data_ptr()
        assert not bool((out & ~mask).any())


def test_an_int_order_beyond_64_bits_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^LnStructured: n=18446744073709551617 does not fit in 64 bits"
    ):
        LnStructured(0.5, n=2**64 + 1, dim=0)
