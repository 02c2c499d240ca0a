"""OWL: outlier-weighted layerwise sparsity (stub; issue 12 fills it in)."""

from __future__ import annotations

from typing import Any

__all__ = ["owl"]


def owl(params: Any, input_norms: Any, *, sparsity: float) -> dict[str, float]:
    """Stub (issue 12)."""
    raise NotImplementedError("owl: not implemented yet")
