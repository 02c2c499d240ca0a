"""Minimal reproducers of what the fuzz suite found in files fixed elsewhere.

Each was first committed as ``xfail(strict=True)`` naming the file that owed the fix; the
fixes have landed and the marks are off, so each now guards its fix. Each asserts the
promise itself: only a TypeError/ValueError escapes.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import funcsparse as fs
from funcsparse import adapter
from funcsparse.testing import check_leaf_mask


def test_nm_scaled_refuses_a_tensor_fraction() -> None:
    with pytest.raises(TypeError, match=r"NM.scaled: fraction must be a real number"):
        fs.NM(n=2, m=4).scaled(torch.zeros(2, 2))


def test_lambda_scheduler_refuses_a_level_too_large_for_a_float() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    sparsifier = adapter.WeightNormSparsifier()
    sparsifier.prepare(model, None)
    with pytest.raises(ValueError, match="LambdaSL"):
        adapter.LambdaSL(sparsifier, lambda t: 10**400)


def test_check_leaf_mask_on_a_one_entry_strided_leaf() -> None:
    method = fs.Magnitude(0.5)
    weight = torch.zeros(1, 2)[:, ::2]
    check_leaf_mask(method, weight, method(weight))


def test_check_leaf_mask_refuses_a_mask_on_another_device() -> None:
    mask = torch.ones(2, 2, dtype=torch.bool, device="meta")
    with pytest.raises((TypeError, ValueError, AssertionError)):
        check_leaf_mask(fs.Magnitude(0.5), torch.randn(2, 2), mask)


def test_collect_input_norms_refuses_a_0d_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises((TypeError, ValueError)):
        fs.collect_input_norms(model, dict(model.named_parameters()), [torch.tensor(0.5)])


def test_check_masks_on_a_meta_leaf() -> None:
    from funcsparse.testing import check_masks

    with contextlib.suppress(TypeError, ValueError):
        check_masks({"a": torch.zeros((), device="meta")}, {})


def test_collect_input_norms_refuses_float8_params() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    params = dict(model.named_parameters())
    params["0.weight"] = params["0.weight"].detach().to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"0\.weight"):
        fs.collect_input_norms(model, params, [torch.randn(3, 4)])
