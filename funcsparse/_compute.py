"""compute_masks: a rules mapping applied to a params pytree."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from funcsparse._rules import assign_rules
from funcsparse._tree import flatten_with_paths, unflatten
from funcsparse.methods._base import MaskMethod, describe, require_int

__all__ = ["compute_masks"]


def compute_masks(
    params: Any, rules: Mapping[str, MaskMethod | None], *, batch_dims: int = 0
) -> Any:
    """Compute a bool mask for every leaf of ``params`` that a rule matches.

    Every matched leaf is checked before any mask is computed, so a bad leaf raises before
    any work is done. Inputs are never mutated.

    With ``batch_dims=1``, every leaf carries a leading ensemble dimension, as
    ``torch.func.stack_module_state`` makes: each member gets the mask it would get alone,
    computed for all members at once by ``torch.func.vmap`` over the method. A method whose
    ``vmappable`` is False is looped over the members instead (the documented fallback).

    Examples:
        >>> import torch, funcsparse as fs
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> params = dict(model.named_parameters())
        >>> masks = fs.compute_masks(params, {"*.weight": fs.WeightNorm(sparsity_level=0.5)})
        >>> {name: None if m is None else m.float().mean().item() for name, m in masks.items()}
        {'0.weight': 0.5, '0.bias': None, '2.weight': 0.5, '2.bias': None}

    Args:
        params: a pytree of tensors (optree), e.g. ``dict(model.named_parameters())`` or
            nested dicts, lists and tuples. Leaf paths are dotted: ``"seq.0.weight"``.
        rules: leaf paths or glob patterns mapped to methods (or None to exclude). ``*``
            matches within one path component, ``**`` across components; an exact path
            beats a pattern (docs/index.md, "Rules").
        batch_dims: leading dimensions of every matched leaf that index independent
            members (an ensemble). Default 0.

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
    batch_dims = require_int("compute_masks", "batch_dims", batch_dims)
    if batch_dims < 0:
        raise ValueError(f"compute_masks: batch_dims must be >= 0, got {batch_dims}")
    paths, leaves, spec = flatten_with_paths(params, function="compute_masks")
    assignments = assign_rules(paths, rules, function="compute_masks")
    for path, leaf, assigned in zip(paths, leaves, assignments, strict=True):
        if assigned is None:
            continue
        name = type(assigned.method).__name__
        where = f"compute_masks: rule {assigned.key!r} ({name})"
        if isinstance(leaf, Tensor) and leaf.dim() < batch_dims:
            raise ValueError(
                f"{where} got {describe(leaf)} at {path!r}; batch_dims={batch_dims} needs "
                f"at least {batch_dims} dimensions"
            )
        problem = assigned.method.leaf_problem(_member(leaf, batch_dims))
        if problem is not None:
            raise problem.error(f"{where} got {problem.got} at {path!r}; {problem.need}")
    masks: list[Tensor | None] = []
    for path, leaf, assigned in zip(paths, leaves, assignments, strict=True):
        if assigned is None:
            masks.append(None)
            continue
        try:
            masks.append(_batched_mask(assigned.method, leaf, batch_dims))
        except (TypeError, ValueError) as err:
            name = type(assigned.method).__name__
            raise type(err)(
                f"compute_masks: rule {assigned.key!r} ({name}) at {path!r}: {err}"
            ) from err
    return unflatten(spec, masks)


def _member(leaf: object, batch_dims: int) -> object:
    """What one ensemble member's leaf looks like (shape and dtype only, no data)."""
    if batch_dims == 0 or not isinstance(leaf, Tensor):
        return leaf
    return torch.empty(leaf.shape[batch_dims:], dtype=leaf.dtype, device="meta")


def _batched_mask(method: MaskMethod, leaf: Tensor, batch_dims: int) -> Tensor:
    """``method(leaf)`` for every member along the leading ``batch_dims`` dimensions."""
    if batch_dims == 0:
        return method(leaf)
    if leaf.numel() == 0:
        return torch.ones(leaf.shape, dtype=torch.bool, device=leaf.device)
    if method.vmappable:
        batched: Callable[[Tensor], Tensor] = method
        for _ in range(batch_dims):
            batched = torch.func.vmap(batched)
        # A mask that does not depend on the data comes back expanded over the members;
        # give every member its own memory.
        return batched(leaf.detach()).contiguous()
    members = leaf.detach().reshape(-1, *leaf.shape[batch_dims:])
    masks = [method(member) for member in members]
    if not masks:
        return torch.ones(leaf.shape, dtype=torch.bool, device=leaf.device)
    return torch.stack(masks).reshape(leaf.shape)
