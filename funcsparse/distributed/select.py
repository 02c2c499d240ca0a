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

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from funcsparse._select import chunk_bounds, flat_take, order_keys
from funcsparse.distributed._comm import all_gather, all_reduce_max, all_reduce_sum

__all__ = ["Part", "keep_all_but_lowest_sharded", "local_chunks", "tensor_part"]

_CHUNK = 1 << 20
_FIRST_BITS = 16
_NEXT_BITS = 8
_GATHER_FRACTION = 16
_GATHER_MIN = 1 << 16
_SAMPLE = 1 << 14
# Up to this many tied entries in a chunk, their positions are computed one by one.
_FEW = 16
_SIGMAS = 5.0
_SLACK = 8
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
        strided: optional: the ranking's values at the local flat positions ``first``,
            ``first + stride``, ... (called as ``strided(first, stride)``), read without
            a pass over the piece; None: the sample is taken from ``pieces``.
    """

    pieces: Pieces
    like: Tensor
    position: Callable[[int, int], Tensor]
    prev_mask: Tensor | None
    strided: Callable[[int, int], Tensor] | None = None


def local_chunks(tensor: Tensor, other: Tensor | None = None) -> list[tuple[int, int]]:
    """Flat ``[start, stop)`` ranges of ``tensor`` in order: ``_CHUNK`` entries, or whole
    rows where ``tensor`` or ``other`` (of its shape, e.g. a sliced ``prev_mask``) is not
    contiguous.

    A fixed size, not a fraction of the piece: each chunk's keys and their temporaries (a
    few int64s per entry) are the selection's working memory, so a quarter of a large piece
    would cost more than the piece itself (about 4x a 32M-entry piece's bytes on heavy
    ties, against 1x with ``_CHUNK``, and no slower on CPU).
    """
    return chunk_bounds(tensor, other, size=_CHUNK)


def _flat(tensor: Tensor, start: int, stop: int) -> Tensor:
    """Flat entries ``[start, stop)`` of ``tensor``, row-major: a view where contiguous, else
    a copy of the rows that hold them (any range: a non-contiguous ``prev_mask`` beside a
    contiguous ranking is cut where the ranking's chunks end)."""
    if tensor.is_contiguous() or tensor.dim() <= 1:
        return tensor.reshape(-1)[start:stop]
    row = tensor.numel() // tensor.shape[0]
    first, last = start // row, -(-stop // row)
    return tensor[first:last].reshape(-1)[start - first * row : stop - first * row]


def tensor_part(
    ranking: Tensor,
    position: Callable[[int, int], Tensor],
    *,
    magnitude: bool = False,
    prev_mask: Tensor | None = None,
) -> Part:
    """A :class:`Part` whose ranking is a local tensor (``|ranking|`` with ``magnitude``)."""

    def pieces() -> Iterator[tuple[int, int, Tensor]]:
        for start, stop in local_chunks(ranking, prev_mask):
            values = _flat(ranking, start, stop)
            yield start, stop, values.abs() if magnitude else values

    def strided(first: int, stride: int) -> Tensor:
        index = torch.arange(first, ranking.numel(), stride, device=ranking.device)
        values = flat_take(ranking, index)
        return values.abs() if magnitude else values

    return Part(pieces, ranking, position, prev_mask, strided)


def _kept(part: Part, start: int, stop: int) -> Tensor | None:
    return None if part.prev_mask is None else _flat(part.prev_mask, start, stop)


def keep_all_but_lowest_sharded(
    parts: Sequence[Part],
    k: int,
    groups: Sequence[dist.ProcessGroup],
    *,
    owner: str = "keep_all_but_lowest_sharded",
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
        owner: who is asking, for the error message. Default ``"keep_all_but_lowest_sharded"``.

    Returns:
        One local ``torch.bool`` keep-mask per part, of its ``like``'s shape.

    Raises:
        ValueError: the ranks passed different ``k`` (or numbers of parts), on every rank:
            their selections would pick different collectives and hang.
    """
    device = parts[0].like.device if parts else torch.device("cpu")
    # One all-reduce: the entries, those pruned before, the entries per ranked dtype (every
    # rank then takes the dtypes of the entries there are, not its own: an empty piece's
    # dtype may differ), and a signature of the call with its square (equal on every rank
    # exactly when ranks * sum(sig^2) == sum(sig)^2), so that all ranks agree or all raise.
    local_counts = torch.zeros(4 + len(_DTYPES), dtype=torch.int64, device=device)
    for part in parts:
        n = part.like.numel()
        local_counts[0] += n
        if part.prev_mask is not None:
            local_counts[1] += n - int(torch.count_nonzero(part.prev_mask))
        local_counts[4 + _dtype_slot(part.like.dtype)] += n
    signature = (k * 1_000_003 + len(parts)) % (1 << 20) + 1
    local_counts[2], local_counts[3] = signature, signature * signature
    counts = [int(v) for v in all_reduce_sum(local_counts, groups).tolist()]
    total, before, sig_sum, sig_squares = counts[:4]
    ranks = math.prod(dist.get_world_size(g) for g in groups)
    if ranks * sig_squares != sig_sum * sig_sum:
        raise ValueError(
            f"{owner}: the ranks disagree on the selection (the count to prune, or the "
            f"number of tensors ranked together, differs between ranks; this rank asks for "
            f"{k} of {len(parts)} tensor(s)); every rank must pass the same methods, levels "
            f"and params"
        )
    k = max(min(k, total), before)
    if k <= 0 or k >= total or k == before:
        return [_constant(part, keep=k <= 0 or k == before) for part in parts]

    rank = k - before  # among the entries not pruned before
    ranked = [dtype for dtype, n in zip(_DTYPES, counts[4:], strict=True) if n]
    # One float dtype there: values compared as floats, keys of its width; else 64-bit keys.
    dtype = ranked[0] if len(ranked) == 1 else None
    bits = 64 if dtype is None else _NARROW.get(dtype, 64)
    found = None if dtype is None else _bracketed(parts, rank, total - before, bits, groups, dtype)
    if found is None:
        found = _streamed(parts, rank, bits, groups)
    threshold, cut = found
    value = None if dtype is None else _value_of(threshold, bits, dtype)
    masks = []
    for part in parts:
        mask = torch.empty(part.like.shape, dtype=torch.bool, device=device)
        flat = mask.view(-1)
        for start, stop, values in part.pieces():
            if value is None:  # mixed dtypes: compare keys
                ordered = _comparable(_keys(values, bits), bits)
                signed = _signed(threshold, bits)
                pruned, at = ordered < signed, ordered == signed
            elif math.isnan(value):
                at = values.isnan()
                pruned = ~at
            else:
                pruned, at = values < value, values == value
            if cut is not None:
                at &= part.position(start, stop) <= cut
            pruned |= at
            kept = _kept(part, start, stop)
            if kept is not None:
                pruned |= ~kept
            torch.logical_not(pruned, out=flat[start:stop])
        masks.append(mask)
    return masks


def _streamed(
    parts: Sequence[Part], rank: int, bits: int, groups: Sequence[dist.ProcessGroup]
) -> tuple[int, int | None]:
    """The ``rank``-th key over every kept entry by counting passes over the whole pieces,
    and the cut among the entries tied at it (None: prune them all)."""

    def keys() -> Iterator[Tensor]:
        for part in parts:
            for start, stop, values in part.pieces():
                kept = _kept(part, start, stop)
                piece = _keys(values, bits)
                yield piece if kept is None else piece[kept]

    threshold, below, tied = _kth(keys, rank, bits, groups, parts)
    needed = rank - below
    if needed >= tied:
        return threshold, None
    signed = _signed(threshold, bits)

    def tied_positions() -> Iterator[Tensor]:
        for part in parts:
            for start, stop, values in part.pieces():
                hit = _comparable(_keys(values, bits), bits) == signed
                kept = _kept(part, start, stop)
                if kept is not None:
                    hit &= kept
                yield part.position(start, stop)[hit]

    return threshold, _cut(tied_positions, needed, parts, groups)


def _cut(
    positions: Callable[[], Iterator[Tensor]],
    needed: int,
    parts: Sequence[Part],
    groups: Sequence[dist.ProcessGroup],
    *,
    small: bool = False,
) -> int:
    """The ``needed``-th smallest of the tied entries' positions over all ranks."""
    device = parts[0].like.device if parts else torch.device("cpu")
    bound = max((_position_bound(part) for part in parts), default=0)
    width = _max_over_ranks(max(1, bound.bit_length()), groups, device)
    cut, _, _ = _kth(positions, needed, width, groups, parts, small=small)
    return cut


def _bracketed(
    parts: Sequence[Part],
    rank: int,
    population: int,
    bits: int,
    groups: Sequence[dist.ProcessGroup],
    dtype: torch.dtype,
) -> tuple[int, int | None] | None:
    """The ``rank``-th key and the tie cut, from the entries inside a sampled bracket.

    A strided sample of every rank's kept entries (all-gathered: about ``_SAMPLE`` values
    in all) brackets the ``rank``-th value; one pass counts the entries below the bracket
    and keeps the (few) inside it, locally; the k-th and the ties are then counted among
    those alone. None where the bracket misses the k-th or holds too many entries (the
    caller then counts over the whole pieces). Every part with entries, on every rank,
    ranks ``dtype``.
    """
    device = parts[0].like.device if parts else torch.device("cpu")
    stride = max(1, population // _SAMPLE)
    sample = _local_sample(parts, stride, dtype, device)
    union = _gather_all(sample, groups)
    union = union.sort().values  # NaN last
    m = union.numel()
    if m == 0:
        return None
    q = rank / population
    margin = _SIGMAS * math.sqrt(m * q * (1 - q)) + _SLACK
    lo_i, hi_i = math.floor(q * m - margin), math.ceil(q * m + margin)
    lo = float(union[lo_i]) if lo_i >= 0 else None
    hi = float(union[hi_i]) if hi_i < m else None
    if stride == 1 and m == population:  # the sample is every entry: the k-th is known
        lo = hi = float(union[rank - 1])
    if hi is not None and math.isnan(hi):
        hi = None
    if lo is not None and math.isnan(lo):
        return None
    budget = max(sum(p.like.numel() for p in parts) // _GATHER_FRACTION, _GATHER_MIN)
    below = 0
    values: list[Tensor] = []
    where: list[tuple[int, int, int, Tensor]] = []
    inside_count = 0
    overflow = False
    for i, part in enumerate(parts):
        for start, stop, chunk in part.pieces():
            kept = _kept(part, start, stop)
            if lo is None:
                inside = torch.ones(chunk.shape, dtype=torch.bool, device=device)
            else:
                under = chunk < lo
                below += int(torch.count_nonzero(under if kept is None else under & kept))
                inside = ~under
            if hi is not None:
                inside &= chunk <= hi
            if kept is not None:
                inside &= kept
            inside_count += int(torch.count_nonzero(inside))
            if overflow or inside_count > budget:  # counted first: no int64 index per entry
                overflow = True
                continue
            index = inside.nonzero().view(-1)
            values.append(chunk[index])
            where.append((i, start, stop, index))
    counts = torch.tensor([below, inside_count, int(overflow)], dtype=torch.int64, device=device)
    below, inside_count, overflows = (int(v) for v in all_reduce_sum(counts, groups).tolist())
    if overflows or not below < rank <= below + inside_count:
        return None
    keys = [_keys(v, bits) for v in values]
    # Every key inside the bracket shares the top bits that the bracket's ends share.
    low = 0 if lo is None else int(_keys(torch.tensor([lo], dtype=dtype), bits)[0]) % (1 << bits)
    high = (
        (1 << bits) - 1
        if hi is None
        else int(_keys(torch.tensor([hi], dtype=dtype), bits)[0]) % (1 << bits)
    )
    common = min(bits - (low ^ high).bit_length(), bits - 1)
    threshold, lower, tied = _kth(
        lambda: iter(keys),
        rank - below,
        bits,
        groups,
        parts,
        small=True,
        common=common,
        prefix=low >> (bits - common),
    )
    needed = rank - below - lower
    if needed >= tied:
        return threshold, None
    value = _value_of(threshold, bits, dtype)
    tied_positions = []
    for v, (i, start, _stop, index) in zip(values, where, strict=True):
        hit = v.isnan() if math.isnan(value) else v == value
        hits = index[hit]  # ascending offsets in the chunk
        if hits.numel() == 0:
            continue
        position = parts[i].position
        if hits.numel() <= _FEW:  # positions of these entries only, not of the chunk
            spots = [position(start + j, start + j + 1) for j in hits.tolist()]
            tied_positions.append(torch.cat(spots))
        else:  # positions of the range that holds them
            first, last = int(hits[0]), int(hits[-1]) + 1
            tied_positions.append(position(start + first, start + last)[hits - first])
    return threshold, _cut(lambda: iter(tied_positions), needed, parts, groups, small=True)


def _local_sample(
    parts: Sequence[Part], stride: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Every ``stride``-th entry of the local pieces (flat, in order), kept entries only."""
    taken: list[Tensor] = []
    offset = 0  # where the next piece's first sampled entry lies
    for part in parts:
        if part.strided is not None:  # read where sampled, no pass over the piece
            first = (-offset) % stride
            picked = part.strided(first, stride)
            if part.prev_mask is not None:
                index = torch.arange(first, part.like.numel(), stride, device=device)
                picked = picked[flat_take(part.prev_mask, index)]
            taken.append(picked)
            offset += part.like.numel()
            continue
        for start, stop, chunk in part.pieces():
            first = (-(start + offset)) % stride
            picked = chunk[first::stride]
            kept = _kept(part, start, stop)
            # A copy: a strided view would keep the whole chunk alive (|w| or draws, made
            # per chunk), and so a full-size copy of the piece until the sample is sent.
            taken.append(picked.clone() if kept is None else picked[kept[first::stride]])
        offset += part.like.numel()
    if not taken:
        return torch.empty(0, dtype=dtype, device=device)
    # In the agreed dtype: an empty piece's values may have another (sent sizes must agree).
    return torch.cat(taken).to(dtype)


def _gather_all(sample: Tensor, groups: Sequence[dist.ProcessGroup]) -> Tensor:
    """Every rank's ``sample`` (of any length), concatenated; padded with NaN to send."""
    result = sample
    for group in groups:
        size = torch.tensor([result.numel()], dtype=torch.int64, device=result.device)
        sizes = [int(s) for s in all_gather(size, group)]
        padded = torch.full((max(sizes),), math.nan, dtype=result.dtype, device=result.device)
        padded[: result.numel()] = result
        pieces = all_gather(padded, group)
        result = torch.cat([p[:n] for p, n in zip(pieces, sizes, strict=True)])
    return result


def _value_of(key: int, bits: int, dtype: torch.dtype) -> float:
    """The float whose unsigned order key is ``key`` (NaN for the NaN key)."""
    if bits == 64:
        signed = key - (1 << 63)
        if signed == (1 << 63) - 1:
            return math.nan
        raw = signed ^ ((1 << 63) - 1) if signed < 0 else signed
        value: float = struct.unpack("<d", struct.pack("<q", raw))[0]
        return value
    top = 1 << (bits - 1)
    signed = key - top
    if signed == top - 1:
        return math.nan
    raw = signed ^ (top - 1) if signed < 0 else signed
    return float(torch.tensor([raw], dtype=_INTS[bits]).view(dtype)[0])


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


_NARROW = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16}
# The ranked dtypes counted apart in the first all-reduce; None: any other.
_DTYPES: tuple[torch.dtype | None, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    None,
)


def _dtype_slot(dtype: torch.dtype) -> int:
    """``dtype``'s index in ``_DTYPES`` (the last slot: any other dtype)."""
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES) - 1


_INTS = {32: torch.int32, 16: torch.int16}


def _keys(values: Tensor, bits: int) -> Tensor:
    """Unsigned order keys of ``values`` (as the core ranks them: ``-0.0 == 0.0``, NaN
    largest): ``bits``-bit numbers in an int64 (int32 for 16 bits); for 64 bits the int64's
    bit pattern is the unsigned number."""
    if bits == 64:
        return order_keys(values)
    top = 1 << (bits - 1)
    raw = (values + 0.0).view(_INTS[bits])  # -0.0 + 0.0 is +0.0
    keys = torch.where(raw < 0, raw ^ (top - 1), raw)  # ordered as signed numbers
    keys.masked_fill_(values.isnan(), top - 1)
    wide = keys.to(torch.int64 if bits == 32 else torch.int32)
    return wide.add_(top)  # signed to unsigned order: shift up by half the range


def _comparable(keys: Tensor, bits: int) -> Tensor:
    """Keys as signed integers that compare in their order."""
    return keys ^ _INT64_MIN if bits == 64 else keys


def _signed(unsigned: int, bits: int) -> int:
    """An unsigned key as :func:`_comparable` shows it."""
    return unsigned - (1 << 63) if bits == 64 else unsigned


def _kth(
    stream: Callable[[], Iterator[Tensor]],
    rank: int,
    bits: int,
    groups: Sequence[dist.ProcessGroup],
    parts: Sequence[Part],
    *,
    small: bool = False,
    common: int = 0,
    prefix: int = 0,
) -> tuple[int, int, int]:
    """The ``rank``-th smallest (1-based) ``bits``-bit unsigned key over all ranks.

    Returns ``(key, below, equal)``: the key, how many keys are below it and how many equal
    it, over all ranks. Keys are int64 tensors holding ``bits``-bit unsigned numbers (for 64
    bits, the sign bit is the top bit). ``small``: the stream is a few local keys, held
    and counted 8 bits at a time; every key's top ``common`` bits are ``prefix`` (on every
    rank; fewer than ``bits``), so counting starts below them.
    """
    device = parts[0].like.device if parts else torch.device("cpu")
    budget = max(sum(p.like.numel() for p in parts) // _GATHER_FRACTION, _GATHER_MIN)
    done, below = common, 0
    gathered: list[Tensor] | None = list(stream()) if small else None
    local_in_bucket = -1
    histogram = torch.zeros(0, dtype=torch.int64)
    while done < bits:
        first = done == 0 and not small
        width = min(_FIRST_BITS if first else _NEXT_BITS, bits - done)
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
