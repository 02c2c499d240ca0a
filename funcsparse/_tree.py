"""The only module that imports optree: leaf paths, flattening and rebuilding pytrees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optree
from optree import PyTreeSpec

__all__ = [
    "PyTreeSpec",
    "describe_structure_mismatch",
    "flatten_with_paths",
    "join_path",
    "leaves_like",
    "unflatten",
]


def join_path(path: Sequence[Any]) -> str:
    """Turn an optree path (a tuple of keys) into the dotted ``named_parameters()`` form."""
    return ".".join(str(key) for key in path)


def flatten_with_paths(
    tree: Any, *, function: str = "flatten_with_paths"
) -> tuple[list[str], list[Any], PyTreeSpec]:
    """Flatten ``tree`` into dotted leaf paths, leaves and its structure.

    ``None`` is an empty subtree, not a leaf, as in optree and JAX.

    Raises:
        ValueError: two leaves have the same dotted path (``{"a.b": x, "a": {"b": y}}``),
            which would make rules and module names ambiguous.
    """
    raw_paths, leaves, spec = optree.tree_flatten_with_path(tree)
    paths = [join_path(path) for path in raw_paths]
    if len(set(paths)) != len(paths):
        twice = next(path for i, path in enumerate(paths) if path in paths[:i])
        raise ValueError(f"{function}: two leaves have the path {twice!r}; rename a key")
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
