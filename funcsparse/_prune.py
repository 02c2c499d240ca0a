"""Pruning that returns more than masks: the masks and the pruned params (SparseGPT's updates)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from funcsparse.methods._base import MaskMethod

__all__ = ["Pruned", "prune"]


class Pruned(NamedTuple):
    """What :func:`prune` returns (stub; issue 12 fills it in)."""

    masks: Any
    params: Any
    info: dict[str, dict[str, float]]


def prune(
    params: Any,
    rules: Mapping[str, MaskMethod | None],
    *,
    prev_masks: Any = None,
    **leaf_data: Any,
) -> Pruned:
    """Stub (issue 12)."""
    raise NotImplementedError("prune: not implemented yet")
