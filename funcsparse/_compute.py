"""compute_masks: a rules mapping applied to a params pytree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from funcsparse._rules import assign_rules
from funcsparse._tree import flatten_with_paths, unflatten
from funcsparse.methods._base import MaskMethod

__all__ = ["compute_masks"]


def compute_masks(params: Any, rules: Mapping[str, MaskMethod | None]) -> Any:
    """Compute a bool mask for every leaf of ``params`` that a rule matches.

    Every matched leaf is checked before any mask is computed, so a bad leaf raises before
    any work is done. Inputs are never mutated.

    Examples:
        >>> import torch, funcsparse as fs
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> params = dict(model.named_parameters())
        >>> masks = fs.compute_masks(params, {"*.weight": fs.WeightNorm(sparsity_level=0.5)})
        >>> {name: None if m is None else m.float().mean().item() for name, m in masks.items()}
        {'0.weight': 0.5, '0.bias': None, '2.weight': 0.5, '2.bias': None}

    Args:
        params: a pytree of tensors (optree), e.g. ``dict(model.named_parameters())`` or
            nested dicts, lists and tuples. Leaf paths are dotted: ``"seq.0.weight"``.
        rules: leaf paths or glob patterns mapped to methods (or None to exclude); see
            :mod:`funcsparse._rules` for matching and precedence.

    Returns:
        A pytree with ``params``' structure: a ``torch.bool`` mask of the leaf's shape where
        a rule applies (``True`` keeps), None elsewhere.

    Raises:
        TypeError: ``rules`` is malformed, or a matched leaf has a type or dtype its method
            cannot handle.
        ValueError: a rule matches no leaf, two patterns match one leaf, or a matched leaf
            has a shape its method cannot handle. The message names the rule, the method,
            the leaf path and the value.
    """
    paths, leaves, spec = flatten_with_paths(params)
    assignments = assign_rules(paths, rules, function="compute_masks")
    for path, leaf, assigned in zip(paths, leaves, assignments, strict=True):
        if assigned is None:
            continue
        problem = assigned.method.leaf_problem(leaf)
        if problem is not None:
            name = type(assigned.method).__name__
            raise problem.error(
                f"compute_masks: rule {assigned.key!r} ({name}) got {problem.got} at "
                f"{path!r}; {problem.need}"
            )
    masks: list[Tensor | None] = [
        None if assigned is None else assigned.method(leaf)
        for leaf, assigned in zip(leaves, assignments, strict=True)
    ]
    return unflatten(spec, masks)
