"""torch.ao.pruning and torch.nn.utils.prune run as oracles: the masks they compute, as bool."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.ao.pruning import NearlyDiagonalSparsifier, WeightNormSparsifier


def _linear_with(weight: Tensor) -> nn.Sequential:
    height, width = weight.shape
    linear = nn.Linear(width, height, bias=False, dtype=weight.dtype)
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
        sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
        sparsifier.step()
    return model[0].parametrizations.weight[0].mask.bool()


def ao_weight_norm_padded_parts(
    weight: Tensor,
    *,
    sparsity_level: float,
    sparse_block_shape: tuple[int, int],
    zeros_per_block: int,
    norm: int = 2,
) -> Tensor:
    """What torch.ao means where it crashes: its tensor mask and block mask, each cropped.

    torch.ao computes the level mask on the weight and the per-block mask on a NaN-padded
    grid, then fails to combine them when the block shape does not divide the weight.
    """
    sparsifier = WeightNormSparsifier(
        sparsity_level=sparsity_level,
        sparse_block_shape=sparse_block_shape,
        zeros_per_block=zeros_per_block,
        norm=norm,
    )
    scores = sparsifier.norm_fn(weight)
    height, width = weight.shape
    tensor_mask = sparsifier._make_tensor_mask(
        data=scores,
        input_shape=scores.shape,
        sparsity_level=sparsity_level,
        sparse_block_shape=sparse_block_shape,
    )[:height, :width]
    block_mask = sparsifier._make_block_mask(
        data=scores, sparse_block_shape=sparse_block_shape, zeros_per_block=zeros_per_block
    )[:height, :width]
    return torch.logical_or(tensor_mask, block_mask)


def ao_nearly_diagonal_mask(weight: Tensor, *, nearliness: int) -> Tensor:
    """torch.ao's NearlyDiagonalSparsifier mask after one step(), as bool."""
    model = _linear_with(weight)
    sparsifier = NearlyDiagonalSparsifier(nearliness=nearliness)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    return model[0].parametrizations.weight[0].mask.bool()
