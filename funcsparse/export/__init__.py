"""Where pruned params go: sparse checkpoints, squashed dense params, torch's sparse layouts.

- :func:`save_sparse` / :func:`load_sparse`: checkpoints that store the kept values and the
  masks bit-packed, so a pruned model's file shrinks with its sparsity; :func:`iter_sparse`
  reads one leaf at a time, :func:`stored_nbytes` is what a leaf costs in such a file and
  :func:`is_sparse_checkpoint` tells one from a plain state_dict.
- :func:`squash`: the masked dense params (pruned entries +0.0), for any framework.
- :func:`to_csr`, :func:`to_bsr`, :func:`to_semi_structured`: torch's sparse layouts, after a
  check that each mask has the pattern the layout needs.
- :func:`detect_pattern`: what structure a mask has (unstructured, N:M, block, channel);
  :func:`check_nm` and :func:`check_blocks`: the pattern checks the layouts run.
"""

from funcsparse.export.checkpoint import (
    SparseLeaves,
    is_sparse_checkpoint,
    iter_sparse,
    load_sparse,
    save_sparse,
    stored_nbytes,
)
from funcsparse.export.layouts import to_bsr, to_csr, to_semi_structured
from funcsparse.export.patterns import Pattern, check_blocks, check_nm, detect_pattern
from funcsparse.export.squash import squash

__all__ = [
    "Pattern",
    "SparseLeaves",
    "check_blocks",
    "check_nm",
    "detect_pattern",
    "is_sparse_checkpoint",
    "iter_sparse",
    "load_sparse",
    "save_sparse",
    "squash",
    "stored_nbytes",
    "to_bsr",
    "to_csr",
    "to_semi_structured",
]
