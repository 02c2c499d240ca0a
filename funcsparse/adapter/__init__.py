"""A drop-in for torch.ao.pruning's object API, built on funcsparse's pure functions.

Switch legacy code by replacing the package prefix, at the top level or in a submodule
path::

    import funcsparse.adapter as pruning  # was: import torch.ao.pruning as pruning
    from funcsparse.adapter.sparsifier.utils import FakeSparsity  # was: torch.ao.pruning...

Every public module and name of ``torch.ao.pruning`` (``sparsifier.utils``,
``sparsifier.weight_norm_sparsifier``, ``scheduler.cubic_scheduler``, ...) exists here at
the same relative path. Every mask comes from :class:`funcsparse.WeightNorm` /
:class:`funcsparse.NearlyDiagonal` and every level from :mod:`funcsparse.schedules`; the
adapter keeps only the objects, the parametrizations and the state that the legacy API
exposes.
"""

from funcsparse.adapter import scheduler, sparsifier
from funcsparse.adapter._base import BaseSparsifier
from funcsparse.adapter._mappings import (
    get_dynamic_sparse_quantized_mapping,
    get_static_sparse_quantized_mapping,
)
from funcsparse.adapter._schedulers import BaseScheduler, CubicSL, LambdaSL
from funcsparse.adapter._sparsifiers import NearlyDiagonalSparsifier, WeightNormSparsifier
from funcsparse.adapter._utils import (
    FakeSparsity,
    UnsupportedOptionError,
    fqn_to_module,
    get_arg_info_from_tensor_fqn,
    module_to_fqn,
)

__all__ = [
    "BaseScheduler",
    "BaseSparsifier",
    "CubicSL",
    "FakeSparsity",
    "LambdaSL",
    "NearlyDiagonalSparsifier",
    "UnsupportedOptionError",
    "WeightNormSparsifier",
    "fqn_to_module",
    "get_arg_info_from_tensor_fqn",
    "get_dynamic_sparse_quantized_mapping",
    "get_static_sparse_quantized_mapping",
    "module_to_fqn",
    "scheduler",
    "sparsifier",
]
