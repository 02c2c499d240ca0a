"""Per-leaf sparsity levels, ``{path: level}``: OWL (issue 12); uniform and ERK (issue 13).

A distribution maps a model (its params, and what it reads: input norms for OWL) and a
target level to one level per leaf; :func:`level_rules` turns those levels into a rules
mapping for ``fs.compute_masks`` (or ``fs.Pruner``) with the method of your choice.
:func:`uniform` and :func:`erk` round their levels so that the total count of pruned
weights is exact; :func:`per_leaf` writes levels by path or pattern.
"""

from funcsparse.distributions.erk import erk
from funcsparse.distributions.level_rules import level_rules
from funcsparse.distributions.owl import owl
from funcsparse.distributions.per_leaf import per_leaf
from funcsparse.distributions.uniform import uniform

__all__ = ["erk", "level_rules", "owl", "per_leaf", "uniform"]
