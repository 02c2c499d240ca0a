"""Sharded strategies of the methods that rank groups of entries: NM, Wanda, NearlyDiagonal,
WeightNorm, LnStructured, RandomStructured.

Each strategy returns this rank's piece of the method's mask of the full tensor, bit for bit:

- ``NM``: groups of ``m`` along ``axis`` lie inside every piece (``axis`` unsplit, or split
  at multiples of ``m``): the method on the local piece, no communication.
- ``Wanda``: rows are ranked on their own (with ``n`` and ``m``, the groups of ``m`` inside
  each flattened row); split along dim 0 only, every row is local: the method on the local
  piece, no communication. A split along another dim is refused (with ``n`` and ``m`` too,
  even at a group boundary).
- ``NearlyDiagonal``: the band ``|i - j| <= nearliness // 2`` from the global offset of the
  piece, no communication.
- ``WeightNorm``: blocks must not straddle pieces (cuts at multiples of the block's sides).
  The entries zeroed inside a block are found locally; which blocks are selected is ranked
  across the pieces from the local block scores, through histograms of their order keys
  (:func:`funcsparse.distributed.select.keep_all_but_lowest_sharded`; with ``prev_mask``,
  a gain-weighted form of the same search, :func:`_lowest_covering_sharded`).
- ``LnStructured``: every slice must be whole on its rank (a split along ``dim`` only);
  each rank norms its slices with the method's own ``slice_scores`` (a slice left alone in
  its piece is normed beside a zero slice, since torch reduces a lone output in another
  order), the norms (one value per slice) are summed into one vector over the ranks, and
  the method's selection runs on it. A split along a dim the norm reduces over is refused:
  partial norms summed across ranks are not the single-process norm bit for bit.
- ``RandomStructured``: the draw is one value per slice from the seed, the same on every
  rank (so a ``generator`` passed in must hold the same state on every rank); with
  ``prev_mask``, the zeros per slice are counted locally and summed (integers, exact). Any
  placement; no communication without ``prev_mask``.

Refusals depend on the placement and the method's config only (never on the data or the
level), and every rank finds the same piece boundaries, so all ranks refuse together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.tensor import Shard

from funcsparse._select import (
    lowest_covering,
    order_keys,
    smallest_k,
)
from funcsparse.distributed._comm import all_reduce_sum
from funcsparse.distributed.masks import refuse, strategy
from funcsparse.distributed.select import keep_all_but_lowest_sharded, tensor_part
from funcsparse.distributed.shards import Shards
from funcsparse.methods.nearly_diagonal import NearlyDiagonal
from funcsparse.methods.nm import NM
from funcsparse.methods.structured import LnStructured, RandomStructured, slice_chunks
from funcsparse.methods.wanda import Wanda
from funcsparse.methods.weight_norm import WeightNorm

__all__: list[str] = []

# Digits of the gain-weighted radix search: 8 bits, so each pass all-reduces 2 x 256 int64.
_DIGIT_BITS = 8


# -- where the pieces are cut -----------------------------------------------------------------


def _cuts(shards: Shards, dim: int) -> list[int]:
    """Every position along ``dim`` where one rank's piece ends and the next one's begins.

    Computed from the shape and the mesh alone (``torch.chunk``'s split, mesh dim after mesh
    dim, as :func:`funcsparse.distributed.shards.shards_of` places the pieces), so every
    rank finds the same cuts and takes the same decision.
    """
    ndim = len(shards.shape)
    segments = [(0, shards.shape[dim])]
    for mesh_dim, placement in enumerate(shards.placements):
        if not isinstance(placement, Shard) or placement.dim % ndim != dim:
            continue
        count = shards.mesh.size(mesh_dim)
        split: list[tuple[int, int]] = []
        for begin, end in segments:
            size = end - begin
            chunk = -(-size // count) if size else 0
            for i in range(count):
                start = min(i * chunk, size)
                split.append((begin + start, begin + min(start + chunk, size)))
        segments = split
    length = shards.shape[dim]
    return sorted({end for _, end in segments if 0 < end < length})


def _split_dims(shards: Shards) -> set[int]:
    """The tensor dims split into more than one piece."""
    return {dim for dim in range(len(shards.shape)) if _cuts(shards, dim)}


# -- NM ---------------------------------------------------------------------------------------


@strategy(NM)
def _nm(method: NM, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    """Groups of ``m`` along ``axis`` inside every piece: the method on the local piece."""
    ndim = len(shards.shape)
    axis = method.axis % ndim
    bad = [cut for cut in _cuts(shards, axis) if cut % method.m]
    if bad:
        raise refuse(
            where,
            method,
            shards,
            f"its groups of m={method.m} along axis={method.axis} straddle the pieces (a "
            f"piece boundary at index {bad[0]} along dim {axis} is not a multiple of m)",
        )
    # Every group lies in one piece, and a group's selection reads that group alone.
    return method(shards.local.detach(), **data)


# -- Wanda ------------------------------------------------------------------------------------


@strategy(Wanda)
def _wanda(method: Wanda, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    """Rows whole on every rank (a split along dim 0 only): the method on the local rows
    (per row, or per group of ``m`` in a row with ``n`` and ``m``)."""
    other = sorted(_split_dims(shards) - {0})
    if other:
        raise refuse(
            where,
            method,
            shards,
            f"each output row is ranked on its own, and dim {other[0]} splits the rows across "
            "ranks (Wanda is local along dim 0 only: Shard(0))",
        )
    return method(shards.local.detach(), **data)


# -- NearlyDiagonal ---------------------------------------------------------------------------


@strategy(NearlyDiagonal)
def _nearly_diagonal(
    method: NearlyDiagonal, shards: Shards, data: dict[str, Any], where: str
) -> Tensor:
    """The band ``|i - j| <= nearliness // 2`` at the piece's global rows and columns."""
    local = shards.local
    if method.nearliness <= 0:
        return torch.zeros(local.shape, dtype=torch.bool, device=local.device)
    height, width = local.shape
    rows = torch.arange(shards.offset[0], shards.offset[0] + height, device=local.device)
    cols = torch.arange(shards.offset[1], shards.offset[1] + width, device=local.device)
    return (cols[None, :] - rows[:, None]).abs() <= method.nearliness // 2


# -- LnStructured, RandomStructured -----------------------------------------------------------


def _meta_like(shards: Shards) -> Tensor:
    """A tensor of the full shape on the meta device (shapes only)."""
    return torch.empty(shards.shape, device="meta")


def _full_slice_vector(shards: Shards, dim: int, local: Tensor) -> Tensor:
    """The per-slice vector of the full tensor from every rank's values for its slices.

    Each rank writes its values at its slices' global indices, zeros elsewhere, and the
    vectors are summed over the groups that split the tensor (only ``dim`` is split here):
    every entry is one rank's value plus zeros, which is that value exactly.
    """
    size = shards.shape[dim]
    # Sent as float64 (int64): every float dtype converts to it and back exactly, and gloo
    # reduces it (not bfloat16).
    wide = torch.float64 if local.is_floating_point() else torch.int64
    full = torch.zeros(size, dtype=wide, device=local.device)
    start = shards.offset[dim]
    full[start : start + local.numel()] = local
    return all_reduce_sum(full, shards.groups).to(local.dtype)


def _slices_mask(
    method: LnStructured | RandomStructured,
    shards: Shards,
    scores: Tensor,
    prev_zeros: Tensor | None,
    prev_mask: Tensor | None,
) -> Tensor:
    """The local mask from the full per-slice ``scores`` (and per-slice previous zeros), as
    the method's own selection takes them."""
    ndim = len(shards.shape)
    dim = method.dim % ndim
    local = shards.local
    size = shards.shape[dim]
    numel = math.prod(shards.shape)
    slice_size = numel // size if size else 0
    count = method.slices_to_prune(_meta_like(shards))
    if prev_zeros is None or prev_mask is None:
        pruned = smallest_k(scores, count)
    else:
        needed = count * slice_size - prev_zeros.sum()
        pruned = lowest_covering(scores, slice_size - prev_zeros, needed)
    start = shards.offset[dim]
    keep = pruned[start : start + local.shape[dim]].logical_not()
    view = [1] * ndim
    view[dim] = local.shape[dim]
    mask = keep.reshape(view).expand(local.shape).contiguous()
    return mask if prev_mask is None else mask.logical_and_(prev_mask)


def _trivial_slices(
    method: LnStructured | RandomStructured, shards: Shards, prev_mask: Tensor | None
) -> Tensor | None:
    """The mask where the level alone decides it (as the method's first branches do)."""
    local = shards.local
    dim = method.dim % len(shards.shape)
    count = method.slices_to_prune(_meta_like(shards))
    if math.prod(shards.shape) == 0 or (count == 0 and prev_mask is None):
        return torch.ones(local.shape, dtype=torch.bool, device=local.device)
    if count >= shards.shape[dim]:
        return torch.zeros(local.shape, dtype=torch.bool, device=local.device)
    return None


def _kept_per_slice(mask: Tensor, dim: int) -> Tensor:
    """Entries of every slice along ``dim`` that ``mask`` keeps (int64)."""
    moved = mask.movedim(dim, 0)
    rest = math.prod(moved.shape[1:])  # explicit: -1 is ambiguous on an empty piece
    return moved.reshape(moved.shape[0], rest).sum(1, dtype=torch.int64)


def _full_passes(shape: tuple[int, ...], dim: int, chunked: bool) -> list[tuple[int, int]]:
    """The runs of slices ``[start, stop)`` whose norms the method computes in one call on
    the full tensor: all of them, or (``chunked``: norms of the weights as the model sees
    them) the method's own chunks (:func:`funcsparse.methods.structured.slice_chunks`), as
    ``LnStructured.slice_scores`` takes them."""
    if not chunked:
        return [(0, shape[dim])]
    return [(start, start + length) for start, length in slice_chunks(torch.Size(shape), dim)]


def _local_slice_scores(
    method: LnStructured, shards: Shards, local: Tensor, data: dict[str, Any], dim: int
) -> Tensor:
    """The method's own scores of the local (whole) slices, each computed as in the full
    tensor's pass: torch reduces a lone slice (one output) in another order than a slice
    among others, so a slice that the full pass takes among others but that is alone here
    (a piece, or a piece's share of a chunk, of one slice) is normed beside a zero slice."""
    begin = shards.offset[dim]
    end = begin + local.shape[dim]
    chunked = data.get("prev_mask") is not None and data.get("scores") is None
    shaped = {  # prev_mask, scores
        key
        for key, value in data.items()
        if isinstance(value, Tensor) and value.shape == local.shape
    }
    scores: list[Tensor] = []
    for start, stop in _full_passes(shards.shape, dim, chunked):
        low, high = max(start, begin), min(stop, end)
        if low >= high:
            continue
        piece = local.narrow(dim, low - begin, high - low)
        part = {
            key: value.narrow(dim, low - begin, high - low) if key in shaped else value
            for key, value in data.items()
        }
        alone = high - low == 1 and stop - start > 1
        if alone:  # beside a zero slice (the second score is dropped)
            piece = torch.cat([piece, torch.zeros_like(piece)], dim)
            for key in shaped:
                part[key] = torch.cat([part[key], torch.zeros_like(part[key])], dim)
        found = method.slice_scores(piece, part)
        scores.append(found[:1] if alone else found)
    if not scores:  # no slices here
        return method.slice_scores(local, data)
    return torch.cat(scores)


@strategy(LnStructured)
def _ln_structured(
    method: LnStructured, shards: Shards, data: dict[str, Any], where: str
) -> Tensor:
    """Whole slices on every rank: local norms, gathered (one per slice), then selected."""
    ndim = len(shards.shape)
    dim = method.dim % ndim
    other = sorted(_split_dims(shards) - {dim})
    if other:
        what = "sums of scores" if data.get("scores") is not None else f"L{method.n} norms"
        raise refuse(
            where,
            method,
            shards,
            f"its slices along dim={method.dim} are split across ranks along dim {other[0]}, "
            f"and {what} of partial slices summed across ranks are not the single-process "
            f"values bit for bit (LnStructured is exact with only dim {dim} split)",
        )
    prev_mask: Tensor | None = data.get("prev_mask")
    trivial = _trivial_slices(method, shards, prev_mask)
    if trivial is not None:
        return trivial
    local = shards.local.detach()
    local_scores = _local_slice_scores(method, shards, local, data, dim)
    scores = _full_slice_vector(shards, dim, local_scores)
    prev_zeros: Tensor | None = None
    if prev_mask is not None:
        slice_size = math.prod(shards.shape) // shards.shape[dim]
        local_zeros = slice_size - _kept_per_slice(prev_mask, dim)
        prev_zeros = _full_slice_vector(shards, dim, local_zeros)
    return _slices_mask(method, shards, scores, prev_zeros, prev_mask)


@strategy(RandomStructured)
def _random_structured(
    method: RandomStructured, shards: Shards, data: dict[str, Any], where: str
) -> Tensor:
    """The draw (one value per slice) on every rank alike; zeros per slice summed."""
    ndim = len(shards.shape)
    dim = method.dim % ndim
    prev_mask: Tensor | None = data.get("prev_mask")
    trivial = _trivial_slices(method, shards, prev_mask)
    if trivial is not None:
        return trivial
    local = shards.local
    # slice_scores reads the slice count and the device only: a tensor with no entries.
    shape = [shards.shape[dim] if d == dim else 0 for d in range(ndim)]
    scores = method.slice_scores(torch.empty(shape, device=local.device), data)
    prev_zeros: Tensor | None = None
    if prev_mask is not None:
        # Kept entries per slice: the local counts of the local slices, summed over ranks.
        size = shards.shape[dim]
        kept = torch.zeros(size, dtype=torch.int64, device=local.device)
        start = shards.offset[dim]
        kept[start : start + local.shape[dim]] = _kept_per_slice(prev_mask, dim)
        all_reduce_sum(kept, shards.groups)
        prev_zeros = math.prod(shards.shape) // size - kept
    return _slices_mask(method, shards, scores, prev_zeros, prev_mask)


# -- WeightNorm -------------------------------------------------------------------------------


def _fitted(method: WeightNorm, shape: tuple[int, ...]) -> WeightNorm:
    """``method`` with its block sides clamped to the full weight's (as the method fits them:
    the same blocks, no padding; zeros per block equal to the block size stay whole)."""
    rows, cols = method.sparse_block_shape
    height, width = shape
    fit = (max(1, min(rows, height)), max(1, min(cols, width)))
    if fit == (rows, cols):
        return method
    zeros = method.zeros_per_block
    if zeros is not None:
        zeros = None if zeros >= method.block_size else min(zeros, fit[0] * fit[1])
    return dataclasses.replace(method, sparse_block_shape=fit, zeros_per_block=zeros)


def _entry_scores(method: WeightNorm, local: Tensor, data: dict[str, Any]) -> Tensor:
    """Per-entry scores of the local piece: ``scores`` as given, else ``norm(w)`` of the
    weights as the model sees them (``prev_mask``'s entries as 0). ``norm`` is elementwise,
    so the piece's scores are the full tensor's scores there."""
    given: Tensor | None = data.get("scores")
    if given is not None:
        return given
    prev_mask: Tensor | None = data.get("prev_mask")
    seen = local
    if prev_mask is not None:
        seen = torch.where(
            prev_mask, local, torch.zeros((), dtype=local.dtype, device=local.device)
        )
    if method.norm == 1:
        return seen.abs()
    if method.norm == 2:
        return seen * seen
    norm = method.norm
    if not callable(norm):  # unreachable after __post_init__; narrows the type
        raise TypeError(f"WeightNorm: norm must be 1, 2 or a callable, got {norm!r}")
    scores = norm(seen.clone())
    if not isinstance(scores, Tensor) or scores.shape != local.shape:
        raise TypeError(
            f"WeightNorm: norm callable must return a floating tensor of the weight's shape "
            f"(here its piece, {tuple(local.shape)}), got {type(scores).__name__}"
        )
    return scores


def _block_means(method: WeightNorm, entries: Tensor) -> Tensor:
    """The mean of ``entries`` over every block of the local piece (its edge blocks over their
    real entries): ``avg_pool2d(ceil_mode=True)``, which the method's scores equal bit for
    bit (it sums a block row by row, left to right, then divides by its size)."""
    if method.block_size == 1:
        return entries
    # Contiguous, as the method's scores are (given scores may be a strided view of a piece).
    pooled = F.avg_pool2d(
        entries.contiguous()[None, None], method.sparse_block_shape, ceil_mode=True
    )
    return pooled[0, 0]


def _expand(per_block: Tensor, block: tuple[int, int], shape: torch.Size) -> Tensor:
    """Per-block values on the entries of a piece of ``shape`` (its blocks start at 0)."""
    rows, cols = block
    entries = per_block.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    return entries[: shape[0], : shape[1]]


Position = Callable[[int, int], Tensor]


def _block_positions(
    grid: tuple[int, int], start: tuple[int, int], full_cols: int, device: torch.device
) -> Position:
    """``position(begin, end)``: the global row-major block indices of the local flat block
    indices ``[begin, end)`` (a local grid ``grid`` whose first block is ``start``)."""
    local_cols = grid[1]

    def position(begin: int, end: int) -> Tensor:
        flat = torch.arange(begin, end, dtype=torch.int64, device=device)
        return (flat // local_cols + start[0]) * full_cols + flat % local_cols + start[1]

    return position


def _lowest_sharded(
    scores: Tensor, position: Position, k: int, groups: Sequence[dist.ProcessGroup]
) -> Tensor:
    """The ``k`` lowest-ranked blocks of all pieces (True: selected), local grid's shape."""
    part = tensor_part(scores.contiguous(), position)
    return keep_all_but_lowest_sharded([part], k, groups)[0].logical_not()


def _lowest_covering_sharded(
    keys: Tensor,
    positions: Tensor,
    gains: Tensor,
    needed: int,
    units: int,
    groups: Sequence[dist.ProcessGroup],
) -> Tensor:
    """:func:`funcsparse._select.lowest_covering` over the units of all ranks: the shortest
    prefix of the ranking whose gains reach ``needed`` (all of them if they never do, none
    if ``needed <= 0``); True at this rank's selected units.

    The ranking is funcsparse's total order: by order key (:func:`order_keys`), then by
    position (global, ``< units``). The last unit of the prefix is found digit by digit:
    each pass all-reduces a gain-weighted histogram (and a count) of the next digit of the
    candidates' keys, then positions; a digit whose bucket holds one unit ends the search.
    """
    selected = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    if needed <= 0:
        return selected
    total = all_reduce_sum(gains.sum(dtype=torch.int64).reshape(1), groups)
    if int(total) < needed:
        return selected.logical_not_()
    candidate = torch.ones_like(selected)
    before = 0  # gains of the units ranked before every candidate
    radix = 1 << _DIGIT_BITS
    passes = [(keys, shift) for shift in range(64 - _DIGIT_BITS, -1, -_DIGIT_BITS)]
    position_bits = max(1, (units - 1).bit_length())
    top = -(-position_bits // _DIGIT_BITS) * _DIGIT_BITS
    passes += [(positions, shift) for shift in range(top - _DIGIT_BITS, -1, -_DIGIT_BITS)]
    for values, shift in passes:
        digits = (values[candidate] >> shift) & (radix - 1)
        histogram = torch.zeros(2, radix, dtype=torch.int64, device=keys.device)
        histogram[0].index_add_(0, digits, gains[candidate])
        histogram[1].index_add_(0, digits, torch.ones_like(digits))
        all_reduce_sum(histogram, groups)
        cumulative = histogram[0].cumsum(0)
        rest = torch.tensor([needed - before], dtype=torch.int64, device=keys.device)
        digit = int(torch.searchsorted(cumulative, rest)[0])
        before += int(cumulative[digit - 1]) if digit else 0
        all_digits = (values >> shift) & (radix - 1)
        selected |= candidate & (all_digits < digit)
        candidate &= all_digits == digit
        if int(histogram[1, digit]) == 1:
            break
    return selected | candidate


@strategy(WeightNorm)
def _weight_norm(method: WeightNorm, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    """Blocks inside every piece: within-block zeros locally, the block level across ranks."""
    fitted = _fitted(method, shards.shape)
    block = fitted.sparse_block_shape
    for dim in (0, 1):
        bad = [cut for cut in _cuts(shards, dim) if cut % block[dim]]
        if bad:
            raise refuse(
                where,
                method,
                shards,
                f"its blocks of shape {block} straddle the pieces (a piece boundary at index "
                f"{bad[0]} along dim {dim} is not a multiple of {block[dim]}), and a block's "
                "score summed across ranks is not the single-process score bit for bit",
            )
    local = shards.local.detach()
    prev_mask: Tensor | None = data.get("prev_mask")
    level = float(method.sparsity)
    whole = fitted.block_zeros >= fitted.block_size
    if level <= 0 or fitted.block_zeros == 0 or math.prod(shards.shape) == 0:
        ones = torch.ones(local.shape, dtype=torch.bool, device=local.device)
        return ones if prev_mask is None else prev_mask.clone()
    # Every block's own zeros (the method at level 1, on whole blocks of the piece).
    if whole or local.numel() == 0:
        every = torch.zeros(local.shape, dtype=torch.bool, device=local.device)
        if local.numel() == 0 and prev_mask is not None:
            every = prev_mask.clone()
    else:
        every = dataclasses.replace(fitted, sparsity=1.0)(local, **data)
    if level >= 1:
        return every
    height, width = shards.shape
    grid = (-(-height // block[0]), -(-width // block[1]))
    n_blocks = grid[0] * grid[1]
    start = (shards.offset[0] // block[0], shards.offset[1] // block[1])
    local_grid = (-(-local.shape[0] // block[0]), -(-local.shape[1] // block[1]))
    position = _block_positions(local_grid, start, grid[1], local.device)
    k = max(0, min(n_blocks - 1, round(level * n_blocks)))
    if local.numel():
        scores = _block_means(fitted, _entry_scores(fitted, local, data))
    else:
        scores = torch.zeros(local_grid, dtype=local.dtype, device=local.device)
    if prev_mask is None:
        selected = _lowest_sharded(scores, position, k, shards.groups)
    else:
        selected = _covering_blocks(fitted, shards, scores, position, prev_mask, k, grid)
    chosen = _expand(selected, block, local.shape)
    rest = torch.ones_like(chosen) if prev_mask is None else prev_mask
    return torch.where(chosen, every, rest)


def _covering_blocks(
    method: WeightNorm,
    shards: Shards,
    scores: Tensor,
    position: Position,
    prev_mask: Tensor,
    k: int,
    grid: tuple[int, int],
) -> Tensor:
    """The blocks taken after ``prev_mask``: in rank order until the zeros, old and new,
    reach the level's target (the zeros of the ``k`` lowest-ranked blocks)."""
    rows, cols = method.sparse_block_shape
    height, width = shards.shape
    local_grid = tuple(scores.shape)
    start = (shards.offset[0] // rows, shards.offset[1] // cols)
    pruned = prev_mask.logical_not()
    pad = (0, local_grid[1] * cols - pruned.shape[1], 0, local_grid[0] * rows - pruned.shape[0])
    pruned = F.pad(pruned, pad) if any(pad) else pruned
    old = pruned.reshape(local_grid[0], rows, local_grid[1], cols).sum((1, 3), dtype=torch.int64)
    block_rows = torch.arange(start[0], start[0] + local_grid[0], device=old.device)
    block_cols = torch.arange(start[1], start[1] + local_grid[1], device=old.device)
    sizes = (height - block_rows * rows).clamp(max=rows)[:, None] * (
        width - block_cols * cols
    ).clamp(max=cols)[None, :]
    quota = sizes.clamp(max=method.block_zeros)
    old_total = int(all_reduce_sum(old.sum().reshape(1), shards.groups))
    if height % rows == 0 and width % cols == 0:
        target = k * method.block_zeros
    else:  # blocks of different sizes: the zeros that the k lowest-ranked blocks take
        lowest = _lowest_sharded(scores, position, k, shards.groups)
        target = int(all_reduce_sum((quota * lowest).sum().reshape(1), shards.groups))
    gains = (quota - old).clamp(min=0)
    flat = scores.reshape(-1)
    keys = order_keys(flat)
    positions = position(0, flat.numel())
    selected = _lowest_covering_sharded(
        keys, positions, gains.reshape(-1), target - old_total, grid[0] * grid[1], shards.groups
    )
    return selected.reshape(local_grid)
