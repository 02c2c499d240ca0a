"""funcsparse: functional, stateless pruning masks for PyTorch, built on torch.func."""

import torch.distributed as _dist

from funcsparse import distributions, export, schedules
from funcsparse._apply import apply_masks, apply_masks_, functional_call
from funcsparse._compute import compute_masks
from funcsparse._prune import Pruned, prune
from funcsparse.calibration import collect_hessians, collect_input_norms, collect_statistics
from funcsparse.export import load_sparse, save_sparse, squash
from funcsparse.methods import (
    NM,
    SET,
    GlobalMagnitude,
    GlobalMethod,
    LeafProblem,
    LeafResult,
    LnStructured,
    Magnitude,
    MaskMethod,
    Movement,
    NearlyDiagonal,
    Random,
    RandomStructured,
    RigL,
    SparseGPT,
    Wanda,
    WeightNorm,
)
from funcsparse.optim_state import reset_optimizer_state, reset_optimizer_state_
from funcsparse.pruner import Pruner, PrunerState
from funcsparse.scores import magnitude_scores, saliency_scores, wanda_scores
from funcsparse.sensitivity import Sensitivity, sensitivity
from funcsparse.sequential import prune_blocks

if _dist.is_available():  # registers the backend that masks DTensor leaves
    from funcsparse import distributed

__version__ = "0.1.0"

__all__ = [
    "NM",
    "SET",
    "GlobalMagnitude",
    "GlobalMethod",
    "LeafProblem",
    "LeafResult",
    "LnStructured",
    "Magnitude",
    "MaskMethod",
    "Movement",
    "NearlyDiagonal",
    "Pruned",
    "Pruner",
    "PrunerState",
    "Random",
    "RandomStructured",
    "RigL",
    "Sensitivity",
    "SparseGPT",
    "Wanda",
    "WeightNorm",
    "__version__",
    "apply_masks",
    "apply_masks_",
    "collect_hessians",
    "collect_input_norms",
    "collect_statistics",
    "compute_masks",
    "distributed",
    "distributions",
    "export",
    "functional_call",
    "load_sparse",
    "magnitude_scores",
    "prune",
    "prune_blocks",
    "reset_optimizer_state",
    "reset_optimizer_state_",
    "saliency_scores",
    "save_sparse",
    "schedules",
    "sensitivity",
    "squash",
    "wanda_scores",
]
