"""Squash (stub: being written)."""

from __future__ import annotations

from typing import Any

__all__ = ["squash"]


def squash(params: Any, masks: Any) -> Any:
    """Stub."""
    raise NotImplementedError
