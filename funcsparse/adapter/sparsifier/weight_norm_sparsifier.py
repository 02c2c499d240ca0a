"""``torch.ao.pruning.sparsifier.weight_norm_sparsifier``: a re-export of the adapter's."""

from funcsparse.adapter._sparsifiers import WeightNormSparsifier

__all__ = ["WeightNormSparsifier"]
