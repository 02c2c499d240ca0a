"""The only module that imports optree: leaf paths, flattening and rebuilding pytrees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optree
from optree import PyTreeSpec

__all__ = ["PyTreeSpec", "flatten_with_paths", "join_path", "leaves_like", "unflatten"]


def join_path(path: Sequence[Any]) -> str:
    """Turn an optree path (a tuple of keys) into the dotted ``named_parameters()`` form."""
    return ".".join(str(key) for key in path)


def flatten_with_paths(tree: Any) -> tuple[list[str], list[Any], PyTreeSpec]:
    """Flatten ``tree`` into dotted leaf paths, leaves and its structure.

    ``None`` is an empty subtree, not a leaf, as in optree and JAX.
    """
    paths, leaves, spec = optree.tree_flatten_with_path(tree)
    return [join_path(path) for path in paths], leaves, spec


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
