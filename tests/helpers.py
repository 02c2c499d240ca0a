"""Small builders the method tests share: tie-free tensors, levels, a module holding a weight."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import Tensor, nn


def tie_free(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Distinct magnitudes 1..n (a seeded permutation) with random signs, scaled by 1/8."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    magnitudes = torch.randperm(n, generator=g).double() + 1
    signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    return (magnitudes * signs / 8).to(dtype).reshape(shape)


#: A method's level as keyword arguments: ``{"sparsity": fraction}`` or ``{"count": k}``.
Level = dict[str, float | int]


@st.composite
def levels(draw: st.DrawFn, numel: int) -> Level:
    """A level valid for ``numel`` units: ``{"sparsity": f}`` or ``{"count": k <= numel}``."""
    if draw(st.booleans()):
        return {"count": draw(st.integers(0, numel))}
    return {"sparsity": draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)))}


def prune_amount(level: Level) -> float | int:
    """nn.utils.prune's ``amount`` for a level: the fraction as a float, the count as an int."""
    return level["count"] if "count" in level else float(level["sparsity"])


def pruned_count(level: Level, size: int) -> int:
    """Units a level prunes of ``size``: the count, or ``round(sparsity * size)`` (as prune)."""
    return int(level["count"]) if "count" in level else round(level["sparsity"] * size)


def holder(weight: Tensor) -> nn.Module:
    """A module holding ``weight`` as its parameter ``weight`` (any shape)."""
    module = nn.Module()
    module.weight = nn.Parameter(weight.clone())
    return module
