"""shifted_levels: per-layer levels from offsets, averaging (weighted) to the target."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from funcsparse.distributions._balance import shifted_levels


@st.composite
def layers(draw: st.DrawFn) -> tuple[list[float], list[int]]:
    size = draw(st.integers(1, 40))
    offsets = draw(st.lists(st.floats(0.0, 1.0), min_size=size, max_size=size))
    big = st.integers(0, 10**9)  # LLM-sized layers: up to 1e9 weights
    counts = draw(st.lists(st.one_of(st.integers(0, 50), big), min_size=size, max_size=size))
    return offsets, counts


@given(layers(), st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-9, 1 - 1e-9]), st.floats(0, 1)))
def test_levels_average_to_the_target_in_order(
    case: tuple[list[float], list[int]], target: float
) -> None:
    offsets, counts = case
    levels = shifted_levels(offsets, counts, target)
    assert len(levels) == len(offsets)
    assert all(0.0 <= level <= 1.0 for level in levels)
    total = sum(counts)
    if total:
        mean = math.fsum(c * level for c, level in zip(counts, levels, strict=True)) / total
        assert abs(mean - target) <= 1e-12
    live = [(o, level) for o, level, c in zip(offsets, levels, counts, strict=True) if c]
    for o1, l1 in live:  # a larger offset never a higher level; spread never wider
        for o2, l2 in live:
            if o1 < o2:
                assert l1 >= l2
                assert l1 - l2 <= o2 - o1 + 1e-12
    assert all(level == target for level, c in zip(levels, counts, strict=True) if not c)


@given(layers(), st.floats(0.2, 0.8))
def test_without_clipping_every_level_is_the_target_shifted_by_its_offset(
    case: tuple[list[float], list[int]], target: float
) -> None:
    offsets, counts = case
    offsets = [o * 0.2 for o in offsets]  # a spread of 0.2 around 0.2..0.8: no clipping
    total = sum(counts)
    levels = shifted_levels(offsets, counts, target)
    if not total:
        assert levels == [target] * len(offsets)
        return
    mean = math.fsum(c * o for c, o in zip(counts, offsets, strict=True)) / total
    for offset, level, count in zip(offsets, levels, counts, strict=True):
        if count:
            assert abs(level - (target + mean - offset)) <= 1e-12
