"""Sparse checkpoints (stub: being written)."""

from __future__ import annotations

from typing import Any

__all__ = ["iter_sparse", "load_sparse", "save_sparse"]


def save_sparse(path: Any, params: Any, masks: Any) -> None:
    """Stub."""
    raise NotImplementedError


def load_sparse(path: Any) -> Any:
    """Stub."""
    raise NotImplementedError


def iter_sparse(path: Any) -> Any:
    """Stub."""
    raise NotImplementedError
