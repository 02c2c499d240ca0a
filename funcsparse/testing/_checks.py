"""check_masks: every invariant a method promises, checked on one params pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from funcsparse._compute import compute_masks, data_per_leaf
from funcsparse._errors import short_repr
from funcsparse._rules import Assignment, assign_rules
from funcsparse._tree import describe_structure_mismatch, flatten_with_paths, leaves_like
from funcsparse.methods._base import GlobalMethod, MaskMethod, describe
from funcsparse.testing.oracles import torch_ao_mask

__all__ = ["check_leaf_mask", "check_masks"]


def _fail(where: str, what: str) -> AssertionError:
    return AssertionError(f"{where}: {what}")


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and bytes (NaN equals NaN; -0.0 differs from 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(_bytes(a), _bytes(b))


def _bytes(tensor: Tensor) -> Tensor:
    """The bytes of ``tensor``'s values, in order, as a flat uint8 tensor.

    A fresh contiguous copy: ``.contiguous()`` returns a one-entry (or empty) tensor as it
    is, with whatever strides it has (``torch.zeros(1, 2)[:, ::2]`` has stride 2), and
    ``.view(torch.uint8)`` needs stride 1.
    """
    flat = tensor.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8)


def _snapshot(tree: Any) -> list[Any]:
    _, leaves, _ = flatten_with_paths(tree, function="check_masks")
    return [leaf.detach().clone() if isinstance(leaf, Tensor) else leaf for leaf in leaves]


def _level_name(method: MaskMethod) -> str | None:
    """The field holding ``method``'s level: ``count`` where one is given, else its fraction."""
    if getattr(method, "count", None) is not None:
        return "count"
    return method.level_field


def _raised_level(method: MaskMethod) -> MaskMethod | None:
    """``method`` with its level raised a step (None: no level, or at the top)."""
    field = _level_name(method)
    if field is None:
        return None
    value = getattr(method, field)
    try:
        if field == "count":
            return dataclasses.replace(method, count=value + 1)  # type: ignore[type-var]
        if float(value) >= 1:
            return None
        raised = min(1.0, max(float(value), 0.0) + 0.25)
        return dataclasses.replace(method, **{field: raised})  # type: ignore[type-var]
    except (TypeError, ValueError):
        return None


_NO_VALUES = "meta tensors hold no values to check; move it to a real device (cpu, cuda, ...)"


def _check_mask_form(where: str, tensor: Tensor, mask: object) -> Tensor:
    """``mask``, if it is a bool tensor of ``tensor``'s shape on its device; else raise.

    Raises:
        AssertionError: ``mask`` is not a tensor, or has another dtype, shape or device.
        ValueError: ``mask`` is on the meta device (no values to check).
    """
    if not isinstance(mask, Tensor):
        raise _fail(where, f"expected a torch.bool mask, found {describe(mask)}")
    if mask.device.type == "meta":
        raise ValueError(f"{where}: the mask is {describe(mask)}; {_NO_VALUES}")
    if mask.dtype != torch.bool:
        raise _fail(where, f"expected dtype torch.bool, found {mask.dtype}")
    if mask.shape != tensor.shape:
        raise _fail(where, f"expected shape {tuple(tensor.shape)}, found {tuple(mask.shape)}")
    if mask.device != tensor.device:
        raise _fail(where, f"expected a mask on {tensor.device}, found one on {mask.device}")
    return mask


def check_leaf_mask(
    method: MaskMethod,
    tensor: Tensor,
    mask: object,
    *,
    data: Mapping[str, Any] | None = None,
    where: str = "check_leaf_mask",
) -> None:
    """Check one leaf's mask against every invariant ``method`` promises.

    Args:
        method: the method that made (or should have made) ``mask``.
        tensor: the leaf.
        mask: its mask.
        data: the keyword data of the call (``scores``, ``prev_mask``, ...). Default none.
        where: the prefix of the failure message.

    Raises:
        AssertionError: naming ``where`` and what was expected and found (a mask that is
            not a bool tensor of the tensor's shape on its device is one).
        TypeError: ``method`` is not a funcsparse method, ``tensor`` not a tensor, or
            ``data`` not a mapping; or what the method raises on ``tensor``.
        ValueError: ``tensor`` or ``mask`` is on the meta device (no values to check),
            naming ``where``; or what the method raises on ``tensor``.
    """
    if not isinstance(method, MaskMethod):
        raise TypeError(f"{where}: method must be a funcsparse method, got {describe(method)}")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{where}: tensor must be a tensor, got {describe(tensor)}")
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"{where}: data must be a dict of keyword data, got {describe(data)}")
    if tensor.device.type == "meta":
        raise ValueError(f"{where}: tensor is {describe(tensor)}; {_NO_VALUES}")
    kwargs = dict(data or {})
    mask = _check_mask_form(where, tensor, mask)
    before = tensor.detach().clone()
    again = method(tensor, **kwargs)
    if not _same_bits(tensor, before):
        raise _fail(where, "the method mutated the tensor it was given")
    if not torch.equal(again, mask):
        changed = int((again != mask).sum())
        raise _fail(
            where, f"calling the method again gives another mask ({changed} entries differ)"
        )
    if not torch.equal(method(tensor, **kwargs), again):
        raise _fail(where, "two calls on the same tensor give different masks")
    expected = method.expected_zeros(tensor, **kwargs)
    found = int((~mask).sum())
    if expected is not None and found != expected:
        raise _fail(where, f"expected exactly {expected} zeros, found {found}")
    problem = method.structure_problem(tensor, mask, **kwargs)
    if problem is not None:
        raise _fail(where, f"the pattern is broken: {problem}")
    tensor_data = all(isinstance(v, Tensor) for v in kwargs.values())
    if method.vmappable and tensor.numel() and tensor_data:
        pair = {k: torch.stack([v, v]) for k, v in kwargs.items()}
        stacked = torch.func.vmap(lambda t, d: method(t, **d))(torch.stack([tensor, tensor]), pair)
        if not (torch.equal(stacked[0], mask) and torch.equal(stacked[1], mask)):
            raise _fail(where, "torch.func.vmap over the method gives another mask")
    if method.updates_weights:
        _check_pruned_leaf(where, method, tensor, mask, kwargs)
    higher = _raised_level(method) if method.nested_levels else None
    field = _level_name(method)
    if higher is not None and field is not None:
        try:
            higher_mask = higher(tensor, **kwargs)
        except ValueError:  # e.g. a count above the tensor's size
            higher_mask = None
        if higher_mask is not None and bool((higher_mask & ~mask).any()):
            raise _fail(
                where,
                f"{field}={getattr(higher, field)} keeps {int((higher_mask & ~mask).sum())} "
                f"entries that {field}={getattr(method, field)} prunes",
            )
    oracle = None if kwargs else torch_ao_mask(method, tensor)
    if oracle is not None and not torch.equal(oracle, mask):
        raise _fail(
            where, f"torch.ao.pruning's mask differs in {int((oracle != mask).sum())} entries"
        )
    if not _same_bits(tensor, before):
        raise _fail(where, "the method mutated the tensor it was given")


def _check_pruned_leaf(
    where: str, method: MaskMethod, tensor: Tensor, mask: Tensor, data: dict[str, Any]
) -> None:
    """A weight-updating method's ``prune_leaf``: the call's mask, and a weight of the
    tensor's shape, dtype and device that is exactly 0 where the mask prunes."""
    result = method.prune_leaf(tensor, **data)
    if not torch.equal(result.mask, mask):
        changed = int((result.mask != mask).sum())
        raise _fail(where, f"prune_leaf gives another mask than the call ({changed} differ)")
    weight = result.weight
    if not isinstance(weight, Tensor):
        raise _fail(where, f"prune_leaf's weight is {describe(weight)}, not a tensor")
    same = (weight.shape, weight.dtype, weight.device) == (
        tensor.shape,
        tensor.dtype,
        tensor.device,
    )
    if not same:
        raise _fail(
            where,
            f"prune_leaf's weight is {describe(weight)} on {weight.device}; expected the "
            f"tensor's shape {tuple(tensor.shape)}, dtype {tensor.dtype}, device {tensor.device}",
        )
    if bool((weight[~mask] != 0).any()):
        raise _fail(where, "prune_leaf's weight is not 0 at every pruned entry")
    if not isinstance(result.info, dict):
        raise _fail(where, f"prune_leaf's info is {describe(result.info)}, not a dict")


def _check_global_group(
    method: GlobalMethod,
    where: str,
    tensors: list[Tensor],
    masks: list[Tensor],
    data: list[dict[str, Any]],
) -> None:
    """A global method's masks over its whole group: agreement, count, nesting."""
    for tensor, mask in zip(tensors, masks, strict=True):
        _check_mask_form(where, tensor, mask)
    again = method.global_masks(tensors, data)
    for mask, fresh in zip(masks, again, strict=True):
        if not torch.equal(fresh, mask):
            raise _fail(
                where,
                f"selecting the group again gives another mask "
                f"({int((fresh != mask).sum())} entries differ)",
            )
    expected = method.expected_global_zeros(tensors, data)
    found = sum(int((~mask).sum()) for mask in masks)
    if expected is not None and found != expected:
        raise _fail(where, f"expected exactly {expected} zeros across the group, found {found}")
    higher = _raised_level(method)
    if isinstance(higher, GlobalMethod):
        try:
            raised = higher.global_masks(tensors, data)
        except ValueError:
            raised = None
        if raised is not None and any(
            bool((r & ~m).any()) for r, m in zip(raised, masks, strict=True)
        ):
            raise _fail(where, f"{_level_name(method)} raised keeps entries the lower level prunes")


def check_masks(
    params: Any,
    rules: Mapping[str, MaskMethod | None],
    masks: Any = None,
    *,
    prev_masks: Any = None,
    **leaf_data: Any,
) -> None:
    """Check masks against every invariant their methods promise; raise on the first failure.

    Computes the masks with ``fs.compute_masks(params, rules, prev_masks=..., **leaf_data)``
    when ``masks`` is None. Checks: nothing (params, rules) is mutated; masks have
    ``params``' structure, with a ``torch.bool`` mask of the leaf's shape where a rule
    applies and None elsewhere; for each masked leaf, the count of zeros the method
    promises, its pattern (blocks, N:M, band), determinism, agreement of the single-tensor
    call, ``compute_masks`` and ``torch.func.vmap``, monotone nesting as the level rises
    (where the method promises it: ``nested_levels``), the weight ``prune_leaf`` returns
    (for a method that updates weights: the call's mask, zeros where it prunes) and, on
    tie-free scores, torch.ao.pruning's mask (where funcsparse claims compatibility). A
    global method is checked over its rule's whole group.

    Examples:
        >>> import torch, funcsparse as fs
        >>> from funcsparse.testing import check_masks
        >>> params = {"w": torch.randn(8, 8), "b": torch.randn(8)}
        >>> check_masks(params, {"w": fs.WeightNorm(0.5)})
        >>> bad = {"w": torch.ones(8, 8, dtype=torch.bool), "b": None}
        >>> check_masks(params, {"w": fs.WeightNorm(0.5)}, bad)
        Traceback (most recent call last):
            ...
        AssertionError: check_masks: leaf 'w' (rule 'w', WeightNorm): calling the method again ...

    Args:
        params: a pytree of tensors.
        rules: as for ``fs.compute_masks``.
        masks: masks to check. Default None: computed here.
        prev_masks: as for ``fs.compute_masks``. Default None.
        **leaf_data: as for ``fs.compute_masks`` (``scores``, ``input_norms``, ...).

    Raises:
        AssertionError: an invariant fails; the message names the leaf, the rule, the method,
            and what was expected and found.
        TypeError: a leaf of ``params`` is not a tensor, or what ``fs.compute_masks``
            raises on bad input (checked first).
        ValueError: a leaf of ``params`` (matched or not) is on the meta device, whose
            values cannot be compared before and after; or what ``fs.compute_masks``
            raises on bad input (checked first).
    """
    if not isinstance(rules, Mapping):
        raise TypeError(
            f"check_masks: rules must be a mapping of leaf paths or patterns to methods, got "
            f"{describe(rules)}"
        )
    paths, leaves, spec = flatten_with_paths(params, function="check_masks", tensors=True)
    for path, leaf in zip(paths, leaves, strict=True):
        if leaf.device.type == "meta":
            raise ValueError(
                f"check_masks: the leaf at {short_repr(path)} is {describe(leaf)}; check_masks "
                f"compares values before and after, and {_NO_VALUES}"
            )
    params_before = [leaf.detach().clone() for leaf in leaves]
    rules_before = dict(rules)
    computed = compute_masks(params, rules, prev_masks=prev_masks, **leaf_data)
    assignments = assign_rules(paths, rules, function="check_masks")
    _check_unchanged(paths, assignments, params_before, params, rules_before, rules)
    if masks is None:
        masks = computed
    try:
        mask_leaves = leaves_like(spec, masks)
    except ValueError:
        mismatch = describe_structure_mismatch(spec, masks)
        raise _fail(
            "check_masks", f"masks do not have the structure of params ({mismatch})"
        ) from None
    computed_leaves = leaves_like(spec, computed)
    all_data = {**leaf_data, "prev_mask": prev_masks} if prev_masks is not None else leaf_data
    data = data_per_leaf(spec, all_data, len(leaves))
    groups: dict[str, list[int]] = {}
    for i, (path, mask, fresh, assigned) in enumerate(
        zip(paths, mask_leaves, computed_leaves, assignments, strict=True)
    ):
        if assigned is None:
            if mask is not None:
                raise _fail(
                    "check_masks",
                    f"leaf {path!r} has no rule, so its mask must be None; found {describe(mask)}",
                )
            continue
        method = assigned.method.for_leaf(path)
        if isinstance(method, GlobalMethod):
            groups.setdefault(assigned.key, []).append(i)
            continue
        where = _leaf_where(path, assigned)
        check_leaf_mask(method, leaves[i], mask, data=data[i], where=where)
        if not torch.equal(fresh, mask):
            raise _fail(where, "compute_masks gives another mask than the single-tensor call")
    for key, members in groups.items():
        method = assignments[members[0]].method.for_leaf(paths[members[0]])  # type: ignore[union-attr]
        if isinstance(method, GlobalMethod):
            group = [paths[i] for i in members]
            where = f"check_masks: rule {key!r} ({type(method).__name__}) over {group}"
            _check_global_group(
                method,
                where,
                [leaves[i] for i in members],
                [mask_leaves[i] for i in members],
                [data[i] for i in members],
            )
    _check_unchanged(paths, assignments, params_before, params, rules_before, rules)


def _leaf_where(path: str, assigned: Assignment) -> str:
    return f"check_masks: leaf {path!r} (rule {assigned.key!r}, {type(assigned.method).__name__})"


def _check_unchanged(
    paths: list[str],
    assignments: list[Assignment | None],
    params_before: list[Any],
    params: Any,
    rules_before: dict[str, MaskMethod | None],
    rules: Mapping[str, MaskMethod | None],
) -> None:
    after = _snapshot(params)
    for path, assigned, old, new in zip(paths, assignments, params_before, after, strict=True):
        both = isinstance(old, Tensor) and isinstance(new, Tensor)
        if not (_same_bits(old, new) if both else old is new):
            if assigned is not None:
                raise _fail(
                    _leaf_where(path, assigned), "the method mutated the tensor it was given"
                )
            raise _fail("check_masks", f"the leaf at {path!r} was mutated")
    if dict(rules) != rules_before:
        raise _fail("check_masks", "the rules mapping was mutated")
