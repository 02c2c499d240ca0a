"""Pruning an FSDP2 (``torch.distributed.fsdp.fully_shard``) model, and checkpointing it.

FSDP2 holds each parameter as a DTensor (``Shard(0)``) whose local piece is this rank's
share. Masks are computed on those pieces (``fs.compute_masks`` or ``fs.Pruner`` on
``dict(model.named_parameters())``), come back as DTensors placed the same way, and are
applied in place with ``fs.apply_masks_`` after every optimizer step: each rank zeroes its
own piece, and FSDP2's next forward all-gathers the projected pieces.

``fs.functional_call`` refuses an FSDP2 module: FSDP2's forward swaps in the parameters it
all-gathers from its own pieces, so the masked params passed in would be silently ignored
(and on a module's first forward, adopted as its parameters).

The loop, on every rank::

    params = fsdp.sharded_params(model)
    state = pruner.init(params)
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        masks, state = pruner.update(params, state)
        fs.apply_masks_(params, masks)
    dcp.save({"model": model.state_dict(), "pruner": state}, checkpoint_id=path)

and to resume, a fresh model and ``state = fsdp.state_template(pruner, params)`` loaded with
``dcp.load({"model": model.state_dict(), "pruner": state}, checkpoint_id=path)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from funcsparse._errors import describe
from funcsparse._tree import flatten_with_paths, unflatten
from funcsparse.pruner import Pruner, PrunerState

__all__ = ["sharded_params", "state_template"]


def sharded_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """``dict(module.named_parameters())`` with every FSDP2 module's parameters sharded.

    Between a forward and its backward (and after a forward of a module made with
    ``reshard_after_forward=False``) FSDP2 registers plain unsharded parameters, whose
    changes it throws away when it reshards: a mask applied to them would be lost. This
    reshards every FSDP2 module of ``module`` first (``FSDPModule.reshard``; a no-op where
    the parameters already are sharded), so the params returned are FSDP2's DTensors, which
    masks and ``fs.apply_masks_`` work on. Call it outside a forward and backward.

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)  # an FSDP2 model after fully_shard, in practice
        >>> sorted(sharded_params(model))
        ['bias', 'weight']

    Args:
        module: a module, FSDP2-managed in part, in whole or not at all.

    Returns:
        A dict of parameter names to the parameters (DTensors where FSDP2 manages them).

    Raises:
        TypeError: ``module`` is not a ``torch.nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"sharded_params: module must be a torch.nn.Module, got {describe(module)}")
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()
    return dict(module.named_parameters())


def state_template(pruner: Pruner, params: Any) -> PrunerState:
    """A pruner state to load a ``torch.distributed.checkpoint`` into.

    ``dcp.load`` writes tensors in place, into the tensors of the state dict it is given;
    a fresh state (``pruner.init(params)``) has None where a saved state has masks. This is
    ``pruner.init(params)`` with a bool tensor at every entry of ``masks``, placed as its
    param (a DTensor for a DTensor param; its values are undefined until loaded). Where the
    saved state holds None (no rule, or saved before the first mask update), ``dcp.load``
    puts None back. After the load, ``pruner.update`` resumes bit for bit.

    Examples:
        >>> import torch, funcsparse as fs
        >>> params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
        >>> template = state_template(fs.Pruner({"w": fs.Magnitude(0.5)}), params)
        >>> template["masks"]["w"].dtype, template["step"]
        (torch.bool, 0)

    Args:
        pruner: the pruner whose state was saved.
        params: the params of the fresh model (``sharded_params(model)``), of the saved
            state's structure.

    Returns:
        A :class:`funcsparse.pruner.PrunerState` to pass to ``dcp.load`` (under the key the
        state was saved under) and then to ``pruner.update``.

    Raises:
        TypeError: ``pruner`` is not a ``fs.Pruner``; or what ``pruner.init(params)``
            raises.
        ValueError: what ``pruner.init(params)`` raises.
    """
    if not isinstance(pruner, Pruner):
        raise TypeError(f"state_template: pruner must be a fs.Pruner, got {describe(pruner)}")
    state = pruner.init(params)
    _, leaves, spec = flatten_with_paths(params, function="state_template", tensors=True)
    slots = [torch.empty_like(leaf, dtype=torch.bool) for leaf in leaves]
    return PrunerState(
        step=state["step"],
        fraction=state["fraction"],
        masks=unflatten(spec, slots),
        method_state=state["method_state"],
    )
