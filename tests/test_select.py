"""The selection primitives: exact counts and the documented tie rule, on every code path."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcsparse import _select
from funcsparse._select import smallest_k, smallest_k_per_group


def reference_smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The tie rule stated plainly: the first k of a stable ascending sort (NaN last)."""
    order = torch.sort(scores, dim=-1, stable=True).indices
    selected = torch.zeros(scores.shape, dtype=torch.bool)
    return selected.scatter(-1, order[..., :k], True)


def scores_with_ties(draw: st.DrawFn, size: int, *, nan: bool) -> torch.Tensor:
    """Scores from a small alphabet (many ties), optionally with NaN and +-inf."""
    alphabet = [0.0, 1.0, 2.0, -1.0, 0.5]
    if nan:
        alphabet += [math.nan, math.inf, -math.inf]
    values = draw(st.lists(st.sampled_from(alphabet), min_size=size, max_size=size))
    return torch.tensor(values, dtype=torch.float32)


@st.composite
def tied_vectors(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    size = draw(st.integers(1, 40))
    scores = scores_with_ties(draw, size, nan=draw(st.booleans()))
    return scores, draw(st.integers(-2, size + 2))


class TestSmallestK:
    def test_pins_ties_to_the_lower_index(self) -> None:
        scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
        assert smallest_k(scores, 3).tolist() == [True, True, False, False, True]

    def test_nan_ranks_above_inf(self) -> None:
        scores = torch.tensor([math.nan, math.inf, 0.0, math.nan])
        assert smallest_k(scores, 2).tolist() == [False, True, True, False]
        assert smallest_k(scores, 3).tolist() == [True, True, True, False]

    @given(tied_vectors())
    def test_matches_a_stable_sort(self, case: tuple[torch.Tensor, int]) -> None:
        scores, k = case
        expected = reference_smallest_k(scores, max(0, min(k, scores.numel())))
        assert torch.equal(smallest_k(scores, k), expected)
        assert torch.equal(
            _select._smallest_k_pure(scores, max(1, min(k, scores.numel()))),
            reference_smallest_k(scores, max(1, min(k, scores.numel()))),
        )

    @given(st.integers(0, 2**31 - 1), st.booleans(), st.floats(0.0, 1.0))
    def test_eager_bracket_path_is_exact(self, seed: int, ties: bool, fraction: float) -> None:
        generator = torch.Generator().manual_seed(seed)
        n = _select._BRACKET_MIN + 17
        if ties:
            scores = torch.randint(0, 7, (n,), generator=generator).float()
        else:
            scores = torch.rand(n, generator=generator)
        k = min(n - 1, max(1, int(fraction * n)))
        fast = smallest_k(scores, k)
        assert int(fast.sum()) == k
        assert torch.equal(fast, _select._smallest_k_pure(scores, k))

    def test_eager_path_with_nan_threshold(self) -> None:
        n = _select._BRACKET_MIN + 5
        scores = torch.arange(n, dtype=torch.float32)
        scores[::3] = math.nan
        k = n - 10
        fast = smallest_k(scores, k)
        assert torch.equal(fast, reference_smallest_k(scores, k))

    def test_structured_data_defeats_the_sample_and_still_is_exact(self) -> None:
        # A strided sample of this vector sees only zeros: the bracket fails, the
        # fallback must still give the exact answer.
        n = _select._BRACKET_MIN * 2
        scores = torch.arange(n, dtype=torch.float32)
        scores[:: n // _select._SAMPLE_SIZE] = 0.0
        k = n // 2
        assert torch.equal(smallest_k(scores, k), reference_smallest_k(scores, k))

    def test_batched_rows_are_independent(self) -> None:
        scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 0.0]])
        assert smallest_k(scores, 1).tolist() == [[False, True, False], [True, False, False]]

    def test_under_vmap_equals_eager(self) -> None:
        scores = torch.randint(0, 4, (5, 30)).float()
        batched = torch.func.vmap(lambda row: smallest_k(row, 11))(scores)
        assert torch.equal(batched, torch.stack([smallest_k(row, 11) for row in scores]))


@st.composite
def tied_groups(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    groups, size = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    flat = scores_with_ties(draw, groups * size, nan=draw(st.booleans()))
    return flat.view(groups, size), draw(st.integers(0, size + 1))


class TestSmallestKPerGroup:
    @given(tied_groups())
    def test_matches_a_stable_sort(self, case: tuple[torch.Tensor, int]) -> None:
        groups, k = case
        expected = reference_smallest_k(groups, max(0, min(k, groups.shape[-1])))
        assert torch.equal(smallest_k_per_group(groups, k), expected)
        assert torch.equal(
            _select._per_group_sorted(groups, max(k, 1), None),
            reference_smallest_k(groups, max(1, min(k, groups.shape[-1]))),
        )

    @given(tied_groups())
    def test_pairwise_path_under_vmap_includes_nan_rule(
        self, case: tuple[torch.Tensor, int]
    ) -> None:
        groups, k = case
        if groups.shape[-1] > _select._PAIRWISE_MAX or not 0 < k < groups.shape[-1]:
            return
        batched = torch.func.vmap(lambda g: _select._per_group_pairwise(g, k))(groups[None])[0]
        assert torch.equal(batched, reference_smallest_k(groups, k))

    def test_padding_never_takes_a_rank(self) -> None:
        groups = torch.tensor([[math.nan, 5.0, 0.0, 7.0]])
        valid = torch.tensor([[False, True, True, False]])
        # Two valid entries and k=3: both valid entries, nothing else.
        assert smallest_k_per_group(groups, 3, valid=valid).tolist() == [[False, True, True, False]]
        assert smallest_k_per_group(groups, 1, valid=valid).tolist() == [
            [False, False, True, False]
        ]

    def test_padding_does_not_displace_a_real_nan(self) -> None:
        groups = torch.tensor([[0.0, math.nan, math.nan]])
        valid = torch.tensor([[True, False, True]])
        assert smallest_k_per_group(groups, 2, valid=valid).tolist() == [[True, False, True]]

    @pytest.mark.parametrize("size", [2, 4, 8, 9, 16])
    def test_exact_count_on_all_equal_scores(self, size: int) -> None:
        groups = torch.ones(10, size)
        for k in range(size + 1):
            selected = smallest_k_per_group(groups, k)
            assert selected.sum(-1).tolist() == [k] * 10
            assert selected[:, :k].all()


@pytest.mark.parametrize("size", range(1, _select._PAIRWISE_MAX + 1))
def test_sorting_network_sorts_every_zero_one_input(size: int) -> None:
    # The 0-1 principle: a comparator network that sorts every 0/1 input sorts everything.
    network = _select._sorting_network(size)
    inputs = torch.tensor([[(n >> bit) & 1 for bit in range(size)] for n in range(1 << size)])
    columns = list(inputs.unbind(-1))
    for i, j in network:
        columns[i], columns[j] = (
            torch.minimum(columns[i], columns[j]),
            torch.maximum(columns[i], columns[j]),
        )
    assert torch.equal(torch.stack(columns, -1), inputs.sort(-1).values)


@pytest.mark.parametrize("size", range(2, _select._PAIRWISE_MAX + 1))
def test_selection_network_finds_every_order_statistic(size: int) -> None:
    values = torch.randn(50, size)
    for k in range(size):
        wires = list(values.unbind(-1))
        for i, j, min_needed, max_needed in _select._selection_network(size, frozenset({k})):
            a, b = wires[i], wires[j]
            if min_needed:
                wires[i] = torch.minimum(a, b)
            if max_needed:
                wires[j] = torch.maximum(a, b)
        assert torch.equal(wires[k], values.sort(-1).values[:, k])
    # The 2nd smallest of 4 takes 7 min/max operations instead of the full sort's 10.
    plan = _select._selection_network(4, frozenset({1}))
    assert sum(min_needed + max_needed for _, _, min_needed, max_needed in plan) == 7


def test_threshold_shortcut_defers_on_ties_and_nan() -> None:
    distinct = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 0.25, 8.0, 9.0]])
    shortcut = _select._per_group_by_threshold(distinct, 2)
    assert shortcut is not None
    assert torch.equal(shortcut, reference_smallest_k(distinct, 2))
    assert _select._per_group_by_threshold(torch.tensor([[1.0, 1.0, 1.0, 5.0]]), 2) is None
    with_nan = torch.tensor([[math.nan, 1.0, 2.0, 3.0], [1.0, 2.0, 5.0, 5.0]])
    assert _select._per_group_by_threshold(with_nan, 2) is None


def test_a_bracket_of_tied_values_returns_instead_of_recursing() -> None:
    # Regression: with >= _BRACKET_MIN ties at the threshold the sampled bracket collapses
    # to one value; the k-th value is that value, not a reason to recurse forever.
    n = _select._BRACKET_MIN * 2
    for scores in (torch.zeros(n), torch.cat([torch.zeros(n - 10), torch.arange(1.0, 11.0)])):
        selected = smallest_k(scores, n // 2)
        assert torch.equal(selected, reference_smallest_k(scores, n // 2))
