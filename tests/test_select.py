"""The selection primitives: exact counts and the documented tie rule, on every code path."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcsparse import _select
from funcsparse._select import (
    keep_all_but_lowest,
    keep_all_but_lowest_drawn,
    kth_smallest_value,
    lowest_covering,
    rank_pruned_first,
    smallest_k,
    smallest_k_per_group,
)


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


# -- the chunked selection (large plain tensors): exact, and never a full-size copy ---------


@contextlib.contextmanager
def small_chunks(**overrides: int) -> Iterator[None]:
    """The chunked path on small vectors: tiny chunks, sample and gather limits."""
    values = {
        "_BRACKET_MIN": 64,
        "_CHUNK": 97,
        "_MAX_CHUNKS": 1000,
        "_BRACKET_SAMPLE": 64,
        "_GATHER_MIN": 8,
        **overrides,
    }
    with mock.patch.multiple(_select, **values):
        yield


def reference_keep(ranking: torch.Tensor, k: int, prev: torch.Tensor | None) -> torch.Tensor:
    """keep_all_but_lowest stated plainly: entries pruned before first (all pruned), then the
    others by a stable sort (a real -inf after every entry pruned before), ~prev."""
    flat = ranking.reshape(-1).double()
    k = max(0, min(k, flat.numel()))
    if prev is None:
        return (~reference_smallest_k(flat, k)).view(ranking.shape)
    before = ~prev.reshape(-1)
    # The sort by score, then a stable sort by "kept before": (pruned before, score, position).
    by_score = torch.sort(flat, stable=True).indices
    order = by_score[torch.sort((~before)[by_score].to(torch.uint8), stable=True).indices]
    pruned = before.clone()
    pruned[order[:k]] = True
    return (~pruned).view(ranking.shape)


@st.composite
def chunked_cases(draw: st.DrawFn) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    size = draw(st.integers(64, 700))
    kind = draw(st.sampled_from(["ties", "nan", "distinct", "sorted", "zeros"]))
    if kind == "distinct":
        scores = torch.randn(
            size, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**63 - 1)))
        )
    elif kind == "sorted":
        scores = torch.arange(size, dtype=torch.float32).flip(0) * draw(st.sampled_from([1, -1]))
    elif kind == "zeros":
        scores = torch.zeros(size)
        scores[draw(st.integers(0, size - 1)) :] = 1.0
    else:
        scores = scores_with_ties(draw, size, nan=kind == "nan")
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    prev = None
    if draw(st.booleans()):
        prev = torch.tensor(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    return scores.to(dtype), draw(st.integers(1, size - 1)), prev


class TestChunked:
    @given(chunked_cases())
    def test_smallest_k_matches_a_stable_sort(
        self, case: tuple[torch.Tensor, int, torch.Tensor | None]
    ) -> None:
        scores, k, _ = case
        with small_chunks():
            selected = smallest_k(scores, k)
        assert torch.equal(selected, reference_smallest_k(scores.double(), k))

    @given(chunked_cases(), st.booleans())
    def test_keep_all_but_lowest_matches_the_reference(
        self, case: tuple[torch.Tensor, int, torch.Tensor | None], magnitude: bool
    ) -> None:
        scores, k, prev = case
        with small_chunks():
            keep = keep_all_but_lowest(scores, k, prev, magnitude=magnitude)
        expected = reference_keep(scores.abs() if magnitude else scores, k, prev)
        assert torch.equal(keep, expected)
        with small_chunks():  # the same, drawn chunk by chunk instead of read
            drawn = keep_all_but_lowest_drawn(draws_of(scores), scores, k, prev)
        assert torch.equal(drawn, reference_keep(scores, k, prev))

    @given(chunked_cases())
    def test_a_missed_bracket_falls_back_to_exact_radix_passes(
        self, case: tuple[torch.Tensor, int, torch.Tensor | None]
    ) -> None:
        scores, k, prev = case
        # A bracket far from the k-th entry (and no value to retry): the radix passes.
        with small_chunks(), mock.patch.object(_select, "_bracket", lambda *_: (5.5, 6.0, None)):
            keep = keep_all_but_lowest(scores, k, prev)
            selected = smallest_k(scores, k)
        assert torch.equal(keep, reference_keep(scores, k, prev))
        assert torch.equal(selected, reference_smallest_k(scores.double(), k))

    @pytest.mark.parametrize(
        "dtype", [torch.int64, torch.int32, torch.uint8, torch.float16, torch.float64]
    )
    def test_radix_keys_order_every_dtype(self, dtype: torch.dtype) -> None:
        generator = torch.Generator().manual_seed(0)
        if dtype.is_floating_point:
            scores = torch.randn(500, generator=generator).to(dtype)
            scores[::7], scores[1::11], scores[2::13] = math.nan, -math.inf, math.inf
            scores[3::17], scores[4::17] = -0.0, 0.0
        else:
            info = torch.iinfo(dtype)
            scores = torch.randint(info.min, info.max, (500,), generator=generator, dtype=dtype)
        for k in (1, 7, 250, 499):
            with small_chunks(), mock.patch.object(_select, "_bracket", lambda *_: (0, 0, None)):
                selected = smallest_k(scores, k)
            expected = reference_smallest_k(scores if dtype == torch.int64 else scores.double(), k)
            assert torch.equal(selected, expected)

    def test_too_many_inside_the_bracket_still_exact(self) -> None:
        scores = torch.randn(5000, generator=torch.Generator().manual_seed(1))
        with small_chunks(_GATHER_MIN=1, _GATHER_FRACTION=10**6):
            assert torch.equal(smallest_k(scores, 1234), reference_smallest_k(scores, 1234))

    def test_a_heavy_tie_next_to_the_threshold(self) -> None:
        # Half the weights pruned to exact zeros, then a level just above: the zeros' tie is
        # left out of the bracket (or tried on its own), and the counts stay exact.
        n = _select._BRACKET_MIN * 4
        w = torch.randn(n, generator=torch.Generator().manual_seed(2))
        w[: n // 2] = 0.0
        for k in (n // 2 - 3, n // 2, n // 2 + 3, n // 2 + 500):
            assert torch.equal(
                keep_all_but_lowest(w, k, magnitude=True), reference_keep(w.abs(), k, None)
            )

    def test_drawn_ranking_is_drawn_in_chunks_never_whole(self) -> None:
        n = _select._BRACKET_MIN * 3 + 11
        values = torch.rand(n, generator=torch.Generator().manual_seed(3))
        sizes: list[int] = []
        starts = []

        def draws() -> Callable[[int], torch.Tensor]:
            starts.append(len(sizes))
            stream = iter(values.split(_select._CHUNK))
            pending = torch.empty(0)

            def draw(size: int) -> torch.Tensor:
                nonlocal pending
                sizes.append(size)
                while pending.numel() < size:
                    pending = torch.cat([pending, next(stream)])
                out, pending = pending[:size].clone(), pending[size:]
                return out

            return draw

        with mock.patch.object(_select, "_CHUNK", 1 << 14):
            keep = keep_all_but_lowest_drawn(draws, values, n // 3)
        assert max(sizes) <= max(1 << 14, -(-n // _select._MAX_CHUNKS)) < n
        assert sum(sizes) == n * len(starts)
        assert torch.equal(keep, reference_keep(values, n // 3, None))

    def test_large_plain_tensor_under_vmap_equals_eager(self) -> None:
        scores = torch.randn(
            2, _select._BRACKET_MIN + 3, generator=torch.Generator().manual_seed(4)
        )
        prev = scores.sin() > -0.5
        k = scores.shape[1] // 2
        batched = torch.func.vmap(lambda s, p: keep_all_but_lowest(s, k, p, magnitude=True))(
            scores, prev
        )
        eager = torch.stack(
            [
                keep_all_but_lowest(s, k, p, magnitude=True)
                for s, p in zip(scores, prev, strict=True)
            ]
        )
        assert torch.equal(batched, eager)

    def test_inputs_untouched(self) -> None:
        scores = torch.randn(_select._BRACKET_MIN + 5, generator=torch.Generator().manual_seed(5))
        prev = scores.cos() > 0.0
        before, prev_before = scores.clone(), prev.clone()
        version = scores._version
        keep_all_but_lowest(scores, 1000, prev, magnitude=True)
        smallest_k(scores, 1000)
        assert torch.equal(scores, before) and torch.equal(prev, prev_before)
        assert scores._version == version


def draws_of(values: torch.Tensor) -> Callable[[], Callable[[int], torch.Tensor]]:
    """A stream that draws ``values`` (flat) in whatever pieces are asked for."""
    flat = values.reshape(-1)

    def draws() -> Callable[[int], torch.Tensor]:
        at = 0

        def draw(size: int) -> torch.Tensor:
            nonlocal at
            at += size
            return flat[at - size : at].clone()

        return draw

    return draws


# -- hostile inputs to the public helpers: TypeError / ValueError naming the helper -----------


class TestBadInputs:
    @pytest.mark.parametrize(
        ("call", "error", "message"),
        [
            (lambda: smallest_k([1.0, 2.0], 1), TypeError, "smallest_k: scores must be a tensor"),
            (lambda: smallest_k(torch.ones(3, dtype=torch.bool), 1), TypeError, "torch.bool"),
            (lambda: smallest_k(torch.ones(3, dtype=torch.complex64), 1), TypeError, "complex64"),
            (
                lambda: smallest_k(torch.ones(3).to(torch.float8_e4m3fn), 1),
                TypeError,
                "float8_e4m3fn cannot be ranked",
            ),
            (lambda: smallest_k(torch.ones(3), 1.5), TypeError, "smallest_k: k must be an int"),
            (lambda: smallest_k(torch.ones(3), True), TypeError, "got bool True"),
            (lambda: smallest_k(torch.ones(3), None), TypeError, "k must be an int"),
            (lambda: smallest_k(torch.tensor(1.0), 1), ValueError, "smallest_k: scores is 0-d"),
            (
                lambda: keep_all_but_lowest(torch.arange(3), 1),
                TypeError,
                "keep_all_but_lowest: ranking of dtype torch.int64 cannot be ranked",
            ),
            (
                lambda: keep_all_but_lowest(torch.ones(3), 1, torch.ones(3)),
                TypeError,
                "prev_mask of dtype torch.float32",
            ),
            (
                lambda: keep_all_but_lowest(torch.ones(3), 1, torch.ones(4, dtype=torch.bool)),
                ValueError,
                "prev_mask of shape (4,) for scores of shape (3,)",
            ),
            (
                lambda: keep_all_but_lowest(
                    torch.ones(3), 1, torch.ones(3, dtype=torch.bool, device="meta")
                ),
                ValueError,
                "prev_mask on meta for scores on cpu",
            ),
            (
                lambda: keep_all_but_lowest_drawn("draws", torch.ones(3), 1),
                TypeError,
                "keep_all_but_lowest_drawn: draws must be callable, got str 'draws'",
            ),
            (
                lambda: lowest_covering(torch.ones(2, 2), torch.ones(2, 2), 1),
                ValueError,
                "lowest_covering: scores must be 1-D",
            ),
            (
                lambda: lowest_covering(torch.ones(3), "gains", 1),
                TypeError,
                "gains must be a real tensor, got str 'gains'",
            ),
            (
                lambda: lowest_covering(torch.ones(3), torch.ones(4), 1),
                ValueError,
                "gains (a 1-D torch.float32 tensor of shape (4,) on cpu)",
            ),
            (
                lambda: lowest_covering(torch.ones(3), torch.ones(3), 1.5),
                TypeError,
                "lowest_covering: needed must be an int, got float 1.5",
            ),
            (
                lambda: smallest_k_per_group(torch.ones(2, 4), 2, valid=torch.ones(3, 4) > 0),
                ValueError,
                "valid of shape (3, 4) does not broadcast to groups of shape (2, 4)",
            ),
            (
                lambda: smallest_k_per_group(torch.ones(2, 4), "2"),
                TypeError,
                "smallest_k_per_group: k must be an int, got str '2'",
            ),
        ],
    )
    def test_refused_with_a_message_naming_the_helper(
        self, call: Callable[[], object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error) as info:
            call()
        assert message in str(info.value)
        assert len(str(info.value)) < 300

    def test_huge_counts_clip(self) -> None:
        scores = torch.tensor([3.0, 1.0, 2.0])
        assert smallest_k(scores, 10**400).all() and not smallest_k(scores, -(10**400)).any()
        assert not keep_all_but_lowest(scores, 10**400).any()
        assert keep_all_but_lowest(scores, -(10**400)).all()
        assert smallest_k_per_group(scores[None], 10**400).all()
        gains = torch.tensor([1, 1, 1])
        assert lowest_covering(scores, gains, 10**400).all()
        assert not lowest_covering(scores, gains, -(10**400)).any()


def test_the_bracket_of_a_sample_with_nan_and_heavy_ties() -> None:
    # Regression: the heavy-tie search used searchsorted on a sample ending in NaNs.
    generator = torch.Generator().manual_seed(6)
    sample = torch.cat([torch.zeros(3000), torch.randn(3000, generator=generator).abs() + 1])
    sample = torch.cat([sample, torch.full((4000,), math.nan), torch.full((2000,), 9.0)])
    sample = sample[torch.randperm(sample.numel(), generator=generator)]
    for rank in range(1, 12_001, 97):
        lo, hi, retry = _select._bracket(sample, rank, sample.numel())
        assert not math.isnan(lo) and not math.isnan(hi) and lo <= hi
        assert retry is None or not math.isnan(retry)


class TestPrevMaskOutranksMinusInf:
    """Entries pruned before rank before every score, -inf included (issue 9)."""

    SPECIAL = st.sampled_from([-math.inf, -1.0, 0.0, 1.0, math.inf, math.nan])

    def test_pinned(self) -> None:
        scores = torch.tensor([-math.inf, 0.0, 5.0])
        prev = torch.tensor([True, False, True])
        assert torch.equal(keep_all_but_lowest(scores, 1, prev), prev)
        assert keep_all_but_lowest(scores, 2, prev).tolist() == [False, False, True]

    @given(values=st.lists(SPECIAL, min_size=1, max_size=40), data=st.data())
    def test_pure_chunked_and_vmap_match_the_reference(
        self, values: list[float], data: st.DataObject
    ) -> None:
        scores = torch.tensor(values)
        n = scores.numel()
        prev = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        k = data.draw(st.integers(-1, n + 1))
        expected = reference_keep(scores, k, prev)
        assert int((~expected).sum()) == max(min(max(k, 0), n), int((~prev).sum()))
        assert torch.equal(keep_all_but_lowest(scores, k, prev), expected)
        batched = torch.func.vmap(lambda s, p: keep_all_but_lowest(s, k, p))(
            scores[None], prev[None]
        )
        assert torch.equal(batched[0], expected)
        if n >= 2:
            with small_chunks(_BRACKET_MIN=2, _CHUNK=3, _BRACKET_SAMPLE=4, _GATHER_MIN=2):
                assert torch.equal(keep_all_but_lowest(scores, k, prev), expected)

    @pytest.mark.parametrize("bracket", ["sampled", "radix"])
    def test_chunked_threshold_at_minus_inf(self, bracket: str) -> None:
        n = 1 << 12
        scores = torch.randn(n, generator=torch.Generator().manual_seed(0))
        scores[1::8][:40] = -math.inf  # off the sample's stride: the bracket is [-inf, x]
        prev = torch.ones(n, dtype=torch.bool)
        prev[2::8][:30] = False
        limits = {"_GATHER_MIN": 0, "_GATHER_FRACTION": 1 << 30} if bracket == "radix" else {}
        for k in (10, 30, 31, 50, 70, 71, 200):
            with small_chunks(_BRACKET_MIN=64, _CHUNK=1000, **limits):
                keep = keep_all_but_lowest(scores, k, prev)
            assert torch.equal(keep, reference_keep(scores, k, prev))


class TestKthSmallestValue:
    def test_values_and_nan(self) -> None:
        scores = torch.tensor([3.0, math.nan, -math.inf, 2.0])
        assert kth_smallest_value(scores, 1) == -math.inf
        assert kth_smallest_value(scores, 3) == 3.0
        assert math.isnan(kth_smallest_value(scores, 4))

    def test_bad_input(self) -> None:
        with pytest.raises(TypeError, match="kth_smallest_value: scores must be a tensor"):
            kth_smallest_value([1.0], 1)
        with pytest.raises(ValueError, match=r"kth_smallest_value: k=0 for 2 scores"):
            kth_smallest_value(torch.tensor([1.0, 2.0]), 0)
        with pytest.raises(ValueError, match="kth_smallest_value: scores must be 1-D"):
            kth_smallest_value(torch.ones(2, 2), 1)


def test_rank_pruned_first_keeps_the_order_of_the_rest() -> None:
    # The keys order as the scores do (ties by position, NaN last, -0.0 == 0.0).
    scores = torch.tensor([3.0, -math.inf, math.nan, -0.0, 0.0, -2.5, math.inf, -math.inf])
    kept = torch.tensor([True, True, True, True, True, True, True, False])
    ranked = rank_pruned_first(scores, kept)
    assert ranked.dtype == torch.int64
    order = torch.sort(ranked, stable=True).indices.tolist()
    assert order == [7, 1, 5, 3, 4, 0, 6, 2]
