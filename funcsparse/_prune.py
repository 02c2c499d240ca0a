"""prune: the masks of a rules mapping and the pruned params (SparseGPT's updated weights)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from funcsparse._apply import apply_masks
from funcsparse._compute import masks_with_data
from funcsparse._tree import flatten_with_paths, leaves_like, unflatten
from funcsparse.methods._base import MaskMethod

__all__ = ["Pruned", "prune"]


class Pruned(NamedTuple):
    """What :func:`prune` returns.

    ``masks``: :func:`funcsparse.compute_masks`' result (``params``' structure, a bool mask
    or None per leaf). ``params``: a new pytree of ``params``' structure holding the pruned
    weights. ``info``: ``{leaf path: {name: number}}`` for every leaf of a method that
    updates weights (``fs.SparseGPT``: ``{"damp": ..., "retries": ..., "error": ...}``).
    """

    masks: Any
    params: Any
    info: dict[str, dict[str, float]]


def prune(
    params: Any,
    rules: Mapping[str, MaskMethod | None],
    *,
    prev_masks: Any = None,
    **leaf_data: Any,
) -> Pruned:
    """Prune ``params`` by ``rules``: the masks, and new params with the pruned weights.

    The masks are :func:`funcsparse.compute_masks`' (the same rules, checks and errors,
    named ``prune``). The new params hold, at a leaf of a method that updates the weights
    it keeps (``fs.SparseGPT``: OBS updates from the layer's ``hessian``), that method's
    updated weight (``method.prune_leaf``); at a leaf of any other rule, the leaf with its
    pruned entries zeroed (:func:`funcsparse.apply_masks`); at an unmatched leaf, the leaf
    itself (the same object). Nothing passed in is changed.

    A global method (``fs.GlobalMagnitude``) selects across its rule's leaves as in
    ``compute_masks``. DTensor leaves work for methods that only mask; a method that
    updates weights refuses them (prune an unsharded copy). ``prev_masks`` means what it
    means for ``compute_masks``: entries pruned before stay pruned (SparseGPT prunes them
    again and its updates make up for them).

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[4.0, -1.0, 2.0, 0.5], [1.0, 3.0, -0.25, 2.0]])
        >>> params = {"fc.weight": w, "fc.bias": torch.ones(2)}
        >>> x = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.9, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        >>> hessian = {"fc.weight": x.T @ x, "fc.bias": None}  # x: calibration inputs
        >>> result = fs.prune(params, {"fc.weight": fs.SparseGPT(0.5)}, hessian=hessian)
        >>> result.masks["fc.weight"]  # inputs 0 and 1 fire together: one of them will do
        tensor([[False,  True,  True, False],
                [False,  True, False,  True]])
        >>> result.params["fc.weight"]  # the kept weights absorb what the pruned ones did
        tensor([[0.0000, 2.9460, 1.5733, 0.0000],
                [0.0000, 3.9865, 0.0000, 1.9317]])
        >>> magnitude = fs.prune(params, {"fc.weight": fs.Magnitude(0.5)}).params["fc.weight"]
        >>> sparse_gpt = result.params["fc.weight"]  # ||x W^T - x W'^T||: a smaller error
        >>> [round(float((x @ v.T - x @ w.T).norm()), 2) for v in (magnitude, sparse_gpt)]
        [1.86, 1.35]
        >>> result.params["fc.bias"] is params["fc.bias"]
        True
        >>> result.info["fc.weight"]["damp"]
        0.01

    Args:
        params: a pytree of tensors, as for ``compute_masks``.
        rules: leaf paths or glob patterns mapped to methods (or None to exclude).
        prev_masks: masks from an earlier round (``params``' structure). Default None.
        **leaf_data: per-leaf data pytrees the methods read: ``hessian``
            (``fs.SparseGPT``; ``funcsparse.calibration.collect_hessians``),
            ``input_norms``, ``scores``, ...

    Returns:
        ``Pruned(masks, params, info)``.

    Raises:
        TypeError: what ``compute_masks`` raises on the same input (named ``prune``);
            ``batch_dims`` (not supported: prune each ensemble member on its own).
        ValueError: what ``compute_masks`` raises on the same input (named ``prune``); a
            DTensor leaf of a method that updates weights; a factorisation that fails
            (``fs.SparseGPT`` with too little damping), or updates that overflow the
            weight's dtype, naming the leaf.
    """
    if "batch_dims" in leaf_data:
        raise TypeError(
            "prune: batch_dims is not supported; prune each ensemble member on its own "
            "(fs.compute_masks takes batch_dims for masks alone)"
        )
    results: dict[str, tuple[Tensor, dict[str, float]]] = {}

    def leaf_mask(path: str, method: MaskMethod, leaf: Tensor, data: dict[str, Any]) -> Tensor:
        if not method.updates_weights:
            return method(leaf, **data)
        mask, weight, info = method.prune_leaf(leaf, **data)
        results[path] = (weight, dict(info))
        return mask

    masks = masks_with_data(
        params,
        rules,
        prev_masks=prev_masks,
        leaf_data=leaf_data,
        function="prune",
        leaf_mask=leaf_mask,
    )
    paths, _, spec = flatten_with_paths(params, function="prune", tensors=True)
    mask_leaves = leaves_like(spec, masks)
    zeroed_masks = unflatten(
        spec,
        [None if path in results else m for path, m in zip(paths, mask_leaves, strict=True)],
    )
    zeroed = leaves_like(spec, apply_masks(params, zeroed_masks))
    new = [
        results[path][0] if path in results else leaf
        for path, leaf in zip(paths, zeroed, strict=True)
    ]
    info = {path: info for path, (_, info) in results.items()}
    return Pruned(masks, unflatten(spec, new), info)
