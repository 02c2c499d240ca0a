"""Exact selection across the pieces of sharded tensors, through small collectives.

The ranking is the core's (``funcsparse._select``): by score, ascending; equal scores by
position in the full tensor (row-major; across a group of tensors, the earlier tensor
first); NaN above every number; entries pruned before below every other. The k lowest are
found without gathering any piece:

1. the order keys (:func:`funcsparse._select.order_keys`) are counted by their top 16 bits
   in a histogram that is all-reduced over the groups that split the tensors (512 KiB);
2. the bucket that holds the k-th key is refined 8 bits at a time (2 KiB histograms), on
   the bucket's local entries where they are few (at most ``_GATHER_FRACTION``-th of the
   piece, or ``_GATHER_MIN``), else by streaming the piece again;
3. ties at the k-th key are settled by the same counting over the tied entries' positions
   in the full tensor, so exactly k entries are pruned, as in one process.

Memory per rank: the bool masks, a chunk of keys (``_CHUNK`` entries, 8 bytes each) and at
most the gathered bucket; the histograms are the only data sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from funcsparse._select import order_keys
from funcsparse.distributed._comm import all_reduce_max, all_reduce_sum

__all__ = ["Part", "keep_all_but_lowest_sharded", "local_chunks", "tensor_part"]

_CHUNK = 1 << 20
_FIRST_BITS = 16
_NEXT_BITS = 8
_GATHER_FRACTION = 16
_GATHER_MIN = 1 << 16
_INT64_MIN = -(1 << 63)

Pieces = Callable[[], Iterator[tuple[int, int, Tensor]]]


class Part(NamedTuple):
    """One tensor's local piece in a sharded selection.

    Attributes:
        pieces: starts the local ranking's stream: yields ``(start, stop, values)`` for the
            local flat (row-major) positions ``[start, stop)`` in order, covering the piece;
            ``values`` are floating scores (the lowest is pruned first).
        like: a local tensor of the piece's shape and device (the mask's).
        position: the rank positions (int64, in the whole selection's order: the full
            tensor's row-major index, plus the sizes of the tensors before it) of the local
            flat positions ``[start, stop)``.
        prev_mask: the local piece of the previous mask (False: pruned before), or None.
    """

    pieces: Pieces
    like: Tensor
    position: Callable[[int, int], Tensor]
    prev_mask: Tensor | None


def local_chunks(tensor: Tensor) -> list[tuple[int, int]]:
    """Flat ``[start, stop)`` ranges of ``tensor`` in order, ``_CHUNK`` entries or whole rows."""
    n = tensor.numel()
    if tensor.is_contiguous() or tensor.dim() <= 1:
        step = _CHUNK
    else:
        row = n // tensor.shape[0]
        step = row * max(1, _CHUNK // row)
    return [(start, min(start + step, n)) for start in range(0, n, max(step, 1))]


def _flat(tensor: Tensor, start: int, stop: int) -> Tensor:
    if tensor.is_contiguous() or tensor.dim() <= 1:
        return tensor.reshape(-1)[start:stop]
    row = tensor.numel() // tensor.shape[0]
    return tensor[start // row : stop // row].reshape(-1)


def tensor_part(
    ranking: Tensor,
    position: Callable[[int, int], Tensor],
    *,
    magnitude: bool = False,
    prev_mask: Tensor | None = None,
) -> Part:
    """A :class:`Part` whose ranking is a local tensor (``|ranking|`` with ``magnitude``)."""

    def pieces() -> Iterator[tuple[int, int, Tensor]]:
        for start, stop in local_chunks(ranking):
            values = _flat(ranking, start, stop)
            yield start, stop, values.abs() if magnitude else values

    return Part(pieces, ranking, position, prev_mask)


def _kept(part: Part, start: int, stop: int) -> Tensor | None:
    return None if part.prev_mask is None else _flat(part.prev_mask, start, stop)


def keep_all_but_lowest_sharded(
    parts: Sequence[Part], k: int, groups: Sequence[dist.ProcessGroup]
) -> list[Tensor]:
    """Keep-masks (local pieces) that prune the ``k`` lowest-ranked entries over all parts.

    Every rank of ``groups`` calls it with its own pieces of the same tensors. Entries pruned
    before rank below every other, so ``max(k, pruned before)`` entries are pruned (``k`` is
    clipped to the entries there are); the result equals the core's selection on the full
    tensors.

    Args:
        parts: this rank's pieces, in the selection's order.
        k: how many entries to prune in all the tensors together.
        groups: the process groups that split the tensors (summed over one after the other).

    Returns:
        One local ``torch.bool`` keep-mask per part, of its ``like``'s shape.
    """
    device = parts[0].like.device if parts else torch.device("cpu")
    local_counts = torch.zeros(2, dtype=torch.int64, device=device)
    for part in parts:
        local_counts[0] += part.like.numel()
        if part.prev_mask is not None:
            local_counts[1] += part.like.numel() - int(torch.count_nonzero(part.prev_mask))
    total, before = (int(v) for v in all_reduce_sum(local_counts, groups).tolist())
    k = max(min(k, total), before)
    if k <= 0 or k >= total or k == before:
        return [_constant(part, keep=k <= 0 or k == before) for part in parts]

    def keys() -> Iterator[Tensor]:
        for part in parts:
            for start, stop, values in part.pieces():
                kept = _kept(part, start, stop)
                piece = order_keys(values)
                yield piece if kept is None else piece[kept]

    rank = k - before  # among the entries not pruned before
    threshold, below, tied = _kth(keys, rank, 64, groups, parts)
    signed = _signed(threshold)
    needed = rank - below
    cut: int | None = None  # prune the tied entries at positions <= cut
    if needed < tied:

        def tied_positions() -> Iterator[Tensor]:
            for part in parts:
                for start, stop, values in part.pieces():
                    hit = (order_keys(values) ^ _INT64_MIN) == signed
                    kept = _kept(part, start, stop)
                    if kept is not None:
                        hit &= kept
                    yield part.position(start, stop)[hit]

        bits = max(1, max(_position_bound(part) for part in parts).bit_length()) if parts else 1
        bits = _max_over_ranks(bits, groups, device)
        cut, _, _ = _kth(tied_positions, needed, bits, groups, parts)
    masks = []
    for part in parts:
        mask = torch.empty(part.like.shape, dtype=torch.bool, device=device)
        flat = mask.view(-1)
        for start, stop, values in part.pieces():
            signed_keys = order_keys(values) ^ _INT64_MIN
            pruned = signed_keys < signed
            if needed > 0:
                at = signed_keys == signed
                if cut is not None:
                    at &= part.position(start, stop) <= cut
                pruned |= at
            kept = _kept(part, start, stop)
            if kept is not None:
                pruned |= ~kept
            flat[start:stop] = ~pruned
        masks.append(mask)
    return masks


def _position_bound(part: Part) -> int:
    """One past the largest position of the part (its last local entry's, at most)."""
    n = part.like.numel()
    return int(part.position(n - 1, n)[0]) + 1 if n else 0


def _max_over_ranks(value: int, groups: Sequence[dist.ProcessGroup], device: torch.device) -> int:
    """``value``'s maximum over the ranks of ``groups``."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    return int(all_reduce_max(tensor, groups)[0])


def _constant(part: Part, *, keep: bool) -> Tensor:
    if keep and part.prev_mask is not None:
        return part.prev_mask.clone()
    fill = torch.ones if keep else torch.zeros
    return fill(part.like.shape, dtype=torch.bool, device=part.like.device)


def _signed(unsigned: int) -> int:
    """An unsigned 64-bit key as the signed int64 that compares in the same order."""
    return unsigned - (1 << 63)


def _kth(
    stream: Callable[[], Iterator[Tensor]],
    rank: int,
    bits: int,
    groups: Sequence[dist.ProcessGroup],
    parts: Sequence[Part],
) -> tuple[int, int, int]:
    """The ``rank``-th smallest (1-based) ``bits``-bit unsigned key over all ranks.

    Returns ``(key, below, equal)``: the key, how many keys are below it and how many equal
    it, over all ranks. Keys are int64 tensors holding ``bits``-bit unsigned numbers (for 64
    bits, the sign bit is the top bit).
    """
    device = parts[0].like.device if parts else torch.device("cpu")
    budget = max(sum(p.like.numel() for p in parts) // _GATHER_FRACTION, _GATHER_MIN)
    prefix, done, below = 0, 0, 0
    gathered: list[Tensor] | None = None
    local_in_bucket = -1
    histogram = torch.zeros(0, dtype=torch.int64)
    while done < bits:
        width = min(_FIRST_BITS if done == 0 else _NEXT_BITS, bits - done)
        shift = bits - done - width
        histogram = torch.zeros(1 << width, dtype=torch.int64, device=device)
        keep_going = done > 0 and gathered is None and 0 <= local_in_bucket <= budget
        collected: list[Tensor] = []
        source = iter(gathered) if gathered is not None else stream()
        for keys in source:
            if done and gathered is None:
                keys = keys[_top(keys, bits, done) == prefix]
                if keep_going:
                    collected.append(keys)
            digits = (keys >> shift) & ((1 << width) - 1)
            histogram += torch.bincount(digits, minlength=1 << width)
        if keep_going:
            gathered = collected
        local = histogram.clone()
        all_reduce_sum(histogram, groups)
        cumulative = histogram.cumsum(0)
        digit = int(torch.searchsorted(cumulative, rank))
        before = int(cumulative[digit - 1]) if digit else 0
        rank -= before
        below += before
        prefix = (prefix << width) | digit
        done += width
        local_in_bucket = int(local[digit])
        if gathered is not None and done < bits:
            gathered = [g[((g >> shift) & ((1 << width) - 1)) == digit] for g in gathered]
    equal = int(histogram[prefix & ((1 << width) - 1)])
    return prefix, below, equal


def _top(keys: Tensor, bits: int, done: int) -> Tensor:
    """The top ``done`` of the keys' ``bits`` bits, as non-negative int64."""
    shift = bits - done
    top = keys >> shift
    return top & ((1 << done) - 1) if done < 64 else top
