"""compute_masks: a rules mapping applied to a params pytree."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from funcsparse._rules import assign_rules
from funcsparse._tree import (
    describe_structure_mismatch,
    flatten_with_paths,
    leaves_like,
    unflatten,
)
from funcsparse.methods._base import (
    GlobalMethod,
    MaskMethod,
    data_problem,
    describe,
    require_int,
)

__all__ = [
    "LeafMask",
    "ShardedBackend",
    "check_data_coverage",
    "compute_masks",
    "data_per_leaf",
    "masks_with_data",
    "register_sharded",
]


class ShardedBackend(Protocol):
    """What :func:`compute_masks` asks of the backend for sharded leaves (DTensors).

    ``funcsparse.distributed`` registers one on import; the core never imports it.
    """

    def is_sharded(self, leaf: object) -> bool: ...

    def check(
        self, method: MaskMethod, leaf: Tensor, data: dict[str, Any], *, where: str
    ) -> None: ...

    def mask(
        self, method: MaskMethod, leaf: Tensor, data: dict[str, Any], *, where: str
    ) -> Tensor: ...

    def global_masks(
        self,
        method: GlobalMethod,
        leaves: list[Tensor],
        data: list[dict[str, Any]],
        *,
        where: str,
    ) -> list[Tensor]: ...


_SHARDED: list[ShardedBackend] = []

#: ``(path, method, leaf, data) -> mask``: a plain leaf's mask, computed by the caller of
#: :func:`masks_with_data` (``fs.prune``) in place of ``method(leaf, **data)``.
LeafMask = Callable[[str, MaskMethod, Tensor, dict[str, Any]], Tensor]


def register_sharded(backend: ShardedBackend) -> None:
    """Let :func:`compute_masks` hand sharded leaves to ``backend`` (the latest one wins)."""
    _SHARDED[:] = [backend]


def _sharded_backend(leaves: list[Any], data: list[dict[str, Any]]) -> ShardedBackend | None:
    """The registered backend, where any leaf (or any leaf's data) is sharded; else None."""
    if not _SHARDED:
        return None
    backend = _SHARDED[0]
    if any(backend.is_sharded(leaf) for leaf in leaves) or any(
        backend.is_sharded(value) for leaf_data in data for value in leaf_data.values()
    ):
        return backend
    return None


def compute_masks(
    params: Any,
    rules: Mapping[str, MaskMethod | None],
    *,
    batch_dims: int = 0,
    prev_masks: Any = None,
    **leaf_data: Any,
) -> Any:
    """Compute a bool mask for every leaf of ``params`` that a rule matches.

    Every matched leaf is checked before any mask is computed, so a bad leaf raises before
    any work is done. Inputs are never mutated.

    With ``batch_dims=1``, every leaf carries a leading ensemble dimension, as
    ``torch.func.stack_module_state`` makes: each member gets the mask it would get alone,
    computed for all members at once by ``torch.func.vmap`` over the method. A method whose
    ``vmappable`` is False is looped over the members instead (the documented fallback).

    A global method (``fs.GlobalMagnitude``) selects across all the leaves its rule matches
    at once; every other method masks each leaf on its own.

    Examples:
        >>> import torch, funcsparse as fs
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> params = dict(model.named_parameters())
        >>> masks = fs.compute_masks(params, {"*.weight": fs.WeightNorm(0.5)})
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
        prev_masks: masks from an earlier pruning round (``params``' structure, None where
            absent): a weight pruned before stays pruned, and a method's level is the total
            target. Default None.
        **leaf_data: per-leaf data that methods read, each a pytree of ``params``'
            structure: ``scores`` (importance scores in place of the weights' magnitude),
            ``input_norms`` (``fs.Wanda``), ... A tree holds a value at every leaf whose
            method reads it, and None elsewhere.

    Returns:
        A pytree with ``params``' structure: a ``torch.bool`` mask of the leaf's shape where
        a rule applies (``True`` keeps), None elsewhere.

    Raises:
        TypeError: ``rules`` is malformed; a leaf of ``params`` is not a tensor (matched
            or not; a module passed whole too: pass ``dict(model.named_parameters())``); or
            a matched leaf (or its data) has a dtype its method cannot handle.
        ValueError: a rule matches no leaf, two patterns match one leaf, a data pytree does
            not have ``params``' structure or is None at a leaf whose method reads it
            (``scores=`` with None where calibration never saw a weight: the method would
            silently rank the weights instead), a matched leaf or its data is on the meta
            device (no values: refused before any mask is computed), or a matched leaf has
            a shape its method cannot handle. The message names the rule, the method, the
            leaf path and the value.
    """
    return masks_with_data(
        params, rules, batch_dims=batch_dims, prev_masks=prev_masks, leaf_data=leaf_data
    )


def masks_with_data(
    params: Any,
    rules: Mapping[str, MaskMethod | None],
    *,
    batch_dims: int = 0,
    prev_masks: Any = None,
    leaf_data: dict[str, Any],
    partial: frozenset[str] = frozenset(),
    function: str = "compute_masks",
    leaf_mask: LeafMask | None = None,
) -> Any:
    """:func:`compute_masks`, for callers that merge data trees of their own (``fs.Pruner``).

    ``partial`` names the data trees that may hold None where a method reads them (a tree
    the caller assembled from several sources, e.g. state scores at some leaves only); every
    other tree must cover every leaf whose method reads it. ``function`` is the name that
    messages give (``fs.prune`` passes its own).

    ``leaf_mask(path, method, leaf, data)``, where given, computes the mask of every plain
    (not DTensor) leaf of a method that is not global, in place of ``method(leaf, **data)``
    (errors it raises are named as the method's are): ``fs.prune`` keeps the pruned weights
    of ``method.prune_leaf`` beside the masks. With it, a DTensor leaf of a method that
    updates weights (``updates_weights``) is refused before any mask is computed.
    """
    batch_dims = require_int(function, "batch_dims", batch_dims)
    if batch_dims < 0:
        raise ValueError(f"{function}: batch_dims must be >= 0, got {batch_dims}")
    paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
    if prev_masks is not None:
        leaf_data = {**leaf_data, "prev_mask": prev_masks}
    data = data_per_leaf(spec, leaf_data, len(leaves), function=function)
    assignments = assign_rules(paths, rules, function=function)
    methods: list[MaskMethod | None] = [
        None if assigned is None else assigned.method.for_leaf(path)
        for path, assigned in zip(paths, assignments, strict=True)
    ]
    for path, leaf, assigned, method, leaf_kwargs in zip(
        paths, leaves, assignments, methods, data, strict=True
    ):
        if assigned is not None and method is not None:
            where = f"{function}: rule {assigned.key!r} ({type(method).__name__})"
            _check_leaf(where, path, method, leaf, leaf_kwargs, batch_dims)
    check_data_coverage(
        paths, assignments, methods, data, leaf_data, partial=partial, function=function
    )
    groups: dict[str, tuple[GlobalMethod, list[int]]] = {}
    for i, (assigned, method) in enumerate(zip(assignments, methods, strict=True)):
        if assigned is not None and isinstance(method, GlobalMethod):
            groups.setdefault(assigned.key, (method, []))[1].append(i)
    for key, (method, members) in groups.items():
        problem = method.group_problem([_member(leaves[i], batch_dims) for i in members])  # type: ignore[misc]
        if problem is None and batch_dims:  # the members are shapes only: check real devices
            problem = GlobalMethod.group_problem(method, [leaves[i] for i in members])
        if problem is not None:
            where = f"{function}: rule {key!r} ({type(method).__name__})"
            group_paths = [paths[i] for i in members[:8]] + (
                [f"... ({len(members)} in all)"] if len(members) > 8 else []
            )
            raise problem.error(f"{where} got {problem.got} over {group_paths}; {problem.need}")

    sharded = _sharded_backend(leaves, data)
    if sharded is not None and batch_dims:
        raise ValueError(
            f"{function}: batch_dims={batch_dims} with DTensor leaves; an ensemble of "
            f"sharded leaves is not supported (compute each member's masks on its own)"
        )
    if sharded is not None:  # placements and strategies, before any collective
        for path, leaf, assigned, method, leaf_kwargs in zip(
            paths, leaves, assignments, methods, data, strict=True
        ):
            if assigned is not None and method is not None:
                name = type(method).__name__
                where = f"{function}: rule {assigned.key!r} ({name}) at {path!r}"
                sharded.check(method, leaf, leaf_kwargs, where=where)
                if leaf_mask is not None and method.updates_weights and sharded.is_sharded(leaf):
                    raise ValueError(
                        f"{where}: {name} updates the weights it prunes, which {function} "
                        f"does not do on a DTensor leaf ({describe(leaf)}); prune an "
                        f"unsharded copy (DTensor.full_tensor()) and shard the result"
                    )

    # Everything is checked: compute.
    masks: list[Tensor | None] = [None] * len(leaves)
    for key, (method, members) in groups.items():
        where = f"{function}: rule {key!r} ({type(method).__name__})"
        group_leaves, group_data = [leaves[i] for i in members], [data[i] for i in members]
        if sharded is not None and any(sharded.is_sharded(leaf) for leaf in group_leaves):
            results = sharded.global_masks(method, group_leaves, group_data, where=where)
        else:
            with _naming(where):
                results = _batched_global(method, group_leaves, group_data, batch_dims)
        for i, mask in zip(members, results, strict=True):
            masks[i] = mask
    for i, (path, leaf, assigned, method) in enumerate(
        zip(paths, leaves, assignments, methods, strict=True)
    ):
        if assigned is None or method is None or isinstance(method, GlobalMethod):
            continue
        where = f"{function}: rule {assigned.key!r} ({type(method).__name__}) at {path!r}"
        if sharded is not None and sharded.is_sharded(leaf):
            masks[i] = sharded.mask(method, leaf, data[i], where=where)
            continue
        with _naming(where):
            if leaf_mask is not None and not batch_dims:
                masks[i] = leaf_mask(path, method, leaf, data[i])
            else:
                masks[i] = _batched_mask(method, leaf, batch_dims, data[i])
    return unflatten(spec, masks)


def _check_leaf(
    where: str,
    path: str,
    method: MaskMethod,
    leaf: Any,
    leaf_kwargs: dict[str, Any],
    batch_dims: int,
) -> None:
    """Raise (naming ``where`` and ``path``) if ``method`` cannot mask ``leaf`` with its data.

    The real leaf and its data come first (:func:`data_problem`: a meta leaf or meta data
    holds no values), so that such a leaf is refused before any mask is computed; then the
    method's own checks, on one member's stand-in where ``batch_dims`` is given.
    """
    problem = data_problem(leaf, leaf_kwargs)
    if problem is not None:
        meta_leaf = isinstance(leaf, Tensor) and leaf.device.type == "meta"
        got = describe(leaf) if meta_leaf else problem.got.replace("prev_mask ", "prev_masks ")
        raise problem.error(f"{where} got {got} at {path!r}; {problem.need}")
    if isinstance(leaf, Tensor) and leaf.dim() < batch_dims:
        raise ValueError(
            f"{where} got {describe(leaf)} at {path!r}; batch_dims={batch_dims} needs "
            f"at least {batch_dims} dimensions"
        )
    lead = tuple(leaf.shape[:batch_dims]) if isinstance(leaf, Tensor) else ()
    for name, value in leaf_kwargs.items():
        if batch_dims and isinstance(value, Tensor) and tuple(value.shape[:batch_dims]) != lead:
            shown = "prev_masks" if name == "prev_mask" else name
            raise ValueError(
                f"{where} got {shown} of shape {tuple(value.shape)} at {path!r} for a leaf "
                f"of shape {tuple(leaf.shape)}; with batch_dims={batch_dims} both need the "
                f"leading shape {lead}"
            )
    member_kwargs = {k: _member(v, batch_dims) for k, v in leaf_kwargs.items()}
    problem = method.check_leaf(_member(leaf, batch_dims), **member_kwargs)
    real = isinstance(leaf, Tensor) and leaf.device.type != "meta"
    if problem is not None and batch_dims and real:  # a member is a meta stand-in
        problem = problem._replace(got=problem.got.replace(" on meta", ""))
    if problem is None and batch_dims and leaf_kwargs and isinstance(leaf, Tensor):
        # Data values (statistics) are checked member by member, outside vmap.
        problem = _first_member_problem(method, leaf, leaf_kwargs, batch_dims)
    if problem is not None:
        raise problem.error(f"{where} got {problem.got} at {path!r}; {problem.need}")


def check_data_coverage(
    paths: list[str],
    assignments: list[Any],
    methods: list[MaskMethod | None],
    data: list[dict[str, Any]],
    leaf_data: dict[str, Any],
    *,
    partial: frozenset[str] = frozenset(),
    function: str = "compute_masks",
) -> None:
    """Raise if a data tree given for the params is None where a matched method reads it.

    A method that reads ``scores`` where they are given falls back to the weights without
    them; a tree of scores with a None entry at such a leaf (a leaf calibration never saw)
    would make that fallback silent. ``data`` is :func:`data_per_leaf`'s result for
    ``leaf_data``; ``methods`` each leaf's method (None where no rule applies).

    Raises:
        ValueError: naming ``function``, the data, the leaves and the rule.
    """
    for name, tree in leaf_data.items():
        if tree is None or name in partial or name == "prev_mask":
            continue
        missing: dict[str, tuple[str, list[str]]] = {}
        for path, assigned, method, leaf_kwargs in zip(
            paths, assignments, methods, data, strict=True
        ):
            if assigned is None or method is None or name not in method.leaf_data:
                continue
            if name not in leaf_kwargs:
                entry = missing.setdefault(assigned.key, (type(method).__name__, []))
                entry[1].append(path)
        for key, (method_name, where) in missing.items():
            shown = where if len(where) <= 8 else [*where[:8], f"... ({len(where)} in all)"]
            fallback = "rank the weights" if name == "scores" else f"run without {name}"
            hint = " (fs.magnitude_scores(params) gives |w|)" if name == "scores" else ""
            raise ValueError(
                f"{function}: {name} is None at {shown}, which rule {key!r} "
                f"({method_name}) matches; a {name} tree must give every leaf the rule "
                f"matches a value (where None, {method_name} would silently {fallback}). "
                f"Give {name} there{hint}, or match those leaves with another rule"
            )


class _naming:
    """Re-raise a TypeError/ValueError from inside with ``where`` in front of its message."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        if isinstance(err, (TypeError, ValueError)):
            raise type(err)(f"{self.where}: {err}") from err


def data_per_leaf(
    spec: Any, leaf_data: dict[str, Any], n_leaves: int, *, function: str = "compute_masks"
) -> list[dict[str, Any]]:
    """``{name: pytree}`` to one ``{name: entry}`` dict per leaf (None entries dropped).

    Raises:
        ValueError: a pytree does not have ``spec``'s structure (naming ``function``).
    """
    per_leaf: list[dict[str, Any]] = [{} for _ in range(n_leaves)]
    for name, tree in leaf_data.items():
        if tree is None:
            continue
        try:
            entries = leaves_like(spec, tree)
        except ValueError:
            shown = "prev_masks" if name == "prev_mask" else name
            raise ValueError(
                f"{function}: {shown} does not have the structure of params "
                f"({describe_structure_mismatch(spec, tree)})"
            ) from None
        for leaf_kwargs, entry in zip(per_leaf, entries, strict=True):
            if entry is not None:
                leaf_kwargs[name] = entry
    return per_leaf


def _first_member_problem(
    method: MaskMethod, leaf: Tensor, data: dict[str, Any], batch_dims: int
) -> Any:
    """The first problem ``method.check_leaf`` finds in any real member's data."""
    count = math.prod(leaf.shape[:batch_dims])  # explicit: -1 is ambiguous for 0 entries
    members = leaf.reshape(count, *leaf.shape[batch_dims:])
    flat = {
        k: v.reshape(count, *v.shape[batch_dims:]) if isinstance(v, Tensor) else v
        for k, v in data.items()
    }
    for j, member in enumerate(members):
        member_data = {k: v[j] if isinstance(v, Tensor) else v for k, v in flat.items()}
        problem = method.check_leaf(member, **member_data)
        if problem is not None:
            return problem
    return None


def _member(leaf: object, batch_dims: int) -> object:
    """What one ensemble member's leaf looks like (shape and dtype only, no data)."""
    if batch_dims == 0 or not isinstance(leaf, Tensor):
        return leaf
    return torch.empty(leaf.shape[batch_dims:], dtype=leaf.dtype, device="meta")


def _batched_mask(
    method: MaskMethod, leaf: Tensor, batch_dims: int, data: dict[str, Any]
) -> Tensor:
    """``method(leaf, **data)`` for every member along the leading ``batch_dims`` dimensions."""
    if batch_dims == 0:
        return method(leaf, **data)
    if leaf.numel() == 0:
        return torch.ones(leaf.shape, dtype=torch.bool, device=leaf.device)
    if method.vmappable and all(isinstance(v, Tensor) for v in data.values()):
        batched: Callable[..., Tensor] = lambda t, d: method(t, **d)  # noqa: E731
        for _ in range(batch_dims):
            batched = torch.func.vmap(batched)
        # A mask that does not depend on the data comes back expanded over the members;
        # give every member its own memory.
        return batched(leaf.detach(), data).contiguous()
    return _looped(leaf, batch_dims, data, lambda t, d: method(t, **d))


def _batched_global(
    method: GlobalMethod, leaves: list[Tensor], data: list[dict[str, Any]], batch_dims: int
) -> list[Tensor]:
    """``method.global_masks`` per ensemble member (members never select together)."""
    if batch_dims == 0:
        return method.global_masks(leaves, data)
    members = int(torch.tensor(leaves[0].shape[:batch_dims]).prod())
    flat = [leaf.reshape(members, *leaf.shape[batch_dims:]) for leaf in leaves]
    flat_data = [
        {
            k: v.reshape(members, *v.shape[batch_dims:]) if isinstance(v, Tensor) else v
            for k, v in d.items()
        }
        for d in data
    ]
    per_member = [
        method.global_masks(
            [t[j] for t in flat],
            [{k: v[j] if isinstance(v, Tensor) else v for k, v in d.items()} for d in flat_data],
        )
        for j in range(members)
    ]
    return [
        torch.stack([masks[i] for masks in per_member]).reshape(leaf.shape)
        if per_member
        else torch.ones(leaf.shape, dtype=torch.bool, device=leaf.device)
        for i, leaf in enumerate(leaves)
    ]


def _looped(
    leaf: Tensor,
    batch_dims: int,
    data: dict[str, Any],
    fn: Callable[[Tensor, dict[str, Any]], Tensor],
) -> Tensor:
    """``fn`` member by member, for methods that cannot run under vmap."""
    inner = leaf.shape[batch_dims:]
    count = math.prod(leaf.shape[:batch_dims])
    members = leaf.detach().reshape(count, *inner)
    flat = {
        k: v.reshape(count, *v.shape[batch_dims:]) if isinstance(v, Tensor) else v
        for k, v in data.items()
    }
    masks = [
        fn(member, {k: v[j] if isinstance(v, Tensor) else v for k, v in flat.items()})
        for j, member in enumerate(members)
    ]
    if not masks:
        return torch.ones(leaf.shape, dtype=torch.bool, device=leaf.device)
    return torch.stack(masks).reshape(leaf.shape)
