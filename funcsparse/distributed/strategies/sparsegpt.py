"""SparseGPT on a sharded leaf: refused (its column sweep and weight updates need the whole
weight and the whole hessian on one rank).

A replicated leaf is computed on every rank as it is (no strategy runs); any split is
refused by name, on every rank alike (the decision depends on the placement only).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from funcsparse.distributed.masks import refuse, strategy
from funcsparse.distributed.shards import Shards
from funcsparse.methods.sparsegpt import SparseGPT

__all__: list[str] = []


@strategy(SparseGPT)
def _sparsegpt(method: SparseGPT, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    raise refuse(
        where,
        method,
        shards,
        "its OBS updates sweep every column of a row with the whole hessian; calibrate and "
        "prune an unsharded copy (DTensor.full_tensor(), fs.prune) and shard the result",
    )
