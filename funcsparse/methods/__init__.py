"""Pruning methods: one module per method, each a frozen config mapping a tensor to a mask."""

from funcsparse.methods._base import LeafProblem, MaskMethod
from funcsparse.methods.nearly_diagonal import NearlyDiagonal
from funcsparse.methods.weight_norm import WeightNorm

__all__ = ["LeafProblem", "MaskMethod", "NearlyDiagonal", "WeightNorm"]
