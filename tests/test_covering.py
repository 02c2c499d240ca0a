"""``lowest_covering_chunked`` selects exactly what ``_select.lowest_covering`` selects."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from funcsparse._covering import lowest_covering_chunked
from funcsparse._select import lowest_covering

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, math.inf, -math.inf, math.nan, -math.nan, 1e-40]


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor, int, int]:
    n = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([*FLOATS, torch.int32, torch.int64]))
    if dtype.is_floating_point:
        # A few values, so ties are common; specials mixed in.
        pool = draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-4, 4), min_size=1, max_size=5))
        values = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
        scores = torch.tensor(values, dtype=torch.float64).to(dtype)
    else:
        values = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
        scores = torch.tensor(values, dtype=dtype)
    gain_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.float32]))
    gains = torch.tensor(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))).to(gain_dtype)
    total = int(gains.sum())
    needed: int | torch.Tensor = draw(
        st.sampled_from([-1, 0, 1, total // 2, total, total + 1, 10**40])
        | st.integers(-2, total + 2)
    )
    if draw(st.booleans()):
        needed = torch.tensor(needed if abs(needed) < 2**62 else 2**62)
    return scores, gains, needed, draw(st.integers(1, 9)), draw(st.integers(1, 16))


@given(cases())
def test_equals_lowest_covering_bit_for_bit(
    case: tuple[torch.Tensor, torch.Tensor, int | torch.Tensor, int, int],
) -> None:
    scores, gains, needed, chunk, bits = case
    before = (scores.clone(), gains.clone())
    got = lowest_covering_chunked(scores, gains, needed, chunk=chunk, radix_bits=bits)
    expected = lowest_covering(scores, gains, needed)
    assert got.dtype == torch.bool
    assert torch.equal(got, expected)
    # Not mutated (NaN-aware: NaN equals NaN here).
    assert torch.equal(scores, before[0]) or bool(scores.isclose(before[0], equal_nan=True).all())
    assert torch.equal(gains, before[1])


@pytest.mark.parametrize("dtype", FLOATS)
def test_large_random_equal(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(5000, generator=generator).to(dtype)
    scores[::97] = math.nan
    scores[::89] = -0.0
    gains = torch.randint(0, 5, (5000,), generator=generator)
    for needed in (1, 3000, int(gains.sum()) - 1):
        expected = lowest_covering(scores, gains, needed)
        for chunk, bits in ((1 << 20, 16), (333, 5)):
            got = lowest_covering_chunked(scores, gains, needed, chunk=chunk, radix_bits=bits)
            assert torch.equal(got, expected)


def test_pinned_cases() -> None:
    f = lowest_covering_chunked
    # Ties by position, NaN above +inf, -0.0 equal to 0.0 (the lower position first).
    scores = torch.tensor([math.nan, math.inf, 0.0, -0.0, 0.0])
    gains = torch.tensor([1, 1, 1, 1, 1])
    assert f(scores, gains, 2).tolist() == [False, False, True, True, False]
    assert f(scores, gains, 4).tolist() == [False, True, True, True, True]
    assert f(scores, gains, 5).tolist() == [True] * 5
    # Zero gains: units ranked before the last needed one are taken, those after are not.
    assert f(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 0, 2]), 1).tolist() == [
        False,
        True,
        True,
    ]
    # needed <= 0: nothing; beyond the total: everything.
    assert not f(scores, gains, 0).any()
    assert f(scores, gains, 10**50).all()
    assert f(torch.zeros(0), torch.zeros(0, dtype=torch.int64), 3).shape == (0,)


def test_refuses_bad_input_by_name() -> None:
    with pytest.raises(TypeError, match="lowest_covering_chunked: scores"):
        lowest_covering_chunked([1.0], torch.tensor([1]), 1)
    with pytest.raises(ValueError, match="lowest_covering_chunked: scores must be 1-D"):
        lowest_covering_chunked(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="lowest_covering_chunked: gains"):
        lowest_covering_chunked(torch.zeros(3), torch.zeros(2, dtype=torch.int64), 1)
    with pytest.raises(TypeError, match="lowest_covering_chunked: needed"):
        lowest_covering_chunked(torch.zeros(3), torch.zeros(3, dtype=torch.int64), "1")
    with pytest.raises(ValueError, match="lowest_covering_chunked: chunk"):
        lowest_covering_chunked(torch.zeros(3), torch.zeros(3, dtype=torch.int64), 1, chunk=0)
