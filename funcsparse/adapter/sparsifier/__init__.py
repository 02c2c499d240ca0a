"""``torch.ao.pruning.sparsifier``'s path in the adapter: change the prefix, keep the rest.

``from funcsparse.adapter.sparsifier.utils import FakeSparsity`` imports what
``from torch.ao.pruning.sparsifier.utils import FakeSparsity`` did. The modules here only
re-export: the objects live in ``funcsparse.adapter``.
"""

from funcsparse.adapter.sparsifier import (
    base_sparsifier,
    nearly_diagonal_sparsifier,
    utils,
    weight_norm_sparsifier,
)

__all__ = ["base_sparsifier", "nearly_diagonal_sparsifier", "utils", "weight_norm_sparsifier"]
