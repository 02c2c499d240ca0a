"""torch.ao.pruning run as an oracle: the masks it computes (or means to compute), as bool.

``torch_ao_mask(method, tensor)`` dispatches on the method's type; the other functions are
the per-sparsifier oracles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.pruning.sparsifier.nearly_diagonal_sparsifier import NearlyDiagonalSparsifier
from torch.ao.pruning.sparsifier.weight_norm_sparsifier import WeightNormSparsifier

from funcsparse.methods import NM, NearlyDiagonal, WeightNorm

__all__ = [
    "ao_nearly_diagonal_mask",
    "ao_weight_norm_mask",
    "torch_ao_mask",
]


def _stored_mask(model: nn.Module) -> Tensor:
    """The mask torch.ao's parametrization holds for ``model[0].weight``, as bool."""
    layer: Any = model[0]  # type: ignore[index]
    mask: Tensor = layer.parametrizations.weight[0].mask
    return mask.bool()


def _linear_with(weight: Tensor) -> nn.Sequential:
    height, width = weight.shape
    # Built without initialisation: the global torch RNG is never advanced by an oracle.
    linear = nn.utils.skip_init(nn.Linear, width, height, bias=False, dtype=weight.dtype)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        linear.weight.copy_(weight)
    return nn.Sequential(linear)


def ao_weight_norm_mask(
    weight: Tensor,
    *,
    sparsity_level: float,
    sparse_block_shape: tuple[int, int],
    zeros_per_block: int | None,
    norm: int | Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """torch.ao's WeightNormSparsifier mask after one step(), as bool."""
    model = _linear_with(weight)
    sparsifier = WeightNormSparsifier(
        sparsity_level=sparsity_level,
        sparse_block_shape=sparse_block_shape,
        zeros_per_block=zeros_per_block,
        norm=norm,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])  # type: ignore[no-untyped-call]
        sparsifier.step()
    return _stored_mask(model)


def ao_nearly_diagonal_mask(weight: Tensor, *, nearliness: int) -> Tensor:
    """torch.ao's NearlyDiagonalSparsifier mask after one step(), as bool."""
    model = _linear_with(weight)
    sparsifier = NearlyDiagonalSparsifier(nearliness=nearliness)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])  # type: ignore[no-untyped-call]
    sparsifier.step()
    return _stored_mask(model)


def torch_ao_mask(method: Any, tensor: Tensor) -> Tensor | None:
    """torch.ao's mask for ``method`` on ``tensor``, where funcsparse claims equality.

    None when the method has no torch.ao counterpart, the tensor is empty, or the scores
    tie (torch.ao breaks ties by whatever ``topk`` returns; funcsparse by its documented
    rule). A block side far longer than the weight's (torch.ao would pad the weight to
    gigabytes) is clamped to the weight's side first: every block covers the same entries
    and its padded mean only scales by a constant, so torch.ao's mask is the same.
    """
    if tensor.numel() == 0:  # torch.ao's pooling and loops fail on empty weights
        return None
    if isinstance(method, NearlyDiagonal):
        if tensor.dim() != 2:
            return None
        return ao_nearly_diagonal_mask(tensor, nearliness=method.nearliness)
    if isinstance(method, NM):
        return _nm_as_weight_norm(method, tensor)
    if not isinstance(method, WeightNorm) or _scores_tie(method, tensor):
        return None
    level = float(method.sparsity)
    config: dict[str, Any] = {
        "sparsity_level": level,
        "sparse_block_shape": method.sparse_block_shape,
        "zeros_per_block": method.block_zeros,
        "norm": method.norm,
    }
    height, width = tensor.shape
    rows, cols = method.sparse_block_shape
    padded = -(-height // rows) * rows * -(-width // cols) * cols
    if padded > 16 * tensor.numel() + 4096:
        fit = (min(rows, height), min(cols, width))
        whole = method.block_zeros >= method.block_size
        config["sparse_block_shape"] = fit
        config["zeros_per_block"] = fit[0] * fit[1] if whole else method.block_zeros
    return ao_weight_norm_mask(tensor, **config)[:height, :width]


def _nm_as_weight_norm(method: NM, tensor: Tensor) -> Tensor | None:
    """N:M along the last dim of a 2-D weight is torch.ao's WeightNorm with (1, m) blocks."""
    if tensor.dim() != 2 or method.axis not in (-1, 1) or not method.n < method.m:
        return None
    if torch.unique(tensor.abs()).numel() != tensor.numel() or bool(tensor.isnan().any()):
        return None
    return ao_weight_norm_mask(
        tensor,
        sparsity_level=1.0,
        sparse_block_shape=(1, method.m),
        zeros_per_block=method.m - method.n,
        norm=1,
    )


def _scores_tie(method: WeightNorm, tensor: Tensor) -> bool:
    """Whether two entries' scores, or two blocks' mean scores, are equal (or NaN)."""
    if tensor.numel() == 0:
        return False
    scores = method._scores(tensor.detach()).flatten()
    blocks = method._block_scores(tensor.detach()).flatten()
    return any(
        bool(values.isnan().any()) or torch.unique(values).numel() != values.numel()
        for values in (scores, blocks)
    )
