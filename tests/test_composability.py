"""funcsparse inside torch.func transforms and torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import funcsparse as fs

RULES = {"*.weight": fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 2))}


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_grad_and_value_through_functional_call() -> None:
    model, x, y = mlp(0), torch.randn(7, 6), torch.randint(0, 3, (7,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = fs.compute_masks(params, RULES)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(fs.functional_call(model, p, masks, (x,)), y)

    grads, value = torch.func.grad_and_value(loss)(params)
    # The same gradient by autograd on a module whose weights are zeroed in place.
    reference = mlp(0)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if masks[name] is not None:
                p.mul_(masks[name])
    ref_loss = nn.functional.cross_entropy(reference(x), y)
    ref_loss.backward()
    assert torch.allclose(value, ref_loss)
    for name, p in reference.named_parameters():
        expected = p.grad if masks[name] is None else p.grad * masks[name]
        assert torch.allclose(grads[name], expected, atol=1e-6)
        if masks[name] is not None:
            assert torch.all(grads[name][~masks[name]] == 0)


@pytest.mark.parametrize(
    "rules",
    [
        RULES,
        {
            "0.weight": fs.WeightNorm(sparsity=1.0, sparse_block_shape=(1, 2), zeros_per_block=1),
            "2.weight": fs.NearlyDiagonal(nearliness=3),
        },
        {  # partial blocks that divide the weight; whole blocks that leave edge blocks
            "0.weight": fs.WeightNorm(sparsity=0.4, sparse_block_shape=(2, 3), zeros_per_block=4),
            "2.weight": fs.WeightNorm(sparsity=0.4, sparse_block_shape=(3, 5)),
        },
    ],
)
def test_ensemble_masks_by_vmap_equal_a_loop(rules: dict[str, fs.MaskMethod]) -> None:
    models = [mlp(seed) for seed in range(4)]
    params, _ = torch.func.stack_module_state(models)
    masks = fs.compute_masks(params, rules, batch_dims=1)
    for i, member in enumerate(models):
        alone = fs.compute_masks(dict(member.named_parameters()), rules)
        for name, mask in alone.items():
            assert (mask is None) == (masks[name] is None)
            if mask is not None:
                assert torch.equal(masks[name][i], mask)


def test_ensemble_forward_under_vmap_equals_a_loop() -> None:
    models = [mlp(seed) for seed in range(3)]
    params, _ = torch.func.stack_module_state(models)
    masks = fs.compute_masks(params, RULES, batch_dims=1)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 5, 6)
    mask_axes = {name: None if mask is None else 0 for name, mask in masks.items()}

    def member(
        p: dict[str, torch.Tensor], m: dict[str, torch.Tensor | None], xs: torch.Tensor
    ) -> torch.Tensor:
        return fs.functional_call(base, p, m, (xs,))

    out = torch.func.vmap(member, in_dims=(0, mask_axes, 0))(params, masks, x)
    for i, model in enumerate(models):
        p = dict(model.named_parameters())
        assert torch.allclose(
            out[i], fs.functional_call(model, p, fs.compute_masks(p, RULES), (x[i],)), atol=1e-6
        )


class _Looped(fs.NearlyDiagonal):
    vmappable = False


def test_methods_that_cannot_vmap_are_looped() -> None:
    stacked = torch.randn(2, 3, 4, 4)
    masks = fs.compute_masks({"w": stacked}, {"w": _Looped(nearliness=3)}, batch_dims=2)
    assert masks["w"].shape == stacked.shape
    assert torch.equal(masks["w"][1, 2], fs.NearlyDiagonal(nearliness=3)(stacked[1, 2]))


def test_batch_dims_errors_name_the_leaf() -> None:
    with pytest.raises(ValueError, match="at 'w'; WeightNorm needs 2-D weights"):
        fs.compute_masks({"w": torch.randn(4, 4)}, {"w": fs.WeightNorm()}, batch_dims=1)
    with pytest.raises(ValueError, match="batch_dims must be >= 0"):
        fs.compute_masks({"w": torch.randn(4, 4)}, {"w": fs.WeightNorm()}, batch_dims=-1)


def test_compiled_masked_training_step_matches_eager() -> None:
    model, x, y = mlp(0), torch.randn(16, 6), torch.randint(0, 3, (16,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = fs.compute_masks(params, RULES)

    def step(
        p: dict[str, torch.Tensor],
        m: dict[str, torch.Tensor | None],
        xs: torch.Tensor,
        ys: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        def loss(q: dict[str, torch.Tensor]) -> torch.Tensor:
            return nn.functional.cross_entropy(fs.functional_call(model, q, m, (xs,)), ys)

        grads, value = torch.func.grad_and_value(loss)(p)
        return {k: p[k] - 0.1 * grads[k] for k in p}, value

    compiled = torch.compile(step, fullgraph=True)
    eager_params, compiled_params = params, params
    for _ in range(2):
        eager_params, eager_loss = step(eager_params, masks, x, y)
        compiled_params, compiled_loss = compiled(compiled_params, masks, x, y)
        assert torch.allclose(eager_loss, compiled_loss, atol=1e-6)
    for name, mask in masks.items():
        assert torch.allclose(eager_params[name], compiled_params[name], atol=1e-6)
        if mask is not None:  # pruned weights stay where SGD cannot move them
            assert torch.equal(compiled_params[name][~mask], params[name][~mask])
