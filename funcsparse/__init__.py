"""funcsparse: functional, stateless pruning masks for PyTorch, built on torch.func."""

from funcsparse._apply import apply_masks, functional_call
from funcsparse._compute import compute_masks
from funcsparse.methods import LeafProblem, MaskMethod, NearlyDiagonal, WeightNorm

__version__ = "0.1.0"

__all__ = [
    "LeafProblem",
    "MaskMethod",
    "NearlyDiagonal",
    "WeightNorm",
    "__version__",
    "apply_masks",
    "compute_masks",
    "functional_call",
]
