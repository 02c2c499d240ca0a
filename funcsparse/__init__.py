"""funcsparse: functional, stateless pruning masks for PyTorch, built on torch.func."""

import torch.distributed as _dist

from funcsparse import export, schedules
from funcsparse._apply import apply_masks, apply_masks_, functional_call
from funcsparse._compute import compute_masks
from funcsparse.calibration import collect_input_norms
from funcsparse.export import load_sparse, save_sparse, squash
from funcsparse.methods import (
    NM,
    GlobalMagnitude,
    GlobalMethod,
    LeafProblem,
    LnStructured,
    Magnitude,
    MaskMethod,
    Movement,
    NearlyDiagonal,
    Random,
    RandomStructured,
    Wanda,
    WeightNorm,
)
from funcsparse.pruner import Pruner, PrunerState
from funcsparse.scores import magnitude_scores, saliency_scores, wanda_scores
from funcsparse.sensitivity import Sensitivity, sensitivity

if _dist.is_available():  # registers the backend that masks DTensor leaves
    from funcsparse import distributed

__version__ = "0.1.0"

__all__ = [
    "NM",
    "GlobalMagnitude",
    "GlobalMethod",
    "LeafProblem",
    "LnStructured",
    "Magnitude",
    "MaskMethod",
    "Movement",
    "NearlyDiagonal",
    "Pruner",
    "PrunerState",
    "Random",
    "RandomStructured",
    "Sensitivity",
    "Wanda",
    "WeightNorm",
    "__version__",
    "apply_masks",
    "apply_masks_",
    "collect_input_norms",
    "compute_masks",
    "distributed",
    "export",
    "functional_call",
    "load_sparse",
    "magnitude_scores",
    "saliency_scores",
    "save_sparse",
    "schedules",
    "sensitivity",
    "squash",
    "wanda_scores",
]
