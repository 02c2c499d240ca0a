"""check_masks: every invariant a method promises, checked on one params pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from funcsparse._compute import compute_masks
from funcsparse._rules import Assignment, assign_rules
from funcsparse._tree import describe_structure_mismatch, flatten_with_paths, leaves_like
from funcsparse.methods._base import MaskMethod, describe
from funcsparse.testing.oracles import torch_ao_mask

__all__ = ["check_leaf_mask", "check_masks"]


def _fail(where: str, what: str) -> AssertionError:
    return AssertionError(f"{where}: {what}")


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and bytes (NaN equals NaN; -0.0 differs from 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(
        a.detach().contiguous().view(-1).view(torch.uint8),
        b.detach().contiguous().view(-1).view(torch.uint8),
    )


def _snapshot(tree: Any) -> list[Any]:
    _, leaves, _ = flatten_with_paths(tree)
    return [leaf.detach().clone() if isinstance(leaf, Tensor) else leaf for leaf in leaves]


def check_leaf_mask(
    method: MaskMethod, tensor: Tensor, mask: object, *, where: str = "check_leaf_mask"
) -> None:
    """Check one leaf's mask against every invariant ``method`` promises.

    Raises:
        AssertionError: naming ``where`` and what was expected and found.
    """
    if not isinstance(mask, Tensor):
        raise _fail(where, f"expected a torch.bool mask, found {describe(mask)}")
    if mask.dtype != torch.bool:
        raise _fail(where, f"expected dtype torch.bool, found {mask.dtype}")
    if mask.shape != tensor.shape:
        raise _fail(where, f"expected shape {tuple(tensor.shape)}, found {tuple(mask.shape)}")
    before = tensor.detach().clone()
    again = method(tensor)
    if not _same_bits(tensor, before):
        raise _fail(where, "the method mutated the tensor it was given")
    if not torch.equal(again, mask):
        changed = int((again != mask).sum())
        raise _fail(
            where, f"calling the method again gives another mask ({changed} entries differ)"
        )
    if not torch.equal(method(tensor), again):
        raise _fail(where, "two calls on the same tensor give different masks")
    expected = method.expected_zeros(tensor)
    found = int((~mask).sum())
    if expected is not None and found != expected:
        raise _fail(where, f"expected exactly {expected} zeros, found {found}")
    problem = method.structure_problem(tensor, mask)
    if problem is not None:
        raise _fail(where, f"the pattern is broken: {problem}")
    if method.vmappable and tensor.numel():
        stacked = torch.func.vmap(method)(torch.stack([tensor.detach(), tensor.detach()]))
        if not (torch.equal(stacked[0], mask) and torch.equal(stacked[1], mask)):
            raise _fail(where, "torch.func.vmap over the method gives another mask")
    field = method.level_field
    if field is not None:
        level = float(getattr(method, field))
        if level < 1:
            higher = dataclasses.replace(method, **{field: min(1.0, max(level, 0.0) + 0.25)})  # type: ignore[type-var]
            unpruned = int((higher(tensor) & ~mask).sum())
            if unpruned:
                raise _fail(
                    where,
                    f"{field}={getattr(higher, field)} keeps {unpruned} entries that "
                    f"{field}={level} prunes",
                )
    oracle = torch_ao_mask(method, tensor)
    if oracle is not None and not torch.equal(oracle, mask):
        raise _fail(
            where, f"torch.ao.pruning's mask differs in {int((oracle != mask).sum())} entries"
        )
    if not _same_bits(tensor, before):
        raise _fail(where, "the method mutated the tensor it was given")


def check_masks(params: Any, rules: Mapping[str, MaskMethod | None], masks: Any = None) -> None:
    """Check masks against every invariant their methods promise; raise on the first failure.

    Computes the masks with ``fs.compute_masks(params, rules)`` when ``masks`` is None.
    Checks: nothing (params, rules) is mutated; masks have ``params``' structure, with a
    ``torch.bool`` mask of the leaf's shape where a rule applies and None elsewhere; for
    each masked leaf, the count of zeros the method promises, its pattern (blocks, N:M,
    band), determinism, agreement of the single-tensor call, ``compute_masks`` and
    ``torch.func.vmap``, monotone nesting as the level rises (where promised) and, on
    tie-free scores, torch.ao.pruning's mask (where funcsparse claims compatibility).

    Examples:
        >>> import torch, funcsparse as fs
        >>> from funcsparse.testing import check_masks
        >>> params = {"w": torch.randn(8, 8), "b": torch.randn(8)}
        >>> check_masks(params, {"w": fs.WeightNorm(sparsity_level=0.5)})
        >>> bad = {"w": torch.ones(8, 8, dtype=torch.bool), "b": None}
        >>> check_masks(params, {"w": fs.WeightNorm(sparsity_level=0.5)}, bad)
        Traceback (most recent call last):
            ...
        AssertionError: check_masks: leaf 'w' (rule 'w', WeightNorm): calling the method again ...

    Args:
        params: a pytree of tensors.
        rules: as for ``fs.compute_masks``.
        masks: masks to check. Default None: computed here.

    Raises:
        AssertionError: an invariant fails; the message names the leaf, the rule, the method,
            and what was expected and found.
    """
    params_before = _snapshot(params)
    rules_before = dict(rules)
    computed = compute_masks(params, rules)
    paths, leaves, spec = flatten_with_paths(params, function="check_masks")
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
    for path, leaf, mask, fresh, assigned in zip(
        paths, leaves, mask_leaves, computed_leaves, assignments, strict=True
    ):
        if assigned is None:
            if mask is not None:
                raise _fail(
                    "check_masks",
                    f"leaf {path!r} has no rule, so its mask must be None; found {describe(mask)}",
                )
            continue
        where = (
            f"check_masks: leaf {path!r} (rule {assigned.key!r}, {type(assigned.method).__name__})"
        )
        check_leaf_mask(assigned.method, leaf, mask, where=where)
        if not torch.equal(fresh, mask):
            raise _fail(where, "compute_masks gives another mask than the single-tensor call")
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
