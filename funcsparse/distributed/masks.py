"""Masks of DTensor leaves: each method's sharded strategy, registered by method type.

``fs.compute_masks`` hands a DTensor leaf here (through the backend that
``funcsparse.distributed`` registers with the core). The mask comes back as a DTensor with
the leaf's mesh and placements, equal bit for bit to the method's mask of the full tensor.

A strategy computes this rank's piece of that mask from the local piece of the leaf (and of
its data): locally where the method's groups lie inside the piece, through the small
collectives of :mod:`funcsparse.distributed.select` where the method ranks across pieces.
A method without a strategy, or a placement its strategy cannot serve exactly without a
gather, is refused with a ValueError naming the method and the placement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate

from funcsparse.distributed._comm import all_reduce_max
from funcsparse.distributed.shards import Shards, is_sharded, shards_of
from funcsparse.methods._base import GlobalMethod, MaskMethod

__all__ = [
    "LEAF_SHAPED",
    "GlobalStrategy",
    "Strategy",
    "check_sharded_leaf",
    "global_strategy",
    "refuse",
    "sharded_global_masks",
    "sharded_mask",
    "sharded_strategy",
    "strategy",
]

# Keyword data of a leaf's own shape: each rank takes its piece of it.
LEAF_SHAPED = frozenset({"prev_mask", "scores"})

# (method, the leaf's shards, the local data, where) -> this rank's piece of the keep-mask.
Strategy = Callable[[Any, Shards, dict[str, Any], str], Tensor]
GlobalStrategy = Callable[[Any, list[Shards], list[dict[str, Any]], str], list[Tensor]]
_STRATEGIES: dict[type, Strategy] = {}
_GLOBAL_STRATEGIES: dict[type, GlobalStrategy] = {}

F = TypeVar("F")


def strategy(*methods: type[MaskMethod]) -> Callable[[F], F]:
    """Register the decorated function as the sharded strategy of ``methods``."""

    def register(fn: F) -> F:
        for method in methods:
            _STRATEGIES[method] = fn  # type: ignore[assignment]
        return fn

    return register


def global_strategy(*methods: type[GlobalMethod]) -> Callable[[F], F]:
    """Register the decorated function as the sharded strategy of global ``methods``."""

    def register(fn: F) -> F:
        for method in methods:
            _GLOBAL_STRATEGIES[method] = fn  # type: ignore[assignment]
        return fn

    return register


def sharded_strategy(method: MaskMethod) -> Strategy | None:
    """The strategy registered for ``type(method)``, or None."""
    return _STRATEGIES.get(type(method))


def refuse(where: str, method: MaskMethod, shards: Shards, why: str) -> ValueError:
    """The error for a placement a method cannot serve exactly without a gather."""
    return ValueError(
        f"{where}: {type(method).__name__} cannot compute an exact mask of a tensor of shape "
        f"{shards.shape} placed {shards.placements} without gathering it: {why}. Redistribute "
        f"the leaf (DTensor.redistribute) to a placement that keeps the method's groups whole"
    )


def _local_data(shards: Shards, data: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        if key in LEAF_SHAPED and isinstance(value, Tensor):
            value = shards.local_of(value, owner=where, name=key)
        elif isinstance(value, DTensor):
            value = value.full_tensor()  # small per-feature data (input norms)
        out[key] = value.detach() if isinstance(value, Tensor) else value
    return out


def _check_same_generator(
    method: MaskMethod, shards: Shards, data: dict[str, Any], where: str
) -> None:
    """Raise on every rank of the mesh if the ranks pass generators in different states.

    Each rank draws its piece's values from its own ``generator``; states that differ (a
    generator seeded with the rank), or a generator on some ranks only, would make pieces
    of different draws, or replicas that disagree: a mask of no single tensor. Run for
    every leaf of a method that reads a generator, given or not (so that every rank sends
    it): one all-reduce of two int64s per mesh dimension.
    """
    if "generator" not in method.leaf_data or not shards.member:
        return
    generator = data.get("generator")
    digest = 0  # no generator
    if isinstance(generator, torch.Generator):
        state = generator.get_state().numpy().tobytes()
        digest = 1 + int.from_bytes(hashlib.blake2b(state, digest_size=7).digest(), "little")
    both = torch.tensor([digest, -digest], dtype=torch.int64, device=shards.local.device)
    groups = [shards.mesh.get_group(d) for d in range(shards.mesh.ndim)]
    highest, lowest = (int(v) for v in all_reduce_max(both, groups).tolist())
    if highest != -lowest:
        given = "given on some ranks only" if -lowest == 0 else "in different states"
        raise ValueError(
            f"{where}: the generator is {given} across the ranks of {shards.mesh}; every "
            f"rank draws its piece of one tensor's values, so every rank must pass a generator "
            f"in the same state (seed it with the same number on every rank, not the rank)"
        )


def _mesh_key(mesh: Any) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """What makes two meshes one: the device type and the global ranks in their layout."""
    ranks = mesh.mesh
    return (mesh.device_type, tuple(ranks.shape), tuple(int(r) for r in ranks.flatten().tolist()))


def _replicated(shards: Shards) -> bool:
    return all(isinstance(p, Replicate) for p in shards.placements)


def _split(shards: Shards) -> bool:
    """Whether a mesh dimension of more than one rank splits the tensor."""
    return any(
        not isinstance(p, Replicate) and shards.mesh.size(i) > 1
        for i, p in enumerate(shards.placements)
    )


def check_sharded_leaf(
    method: MaskMethod, leaf: Tensor, data: dict[str, Any], *, where: str
) -> None:
    """Raise, before any mask is computed, what :func:`sharded_mask` would raise without
    communicating: a plain leaf with DTensor data, a placement that is neither Shard nor
    Replicate, data placed otherwise than the leaf, or a split leaf whose method has no
    sharded strategy. Local checks only (no collective), alike on every rank.

    Raises:
        ValueError: naming ``where`` (the rule, the method and the path).
    """
    if not isinstance(leaf, DTensor):
        for key, value in data.items():
            if isinstance(value, DTensor):
                shown = "prev_masks" if key == "prev_mask" else key
                raise ValueError(
                    f"{where}: {shown} is a DTensor placed {tuple(value.placements)} for a "
                    f"plain tensor leaf; give plain data for a plain leaf (DTensor.full_tensor), "
                    f"or make the leaf a DTensor"
                )
        return
    shards = shards_of(leaf, owner=where)
    for key, value in data.items():
        if key in LEAF_SHAPED and isinstance(value, Tensor):
            shards.local_of(value, owner=where, name=key)
    table = _GLOBAL_STRATEGIES if isinstance(method, GlobalMethod) else _STRATEGIES
    if not _replicated(shards) and type(method) not in table:
        raise refuse(where, method, shards, "it has no sharded strategy")


def sharded_mask(method: MaskMethod, leaf: DTensor, data: dict[str, Any], *, where: str) -> DTensor:
    """``method``'s mask of the DTensor ``leaf`` as a DTensor placed as ``leaf`` is.

    A rank outside the leaf's mesh runs the same checks on an empty piece (so that it raises
    where the ranks in the mesh raise, before any collective) and gets an empty piece.

    Raises:
        ValueError: a placement that is neither Shard nor Replicate, or one that ``method``
            cannot serve exactly without a gather; data placed otherwise than the leaf; a
            ``generator`` whose state differs across the mesh's ranks (naming ``where``).
    """
    shards = shards_of(leaf, owner=where)
    local_data = _local_data(shards, data, where)
    _check_same_generator(method, shards, local_data, where)
    nothing = torch.zeros(0, dtype=torch.bool, device=shards.local.device)
    if _replicated(shards):
        if not shards.member:  # checked on the full shape already; nothing to compute
            return shards.wrap(nothing)
        return shards.wrap(method(shards.local.detach(), **local_data))
    fn = _STRATEGIES.get(type(method))
    if fn is None:
        raise refuse(where, method, shards, "it has no sharded strategy")
    if not shards.member and not _split(shards):
        # Outside a mesh whose dims of more than one rank split nothing: the ranks in it
        # compute on whole tensors, and this rank has no empty piece to check alike.
        return shards.wrap(nothing)
    prev_mask = None if method.uses_prev_mask else local_data.pop("prev_mask", None)
    local = fn(method, shards, local_data, where)
    return shards.wrap(local if prev_mask is None else local & prev_mask)


def sharded_global_masks(
    method: GlobalMethod, leaves: Sequence[Tensor], data: Sequence[dict[str, Any]], *, where: str
) -> list[Tensor]:
    """``method``'s masks of ``leaves`` (DTensors) selected together, placed as the leaves.

    Raises:
        ValueError: a leaf that is not a DTensor beside ones that are, leaves on different
            meshes (compared by their ranks), or a method without a sharded strategy
            (naming ``where``).
    """
    plain = [i for i, leaf in enumerate(leaves) if not is_sharded(leaf)]
    if plain:
        raise ValueError(
            f"{where}: leaves {plain} of the group are plain tensors beside DTensors; a global "
            f"selection needs every leaf of the group sharded on one mesh"
        )
    shards = [shards_of(leaf, owner=where) for leaf in leaves]  # type: ignore[arg-type]
    meshes = sorted({_mesh_key(s.mesh) for s in shards})
    if len(meshes) > 1:  # by their ranks: two sub-meshes of one shape print alike
        shown = ", ".join(f"ranks {list(ranks)} ({device})" for device, _, ranks in meshes)
        raise ValueError(
            f"{where}: the group's leaves lie on different device meshes ({shown}); a global "
            f"selection needs every leaf of the group on one mesh"
        )
    fn = _GLOBAL_STRATEGIES.get(type(method))
    if fn is None:
        raise ValueError(
            f"{where}: {type(method).__name__} has no sharded strategy; it cannot select "
            f"across DTensor leaves without gathering them"
        )
    local_data = [_local_data(s, d, where) for s, d in zip(shards, data, strict=True)]
    prevs = [None if method.uses_prev_mask else d.pop("prev_mask", None) for d in local_data]
    locals_ = fn(method, shards, local_data, where)
    return [
        s.wrap(m if p is None else m & p) for s, m, p in zip(shards, locals_, prevs, strict=True)
    ]


def _all_ones(shards: Shards) -> Tensor:
    return torch.ones(shards.local.shape, dtype=torch.bool, device=shards.local.device)
