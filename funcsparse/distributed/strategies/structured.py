"""Sharded strategies of the methods that rank groups of entries: NM, Wanda, NearlyDiagonal,
WeightNorm, LnStructured, RandomStructured."""

from __future__ import annotations
