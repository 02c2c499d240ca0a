"""SET and RigL on a sharded leaf: refused (drop and grow rank the whole tensor and keep its
exact count; the initial random mask and the growth draw follow the full tensor's stream).

A replicated leaf is computed on every rank as it is (no strategy runs); any split is
refused by name, on every rank alike (the decision depends on the placement only).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from funcsparse.distributed.masks import refuse, strategy
from funcsparse.distributed.shards import Shards
from funcsparse.methods.dynamic import SET, RigL

__all__: list[str] = []


@strategy(SET, RigL)
def _dynamic(method: SET | RigL, shards: Shards, data: dict[str, Any], where: str) -> Tensor:
    raise refuse(
        where,
        method,
        shards,
        "dynamic sparse training on sharded leaves is not supported yet; train the "
        "dynamic rules on replicated (or unsharded) leaves",
    )
