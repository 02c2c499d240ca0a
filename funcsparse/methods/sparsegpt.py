"""SparseGPT (stub; issue 12 fills it in)."""

from __future__ import annotations

__all__ = ["SparseGPT"]


class SparseGPT:
    """Stub (issue 12)."""
