"""Per-leaf levels (``{path: level}``) to a rules mapping: one method per leaf at its level."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping

from funcsparse._errors import describe, short_repr
from funcsparse.methods._base import MaskMethod

__all__ = ["level_rules"]

_FUNCTION = "level_rules"


def level_rules(levels: Mapping[str, float], method: MaskMethod) -> dict[str, MaskMethod]:
    """A rules mapping that prunes every leaf of ``levels`` with ``method`` at its level.

    ``levels`` is what a distribution returns (``{path: level}``, e.g. from
    :func:`funcsparse.distributions.owl`); every path gets ``method`` with its level field
    (``method.level_field``: ``sparsity`` for ``fs.Wanda``, ``fs.Magnitude``,
    ``fs.SparseGPT``) replaced by the path's level. The method's own level is only a
    template: ``fs.Magnitude(0.5)`` and ``fs.Magnitude(0.9)`` give the same rules. The
    paths are exact rule keys, so the result goes straight to ``fs.compute_masks`` (or
    ``fs.prune``, ``fs.Pruner``); merge it with other rules by dict union.

    Examples:
        >>> import funcsparse as fs
        >>> from funcsparse.distributions import level_rules
        >>> rules = level_rules({"fc1.weight": 0.4, "fc2.weight": 0.6}, fs.Wanda())
        >>> {path: (type(rule).__name__, rule.sparsity) for path, rule in rules.items()}
        {'fc1.weight': ('Wanda', 0.4), 'fc2.weight': ('Wanda', 0.6)}
        >>> level_rules({"w": 0.25}, fs.Magnitude(0.5))["w"].sparsity
        0.25

    Args:
        levels: ``{path: level}``: leaf paths (str) to fractions in [0, 1].
        method: a funcsparse method with a level (its class's ``level_field`` is set), given
            without ``count``.

    Returns:
        ``{path: method at that level}``, in ``levels``' order.

    Raises:
        TypeError: ``levels`` is not a mapping of str to real numbers; ``method`` is not a
            funcsparse method, has no level field (``fs.NM``, ``fs.NearlyDiagonal``) or is
            given a ``count``; a level the method's own validation refuses by type.
        ValueError: a level is NaN or outside [0, 1], or the method refuses it (e.g.
            ``fs.Wanda(n=2, m=4)``, whose level is fixed by its N:M pattern); the message
            names the path.
    """
    if not isinstance(method, MaskMethod):
        raise TypeError(f"{_FUNCTION}: method must be a funcsparse method, got {describe(method)}")
    name = type(method).__name__
    field = method.level_field
    if field is None:
        raise TypeError(
            f"{_FUNCTION}: {name} has no level to set per leaf (its level_field is None); use "
            "a method with a sparsity, e.g. fs.Wanda(), fs.Magnitude(0.5), fs.SparseGPT()"
        )
    if getattr(method, "count", None) is not None:
        raise TypeError(
            f"{_FUNCTION}: {method!r} prunes a count; give the method with a fraction "
            f"({field}=...) instead, which level_rules replaces per leaf"
        )
    if not isinstance(levels, Mapping):
        raise TypeError(
            f"{_FUNCTION}: levels must be a mapping of leaf paths to levels ({{path: level}}), "
            f"got {describe(levels)}"
        )
    rules: dict[str, MaskMethod] = {}
    for path, level in levels.items():
        if not isinstance(path, str):
            raise TypeError(f"{_FUNCTION}: levels has a key {describe(path)}; keys are leaf paths")
        if isinstance(level, bool) or not isinstance(level, numbers.Real):
            raise TypeError(
                f"{_FUNCTION}: the level at {path!r} is {describe(level)}; expected a fraction "
                "in [0, 1]"
            )
        try:
            value = float(level)
        except OverflowError:  # an int (or Fraction) too large for a float
            value = math.inf if level > 0 else -math.inf
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{_FUNCTION}: the level at {path!r} is {short_repr(level)}; expected a "
                "fraction in [0, 1]"
            )
        try:
            rules[path] = dataclasses.replace(method, **{field: value})
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"{_FUNCTION}: {name} refuses the level {value!r} at {path!r}: {err}"
            ) from None
    return rules
