"""Which leaves a distribution spreads its target over, and which of them stay dense.

Shared by :func:`funcsparse.distributions.uniform` and :func:`funcsparse.distributions.erk`:
the leaves taking part are chosen by ``paths`` (exact paths or glob patterns, as rules'
keys) or, by default, every floating tensor of at least 2 dims; ``dense``, ``dense_first``
and ``dense_last`` name those of them kept at level 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from funcsparse._errors import describe, short_repr
from funcsparse._rules import glob_to_regex, is_pattern
from funcsparse._tree import flatten_with_paths, in_dict_order
from funcsparse.distributions._balance import apportion, level_of_count

__all__ = ["Leaf", "choose_leaves", "exact_levels", "pruned_total", "some_paths"]


class Leaf(NamedTuple):
    """One leaf taking part: its path, shape, number of entries and whether it stays dense."""

    path: str
    shape: tuple[int, ...]
    numel: int
    dense: bool


def some_paths(paths: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` of ``paths``, quoted, and how many more."""
    text = ", ".join(short_repr(path) for path in paths[:shown])
    return text + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _keys(function: str, name: str, value: object) -> list[str]:
    """``value`` (a str, or a sequence of str) as a list of paths or patterns."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(key, str) for key in value):
        raise TypeError(
            f"{function}: {name} must be a leaf path or glob pattern (str) or a sequence of "
            f"them, got {describe(value)}"
        )
    return list(value)


def _matching(function: str, name: str, keys: list[str], paths: list[str], among: str) -> set[str]:
    """The paths that ``keys`` select: a key equal to a path selects it, otherwise a glob
    pattern selects every path it matches; a key that selects nothing is a ValueError."""
    known = set(paths)
    chosen: set[str] = set()
    for key in keys:
        if key in known:
            chosen.add(key)
            continue
        hits: list[str] = []
        if is_pattern(key):
            try:
                regex = glob_to_regex(key)
            except re.error as err:
                raise ValueError(
                    f"{function}: {name} pattern {short_repr(key)} is not a valid glob ({err})"
                ) from None
            hits = [path for path in paths if regex.fullmatch(path)]
        if not hits:
            raise ValueError(
                f"{function}: {name} holds {short_repr(key)}, which matches no {among} "
                f"(those: {some_paths(paths, 8)})"
            )
        chosen.update(hits)
    return chosen


def choose_leaves(
    params: object,
    *,
    function: str,
    paths: object,
    dense: object,
    dense_first: object,
    dense_last: object,
) -> list[Leaf]:
    """The leaves taking part, in ``params``' order (a flat dict's key order, else optree's
    flatten order), each marked dense or not.

    Raises:
        TypeError: ``params`` is not a pytree of tensors; ``paths`` or ``dense`` is not a
            str or a sequence of str; ``dense_first``/``dense_last`` not a bool; a leaf
            chosen by ``paths`` that is not floating-point.
        ValueError: a key of ``paths`` or ``dense`` that matches no leaf (of those taking
            part, for ``dense``); a 0-dim leaf chosen by ``paths``; no leaf taking part.
    """
    for name, flag in (("dense_first", dense_first), ("dense_last", dense_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{function}: {name} must be a bool, got {describe(flag)}")
    leaf_paths, leaves, _ = flatten_with_paths(params, function=function, tensors=True)
    ordered: dict[str, Tensor] = in_dict_order(params, dict(zip(leaf_paths, leaves, strict=True)))
    if paths is None:
        taking = [p for p, t in ordered.items() if t.is_floating_point() and t.dim() >= 2]
        if not taking:
            raise ValueError(
                f"{function}: params holds no floating tensor of 2 or more dims (the leaves "
                f"taking part by default); its leaves: {some_paths(list(ordered), 8)}; name "
                "the leaves with paths="
            )
    else:
        picked = _matching(
            function, "paths", _keys(function, "paths", paths), list(ordered), "leaf"
        )
        taking = [p for p in ordered if p in picked]
        for path in taking:
            tensor = ordered[path]
            if not tensor.is_floating_point():
                raise TypeError(
                    f"{function}: paths chose the leaf at {path!r}, {describe(tensor)}; the "
                    "leaves taking part must be floating-point weights"
                )
            if tensor.dim() == 0:
                raise ValueError(
                    f"{function}: paths chose the leaf at {path!r}, {describe(tensor)}; the "
                    "leaves taking part need at least 1 dim"
                )
    forced = _matching(
        function, "dense", _keys(function, "dense", dense), taking, "leaf taking part"
    )
    if dense_first:
        forced.add(taking[0])
    if dense_last:
        forced.add(taking[-1])
    return [
        Leaf(path, tuple(ordered[path].shape), math.prod(ordered[path].shape), path in forced)
        for path in taking
    ]


def pruned_total(function: str, sparsity: float, leaves: Sequence[Leaf]) -> int:
    """``round(sparsity * N)`` over the ``N`` entries of ``leaves`` (the methods' count rule
    on all of them at once), or a ValueError where the dense leaves leave too few.

    Raises:
        ValueError: the total is more than the entries of the leaves not kept dense; the
            message names the dense leaves and the highest level within reach.
    """
    everything = sum(leaf.numel for leaf in leaves)
    total = round(sparsity * everything)
    held = [leaf for leaf in leaves if leaf.dense]
    room = everything - sum(leaf.numel for leaf in held)
    if total > room:
        named = some_paths([leaf.path for leaf in held])
        reach = room / everything if everything else 0.0
        raise ValueError(
            f"{function}: sparsity={sparsity!r} prunes {total} of the {everything} weights "
            f"taking part, but the {len(held)} leaf(s) kept dense ({named}) "
            f"hold {everything - room} of them: at most {room} can be pruned (sparsity <= "
            f"{reach:.6g}); keep fewer leaves dense or lower the target"
        )
    return total


def exact_levels(
    function: str, leaves: Sequence[Leaf], ideal: Sequence[float], total: int
) -> dict[str, float]:
    """``{path: level}`` pruning ``total`` weights in all: ``ideal`` (pruned weights per
    leaf, summing to ``total`` up to rounding) made integers by :func:`apportion`, dense
    leaves at 0, and each count turned into the level that the methods count back to it.

    Raises:
        ValueError: a leaf of more than ``2**53`` entries whose count no float level gives.
    """
    caps = [0 if leaf.dense else leaf.numel for leaf in leaves]
    counts = apportion(ideal, caps, total)
    levels: dict[str, float] = {}
    for leaf, count in zip(leaves, counts, strict=True):
        level = level_of_count(count, leaf.numel)
        if level is None:
            raise ValueError(
                f"{function}: no float level prunes exactly {count} of the {leaf.numel} "
                f"entries of the leaf at {leaf.path!r} (round(level * numel) skips it past "
                "2**53 entries)"
            )
        levels[leaf.path] = level
    return levels
