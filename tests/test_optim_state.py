"""Optimizer state at regrown weights: torch.optim in place, pytree states pure.

What holds, pinned exactly: after a reset, SGD (dampening 0) steps at a regrown weight as a
fresh SGD does, bit for bit and for every later step; torch's Adam/AdamW (one step count per
tensor) take the closed-form step of zero moments at the tensor's count t, which is a fresh
Adam's step only at t = 1; a functional Adam with a per-element count steps as a fresh one.
"""

from __future__ import annotations

import copy
import math
from collections import namedtuple
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from funcsparse.optim_state import reset_optimizer_state, reset_optimizer_state_

# --------------------------------------------------------------------------- helpers


def _grads(shape: tuple[int, ...], seed: int, n: int, dtype: torch.dtype) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


def _positions(shape: tuple[int, ...], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    where = torch.rand(shape, generator=g) < 0.4
    where.view(-1)[0] = True  # at least one position
    where.view(-1)[-1] = False  # and one kept
    return where


def _step(opt: torch.optim.Optimizer, param: Tensor, grad: Tensor) -> None:
    param.grad = grad.clone()
    opt.step()


def _trained(
    make: Any, shape: tuple[int, ...], seed: int, steps: int, dtype: torch.dtype
) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(seed + 2)
    param = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
    opt = make([param])
    for grad in _grads(shape, seed, steps, dtype):
        _step(opt, param, grad)
    return param, opt


def _state_copy(opt: torch.optim.Optimizer, param: Tensor) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in opt.state[param].items()}


# --------------------------------------------------------------------------- SGD: exact

SGD_CONFIGS = [
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.5, "weight_decay": 0.1},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True},
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd_regrown_steps_equal_a_fresh_sgd_bit_for_bit(config: dict[str, Any], foreach: bool):
    shape = (5, 7)

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.05, foreach=foreach, **config)

    param, opt = _trained(make, shape, seed=3, steps=4, dtype=torch.float32)
    grown = _positions(shape, 3)
    with torch.no_grad():
        param[grown] = 0.0  # the pruner's job: grown weights start at zero
    before = _state_copy(opt, param)
    reset_optimizer_state_(opt, {"w": param}, {"w": grown})
    buf = opt.state[param]["momentum_buffer"]
    assert bool((buf[grown] == 0).all())
    assert torch.equal(buf[~grown], before["momentum_buffer"][~grown])

    fresh_param = torch.nn.Parameter(param.detach().clone())
    fresh = make([fresh_param])
    for grad in _grads(shape, 11, 3, torch.float32):  # every later step too
        _step(opt, param, grad)
        _step(fresh, fresh_param, grad)
        assert torch.equal(param.detach()[grown], fresh_param.detach()[grown])
        assert not torch.equal(param.detach()[~grown], fresh_param.detach()[~grown])


@given(
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 4),
    momentum=st.floats(0.05, 0.99),
    nesterov=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-3, 0.3]),
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
)
def test_sgd_property_regrown_weight_follows_a_fresh_sgd(
    seed: int,
    steps: int,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    rows: int,
    cols: int,
):
    shape = (rows, cols)

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            params, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )

    param, opt = _trained(make, shape, seed, steps, torch.float64)
    grown = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    params_before = param.detach().clone()
    reset_optimizer_state_(opt, {"w": param}, {"w": grown})
    assert torch.equal(param.detach(), params_before)  # the reset never touches params
    fresh_param = torch.nn.Parameter(param.detach().clone())
    fresh = make([fresh_param])
    for grad in _grads(shape, seed + 5, 2, torch.float64):
        _step(opt, param, grad)
        _step(fresh, fresh_param, grad)
    assert torch.equal(param.detach()[grown], fresh_param.detach()[grown])


def test_sgd_with_dampening_steps_by_the_damped_gradient_not_a_fresh_step():
    shape = (4, 4)

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.5)

    param, opt = _trained(make, shape, seed=1, steps=3, dtype=torch.float64)
    grown = _positions(shape, 1)
    reset_optimizer_state_(opt, {"w": param}, {"w": grown})
    old = param.detach().clone()
    (grad,) = _grads(shape, 9, 1, torch.float64)
    _step(opt, param, grad)
    # a fresh SGD's first step ignores dampening (buf = g); a zero buffer gives (1 - d) g
    expected = old - 0.1 * (1 - 0.5) * grad
    torch.testing.assert_close(param.detach()[grown], expected[grown], rtol=1e-14, atol=0)
    fresh_step = old - 0.1 * grad
    assert not torch.allclose(param.detach()[grown], fresh_step[grown])


# --------------------------------------------------------------------------- Adam: closed form


def _adam_regrown(
    p: Tensor,
    g: Tensor,
    t: int,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> Tensor:
    """The next weight at a position whose moments are zero, at the tensor's step ``t``."""
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = (1 - b1) * g / (1 - b1**t)
    v = (1 - b2) * g * g / (1 - b2**t)
    return p - lr * m / (v.sqrt() + eps)


ADAM_CASES = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("Adam", {"weight_decay": 0.1}),
    ("Adam", {"foreach": True, "betas": (0.8, 0.99)}),
    ("Adam", {"fused": True}),
    ("AdamW", {"weight_decay": 0.1}),
    ("AdamW", {"weight_decay": 0.1, "amsgrad": True, "foreach": True}),
    ("AdamW", {"fused": True, "amsgrad": True}),
]


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize(("name", "config"), ADAM_CASES)
def test_adam_regrown_step_is_the_zero_moment_closed_form(
    name: str, config: dict[str, Any], steps: int
):
    shape = (6, 5)
    lr, eps = 0.01, 1e-8
    betas = config.pop("betas", (0.9, 0.999))
    cls = getattr(torch.optim, name)
    weight_decay = config.get("weight_decay", 0.01 if name == "AdamW" else 0.0)

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return cls(params, lr=lr, betas=betas, eps=eps, **config)  # type: ignore[no-any-return]  # reason: cls is a union of optimizer classes the checker cannot narrow

    param, opt = _trained(make, shape, seed=4, steps=steps, dtype=torch.float64)
    grown = _positions(shape, 4)
    keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if config.get("amsgrad") else [])
    twin_param = torch.nn.Parameter(param.detach().clone())
    twin = make([twin_param])  # the same optimizer without the reset
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    before = _state_copy(opt, param)

    reset_optimizer_state_(opt, {"w": param}, {"w": grown})
    state = opt.state[param]
    for key in keys:
        assert bool((state[key][grown] == 0).all()), key
        assert torch.equal(state[key][~grown], before[key][~grown]), key
    assert torch.equal(state["step"], before["step"])  # one count per tensor: untouched

    old = param.detach().clone()
    (grad,) = _grads(shape, 8, 1, torch.float64)
    _step(opt, param, grad)
    _step(twin, twin_param, grad)
    expected = _adam_regrown(
        old,
        grad,
        steps + 1,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled=name == "AdamW",
    )
    torch.testing.assert_close(param.detach()[grown], expected[grown], rtol=1e-12, atol=1e-15)
    assert torch.equal(param.detach()[~grown], twin_param.detach()[~grown])

    # not a fresh Adam's first step, which uses t = 1
    fresh_param = torch.nn.Parameter(old.clone())
    fresh = make([fresh_param])
    _step(fresh, fresh_param, grad)
    assert not torch.allclose(param.detach()[grown], fresh_param.detach()[grown], rtol=1e-6)


def test_adam_closed_form_at_t_1_is_a_fresh_adam_step():
    """The formula above, at the only count where it meets a fresh optimizer."""
    shape = (3, 4)
    (grad,) = _grads(shape, 2, 1, torch.float64)
    param = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))
    old = param.detach().clone()
    opt = torch.optim.AdamW([param], lr=0.01, weight_decay=0.1)
    _step(opt, param, grad)
    expected = _adam_regrown(
        old, grad, 1, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decoupled=True
    )
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-15)


def test_the_documented_adam_factors():
    """f(t), the first regrown step over a fresh one, and the later steps' growth."""
    b1, b2 = 0.9, 0.999

    def f(t: int) -> float:
        return (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2))

    table = {1: 1.0, 10: 0.48, 100: 0.98, 1000: 2.5, 10_000: 3.16, 10**6: 3.16}
    for t, value in table.items():
        assert round(f(t), 2 if t != 1000 else 1) == value, t

    def later(t: int, k: int) -> float:  # k steps after the reset, steady gradient
        return (
            (1 - b1 ** (k + 1))
            / (1 - b1 ** (t + k))
            * math.sqrt((1 - b2 ** (t + k)) / (1 - b2 ** (k + 1)))
        )

    assert later(10**6, 0) == pytest.approx(f(10**6))
    steps = [later(10**6, k) for k in range(200)]
    assert round(max(steps), 1) == 6.6 and 5 <= steps.index(max(steps)) <= 30
    assert round(max(later(1000, k) for k in range(200)), 1) == 5.2


def test_adam_keys_can_keep_the_second_moment():
    param, opt = _trained(
        lambda ps: torch.optim.Adam(ps, amsgrad=True), (4, 3), 0, 2, torch.float32
    )
    grown = _positions((4, 3), 0)
    before = _state_copy(opt, param)
    reset_optimizer_state_(opt, {"w": param}, {"w": grown}, keys=("exp_avg",))
    state = opt.state[param]
    assert bool((state["exp_avg"][grown] == 0).all())
    assert torch.equal(state["exp_avg_sq"], before["exp_avg_sq"])
    assert torch.equal(state["max_exp_avg_sq"], before["max_exp_avg_sq"])


# --------------------------------------------------------------------------- torch: the contract


def test_touches_only_the_state_of_positioned_params_and_never_params():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    params = dict(model.named_parameters())
    values = {k: p.detach().clone() for k, p in params.items()}
    states = {k: _state_copy(opt, p) for k, p in params.items()}
    groups = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    )
    grown = {"1.weight": torch.ones(2, 3, dtype=torch.bool)}  # a partial dict of a flat dict
    grown_before = grown["1.weight"].clone()
    reset_optimizer_state_(opt, params, grown)
    for k, p in params.items():
        assert torch.equal(p.detach(), values[k])
        for key, value in opt.state[p].items():
            if k == "1.weight" and key != "step":
                assert bool((value == 0).all())
            else:
                assert torch.equal(value, states[k][key]), (k, key)
    assert torch.equal(grown["1.weight"], grown_before)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


def test_params_without_state_or_positions_need_nothing():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    reset_optimizer_state_(opt, {"w": w}, {"w": torch.ones(3, dtype=torch.bool)})
    assert len(opt.state) == 0  # no step taken: no state, nothing created
    plain = torch.optim.SGD([w], lr=0.1)  # momentum 0 keeps no buffer
    _step(plain, w, torch.ones(3))
    reset_optimizer_state_(plain, {"w": w}, {"w": torch.ones(3, dtype=torch.bool)})
    assert torch.equal(w.detach(), torch.full((3,), 0.9))
    adam = torch.optim.Adam([w])
    _step(adam, w, torch.ones(3))
    before = _state_copy(adam, w)
    reset_optimizer_state_(adam, {"w": w}, None)
    reset_optimizer_state_(adam, {"w": w}, {"w": None})
    reset_optimizer_state_(adam, {"w": w}, {"w": torch.zeros(3, dtype=torch.bool)})
    for key, value in adam.state[w].items():
        assert torch.equal(value, before[key])


def test_other_optimizers_with_keys():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.RMSprop([w], momentum=0.5)
    _step(opt, w, torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"reset_optimizer_state_: does not know .* RMSprop"):
        reset_optimizer_state_(opt, {"w": w}, {"w": torch.ones(2, 2, dtype=torch.bool)})
    grown = torch.tensor([[True, False], [False, False]])
    before = _state_copy(opt, w)
    reset_optimizer_state_(opt, {"w": w}, {"w": grown}, keys=("square_avg", "momentum_buffer"))
    for key in ("square_avg", "momentum_buffer"):
        assert bool((opt.state[w][key][grown] == 0).all())
        assert torch.equal(opt.state[w][key][~grown], before[key][~grown])
        assert bool((before[key] != 0).all())
    assert torch.equal(opt.state[w]["step"], before["step"])


class _AdamWithTrace(torch.optim.Adam):
    """An Adam subclass that keeps one more per-element tensor."""

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["trace"] = p.detach().clone()
        return loss


def test_an_unknown_per_element_key_is_refused_unless_keys_name_the_state():
    w = torch.nn.Parameter(torch.ones(2, 3))
    opt = _AdamWithTrace([w])
    _step(opt, w, torch.ones(2, 3))
    grown = torch.ones(2, 3, dtype=torch.bool)
    before = _state_copy(opt, w)
    with pytest.raises(
        ValueError,
        match=r"^reset_optimizer_state_: _AdamWithTrace's state of the param at 'w' holds a "
        r"2-D torch.float32 tensor of shape \(2, 3\) under the unknown key 'trace'; pass keys",
    ):
        reset_optimizer_state_(opt, {"w": w}, {"w": grown})
    for key, value in opt.state[w].items():  # nothing written
        assert torch.equal(value, before[key])
    reset_optimizer_state_(opt, {"w": w}, {"w": grown}, keys=("exp_avg", "exp_avg_sq", "trace"))
    assert bool((opt.state[w]["trace"] == 0).all())


def test_errors_name_the_function_the_path_and_the_value():
    w = torch.nn.Parameter(torch.ones(2, 2))
    other = torch.nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.Adam([w])
    _step(opt, w, torch.ones(2, 2))
    yes = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"must be a torch.optim.Optimizer, got dict .*use fs"):
        reset_optimizer_state_(opt.state_dict(), {"w": w}, {"w": yes})  # type: ignore[arg-type]  # reason: a state_dict on purpose: the test checks the TypeError
    with pytest.raises(TypeError, match=r"keys must be a tuple of strings or None, got str"):
        reset_optimizer_state_(opt, {"w": w}, {"w": yes}, keys="exp_avg")
    with pytest.raises(ValueError, match=r"^reset_optimizer_state_: keys is empty, so nothing"):
        reset_optimizer_state_(opt, {"w": w}, {"w": yes}, keys=())
    with pytest.raises(TypeError, match=r"keys must hold strings, got int 3"):
        reset_optimizer_state_(opt, {"w": w}, {"w": yes}, keys=(3,))  # type: ignore[arg-type]  # reason: an int key on purpose: the test checks the TypeError
    with pytest.raises(ValueError, match=r"the param at 'v' \(a 2-D .*\) is not one of the Adam"):
        reset_optimizer_state_(opt, {"w": w, "v": other}, {"w": yes, "v": yes})
    with pytest.raises(
        TypeError, match=r"reset_optimizer_state_: the mask at 'w' must be a torch.bool"
    ):
        reset_optimizer_state_(opt, {"w": w}, {"w": torch.ones(2, 2)})
    with pytest.raises(ValueError, match=r"the mask at 'w' has shape \(4,\)"):
        reset_optimizer_state_(opt, {"w": w}, {"w": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"keys \['exp_avgs'\] are in the Adam's state of none"):
        reset_optimizer_state_(opt, {"w": w}, {"w": yes}, keys=("exp_avgs",))
    with pytest.raises(ValueError, match=r"state 'step' of the param at 'w' is a 0-D .* not one"):
        reset_optimizer_state_(opt, {"w": w}, {"w": yes}, keys=("step",))
    assert bool((opt.state[w]["exp_avg"] != 0).all())  # every refusal wrote nothing


def test_a_failure_on_a_later_param_writes_nothing_anywhere():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = _AdamWithTrace([a, b])
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    del opt.state[a]["trace"]  # only b holds the unknown key
    yes = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"at 'b' holds .* 'trace'"):
        reset_optimizer_state_(opt, {"a": a, "b": b}, {"a": yes, "b": yes})
    assert bool((opt.state[a]["exp_avg"] != 0).all())


def _dtensor_refusals(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    w = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)])
    opt.step()
    grown = distribute_tensor(torch.ones(4, 2, dtype=torch.bool), mesh, [Shard(0)])
    messages = []
    for call in (
        lambda: reset_optimizer_state_(opt, {"w": w}, {"w": grown}),
        lambda: reset_optimizer_state({"m": {"w": w.detach()}}, {"w": w}, {"w": grown}),
    ):
        try:
            call()
        except TypeError as err:
            messages.append(str(err))
    return messages


def test_dtensor_params_are_out_of_scope():
    from tests.distributed._spawn import run_ranks

    (messages,) = run_ranks(_dtensor_refusals, world=1)
    assert len(messages) == 2
    for function, message in zip(
        ("reset_optimizer_state_", "reset_optimizer_state"), messages, strict=True
    ):
        assert message.startswith(f"{function}: the param or positions at 'w' is a DTensor; ")
        assert "out of scope" in message


def test_state_on_another_device_than_the_positions_is_refused():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    _step(opt, w, torch.ones(2))
    opt.state[w]["momentum_buffer"] = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"state 'momentum_buffer' of the param at 'w' is on meta"):
        reset_optimizer_state_(opt, {"w": w}, {"w": torch.ones(2, dtype=torch.bool)})


# --------------------------------------------------------------------------- pytree states


def _adam_init(params: dict[str, Tensor], *, per_element: bool) -> dict[str, Any]:
    zeros = {k: torch.zeros_like(p) for k, p in params.items()}
    count: Any = (
        {k: torch.zeros(p.shape, dtype=torch.int64) for k, p in params.items()}
        if per_element
        else 0
    )
    return {"m": dict(zeros), "v": {k: z.clone() for k, z in zeros.items()}, "count": count}


def _adam_update(
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    state: dict[str, Any],
    *,
    lr: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A tiny functional Adam: a per-element count (a tree) or one count (an int)."""
    per_element = isinstance(state["count"], dict)
    count = {k: c + 1 for k, c in state["count"].items()} if per_element else state["count"] + 1
    new_params, m, v = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        m[k] = b1 * state["m"][k] + (1 - b1) * g
        v[k] = b2 * state["v"][k] + (1 - b2) * g * g
        t = count[k].to(p.dtype) if per_element else count
        m_hat = m[k] / (1 - b1**t)
        v_hat = v[k] / (1 - b2**t)
        new_params[k] = p - lr * m_hat / (v_hat.sqrt() + eps)
    return new_params, {"m": m, "v": v, "count": count}


def _tree_params(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "0.weight": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "0.bias": torch.randn(4, generator=g, dtype=torch.float64),
    }


def _run(
    params: dict[str, Tensor], state: dict[str, Any], seed: int, steps: int
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    for i in range(steps):
        grads = {
            k: torch.randn(
                p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(seed + i)
            )
            for k, p in params.items()
        }
        params, state = _adam_update(params, grads, state)
    return params, state


def test_functional_adam_with_per_element_count_steps_as_a_fresh_one():
    params = _tree_params(0)
    params, state = _run(params, _adam_init(params, per_element=True), seed=10, steps=6)
    grown = {"0.weight": _positions((4, 3), 5)}
    state = reset_optimizer_state(state, params, grown)
    w = grown["0.weight"]
    assert bool((state["count"]["0.weight"][w] == 0).all())  # the count is reset too
    assert bool((state["count"]["0.weight"][~w] == 6).all())
    fresh_params = {k: p.clone() for k, p in params.items()}
    fresh_state = _adam_init(params, per_element=True)
    for i in range(3):  # the first step and the ones after
        grads = {
            k: torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(50 + i))
            for k, p in params.items()
        }
        params, state = _adam_update(params, grads, state)
        fresh_params, fresh_state = _adam_update(fresh_params, grads, fresh_state)
        assert torch.equal(params["0.weight"][w], fresh_params["0.weight"][w])
        assert not torch.equal(params["0.weight"][~w], fresh_params["0.weight"][~w])


def test_functional_adam_with_one_count_takes_the_closed_form_step():
    params = _tree_params(1)
    params, state = _run(params, _adam_init(params, per_element=False), seed=20, steps=4)
    grown = {"0.bias": torch.tensor([True, False, True, False])}
    new = reset_optimizer_state(state, params, grown)
    assert new["count"] == 4
    old = params["0.bias"].clone()
    grads = {k: torch.randn(p.shape, dtype=p.dtype) for k, p in params.items()}
    stepped, _ = _adam_update(params, grads, new)
    expected = _adam_regrown(
        old,
        grads["0.bias"],
        5,
        lr=0.01,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        decoupled=False,
    )
    where = grown["0.bias"]
    torch.testing.assert_close(stepped["0.bias"][where], expected[where], rtol=1e-12, atol=1e-15)


def test_pure_nothing_mutated_and_untouched_leaves_are_the_same_objects():
    params = _tree_params(2)
    params, state = _run(params, _adam_init(params, per_element=False), seed=30, steps=2)
    snapshot = copy.deepcopy(state)
    params_snapshot = {k: p.clone() for k, p in params.items()}
    grown = {"0.weight": _positions((4, 3), 2)}
    new = reset_optimizer_state(state, params, grown)
    for part in ("m", "v"):
        assert torch.equal(state[part]["0.weight"], snapshot[part]["0.weight"])
        assert new[part]["0.bias"] is state[part]["0.bias"]  # no positions: the same object
        assert new[part]["0.weight"] is not state[part]["0.weight"]
    for k, p in params.items():
        assert torch.equal(p, params_snapshot[k])
    assert new["count"] == state["count"] == 2


ScaleByAdam = namedtuple("ScaleByAdam", ["count", "mu", "nu"])
Empty = namedtuple("Empty", [])


def test_optax_like_namedtuple_state_and_a_bare_momentum_tree():
    params = {"w": torch.ones(2, 2), "b": torch.ones(2)}

    def tree() -> dict[str, Tensor]:
        return {"w": torch.ones(2, 2), "b": torch.ones(2)}

    state = (ScaleByAdam(torch.tensor(3), tree(), tree()), Empty())
    grown = {"w": torch.tensor([[True, False], [False, True]])}
    new = reset_optimizer_state(state, params, grown)
    assert type(new[0]) is ScaleByAdam and type(new[1]) is Empty
    assert new[0].mu["w"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert new[0].nu["w"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert new[0].count is state[0].count and new[0].mu["b"] is state[0].mu["b"]
    named = reset_optimizer_state(state, params, grown, subtrees=("0.1",))  # only mu
    assert named[0].nu["w"] is state[0].nu["w"]
    assert named[0].mu["w"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    momentum = reset_optimizer_state(tree(), params, grown)  # the state is one params tree
    assert momentum["w"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert reset_optimizer_state(None, params, grown) is None  # a stateless optimizer


def test_a_single_tensor_param():
    w = torch.ones(3)
    state = {"m": torch.ones(3), "v": torch.ones(3), "count": 5}
    new = reset_optimizer_state(state, w, torch.tensor([False, True, False]))
    assert new["m"].tolist() == [1.0, 0.0, 1.0] and new["v"].tolist() == [1.0, 0.0, 1.0]
    assert new["count"] == 5


def test_a_per_param_layout_is_ambiguous_unless_subtrees_are_named():
    params = {"w": torch.ones(2, 2)}
    state = {"w": {"exp_avg": torch.ones(2, 2), "exp_avg_sq": torch.ones(2, 2), "step": 3}}
    grown = {"w": torch.tensor([[True, False], [False, False]])}
    with pytest.raises(
        ValueError,
        match=r"^reset_optimizer_state: the state's leaf at 'w.exp_avg' \(a 2-D torch.float32 "
        r"tensor of shape \(2, 2\)\) has the shape of the param 'w' but is in no subtree shaped "
        r"like params; pass subtrees=",
    ):
        reset_optimizer_state(state, params, grown)
    # one param at a time, the tensor as params: its subtrees are single leaves
    new = reset_optimizer_state(
        state, params["w"], grown["w"], subtrees=("w.exp_avg", "w.exp_avg_sq")
    )
    assert new["w"]["exp_avg"].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert new["w"]["step"] == 3


def test_pytree_errors():
    params = {"w": torch.ones(2, 2)}
    yes = {"w": torch.ones(2, 2, dtype=torch.bool)}
    state = {"m": {"w": torch.ones(2, 2)}, "step": 1}
    with pytest.raises(TypeError, match=r"state is a SGD; for a torch.optim optimizer use fs"):
        reset_optimizer_state(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))]), params, yes)
    with pytest.raises(TypeError, match=r"state looks like a torch.optim state_dict .*use fs"):
        reset_optimizer_state(torch.optim.SGD([torch.ones(1)]).state_dict(), params, yes)
    with pytest.raises(ValueError, match=r"^reset_optimizer_state: subtrees is empty"):
        reset_optimizer_state(state, params, yes, subtrees=[])
    with pytest.raises(TypeError, match=r"subtrees must be a tuple of strings or None, got str"):
        reset_optimizer_state(state, params, yes, subtrees="m")
    with pytest.raises(
        ValueError, match=r"the subtree 'mu' of the state is not shaped like params: no leaf"
    ):
        reset_optimizer_state(state, params, yes, subtrees=("mu",))
    with pytest.raises(
        ValueError,
        match=r"the subtree '' of the state .*: its leaf at 'm.w' is not at a param's path",
    ):
        reset_optimizer_state(state, params, yes, subtrees=("",))
    with pytest.raises(
        ValueError, match=r"subtree 'step' .*: its leaf at 'step' is not at a param"
    ):
        reset_optimizer_state(state, params, yes, subtrees=("step",))
    bad = {"m": {"w": torch.ones(4)}}
    with pytest.raises(
        ValueError,
        match=r"subtree 'm' .*: its leaf at 'm.w' is a 1-D .* not a tensor of the param's shape \(2, 2\)",
    ):
        reset_optimizer_state(bad, params, yes, subtrees=("m",))
    with pytest.raises(
        TypeError, match=r"reset_optimizer_state: the mask at 'w' must be a torch.bool"
    ):
        reset_optimizer_state(state, params, {"w": torch.ones(2, 2)})
    meta = {"m": {"w": torch.ones(2, 2, device="meta")}}
    with pytest.raises(
        ValueError,
        match=r"the state's leaf at 'm.w' is on meta but the positions at 'w' are on cpu",
    ):
        reset_optimizer_state(meta, params, yes)


@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.complex64]),
)
def test_property_zero_at_positions_equal_elsewhere(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype
):
    g = torch.Generator().manual_seed(seed)
    params = {"a": torch.randn(shape, generator=g), "b": torch.randn(2, 5, generator=g)}
    where = {"a": torch.rand(shape, generator=g) < 0.5, "b": torch.rand(2, 5, generator=g) < 0.5}
    moments = {k: (torch.randn(p.shape, generator=g) * 10).to(dtype) for k, p in params.items()}
    state = {"m": moments, "lr": 0.1}
    new = reset_optimizer_state(state, params, where)
    for k in params:
        assert new["m"][k].dtype == dtype
        assert bool((new["m"][k][where[k]] == 0).all())
        assert torch.equal(new["m"][k][~where[k]], moments[k][~where[k]])
    assert new["lr"] == 0.1


def test_list_params_with_a_tuple_of_lists_state():
    params = [torch.ones(2, 2), torch.ones(2, 2)]  # two params of one shape
    state = ([torch.ones(2, 2), torch.full((2, 2), 2.0)], [torch.ones(2, 2), torch.ones(2, 2)])
    grown = [torch.tensor([[True, False], [False, False]]), None]
    new = reset_optimizer_state(state, params, grown)
    assert new[0][0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert new[1][0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert new[0][1] is state[0][1] and new[1][1] is state[1][1]
    nested = {"block": {"w": torch.ones(3)}}
    momentum = {"mu": {"block": {"w": torch.ones(3)}}, "t": 2}
    new = reset_optimizer_state(momentum, nested, {"block": {"w": torch.tensor([1, 0, 1]).bool()}})
    assert new["mu"]["block"]["w"].tolist() == [0.0, 1.0, 0.0] and new["t"] == 2
