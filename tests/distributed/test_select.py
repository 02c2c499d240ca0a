"""The sharded selection on one piece (no collectives: ``groups=()``) equals the core's.

The multi-rank runs are in test_entrywise.py; here hypothesis drives the counting itself:
ties, NaN, -0.0, infinities, previous masks, chunk edges, the gathered bucket and the
streamed one.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from funcsparse._select import keep_all_but_lowest
from funcsparse.distributed import select as sharded_select
from funcsparse.distributed.select import keep_all_but_lowest_sharded, tensor_part

_SPECIALS = [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40]


def _positions(start: int, stop: int) -> torch.Tensor:
    return torch.arange(start, stop, dtype=torch.int64)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[torch.Tensor, int, torch.Tensor | None, bool]:
    n = draw(st.integers(1, 40))
    values = draw(
        st.lists(
            st.one_of(st.sampled_from(_SPECIALS), st.floats(-4, 4, width=32)),
            min_size=n,
            max_size=n,
        )
    )
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    ranking = torch.tensor(values, dtype=dtype)
    k = draw(st.integers(-2, n + 2))
    prev = None
    if draw(st.booleans()):
        prev = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return ranking, k, prev, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_one_piece_equals_the_core_selection(case: tuple) -> None:
    ranking, k, prev, magnitude = case
    part = tensor_part(ranking, _positions, magnitude=magnitude, prev_mask=prev)
    got = keep_all_but_lowest_sharded([part], k, ())[0]
    want = keep_all_but_lowest(ranking, k, prev, magnitude=magnitude)
    assert torch.equal(got, want)


def test_parts_rank_in_order_with_ties_going_to_the_earlier_part() -> None:
    a, b = torch.zeros(3), torch.zeros(2)
    parts = [
        tensor_part(a, _positions),
        tensor_part(b, lambda s, e: torch.arange(s, e, dtype=torch.int64) + 3),
    ]
    masks = keep_all_but_lowest_sharded(parts, 4, ())
    assert masks[0].tolist() == [False, False, False] and masks[1].tolist() == [False, True]


def test_streamed_bucket_and_gathered_bucket_and_chunk_edges() -> None:
    g = torch.Generator().manual_seed(0)
    # One top-16-bit bucket holds every entry: refined by streaming, not gathered.
    narrow = 1.0 + torch.rand(300_000, generator=g) / 32
    # Many chunks (2.5M entries over 1M-entry chunks), the k-th bucket gathered.
    wide = torch.randn(2_500_000, generator=g)
    # Heavy ties across chunk edges.
    tied = torch.randint(0, 3, (2_200_000,), generator=g).float()
    for ranking in (narrow, wide, tied):
        for k in (1, ranking.numel() // 3, ranking.numel() - 1):
            got = keep_all_but_lowest_sharded([tensor_part(ranking, _positions)], k, ())[0]
            assert torch.equal(got, keep_all_but_lowest(ranking, k)), (ranking.numel(), k)
            assert int((~got).sum()) == k


def test_budget_decides_gathering(monkeypatch: pytest.MonkeyPatch) -> None:
    ranking = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    want = keep_all_but_lowest(ranking, 2500)
    for minimum in (0, 1 << 20):  # never gathered / always gathered
        monkeypatch.setattr(sharded_select, "_GATHER_MIN", minimum)
        monkeypatch.setattr(sharded_select, "_GATHER_FRACTION", 1 << 30 if minimum == 0 else 1)
        got = keep_all_but_lowest_sharded([tensor_part(ranking, _positions)], 2500, ())[0]
        assert torch.equal(got, want)
