"""The exact-count helpers of uniform and ERK: apportion and level_of_count."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from funcsparse.distributions._balance import apportion, level_of_count


@given(st.integers(1, 2**51), st.data())
def test_level_of_count_counts_back(numel: int, data: st.DataObject) -> None:
    count = data.draw(st.one_of(st.integers(0, numel), st.sampled_from([0, 1, numel - 1, numel])))
    level = level_of_count(count, numel)
    assert level is not None and 0.0 <= level <= 1.0
    assert round(level * numel) == count  # the methods' rule: round(sparsity * numel)


@given(st.integers(2**51, 2**62), st.data())
def test_level_of_count_past_floats_exact_integers(numel: int, data: st.DataObject) -> None:
    count = data.draw(st.integers(0, numel))
    level = level_of_count(count, numel)
    # past 2**53 not every count has a float level; where one is returned it counts right
    assert level is None or round(level * numel) == count
    if numel <= 2**53:
        assert level is not None


def test_level_of_count_edges() -> None:
    assert level_of_count(0, 0) == 0.0
    assert level_of_count(5, 5) == 1.0
    assert level_of_count(1, 3) == 1 / 3


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(0, 1)), min_size=1, max_size=8),
    st.floats(0, 1),
)
def test_apportion_hits_the_total_within_one(parts: list[tuple[int, float]], share: float) -> None:
    caps = [cap for cap, _ in parts]
    ideal = [cap * fraction for cap, fraction in parts]
    total = round(sum(ideal))
    counts = apportion(ideal, caps, total)
    assert sum(counts) == total
    for count, cap, wanted in zip(counts, caps, ideal, strict=True):
        assert 0 <= count <= cap
        assert math.floor(wanted) <= count <= math.ceil(wanted)
    # a total the ideals miss still lands when it lies in [0, sum(caps)]
    other = round(share * sum(caps))
    assert sum(apportion(ideal, caps, other)) == other
