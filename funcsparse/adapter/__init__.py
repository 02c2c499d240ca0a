"""A drop-in for torch.ao.pruning's object API, built on funcsparse's pure functions.

Switch legacy code by changing one import::

    import funcsparse.adapter as pruning  # was: import torch.ao.pruning as pruning

Every mask comes from :class:`funcsparse.WeightNorm` / :class:`funcsparse.NearlyDiagonal`
and every level from :mod:`funcsparse.schedules`; the adapter keeps only the objects, the
parametrizations and the state that the legacy API exposes.
"""

from funcsparse.adapter._base import BaseSparsifier
from funcsparse.adapter._schedulers import BaseScheduler, CubicSL, LambdaSL
from funcsparse.adapter._sparsifiers import NearlyDiagonalSparsifier, WeightNormSparsifier
from funcsparse.adapter._utils import (
    FakeSparsity,
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
    "WeightNormSparsifier",
    "fqn_to_module",
    "get_arg_info_from_tensor_fqn",
    "module_to_fqn",
]
