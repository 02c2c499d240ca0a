"""``torch.ao.pruning.sparsifier.nearly_diagonal_sparsifier``: a re-export of the adapter's."""

from funcsparse.adapter._sparsifiers import NearlyDiagonalSparsifier

__all__ = ["NearlyDiagonalSparsifier"]
