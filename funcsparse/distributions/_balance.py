"""Per-layer levels that average, weighted by the layers' sizes, to a target level.

Shared by the distributions that shift one offset per layer (OWL); the levels stay in
[0, 1] by clipping, and what clipping takes from one layer is given to the others. For
exact totals (uniform, ERK): :func:`apportion` splits an integer count of pruned weights
over the layers, :func:`level_of_count` gives the level that the methods count back to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["apportion", "level_of_count", "shifted_levels"]


def shifted_levels(offsets: Sequence[float], counts: Sequence[int], target: float) -> list[float]:
    """``level_l = clip(c - offsets[l], 0, 1)``, with the one ``c`` that makes the levels'
    mean, weighted by ``counts``, equal ``target``.

    Without clipping, ``c = target + mean(offsets)`` (weighted): every level is the target
    shifted by its layer's offset from the mean. Where a level would leave [0, 1], it is
    clipped and ``c`` moves so that the other layers make up the difference; ``c - offset``
    keeps the order of the offsets and never spreads the levels further apart.

    Examples:
        >>> shifted_levels([0.0, 0.25], [1, 1], 0.5)
        [0.625, 0.375]
        >>> shifted_levels([0.0, 0.25], [1, 3], 0.5)  # the larger layer moves less
        [0.6875, 0.4375]
        >>> shifted_levels([0.0, 0.5], [1, 1], 0.875)  # 1.125 clipped to 1: the other 0.75
        [1.0, 0.75]

    Args:
        offsets: one finite offset per layer (a larger offset, a lower level).
        counts: one count (weights) per layer, ``>= 0``; a layer of count 0 has no weight in
            the mean and gets the target.
        target: the weighted mean, in [0, 1].

    Returns:
        One level per layer, in [0, 1], as floats.
    """
    levels = [float(target)] * len(offsets)
    live = [i for i, count in enumerate(counts) if count > 0]
    if not live or target <= 0.0 or target >= 1.0:
        return levels  # 0 and 1 leave one choice: every level is the target
    total = sum(counts[i] for i in live)
    goal = target * total

    def mass(c: float) -> float:
        """The weighted sum of the levels at ``c``: non-decreasing, piecewise linear."""
        return sum(counts[i] * min(max(c - offsets[i], 0.0), 1.0) for i in live)

    # Breakpoints where a layer starts (c = offset) or stops (c = offset + 1) moving; mass
    # is 0 at the first and ``total`` at the last, so the goal lies between two of them.
    points = sorted({float(offsets[i]) for i in live} | {float(offsets[i]) + 1.0 for i in live})
    index = 1
    while index < len(points) - 1 and mass(points[index]) < goal:
        index += 1
    low, high = points[index - 1], points[index]
    moving = sum(counts[i] for i in live if offsets[i] <= low and high <= offsets[i] + 1.0)
    c = low + (goal - mass(low)) / moving if moving else low
    for i in live:
        levels[i] = min(max(c - offsets[i], 0.0), 1.0)
    return levels


def apportion(ideal: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers ``k_l`` in ``[0, caps[l]]`` summing to ``total``, each the floor or the
    ceiling of ``ideal[l]`` (clipped to its range) where the ideals sum to ``total``.

    Largest remainders: every ``k_l`` starts at ``floor(ideal[l])``; the units still
    missing go one each to the largest fractional parts (equal parts: the earlier layer
    first); units too many are taken back from the smallest parts the same way. Where more
    are missing than there are layers with room (only where the ideals do not sum to
    ``total``), equal rounds to every layer with room come first.

    Examples:
        >>> apportion([1.5, 1.5, 1.0], [2, 2, 2], 4)  # equal remainders: the first wins
        [2, 1, 1]
        >>> apportion([0.4, 0.4, 0.2], [1, 1, 0], 1)
        [1, 0, 0]

    Args:
        ideal: one real (finite) share per layer.
        caps: the most each layer may take, ``>= 0``.
        total: the sum wanted, in ``[0, sum(caps)]``.

    Returns:
        One int per layer (summing to ``total`` when it lies in ``[0, sum(caps)]``).
    """
    counts = [min(max(math.floor(share), 0), cap) for share, cap in zip(ideal, caps, strict=True)]
    parts = [share - count for share, count in zip(ideal, counts, strict=True)]
    missing = total - sum(counts)
    step = 1 if missing > 0 else -1
    order = sorted(range(len(counts)), key=lambda i: (-step * parts[i], i))
    while missing:
        room = {i: caps[i] - counts[i] if step > 0 else counts[i] for i in order}
        open_ = [i for i in order if room[i] > 0]
        if not open_:
            break  # ``total`` is out of reach
        if abs(missing) < len(open_):  # one unit each to the first in order
            for i in open_[: abs(missing)]:
                counts[i] += step
            break
        each = abs(missing) // len(open_)  # far off: an equal round to every layer with room
        for i in open_:
            moved = min(each, room[i])
            counts[i] += step * moved
            missing -= step * moved
    return counts


def level_of_count(count: int, numel: int) -> float | None:
    """A float level whose ``round(level * numel)`` is ``count``, the methods' count rule
    (:func:`funcsparse.methods._level.count_to_prune`); None where no float has it (only
    possible past ``2**53`` entries, where floats skip integers).

    ``count / numel`` is correctly rounded, so ``level * numel`` lies within about
    ``count * 2**-52`` of ``count``: below 1/2 for every ``numel < 2**51``; past that, the
    level is moved one float at a time to the nearest one that counts right.

    Examples:
        >>> level_of_count(3, 7), round(level_of_count(3, 7) * 7)
        (0.42857142857142855, 3)
        >>> level_of_count(0, 0)
        0.0
    """
    if numel == 0 or count == 0:
        return 0.0
    if count == numel:
        return 1.0
    level = count / numel
    for _ in range(64):
        found = round(level * numel)
        if found == count:
            return level
        level = math.nextafter(level, 0.0 if found > count else 1.0)
    return None
