"""Squash: the masked params as plain dense tensors, keyed by leaf path, for any framework."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from funcsparse._apply import checked_masks
from funcsparse._tree import in_dict_order

__all__ = ["squash"]


def squash(params: Any, masks: Any) -> dict[str, Tensor]:
    """The masked dense params (pruned entries +0.0) as a flat dict of plain tensors.

    Where :func:`funcsparse.apply_masks` keeps the pytree's structure and autograd (for a
    forward or a training step), ``squash`` gives what a file or another framework wants:
    a flat dict keyed by dotted leaf path (the ``named_parameters()`` names, so
    ``model.load_state_dict(fs.squash(params, masks), strict=False)`` loads it), of
    detached, contiguous tensors that share no memory with ``params``. Pruned entries are
    +0.0 even where the param is inf or NaN (the masking is ``apply_masks``'s); leaves whose
    mask is None are copied as they are. Nothing is mutated.

    Examples:
        >>> import torch, funcsparse as fs
        >>> model = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, float("nan")], [3.0, 4.0]]))
        >>> masks = {"weight": torch.tensor([[True, False], [False, True]])}
        >>> flat = fs.squash(dict(model.named_parameters()), masks)
        >>> flat["weight"]
        tensor([[1., 0.],
                [0., 4.]])
        >>> sorted(flat), flat["weight"].requires_grad
        (['bias', 'weight'], False)
        >>> model.load_state_dict(flat, strict=False)
        <All keys matched successfully>

    Args:
        params: a pytree of tensors (e.g. ``dict(model.named_parameters())``).
        masks: as in :func:`funcsparse.apply_masks`: a bool mask or None at every leaf, a
            dict of some keys of a flat dict of params, or None (nothing masked).

    Returns:
        ``{path: tensor}``: in the key order of ``params`` for a flat dict (as
        ``named_parameters()`` gives them; None entries are skipped), else in the pytree's
        leaf order (dict keys sorted).

    Raises:
        ValueError: the structures differ, or a mask's shape or device differs from its
            leaf's (the message names the leaf).
        TypeError: a leaf of ``params`` is not a tensor, or a mask is not a bool tensor.
    """
    paths, leaves, _ = squashed_leaves(params, masks, function="squash")
    return in_dict_order(params, dict(zip(paths, leaves, strict=True)))


def squashed_leaves(
    params: Any, masks: Any, *, function: str
) -> tuple[list[str], list[Tensor], list[Tensor | None]]:
    """Paths, squashed leaves and mask leaves (None: unmasked) of ``params``, all checked.

    The checks are :func:`funcsparse.apply_masks`'s (:func:`funcsparse._apply.checked_masks`),
    with messages that start with ``function``. For the sparse layouts, which convert after
    this.
    """
    paths, leaves, mask_leaves, _ = checked_masks(params, masks, function=function)
    with torch.no_grad():
        leaves = [
            leaf
            if mask is None
            else torch.where(mask, leaf, torch.zeros((), dtype=leaf.dtype, device=leaf.device))
            for leaf, mask in zip(leaves, mask_leaves, strict=True)
        ]
    squashed = [
        leaf.detach().clone(memory_format=torch.contiguous_format)
        if mask is None
        else leaf.detach().contiguous()
        for leaf, mask in zip(leaves, mask_leaves, strict=True)
    ]
    return paths, squashed, mask_leaves
