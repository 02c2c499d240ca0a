"""Small builders the method tests share: tie-free tensors, amounts, a module holding a weight."""

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


@st.composite
def amounts(draw: st.DrawFn, numel: int) -> float | int:
    """An amount valid for ``numel`` entries: a fraction or a count up to ``numel``."""
    if draw(st.booleans()):
        return draw(st.integers(0, numel))
    return draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)))


def holder(weight: Tensor) -> nn.Module:
    """A module holding ``weight`` as its parameter ``weight`` (any shape)."""
    module = nn.Module()
    module.weight = nn.Parameter(weight.clone())
    return module
