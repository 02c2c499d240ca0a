"""GlobalMagnitude: prune the entries of lowest ``|w|`` across many tensors, with one threshold.

The selection never concatenates the tensors. A strided sample of the (virtual)
concatenation brackets the global k-th smallest score; one pass over the tensors then
counts the scores below the bracket, keeps ``|w| < lo`` as each tensor's mask in the making
and gathers the few scores inside the bracket (with their positions), among which the k-th
is found; the masks are completed from those. Where the bracket misses (structured data),
holds too many scores (heavy ties) or the k-th is a NaN, the threshold is found exactly by
counting passes around sampled pivots, and the masks are built in a second pass.
Temporaries are per tensor (one tensor's ``|w|`` and a few bool masks at a time), plus the
gathered scores: at most ``max(total / 32, 65536)`` of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._select import flat_piece, flat_take, kth_smallest_value
from funcsparse.methods._base import GlobalMethod, LeafProblem, describe
from funcsparse.methods._level import count_to_prune, level_configs, set_level

__all__ = ["GlobalMagnitude"]

# Entries drawn to bracket the threshold, and the bracket's half-width: _SAMPLE_SIGMAS
# standard deviations of the sample quantile's position, plus _SAMPLE_SLACK entries. A sample
# of 65536 brackets about 1.4% of the scores at sparsity=0.5.
_SAMPLE_SIZE = 1 << 16
_SAMPLE_SIGMAS = 3.5
_SAMPLE_SLACK = 8
# Entries inside a bracket are gathered (and the k-th found among them) when there are at
# most max(total // _GATHER_FRACTION, _GATHER_MIN) of them; otherwise the bracket narrows.
_GATHER_FRACTION = 32
_GATHER_MIN = 1 << 16
# Entries of one tensor whose scores are computed at a time (and chunk length when locating
# the n-th tied entry, which bounds nonzero's int64s).
_CHUNK = 1 << 20
_TIE_CHUNK = 1 << 20
# Size and seed of the random samples that narrow a failed bracket, one counting pass per
# round (they change the speed, not the result).
_NARROW_SAMPLE_SIZE = 1 << 13
_NARROW_SEED = 0x5EED


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlobalMagnitude(GlobalMethod):
    """Zero the entries of lowest ``|w|`` across all the tensors of a rule, with one threshold.

    ``fs.compute_masks`` hands a global method every leaf its rule matches at once (in the
    params' flattening order, the *group*); ``round(sparsity * total)`` entries (or ``count``) of
    lowest ``|w|`` over the whole group are pruned, with one threshold, so a layer of small
    weights loses more than a layer of large ones. Called on one tensor, it prunes within
    that tensor. On tie-free inputs the masks equal
    ``torch.nn.utils.prune.global_unstructured(params, prune.L1Unstructured, amount=a)``
    bit for bit.

    The level is ``sparsity``, a fraction of the group's entries (``round(sparsity * total)``,
    Python's round-half-to-even, as ``torch.nn.utils.prune`` counts), or ``count``.
    Exactly that many entries are pruned, whatever the ties. Ties across tensors follow one
    order: equal scores are pruned first in the tensor that comes first in the group, and
    within a tensor in row-major order (the lower flat index first). NaN counts as the
    largest score, so NaN weights are kept unless the level reaches them.

    Unlike ``prune.global_unstructured``, no concatenated copy of the weights (or scores)
    is made: peak extra memory is the bool masks it returns, one tensor's ``|w|`` and a
    few of its bool temporaries, and at most ``max(total / 32, 65536)`` gathered scores.

    Keyword data per tensor (``fs.compute_masks`` pytrees of the same name):

    * ``scores``: importance scores of the tensor's shape, ranked as given (signed: the
      lowest is pruned first) instead of ``|w|``. ``global_unstructured``'s
      ``importance_scores=s`` ranks ``|s|``: pass ``s.abs()`` for its masks.
    * ``prev_mask``: the mask of an earlier round (``compute_masks(..., prev_masks=...)``).
      A weight pruned before stays pruned, and the level is the *total* target over the
      group: previously pruned entries rank below every other entry, then the lowest are
      pruned up to the level. Where more entries were pruned before than it asks for, the
      masks are the previous ones.

    Raising the level never un-prunes an entry (the masks nest).

    Examples:
        >>> import torch, funcsparse as fs
        >>> from funcsparse.methods.global_magnitude import GlobalMagnitude
        >>> params = {
        ...     "a.weight": torch.tensor([[0.5, -2.0], [0.1, 3.0]]),
        ...     "b.weight": torch.tensor([[-0.3, 0.2, 4.0]]),
        ... }
        >>> masks = fs.compute_masks(params, {"*.weight": GlobalMagnitude(count=3)})
        >>> masks["a.weight"]
        tensor([[ True,  True],
                [False,  True]])
        >>> masks["b.weight"]
        tensor([[False, False,  True]])
        >>> GlobalMagnitude(0.5)(params["a.weight"])  # one tensor: within it
        tensor([[False,  True],
                [False,  True]])

    Args:
        sparsity: the fraction of the group's entries to prune, in ``[0, 1]``; may be
            given positionally. Give it or ``count``.
        count: the number of entries to prune across the group, an int ``>= 0``. Give it
            or ``sparsity``.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count``, or one of the wrong type
            (bools are refused); on a call, a
            tensor that is not floating-point, or ``scores`` that are not floating.
        ValueError: ``sparsity`` outside ``[0, 1]`` (or NaN), or a negative ``count``; on a
            call, a ``count`` above the group's number of entries (``compute_masks``
            names the rule), or ``scores`` / ``prev_mask`` of another shape than the tensor.

    References:
        Han, Pool, Tran and Dally, "Learning both Weights and Connections for Efficient
        Neural Networks", NeurIPS 2015 (arXiv:1506.02626); Frankle and Carbin, "The Lottery
        Ticket Hypothesis", ICLR 2019 (arXiv:1803.03635), for global magnitude pruning;
        ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})
    uses_prev_mask: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        set_level(self)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid GlobalMagnitude configs: fractions (edges included) and the count 0.

        Counts above 0 are left out: they raise on tensors (or groups) with fewer entries,
        which the shared suite draws (empty tensors included).
        """
        return level_configs(st, cls, max_count=0)

    def group_problem(self, tensors: Sequence[Tensor]) -> LeafProblem | None:
        """One device for the group, and a ``count`` no larger than its entries."""
        problem = super().group_problem(tensors)
        if problem is not None:
            return problem
        total = sum(t.numel() for t in tensors)
        if self.count is not None and self.count > total:
            return LeafProblem(
                ValueError,
                f"count={self.count} for {total} entries",
                "count is more than there are",
            )
        return None

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "GlobalMagnitude needs a floating-point tensor"
            )
        return None

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The exact zeros of a single-tensor call (see :meth:`expected_global_zeros`)."""
        return self.expected_global_zeros([tensor], [data])

    def expected_global_zeros(
        self, tensors: Sequence[Tensor], data: Sequence[dict[str, Any]]
    ) -> int | None:
        """The level's count over the group, or the previous zeros where there are more."""
        total = sum(t.numel() for t in tensors)
        k = count_to_prune("GlobalMagnitude", self.sparsity, self.count, total)
        previous = sum(int((~d["prev_mask"]).sum()) for d in data if d.get("prev_mask") is not None)
        return max(k, previous)

    def _global_masks(self, tensors: list[Tensor], data: list[dict[str, Any]]) -> list[Tensor]:
        group = _Group(tensors, data)
        k = count_to_prune("GlobalMagnitude", self.sparsity, self.count, group.total)
        k = max(k, group.previously_pruned)
        if k <= 0:
            return [torch.ones(t.shape, dtype=torch.bool, device=t.device) for t in tensors]
        if k >= group.total:
            return [torch.zeros(t.shape, dtype=torch.bool, device=t.device) for t in tensors]
        if k == group.previously_pruned:
            return [p.clone() for p in group.prev_masks()]
        return _select(group, k)


def _in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` converted to ``dtype``: itself, or a neighbour in ``dtype`` (or +-inf)."""
    if dtype == torch.float64 or math.isinf(value):
        return value
    return float(torch.tensor(value, dtype=torch.float64).to(dtype).item())


def _lt(a: Tensor, t: float, *, out: Tensor | None = None) -> Tensor:
    """``a < t`` exactly, for a real ``t`` that ``a``'s dtype may not represent."""
    near = _in_dtype(t, a.dtype)
    return torch.lt(a, near, out=out) if near >= t else torch.le(a, near, out=out)


def _le(a: Tensor, t: float, *, out: Tensor | None = None) -> Tensor:
    """``a <= t`` exactly."""
    near = _in_dtype(t, a.dtype)
    return torch.le(a, near, out=out) if near <= t else torch.lt(a, near, out=out)


def _gt(a: Tensor, t: float) -> Tensor:
    """``a > t`` exactly."""
    near = _in_dtype(t, a.dtype)
    return a > near if near <= t else a >= near


def _ge(a: Tensor, t: float) -> Tensor:
    """``a >= t`` exactly."""
    near = _in_dtype(t, a.dtype)
    return a >= near if near >= t else a > near


def _eq(a: Tensor, t: float) -> Tensor:
    """``a == t`` exactly (NaN ``t``: the NaN entries)."""
    if math.isnan(t):
        return a.isnan()
    near = _in_dtype(t, a.dtype)
    return a == near if near == t else torch.zeros(a.shape, dtype=torch.bool, device=a.device)


@dataclasses.dataclass(frozen=True)
class _Region:
    """The non-NaN scores between two bounds (None: unbounded), each open or closed."""

    lo: float | None = None
    lo_open: bool = False
    hi: float | None = None
    hi_open: bool = False

    def lower(self, a: Tensor) -> Tensor | None:
        """Where ``a`` is above the lower bound (None: no lower bound)."""
        if self.lo is None:
            return None
        return _gt(a, self.lo) if self.lo_open else _ge(a, self.lo)

    def contains(self, a: Tensor) -> Tensor:
        """Where ``a`` lies in the region (NaN never does)."""
        if self.hi is None:
            inside = _le(a, math.inf)
        else:
            inside = _lt(a, self.hi) if self.hi_open else _le(a, self.hi)
        lower = self.lower(a)
        return inside if lower is None else inside.logical_and_(lower)


@dataclasses.dataclass(frozen=True)
class _Threshold:
    """The k-th smallest score ``value`` (NaN: a NaN), how many valid scores lie strictly
    below it, and how many entries of each tensor equal it."""

    value: float
    below: int
    equal: list[int]


class _Group:
    """The scores of a group: ``|x|`` (or ``scores`` as given), -inf where previously pruned.

    Scores are computed chunk by chunk (at most ``_CHUNK`` entries, or one row of a
    non-contiguous tensor, at a time) into a reused buffer, so no pass holds more than one
    chunk's scores.
    """

    def __init__(self, tensors: list[Tensor], data: list[dict[str, Any]]) -> None:
        self.shapes = [t.shape for t in tensors]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        self._sources: list[Tensor] = [
            d.get("scores", t) for t, d in zip(tensors, data, strict=True)
        ]
        self._signed = ["scores" in d for d in data]  # given scores rank as they are
        self._prev: list[Tensor | None] = [d.get("prev_mask") for d in data]
        self.sizes = [s.numel() for s in self._sources]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.total = self.offsets[-1]
        self.previously_pruned = sum(
            p.numel() - int(torch.count_nonzero(p)) for p in self._prev if p is not None
        )
        self._buffers: dict[torch.dtype, Tensor] = {}

    def prev_masks(self) -> list[Tensor]:
        """Each tensor's previous mask (all True where there is none)."""
        return [
            torch.ones(shape, dtype=torch.bool, device=self.device) if p is None else p
            for p, shape in zip(self._prev, self.shapes, strict=True)
        ]

    def chunks(self, i: int) -> Iterator[tuple[int, Tensor]]:
        """``(start, scores)`` of tensor ``i``'s consecutive flat entries, in row-major order;
        ``scores`` lives in a buffer that the next chunk overwrites."""
        source, prev = self._sources[i], self._prev[i]
        for start, stop in _chunk_bounds(source, prev):
            piece = flat_piece(source, start, stop)
            buffer = self._buffers.get(piece.dtype)
            if buffer is None or buffer.numel() < piece.numel():
                buffer = torch.empty(piece.numel(), dtype=piece.dtype, device=piece.device)
                self._buffers[piece.dtype] = buffer
            out = buffer[: piece.numel()]
            scores = out.copy_(piece) if self._signed[i] else torch.abs(piece, out=out)
            if prev is not None:
                scores.masked_fill_(flat_piece(prev, start, stop).logical_not(), -math.inf)
            yield start, scores

    def sample_at(self, i: int, index: Tensor) -> Tensor:
        """Scores of tensor ``i`` at the flat positions ``index`` (computed for those only)."""
        values = flat_take(self._sources[i], index)
        values = values.clone() if self._signed[i] else values.abs()
        prev = self._prev[i]
        if prev is not None:
            values.masked_fill_(flat_take(prev, index).logical_not(), -math.inf)
        return values

    def count(self, *predicates: Callable[[Tensor], Tensor]) -> list[list[int]]:
        """Per predicate, how many entries of each tensor it holds for (one pass)."""
        counts: list[list[int]] = [[0] * len(self.sizes) for _ in predicates]
        for i in range(len(self.sizes)):
            for _, scores in self.chunks(i):
                for row, predicate in zip(counts, predicates, strict=True):
                    row[i] += int(torch.count_nonzero(predicate(scores)))
        return counts

    def gather(self, region: _Region) -> list[Tensor]:
        """Each tensor's scores inside ``region``."""
        gathered = []
        for i in range(len(self.sizes)):
            pieces = [scores.masked_select(region.contains(scores)) for _, scores in self.chunks(i)]
            gathered.append(torch.cat(pieces) if pieces else self._sources[i].new_empty(0))
        return gathered

    def masks(self, k: int, threshold: _Threshold) -> list[Tensor]:
        """The masks that prune the k lowest-ranked entries, given the k-th score."""
        value = threshold.value
        if value == -math.inf and self.previously_pruned:
            return self.masks_at_neg_inf(k)
        needed = k - threshold.below  # ties at the threshold to prune, in group order
        masks = []
        for i, shape in enumerate(self.shapes):
            pruned = torch.empty(self.sizes[i], dtype=torch.bool, device=self.device)
            tied = min(needed, threshold.equal[i])
            needed -= tied
            some_ties = 0 < tied < threshold.equal[i] or (math.isnan(value) and tied > 0)
            for start, scores in self.chunks(i):
                out = pruned[start : start + scores.numel()]
                if math.isnan(value):
                    torch.eq(scores, scores, out=out)  # every non-NaN score
                elif tied and tied == threshold.equal[i]:
                    _le(scores, value, out=out)
                else:
                    _lt(scores, value, out=out)
                if some_ties and tied:
                    equal = _eq(scores, value)
                    here = min(tied, int(torch.count_nonzero(equal)))
                    if here:
                        out.logical_or_(_first_true(equal, here))
                        tied -= here
            masks.append(pruned.logical_not_().view(shape))
        return masks

    def masks_at_neg_inf(self, k: int, buffers: list[Tensor] | None = None) -> list[Tensor]:
        """The masks where the k-th score is -inf and ``k`` is more than the entries pruned
        before: those entries (-inf in the scores) rank before every real -inf score, so
        all of them are pruned, then the first ``k - previously_pruned`` real -inf scores in
        group order. ``buffers``: bool tensors, one per tensor of its size, to write into."""
        needed = k - self.previously_pruned
        masks = []
        for i, shape in enumerate(self.shapes):
            pruned = (
                torch.empty(self.sizes[i], dtype=torch.bool, device=self.device)
                if buffers is None
                else buffers[i]
            )
            prev = self._prev[i]
            for start, scores in self.chunks(i):
                out = torch.eq(scores, -math.inf, out=pruned[start : start + scores.numel()])
                real = (
                    out.clone()
                    if prev is None
                    else out.logical_and(flat_piece(prev, start, stop=start + scores.numel()))
                )
                here = int(torch.count_nonzero(real))
                if here > needed:  # keep the first ``needed`` real -inf scores only
                    out.logical_xor_(real).logical_or_(_first_true(real, needed))
                needed -= min(here, needed)
            masks.append(pruned.logical_not_().view(shape))
        return masks


def _chunk_bounds(tensor: Tensor, other: Tensor | None) -> list[tuple[int, int]]:
    """Flat ``[start, stop)`` ranges that cover ``tensor`` (and ``other``, of its shape) in
    order: ``_CHUNK`` entries each, or whole rows where either tensor is not contiguous."""
    n = tensor.numel()
    contiguous = tensor.is_contiguous() and (other is None or other.is_contiguous())
    if contiguous or tensor.dim() == 0:
        step = _CHUNK
    else:
        row = n // tensor.shape[0]
        step = row * max(1, _CHUNK // row)
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _first_true(flags: Tensor, count: int) -> Tensor:
    """``flags`` (1-D bool, modified in place) with all but its first ``count`` Trues cleared."""
    for start in range(0, flags.numel(), _TIE_CHUNK):
        chunk = flags[start : start + _TIE_CHUNK]
        here = int(torch.count_nonzero(chunk))
        if here < count:
            count -= here
            continue
        if count == 0:
            flags[start:] = False
        else:
            cut = start + int(chunk.nonzero()[count - 1, 0]) + 1
            flags[cut:] = False
        break
    return flags


def _bracket(rank: int, population: int, sample_size: int) -> tuple[int, int]:
    """0-based positions in a sorted sample of ``sample_size`` that bracket the ``rank``-th of
    ``population`` (about 3.5 standard deviations of a sample quantile on each side)."""
    at = rank * sample_size / population
    p = min(1.0, rank / population)
    margin = math.ceil(_SAMPLE_SIGMAS * math.sqrt(sample_size * p * (1 - p))) + _SAMPLE_SLACK
    return math.floor(at) - margin, math.ceil(at) + margin


def _sample_value(sample: Tensor, at: int) -> float | None:
    """The ``at``-th smallest (0-based) of a 1-D sample, NaN largest; None for a NaN."""
    value = float(sample.kthvalue(at + 1).values.item())
    return None if math.isnan(value) else value


def _select(group: _Group, k: int) -> list[Tensor]:
    """The masks that prune the group's k lowest-ranked entries (``1 <= k < total``).

    Fast path, one pass: a strided sample brackets the k-th score in ``[lo, hi]``; each
    tensor's ``|x| < lo`` becomes its output mask in the making, and the positions and
    scores in ``[lo, hi]`` (few) are gathered. The k-th score among them fixes the rest.
    Where the bracket misses (structured data), holds too many entries (ties), or the k-th
    is a NaN, the threshold is found exactly by counting passes and the masks are built in
    a second pass.
    """
    cap = max(group.total // _GATHER_FRACTION, _GATHER_MIN)
    stride = max(1, group.total // _SAMPLE_SIZE)
    sample = _cat(
        [
            group.sample_at(i, torch.arange(min((-offset) % stride, size), size, stride))
            for i, (offset, size) in enumerate(zip(group.offsets[:-1], group.sizes, strict=True))
        ],
        group.device,
    )
    lo_at, hi_at = _bracket(k, group.total, sample.numel())
    lo = _sample_value(sample, lo_at) if lo_at > 0 else None
    hi = _sample_value(sample, hi_at) if hi_at < sample.numel() - 1 else None
    del sample

    below = [0] * len(group.sizes)
    inside = [0] * len(group.sizes)
    partial: list[Tensor] | None = []  # per tensor: |x| < lo, the mask in the making
    positions: list[Tensor] = []
    scores: list[Tensor] = []
    for i, size in enumerate(group.sizes):
        mask = None  # |x| < lo, written chunk by chunk; None once gathering has stopped
        if partial is not None:
            fill = torch.zeros if lo is None else torch.empty
            mask = fill(size, dtype=torch.bool, device=group.device)
        at_pieces: list[Tensor] = []
        score_pieces: list[Tensor] = []
        for start, a in group.chunks(i):
            if lo is None:
                under = None
            else:
                out = None if mask is None else mask[start : start + a.numel()]
                under = _lt(a, lo, out=out)
                below[i] += int(torch.count_nonzero(under))
            held = _le(a, math.inf if hi is None else hi)
            if under is not None:
                held.logical_xor_(under)  # lo <= |x| <= hi (under is a subset of held)
            inside[i] += int(torch.count_nonzero(held))
            if mask is not None and sum(inside) <= cap:
                at = held.nonzero().squeeze(1)
                score_pieces.append(a[at])
                at_pieces.append(at + start)
            else:  # too many to gather: this pass only counts
                mask = None
            del under, held
        if partial is not None and mask is not None:
            partial.append(mask)
            if not at_pieces:  # an empty tensor
                at_pieces.append(torch.zeros(0, dtype=torch.int64, device=group.device))
                score_pieces.append(group.sample_at(i, at_pieces[0]))
            positions.append(torch.cat(at_pieces))
            scores.append(torch.cat(score_pieces))
        else:
            partial = None
            positions, scores = [], []
    n_below, n_inside = sum(below), sum(inside)
    if partial is not None and n_below < k <= n_below + n_inside:
        return _finish(group, k, n_below, partial, positions, scores)
    partial = None
    positions, scores = [], []

    if n_below < k <= n_below + n_inside:
        if lo is not None and lo == hi:  # the bracket is one value (ties): it is the k-th
            threshold = _Threshold(lo, n_below, inside)
        else:
            threshold = _narrow(group, k, _Region(lo=lo, hi=hi), n_below, n_inside, cap)
    elif k <= n_below:
        threshold = _narrow(group, k, _Region(hi=lo, hi_open=True), 0, n_below, cap)
    elif hi is None:  # k is past every non-NaN score: the threshold is a NaN
        nans = [n - b - h for n, b, h in zip(group.sizes, below, inside, strict=True)]
        threshold = _nan_threshold(group, nans)
    else:
        above = _Region(lo=hi, lo_open=True)
        (count,) = group.count(above.contains)
        threshold = _narrow(group, k, above, n_below + n_inside, sum(count), cap)
    return group.masks(k, threshold)


def _finish(
    group: _Group,
    k: int,
    base: int,
    partial: list[Tensor],
    positions: list[Tensor],
    scores: list[Tensor],
) -> list[Tensor]:
    """Complete the one-pass masks from the gathered scores of the bracket.

    ``partial[i]`` marks tensor i's entries below the bracket (``base`` in all); the k-th
    score is among ``scores`` (at flat ``positions``), and ties at it are pruned in group
    order, positions ascending.
    """
    joined = _cat(scores, group.device)
    value = kth_smallest_value(joined, k - base)
    if value == -math.inf and group.previously_pruned:
        return group.masks_at_neg_inf(k, partial)
    needed = k - base - int(torch.count_nonzero(_lt(joined, value)))
    del joined
    masks = []
    for mask, at, score, shape in zip(partial, positions, scores, group.shapes, strict=True):
        take = _lt(score, value)
        if needed > 0:
            tied = _eq(score, value)
            count = int(torch.count_nonzero(tied))
            if count:
                tied = _first_true(tied, min(needed, count))
                needed -= min(needed, count)
                take.logical_or_(tied)
        mask[at[take]] = True
        masks.append(mask.logical_not_().view(shape))
    return masks


def _cat(pieces: list[Tensor], device: torch.device) -> Tensor:
    """``pieces`` concatenated on ``device`` (dtypes promoted, so values stay exact)."""
    return torch.cat([piece.to(device) for piece in pieces])


def _nan_threshold(group: _Group, nans: list[int]) -> _Threshold:
    return _Threshold(math.nan, group.total - sum(nans), nans)


def _kth_of_candidates(candidates: list[Tensor], k: int, base: int) -> _Threshold:
    """The threshold from the gathered scores of a region with ``base`` scores below it."""
    joined = _cat(candidates, candidates[0].device)
    value = kth_smallest_value(joined, k - base)
    below = base + int(torch.count_nonzero(_lt(joined, value)))
    return _Threshold(value, below, [int(torch.count_nonzero(_eq(c, value))) for c in candidates])


def _narrow(group: _Group, k: int, region: _Region, base: int, size: int, cap: int) -> _Threshold:
    """Exact selection inside ``region`` (``size`` scores, ``base`` valid scores below it,
    ``base < k``), by counting passes around pivots from random samples.

    Every round shrinks the region by at least one distinct value (usually by a factor of
    about fifty), so it ends; its result does not depend on the samples.
    """
    generator = torch.Generator().manual_seed(_NARROW_SEED)
    if k > base + size:  # only for an upper-unbounded region: the threshold is a NaN
        (nans,) = group.count(torch.isnan)
        return _nan_threshold(group, nans)
    while True:
        rank = k - base
        if size <= cap:
            return _kth_of_candidates(group.gather(region), k, base)
        draws = min(group.total, math.ceil(_NARROW_SAMPLE_SIZE * group.total / size))
        drawn = torch.randint(group.total, (draws,), generator=generator).sort().values
        edges = torch.searchsorted(drawn, torch.tensor(group.offsets)).tolist()
        pieces = []
        for i in range(len(group.sizes)):
            local = drawn[edges[i] : edges[i + 1]] - group.offsets[i]
            if local.numel():
                values = group.sample_at(i, local.to(group.device))
                pieces.append(values[region.contains(values)].to(group.device))
        sample = torch.cat(pieces) if pieces else torch.empty(0)
        if not sample.numel():
            continue
        lo_at, hi_at = _bracket(rank, size, sample.numel())
        last = sample.numel() - 1
        pivot_lo = _sample_value(sample, min(max(lo_at, 0), last))
        pivot_hi = _sample_value(sample, min(max(hi_at, 0), last))
        if pivot_lo is None or pivot_hi is None:  # unreachable: regions hold no NaN
            raise RuntimeError("GlobalMagnitude: a NaN in a region without NaN")
        under, upto = _count_around(group, region, pivot_lo, pivot_hi)
        if rank <= sum(under):
            region = dataclasses.replace(region, hi=pivot_lo, hi_open=True)
            size = sum(under)
        elif rank > sum(upto):
            region = dataclasses.replace(region, lo=pivot_hi, lo_open=True)
            base, size = base + sum(upto), size - sum(upto)
        elif pivot_lo == pivot_hi:
            return _Threshold(pivot_lo, base + sum(under), _minus(upto, under))
        elif sum(under) == 0 and sum(upto) == size:  # no progress: split at one value
            pivot = _sample_value(sample, min(max((lo_at + hi_at) // 2, 0), last))
            if pivot is None:  # unreachable: regions hold no NaN
                raise RuntimeError("GlobalMagnitude: a NaN in a region without NaN")
            under, upto = _count_around(group, region, pivot, pivot)
            if sum(under) < rank <= sum(upto):
                return _Threshold(pivot, base + sum(under), _minus(upto, under))
            if rank <= sum(under):
                region = dataclasses.replace(region, hi=pivot, hi_open=True)
                size = sum(under)
            else:
                region = dataclasses.replace(region, lo=pivot, lo_open=True)
                base, size = base + sum(upto), size - sum(upto)
        else:
            region = _Region(lo=pivot_lo, hi=pivot_hi)
            base, size = base + sum(under), sum(upto) - sum(under)


def _minus(a: list[int], b: list[int]) -> list[int]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _count_around(
    group: _Group, region: _Region, lo: float, hi: float
) -> tuple[list[int], list[int]]:
    """Per tensor, the region's scores below ``lo`` and those up to ``hi`` (values in it)."""

    def under(a: Tensor) -> Tensor:
        lower = region.lower(a)
        below = _lt(a, lo)
        return below if lower is None else below.logical_and_(lower)

    def upto(a: Tensor) -> Tensor:
        lower = region.lower(a)
        below = _le(a, hi)
        return below if lower is None else below.logical_and_(lower)

    counts = group.count(under, upto)
    return counts[0], counts[1]
