"""Minimal reproducers of what the fuzz suite found in files fixed elsewhere.

Each is marked ``xfail(strict=True)`` with the file that owes the fix: when the fix lands the
test passes, strict xfail fails, and the mark comes off. Each asserts the promise itself:
only a TypeError/ValueError escapes.
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
        fs.NM(n=2, m=4).scaled(torch.zeros(2, 2))  # type: ignore[arg-type]


def test_lambda_scheduler_refuses_a_level_too_large_for_a_float() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    sparsifier = adapter.WeightNormSparsifier()
    sparsifier.prepare(model, None)
    with pytest.raises(ValueError, match="LambdaSL"):
        adapter.LambdaSL(sparsifier, lambda t: 10**400)


@pytest.mark.xfail(
    strict=True,
    reason="check_leaf_mask(m, w, m(w)) with w = torch.zeros(1, 2)[:, ::2] (one entry, stride "
    "2) raises RuntimeError (view Float as Byte) in _same_bits; fix owed in "
    "funcsparse/testing/_checks.py (_same_bits: reshape(-1).clone(memory_format="
    "torch.contiguous_format) before .view(torch.uint8))",
)
def test_check_leaf_mask_on_a_one_entry_strided_leaf() -> None:
    method = fs.Magnitude(0.5)
    weight = torch.zeros(1, 2)[:, ::2]
    check_leaf_mask(method, weight, method(weight))


@pytest.mark.xfail(
    strict=True,
    reason="check_leaf_mask(fs.Magnitude(0.5), torch.randn(2, 2), a meta bool mask) raises "
    "NotImplementedError (aten::equal on meta); fix owed in funcsparse/testing/_checks.py "
    "(refuse a mask on another device than the tensor with ValueError)",
)
def test_check_leaf_mask_refuses_a_mask_on_another_device() -> None:
    mask = torch.ones(2, 2, dtype=torch.bool, device="meta")
    with pytest.raises((TypeError, ValueError, AssertionError)):
        check_leaf_mask(fs.Magnitude(0.5), torch.randn(2, 2), mask)


@pytest.mark.xfail(
    strict=True,
    reason="collect_input_norms(mlp, params, [torch.tensor(0.5)]) raises IndexError (a 0-D "
    "batch reaches the F.linear hook); fix owed in funcsparse/calibration.py (a batch the "
    "weights cannot take is a ValueError naming the batch index, shortly)",
)
def test_collect_input_norms_refuses_a_0d_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises((TypeError, ValueError)):
        fs.collect_input_norms(model, dict(model.named_parameters()), [torch.tensor(0.5)])


@pytest.mark.xfail(
    strict=True,
    reason="check_masks({'a': torch.zeros((), device='meta')}, {}) raises NotImplementedError "
    "(aten::equal on meta in _check_unchanged); fix owed in funcsparse/testing/_checks.py "
    "(compare meta leaves by shape/dtype only, or refuse them with ValueError)",
)
def test_check_masks_on_a_meta_leaf() -> None:
    from funcsparse.testing import check_masks

    with contextlib.suppress(TypeError, ValueError):
        check_masks({"a": torch.zeros((), device="meta")}, {})


@pytest.mark.xfail(
    strict=True,
    reason="collect_input_norms(mlp, params with '0.weight' in float8_e4m3fn, [x]) raises "
    "RuntimeError (expected scalar type Float but found Float8_e4m3fn); fix owed in "
    "funcsparse/calibration.py (refuse float8/complex params with TypeError naming the path)",
)
def test_collect_input_norms_refuses_float8_params() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    params = dict(model.named_parameters())
    params["0.weight"] = params["0.weight"].detach().to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"0\.weight"):
        fs.collect_input_norms(model, params, [torch.randn(3, 4)])
