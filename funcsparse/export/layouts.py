"""torch's sparse layouts (stub: being written)."""

from __future__ import annotations

from typing import Any

__all__ = ["to_bsr", "to_csr", "to_semi_structured"]


def to_csr(params: Any, masks: Any) -> Any:
    """Stub."""
    raise NotImplementedError


def to_bsr(params: Any, masks: Any, blocksize: Any) -> Any:
    """Stub."""
    raise NotImplementedError


def to_semi_structured(params: Any, masks: Any) -> Any:
    """Stub."""
    raise NotImplementedError
