"""Scores to boolean selections: exact counts and one deterministic tie rule.

Every selector here ranks entries by score, ascending, and selects the ``k`` lowest-ranked
ones. The ranking is a total order, the one ``torch.sort(..., stable=True)`` produces:

* a smaller score ranks lower;
* equal scores rank by position: the lower flat (row-major) index ranks lower;
* NaN ranks above every number, ``+inf`` included; NaNs among themselves rank by position.

So a selector that promises ``k`` entries selects exactly ``k``, whatever the ties, on any
device, every time. On plain eager tensors the selectors take data-dependent fast paths
(a sampled bracket around the threshold, a tie check); under ``torch.func`` transforms and
``torch.compile`` they run a branch-free formulation. Both give the same selection.

Memory: on a plain eager tensor of at least ``_BRACKET_MIN`` entries, :func:`smallest_k`
(1-D), :func:`keep_all_but_lowest` and :func:`keep_all_but_lowest_drawn` never hold a
full-size copy of the scores. They read (or compute: ``|x|``, a random draw) the scores
``_CHUNK`` entries at a time; the only full-size buffer is the returned mask, one byte per
entry, beside the scores that fall inside the sampled bracket (at most ``numel / 16``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from funcsparse._covering import lowest_covering_chunked
from funcsparse._errors import describe, require_int

__all__ = [
    "chunk_bounds",
    "flat_piece",
    "flat_take",
    "keep_all_but_lowest",
    "keep_all_but_lowest_drawn",
    "kth_smallest_value",
    "lowest_covering",
    "order_keys",
    "rank_pruned_first",
    "smallest_k",
    "smallest_k_per_group",
]

# Below this many scores a plain ``kthvalue`` beats the sampled bracket.
_BRACKET_MIN = 1 << 16
# Entries drawn (by stride) to bracket the threshold, and the bracket's half-width in them
# (about 3.5 standard deviations of a sample quantile's position). Sorting the sample must
# stay cheap: torch's CPU sort slows down tenfold past 8192 entries.
_SAMPLE_SIZE = 1 << 12
_SAMPLE_MARGIN = 112
# Groups up to this size are ranked by pairwise comparisons; larger ones by a stable sort.
_PAIRWISE_MAX = 8
# The chunked selection: scores computed at a time (at least _CHUNK and at most
# _CHUNK_MAX, in as few as _MAX_CHUNKS chunks: every torch op has a fixed cost, which
# grows large on a busy machine, so fewer ops are faster); the
# strided sample that brackets the k-th (its half-width: _BRACKET_SIGMAS standard
# deviations of the sample quantile's position, plus _BRACKET_SLACK entries); the most
# entries gathered from inside the bracket, max(numel // _GATHER_FRACTION, _GATHER_MIN),
# past which the k-th is found by exact radix passes instead. These change the speed and
# the memory, never the selection.
_CHUNK = 1 << 20
_CHUNK_MAX = 1 << 24
_MAX_CHUNKS = 4
_BRACKET_SAMPLE = 1 << 14
_BRACKET_SIGMAS = 5.0
_BRACKET_SLACK = 8
_GATHER_FRACTION = 16
_GATHER_MIN = 1 << 16
# A bracket bound held by at least 1 / _HEAVY_TIE of the sample is a heavy tie: not gathered.
_HEAVY_TIE = 64
_RADIX_BITS = 16

# Dtypes that can be ranked (float8 has no sort, compare or kthvalue kernels).
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_REALS = _FLOATS + _INTS + (torch.bool,)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def is_plain(tensor: Tensor) -> bool:
    """Whether data-dependent Python control flow on ``tensor`` is allowed.

    False under ``torch.func`` transforms (vmap, grad) and while ``torch.compile`` traces.
    """
    if torch.compiler.is_compiling():
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return is_wrapped is not None and not is_wrapped(tensor)


def _check_scores(owner: str, name: str, scores: object, *, floating: bool = False) -> Tensor:
    """``scores`` if it is a tensor of a dtype that ranks, else a TypeError naming ``owner``."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"{owner}: {name} must be a tensor, got {describe(scores)}")
    allowed = _FLOATS if floating else _FLOATS + _INTS
    if scores.dtype not in allowed:
        kinds = "float16, bfloat16, float32 or float64"
        if not floating:
            kinds += ", or an integer dtype"
        raise TypeError(
            f"{owner}: {name} of dtype {scores.dtype} cannot be ranked; {name} must be {kinds}"
        )
    return scores


def _check_mask(owner: str, name: str, mask: object, like: Tensor) -> Tensor:
    """``mask`` if it is a bool tensor of ``like``'s shape and device, else an error."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{owner}: {name} must be a bool tensor, got {describe(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{owner}: {name} of dtype {mask.dtype}; {name} must be torch.bool")
    if mask.shape != like.shape:
        raise ValueError(
            f"{owner}: {name} of shape {tuple(mask.shape)} for scores of shape "
            f"{tuple(like.shape)}; {name} must have the scores' shape"
        )
    if mask.device != like.device:
        raise ValueError(
            f"{owner}: {name} on {mask.device} for scores on {like.device}; {name} must be "
            f"on the scores' device"
        )
    return mask


def _eager(tensor: Tensor) -> bool:
    """Whether ``tensor`` is large, plain and real enough for the chunked selection."""
    return tensor.numel() >= _BRACKET_MIN and tensor.device.type != "meta" and is_plain(tensor)


def smallest_k(scores: Tensor, k: int) -> Tensor:
    """Select the ``k`` lowest-ranked entries along the last dimension.

    Examples:
        >>> smallest_k(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2)
        tensor([False,  True, False,  True])

    Args:
        scores: real tensor (floating or integer); every slice along the last dimension is
            ranked on its own.
        k: how many entries each slice selects; clipped to ``[0, scores.shape[-1]]`` (any
            int, however large).

    Returns:
        A ``torch.bool`` tensor of ``scores``' shape, ``True`` at the selected entries.

    Raises:
        TypeError: ``scores`` is not a real tensor (bool, complex and float8 are refused),
            or ``k`` is not an int.
        ValueError: ``scores`` is 0-d.
    """
    _check_scores("smallest_k", "scores", scores)
    k = require_int("smallest_k", "k", k)
    if scores.dim() == 0:
        raise ValueError("smallest_k: scores is 0-d; it needs a last dimension to rank along")
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if scores.dim() == 1 and _eager(scores):
        bounds = _chunk_bounds(scores, None)
        pieces = _tensor_pieces(scores, None, bounds, magnitude=False)
        sample = _strided_sample(scores, None, magnitude=False)
        return _select_chunked(pieces, bounds, scores, k, None, sample, keep=False)
    return _smallest_k_pure(scores, k)


def keep_all_but_lowest(
    ranking: Tensor, k: int, prev_mask: Tensor | None = None, *, magnitude: bool = False
) -> Tensor:
    """A keep-mask of ``ranking``'s shape that prunes its ``k`` lowest-ranked entries (flat).

    With ``prev_mask``, entries it prunes rank below every other (a -inf score included)
    and stay pruned, so ``k`` is the total: the mask prunes ``max(k, previously pruned)``
    entries. Branch-free in the
    data (``k`` depends on shapes only), so it runs under vmap. On a large plain tensor no
    full-size copy of the ranking is made (see the module's note on memory).

    Examples:
        >>> keep_all_but_lowest(torch.tensor([3.0, -1.0, 2.0, 0.5]), 2)
        tensor([ True, False,  True, False])
        >>> keep_all_but_lowest(torch.tensor([3.0, -1.0, 2.0, 0.5]), 1, magnitude=True)
        tensor([ True,  True,  True, False])
        >>> prev = torch.tensor([False, True, True])
        >>> keep_all_but_lowest(torch.tensor([3.0, -1.0, 2.0]), 1, prev)
        tensor([False,  True,  True])
        >>> keep_all_but_lowest(torch.tensor([-torch.inf, 3.0, 2.0]), 1, prev.flip(0))
        tensor([ True,  True, False])

    Args:
        ranking: floating tensor of any shape; the lowest values are pruned first.
        k: how many entries to prune; clipped to ``[0, numel]`` (any int).
        prev_mask: optional bool tensor of ``ranking``'s shape and device, False where
            entries were pruned before. Default None.
        magnitude: rank ``|ranking|`` instead of ``ranking`` (computed chunk by chunk, never
            as a full-size copy). Default False.

    Returns:
        A ``torch.bool`` tensor of ``ranking``'s shape, False at the pruned entries.

    Raises:
        TypeError: ``ranking`` is not a float16/bfloat16/float32/float64 tensor, ``k`` is
            not an int, or ``prev_mask`` is not a bool tensor.
        ValueError: ``prev_mask`` has another shape or device than ``ranking``.
    """
    owner = "keep_all_but_lowest"
    _check_scores(owner, "ranking", ranking, floating=True)
    k = require_int(owner, "k", k)
    if prev_mask is not None:
        _check_mask(owner, "prev_mask", prev_mask, ranking)
    n = ranking.numel()
    if 0 < k < n and _eager(ranking) and (prev_mask is None or is_plain(prev_mask)):
        bounds = _chunk_bounds(ranking, prev_mask)
        pieces = _tensor_pieces(ranking, prev_mask, bounds, magnitude=magnitude)
        sample = _strided_sample(ranking, prev_mask, magnitude=magnitude)
        return _select_chunked(pieces, bounds, ranking, k, prev_mask, sample, keep=True)
    if magnitude:
        ranking = ranking.abs()
    if prev_mask is None:
        pruned = smallest_k(ranking.reshape(-1), k).reshape(ranking.shape)
    else:
        first = prev_mask.logical_not().reshape(-1)  # pruned before: ranked first
        if k <= 0:
            pruned = first.reshape(ranking.shape)
        elif k >= n:
            pruned = torch.ones(ranking.shape, dtype=torch.bool, device=ranking.device)
        else:
            ranked = torch.where(first, -torch.inf, ranking.reshape(-1))
            pruned = _smallest_k_pure(ranked, k, first).reshape(ranking.shape)
    return pruned.logical_not_()  # a fresh buffer: negate in place, no new one


def keep_all_but_lowest_drawn(
    draws: Callable[[], Callable[[int], Tensor]],
    like: Tensor,
    k: int,
    prev_mask: Tensor | None = None,
) -> Tensor:
    """:func:`keep_all_but_lowest` of a ranking that is drawn, chunk by chunk, not stored.

    ``draws()`` starts the ranking's stream from its beginning and returns a function
    that, called with a size, returns the next ``size`` entries of the ranking (flat,
    row-major) as a fresh 1-D tensor. Concatenated, the draws must be the same whatever
    the sizes (as ``torch.rand`` on a CPU generator is); the stream may be started more
    than once. On a large plain ``like`` the ranking is never held whole, only the mask
    and a chunk at a time; otherwise it is drawn in one go.

    Examples:
        >>> values = torch.tensor([0.3, 0.9, 0.1, 0.5])
        >>> def draws():
        ...     stream = iter(values.tolist())
        ...     return lambda size: torch.tensor([next(stream) for _ in range(size)])
        >>> keep_all_but_lowest_drawn(draws, torch.empty(2, 2), 2)
        tensor([[False,  True],
                [False,  True]])

    Args:
        draws: starts the stream; see above. Every draw must have ``like``'s dtype and
            device.
        like: a tensor of the ranking's shape, dtype and device (its values are not read).
        k: how many entries to prune; clipped to ``[0, numel]`` (any int).
        prev_mask: as in :func:`keep_all_but_lowest`. Default None.

    Returns:
        A ``torch.bool`` tensor of ``like``'s shape, False at the pruned entries.

    Raises:
        TypeError: ``like`` is not a floating tensor, ``k`` is not an int, ``prev_mask``
            is not a bool tensor, or ``draws`` is not callable.
        ValueError: ``prev_mask`` has another shape or device than ``like``.
    """
    owner = "keep_all_but_lowest_drawn"
    _check_scores(owner, "like", like, floating=True)
    k = require_int(owner, "k", k)
    if not callable(draws):
        raise TypeError(f"{owner}: draws must be callable, got {describe(draws)}")
    if prev_mask is not None:
        _check_mask(owner, "prev_mask", prev_mask, like)
    n = like.numel()
    if 0 < k < n and _eager(like) and (prev_mask is None or is_plain(prev_mask)):
        bounds = _chunk_bounds(like, prev_mask)
        pieces = _drawn_pieces(draws, prev_mask, bounds)
        return _select_chunked(pieces, bounds, like, k, prev_mask, None, keep=True)
    values = draws()(n).reshape(like.shape)
    return keep_all_but_lowest(values, k, prev_mask)


def lowest_covering(scores: Tensor, gains: Tensor, needed: int | Tensor) -> Tensor:
    """Select units in rank order (lowest score first) until their ``gains`` reach ``needed``.

    The shortest prefix of the ranking (funcsparse's total order: ties by position, NaN
    last) whose gains sum to at least ``needed``: a unit is selected when the gains of the
    units ranked before it sum to less than ``needed``. Everything is selected when the
    gains never reach it, nothing when ``needed <= 0``. Structured methods use it with a
    ``prev_mask``: a unit's gain is the zeros that pruning it adds, so the total zeros reach
    the level's target. Branch-free (``needed`` may be a tensor), so it runs under vmap.

    Examples:
        >>> lowest_covering(torch.tensor([0.5, 0.1, 0.9, 0.3]), torch.tensor([2, 0, 2, 1]), 3)
        tensor([ True,  True, False,  True])

    Args:
        scores: 1-D real tensor, one score per unit.
        gains: 1-D non-negative tensor of ``scores``' shape (integers, as a rule).
        needed: the sum of gains to reach (an int, however large, or a 0-d tensor).

    Returns:
        A 1-D ``torch.bool`` tensor, True at the selected units.

    Raises:
        TypeError: ``scores`` or ``gains`` is not a real tensor, or ``needed`` neither an
            int nor a 0-d real tensor.
        ValueError: ``scores`` is not 1-D, or ``gains`` has another shape or device.
    """
    owner = "lowest_covering"
    _check_scores(owner, "scores", scores)
    if scores.dim() != 1:
        raise ValueError(f"{owner}: scores must be 1-D, got {describe(scores)}")
    if not isinstance(gains, Tensor) or gains.dtype not in _REALS:
        raise TypeError(f"{owner}: gains must be a real tensor, got {describe(gains)}")
    if gains.shape != scores.shape or gains.device != scores.device:
        raise ValueError(
            f"{owner}: gains ({describe(gains)} on {gains.device}) must have the shape and "
            f"device of scores ({describe(scores)} on {scores.device})"
        )
    if isinstance(needed, Tensor):
        if needed.dtype not in _REALS or needed.dim() != 0:
            raise TypeError(
                f"{owner}: needed must be an int or a 0-d real tensor, got {describe(needed)}"
            )
    else:
        # Beyond any sum of gains (int64): everything; at or below 0: nothing.
        needed = max(-_INT64_MAX, min(require_int(owner, "needed", needed), _INT64_MAX))
    if (
        scores.numel() >= _BRACKET_MIN
        and scores.device.type == "cpu"
        and is_plain(scores)
        and is_plain(gains)
        and gains.dtype in _INTS
        and (not isinstance(needed, Tensor) or (needed.dtype in _INTS and is_plain(needed)))
    ):
        # Large eager CPU input: the same selection by key-range passes over chunks (a few
        # chunks of memory besides the mask, where a sort takes about 2x the scores' bytes).
        return lowest_covering_chunked(scores, gains, needed)
    if gains.dtype == torch.bool:  # 0/1 gains (bool has no subtraction)
        gains = gains.to(torch.uint8)
    order = torch.sort(scores, stable=True).indices
    ranked_gains = gains.gather(-1, order)
    before = torch.cumsum(ranked_gains, -1) - ranked_gains
    selected = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return selected.scatter(-1, order, before < needed)


def _smallest_k_pure(scores: Tensor, k: int, first: Tensor | None = None) -> Tensor:
    """Branch-free ``smallest_k``: a k-th value threshold, then ties by a running count.

    ``first`` (a bool tensor of ``scores``' shape, -inf in ``scores`` where it is True)
    marks entries that rank before every other, real -inf scores included: all of them are
    selected, and they are the first of the ties at a -inf threshold.
    """
    threshold = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    threshold_nan = threshold.isnan()
    scores_nan = scores.isnan()
    below = (scores < threshold) | (threshold_nan & ~scores_nan)
    tied = (scores == threshold) | (threshold_nan & scores_nan)
    if first is not None:  # below already holds them unless the threshold is -inf
        below = below | first
        tied = tied & ~first
    still_needed = k - below.sum(dim=-1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=-1) <= still_needed))


def kth_smallest_value(scores: Tensor, k: int) -> float:
    """The ``k``-th smallest entry of a 1-D tensor, as a Python number (NaN ranks largest).

    Large tensors are narrowed from a strided sample first, so no full sort is made.

    Examples:
        >>> kth_smallest_value(torch.tensor([3.0, float("nan"), -1.0, 2.0]), 2)
        2.0
        >>> kth_smallest_value(torch.tensor([3.0, float("nan"), -1.0, 2.0]), 4)
        nan

    Args:
        scores: 1-D real tensor (floating or integer).
        k: the rank, from 1 (the smallest) to ``scores.numel()``.

    Returns:
        The value (a float; NaN where the ``k``-th is a NaN).

    Raises:
        TypeError: ``scores`` is not a real tensor, or ``k`` is not an int.
        ValueError: ``scores`` is not 1-D, or ``k`` is outside ``[1, scores.numel()]``.
    """
    owner = "kth_smallest_value"
    _check_scores(owner, "scores", scores)
    k = require_int(owner, "k", k)
    if scores.dim() != 1:
        raise ValueError(f"{owner}: scores must be 1-D, got {describe(scores)}")
    if not 1 <= k <= scores.numel():
        raise ValueError(
            f"{owner}: k={k} for {scores.numel()} scores; k must be in [1, {scores.numel()}]"
        )
    return _kth_smallest_value(scores, k)


def _kth_smallest_value(scores: Tensor, k: int) -> float:
    """The k-th smallest entry of a 1-D tensor (NaN largest), bracketed from a strided sample."""
    n = scores.numel()
    sample = scores[:: max(1, n // _SAMPLE_SIZE)].sort().values
    m = sample.numel()
    at = k * m / n
    lo_at = math.floor(at) - _SAMPLE_MARGIN
    hi_at = math.ceil(at) + _SAMPLE_MARGIN
    lo = sample[lo_at].item() if lo_at > 0 else -math.inf
    hi = sample[hi_at].item() if hi_at < m - 1 else math.inf
    if not (math.isnan(lo) or math.isnan(hi)):
        # Two comparisons over the scores: everything up to ``hi``, and of that, from ``lo``.
        up_to_hi = scores <= hi
        n_up_to_hi = int(torch.count_nonzero(up_to_hi))
        candidates = scores[up_to_hi.logical_and_(scores >= lo)]
        n_below = n_up_to_hi - candidates.numel()
        if n_below < k <= n_below + candidates.numel():
            if lo == hi:  # the bracket is one value (ties): that value is the k-th
                return lo
            if _BRACKET_MIN <= candidates.numel() < n:
                return _kth_smallest_value(candidates, k - n_below)
            return candidates.kthvalue(k - n_below).values.item()
    return scores.kthvalue(k).values.item()


# -- the chunked selection ------------------------------------------------------------------
#
# One pass over the scores (chunk by chunk) compares them with a bracket [lo, hi] taken
# from a sample and writes, into the uint8 buffer that becomes the mask, 1 where a score is
# below lo (selected) and 0 elsewhere; the positions and scores inside the bracket are
# gathered (few). From the counts, the k-th entry is inside, and the gathered scores say
# which of them are selected. Where the bracket is one value (a tie) the pass writes 2 at
# the tied entries instead, and a second pass over the buffer selects the first of them by
# position; where the k-th is a NaN (past every number) it does the same with lo = hi =
# +inf for the NaNs. A bracket that misses the k-th, or holds too many scores to gather,
# falls back to radix passes over the scores' order keys, which find the k-th value
# exactly; the pass is then repeated with lo = hi = that value.

_Pieces = Callable[[], Iterator[Tensor]]


def _chunk_bounds(tensor: Tensor, other: Tensor | None) -> list[tuple[int, int]]:
    """Flat ``[start, stop)`` ranges covering ``tensor`` (and ``other``, of its shape) in
    order: ``numel / _MAX_CHUNKS`` entries (at least ``_CHUNK``, at most ``_CHUNK_MAX``), or
    whole rows where either tensor is not contiguous."""
    n = tensor.numel()
    return chunk_bounds(tensor, other, size=max(_CHUNK, min(-(-n // _MAX_CHUNKS), _CHUNK_MAX)))


def chunk_bounds(tensor: Tensor, other: Tensor | None, *, size: int) -> list[tuple[int, int]]:
    """Flat ``[start, stop)`` ranges covering ``tensor`` (and ``other``, of its shape) in
    order: ``size`` entries each, or whole rows (as many as fit in ``size``, at least one)
    where either tensor is not contiguous.

    Examples:
        >>> chunk_bounds(torch.zeros(10), None, size=4)
        [(0, 4), (4, 8), (8, 10)]
        >>> chunk_bounds(torch.zeros(3, 4).T, None, size=5)
        [(0, 3), (3, 6), (6, 9), (9, 12)]
    """
    n = tensor.numel()
    contiguous = tensor.is_contiguous() and (other is None or other.is_contiguous())
    if contiguous or tensor.dim() <= 1:
        step = size
    else:
        row = n // tensor.shape[0]
        step = row * max(1, size // row)
    return [(start, min(start + step, n)) for start in range(0, n, max(step, 1))]


def flat_piece(tensor: Tensor, start: int, stop: int) -> Tensor:
    """Flat entries ``[start, stop)`` of ``tensor``, row-major (a view where contiguous; for a
    non-contiguous tensor the range is whole rows, copied)."""
    if tensor.is_contiguous() or tensor.dim() <= 1:
        return tensor.reshape(-1)[start:stop]
    row = tensor.numel() // tensor.shape[0]
    return tensor[start // row : stop // row].reshape(-1)


def flat_take(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor``'s entries at flat row-major positions ``index``, without a flat copy."""
    if tensor.is_contiguous() or tensor.dim() <= 1:
        return tensor.reshape(-1)[index]
    return tensor[torch.unravel_index(index, tensor.shape)]


def _tensor_pieces(
    ranking: Tensor, prev: Tensor | None, bounds: list[tuple[int, int]], *, magnitude: bool
) -> _Pieces:
    """The ranking's chunks (``|ranking|`` with ``magnitude``, -inf where ``prev`` is False),
    computed into one reused buffer."""

    def pieces() -> Iterator[Tensor]:
        buffer: Tensor | None = None
        for start, stop in bounds:
            piece = flat_piece(ranking, start, stop)
            if magnitude or prev is not None:
                if buffer is None or buffer.numel() < piece.numel():
                    buffer = torch.empty(piece.numel(), dtype=piece.dtype, device=piece.device)
                out = buffer[: piece.numel()]
                piece = torch.abs(piece, out=out) if magnitude else out.copy_(piece)
                if prev is not None:
                    piece.masked_fill_(flat_piece(prev, start, stop).logical_not(), -math.inf)
            yield piece

    return pieces


def _drawn_pieces(
    draws: Callable[[], Callable[[int], Tensor]],
    prev: Tensor | None,
    bounds: list[tuple[int, int]],
) -> _Pieces:
    """The drawn ranking's chunks, -inf where ``prev`` is False."""

    def pieces() -> Iterator[Tensor]:
        draw = draws()
        for start, stop in bounds:
            piece = draw(stop - start)
            if prev is not None:
                piece.masked_fill_(flat_piece(prev, start, stop).logical_not(), -math.inf)
            yield piece
            del piece  # let the chunk go before the next is drawn

    return pieces


def _strided_sample(ranking: Tensor, prev: Tensor | None, *, magnitude: bool) -> Tensor:
    """About ``_BRACKET_SAMPLE`` of the ranking's values, strided, where ``prev`` keeps."""
    n = ranking.numel()
    index = torch.arange(0, n, max(1, n // _BRACKET_SAMPLE), device=ranking.device)
    values = flat_take(ranking, index)
    if magnitude:
        values = values.abs()
    return values if prev is None else values[flat_take(prev, index)]


def _bracket(sample: Tensor, rank: int, population: int) -> tuple[float, float, float | None]:
    """Bounds around the ``rank``-th smallest of ``population`` values, from a sample of
    them, and a value to try next if they miss (or None).

    (-inf, -inf) when ``rank <= 0``: the k-th is a previously pruned -inf. Where the
    sample's own estimate equals a bound (heavy ties), the bracket is that one value. A
    bound held by many sample entries (a heavy tie outside the estimate) moves to the next
    distinct value, so that the tie is not gathered; that value is the one to try next.
    """
    if rank <= 0:
        return -math.inf, -math.inf, None
    sample = sample[:: max(1, sample.numel() // _BRACKET_SAMPLE)].sort().values  # NaN last
    m = sample.numel()
    if m == 0:
        return -math.inf, math.inf, None
    p = min(1.0, rank / population)
    at = min(m - 1, rank * m // population)
    margin = math.ceil(_BRACKET_SIGMAS * math.sqrt(m * p * (1.0 - p))) + _BRACKET_SLACK
    estimate = sample[at].item()
    if math.isnan(estimate):
        return math.inf, math.inf, None
    lo = sample[at - margin].item() if at - margin >= 0 else -math.inf
    hi = sample[at + margin].item() if at + margin < m else math.inf
    if math.isnan(hi):
        hi = math.inf
    if estimate in (lo, hi):
        return estimate, estimate, None
    heavy = max(2, m // _HEAVY_TIE)
    numbers = sample[: m - int(torch.count_nonzero(sample.isnan()))]  # searchsorted: no NaN
    retry = None
    if lo != -math.inf:
        first, last = _tie_block(numbers, lo)
        if last - first >= heavy:  # the block ends before the estimate (lo < estimate)
            lo, retry = numbers[last].item(), lo
    if hi != math.inf:
        first, last = _tie_block(numbers, hi)
        if last - first >= heavy:  # the block starts after the estimate
            hi, retry = numbers[first - 1].item(), hi
    return lo, hi, retry


def _tie_block(numbers: Tensor, value: float) -> tuple[int, int]:
    """Where ``value`` starts and ends in a sorted tensor of numbers (no NaN)."""
    at = torch.tensor(value, dtype=numbers.dtype, device=numbers.device)
    first = int(torch.searchsorted(numbers, at, side="left"))
    return first, int(torch.searchsorted(numbers, at, side="right"))


class _Inside(NamedTuple):
    """The entries inside a bracket ``lo < hi``: flat positions (per chunk, not joined, to
    spare a copy) and scores, in flat order."""

    positions: list[Tensor]
    scores: Tensor


def _classify(
    pieces: Iterable[Tensor], codes: Tensor, lo: float, hi: float, cap: int
) -> tuple[int, int, _Inside | None]:
    """One pass over the ranking: write each entry's code, count the entries below ``lo``
    and inside ``[lo, hi]``, and (``lo < hi``) gather those inside.

    With ``lo < hi`` the code is 1 below ``lo`` and 0 elsewhere, and the inside entries are
    gathered (None once there are more than ``cap``); with ``lo == hi`` it is 1 below,
    2 equal, 0 above or NaN, and nothing is gathered.
    """
    below = inside = 0
    gather = lo < hi
    positions: list[Tensor] = []
    scores: list[Tensor] = []
    start = 0
    flags: Tensor | None = None
    for piece in pieces:
        size = piece.numel()
        code = codes[start : start + size]
        if flags is None or flags.numel() < size:
            flags = torch.empty(size, dtype=torch.bool, device=piece.device)
        under = torch.lt(piece, lo, out=code.view(torch.bool))  # the code, where lo < hi
        upto = torch.le(piece, hi, out=flags[:size])
        here_below = int(torch.count_nonzero(under))
        below += here_below
        if lo == hi:
            here_upto = int(torch.count_nonzero(upto))
            inside += here_upto - here_below
            code.neg_().add_(upto.view(torch.uint8)).add_(upto.view(torch.uint8))  # 2up - un
        else:
            if gather:
                at = upto.logical_xor_(under).nonzero().flatten()  # lo <= score <= hi
                inside += at.numel()
                if inside > cap:
                    gather, positions, scores = False, [], []
                else:
                    scores.append(piece[at])
                    positions.append(at.add_(start))
            else:
                inside += int(torch.count_nonzero(upto)) - here_below
        start += size
        del piece, code, under, upto  # let the chunk go before the next is made
    if not gather:
        return below, inside, None
    if not positions:
        return below, inside, _Inside([], codes.new_empty(0))
    return below, inside, _Inside(positions, torch.cat(scores))


class _Plan(NamedTuple):
    """How to settle the codes: set the ``selected`` positions, or select the first
    ``needed`` entries of ``code`` (2: tied at the k-th value, 0: NaN) and those above it."""

    selected: Tensor | None = None
    code: int = 2
    needed: int = 0


def _plan(
    k: int,
    lo: float,
    hi: float,
    below: int,
    inside: int,
    gathered: _Inside | None,
    prev: Tensor | None = None,
) -> _Plan | None:
    """How to settle the codes, or None when the bracket cannot tell. ``prev``: False
    where entries were pruned before (their scores are -inf); at a -inf threshold they are
    the first of the ties."""
    if k <= below:
        return None
    if k <= below + inside:
        needed = k - below
        if lo == hi:
            return _Plan(needed=needed)
        if gathered is None:
            return None
        scores = gathered.scores
        threshold = _kth_smallest_value(scores, needed)
        take = scores < threshold
        ties = scores == threshold
        if prev is not None and threshold == -math.inf:  # pruned before: first, then by position
            take = flat_take(prev, torch.cat(gathered.positions)).logical_not_()
            ties.logical_and_(take.logical_not())
        tied = torch.nonzero(ties).flatten()
        take[tied[: max(0, needed - int(torch.count_nonzero(take)))]] = True
        chosen, offset = [], 0
        for at in gathered.positions:
            chosen.append(at[take[offset : offset + at.numel()]])
            offset += at.numel()
        return _Plan(selected=torch.cat(chosen))
    if hi == math.inf and lo == hi:
        return _Plan(code=0, needed=k - below - inside)
    return None


def _select_chunked(
    pieces: _Pieces,
    bounds: list[tuple[int, int]],
    like: Tensor,
    k: int,
    prev: Tensor | None,
    sample: Tensor | None,
    *,
    keep: bool,
) -> Tensor:
    """The ``k`` lowest-ranked of the ranking that ``pieces`` yields (``0 < k < numel``),
    as a bool tensor of ``like``'s shape: True at them, or with ``keep`` False at them and
    where ``prev`` is False. ``sample``: a sample of the ranking where ``prev`` keeps; None:
    the first chunk is the sample (for a stream whose entries are alike everywhere)."""
    n = like.numel()
    codes = torch.empty(n, dtype=torch.uint8, device=like.device)
    prev_pruned = 0 if prev is None else n - int(torch.count_nonzero(prev))
    stream = pieces()
    first = next(stream)
    if sample is None:
        sample = first if prev is None else first[flat_piece(prev, *bounds[0])]
    lo, hi, retry = _bracket(sample, k - prev_pruned, n - prev_pruned)
    del sample
    cap = max(n // _GATHER_FRACTION, _GATHER_MIN)
    chained = _chain([first], stream)
    del first  # the chain holds the first chunk only until it is classified
    below, inside, gathered = _classify(chained, codes, lo, hi, cap)
    del chained, stream
    plan = _plan(k, lo, hi, below, inside, gathered, prev)
    del gathered
    if plan is None and hi == math.inf and k > below + inside:
        retry = math.inf  # past every number: the k-th is a NaN
    if plan is None and retry is not None:  # the k-th may be the value to try next
        lo = hi = retry
        below, inside, _ = _classify(pieces(), codes, lo, hi, 0)
        plan = _plan(k, lo, hi, below, inside, None)
    if plan is None:
        threshold = _radix_kth(pieces, k, like.dtype)
        lo = hi = math.inf if math.isnan(threshold) else threshold
        below, inside, _ = _classify(pieces(), codes, lo, hi, 0)
        plan = _plan(k, lo, hi, below, inside, None)
        if plan is None:  # unreachable: the bracket is the k-th value itself
            raise RuntimeError("funcsparse._select: the exact threshold missed the k-th entry")
    if prev is not None and plan.selected is None and plan.code == 2 and lo == -math.inf:
        # The k-th is -inf (lo == hi): the entries pruned before, all -inf (code 2), rank
        # before every real -inf. Select them all first, then real -infs by position.
        for start, stop in bounds:
            codes[start:stop].masked_fill_(flat_piece(prev, start, stop).logical_not(), 1)
        plan = plan._replace(needed=max(0, plan.needed - prev_pruned))
    _settle(codes, bounds, plan)
    selected = codes.view(torch.bool)
    if keep:
        selected.logical_not_()
        if prev is not None:
            for start, stop in bounds:
                selected[start:stop].logical_and_(flat_piece(prev, start, stop))
    return selected.view(like.shape)


def _chain(first: list[Tensor], rest: Iterator[Tensor]) -> Iterator[Tensor]:
    """``first``'s one tensor, then ``rest``; the tensor is let go once yielded."""
    yield first.pop()
    yield from rest


def _settle(codes: Tensor, bounds: list[tuple[int, int]], plan: _Plan) -> None:
    """Turn the codes into the selection (0/1, in place)."""
    if plan.selected is not None:
        codes[plan.selected] = 1
        return
    remaining = plan.needed
    for start, stop in bounds:
        chunk = codes[start:stop]
        at = (chunk >> 1).view(torch.bool)  # code 2
        if plan.code == 0:  # the k-th is a NaN: all ties (+inf) selected, NaNs by position
            chunk.masked_fill_(at, 1)
            at = chunk == 0
        here = int(torch.count_nonzero(at))
        if not here:
            continue
        if here <= remaining:
            chunk.masked_fill_(at, 1)
            remaining -= here
        elif not remaining:
            chunk.masked_fill_(at, 0)
        else:
            where = at.nonzero().flatten()
            chunk[where[:remaining]] = 1
            chunk[where[remaining:]] = 0
            remaining = 0


def order_keys(piece: Tensor) -> Tensor:
    """int64 keys ordered as funcsparse ranks ``piece`` (``-0.0 == 0.0``, NaN largest),
    with the sign bit flipped, so that their bits compare as unsigned numbers.

    Floating values of any dtype map to the keys of their exact float64 values, so keys of
    tensors of different dtypes compare as the values do. ``keys ^ (-2**63)`` compares as
    signed int64 in the same order.

    Examples:
        >>> keys = order_keys(torch.tensor([1.0, -0.0, 0.0, -2.0, float("nan")]))
        >>> (keys ^ (-2**63)).argsort(stable=True).tolist()
        [3, 1, 2, 0, 4]
    """
    if not piece.is_floating_point():
        keys = piece.to(torch.int64)
    else:
        bits = piece.to(torch.float64).add_(0.0).view(torch.int64)  # -0.0 + 0.0 is +0.0
        keys = torch.where(bits < 0, bits ^ _INT64_MAX, bits)
        keys.masked_fill_(piece.isnan(), _INT64_MAX)
    return keys ^ _INT64_MIN


def _radix_kth(pieces: _Pieces, k: int, dtype: torch.dtype) -> float:
    """The k-th smallest value of the ranking, exactly, by ``64 / _RADIX_BITS`` counting
    passes over its order keys (a digit each); NaN if the k-th is a NaN."""
    radix = 1 << _RADIX_BITS
    prefix = 0  # the digits found so far, as an unsigned number
    rank = k
    for level in range(64 // _RADIX_BITS):
        shift = 64 - _RADIX_BITS * (level + 1)
        width = 64 - shift - _RADIX_BITS  # bits in ``prefix``
        # ``prefix`` as the arithmetic shift of an int64 shows it.
        signed = prefix - (1 << width) if width and prefix >> (width - 1) else prefix
        histogram: Tensor | None = None
        for piece in pieces():
            keys = order_keys(piece)
            if width:
                keys = keys[(keys >> (shift + _RADIX_BITS)) == signed]
            counts = torch.bincount((keys >> shift) & (radix - 1), minlength=radix)
            histogram = counts if histogram is None else histogram.add_(counts)
        if histogram is None:  # unreachable: the ranking has entries
            raise RuntimeError("funcsparse._select: an empty ranking has no k-th entry")
        cumulative = histogram.cumsum(0)
        digit = int(torch.searchsorted(cumulative, rank))
        rank -= int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << _RADIX_BITS) | digit
    key = prefix ^ (1 << 63)
    key = key - (1 << 64) if key >> 63 else key  # as a signed int64
    if dtype not in _FLOATS:
        return key  # an integer ranking: compared as an int, exactly
    if key == _INT64_MAX:
        return math.nan
    bits = key ^ _INT64_MAX if key < 0 else key
    value: float = struct.unpack("<d", struct.pack("<q", bits))[0]
    return value


def rank_pruned_first(scores: Tensor, kept: Tensor) -> Tensor:
    """A ranking of ``scores`` in which the entries ``kept`` prunes come before all others.

    Entries pruned before rank below every score, ``-inf`` included; the others rank as
    ``scores`` do (ties by position, NaN last), so a per-group selector that takes the ``k``
    lowest takes previous zeros first. Where no kept entry scores ``-inf`` (checked on
    plain eager tensors) the result is ``scores`` with ``-inf`` at the pruned entries;
    otherwise int64 keys that order as ``scores`` do, with the smallest key at the pruned
    entries (a real ``-inf`` would otherwise tie with them).

    Examples:
        >>> scores = torch.tensor([-math.inf, -math.inf, 0.0, 5.0])
        >>> kept = torch.tensor([True, False, True, True])
        >>> smallest_k_per_group(rank_pruned_first(scores, kept), 1)
        tensor([False,  True, False, False])

    Args:
        scores: floating tensor.
        kept: bool tensor of ``scores``' shape, False at the entries pruned before.

    Returns:
        A tensor of ``scores``' shape: ``scores``' dtype, or int64 keys.
    """
    plain = is_plain(scores) and is_plain(kept)
    if plain and not bool(torch.isneginf(scores).logical_and_(kept).any()):
        return torch.where(kept, scores, torch.full_like(scores, -math.inf))
    keys = order_keys(scores) ^ _INT64_MIN  # signed keys: ordered as the scores
    return keys.masked_fill(kept.logical_not(), _INT64_MIN)


def smallest_k_per_group(groups: Tensor, k: int, *, valid: Tensor | None = None) -> Tensor:
    """Select the ``k`` lowest-ranked entries of every group along the last dimension.

    Args:
        groups: real tensor ``(..., group_size)``; may be a strided view.
        k: entries to select per group.
        valid: optional bool tensor broadcastable to ``groups``. Invalid entries (padding)
            are never selected and do not take a rank, so a group with fewer than ``k``
            valid entries selects all of them. Default: every entry is valid.

    Returns:
        A contiguous ``torch.bool`` tensor of ``groups``' shape.

    Raises:
        TypeError: ``groups`` is not a real tensor, ``k`` not an int, or ``valid`` not a
            bool tensor.
        ValueError: ``groups`` is 0-d, or ``valid`` does not broadcast to it.

    Examples:
        >>> smallest_k_per_group(torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]]), 2)
        tensor([[False,  True, False,  True],
                [ True,  True, False, False]])
    """
    owner = "smallest_k_per_group"
    _check_scores(owner, "groups", groups)
    k = require_int(owner, "k", k)
    if groups.dim() == 0:
        raise ValueError(f"{owner}: groups is 0-d; it needs a last dimension of groups")
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
            raise TypeError(f"{owner}: valid must be a bool tensor, got {describe(valid)}")
        if not _broadcasts(valid.shape, groups.shape):
            raise ValueError(
                f"{owner}: valid of shape {tuple(valid.shape)} does not broadcast to groups of "
                f"shape {tuple(groups.shape)}"
            )
    size = groups.shape[-1]
    if k <= 0:
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    if k >= size:
        everything = torch.ones(groups.shape, dtype=torch.bool, device=groups.device)
        return everything if valid is None else everything & valid
    if valid is None and size <= _PAIRWISE_MAX:
        if is_plain(groups) and groups.is_floating_point():
            selected = _per_group_by_threshold(groups, k)
            if selected is not None:
                return selected
        return _per_group_pairwise(groups, k)
    return _per_group_sorted(groups, k, valid)


def _broadcasts(shape: torch.Size, to: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``to`` (without changing ``to``)."""
    if len(shape) > len(to):
        return False
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(to), strict=False))


def _sorting_network(size: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort comparators for ``size`` inputs (``i < j`` pairs)."""

    def merge(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
        double = step * 2
        if double >= hi - lo:
            return [(lo, lo + step)]
        pairs = merge(lo, hi, double) + merge(lo + step, hi, double)
        return pairs + [(i, i + step) for i in range(lo + step, hi - step, double)]

    def sort(lo: int, hi: int) -> list[tuple[int, int]]:
        if hi <= lo:
            return []
        mid = lo + (hi - lo) // 2
        return sort(lo, mid) + sort(mid + 1, hi) + merge(lo, hi, 1)

    padded = 1 << max(0, (size - 1).bit_length())
    # Inputs past ``size`` act as +inf: their comparators never swap and are dropped.
    return [(i, j) for i, j in sort(0, padded - 1) if j < size]


def _selection_network(size: int, outputs: frozenset[int]) -> list[tuple[int, int, bool, bool]]:
    """The comparators of the sorting network that the sorted ``outputs`` depend on.

    Each entry is ``(i, j, min_needed, max_needed)``: after it, wire ``i`` holds the minimum
    (if needed later) and wire ``j`` the maximum (if needed later).
    """
    needed = set(outputs)
    plan: list[tuple[int, int, bool, bool]] = []
    for i, j in reversed(_sorting_network(size)):
        if i in needed or j in needed:
            plan.append((i, j, i in needed, j in needed))
            needed.update((i, j))
    return plan[::-1]


def _per_group_by_threshold(groups: Tensor, k: int) -> Tensor | None:
    """Eager shortcut: each group's k-th and (k+1)-th smallest by a sorting network.

    Where the k-th smallest is strictly below the (k+1)-th in every group, ``<=`` the k-th
    selects exactly the k lowest-ranked entries. Otherwise (a tie across the threshold, or a
    NaN) it returns None and the caller ranks exactly.
    """
    wires: list[Tensor | None] = list(groups.unbind(-1))
    for i, j, min_needed, max_needed in _selection_network(len(wires), frozenset((k - 1, k))):
        a, b = wires[i], wires[j]
        if a is None or b is None:  # unreachable: the plan only reads wires it computed
            return None
        if min_needed:
            wires[i] = torch.minimum(a, b)
        if max_needed:
            wires[j] = torch.maximum(a, b)
    kth, next_one = wires[k - 1], wires[k]
    if kth is None or next_one is None or not bool((kth < next_one).all()):
        return None
    return groups <= kth.unsqueeze(-1)


def _per_group_pairwise(groups: Tensor, k: int) -> Tensor:
    """Rank each entry by counting the group members that rank below it (small groups)."""
    columns = groups.unbind(-1)
    check_nan = groups.is_floating_point() and (not is_plain(groups) or bool(groups.isnan().any()))
    nans = [column.isnan() for column in columns] if check_nan else []
    ranks: list[Tensor | None] = [None] * len(columns)

    def add(index: int, vote: Tensor) -> None:
        current = ranks[index]
        ranks[index] = vote.to(torch.uint8) if current is None else current + vote

    for i in range(1, len(columns)):
        for j in range(i):
            # j (the lower index) ranks below i unless its score is larger, NaN largest.
            j_below_i = columns[j] <= columns[i]
            if check_nan:
                j_below_i = j_below_i | nans[i]
            add(i, j_below_i)
            add(j, ~j_below_i)
    return torch.stack([rank < k for rank in ranks if rank is not None], dim=-1)


def _per_group_sorted(groups: Tensor, k: int, valid: Tensor | None) -> Tensor:
    """Rank by a stable sort; with padding, ranks count valid entries only."""
    order = torch.sort(groups, dim=-1, stable=True).indices
    if valid is None:
        rank = torch.arange(groups.shape[-1], device=groups.device).expand(order.shape)
        selected_sorted = rank < k
    else:
        valid_sorted = valid.expand(groups.shape).gather(-1, order)
        selected_sorted = valid_sorted & (valid_sorted.cumsum(dim=-1) <= k)
    return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device).scatter(
        -1, order, selected_sorted
    )
