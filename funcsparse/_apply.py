"""Applying masks: zeroed copies of params, and a masked ``torch.func.functional_call``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from funcsparse._tree import (
    describe_structure_mismatch,
    flatten_with_paths,
    leaves_like,
    unflatten,
)
from funcsparse.methods._base import describe

__all__ = ["apply_masks", "functional_call"]


def _masked_leaves(params: Any, masks: Any, *, function: str) -> tuple[list[str], list[Any], Any]:
    """Check ``masks`` against ``params`` completely, then zero the pruned entries."""
    paths, leaves, spec = flatten_with_paths(params, function=function)
    try:
        mask_leaves = leaves_like(spec, masks)
    except ValueError:
        raise ValueError(
            f"{function}: masks do not have the structure of params "
            f"({describe_structure_mismatch(spec, masks)}); build them with "
            "fs.compute_masks(params, rules)"
        ) from None
    for path, leaf, mask in zip(paths, leaves, mask_leaves, strict=True):
        if mask is None:
            continue
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(
                f"{function}: the mask at {path!r} must be a torch.bool tensor or None, "
                f"got {describe(mask)}"
            )
        if not isinstance(leaf, Tensor):
            raise TypeError(f"{function}: the leaf at {path!r} is {describe(leaf)}, not a tensor")
        if mask.shape != leaf.shape:
            raise ValueError(
                f"{function}: the mask at {path!r} has shape {tuple(mask.shape)} but the "
                f"leaf has shape {tuple(leaf.shape)}"
            )
    masked = [
        leaf
        if mask is None
        else torch.where(mask, leaf, torch.zeros((), dtype=leaf.dtype, device=leaf.device))
        for leaf, mask in zip(leaves, mask_leaves, strict=True)
    ]
    return paths, masked, spec


def apply_masks(params: Any, masks: Any) -> Any:
    """A new pytree whose masked leaves are zeroed where their mask is False.

    Leaves whose mask is None are returned as they are (the same objects). Gradients through
    a masked leaf are exactly zero at pruned entries, even where the upstream gradient is
    inf or NaN.

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
            shape, or None, at every leaf.

    Returns:
        A pytree of ``params``' structure.

    Raises:
        ValueError: the structures differ, or a mask's shape differs from its leaf's.
        TypeError: a mask is not a bool tensor, or a masked leaf is not a tensor.
    """
    _, masked, spec = _masked_leaves(params, masks, function="apply_masks")
    return unflatten(spec, masked)


def functional_call(
    module: nn.Module,
    params: Any,
    masks: Any,
    args: Any,
    kwargs: dict[str, Any] | None = None,
    *,
    strict: bool = False,
    tie_weights: bool = True,
) -> Any:
    """Run ``module`` with ``params`` masked by ``masks``, through ``torch.func.functional_call``.

    Neither the module nor ``params`` is mutated. ``params`` may cover only part of the
    module: the rest comes from the module's own parameters and buffers. Composes with
    ``torch.func.grad``, ``vmap`` and ``torch.compile``; gradients are exactly zero at pruned
    entries.

    Examples:
        >>> import torch, funcsparse as fs
        >>> model = torch.nn.Linear(4, 1, bias=False)
        >>> params = {"weight": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
        >>> method = fs.WeightNorm(0.5, sparse_block_shape=(1, 1))
        >>> masks = fs.compute_masks(params, {"weight": method})
        >>> fs.functional_call(model, params, masks, (torch.ones(1, 4),))
        tensor([[7.]])

    Args:
        module: the module to run.
        params: a pytree of tensors whose dotted leaf paths are names of the module's
            parameters or buffers (``dict(module.named_parameters())`` or a part of it).
        masks: masks for ``params`` (see :func:`apply_masks`).
        args: positional inputs, a tensor or a tuple.
        kwargs: keyword inputs. Default None.
        strict: as in ``torch.func.functional_call``: require params for every parameter and
            buffer. Default False.
        tie_weights: as in ``torch.func.functional_call``. Default True.

    Returns:
        Whatever ``module`` returns.

    Raises:
        ValueError: a leaf path names no parameter or buffer of ``module``, or ``masks`` does
            not fit ``params`` (see :func:`apply_masks`).
        TypeError: as :func:`apply_masks`.
    """
    paths, masked, _ = _masked_leaves(params, masks, function="functional_call")
    known = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    known.update(name for name, _ in module.named_buffers(remove_duplicate=False))
    unknown = [path for path in paths if path not in known]
    if unknown:
        raise ValueError(
            f"functional_call: params has leaves that name no parameter or buffer of the "
            f"{type(module).__name__}: {unknown[:8]}"
        )
    return torch.func.functional_call(
        module,
        dict(zip(paths, masked, strict=True)),
        args,
        kwargs,
        strict=strict,
        tie_weights=tie_weights,
    )
