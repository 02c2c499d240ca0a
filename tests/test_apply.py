"""apply_masks and functional_call: zeroing, partial params, gradients, no mutation, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import funcsparse as fs


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


RULES = {"*.weight": fs.WeightNorm(sparsity_level=0.5, sparse_block_shape=(1, 2))}


def test_apply_masks_zeroes_only_masked_leaves() -> None:
    params = dict(mlp().named_parameters())
    masks = fs.compute_masks(params, RULES)
    masked = fs.apply_masks(params, masks)
    for name, p in params.items():
        if masks[name] is None:
            assert masked[name] is p
        else:
            assert torch.equal(masked[name], torch.where(masks[name], p, 0.0))
            assert int((masked[name] == 0).sum()) >= int((~masks[name]).sum())


def test_apply_masks_zeroes_inf_and_nan() -> None:
    params = {"w": torch.tensor([[math.inf, math.nan, 1.0]])}
    masked = fs.apply_masks(params, {"w": torch.tensor([[False, False, True]])})
    assert masked["w"].tolist() == [[0.0, 0.0, 1.0]]


def test_functional_call_equals_a_module_with_zeroed_weights() -> None:
    model, x = mlp(), torch.randn(5, 6)
    params = dict(model.named_parameters())
    masks = fs.compute_masks(params, RULES)
    pruned = mlp()
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            if masks[name] is not None:
                p.mul_(masks[name])
    assert torch.allclose(fs.functional_call(model, params, masks, (x,)), pruned(x))


def test_partial_params_take_the_rest_from_the_module() -> None:
    model, x = mlp(), torch.randn(5, 6)
    weight = model[2].weight.detach().clone()
    mask = fs.WeightNorm(sparsity_level=0.5, sparse_block_shape=(1, 1))(weight)
    out = fs.functional_call(model, {"2.weight": weight}, {"2.weight": mask}, x)
    expected = torch.nn.functional.linear(model[1](model[0](x)), weight * mask, model[2].bias)
    assert torch.allclose(out, expected)


def test_nothing_is_mutated() -> None:
    model, x = mlp(), torch.randn(5, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    params_before = {k: v.clone() for k, v in params.items()}
    masks = fs.compute_masks(params, RULES)
    masks_before = {k: None if v is None else v.clone() for k, v in masks.items()}
    fs.functional_call(model, params, masks, (x,))
    fs.apply_masks(params, masks)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert all(torch.equal(params[k], v) for k, v in params_before.items())
    assert all(
        (v is None and masks[k] is None) or torch.equal(masks[k], v)
        for k, v in masks_before.items()
    )
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_gradients_are_exactly_zero_at_pruned_entries() -> None:
    model, x = mlp(), torch.randn(5, 6)
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = fs.compute_masks(params, RULES)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return fs.functional_call(model, p, masks, (x,)).pow(2).sum()

    grads = torch.func.grad(loss)(params)
    for name, mask in masks.items():
        if mask is not None:
            assert torch.all(grads[name][~mask] == 0)
            assert torch.any(grads[name][mask] != 0)


def test_unknown_param_name_is_an_error() -> None:
    with pytest.raises(
        ValueError,
        match=r"functional_call: params has leaves that name no parameter or buffer of the Sequential: \['3.weight'\]",
    ):
        fs.functional_call(
            mlp(), {"3.weight": torch.ones(3, 8)}, {"3.weight": None}, torch.randn(1, 6)
        )


@pytest.mark.parametrize("function", ["apply_masks", "functional_call"])
def test_mask_errors(function: str) -> None:
    model = mlp()
    params = {"0.weight": model[0].weight.detach()}

    def call(masks: object) -> object:
        if function == "apply_masks":
            return fs.apply_masks(params, masks)
        return fs.functional_call(model, params, masks, torch.randn(1, 6))

    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{function}: the mask at '0.weight' has shape (8, 5) but the leaf has shape (8, 6)"
        ),
    ):
        call({"0.weight": torch.ones(8, 5, dtype=torch.bool)})
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"{function}: the mask at '0.weight' must be a torch.bool tensor or None, got a 2-D torch.float32 tensor"
        ),
    ):
        call({"0.weight": torch.ones(8, 6)})
    with pytest.raises(ValueError, match=f"{function}: masks do not have the structure of params"):
        call({"0.weight": None, "0.bias": None})
    with pytest.raises(ValueError, match=f"{function}: masks do not have the structure of params"):
        call([torch.ones(8, 6, dtype=torch.bool)])


def test_structure_mismatch_message_is_short_and_names_paths() -> None:
    params = {f"{i}.weight": torch.randn(64, 64) for i in range(20)}
    masks = {f"{i}.weight": torch.ones(64, 64, dtype=torch.bool) for i in range(19)}
    with pytest.raises(ValueError, match=r"missing \['19\.weight'\], unexpected \[\]") as info:
        fs.apply_masks(params, masks)
    assert len(str(info.value)) < 400
