"""Pruning methods: one module per method, each a frozen config mapping a tensor to a mask.

Importing this package registers every method (see ``registered_methods``), so the shared
invariant suite of ``funcsparse.testing`` covers all of them.
"""

from funcsparse.methods._base import (
    GlobalMethod,
    LeafProblem,
    LeafResult,
    MaskMethod,
    registered_methods,
)
from funcsparse.methods.dynamic import SET, RigL
from funcsparse.methods.global_magnitude import GlobalMagnitude
from funcsparse.methods.magnitude import Magnitude
from funcsparse.methods.movement import Movement
from funcsparse.methods.nearly_diagonal import NearlyDiagonal
from funcsparse.methods.nm import NM
from funcsparse.methods.random import Random
from funcsparse.methods.sparsegpt import SparseGPT
from funcsparse.methods.structured import LnStructured, RandomStructured
from funcsparse.methods.wanda import Wanda
from funcsparse.methods.weight_norm import WeightNorm

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
    "Random",
    "RandomStructured",
    "RigL",
    "SparseGPT",
    "Wanda",
    "WeightNorm",
    "registered_methods",
]
