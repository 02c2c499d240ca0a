"""Block-by-block calibration and pruning of large models (stub; issue 12 fills it in)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from funcsparse._prune import Pruned
from funcsparse.methods._base import MaskMethod

__all__ = ["prune_blocks"]


def prune_blocks(
    model: nn.Module,
    batches: Iterable[Any],
    rules: Mapping[str, MaskMethod | None],
    *,
    blocks: Any,
    progress: bool | None = None,
) -> Pruned:
    """Stub (issue 12)."""
    raise NotImplementedError("prune_blocks: not implemented yet")
