"""Mask patterns (stub: being written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Pattern", "detect_pattern"]


@dataclass(frozen=True)
class Pattern:
    """Stub."""

    kind: str


def detect_pattern(mask: Any) -> Pattern:
    """Stub."""
    raise NotImplementedError
