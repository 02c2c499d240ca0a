"""Per-leaf levels written by hand: ``{path or pattern: level}`` resolved to ``{path: level}``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from funcsparse._errors import describe, short_repr
from funcsparse._rules import assign_rules
from funcsparse._tree import flatten_with_paths, in_dict_order
from funcsparse.methods.magnitude import Magnitude

__all__ = ["per_leaf"]

_FUNCTION = "per_leaf"


def per_leaf(params: object, levels: Mapping[str, float | None]) -> dict[str, float]:
    """``{path: level}`` for the leaves of ``params`` that ``levels``' keys name.

    The keys are leaf paths or glob patterns with the rules' semantics (``*`` within one
    dotted component, ``**`` across them; an exact path beats every pattern; two patterns
    matching one leaf are an error; a key matching no leaf is an error); a value of None
    leaves the matched leaves out. Every leaf's level is the given one, and each method
    prunes ``round(level * numel)`` of it (``fs.Wanda``: ``int(in_features * level)`` per
    row). The result merges with another distribution's by dict union, e.g.
    ``erk(...) | per_leaf(params, {"head.weight": 0.5})``, and goes to
    :func:`funcsparse.distributions.level_rules`.

    Examples:
        >>> import torch, funcsparse as fs
        >>> params = {"blocks.0.weight": torch.empty(4, 4), "blocks.1.weight": torch.empty(4, 4),
        ...           "head.weight": torch.empty(2, 4), "head.bias": torch.empty(2)}
        >>> fs.distributions.per_leaf(params, {"blocks.*.weight": 0.75, "head.weight": 0.5,
        ...                                    "blocks.1.weight": None})
        {'blocks.0.weight': 0.75, 'head.weight': 0.5}

    Args:
        params: a pytree of tensors (``dict(model.named_parameters())``).
        levels: leaf paths or glob patterns mapped to fractions in [0, 1] (or None).

    Returns:
        ``{path: level}`` for every leaf a key gives a level, in ``params``' order (a flat
        dict's key order, otherwise optree's flatten order).

    Raises:
        TypeError: ``params`` is not a pytree of tensors; ``levels`` is not a mapping of
            str to real numbers or None (naming the key).
        ValueError: a level NaN or outside [0, 1] (naming the key); a key matching no
            leaf; two patterns matching one leaf.
    """
    if not isinstance(levels, Mapping):
        raise TypeError(
            f"{_FUNCTION}: levels must be a mapping of leaf paths or patterns to levels, got "
            f"{describe(levels)}"
        )
    as_rules: dict[str, Magnitude | None] = {}
    for key, level in levels.items():
        if not isinstance(key, str):
            raise TypeError(
                f"{_FUNCTION}: levels has a key {describe(key)}; keys are leaf paths or patterns"
            )
        if level is None:
            as_rules[key] = None
            continue
        if isinstance(level, bool) or not isinstance(level, numbers.Real):
            raise TypeError(
                f"{_FUNCTION}: the level at {key!r} is {describe(level)}; expected a fraction "
                "in [0, 1] or None"
            )
        value = float(level)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{_FUNCTION}: the level at {key!r} is {short_repr(level)}; expected a "
                "fraction in [0, 1]"
            )
        # The rules' matcher (one precedence and error rule for rules and levels) takes
        # methods: each level travels as a Magnitude holding it.
        as_rules[key] = Magnitude(sparsity=value)
    paths, _, _ = flatten_with_paths(params, function=_FUNCTION, tensors=True)
    found: dict[str, float] = {}
    for path, assignment in zip(
        paths, assign_rules(paths, as_rules, function=_FUNCTION), strict=True
    ):
        if assignment is not None:
            level = getattr(assignment.method, "sparsity", None)
            found[path] = float(level if level is not None else 0.0)
    return in_dict_order(params, found)
