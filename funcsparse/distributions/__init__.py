"""Per-leaf sparsity levels, ``{path: level}``: OWL (issue 12); uniform and ERK (issue 13).

A distribution maps a model (its params, and what it reads: input norms for OWL) and a
target level to one level per leaf; :func:`level_rules` turns those levels into a rules
mapping for ``fs.compute_masks`` with the method of your choice.
"""

from funcsparse.distributions.level_rules import level_rules
from funcsparse.distributions.owl import owl

__all__ = ["level_rules", "owl"]
