"""apply_masks, apply_masks_ and functional_call: zeroing, projection in place, straight-through,
transforms, errors, and the fast loop (dense steps on projected params) matching masked training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import funcsparse as fs

Params = dict[str, Tensor]
Masks = dict[str, Tensor | None]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def half_masks(params: Params, seed: int = 0, keep: float = 0.5) -> Masks:
    """Random bool masks on the weights (about ``keep`` kept), None on the biases."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(p.shape, generator=g) < keep if name.endswith("weight") else None
        for name, p in params.items()
    }


def detached(model: nn.Module) -> Params:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def zeroed_module(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``model`` whose weights are zeroed in place where the mask is False."""
    pruned = mlp()
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            mask = masks[name]
            if mask is not None:
                p.copy_(torch.where(mask, p, 0.0))
    return pruned


# --- apply_masks -----------------------------------------------------------------------------


def test_apply_masks_zeroes_only_masked_leaves() -> None:
    params = dict(mlp().named_parameters())
    masks = half_masks(params)
    masked = fs.apply_masks(params, masks)
    for name, p in params.items():
        mask = masks[name]
        if mask is None:
            assert masked[name] is p
        else:
            assert torch.equal(masked[name], torch.where(mask, p, 0.0))
            assert int((masked[name] == 0).sum()) == int((~mask).sum())


def test_apply_masks_zeroes_inf_and_nan() -> None:
    params = {"w": torch.tensor([[math.inf, math.nan, 1.0]])}
    masked = fs.apply_masks(params, {"w": torch.tensor([[False, False, True]])})
    assert masked["w"].tolist() == [[0.0, 0.0, 1.0]]


def test_apply_masks_without_masks_returns_params() -> None:
    params = detached(mlp())
    assert fs.apply_masks(params, None) is params


# --- apply_masks_ ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.complex64,
        torch.complex128,
        torch.int64,
        torch.uint8,
        torch.bool,
    ],
)
def test_apply_masks_in_place_zeroes_pruned_and_keeps_kept_bits(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 7, generator=g) * 10
    if dtype.is_floating_point or dtype.is_complex:
        values[0, :3] = torch.tensor([math.inf, -math.inf, math.nan])
        values[1, :3] = torch.tensor([math.inf, -math.inf, math.nan])
    leaf = values.to(dtype) if dtype != torch.bool else values > 0
    mask = torch.rand(5, 7, generator=g) < 0.5
    mask[0, :3] = False  # pruned inf, -inf, NaN
    mask[1, :3] = True  # kept inf, -inf, NaN
    before = leaf.clone()
    params = {"w": leaf, "b": torch.ones(3)}
    out = fs.apply_masks_(params, {"w": mask, "b": None})
    assert out is params and out["w"] is leaf
    assert leaf.dtype == dtype
    zero = torch.zeros((), dtype=dtype)
    assert bool((leaf[~mask] == zero).all())
    assert torch.equal(
        leaf.view(torch.uint8)[~mask.repeat_interleave(leaf.element_size(), 1)],
        torch.zeros(int((~mask).sum()) * leaf.element_size(), dtype=torch.uint8),
    )
    # Kept entries keep their bits exactly (NaN included).
    kept_bits = mask.repeat_interleave(leaf.element_size(), 1)
    assert torch.equal(leaf.view(torch.uint8)[kept_bits], before.view(torch.uint8)[kept_bits])
    assert torch.equal(params["b"], torch.ones(3))


def test_apply_masks_in_place_on_module_parameters_and_views() -> None:
    model = mlp()
    masks = half_masks(dict(model.named_parameters()))
    expected = fs.apply_masks(detached(model), masks)
    params = dict(model.named_parameters())
    assert fs.apply_masks_(params, masks) is params
    for name, p in model.named_parameters():
        assert p.requires_grad and p.grad is None
        assert torch.equal(p, expected[name])
    # A non-contiguous leaf (a transposed view) is written through to its base.
    base = torch.randn(4, 3)
    mask = torch.rand(3, 4) < 0.5
    want = torch.where(mask, base.t(), 0.0)
    fs.apply_masks_({"t": base.t()}, {"t": mask})
    assert torch.equal(base.t(), want)


def test_apply_masks_in_place_without_masks_changes_nothing() -> None:
    params = detached(mlp())
    before = {k: v.clone() for k, v in params.items()}
    assert fs.apply_masks_(params, None) is params
    assert all(torch.equal(params[k], v) for k, v in before.items())


def test_apply_masks_in_place_checks_every_mask_before_touching_a_leaf() -> None:
    params = {"a": torch.ones(2, 2), "b": torch.ones(2, 2)}
    masks = {"a": torch.zeros(2, 2, dtype=torch.bool), "b": torch.zeros(2, 3, dtype=torch.bool)}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "apply_masks_: the mask at 'b' has shape (2, 3) but the leaf has shape (2, 2)"
        ),
    ):
        fs.apply_masks_(params, masks)
    assert torch.equal(params["a"], torch.ones(2, 2))


def test_a_mask_on_another_device_is_an_error() -> None:
    params = {"w": torch.ones(2, 2)}
    masks = {"w": torch.ones(2, 2, dtype=torch.bool, device="meta")}
    for function, call in [
        ("apply_masks", fs.apply_masks),
        ("apply_masks_", fs.apply_masks_),
    ]:
        with pytest.raises(
            ValueError,
            match=re.escape(f"{function}: the mask at 'w' is on meta but the leaf is on cpu"),
        ):
            call(params, masks)


# --- functional_call -------------------------------------------------------------------------


def test_functional_call_equals_a_module_with_zeroed_weights() -> None:
    model, x = mlp(), torch.randn(5, 6)
    params = dict(model.named_parameters())
    masks = half_masks(params)
    expected = zeroed_module(model, masks)(x)
    assert torch.equal(fs.functional_call(model, params, masks, (x,)), expected)
    out = fs.functional_call(model, params, masks, (x,), straight_through=True)
    assert torch.equal(out, expected)


def test_functional_call_without_masks_is_the_dense_call() -> None:
    model, x = mlp(), torch.randn(5, 6)
    params = {k: v * 2 for k, v in detached(model).items()}
    expected = torch.func.functional_call(model, params, (x,))
    assert torch.equal(fs.functional_call(model, params, None, (x,)), expected)
    assert torch.equal(fs.functional_call(model, params, dict.fromkeys(params), (x,)), expected)


def test_masked_forward_zeroes_pruned_entries_exactly() -> None:
    seen: list[Tensor] = []
    model = nn.Linear(3, 2, bias=False)
    model.register_forward_pre_hook(lambda module, args: seen.append(module.weight))
    weight = torch.tensor([[-1.5, 2.0, 3.0], [4.0, -5.0, 6.0]])
    mask = torch.tensor([[False, True, False], [True, False, True]])
    for straight_through in (False, True):
        seen.clear()
        fs.functional_call(
            model,
            {"weight": weight},
            {"weight": mask},
            torch.ones(1, 3),
            straight_through=straight_through,
        )
        assert seen[0].tolist() == [[0.0, 2.0, 0.0], [4.0, 0.0, 6.0]]


def test_partial_params_take_the_rest_from_the_module() -> None:
    model, x = mlp(), torch.randn(5, 6)
    weight = model[2].weight.detach().clone()
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    out = fs.functional_call(model, {"2.weight": weight}, {"2.weight": mask}, x)
    expected = torch.nn.functional.linear(model[1](model[0](x)), weight * mask, model[2].bias)
    assert torch.allclose(out, expected)


def test_nothing_is_mutated() -> None:
    model, x = mlp(), torch.randn(5, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = detached(model)
    params_before = {k: v.clone() for k, v in params.items()}
    masks = half_masks(params)
    masks_before = {k: None if v is None else v.clone() for k, v in masks.items()}
    for straight_through in (False, True):
        fs.functional_call(model, params, masks, (x,), straight_through=straight_through)
    fs.apply_masks(params, masks)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert all(torch.equal(params[k], v) for k, v in params_before.items())
    assert all(
        (v is None and masks[k] is None) or torch.equal(masks[k], v)
        for k, v in masks_before.items()
    )
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def masked_loss(
    model: nn.Module, masks: Masks | None, x: Tensor, y: Tensor, *, straight_through: bool = False
) -> Callable[[Params], Tensor]:
    def loss(p: Params) -> Tensor:
        out = fs.functional_call(model, p, masks, (x,), straight_through=straight_through)
        return nn.functional.cross_entropy(out, y)

    return loss


def test_gradients_are_exactly_zero_at_pruned_entries() -> None:
    model, x, y = mlp(), torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    params = detached(model)
    masks = half_masks(params)
    grads = torch.func.grad(masked_loss(model, masks, x, y))(params)
    dense = torch.func.grad(masked_loss(model, None, x, y))(fs.apply_masks(params, masks))
    for name, mask in masks.items():
        if mask is None:
            assert torch.equal(grads[name], dense[name])
        else:
            assert torch.all(grads[name][~mask] == 0)
            assert torch.any(grads[name][mask] != 0)
            assert torch.equal(grads[name][mask], dense[name][mask])


def test_straight_through_gradient_is_the_dense_gradient_at_the_masked_params() -> None:
    model, x, y = mlp(), torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    params = detached(model)
    masks = half_masks(params)
    loss = masked_loss(model, masks, x, y, straight_through=True)
    grads, value = torch.func.grad_and_value(loss)(params)
    dense_grads, dense_value = torch.func.grad_and_value(masked_loss(model, None, x, y))(
        fs.apply_masks(params, masks)
    )
    assert torch.equal(value, dense_value)
    for name, mask in masks.items():
        assert torch.equal(grads[name], dense_grads[name])
        if mask is not None:
            assert torch.any(grads[name][~mask] != 0)  # pruned entries get a gradient


@pytest.mark.parametrize("straight_through", [False, True])
def test_autograd_backward_matches_torch_func_grad(straight_through: bool) -> None:
    model, x, y = mlp(), torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    params = detached(model)
    masks = half_masks(params)
    loss = masked_loss(model, masks, x, y, straight_through=straight_through)
    expected = torch.func.grad(loss)(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss(leaves).backward()
    assert all(torch.equal(leaves[k].grad, expected[k]) for k in params)


@pytest.mark.parametrize("straight_through", [False, True])
def test_compiled_grad_matches_eager(straight_through: bool) -> None:
    model, x, y = mlp(), torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    params = detached(model)
    masks = half_masks(params)
    grad = torch.func.grad(masked_loss(model, masks, x, y, straight_through=straight_through))
    expected = grad(params)
    compiled = torch.compile(grad, fullgraph=True)(params)
    for name, mask in masks.items():
        assert torch.allclose(compiled[name], expected[name], atol=1e-6)
        if mask is not None:
            pruned = compiled[name][~mask]
            assert bool((pruned != 0).any()) if straight_through else bool((pruned == 0).all())


@pytest.mark.parametrize("straight_through", [False, True])
def test_vmap_over_an_ensemble_equals_a_loop(straight_through: bool) -> None:
    models = [mlp(seed) for seed in range(3)]
    params, _ = torch.func.stack_module_state(models)
    masks = {
        k: torch.stack([half_masks(detached(m), seed=i)[k] for i, m in enumerate(models)])
        if k.endswith("weight")
        else None
        for k in params
    }
    base = mlp().to("meta")
    x, y = torch.randn(3, 5, 6), torch.tensor([[0, 1, 2, 0, 1]] * 3)
    mask_axes = {name: None if mask is None else 0 for name, mask in masks.items()}
    grads = torch.func.vmap(
        lambda p, m, xs, ys: torch.func.grad(
            masked_loss(base, m, xs, ys, straight_through=straight_through)
        )(p),
        in_dims=(0, mask_axes, 0, 0),
    )(params, masks, x, y)
    for i, member in enumerate(models):
        alone = torch.func.grad(
            masked_loss(
                member,
                half_masks(detached(member), seed=i),
                x[i],
                y[i],
                straight_through=straight_through,
            )
        )(detached(member))
        for name in params:
            assert torch.allclose(grads[name][i], alone[name], atol=1e-6)


@pytest.mark.parametrize("straight_through", [False, True])
def test_forward_mode_agrees_with_reverse_mode(straight_through: bool) -> None:
    model, x = mlp(), torch.randn(2, 6)
    params = detached(model)
    masks = half_masks(params)

    def out(w: Tensor) -> Tensor:
        p = {**params, "0.weight": w}
        return fs.functional_call(model, p, masks, (x,), straight_through=straight_through)

    forward = torch.func.jacfwd(out)(params["0.weight"])
    reverse = torch.func.jacrev(out)(params["0.weight"])
    assert torch.allclose(forward, reverse, atol=1e-6)


def test_unknown_param_name_is_an_error() -> None:
    with pytest.raises(
        ValueError,
        match=r"functional_call: params has leaves that name no parameter or buffer of the Sequential: \['3.weight'\]",
    ):
        fs.functional_call(
            mlp(), {"3.weight": torch.ones(3, 8)}, {"3.weight": None}, torch.randn(1, 6)
        )


@pytest.mark.parametrize("function", ["apply_masks", "apply_masks_", "functional_call"])
def test_mask_errors(function: str) -> None:
    model = mlp()
    params = {"0.weight": model[0].weight.detach().clone()}

    def call(masks: object) -> object:
        if function == "apply_masks":
            return fs.apply_masks(params, masks)
        if function == "apply_masks_":
            return fs.apply_masks_(params, masks)
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
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{function}: masks has keys that are not keys of params: ['0.bias'] (1 in all)"
        ),
    ):
        call({"0.weight": None, "0.bias": None})
    with pytest.raises(ValueError, match=f"{function}: masks do not have the structure of params"):
        call([torch.ones(8, 6, dtype=torch.bool)])


def test_a_masked_leaf_that_is_not_a_tensor_is_an_error() -> None:
    with pytest.raises(
        TypeError, match=r"^apply_masks_: expected a pytree of tensors .*got float 1\.0 at 'w'"
    ):
        fs.apply_masks_({"w": 1.0}, {"w": torch.ones((), dtype=torch.bool)})


def test_structure_mismatch_message_is_short_and_names_paths() -> None:
    params = {"layers": [{"weight": torch.randn(64, 64)} for i in range(20)]}
    masks = {"layers": [{"weight": torch.ones(64, 64, dtype=torch.bool)} for i in range(19)]}
    with pytest.raises(
        ValueError, match=r"missing \['layers\.19\.weight'\], unexpected \[\]"
    ) as info:
        fs.apply_masks(params, masks)
    assert len(str(info.value)) < 400
    flat = {f"{i}.weight": torch.randn(64, 64) for i in range(20)}
    some = {f"{i}.weight": torch.ones(64, 64, dtype=torch.bool) for i in range(19)}
    assert fs.apply_masks(flat, some)["19.weight"] is flat["19.weight"]  # a flat dict: unmasked


# --- the fast loop: dense steps on projected params follow masked training exactly -----------
#
# With element-wise optimizers, training with masks in the forward (exact gradients: zero at
# pruned entries) and training dense on projected params (pruned entries kept at zero by
# projecting after every update) give the same kept weights, bit for bit: the forwards see the
# same values, so the gradients at kept entries are equal, and an element-wise update of a kept
# entry reads only that entry's gradient and state. The pruned entries' optimizer state differs
# (dense gradients on one side), which is why the masks may only shrink.

STEPS, SWITCH = 10, 5


def batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def masks_at(step: int, params: Params) -> Masks:
    """Half the weights kept, then from step SWITCH on a random subset of those."""
    first = half_masks(params, seed=1)
    if step < SWITCH:
        return first
    fewer = half_masks(params, seed=2, keep=0.6)
    return {k: None if m is None else m & fewer[k] for k, m in first.items()}


def functional_optimizer(name: str) -> tuple[Callable[[Params], Any], Callable[..., Any]]:
    """``init(params) -> state`` and ``update(params, grads, state, step) -> params, state``."""
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.1

    if name == "sgd_momentum":

        def init(params: Params) -> Any:
            return {k: torch.zeros_like(v) for k, v in params.items()}

        def update(params: Params, grads: Params, state: Any, step: int) -> Any:
            buf = {k: 0.9 * state[k] + grads[k] + wd * params[k] for k in params}
            return {k: params[k] - lr * buf[k] for k in params}, buf

        return init, update

    def adam_init(params: Params) -> Any:
        return {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}

    def adam_update(params: Params, grads: Params, state: Any, step: int) -> Any:
        new_params, new_state = {}, {}
        for k, p in params.items():
            g = grads[k] if name == "adamw" else grads[k] + wd * p
            m = b1 * state[k][0] + (1 - b1) * g
            v = b2 * state[k][1] + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** (step + 1)), v / (1 - b2 ** (step + 1))
            decayed = p * (1 - lr * wd) if name == "adamw" else p
            new_params[k] = decayed - lr * m_hat / (v_hat.sqrt() + eps)
            new_state[k] = (m, v)
        return new_params, new_state

    return adam_init, adam_update


def assert_kept_equal(masked: Params, projected: Params, masks: Masks) -> None:
    for name, mask in masks.items():
        if mask is None:
            assert torch.equal(projected[name], masked[name])
        else:
            assert torch.equal(projected[name][mask], masked[name][mask])
            assert bool((projected[name][~mask] == 0).all())


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam", "adamw"])
def test_functional_fast_loop_follows_masked_training(optimizer: str) -> None:
    model = mlp()
    init, update = functional_optimizer(optimizer)
    masked = detached(model)  # trained with masks in the forward
    projected = fs.apply_masks_(detached(model), masks_at(0, masked))  # dense on projected
    masked_state, projected_state = init(masked), init(projected)
    for step in range(STEPS):
        masks = masks_at(step, masked)
        if step == SWITCH:
            fs.apply_masks_(projected, masks)  # the masks shrank: project once more
        x, y = batch(step)
        grads, loss = torch.func.grad_and_value(masked_loss(model, masks, x, y))(masked)
        masked, masked_state = update(masked, grads, masked_state, step)
        dense_grads, dense_loss = torch.func.grad_and_value(masked_loss(model, None, x, y))(
            projected
        )
        assert torch.equal(dense_loss, loss)
        projected, projected_state = update(projected, dense_grads, projected_state, step)
        fs.apply_masks_(projected, masks)  # the fresh params the update made
        assert_kept_equal(masked, projected, masks)
    assert any(
        not torch.equal(masked[k], projected[k]) for k in masked if k.endswith("weight")
    )  # the masked side's pruned entries moved (weight decay, momentum): not a vacuous match


TORCH_OPTIMIZERS: dict[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", sorted(TORCH_OPTIMIZERS))
def test_torch_optim_projection_follows_masked_training(optimizer: str) -> None:
    model = mlp()
    masked = {k: v.requires_grad_() for k, v in detached(model).items()}
    masked_opt = TORCH_OPTIMIZERS[optimizer](list(masked.values()))
    own = dict(model.named_parameters())
    fs.apply_masks_(own, masks_at(0, own))
    own_opt = TORCH_OPTIMIZERS[optimizer](list(model.parameters()))
    for step in range(STEPS):
        masks = masks_at(step, masked)
        if step == SWITCH:
            fs.apply_masks_(own, masks)
        x, y = batch(step)
        masked_opt.zero_grad()
        loss = masked_loss(model, masks, x, y)(masked)
        loss.backward()
        masked_opt.step()
        own_opt.zero_grad()
        dense_loss = nn.functional.cross_entropy(model(x), y)
        dense_loss.backward()
        own_opt.step()
        fs.apply_masks_(own, masks)
        assert torch.equal(dense_loss, loss)
        assert_kept_equal(
            {k: v.detach() for k, v in masked.items()},
            {k: v.detach() for k, v in own.items()},
            masks,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_in_place_projection_of_a_leaf_larger_than_its_chunks(dtype: torch.dtype) -> None:
    """The projection casts the mask chunk by chunk: a leaf of several chunks and a ragged
    end gets the same result as torch.where, with +0.0 at pruned entries (inf, NaN too)."""
    g = torch.Generator().manual_seed(0)
    leaf = torch.randn(3, 200_001, generator=g).to(dtype)
    leaf[0, :5] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, -3.0])
    mask = torch.rand(leaf.shape, generator=g) > 0.4
    mask[0, :5] = False
    expected = torch.where(mask, leaf, torch.zeros((), dtype=dtype))
    out = fs.apply_masks_({"w": leaf}, {"w": mask})["w"]
    assert out is leaf
    bits = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}
    assert torch.equal(leaf[mask].view(bits[dtype]), expected[mask].view(bits[dtype]))
    assert bool((leaf[~mask].view(bits[dtype]) == 0).all())  # +0.0 exactly, bit for bit


# -- a dict of some masks for a flat dict of params (issue 9) ------------------------------


def test_a_flat_dict_of_params_takes_a_dict_of_some_masks() -> None:
    model = mlp()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    mask = torch.rand(params["0.weight"].shape) > 0.5
    full = {k: (mask if k == "0.weight" else None) for k in params}
    partial = {"0.weight": mask}
    x = torch.randn(3, 6)
    assert torch.equal(
        fs.functional_call(model, params, partial, (x,)),
        fs.functional_call(model, params, full, (x,)),
    )
    out = fs.apply_masks(params, partial)
    assert torch.equal(out["0.weight"], fs.apply_masks(params, full)["0.weight"])
    assert all(out[k] is params[k] for k in params if k != "0.weight")
    copy = {k: v.clone() for k, v in params.items()}
    fs.apply_masks_(copy, partial)
    assert torch.equal(copy["0.weight"], out["0.weight"])
    assert fs.apply_masks(params, {}) is not None  # no masks: every leaf unmasked


def test_a_nested_pytree_needs_an_entry_at_every_leaf() -> None:
    params = {"layer": {"w": torch.ones(2, 2), "b": torch.ones(2)}}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "apply_masks: masks do not have the structure of params (missing ['layer.b'], "
            "unexpected []); give a mask or None at every leaf of params (None: unmasked)"
        ),
    ):
        fs.apply_masks(params, {"layer": {"w": torch.ones(2, 2, dtype=torch.bool)}})


# -- hostile inputs: only TypeError/ValueError, nothing changed (issue 9) --------------------


def test_bad_arguments_are_type_and_value_errors() -> None:
    model = mlp()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    before = {k: v.clone() for k, v in params.items()}
    x = torch.randn(2, 6)
    good = torch.ones(8, 6, dtype=torch.bool)
    cases: list[tuple[type[Exception], str, Any]] = [
        (
            TypeError,
            "module must be a torch.nn.Module, got str 'mlp'",
            lambda: fs.functional_call("mlp", params, None, (x,)),
        ),
        (
            TypeError,
            "module must be a torch.nn.Module, got NoneType None",
            lambda: fs.functional_call(None, params, None, (x,)),
        ),
        (
            TypeError,
            "kwargs must be a dict or None, got list",
            lambda: fs.functional_call(model, params, None, (x,), [1]),
        ),
        (
            TypeError,
            "straight_through must be a bool, got str 'yes'",
            lambda: fs.functional_call(model, params, None, (x,), straight_through="yes"),
        ),
        (
            TypeError,
            "functional_call: expected a pytree of tensors (dicts, lists, tuples; None for an "
            "empty entry), got str 'w' at '0.weight'",
            lambda: fs.functional_call(model, {**params, "0.weight": "w"}, None, (x,)),
        ),
        (
            ValueError,
            "the mask at '0.weight' is on meta but the leaf is on cpu",
            lambda: fs.functional_call(model, params, {"0.weight": good.to("meta")}, (x,)),
        ),
        (
            ValueError,
            "apply_masks: the mask at '0.weight' is on meta but the leaf is on cpu",
            lambda: fs.apply_masks(params, {"0.weight": good.to("meta")}),
        ),
        (
            ValueError,
            "apply_masks_: the mask at '0.weight' is on meta but the leaf is on cpu",
            lambda: fs.apply_masks_(params, {"0.weight": good.to("meta")}),
        ),
        (
            TypeError,
            "apply_masks: the mask at '0.weight' must be a torch.bool tensor or None, got str",
            lambda: fs.apply_masks(params, {"0.weight": "mask"}),
        ),
        (
            ValueError,
            "apply_masks: masks do not have the structure of params",
            lambda: fs.apply_masks(params, "mask"),
        ),
        (
            ValueError,
            "apply_masks_: masks has keys that are not keys of params",
            lambda: fs.apply_masks_(params, {"0.weight": good, "9.weight": good}),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=re.escape(message)):
            call()
    assert all(torch.equal(params[k], before[k]) for k in params)


def test_apply_masks_checks_every_leaf_before_touching_any() -> None:
    params = {"a": torch.ones(2, 2), "b": torch.ones(3).expand(2, 3), "c": torch.ones(2)}
    masks = {"a": torch.zeros(2, 2, dtype=torch.bool), "b": torch.zeros(2, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"apply_masks_: the leaf at 'b' is .* share memory"):
        fs.apply_masks_(params, masks)
    assert bool((params["a"] == 1).all())  # not zeroed: the error came first
    masked = fs.apply_masks(params, masks)  # out of place is fine
    assert not bool(masked["b"].any())


def test_meta_and_empty_leaves_are_masked_shape_only() -> None:
    params = {"w": torch.empty(4, 4, device="meta"), "e": torch.empty(0, 3)}
    masks = {
        "w": torch.empty(4, 4, dtype=torch.bool, device="meta"),
        "e": torch.empty(0, 3, dtype=torch.bool),
    }
    out = fs.apply_masks(params, masks)
    assert out["w"].device.type == "meta" and out["w"].shape == (4, 4)
    assert out["e"].shape == (0, 3)
    fs.apply_masks_(params, masks)


def test_functional_call_mutates_only_what_torch_func_mutates() -> None:
    """BatchNorm in train mode: torch updates the running statistics it is handed (the
    module's own buffers, or the tensors passed for them); funcsparse adds nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    twin = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    twin.load_state_dict(model.state_dict())
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    twin_buffers = {k: v.clone() for k, v in model.named_buffers()}
    given = {**params, **buffers}
    keys, values = list(given), [id(v) for v in given.values()]
    snapshot = {k: v.clone() for k, v in params.items()}
    mask = torch.rand(4, 4) > 0.5
    masks = {"0.weight": mask}
    mask_before = mask.clone()
    x = torch.randn(8, 4)
    out = fs.functional_call(model, given, masks, (x,))
    masked = {**params, "0.weight": params["0.weight"] * mask, **twin_buffers}
    expected = torch.func.functional_call(twin, masked, (x,))
    torch.testing.assert_close(out, expected)
    assert list(given) == keys and [id(v) for v in given.values()] == values
    assert all(torch.equal(params[k], snapshot[k]) for k in params)
    assert torch.equal(mask, mask_before)
    for name in buffers:  # torch's own update, the same on both sides
        assert torch.equal(buffers[name], twin_buffers[name]), name
    assert int(buffers["1.num_batches_tracked"]) == 1
    assert all(torch.equal(b, twin.get_buffer(n)) for n, b in model.named_buffers())


def test_functional_call_refuses_meta_mixed_with_real_tensors() -> None:
    model = mlp()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    meta = {**params, "0.weight": params["0.weight"].to("meta")}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "functional_call: the leaf at '0.weight' is on the meta device but the leaf at "
            "'0.bias' is on cpu"
        ),
    ):
        fs.functional_call(model, meta, None, (torch.randn(2, 6),))
    with pytest.raises(ValueError, match=r"input 0 is on the meta device but the leaf at"):
        fs.functional_call(model, params, None, (torch.randn(2, 6, device="meta"),))
    all_meta = {k: v.to("meta") for k, v in params.items()}
    masks = {k: torch.ones(v.shape, dtype=torch.bool, device="meta") for k, v in all_meta.items()}
    out = fs.functional_call(model, all_meta, masks, (torch.randn(2, 6, device="meta"),))
    assert out.device.type == "meta" and out.shape == (2, 3)
    partly = {"0.weight": params["0.weight"].to("meta")}
    with pytest.raises(ValueError, match=r"but the module's '0.bias' is on cpu"):
        fs.functional_call(model, partly, None, (torch.randn(2, 6, device="meta"),))


# -- leaves that are not tensors, float8 (issue 9, fuzz) -----------------------------------


@pytest.mark.parametrize("function", ["apply_masks", "apply_masks_", "functional_call"])
@pytest.mark.parametrize(("leaf", "shown"), [("x", "str 'x'"), (3, "int 3"), (1.5, "float 1.5")])
def test_a_leaf_that_is_not_a_tensor_is_refused_masked_or_not(
    function: str, leaf: object, shown: str
) -> None:
    model = nn.Linear(4, 2)
    params: dict[str, Any] = {"weight": model.weight.detach().clone(), "bias": leaf}
    before = params["weight"].clone()
    calls = {
        "apply_masks": lambda m: fs.apply_masks(params, m),
        "apply_masks_": lambda m: fs.apply_masks_(params, m),
        "functional_call": lambda m: fs.functional_call(model, params, m, (torch.ones(1, 4),)),
    }
    zeros = torch.zeros(2, 4, dtype=torch.bool)
    for masks in (None, {"weight": zeros, "bias": None}):
        with pytest.raises(
            TypeError, match=rf"^{function}: expected a pytree of tensors .*got {shown} at 'bias'"
        ):
            calls[function](masks)
    assert torch.equal(params["weight"], before)  # nothing zeroed before the refusal


@pytest.mark.parametrize("function", [fs.apply_masks, fs.apply_masks_])
def test_a_module_passed_as_params_is_refused_with_a_hint(function: Any) -> None:
    with pytest.raises(TypeError, match=r"as the whole tree; pass dict\(model\.named_parameters"):
        function(nn.Linear(2, 2), None)


def test_none_leaves_are_empty_entries_as_before() -> None:
    params = {"w": torch.ones(2, 2), "b": None, "layers": [None, torch.ones(3)]}
    masks = {"w": torch.tensor([[True, False], [False, True]]), "b": None, "layers": [None, None]}
    out = fs.apply_masks(params, masks)
    assert out["b"] is None and out["layers"][0] is None and out["layers"][1] is params["layers"][1]
    assert out["w"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert fs.apply_masks_(params, masks) is params and params["w"].tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64])
def test_float8_and_complex_leaves_are_masked_bit_for_bit(dtype: torch.dtype) -> None:
    # masking is a choice of entries, not arithmetic: every dtype is masked exactly
    torch.manual_seed(0)
    leaf = torch.randn(6, 8).to(dtype)
    mask = torch.rand(6, 8) > 0.5
    out = fs.apply_masks({"w": leaf}, {"w": mask})["w"]
    in_place = leaf.clone()
    fs.apply_masks_({"w": in_place}, {"w": mask})
    width = {1: torch.uint8, 8: torch.int64}[leaf.element_size()]
    expected = torch.where(mask, leaf.view(width), torch.zeros((), dtype=width))
    for result in (out, in_place):
        assert result.dtype == dtype
        assert torch.equal(result.view(width), expected)


def test_functional_call_refuses_float8_params_by_path() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    params = {k: v.detach() for k, v in model.named_parameters()}
    params["0.bias"] = params["0.bias"].to(torch.float8_e4m3fn)
    with pytest.raises(
        TypeError,
        match=r"^functional_call: the leaf at '0.bias' is .*float8_e4m3fn.*; float8 params are not supported",
    ):
        fs.functional_call(model, params, None, (torch.randn(4, 3),))


def test_a_partial_dict_of_masks_works_beside_a_none_entry_of_params() -> None:
    # Found by the issue 10 review: a None value in a flat dict of params made a partial
    # dict of masks fail with "missing ['z'], unexpected []".
    params = {"w": torch.ones(2, 2), "z": None, "b": torch.ones(2)}
    keep = torch.tensor([[True, False], [False, True]])
    out = fs.apply_masks(params, {"w": keep})
    assert out["z"] is None and torch.equal(out["w"], keep.float())
    assert torch.equal(out["b"], params["b"])
    out = fs.apply_masks(params, {"w": keep, "z": None})
    assert torch.equal(out["w"], keep.float())
    with pytest.raises(
        ValueError, match=r"apply_masks: masks has keys that are not keys of params: \['q'\]"
    ):
        fs.apply_masks(params, {"q": keep})
