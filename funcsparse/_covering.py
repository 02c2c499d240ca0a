"""A memory-lean eager ``lowest_covering``: the same selection, without a full sort.

``funcsparse._select.lowest_covering`` sorts the scores (int64 indices), gathers the gains
and takes their cumsum: several full-size buffers, about 2.9x a float32 leaf for WeightNorm's
(1, 4) blocks. :func:`lowest_covering_chunked` returns the same mask, bit for bit, with extra
memory of a few chunks besides the returned mask: it finds the score of the last selected
unit by a radix search over the scores' order-preserving integer keys (each pass a chunked
histogram of int64 gain sums), then takes the units tied at that score in position order
with a chunked running sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcsparse._errors import describe, require_int

__all__ = ["lowest_covering_chunked"]

# Units read at a time, and bits of the key resolved per pass (2**bits int64 bins). These
# change the speed and the memory, never the selection.
_CHUNK = 1 << 21
_RADIX_BITS = 16

_INT_OF = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_WIDTH = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}
_INF_BITS = {
    torch.float16: 0x7C00,
    torch.bfloat16: 0x7F80,
    torch.float32: 0x7F800000,
    torch.float64: 0x7FF0000000000000,
}
_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_INT64_MAX = (1 << 63) - 1


def _plain(tensor: Tensor) -> bool:
    """Whether data-dependent control flow on ``tensor`` is allowed (no transform, no trace)."""
    if torch.compiler.is_compiling():
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return is_wrapped is not None and not is_wrapped(tensor)


def _keys(chunk: Tensor) -> Tensor:
    """Integer keys ordered as funcsparse ranks scores: ``-0.0`` equals ``0.0``, NaN is largest.

    A float's key is its magnitude's bits (every NaN clamped to one value above ``+inf``),
    negated for a negative sign (not for a NaN): signed keys compare as the floats do, and
    ``-0.0`` and ``0.0`` share the key 0. Keys of 16- and 32-bit floats are int32, of float64
    int64; integer scores are their own keys (int64).
    """
    if chunk.dtype in _INTS:
        return chunk.to(torch.int64)
    width = _WIDTH[chunk.dtype]
    bits = chunk.view(_INT_OF[chunk.dtype])
    if width == 16:
        bits = bits.to(torch.int32)
    inf = _INF_BITS[chunk.dtype]
    key = bits & ((1 << (width - 1)) - 1)  # the magnitude
    key.clamp_(max=inf + 1)  # every NaN: one key, above +inf
    negative = (bits < key).logical_and_(key <= inf)  # sign set, not a NaN
    return torch.where(negative, key.neg(), key)


def _key_range(dtype: torch.dtype) -> tuple[int, int]:
    """The smallest and largest key a score of ``dtype`` can have."""
    if dtype in _INTS:
        info = torch.iinfo(dtype)
        return info.min, info.max
    width = _WIDTH[dtype]
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def _sorted_covering(scores: Tensor, gains: Tensor, needed: int | Tensor) -> Tensor:
    """``lowest_covering``'s own formula (a stable sort and a cumsum): the general path."""
    order = torch.sort(scores, stable=True).indices
    ranked_gains = gains.gather(-1, order)
    before = torch.cumsum(ranked_gains, -1) - ranked_gains
    selected = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return selected.scatter(-1, order, before < needed)


def lowest_covering_chunked(
    scores: Tensor,
    gains: Tensor,
    needed: int | Tensor,
    *,
    chunk: int | None = None,
    radix_bits: int | None = None,
) -> Tensor:
    """``lowest_covering``'s selection, bit for bit, without sorting: memory of a few chunks.

    Units are ranked by funcsparse's total order (ascending score, ties by position, NaN
    above everything, ``+inf`` included, NaNs by position), and a unit is selected when the
    gains of the units ranked before it sum to less than ``needed``. On a plain eager tensor
    with integer (or bool) non-negative gains and an integer ``needed``, the extra memory is
    a few ``chunk``-sized buffers besides the returned mask: a radix search over the scores'
    order keys finds the score of the last selected unit (``ceil(bits / radix_bits)`` passes
    over the scores, each summing gains per key bucket in int64), and one more pass takes
    the units below it and, in position order, the tied units the running sum still needs.
    Float or negative gains, a float ``needed``, or a tensor under ``torch.func`` or
    ``torch.compile`` take ``lowest_covering``'s own sort-based formula.

    Examples:
        >>> scores, gains = torch.tensor([0.5, 0.1, 0.9, 0.3]), torch.tensor([2, 0, 2, 1])
        >>> lowest_covering_chunked(scores, gains, 3)
        tensor([ True,  True, False,  True])
        >>> lowest_covering_chunked(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1, 1, 1]), 2)
        tensor([ True,  True, False])

    Args:
        scores: 1-D tensor (float16, bfloat16, float32, float64 or an integer dtype), one
            score per unit.
        gains: 1-D tensor of ``scores``' shape and device (integers, as a rule: what
            selecting each unit adds).
        needed: the sum of gains to reach: an int, however large, or a 0-d tensor.
        chunk: units read at a time (default ``2**21``); the memory, not the selection.
        radix_bits: key bits resolved per pass (default 16); the speed, not the selection.

    Returns:
        A 1-D ``torch.bool`` tensor, True at the selected units.

    Raises:
        TypeError: ``scores`` or ``gains`` is not a tensor of a supported dtype, ``needed``
            is neither an int nor a 0-d real tensor, or ``chunk``/``radix_bits`` not an int.
        ValueError: ``scores`` is not 1-D, ``gains`` has another shape or device, or
            ``chunk``/``radix_bits`` is below 1 (``radix_bits`` above 20).
    """
    owner = "lowest_covering_chunked"
    if not isinstance(scores, Tensor) or scores.dtype not in (*_WIDTH, *_INTS):
        raise TypeError(
            f"{owner}: scores must be a float16, bfloat16, float32, float64 or integer "
            f"tensor, got {describe(scores)}"
        )
    if scores.dim() != 1:
        raise ValueError(f"{owner}: scores must be 1-D, got {describe(scores)}")
    if not isinstance(gains, Tensor) or not (
        gains.dtype in _INTS or gains.dtype == torch.bool or gains.is_floating_point()
    ):
        raise TypeError(f"{owner}: gains must be a real tensor, got {describe(gains)}")
    if gains.shape != scores.shape or gains.device != scores.device:
        raise ValueError(
            f"{owner}: gains ({describe(gains)} on {gains.device}) must have the shape and "
            f"device of scores ({describe(scores)} on {scores.device})"
        )
    step = _CHUNK if chunk is None else require_int(owner, "chunk", chunk)
    bits = _RADIX_BITS if radix_bits is None else require_int(owner, "radix_bits", radix_bits)
    if step < 1:
        raise ValueError(f"{owner}: chunk must be >= 1, got {step}")
    if not 1 <= bits <= 20:
        raise ValueError(f"{owner}: radix_bits must be in [1, 20], got {bits}")
    whole: int | None = None  # needed as an exact int, where the lean path applies
    if isinstance(needed, Tensor):
        if needed.dim() != 0 or not (
            needed.dtype in _INTS or needed.dtype == torch.bool or needed.is_floating_point()
        ):
            raise TypeError(
                f"{owner}: needed must be an int or a 0-d real tensor, got {describe(needed)}"
            )
        if needed.dtype in _INTS or needed.dtype == torch.bool:
            whole = int(needed.item()) if _plain(needed) else None
    else:
        # Beyond any sum of gains (int64): everything; at or below 0: nothing.
        needed = max(-_INT64_MAX, min(require_int(owner, "needed", needed), _INT64_MAX))
        whole = needed
    integral = gains.dtype in _INTS or gains.dtype == torch.bool
    lean = whole is not None and integral and _plain(scores) and _plain(gains)
    if lean and gains.numel() and gains.dtype not in (torch.bool, torch.uint8):
        lean = int(gains.min()) >= 0
    if not lean or whole is None:
        return _sorted_covering(scores, gains, needed)
    n = scores.numel()
    if whole <= 0 or n == 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    scores = scores.detach()
    gains = gains.detach()
    bounds = [(start, min(step, n - start)) for start in range(0, n, step)]

    # The radix search: the smallest key K with G(<= K) >= whole, and G(< K).
    lo, hi = _key_range(scores.dtype)
    below = 0  # gains of the units whose key is below lo
    first = True
    while lo < hi:
        shift = 0
        while (hi >> shift) - (lo >> shift) + 1 > (1 << bits):
            shift += 1
        base = lo >> shift
        hist = torch.zeros((hi >> shift) - base + 1, dtype=torch.int64, device=scores.device)
        for start, length in bounds:
            key = _keys(scores.narrow(0, start, length))
            gain = gains.narrow(0, start, length).to(torch.int64)
            if not first:
                inside = (key >= lo) & (key <= hi)
                gain = torch.where(inside, gain, 0)
                key = torch.where(inside, key, lo)
            hist.index_add_(0, (key >> shift) - base, gain)
            del key, gain
        sums = hist.cumsum(0).add_(below)
        if first and int(sums[-1]) < whole:  # the gains never reach it: everything
            return torch.ones(n, dtype=torch.bool, device=scores.device)
        first = False
        bucket = int(torch.count_nonzero(sums < whole))
        if bucket:
            below = int(sums[bucket - 1])
        lo, hi = max(lo, (base + bucket) << shift), min(hi, ((base + bucket + 1) << shift) - 1)
        del hist, sums

    # Below the threshold key: selected; at it, in position order while the sum is short.
    selected = torch.empty(n, dtype=torch.bool, device=scores.device)
    running = below
    for start, length in bounds:
        key = _keys(scores.narrow(0, start, length))
        out = selected.narrow(0, start, length)
        torch.lt(key, lo, out=out)
        tied = key == lo
        del key
        if bool(tied.any()) and running < whole:
            gain = torch.where(tied, gains.narrow(0, start, length).to(torch.int64), 0)
            before = gain.cumsum(0).sub_(gain).add_(running)
            out.logical_or_(tied.logical_and_(before < whole))
            running = int(before[-1]) + int(gain[-1])
            del gain, before
    return selected
