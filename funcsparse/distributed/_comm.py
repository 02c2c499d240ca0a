"""The collectives funcsparse sends, and a count of the bytes they carry.

Every collective of :mod:`funcsparse.distributed` goes through this module, so that
:func:`counting` can report what a mask computation communicated (the benchmark's figure).
A collective over several process groups runs once per group, in order: a sum over the
ranks of a 2-D mesh's sharded dimensions is a sum over one dimension, then the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Traffic", "all_gather", "all_reduce_max", "all_reduce_sum", "counting"]


@dataclasses.dataclass
class Traffic:
    """Collectives counted by :func:`counting`: how many, and the bytes this rank put in."""

    calls: int = 0
    bytes: int = 0


_COUNTERS: list[Traffic] = []


@contextlib.contextmanager
def counting() -> Iterator[Traffic]:
    """Count the collectives funcsparse sends on this rank inside the ``with`` block.

    ``bytes`` is the payload this rank contributes (a tensor of ``n`` bytes all-reduced over
    one group counts ``n``; all-gathered, ``n``), not the transport's overhead.

    Examples:
        >>> from funcsparse.distributed import counting
        >>> with counting() as traffic:
        ...     pass
        >>> traffic
        Traffic(calls=0, bytes=0)
    """
    traffic = Traffic()
    _COUNTERS.append(traffic)
    try:
        yield traffic
    finally:
        _COUNTERS.remove(traffic)


def _count(tensor: Tensor) -> None:
    for traffic in _COUNTERS:
        traffic.calls += 1
        traffic.bytes += tensor.numel() * tensor.element_size()


def all_reduce_sum(tensor: Tensor, groups: Sequence[dist.ProcessGroup]) -> Tensor:
    """``tensor`` summed over every rank of ``groups`` (in place; returned)."""
    for group in groups:
        _count(tensor)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_max(tensor: Tensor, groups: Sequence[dist.ProcessGroup]) -> Tensor:
    """``tensor``'s elementwise maximum over every rank of ``groups`` (in place; returned)."""
    for group in groups:
        _count(tensor)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return tensor


def all_gather(tensor: Tensor, group: dist.ProcessGroup) -> list[Tensor]:
    """Every rank's ``tensor`` (all the same shape), in the group's rank order."""
    _count(tensor)
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor.contiguous(), group=group)
    return out
