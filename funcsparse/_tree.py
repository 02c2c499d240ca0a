"""The only module that imports optree: leaf paths, flattening and rebuilding pytrees."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import optree
import torch
from optree import PyTreeSpec
from torch import Tensor

from funcsparse._errors import describe, short_repr

T = TypeVar("T")

__all__ = [
    "PyTreeSpec",
    "describe_structure_mismatch",
    "flatten_with_paths",
    "in_dict_order",
    "join_path",
    "leaves_like",
    "unflatten",
]


def join_path(path: Sequence[Any]) -> str:
    """Turn an optree path (a tuple of keys) into the dotted ``named_parameters()`` form."""
    return ".".join(str(key) for key in path)


def flatten_with_paths(
    tree: Any, *, function: str = "flatten_with_paths", tensors: bool = False
) -> tuple[list[str], list[Any], PyTreeSpec]:
    """Flatten ``tree`` into dotted leaf paths, leaves and its structure.

    ``None`` is an empty subtree, not a leaf, as in optree and JAX.

    Args:
        tree: a pytree (dicts, lists, tuples, namedtuples; None is an empty subtree).
        function: the public function named in error messages.
        tensors: whether every leaf must be a ``torch.Tensor`` (params, masks, data).
            Default False.

    Raises:
        TypeError: (``tensors``) a leaf that is not a tensor, naming its path (a module
            passed whole is told to pass ``dict(model.named_parameters())``).
        ValueError: two leaves have the same dotted path (``{"a.b": x, "a": {"b": y}}``),
            which would make rules and module names ambiguous; or the tree is nested too
            deeply to flatten.
    """
    try:
        raw_paths, leaves, spec = optree.tree_flatten_with_path(tree)
    except RecursionError:
        raise ValueError(f"{function}: the pytree is nested too deeply to flatten") from None
    paths = [join_path(path) for path in raw_paths]
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ValueError(
                f"{function}: two leaves have the path {short_repr(path)}; rename a key"
            )
        seen.add(path)
    if tensors:
        for path, leaf in zip(paths, leaves, strict=True):
            if not isinstance(leaf, Tensor):
                where = f"at {short_repr(path)}" if path else "as the whole tree"
                hint = (
                    "; pass dict(model.named_parameters())"
                    if isinstance(leaf, torch.nn.Module)
                    else ""
                )
                raise TypeError(
                    f"{function}: expected a pytree of tensors (dicts, lists, tuples; None "
                    f"for an empty entry), got {describe(leaf)} {where}{hint}"
                )
    return paths, leaves, spec


def describe_structure_mismatch(spec: PyTreeSpec, tree: Any) -> str:
    """A short account of how ``tree``'s leaf paths differ from ``spec``'s."""
    try:
        raw_paths, _, _ = optree.tree_flatten_with_path(tree, none_is_leaf=True)
    except (TypeError, ValueError):
        return f"got {type(tree).__name__}"
    expected = [join_path(path) for path in spec.paths()]
    found = [join_path(path) for path in raw_paths]
    missing = [path for path in expected if path not in set(found)]
    extra = [path for path in found if path not in set(expected)]
    if not missing and not extra:
        return "the same paths in different containers"
    return f"missing {missing[:5]}, unexpected {extra[:5]}"


def unflatten(spec: PyTreeSpec, leaves: Sequence[Any]) -> Any:
    """Rebuild a pytree of ``spec``'s structure from ``leaves`` (``None`` allowed as a leaf)."""
    return optree.tree_unflatten(spec, list(leaves))


def leaves_like(spec: PyTreeSpec, tree: Any) -> list[Any]:
    """The entries of ``tree`` at the leaf positions of ``spec``.

    Raises:
        ValueError: ``tree`` does not have the structure of ``spec`` (optree's reason appended).
    """
    try:
        return list(spec.flatten_up_to(tree))
    except (ValueError, TypeError) as err:
        raise ValueError(str(err)) from None


def in_dict_order(tree: Any, flat: dict[str, T]) -> dict[str, T]:
    """``flat`` (keyed by leaf path) in the key order of ``tree`` when ``tree`` is a flat
    dict holding those keys, as ``dict(model.named_parameters())`` is; otherwise ``flat``.

    optree flattens a dict in sorted key order (``"0.bias"`` before ``"0.weight"``, ``"10."``
    before ``"2."``); results keyed by path read better in the model's own order.

    Examples:
        >>> in_dict_order({"w": 1, "b": None, "a": 2}, {"a": "A", "w": "W"})
        {'w': 'W', 'a': 'A'}
        >>> in_dict_order([1, 2], {"0": "x", "1": "y"})
        {'0': 'x', '1': 'y'}
    """
    if isinstance(tree, Mapping) and set(flat) <= set(tree):
        return {key: flat[key] for key in tree if key in flat}
    return flat
