"""Masks of sharded parameters (DTensor, FSDP2) through torch.distributed collectives.

Importing ``funcsparse`` imports this package where ``torch.distributed`` is available; it
registers the backend through which ``fs.compute_masks`` masks DTensor leaves:

- a leaf whose method's groups lie inside each rank's piece (N:M along an unsplit axis,
  Wanda's rows of a ``Shard(0)`` weight, blocks that do not straddle pieces) is masked
  locally, with no communication;
- a leaf (or a group of leaves) ranked as a whole (Magnitude, WeightNorm's blocks,
  GlobalMagnitude, Random) selects through collectives on small data: histograms of order
  keys and counts, never a gathered piece (:mod:`funcsparse.distributed.select`);
- a placement that a method cannot serve exactly without a gather is refused with a
  ValueError naming the method and the placement.

The masks are DTensors placed as the leaves are, equal bit for bit to the masks of the full
tensors in one process. :func:`counting` reports the bytes a computation sent.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from funcsparse._compute import register_sharded
from funcsparse.distributed import fsdp
from funcsparse.distributed import strategies as _strategies  # noqa: F401  (registers them)
from funcsparse.distributed._comm import Traffic, counting
from funcsparse.distributed.fsdp import sharded_params, state_template
from funcsparse.distributed.masks import check_sharded_leaf, sharded_global_masks, sharded_mask
from funcsparse.distributed.shards import Shards, is_sharded, shards_of
from funcsparse.methods._base import GlobalMethod, MaskMethod

__all__ = [
    "Shards",
    "Traffic",
    "counting",
    "fsdp",
    "is_sharded",
    "sharded_params",
    "shards_of",
    "state_template",
]


class _Backend:
    """The backend ``fs.compute_masks`` uses for DTensor leaves."""

    def is_sharded(self, leaf: object) -> bool:
        return is_sharded(leaf)

    def check(self, method: MaskMethod, leaf: Tensor, data: dict[str, Any], *, where: str) -> None:
        check_sharded_leaf(method, leaf, data, where=where)

    def mask(self, method: MaskMethod, leaf: Tensor, data: dict[str, Any], *, where: str) -> Tensor:
        return sharded_mask(method, leaf, data, where=where)  # type: ignore[arg-type]

    def global_masks(
        self,
        method: GlobalMethod,
        leaves: list[Tensor],
        data: list[dict[str, Any]],
        *,
        where: str,
    ) -> list[Tensor]:
        return sharded_global_masks(method, leaves, data, where=where)


register_sharded(_Backend())
