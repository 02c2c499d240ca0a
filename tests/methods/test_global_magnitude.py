"""GlobalMagnitude: bit-for-bit agreement with prune.global_unstructured, the cross-tensor tie
order, exact counts, the exact fallbacks of the sampled bracket, prev_mask, errors."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils import prune

import funcsparse as fs
import funcsparse.methods.global_magnitude as gm
from funcsparse.methods.global_magnitude import GlobalMagnitude
from funcsparse.testing import check_masks
from funcsparse.testing import strategies as fst

SHAPES = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 40)),
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)),
    ),
    min_size=1,
    max_size=5,
)


def tie_free(
    shapes: list[tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32
) -> list[Tensor]:
    """Distinct magnitudes over all the tensors: one randperm of the total, random signs."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    magnitudes = (torch.randperm(total, generator=generator).double() + total) / (2 * total)
    signs = torch.randint(0, 2, (total,), generator=generator).double() * 2 - 1
    values = (magnitudes * signs).to(dtype)
    return [
        part.reshape(shape).clone() for part, shape in zip(values.split(sizes), shapes, strict=True)
    ]


def prune_global(
    tensors: list[Tensor], amount: float | int, scores: list[Tensor] | None = None
) -> list[Tensor]:
    """torch.nn.utils.prune.global_unstructured(L1Unstructured)'s masks, as bool."""
    modules = []
    for tensor in tensors:
        module = nn.Module()
        module.weight = nn.Parameter(tensor.clone())
        modules.append(module)
    importance = None
    if scores is not None:
        importance = {(m, "weight"): s for m, s in zip(modules, scores, strict=True)}
    prune.global_unstructured(
        [(m, "weight") for m in modules],
        pruning_method=prune.L1Unstructured,
        importance_scores=importance,
        amount=amount,
    )
    return [m.weight_mask.bool() for m in modules]


def from_amount(amount: float | int) -> GlobalMagnitude:
    """The GlobalMagnitude of prune's ``amount``: an int is a count, a float a sparsity."""
    if isinstance(amount, int):
        return GlobalMagnitude(count=amount)
    return GlobalMagnitude(amount)


def reference(
    tensors: list[Tensor],
    amount: float | int,
    *,
    scores: list[Tensor | None] | None = None,
    prev: list[Tensor | None] | None = None,
) -> list[Tensor]:
    """The documented rule by brute force: one stable sort of every score concatenated
    (|w|, or given scores as they are; previously pruned entries at -inf, NaN last), the k
    lowest-ranked pruned."""
    flat = []
    n_prev = 0
    for i, tensor in enumerate(tensors):
        given = None if scores is None else scores[i]
        source = tensor.detach().abs() if given is None else given.detach()
        values = source.double().reshape(-1).clone()
        if prev is not None and prev[i] is not None:
            pruned_before = ~prev[i].reshape(-1)
            values[pruned_before] = -math.inf
            n_prev += int(pruned_before.sum())
        flat.append(values)
    joined = torch.cat(flat) if flat else torch.empty(0, dtype=torch.float64)
    total = joined.numel()
    k = amount if isinstance(amount, int) else round(amount * total)
    k = max(k, n_prev)
    pruned = torch.zeros(total, dtype=torch.bool)
    pruned[torch.sort(joined, stable=True).indices[:k]] = True
    sizes = [t.numel() for t in tensors]
    return [(~p).reshape(t.shape) for p, t in zip(pruned.split(sizes), tensors, strict=True)]


def assert_masks_equal(got: list[Tensor], expected: list[Tensor]) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.dtype == torch.bool and g.shape == e.shape, (i, g.dtype, g.shape, e.shape)
        assert torch.equal(g, e), f"tensor {i}: {int((g != e).sum())} entries differ"


@contextlib.contextmanager
def tiny_bracket(sample: int = 8, gather: int = 4) -> Iterator[None]:
    """Shrink the sample, the gather cap and the chunks, so that the exact fallbacks and the
    chunked passes run on small inputs."""
    names = ("_SAMPLE_SIZE", "_NARROW_SAMPLE_SIZE", "_GATHER_MIN", "_SAMPLE_SLACK", "_CHUNK")
    values = (sample, max(1, sample // 2), gather, 0, 7)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(gm, "_TIE_CHUNK", 3))
        for name, value in zip(names, values, strict=True):
            stack.enter_context(mock.patch.object(gm, name, value))
        yield


@contextlib.contextmanager
def small_chunks() -> Iterator[None]:
    """Compute the scores 5 entries at a time (ties located 3 at a time)."""
    with mock.patch.object(gm, "_CHUNK", 5), mock.patch.object(gm, "_TIE_CHUNK", 3):
        yield


@contextlib.contextmanager
def narrowing_spy() -> Iterator[mock.MagicMock]:
    """Record whether the exact narrowing fallback ran."""
    with mock.patch.object(gm, "_narrow", wraps=gm._narrow) as spy:
        yield spy


SPARSITIES = st.one_of(
    st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.floats(0.0, 1.0, allow_nan=False)
)


# --- bit-for-bit agreement with torch.nn.utils.prune --------------------------------------


@given(
    shapes=SHAPES,
    seed=st.integers(0, 2**31 - 1),
    sparsity=SPARSITIES,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    chunked=st.booleans(),
)
def test_sparsities_equal_prune_global_unstructured(
    shapes: list[tuple[int, ...]], seed: int, sparsity: float, dtype: torch.dtype, chunked: bool
) -> None:
    tensors = tie_free(shapes, seed, dtype)
    with small_chunks() if chunked else contextlib.nullcontext():
        got = GlobalMagnitude(sparsity).global_masks(tensors)
    assert_masks_equal(got, prune_global(tensors, sparsity))


@given(shapes=SHAPES, seed=st.integers(0, 2**31 - 1), data=st.data())
def test_counts_equal_prune_global_unstructured(
    shapes: list[tuple[int, ...]], seed: int, data: st.DataObject
) -> None:
    tensors = tie_free(shapes, seed)
    count = data.draw(st.integers(0, sum(t.numel() for t in tensors)))
    got = GlobalMagnitude(count=count).global_masks(tensors)
    assert_masks_equal(got, prune_global(tensors, count))
    assert sum(int((~m).sum()) for m in got) == count


@given(shapes=SHAPES, seed=st.integers(0, 2**31 - 1), sparsity=SPARSITIES)
def test_importance_scores_equal_prune_global_unstructured(
    shapes: list[tuple[int, ...]], seed: int, sparsity: float
) -> None:
    tensors = [torch.randn(shape) for shape in shapes]  # ties in |w| do not matter here
    scores = tie_free(shapes, seed + 1)
    # prune ranks |importance_scores|; funcsparse ranks scores as given: pass |s|.
    data = [{"scores": s.abs()} for s in scores]
    got = GlobalMagnitude(sparsity).global_masks(tensors, data)
    assert_masks_equal(got, prune_global(tensors, sparsity, scores))


@pytest.mark.parametrize("amount", [0.0007, 0.3, 0.5, 0.97, 12345])
def test_large_groups_through_the_sampled_bracket_equal_prune(amount: float | int) -> None:
    # 660k entries: a strided sample of 65536 and a gathered bracket, as on real models.
    shapes = [(300, 700), (1000,), (640, 700), (7, 11, 13)]
    tensors = tie_free(shapes, seed=3)
    got = from_amount(amount).global_masks(tensors)
    assert_masks_equal(got, prune_global(tensors, amount))


def test_compute_masks_selects_across_the_rules_leaves_in_flattening_order() -> None:
    shapes = [(20, 30), (50,), (30, 20)]
    tensors = tie_free(shapes, seed=7)
    tensors[0] = tensors[0] / 4  # a layer of small weights: global pruning takes more there
    params = {"a.weight": tensors[0], "a.bias": tensors[1], "b.weight": tensors[2]}
    masks = fs.compute_masks(params, {"*.weight": GlobalMagnitude(sparsity=0.4)})
    expected = prune_global([tensors[0], tensors[2]], 0.4)
    assert masks["a.bias"] is None
    assert_masks_equal([masks["a.weight"], masks["b.weight"]], expected)
    # every |w| of "a" is below every |w| of "b": the 480 zeros all land in "a"
    assert int((~masks["a.weight"]).sum()) == 480 and bool(masks["b.weight"].all())


def test_one_tensor_prunes_within_it_like_l1_unstructured() -> None:
    (weight,) = tie_free([(33, 17)], seed=11)
    module = nn.Linear(17, 33, bias=False)
    with torch.no_grad():
        module.weight.copy_(weight)
    prune.l1_unstructured(module, "weight", amount=0.3)
    assert torch.equal(GlobalMagnitude(sparsity=0.3)(weight), module.weight_mask.bool())


# --- the tie rule, pinned ------------------------------------------------------------------


def test_ties_across_tensors_prune_the_earlier_tensor_then_the_lower_index_first() -> None:
    first = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    second = torch.tensor([-1.0, 1.0, 0.5])
    # 0.5 is lowest; then four entries tie at |w| = 1: first[0, 0], first[1, 1], second[0],
    # second[1]. Three zeros take first[0, 0] and first[1, 1].
    got = GlobalMagnitude(count=3).global_masks([first, second])
    assert_masks_equal(
        got,
        [torch.tensor([[False, True], [True, False]]), torch.tensor([True, True, False])],
    )
    # four zeros reach into the second tensor, lower index first
    got = GlobalMagnitude(count=4).global_masks([first, second])
    assert_masks_equal(
        got,
        [torch.tensor([[False, True], [True, False]]), torch.tensor([False, True, False])],
    )
    # the order is the group's: swapping the tensors swaps who loses the ties
    got = GlobalMagnitude(count=3).global_masks([second, first])
    assert_masks_equal(
        got,
        [torch.tensor([False, False, False]), torch.tensor([[True, True], [True, True]])],
    )


def test_nan_ranks_above_every_number_and_ties_among_nans_go_in_group_order() -> None:
    nan, inf = math.nan, math.inf
    first = torch.tensor([nan, 1.0, inf])
    second = torch.tensor([nan, -inf, 0.0])
    got = GlobalMagnitude(count=4).global_masks([first, second])
    assert_masks_equal(
        got, [torch.tensor([True, False, False]), torch.tensor([True, False, False])]
    )
    got = GlobalMagnitude(count=5).global_masks([first, second])
    assert_masks_equal(
        got, [torch.tensor([False, False, False]), torch.tensor([True, False, False])]
    )


@given(
    tensors=st.lists(
        st.one_of(st.tuples(st.integers(0, 30)), fst.shapes()).flatmap(
            lambda shape: fst.tensors(shape, ties=True, special=True)
        ),
        min_size=1,
        max_size=4,
    ),
    sparsity=SPARSITIES,
    mode=st.sampled_from(["plain", "tiny", "chunked"]),
)
def test_ties_nan_inf_and_mixed_dtypes_follow_the_documented_order(
    tensors: list[Tensor], sparsity: float, mode: str
) -> None:
    contexts = {"plain": contextlib.nullcontext, "tiny": tiny_bracket, "chunked": small_chunks}
    with contexts[mode]():
        got = GlobalMagnitude(sparsity).global_masks(tensors)
    assert_masks_equal(got, reference(tensors, sparsity))


@given(
    tensors=st.lists(fst.tensors(ties=False), min_size=1, max_size=4),
    sparsity=SPARSITIES,
    seed=st.integers(0, 2**31 - 1),
)
def test_mixed_dtypes_compare_exact_values(
    tensors: list[Tensor], sparsity: float, seed: int
) -> None:
    # Values that no narrower dtype holds: a threshold from a float64 tensor compared with
    # float16 entries must not be rounded first.
    generator = torch.Generator().manual_seed(seed)
    extra = (torch.rand(17, generator=generator, dtype=torch.float64) * 3).reshape(17)
    group = [*tensors, extra]
    got = GlobalMagnitude(sparsity).global_masks(group)
    assert_masks_equal(got, reference(group, sparsity))


# --- exact counts through funcsparse.testing ----------------------------------------------


@given(tree=fst.params(ties=None, special=True), sparsity=SPARSITIES)
def test_check_masks_holds_on_every_layout(tree: object, sparsity: float) -> None:
    check_masks(tree, {"**.weight": GlobalMagnitude(sparsity)})


@given(tree=fst.params(biases=False, ties=True), data=st.data())
def test_check_masks_holds_for_counts(tree: object, data: st.DataObject) -> None:
    from funcsparse._tree import flatten_with_paths

    _, leaves, _ = flatten_with_paths(tree)
    total = sum(leaf.numel() for leaf in leaves)
    count = data.draw(st.integers(0, total))
    check_masks(tree, {"**.weight": GlobalMagnitude(count=count)})
    masks = fs.compute_masks(tree, {"**.weight": GlobalMagnitude(count=count)})
    _, mask_leaves, _ = flatten_with_paths(masks)
    assert sum(int((~m).sum()) for m in mask_leaves) == count


def test_raising_the_level_never_unprunes() -> None:
    tensors = [torch.randint(-3, 4, (40, 30)).float(), torch.randn(500)]
    previous = None
    for sparsity in [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]:
        masks = GlobalMagnitude(sparsity).global_masks(tensors)
        if previous is not None:
            assert not any(bool((m & ~p).any()) for m, p in zip(masks, previous, strict=True))
        previous = masks


@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31 - 1),
    sparsity=SPARSITIES,
    tiny=st.booleans(),
    prev_too=st.booleans(),
)
def test_inputs_are_untouched_and_non_contiguous_tensors_rank_in_row_major_order(
    shape: tuple[int, int, int], seed: int, sparsity: float, tiny: bool, prev_too: bool
) -> None:
    generator = torch.Generator().manual_seed(seed)
    permuted = torch.randint(-2, 3, shape, generator=generator).float().permute(2, 0, 1)
    other = torch.randint(-2, 3, (64,), generator=generator).float()
    prev = [torch.rand(shape, generator=generator).permute(2, 0, 1) > 0.3, None]
    data = [{"prev_mask": prev[0]}, {}] if prev_too else None
    before = [permuted.clone(), other.clone(), prev[0].clone()]
    with tiny_bracket() if tiny else contextlib.nullcontext():
        got = GlobalMagnitude(sparsity).global_masks([permuted, other], data)
    expected = reference(
        [permuted.contiguous(), other],
        sparsity,
        prev=[prev[0].contiguous(), None] if prev_too else None,
    )
    assert_masks_equal(got, expected)
    assert torch.equal(permuted, before[0]) and torch.equal(other, before[1])
    assert torch.equal(prev[0], before[2])


# --- the exact fallbacks of the sampled bracket -------------------------------------------


def test_structured_data_that_defeats_the_strided_sample_is_exact() -> None:
    # Every strided sample position holds a huge value, so the sample brackets the wrong
    # place; the narrowing fallback must still find the exact k-th.
    total = 1 << 21
    stride = total // gm._SAMPLE_SIZE
    values = torch.arange(1, total + 1, dtype=torch.float32) / total
    values[::stride] += 2.0  # still distinct in float32
    tensors = [values[: total // 2].reshape(1024, -1).clone(), values[total // 2 :].clone()]
    for sparsity in [0.25, 0.5, 0.999]:
        with narrowing_spy() as spy:
            got = GlobalMagnitude(sparsity).global_masks(tensors)
        assert spy.called
        assert_masks_equal(got, prune_global(tensors, sparsity))


def test_heavy_ties_are_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randint(0, 3, (700, 600), generator=generator).float(),
        torch.randint(-2, 3, (300_000,), generator=generator).float(),
        torch.zeros(1000, 70),
    ]
    for sparsity in [0.2, 0.5, 0.77, 0.9]:
        got = GlobalMagnitude(sparsity).global_masks(tensors)
        assert_masks_equal(got, reference(tensors, sparsity))


def test_a_bracket_of_ties_past_the_gather_cap_narrows_exactly() -> None:
    # 8 values, 131072 entries each: at a block boundary the bracket spans two blocks,
    # 262144 entries, more than the gather cap (65536), so it is narrowed by counting.
    block = 1 << 17
    generator = torch.Generator().manual_seed(1)
    values = torch.arange(1, 9, dtype=torch.float32).repeat_interleave(block)
    values = values[torch.randperm(8 * block, generator=generator)]
    tensors = [values[: 4 * block].reshape(512, -1).clone(), values[4 * block :].clone()]
    for amount in [4 * block, 4 * block - 1, 4 * block + 1, 0.5, 3 * block + 17]:
        with narrowing_spy() as spy:
            got = from_amount(amount).global_masks(tensors)
        assert spy.called
        assert_masks_equal(got, reference(tensors, amount))


@given(
    shapes=SHAPES,
    seed=st.integers(0, 2**31 - 1),
    sparsity=SPARSITIES,
    alphabet=st.sampled_from([2, 3, 1000]),
)
def test_the_narrowing_loop_is_exact(
    shapes: list[tuple[int, ...]], seed: int, sparsity: float, alphabet: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    tensors = [
        (torch.randint(-alphabet, alphabet + 1, shape, generator=generator) / 4).float()
        for shape in shapes
    ]
    with tiny_bracket():
        got = GlobalMagnitude(sparsity).global_masks(tensors)
    assert_masks_equal(got, reference(tensors, sparsity))


def test_the_narrowing_loop_agrees_with_prune_on_tie_free_inputs() -> None:
    tensors = tie_free([(60, 70), (333,), (5, 6, 7)], seed=5)
    with tiny_bracket(sample=16, gather=8):
        for amount in [1, 0.01, 0.5, 0.99, 4700]:
            with narrowing_spy() as spy:
                got = from_amount(amount).global_masks(tensors)
            assert spy.called
            assert_masks_equal(got, prune_global(tensors, amount))


# --- prev_mask: the level is the total target ---------------------------------------------


@given(
    shapes=SHAPES,
    seed=st.integers(0, 2**31 - 1),
    sparsity=SPARSITIES,
    density=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    tiny=st.booleans(),
)
def test_prev_mask_pruned_entries_rank_first_and_stay_pruned(
    shapes: list[tuple[int, ...]], seed: int, sparsity: float, density: float, tiny: bool
) -> None:
    tensors = tie_free(shapes, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    prev = [torch.rand(shape, generator=generator) >= density for shape in shapes]
    with tiny_bracket() if tiny else contextlib.nullcontext():
        got = GlobalMagnitude(sparsity).global_masks(tensors, [{"prev_mask": p} for p in prev])
    assert_masks_equal(got, reference(tensors, sparsity, prev=list(prev)))
    total = sum(t.numel() for t in tensors)
    previously = sum(int((~p).sum()) for p in prev)
    zeros = sum(int((~m).sum()) for m in got)
    assert zeros == max(round(sparsity * total), previously)
    assert all(not bool((m & ~p).any()) for m, p in zip(got, prev, strict=True))


def test_prev_masks_through_compute_masks_and_check_masks() -> None:
    tensors = tie_free([(10, 10), (10, 5)], seed=2)
    params = {"a.weight": tensors[0], "b.weight": tensors[1]}
    prev = {"a.weight": tensors[0].abs() > 0.7, "b.weight": torch.ones(10, 5, dtype=torch.bool)}
    pruned_before = int((~prev["a.weight"]).sum())
    assert 0 < pruned_before < 75
    rules = {"*.weight": GlobalMagnitude(sparsity=0.5)}
    masks = fs.compute_masks(params, rules, prev_masks=prev)
    assert sum(int((~m).sum()) for m in masks.values()) == 75  # the total, not 75 more
    assert not bool((masks["a.weight"] & ~prev["a.weight"]).any())
    check_masks(params, rules, prev_masks=prev)
    # a smaller target than what was pruned before: the previous masks, unchanged
    few = fs.compute_masks(params, {"*.weight": GlobalMagnitude(count=1)}, prev_masks=prev)
    assert torch.equal(few["a.weight"], prev["a.weight"])
    assert torch.equal(few["b.weight"], prev["b.weight"])


def test_scores_and_prev_mask_together() -> None:
    tensors = [torch.randn(20, 20), torch.randn(50)]
    scores = tie_free([(20, 20), (50,)], seed=9)
    prev = [torch.rand(20, 20) > 0.1, torch.rand(50) > 0.1]
    data = [{"scores": s, "prev_mask": p} for s, p in zip(scores, prev, strict=True)]
    got = GlobalMagnitude(sparsity=0.6).global_masks(tensors, data)
    assert_masks_equal(got, reference(tensors, 0.6, scores=list(scores), prev=list(prev)))


def test_scores_rank_as_given_signed_across_tensors() -> None:
    # Movement-style scores: the lowest (most negative) is pruned first, wherever it is.
    weights = [torch.ones(2), torch.ones(2)]
    scores = [torch.tensor([2.0, -3.0]), torch.tensor([1.0, 4.0])]
    data = [{"scores": s} for s in scores]
    got = GlobalMagnitude(count=1).global_masks(weights, data)
    assert_masks_equal(got, [torch.tensor([True, False]), torch.tensor([True, True])])
    got = GlobalMagnitude(count=2).global_masks(weights, data)
    assert_masks_equal(got, [torch.tensor([True, False]), torch.tensor([False, True])])
    params = {"a": weights[0], "b": weights[1]}
    masks = fs.compute_masks(
        params, {"*": GlobalMagnitude(0.75)}, scores={"a": scores[0], "b": scores[1]}
    )
    assert masks["a"].tolist() == [False, False] and masks["b"].tolist() == [False, True]
    # Without scores the weights rank by |w|: -3 is the largest magnitude.
    got = GlobalMagnitude(count=1).global_masks(scores)
    assert_masks_equal(got, [torch.tensor([True, True]), torch.tensor([False, True])])


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "error", "message"),
    [
        ({"count": -1}, ValueError, "GlobalMagnitude: count=-1 must be a non-negative number"),
        ({"sparsity": 1.5}, ValueError, "GlobalMagnitude: sparsity must be a fraction in [0, 1]"),
        ({"sparsity": -0.1}, ValueError, "sparsity must be a fraction in [0, 1], got -0.1"),
        ({"sparsity": math.nan}, ValueError, "sparsity must be a fraction in [0, 1], got nan"),
        ({"sparsity": True}, TypeError, "GlobalMagnitude: sparsity must be a fraction in [0, 1]"),
        ({"sparsity": "0.5"}, TypeError, "GlobalMagnitude: sparsity must be a fraction in [0, 1]"),
        ({"count": 3.0}, TypeError, "GlobalMagnitude: count must be an int (a number of entries)"),
        ({}, TypeError, "GlobalMagnitude: give exactly one of sparsity"),
        (
            {"sparsity": 0.5, "count": 3},
            TypeError,
            "got both; call it as GlobalMagnitude(sparsity=None, *, count=None)",
        ),
        ({"amount": 0.5}, TypeError, "GlobalMagnitude: got an unexpected keyword argument"),
    ],
)
def test_bad_levels_raise_on_construction(
    level: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        GlobalMagnitude(**level)


def test_a_count_above_the_group_total_names_the_rule() -> None:
    params = {"a.weight": torch.randn(3, 4), "b.weight": torch.randn(5), "b.bias": torch.randn(9)}
    # 17 weights in the group: 17 is fine although every single leaf is smaller
    masks = fs.compute_masks(params, {"*.weight": GlobalMagnitude(count=17)})
    assert not masks["a.weight"].any() and not masks["b.weight"].any()
    expected = (
        "compute_masks: rule '*.weight' (GlobalMagnitude) got count=18 for 17 entries over "
        "['a.weight', 'b.weight']; count is more than there are"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        fs.compute_masks(params, {"*.weight": GlobalMagnitude(count=18)})
    with pytest.raises(ValueError, match=re.escape("count=13 for 12 entries")):
        GlobalMagnitude(count=13)(params["a.weight"])


def test_bad_leaves_and_data_raise_naming_the_leaf() -> None:
    params = {"a.weight": torch.randn(3, 4), "b.weight": torch.ones(5, dtype=torch.int64)}
    with pytest.raises(
        TypeError, match=re.escape("at 'b.weight'; GlobalMagnitude needs a floating-point tensor")
    ):
        fs.compute_masks(params, {"*.weight": GlobalMagnitude(sparsity=0.5)})
    weights = {"a.weight": torch.randn(3, 4)}
    with pytest.raises(TypeError, match=re.escape("GlobalMagnitude needs floating scores")):
        fs.compute_masks(
            weights,
            {"*.weight": GlobalMagnitude(sparsity=0.5)},
            scores={"a.weight": torch.ones(3, 4, dtype=torch.int32)},
        )
    with pytest.raises(ValueError, match=re.escape("scores must have the tensor's shape")):
        GlobalMagnitude(sparsity=0.5).global_masks(
            [torch.randn(3, 4)], [{"scores": torch.randn(4, 3)}]
        )
    with pytest.raises(TypeError, match=re.escape("GlobalMagnitude takes ['prev_mask', 'scores']")):
        GlobalMagnitude(sparsity=0.5)(torch.randn(3), grads=torch.randn(3))


def test_empty_groups_and_tensors() -> None:
    assert GlobalMagnitude(sparsity=0.5).global_masks([]) == []
    weight = torch.tensor([0.4, -0.1, 0.3, 2.0])
    got = GlobalMagnitude(sparsity=0.5).global_masks([torch.empty(0, 3), weight, torch.empty(0)])
    expected = [torch.ones(0, 3, dtype=torch.bool), torch.tensor([True, False, False, True])]
    assert_masks_equal(got, [*expected, torch.ones(0, dtype=torch.bool)])
    with pytest.raises(ValueError, match=re.escape("count=1 for 0 entries")):
        GlobalMagnitude(count=1).global_masks([torch.empty(0)])


def test_ensembles_select_per_member() -> None:
    members = [tie_free([(6, 5), (7,)], seed=s) for s in range(3)]
    params = {
        "a.weight": torch.stack([m[0] for m in members]),
        "b.weight": torch.stack([m[1] for m in members]),
    }
    masks = fs.compute_masks(params, {"*.weight": GlobalMagnitude(sparsity=0.5)}, batch_dims=1)
    for j, member in enumerate(members):
        expected = prune_global(member, 0.5)
        assert_masks_equal([masks["a.weight"][j], masks["b.weight"][j]], expected)


# --- entries pruned before rank below every score, a real -inf included ------------------

SPECIAL_SCORES = st.sampled_from([-math.inf, -1.0, 0.0, 1.0, math.inf, math.nan])


def test_a_real_minus_inf_score_neither_unprunes_nor_adds_zeros() -> None:
    # The k-th score is -inf: the previous zeros (all -inf) come first, then real -infs.
    scores = [torch.tensor([-math.inf, 0.0, 5.0]), torch.tensor([-math.inf, 1.0])]
    prev = [torch.tensor([True, False, True]), torch.tensor([True, True])]
    data = [{"scores": s, "prev_mask": p} for s, p in zip(scores, prev, strict=True)]
    tensors = [torch.zeros(3), torch.zeros(2)]
    for count, expected in [
        (1, [[True, False, True], [True, True]]),
        (2, [[False, False, True], [True, True]]),
        (3, [[False, False, True], [False, True]]),
    ]:
        masks = GlobalMagnitude(count=count).global_masks(tensors, data)
        assert [m.tolist() for m in masks] == expected


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("count", [10, 50, 60, 149, 150, 151, 1000])
def test_a_real_minus_inf_score_on_large_tensors(count: int, gather: bool) -> None:
    # 2**17 entries: the sampled bracket, with (gather) the one-pass finish, or (without)
    # the masks built from an exact threshold. Real -infs on and off the sample's stride.
    n = 1 << 17
    scores = torch.randn(n, generator=torch.Generator().manual_seed(0))
    scores[1::8][:60] = -math.inf
    scores[:320:8] = -math.inf
    prev = torch.ones(n, dtype=torch.bool)
    prev[2::8][:50] = False
    limits = (
        contextlib.nullcontext()
        if gather
        else mock.patch.multiple(gm, _GATHER_MIN=0, _GATHER_FRACTION=1 << 30)
    )
    with limits:
        (mask,) = GlobalMagnitude(count=count).global_masks(
            [torch.zeros(n)], [{"scores": scores, "prev_mask": prev}]
        )
    assert int((~mask).sum()) == max(count, 50)
    assert not bool((mask & ~prev).any()), "a previously pruned weight came back"
    real = scores.isneginf()  # 100 of them, pruned by position after the previous zeros
    assert int((~mask & real).sum()) == min(max(count - 50, 0), 100)


@given(
    values=st.lists(SPECIAL_SCORES, min_size=2, max_size=24),
    data=st.data(),
)
def test_zeros_are_the_level_or_the_previous_zeros_for_any_scores(
    values: list[float], data: st.DataObject
) -> None:
    scores = torch.tensor(values)
    n = scores.numel()
    cut = data.draw(st.integers(0, n))
    prev = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    count = data.draw(st.integers(0, n))
    params = {"a.weight": torch.zeros(cut), "b.weight": torch.zeros(n - cut)}
    masks = fs.compute_masks(
        params,
        {"*.weight": GlobalMagnitude(count=count)},
        prev_masks={"a.weight": prev[:cut], "b.weight": prev[cut:]},
        scores={"a.weight": scores[:cut], "b.weight": scores[cut:]},
    )
    mask = torch.cat([masks["a.weight"], masks["b.weight"]])
    assert int((~mask).sum()) == max(count, int((~prev).sum()))
    assert not bool((mask & ~prev).any()), "a previously pruned weight came back"
