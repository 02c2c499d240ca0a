"""Per-leaf sparsity levels: OWL (issue 12); uniform and ERK (issue 13)."""

from funcsparse.distributions.owl import owl

__all__ = ["owl"]
