"""Exact selection across the pieces of sharded tensors, through small collectives.

The ranking is the core's (``funcsparse._select``): by score, ascending; equal scores by
position in the full tensor (row-major; across a group of tensors, the earlier tensor
first); NaN above every number; entries pruned before below every other. The k lowest are
found without gathering any piece: order keys are counted in histograms (all-reduced over
the groups that split the tensors), digit by digit, and ties at the k-th key are settled by
the same counting over the tied entries' positions in the full tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from torch import Tensor

__all__ = ["Part", "keep_all_but_lowest_sharded"]


class Part(NamedTuple):
    """One tensor's local piece in a sharded selection.

    Attributes:
        pieces: starts the local ranking's stream: yields ``(start, stop, values)`` for the
            local flat (row-major) positions ``[start, stop)`` in order, covering the piece.
        like: a local tensor of the piece's shape and device (the mask's).
        position: the rank positions (int64, in the whole selection's order: the full
            tensor's row-major index, plus the sizes of the tensors before it) of the local
            flat positions ``[start, stop)``.
        prev_mask: the local piece of the previous mask (False: pruned before), or None.
    """

    pieces: Callable[[], Iterator[tuple[int, int, Tensor]]]
    like: Tensor
    position: Callable[[int, int], Tensor]
    prev_mask: Tensor | None


def keep_all_but_lowest_sharded(parts: list[Part], k: int, groups: tuple) -> list[Tensor]:
    """Keep-masks (local pieces) that prune the ``k`` lowest-ranked entries over all parts.

    Entries pruned before rank below every other, so ``max(k, pruned before)`` are pruned.
    """
    raise NotImplementedError("in progress")
