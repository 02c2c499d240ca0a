"""Sharded strategies of the methods that rank single entries over a whole tensor (or a
group of tensors): Magnitude, Movement, Random and GlobalMagnitude.

Each rank ranks its own piece; the k lowest over all pieces are found by
:func:`funcsparse.distributed.select.keep_all_but_lowest_sharded`, whose collectives carry
histograms and counts only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import Shard

from funcsparse.distributed.masks import global_strategy, refuse, strategy
from funcsparse.distributed.select import Part, keep_all_but_lowest_sharded, tensor_part
from funcsparse.distributed.shards import Shards
from funcsparse.methods import GlobalMagnitude, Magnitude, Movement, Random
from funcsparse.methods._level import count_to_prune

__all__: list[str] = []


def _entry_part(shards: Shards, data: dict[str, Any], *, offset: int = 0) -> Part:
    """The part of a leaf ranked by ``scores`` where given, else by ``|w|``."""
    scores = data.get("scores")

    def position(start: int, stop: int) -> Tensor:
        index = shards.global_index(start, stop)
        return index + offset if offset else index

    ranking = shards.local if scores is None else scores
    return tensor_part(
        ranking.detach(), position, magnitude=scores is None, prev_mask=data.get("prev_mask")
    )


@strategy(Magnitude)
def _magnitude(method: Magnitude, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    k = count_to_prune("Magnitude", method.sparsity, method.count, shards.numel)
    return keep_all_but_lowest_sharded([_entry_part(shards, data)], k, shards.groups, owner=where)[
        0
    ]


@strategy(Movement)
def _movement(method: Movement, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    from funcsparse.distributed.masks import sharded_strategy

    selection = method.selection
    fn = sharded_strategy(selection)
    if fn is None:
        raise refuse(where, selection, shards, "its selection has no sharded strategy")
    prev_mask = None if selection.uses_prev_mask else data.pop("prev_mask", None)
    mask = fn(selection, shards, data, where)
    return mask if prev_mask is None else mask & prev_mask


@strategy(Random)
def _random(method: Random, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    local = shards.local
    if local.device.type != "cpu":
        raise refuse(
            where, method, shards, "only a CPU generator draws the same values piece by piece"
        )
    k = count_to_prune("Random", method.sparsity, method.count, shards.numel)
    generator = data.get("generator")

    def pieces() -> Iterator[tuple[int, int, Tensor]]:
        g = torch.Generator(device=local.device)
        if generator is None:
            g.manual_seed(method.seed)
        else:
            g.set_state(generator.get_state())
        yield from _drawn_box(shards, g)

    part = Part(pieces, local, shards.global_index, data.get("prev_mask"))
    return keep_all_but_lowest_sharded([part], k, shards.groups, owner=where)[0]


def _drawn_box(shards: Shards, g: torch.Generator) -> Iterator[tuple[int, int, Tensor]]:
    """The negated draws at the local box's entries, in local row-major order.

    The full tensor's stream is drawn row block by row block (rows of dimension 0), and the
    rows before the box are drawn and dropped, so every rank reproduces the draws of one
    process without holding more than a block of rows.
    """
    local, shape = shards.local, shards.shape
    dtype = local.dtype
    if local.numel() == 0:
        return
    if len(shape) == 0:
        yield 0, 1, torch.rand(1, dtype=dtype, generator=g).neg_()
        return
    row = local.numel() // local.shape[0]
    full_row = 1
    for size in shape[1:]:
        full_row *= size
    skip = shards.offset[0] * full_row
    while skip:
        step = min(skip, 1 << 20)
        torch.rand(step, dtype=dtype, generator=g)
        skip -= step
    rows = max(1, (1 << 20) // max(full_row, 1))
    inner = shards.box()[1:]
    start = 0
    for first in range(0, local.shape[0], rows):
        count = min(rows, local.shape[0] - first)
        block = torch.rand(count * full_row, dtype=dtype, generator=g)
        values = block.view(count, *shape[1:])[(slice(None), *inner)].reshape(-1)
        yield start, start + count * row, values.neg_()
        start += count * row


@global_strategy(GlobalMagnitude)
def _global_magnitude(
    method: GlobalMagnitude, shards: list[Shards], data: list[dict[str, Any]], where: str
) -> list[Tensor]:
    total = sum(s.numel for s in shards)
    k = count_to_prune("GlobalMagnitude", method.sparsity, method.count, total)
    parts, offset = [], 0
    for s, d in zip(shards, data, strict=True):
        parts.append(_entry_part(s, d, offset=offset))
        offset += s.numel
    groups = _one_split(shards, method, where)
    return keep_all_but_lowest_sharded(parts, k, groups, owner=where)


def _one_split(shards: list[Shards], method: GlobalMagnitude, where: str) -> Any:
    """The groups that split every leaf of a global selection (one set for all).

    The leaves share a mesh (checked before); they must be split over the same mesh
    dimensions (of more than one rank). Decided from the placements alone, so every rank
    (one outside the mesh too) refuses alike, before any collective.
    """

    def split(s: Shards) -> tuple[int, ...]:
        return tuple(
            d for d, p in enumerate(s.placements) if isinstance(p, Shard) and s.mesh.size(d) > 1
        )

    if len({split(s) for s in shards}) > 1:
        raise refuse(
            where,
            method,
            shards[0],
            "its leaves are split over different mesh dimensions (or some are replicated); "
            "place every leaf of the group on the same mesh dimensions",
        )
    if not shards:
        return ()
    return tuple(g for g in shards[0].groups if dist.get_world_size(g) > 1)
