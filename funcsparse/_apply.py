"""Applying masks: zeroed copies of params, projection in place, a masked functional_call.

Speed notes (CPU, eager): ``torch.where(mask, leaf, 0)`` runs a scalar (not vectorised) kernel,
about five times slower than a multiply, so the masked forward multiplies by the mask cast to
the leaf's dtype, as torch.ao's FakeSparsity multiplies by its stored float mask. In-place
projection multiplies the bit pattern by the mask (an integer multiply by 0 or 1), casting the
mask chunk by chunk into a small reused buffer: pruned entries become +0.0 even where they
hold inf or NaN, and kept entries keep their exact bits.

Sharded params (``torch.distributed.tensor.DTensor``, as FSDP2 and tensor parallelism hand
out) are masked by DTensor masks placed as they are: each rank masks its local piece, with no
communication. This module never imports ``torch.distributed``: a DTensor (or an FSDP2
module) can only exist once torch has imported the modules that define it, so they are looked
up in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from funcsparse._errors import describe
from funcsparse._tree import (
    PyTreeSpec,
    describe_structure_mismatch,
    flatten_with_paths,
    leaves_like,
    unflatten,
)

__all__ = [
    "apply_masks",
    "apply_masks_",
    "checked_masks",
    "fsdp_managed",
    "functional_call",
    "local_piece",
    "placed_as",
    "sharding_mismatch",
]

_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# Entries projected per step of the in-place projection's loop (a 1 MiB int32 buffer).
_CHUNK = 1 << 18


def _dtensor_class() -> Any:
    """``DTensor``, where torch has imported it (no DTensor exists otherwise); else None."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else getattr(module, "DTensor", None)


def _is_dtensor(value: object) -> bool:
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(value, dtensor)


def sharding_mismatch(leaf: Tensor, mask: Tensor, *, what: str = "mask") -> str | None:
    """Why ``mask`` (of ``leaf``'s shape) cannot mask ``leaf`` piece by piece; None if it can.

    A DTensor leaf needs a DTensor mask on the same device mesh with the same placements
    (each rank then masks its local piece, with no communication); a plain leaf needs a
    plain mask.

    Examples:
        >>> sharding_mismatch(torch.ones(2), torch.ones(2, dtype=torch.bool)) is None
        True

    Args:
        leaf: a tensor.
        mask: a bool tensor of ``leaf``'s shape (or other per-entry data of the leaf).
        what: what ``mask`` is, in the advice. Default ``"mask"``.

    Returns:
        None, or the end of an error message (starting with a verb: "is a plain tensor ...").
    """
    leaf_sharded, mask_sharded = _is_dtensor(leaf), _is_dtensor(mask)
    if not leaf_sharded and not mask_sharded:
        return None
    if not mask_sharded:
        return (
            f"is a plain tensor but the leaf is a DTensor placed {tuple(leaf.placements)} "  # type: ignore[attr-defined]
            f"on {leaf.device_mesh}; give a DTensor {what} placed as the leaf "  # type: ignore[attr-defined]
            "(fs.compute_masks returns masks so placed for DTensor params)"
        )
    if not leaf_sharded:
        return (
            f"is a DTensor placed {tuple(mask.placements)} on {mask.device_mesh} but the "  # type: ignore[attr-defined]
            f"leaf is a plain tensor; a plain leaf needs a plain {what} (a DTensor's "
            "full_tensor()). An FSDP2 module holds plain unsharded parameters after a "
            "forward, until it reshards: mask its sharded ones "
            "(funcsparse.distributed.fsdp.sharded_params(model))"
        )
    placed = (mask.device_mesh, tuple(mask.placements))  # type: ignore[attr-defined]
    wanted = (leaf.device_mesh, tuple(leaf.placements))  # type: ignore[attr-defined]
    if placed[1] != wanted[1] or placed[0] != wanted[0]:
        return (
            f"is a DTensor placed {placed[1]} on {placed[0]} but the leaf is placed "
            f"{wanted[1]} on {wanted[0]}; place the {what} as the leaf is "
            "(DTensor.redistribute)"
        )
    here, there = mask.to_local().shape, leaf.to_local().shape  # type: ignore[attr-defined]
    if here != there:
        return (
            f"has a local piece of shape {tuple(here)} on this rank but the leaf's piece has "
            f"shape {tuple(there)}; build the {what} from the leaf's own pieces"
        )
    return None


def local_piece(tensor: Tensor) -> Tensor:
    """This rank's piece of a DTensor (a view of its storage); a plain tensor as it is.

    Examples:
        >>> x = torch.ones(2)
        >>> local_piece(x) is x
        True
    """
    return tensor.to_local() if _is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def placed_as(leaf: Tensor, piece: Tensor) -> Tensor:
    """``piece``, this rank's piece of a tensor of ``leaf``'s shape, placed as ``leaf`` is.

    A DTensor of ``leaf``'s mesh, placements, shape and stride whose local piece is ``piece``
    (no communication, no check across ranks); ``piece`` itself where ``leaf`` is a plain
    tensor. Gradients flow through.

    Examples:
        >>> x = torch.ones(2)
        >>> placed_as(x, x * 2)
        tensor([2., 2.])
    """
    if not _is_dtensor(leaf):
        return piece
    return _dtensor_class().from_local(  # type: ignore[no-any-return]
        piece,
        leaf.device_mesh,  # type: ignore[attr-defined]
        leaf.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=leaf.shape,
        stride=leaf.stride(),
    )


def _on_pieces(leaf: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn(leaf, mask)``; for DTensors, ``fn`` of the local pieces, placed as ``leaf`` is.

    No communication: each rank computes its own piece (``to_local`` and ``from_local``
    carry gradients through).
    """
    return placed_as(leaf, fn(local_piece(leaf), local_piece(mask)))


def fsdp_managed(module: nn.Module) -> str | None:
    """The first submodule of ``module`` that FSDP2 manages, as a message names it, or None.

    ``torch.distributed.fsdp.fully_shard`` makes a module an ``FSDPModule``; its forward
    all-gathers the parameters FSDP2 holds, whatever ``torch.func.functional_call`` put in
    their place.

    Examples:
        >>> fsdp_managed(torch.nn.Linear(2, 2)) is None
        True

    Args:
        module: a module.

    Returns:
        ``"the module (Type)"`` or ``"its submodule 'name' (Type)"``, or None where no
        submodule is FSDP2's.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    managed = None if fsdp is None else getattr(fsdp, "FSDPModule", None)
    if managed is None:
        return None
    for name, sub in module.named_modules():
        if isinstance(sub, managed):
            where = "the module" if name == "" else f"its submodule {name!r}"
            return f"{where} ({type(sub).__name__})"
    return None


def checked_masks(
    params: Any, masks: Any, *, function: str
) -> tuple[list[str], list[Any], list[Tensor | None], PyTreeSpec]:
    """Paths, leaves, mask leaves (None: dense) and structure, after checking every mask.

    The one check of a masks pytree against its params, shared by :func:`apply_masks`,
    :func:`functional_call` and the export functions. Everything is checked before the
    caller touches a leaf, so that an error never leaves params half-updated.
    ``masks=None`` means no leaf is masked. Every leaf of ``params`` must be a tensor (None
    is an empty entry), masked or not. A flat dict of params may be masked by a dict of
    some of its keys.

    Examples:
        >>> params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
        >>> paths, leaves, masks, _ = checked_masks(
        ...     params, {"w": torch.ones(2, 2, dtype=torch.bool)}, function="demo"
        ... )
        >>> paths, [m is None for m in masks]
        (['b', 'w'], [True, False])

    Args:
        params: a pytree of tensors.
        masks: ``params``' structure with a bool tensor of the leaf's shape or None at every
            leaf, a dict of some keys of a flat dict ``params``, or None.
        function: the name that starts every error message.

    Returns:
        ``(paths, leaves, mask_leaves, spec)``, in the pytree's flattening order.

    Raises:
        TypeError: a leaf is not a tensor, or a mask is not a bool tensor.
        ValueError: the structures differ, or a mask's shape or device is not its leaf's,
            or a mask is not placed as its leaf (see :func:`sharding_mismatch`).
    """
    paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
    if masks is None:
        return paths, leaves, [None] * len(leaves), spec
    try:
        mask_leaves = leaves_like(spec, masks)
    except ValueError:
        mask_leaves = _partial_flat(params, paths, spec, masks, function=function)
    for path, leaf, mask in zip(paths, leaves, mask_leaves, strict=True):
        if mask is None:
            continue
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(
                f"{function}: the mask at {path!r} must be a torch.bool tensor or None, "
                f"got {describe(mask)}"
            )
        if mask.shape != leaf.shape:
            raise ValueError(
                f"{function}: the mask at {path!r} has shape {tuple(mask.shape)} but the "
                f"leaf has shape {tuple(leaf.shape)}"
            )
        problem = sharding_mismatch(leaf, mask)
        if problem is not None:
            raise ValueError(f"{function}: the mask at {path!r} {problem}")
        if mask.device != leaf.device:
            raise ValueError(
                f"{function}: the mask at {path!r} is on {mask.device} but the leaf is on "
                f"{leaf.device}"
            )
    return paths, leaves, mask_leaves, spec


def _partial_flat(
    params: Any, paths: list[str], spec: PyTreeSpec, masks: Any, *, function: str
) -> list[Any]:
    """The mask leaves of a dict of masks for some keys of a flat dict of params.

    A flat dict (every value a tensor, as ``dict(model.named_parameters())``) may be masked
    by a dict that holds only the masked keys: a key it leaves out is not masked. Any other
    pytree of masks needs an entry, None where unmasked, at every leaf of ``params``.
    """
    flat = isinstance(params, Mapping) and set(paths) == {
        key for key, value in params.items() if value is not None
    }
    if flat and isinstance(masks, Mapping):
        known = set(paths)
        extra = [
            key
            for key, mask in masks.items()
            if key not in known and not (mask is None and key in params)
        ]
        if not extra:
            return [masks.get(path) for path in paths]
        shown = [k if isinstance(k, str) and len(k) <= 80 else describe(k) for k in extra[:5]]
        raise ValueError(
            f"{function}: masks has keys that are not keys of params: {shown} "
            f"({len(extra)} in all); params has {len(paths)} keys, e.g. {paths[:5]}"
        )
    raise ValueError(
        f"{function}: masks do not have the structure of params "
        f"({describe_structure_mismatch(spec, masks)}); give a mask or None at every "
        "leaf of params (None: unmasked), as fs.compute_masks(params, rules) returns them"
        + ("" if flat else ", or use a flat dict of params and a dict of some of its masks")
    )


def _check_no_meta_mix(
    module: nn.Module,
    paths: list[str],
    leaves: list[Any],
    args: Any,
    kwargs: Mapping[str, Any] | None,
) -> None:
    """Raise if meta tensors (shapes only) and real ones meet in one forward."""
    inputs = list(args) if isinstance(args, (tuple, list)) else [args]
    inputs += list((kwargs or {}).values())
    named = [(f"the leaf at {path!r}", leaf) for path, leaf in zip(paths, leaves, strict=True)]
    given = set(paths)
    own = [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]
    named += [(f"the module's {name!r}", t) for name, t in own if name not in given]
    named += [(f"input {i}", x) for i, x in enumerate(inputs) if isinstance(x, Tensor)]
    meta = next((name for name, t in named if t.device.type == "meta"), None)
    real = next(((name, t) for name, t in named if t.device.type != "meta"), None)
    if meta is not None and real is not None:
        raise ValueError(
            f"functional_call: {meta} is on the meta device but {real[0]} is on "
            f"{real[1].device}; a forward runs on meta tensors alone (shapes) or on real ones"
        )


def _masked_forward(leaf: Tensor, mask: Tensor, *, straight_through: bool) -> Tensor:
    """``leaf * mask``; with ``straight_through`` its gradient is the upstream one, unmasked.

    The mask is cast to the leaf's dtype once (a CPU multiply by a bool tensor casts it into
    a temporary anyway, and the backward would cast it again), read as uint8: the same bytes,
    and a cast about 1.5x faster than from bool. Straight-through subtracts the pruned values
    as a constant: ``leaf - leaf * ~mask`` is ``leaf * mask`` exactly for finite values, and
    the subtraction passes gradients through unchanged.
    """
    if straight_through:
        return leaf - (leaf * mask.logical_not().view(torch.uint8)).detach()
    return leaf * mask.view(torch.uint8).to(leaf.dtype)


def _zero_pruned_(leaf: Tensor, mask: Tensor) -> None:
    """Zero ``leaf`` in place where ``mask`` is False (+0.0, even at inf or NaN)."""
    bits = _SAME_SIZE_INT.get(leaf.element_size())
    if (leaf.is_floating_point() or leaf.is_complex()) and bits is not None:
        words = leaf.view(bits)
        if leaf.is_contiguous() and mask.is_contiguous() and leaf.device.type == "cpu":
            _multiply_in_chunks_(words.view(-1), mask.view(-1).view(torch.uint8))
        else:
            words.mul_(mask)  # the bit pattern times 0 or 1
    elif leaf.is_floating_point() or leaf.is_complex():
        leaf.masked_fill_(mask.logical_not(), 0)
    else:
        leaf.mul_(mask)


def _multiply_in_chunks_(words: Tensor, mask: Tensor) -> None:
    """``words *= mask`` (1-D, same length), the mask cast chunk by chunk into one buffer.

    On CPU a multiply by a tensor of another dtype casts element by element in a slow
    kernel, and casting the whole mask at once allocates a leaf-sized tensor whose fresh
    pages cost as much again; a small reused buffer avoids both (about 3.5x faster).
    """
    buffer = torch.empty(min(_CHUNK, words.numel()), dtype=words.dtype)
    for start in range(0, words.numel(), _CHUNK):
        stop = min(start + _CHUNK, words.numel())
        cast = buffer[: stop - start].copy_(mask[start:stop])
        words[start:stop].mul_(cast)


def apply_masks(params: Any, masks: Any) -> Any:
    """A new pytree whose masked leaves are zeroed where their mask is False.

    Leaves whose mask is None are returned as they are (the same objects); ``masks=None``
    returns ``params`` itself. Any dtype is masked, float8 and complex too: zeroing entries
    needs no arithmetic that a dtype could lack. Pruned entries are exactly 0.0 even where
    the leaf is inf or NaN, and so are gradients through them, even where the upstream
    gradient is inf or NaN.

    A DTensor leaf (FSDP2, tensor parallelism) takes a DTensor mask placed as it is (what
    ``fs.compute_masks`` returns for it); its masked leaf is a DTensor placed the same way,
    made piece by piece on each rank, with no communication.

    Examples:
        >>> import torch, funcsparse as fs
        >>> params = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.ones(2)}
        >>> masks = {"w": torch.tensor([[True, False], [False, True]]), "b": None}
        >>> fs.apply_masks(params, masks)["w"]
        tensor([[1., 0.],
                [0., 4.]])

    Args:
        params: a pytree of tensors.
        masks: a pytree of ``params``' structure with a ``torch.bool`` tensor of the leaf's
            shape and device, or None, at every leaf; or None for no masks. For a flat
            dict of params (``dict(model.named_parameters())``), a dict of masks for some
            of its keys is enough: a key it leaves out is not masked (a key params lacks is
            an error). Any other pytree needs an entry, None where unmasked, at every leaf.

    Returns:
        A pytree of ``params``' structure.

    Raises:
        ValueError: the structures differ (for a flat dict: masks has a key params lacks),
            or a mask's shape or device differs from its leaf's, or a mask is not placed as
            its DTensor leaf (a plain mask for a DTensor, or other placements or mesh).
        TypeError: a leaf of ``params`` is not a tensor (masked or not; None is an empty
            entry, and a module passed whole is refused too), or a mask is not a bool
            tensor. The message names the leaf path.
    """
    if masks is None:
        checked_masks(params, None, function="apply_masks")
        return params
    _, leaves, mask_leaves, spec = checked_masks(params, masks, function="apply_masks")
    masked = [
        leaf if mask is None else _on_pieces(leaf, mask, _zeroed)
        for leaf, mask in zip(leaves, mask_leaves, strict=True)
    ]
    return unflatten(spec, masked)


def _zeroed(leaf: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, leaf, torch.zeros((), dtype=leaf.dtype, device=leaf.device))


def apply_masks_(params: Any, masks: Any) -> Any:
    """Zero the pruned entries of ``params``' tensors in place; return ``params``.

    The projection step of a masked training loop: after ``optimizer.step()`` on a module's
    own parameters, or on the fresh params a functional update made. Runs under
    ``torch.no_grad()``. Pruned entries become +0.0 even where they hold inf or NaN; kept
    entries keep their exact values. Every mask is checked before any tensor is touched.

    Training dense on params projected after every update is the fast masked loop: with an
    element-wise optimizer (SGD, Adam, AdamW), the kept weights follow training with masks in
    the forward (:func:`functional_call`) exactly, as long as the masks only shrink (a pruned
    entry's optimizer state has seen dense gradients, so it must not come back).

    This is also the way to prune an FSDP2 (``fully_shard``) model: its parameters are
    DTensors holding this rank's piece, and with the DTensor masks ``fs.compute_masks`` (or
    ``fs.Pruner``) returns for them, each rank zeroes its own piece in place, with no
    communication; FSDP2's next forward all-gathers the projected pieces. Take the params
    while FSDP2 holds them sharded (after ``backward`` and ``optimizer.step()``; a module
    with ``reshard_after_forward=False`` holds plain unsharded ones after a forward, which
    ``funcsparse.distributed.fsdp.sharded_params`` reshards).

    Examples:
        >>> import torch, funcsparse as fs
        >>> model = torch.nn.Linear(2, 2)
        >>> masks = {"weight": torch.tensor([[True, False], [False, True]]), "bias": None}
        >>> params = fs.apply_masks_(dict(model.named_parameters()), masks)
        >>> (model.weight == 0).tolist()
        [[False, True], [True, False]]
        >>> params["weight"] is model.weight
        True

    Args:
        params: a pytree of tensors; the masked ones are modified in place.
        masks: as in :func:`apply_masks`.

    Returns:
        ``params``, the same object.

    Raises:
        ValueError: as :func:`apply_masks`; or a masked leaf's entries share memory (an
            expanded tensor), which cannot be written in place.
        TypeError: as :func:`apply_masks`.
    """
    paths, leaves, mask_leaves, _ = checked_masks(params, masks, function="apply_masks_")
    with torch.no_grad():  # a DTensor's pieces: views of its storage, written in place below
        pieces = [
            (leaf, mask) if mask is None else (local_piece(leaf), local_piece(mask))
            for leaf, mask in zip(leaves, mask_leaves, strict=True)
        ]
    for path, (leaf, mask) in zip(paths, pieces, strict=True):
        if mask is not None and any(
            stride == 0 and size > 1 for stride, size in zip(leaf.stride(), leaf.shape, strict=True)
        ):
            raise ValueError(
                f"apply_masks_: the leaf at {path!r} is {describe(leaf)} whose entries share "
                "memory (an expanded tensor, stride 0); it cannot be masked in place: use "
                "fs.apply_masks, or pass leaf.contiguous()"
            )
    with torch.no_grad():
        for leaf, mask in pieces:
            if mask is not None:
                _zero_pruned_(leaf, mask)
    return params


def functional_call(
    module: nn.Module,
    params: Any,
    masks: Any,
    args: Any,
    kwargs: dict[str, Any] | None = None,
    *,
    straight_through: bool = False,
    strict: bool = False,
    tie_weights: bool = True,
) -> Any:
    """Run ``module`` with ``params`` masked by ``masks``, through ``torch.func.functional_call``.

    funcsparse mutates nothing: not the module, not ``params`` (the container or its
    tensors), not ``masks``. ``params`` may cover only part of the module: the rest comes
    from the module's own parameters and buffers. Composes with ``torch.func.grad``,
    ``vmap`` and ``torch.compile(fullgraph=True)``.

    What the module's forward itself updates in place, torch updates, exactly as
    ``torch.func.functional_call`` (and ``module(x)``) does: BatchNorm in train mode adds to
    its ``running_mean``, ``running_var`` and ``num_batches_tracked``, in the module's own
    buffers or in the tensors passed for them in ``params``. To keep them, pass copies
    (``{k: b.clone() for k, b in module.named_buffers()}``) in ``params``, or call
    ``module.eval()``. (:func:`funcsparse.calibration.collect_input_norms` runs on copies.)

    The forward uses ``leaf * mask``, as torch.ao's FakeSparsity does: pruned entries of
    finite weights are exactly 0.0 (a pruned inf or NaN gives NaN; :func:`apply_masks` zeroes
    those too). Gradients are exactly zero at pruned entries, unless ``straight_through``.

    When the params are kept projected (pruned entries already zero, e.g. by
    :func:`apply_masks_` after every update), ``masks=None`` gives the same loss and the same
    gradients at kept entries, faster.

    DTensor params (tensor parallelism) take DTensor masks placed as they are; each rank masks
    its own piece, with no communication. A module managed by FSDP2 (``fully_shard``) is
    refused: FSDP2's forward all-gathers the parameters it holds and swaps them in, so it
    silently ignores the params passed here (and a module's first forward even adopts them
    as its own parameters). Prune it in place instead: :func:`apply_masks_` on
    ``dict(model.named_parameters())`` after every optimizer step, then ``model(x)``.

    Examples:
        >>> import torch, funcsparse as fs
        >>> model = torch.nn.Linear(4, 1, bias=False)
        >>> params = {"weight": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
        >>> masks = {"weight": torch.tensor([[False, False, True, True]])}
        >>> x = torch.ones(1, 4)
        >>> fs.functional_call(model, params, masks, (x,))
        tensor([[7.]])
        >>> def loss(p, straight_through):
        ...     out = fs.functional_call(model, p, masks, (x,), straight_through=straight_through)
        ...     return out.sum()
        >>> torch.func.grad(loss)(params, False)["weight"]
        tensor([[0., 0., 1., 1.]])
        >>> torch.func.grad(loss)(params, True)["weight"]
        tensor([[1., 1., 1., 1.]])

    Args:
        module: the module to run.
        params: a pytree of tensors whose dotted leaf paths are names of the module's
            parameters or buffers (``dict(module.named_parameters())`` or a part of it).
        masks: masks for ``params`` (see :func:`apply_masks`: an entry at every leaf, or a
            dict of some keys of a flat dict); None runs ``params`` dense.
        args: positional inputs, a tensor or a tuple.
        kwargs: keyword inputs. Default None.
        straight_through: the forward is masked, the backward is dense: the gradient reaches
            pruned entries unchanged, as if unmasked (for methods that let weights come back,
            e.g. movement pruning). Default False.
        strict: as in ``torch.func.functional_call``: require params for every parameter and
            buffer. Default False.
        tie_weights: as in ``torch.func.functional_call``. Default True.

    Returns:
        Whatever ``module`` returns.

    Raises:
        ValueError: a leaf path names no parameter or buffer of ``module``; ``masks`` does
            not fit ``params`` (see :func:`apply_masks`); meta-device tensors and real
            ones meet among ``params`` and the inputs; or ``module`` (or a submodule) is
            managed by FSDP2.
        TypeError: ``module`` is not a module, a leaf of ``params`` is not a tensor,
            ``kwargs`` is not a dict, a flag is not a bool; or as :func:`apply_masks`.
    """
    function = "functional_call"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{function}: module must be a torch.nn.Module, got {describe(module)}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"{function}: kwargs must be a dict or None, got {describe(kwargs)}")
    for name, flag in (
        ("straight_through", straight_through),
        ("strict", strict),
        ("tie_weights", tie_weights),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{function}: {name} must be a bool, got {describe(flag)}")
    managed = fsdp_managed(module)
    if managed is not None:
        raise ValueError(
            f"{function}: {managed} is managed "
            "by FSDP2 (fully_shard), whose forward all-gathers the sharded parameters FSDP2 "
            "holds: it would ignore the masked params (or, on a first forward, adopt them "
            "as its own). Mask FSDP2's parameters in place instead: "
            "fs.apply_masks_(dict(model.named_parameters()), masks) after every optimizer "
            "step, then call model(x)"
        )
    paths, leaves, mask_leaves, _ = checked_masks(params, masks, function=function)
    for path, leaf in zip(paths, leaves, strict=True):
        if str(leaf.dtype).startswith("torch.float8"):
            raise TypeError(
                f"{function}: the leaf at {path!r} is {describe(leaf)}; float8 params are not "
                "supported in a forward (torch has no general float8 arithmetic): upcast them"
            )
    _check_no_meta_mix(module, paths, leaves, args, kwargs)
    known = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    known.update(name for name, _ in module.named_buffers(remove_duplicate=False))
    unknown = [path for path in paths if path not in known]
    if unknown:
        raise ValueError(
            f"functional_call: params has leaves that name no parameter or buffer of the "
            f"{type(module).__name__}: {unknown[:8]}"
        )
    masked = [
        leaf
        if mask is None
        else _on_pieces(
            leaf, mask, lambda x, m: _masked_forward(x, m, straight_through=straight_through)
        )
        for leaf, mask in zip(leaves, mask_leaves, strict=True)
    ]
    return torch.func.functional_call(
        module,
        dict(zip(paths, masked, strict=True)),
        args,
        kwargs,
        strict=strict,
        tie_weights=tie_weights,
    )
