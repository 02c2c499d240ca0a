"""Per-layer levels that average, weighted by the layers' sizes, to a target level.

Shared by the distributions that shift one offset per layer (OWL); the levels stay in
[0, 1] by clipping, and what clipping takes from one layer is given to the others.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["shifted_levels"]


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
