"""fs.Pruner: state as data, schedules in training steps, nesting, resuming, Movement."""

from __future__ import annotations

import copy
import io
import math
import re
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from tests.helpers import tie_free


def small_params(seed: int = 0) -> dict[str, Tensor]:
    return {
        "a.weight": tie_free((8, 16), seed),
        "a.bias": tie_free((8,), seed + 1),
        "b.weight": tie_free((4, 8), seed + 2),
    }


def zeros(mask: Tensor) -> int:
    return int((~mask).sum())


def snapshot(tree: object) -> object:
    return copy.deepcopy(tree)


def assert_same_tree(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b) and a.dtype == b.dtype
    else:
        assert a == b


# -- the state and the step ----------------------------------------------------------------


def test_init_is_step_zero_with_no_masks_and_plain_data() -> None:
    params = small_params()
    pruner = fs.Pruner({"*.weight": fs.Magnitude(0.5)})
    state = pruner.init(params)
    assert state == {
        "step": 0,
        "fraction": None,
        "masks": {"a.weight": None, "a.bias": None, "b.weight": None},
        "method_state": {"a.weight": None, "a.bias": None, "b.weight": None},
    }
    assert type(state) is dict


def test_no_schedule_prunes_at_step_zero_and_never_again() -> None:
    params = small_params()
    pruner = fs.Pruner({"*.weight": fs.Magnitude(0.5)})
    state = pruner.init(params)
    masks, state = pruner.update(params, state)
    assert state["step"] == 1 and state["fraction"] == 1.0
    assert zeros(masks["a.weight"]) == 64 and zeros(masks["b.weight"]) == 16
    assert masks["a.bias"] is None
    expected = fs.compute_masks(params, {"*.weight": fs.Magnitude(0.5)})
    assert torch.equal(masks["a.weight"], expected["a.weight"])
    # Later updates return the very same objects, whatever the params do.
    moved = {k: -v for k, v in params.items()}
    again, state = pruner.update(moved, state)
    assert again["a.weight"] is masks["a.weight"] and again["b.weight"] is masks["b.weight"]
    assert state["step"] == 2


def test_masks_change_only_on_update_steps_and_are_reused_between() -> None:
    params = small_params()
    schedule = fs.schedules.polynomial(begin_step=3, end_step=13, every=5)
    pruner = fs.Pruner({"a.weight": fs.Magnitude(count=100)}, schedule=schedule)
    state = pruner.init(params)
    previous = None
    for step in range(20):
        masks, state = pruner.update(params, state)
        mask = masks["a.weight"]
        if step < 3:
            assert mask is None
        elif schedule.is_update_step(step):
            assert previous is None or mask is not previous
            assert zeros(mask) == round(100 * schedule(step))
        else:
            assert mask is previous
        previous = mask
    assert zeros(previous) == 100 and state["fraction"] == 1.0


def test_polynomial_counts_training_steps_and_reaches_the_level() -> None:
    """The issue's case: a 50-step run must end at the full level, not at 0.217 of it."""
    params = small_params()
    pruner = fs.Pruner(
        {"*.weight": fs.Magnitude(0.8)},
        schedule=fs.schedules.polynomial(begin_step=0, end_step=50, every=10),
    )
    state = pruner.init(params)
    levels = []
    for _ in range(50):
        masks, state = pruner.update(params, state)
        levels.append(state["fraction"])
    assert levels[0] == 0.0 and levels[-1] < 1.0  # step 49 is still on the ramp
    masks, state = pruner.update(params, state)  # step 50 = end_step
    assert state["fraction"] == 1.0
    assert zeros(masks["a.weight"]) == round(0.8 * 128)
    assert zeros(masks["b.weight"]) == round(0.8 * 32)


def test_plain_callable_schedule_updates_when_its_value_changes() -> None:
    params = small_params()
    calls = []

    def schedule(step: int) -> float:
        calls.append(step)
        return min(1.0, (step // 4) / 2)

    pruner = fs.Pruner({"a.weight": fs.Magnitude(0.5)}, schedule=schedule)
    state = pruner.init(params)
    seen = []
    for _ in range(10):
        masks, state = pruner.update(params, state)
        seen.append(masks["a.weight"])
    assert [zeros(m) for m in seen] == [0] * 4 + [32] * 4 + [64] * 2
    assert seen[1] is seen[0] and seen[5] is seen[4] and seen[9] is seen[8]
    assert seen[4] is not seen[3]


# -- nesting and the total target ----------------------------------------------------------

GRADUAL = [
    fs.Magnitude(0.75),
    fs.Magnitude(count=90),
    fs.NM(n=1, m=4),
    fs.WeightNorm(0.75, sparse_block_shape=(1, 4)),
    fs.WeightNorm(1.0, sparse_block_shape=(2, 2), zeros_per_block=3),
    fs.LnStructured(0.75, n=1, dim=0),
    fs.RandomStructured(0.5, dim=1, seed=3),
    fs.Random(0.6, seed=1),
]


@pytest.mark.parametrize("method", GRADUAL, ids=lambda m: type(m).__name__)
def test_gradual_masks_nest_and_end_at_the_one_shot_count(method: fs.MaskMethod) -> None:
    """Pruned stays pruned, and the level is the total target: the final mask has exactly
    the zeros a one-shot call at the full level has."""
    params = {"w": tie_free((16, 16), 4)}
    pruner = fs.Pruner({"w": method}, schedule=fs.schedules.linear(begin_step=0, end_step=6))
    state = pruner.init(params)
    kept = torch.ones(16, 16, dtype=torch.bool)
    for step in range(8):
        # The weights move between updates, so the ranking changes under the masks.
        moved = {"w": params["w"] * (1 + 0.1 * step * torch.cos(torch.arange(256.0))).view(16, 16)}
        masks, state = pruner.update(moved, state)
        assert not bool((masks["w"] & ~kept).any()), f"step {step} revived a weight"
        kept = masks["w"]
    one_shot = method.for_leaf("w")(params["w"])
    assert zeros(kept) == zeros(one_shot)


def test_regrow_selects_afresh_at_every_update() -> None:
    params = {"w": tie_free((8, 8), 0)}
    pruner = fs.Pruner(
        {"w": fs.Magnitude(0.5)}, schedule=fs.schedules.constant(1.0, every=2), regrow=True
    )
    state = pruner.init(params)
    _, state = pruner.update(params, state)
    flipped = {"w": params["w"].flip(0)}
    _, state = pruner.update(flipped, state)  # not an update step: masks kept
    masks, state = pruner.update(flipped, state)  # step 2: afresh on the flipped weights
    expected = fs.Magnitude(0.5)(flipped["w"])
    assert torch.equal(masks["w"], expected)
    assert bool((masks["w"] & ~fs.Magnitude(0.5)(params["w"])).any())  # weights came back


@given(
    begin=st.integers(0, 5),
    length=st.integers(1, 12),
    every=st.integers(1, 5),
    power=st.sampled_from([1, 2, 3]),
    level=st.floats(0.0, 1.0),
    seed=st.integers(0, 100),
)
def test_property_gradual_magnitude_nests_and_follows_the_schedule(
    begin: int, length: int, every: int, power: int, level: float, seed: int
) -> None:
    schedule = fs.schedules.polynomial(
        begin_step=begin, end_step=begin + length, every=every, power=power
    )
    params = {"w": tie_free((6, 10), seed)}
    pruner = fs.Pruner({"w": fs.Magnitude(level)}, schedule=schedule)
    state = pruner.init(params)
    kept = torch.ones(6, 10, dtype=torch.bool)
    for step in range(begin + length + 2):
        noisy = {"w": params["w"] + 0.01 * step * tie_free((6, 10), seed + step)}
        masks, state = pruner.update(noisy, state)
        if masks["w"] is None:
            assert step < begin
            continue
        assert not bool((masks["w"] & ~kept).any())
        assert zeros(masks["w"]) == round(level * schedule(step) * 60)
        kept = masks["w"]
    assert state["fraction"] == 1.0


# -- state as data: purity, saving, resuming -----------------------------------------------


def test_update_mutates_nothing_it_is_given() -> None:
    params = small_params()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    pruner = fs.Pruner(
        {"a.weight": fs.Movement(0.5), "b.weight": fs.Magnitude(0.5)},
        schedule=fs.schedules.linear(begin_step=1, end_step=3),
    )
    state = pruner.init(params)
    for _ in range(4):
        before = (snapshot(params), snapshot(state), snapshot(grads))
        _, new_state = pruner.update(params, state, grads=grads)
        assert_same_tree(params, before[0])
        assert_same_tree(state, before[1])
        assert_same_tree(grads, before[2])
        assert new_state is not state
        state = new_state


def save_load(state: fs.PrunerState) -> fs.PrunerState:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: fs.PrunerState = torch.load(buffer, weights_only=True)
    return loaded


def test_state_round_trips_through_torch_load_weights_only() -> None:
    params = small_params()
    pruner = fs.Pruner({"*.weight": fs.Movement(0.5)}, schedule=fs.schedules.one_shot(at=1))
    state = pruner.init(params)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    for _ in range(3):
        _, state = pruner.update(params, state, grads=grads)
    loaded = save_load(state)
    assert_same_tree(loaded, state)


def training_run(
    pruner: fs.Pruner, steps: int, *, resume_at: int | None = None
) -> list[dict[str, Tensor | None]]:
    """A small SGD loop with gradual pruning; optionally saved and reloaded mid-way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    data = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, generator=data)
    y = torch.randint(0, 3, (64,), generator=data)

    def loss(p: dict[str, Tensor], masks: object) -> Tensor:
        logits = fs.functional_call(model, p, masks, (x,))
        return nn.functional.cross_entropy(logits, y)

    state = pruner.init(params)
    masks: object = None
    history = []
    for step in range(steps):
        if step == resume_at:
            saved = save_load({"params": params, "state": state})
            params, state = saved["params"], saved["state"]
        grads = torch.func.grad(loss)(params, masks)
        masks, state = pruner.update(params, state, grads=grads)
        params = fs.apply_masks({k: p - 0.1 * grads[k] for k, p in params.items()}, masks)
        history.append(dict(masks))
    return history


@pytest.mark.parametrize(
    "rules",
    [
        {"*.weight": fs.Magnitude(0.7)},
        {"0.weight": fs.Movement(0.6), "2.weight": fs.Movement(select=fs.NM(n=2, m=4))},
        {"*.weight": fs.Random(0.5, seed=9)},
    ],
    ids=["magnitude", "movement", "random"],
)
def test_resuming_from_a_saved_state_gives_bit_identical_masks(rules: dict) -> None:
    pruner = fs.Pruner(rules, schedule=fs.schedules.polynomial(begin_step=2, end_step=12, every=3))
    straight = training_run(pruner, 16)
    resumed = training_run(pruner, 16, resume_at=7)
    for step, (a, b) in enumerate(zip(straight, resumed, strict=True)):
        for key in a:
            if a[key] is None:
                assert b[key] is None
            else:
                assert torch.equal(a[key], b[key]), f"step {step}, {key}"


# -- Movement ------------------------------------------------------------------------------


def test_movement_score_is_minus_the_sum_of_w_times_g() -> None:
    """The accumulated score against a direct computation over the same steps."""
    torch.manual_seed(0)
    steps = [({"w": torch.randn(6, 8)}, {"w": torch.randn(6, 8)}) for _ in range(5)]
    pruner = fs.Pruner({"w": fs.Movement(0.5)}, schedule=fs.schedules.one_shot(at=4))
    state = pruner.init(steps[0][0])
    for params, grads in steps:
        masks, state = pruner.update(params, state, grads=grads)
    direct = -sum(p["w"].double() * g["w"].double() for p, g in steps)
    assert torch.allclose(state["method_state"]["w"].double(), direct, atol=1e-5)
    # Selected at step 4 from all five steps' scores: the lowest half is pruned.
    assert torch.equal(masks["w"], fs.Magnitude(0.5)(steps[-1][0]["w"], scores=direct.float()))
    assert zeros(masks["w"]) == 24


def test_movement_prunes_weights_moving_towards_zero_not_small_ones() -> None:
    w = torch.tensor([[4.0, -3.0, 0.1, -0.2]])
    g = torch.tensor([[1.0, -1.0, -1.0, 1.0]])  # SGD pulls 4 and -3 towards 0, pushes the rest out
    masks = fs.compute_masks({"w": w}, {"w": fs.Movement(count=2)}, scores={"w": -(w * g)})
    assert masks["w"].tolist() == [[False, False, True, True]]
    assert fs.Magnitude(count=2)(w).tolist() == [[True, True, False, False]]


def test_movement_with_nm_and_block_selections() -> None:
    torch.manual_seed(3)
    w, scores = torch.randn(4, 8), torch.randn(4, 8)
    nm = fs.Movement(select=fs.NM(n=2, m=4))(w, scores=scores)
    assert torch.equal(nm, fs.NM(n=2, m=4)(w, scores=scores))
    assert bool((nm.view(4, 2, 4).sum(-1) == 2).all())
    block = fs.Movement(select=fs.WeightNorm(0.5, sparse_block_shape=(1, 4)))(w, scores=scores)
    assert torch.equal(block, fs.WeightNorm(0.5, sparse_block_shape=(1, 4))(w, scores=scores))
    assert fs.Movement(select=fs.NM(n=2, m=4)).scaled(0.5) == fs.Movement(select=fs.NM(n=3, m=4))
    assert fs.Movement(0.8).scaled(0.5) == fs.Movement(0.4)


def test_movement_bad_configs_and_missing_scores() -> None:
    with pytest.raises(TypeError, match=r"Movement: give a level .* or a select method, not both"):
        fs.Movement(0.5, select=fs.NM(n=2, m=4))
    with pytest.raises(
        TypeError, match=r"Movement: select must be a funcsparse method that reads scores"
    ):
        fs.Movement(select=fs.NearlyDiagonal(nearliness=3))
    with pytest.raises(TypeError, match=r"Movement: select=GlobalMagnitude selects across tensors"):
        fs.Movement(select=fs.GlobalMagnitude(0.5))
    with pytest.raises(TypeError, match=r"Movement: give exactly one of sparsity"):
        fs.Movement()
    with pytest.raises(
        ValueError,
        match=r"compute_masks: rule 'w' \(Movement\) got no scores at 'w'; Movement ranks movement scores",
    ):
        fs.compute_masks({"w": torch.ones(2, 2)}, {"w": fs.Movement(0.5)})


# -- bad input -----------------------------------------------------------------------------


def test_movement_needs_grads_at_every_update() -> None:
    params = small_params()
    pruner = fs.Pruner({"a.weight": fs.Movement(0.5)})
    state = pruner.init(params)
    with pytest.raises(
        ValueError,
        match=r"Pruner.update: the methods at \['a.weight'\] accumulate gradients; pass grads=",
    ):
        pruner.update(params, state)
    bad = {k: torch.ones(3) for k in params}
    with pytest.raises(
        ValueError,
        match=r"Pruner.update: Movement at 'a.weight' needs the gradient of a tensor of shape \(8, 16\), got a 1-D",
    ):
        pruner.update(params, state, grads=bad)
    with pytest.raises(
        ValueError, match=r"Pruner.update: grads does not have the structure of params"
    ):
        pruner.update(params, state, grads={"a.weight": torch.ones(8, 16)})


def test_bad_states_are_refused_naming_the_problem() -> None:
    params = small_params()
    pruner = fs.Pruner({"*.weight": fs.Magnitude(0.5)})
    state = pruner.init(params)
    with pytest.raises(
        TypeError,
        match=r"Pruner.update: state must be the dict that Pruner.init or Pruner.update returned",
    ):
        pruner.update(params, {"step": 0})
    with pytest.raises(
        ValueError,
        match=r"Pruner.update: state\['masks'\] does not have the structure of params .*other params",
    ):
        pruner.update({"x": torch.ones(2)}, state)
    with pytest.raises(
        TypeError, match=r"Pruner.update: state\['step'\] must be an int, got float 1.5"
    ):
        pruner.update(params, {**state, "step": 1.5})
    with pytest.raises(ValueError, match=r"Pruner.update: state\['step'\] must be >= 0, got -1"):
        pruner.update(params, {**state, "step": -1})


def test_bad_configs_are_refused_at_construction() -> None:
    with pytest.raises(
        TypeError, match=r"Pruner: rule 'w': NearlyDiagonal has no level that a schedule can scale"
    ):
        fs.Pruner({"w": fs.NearlyDiagonal(nearliness=3)}, schedule=fs.schedules.constant())
    fs.Pruner({"w": fs.NearlyDiagonal(nearliness=3)})  # without a schedule it is fine
    with pytest.raises(
        TypeError, match=r"Pruner: rule 'w' must map to a funcsparse method or None, got float 0.5"
    ):
        fs.Pruner({"w": 0.5})
    with pytest.raises(TypeError, match=r"Pruner: rules must be a mapping"):
        fs.Pruner([("w", fs.Magnitude(0.5))])
    with pytest.raises(
        TypeError, match=r"Pruner: schedule must be an fs.schedules schedule or a callable"
    ):
        fs.Pruner({"w": fs.Magnitude(0.5)}, schedule=0.5)
    with pytest.raises(TypeError, match=r"Pruner: regrow must be a bool"):
        fs.Pruner({"w": fs.Magnitude(0.5)}, regrow=1)
    with pytest.raises(ValueError, match=r"Pruner.init: rule path 'x' matches no leaf"):
        fs.Pruner({"x": fs.Magnitude(0.5)}).init({"w": torch.ones(2)})


def test_a_schedule_outside_zero_one_is_refused_with_nothing_changed() -> None:
    params = {"w": torch.ones(4)}
    pruner = fs.Pruner({"w": fs.Magnitude(0.5)}, schedule=lambda step: 1.5)
    state = pruner.init(params)
    with pytest.raises(
        ValueError,
        match=r"Pruner.update: the schedule gave 1.5 at step 0; a schedule gives a fraction in \[0, 1\]",
    ):
        pruner.update(params, state)
    assert state["step"] == 0 and state["masks"] == {"w": None}


# -- composition ---------------------------------------------------------------------------


def test_compiled_training_step_does_not_recompile_between_mask_updates() -> None:
    """The user's step is compiled; the pruner runs outside it. New masks (same shapes)
    change no guard, so the step compiles once for the masked phase, and matches eager."""
    from torch._dynamo.testing import CompileCounter

    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = torch.randn(16, 8), torch.randn(16, 2)

    def step(p: dict[str, Tensor], masks: dict[str, Tensor | None]) -> dict[str, Tensor]:
        def loss(q: dict[str, Tensor]) -> Tensor:
            return ((fs.functional_call(model, q, masks, (x,)) - y) ** 2).mean()

        grads = torch.func.grad(loss)(p)
        return {k: v - 0.1 * grads[k] for k, v in p.items()}

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    pruner = fs.Pruner(
        {"*.weight": fs.Magnitude(0.5)},
        schedule=fs.schedules.linear(begin_step=0, end_step=6, every=2),
    )
    state = pruner.init(params)
    eager_params = params
    for _ in range(10):
        masks, state = pruner.update(params, state)
        params = compiled(params, masks)
        eager_params = step(eager_params, masks)
    assert counter.frame_count == 1
    for key in params:
        assert torch.allclose(params[key], eager_params[key], atol=1e-6)
    assert math.isclose(state["fraction"], 1.0)


def test_state_scores_do_not_trip_the_coverage_check_but_given_scores_are_checked() -> None:
    torch.manual_seed(0)
    params = {"a": torch.randn(4, 4), "b": torch.randn(4, 4)}
    grads = {"a": torch.randn(4, 4), "b": None}
    pruner = fs.Pruner({"a": fs.Movement(0.5), "b": fs.Magnitude(0.5)})
    masks, _ = pruner.update(params, pruner.init(params), grads=grads)
    assert torch.equal(masks["b"], fs.Magnitude(0.5)(params["b"]))  # no scores given: |w|
    with pytest.raises(
        ValueError, match=r"compute_masks: scores is None at \['b'\], which rule 'b' \(Magnitude\)"
    ):
        pruner.update(params, pruner.init(params), grads=grads, scores={"a": None, "b": None})
    given = {"a": None, "b": -params["b"]}
    masks, _ = pruner.update(params, pruner.init(params), grads=grads, scores=given)
    assert torch.equal(masks["b"], fs.Magnitude(0.5)(params["b"], scores=-params["b"]))


def test_malformed_states_are_refused_and_change_nothing() -> None:
    params = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    pruner = fs.Pruner({"w": fs.Movement(0.5)})
    grads = {"w": torch.randn(4, 4), "b": None}
    _, state = pruner.update(params, pruner.init(params), grads=grads)
    saved = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    bad: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (TypeError, r"state must be the dict .* got list \[\]", {}),
        (
            TypeError,
            r"state\['masks'\] at 'w' must be a torch.bool tensor or None, got str 'x'",
            {"masks": {"w": "x", "b": None}},
        ),
        (
            ValueError,
            r"state\['masks'\] at 'w' has shape \(2, 2\) on cpu; the leaf has shape \(4, 4\) on cpu",
            {"masks": {"w": torch.ones(2, 2, dtype=torch.bool), "b": None}},
        ),
        (
            ValueError,
            r"state\['masks'\] at 'w' has shape \(4, 4\) on meta; the leaf has shape \(4, 4\) on cpu",
            {"masks": {"w": torch.ones(4, 4, dtype=torch.bool, device="meta"), "b": None}},
        ),
        (
            ValueError,
            r"state\['masks'\] holds .* at 'b', which no rule matches",
            {"masks": {"w": None, "b": torch.ones(4, dtype=torch.bool)}},
        ),
        (
            TypeError,
            r"state\['method_state'\] at 'w' must be a floating tensor, got list",
            {"method_state": {"w": [1.0], "b": None}},
        ),
        (
            ValueError,
            r"state\['method_state'\] at 'w' has shape \(16,\) on cpu",
            {"method_state": {"w": torch.zeros(16), "b": None}},
        ),
        (
            ValueError,
            r"state\['method_state'\] holds .* at 'b', whose method keeps no state",
            {"method_state": {"w": torch.zeros(4, 4), "b": torch.zeros(4)}},
        ),
        (ValueError, r"state\['fraction'\] must be in \[0, 1\], got 2.0", {"fraction": 2.0}),
        (TypeError, r"state\['fraction'\] must be a real number, got str", {"fraction": "1"}),
    ]
    for error, message, change in bad:
        broken: Any = [] if not change else {**state, **change}
        with pytest.raises(error, match=f"Pruner.update: {message}"):
            pruner.update(params, broken, grads=grads)
    with pytest.raises(ValueError, match=r"needs a floating gradient on the leaf's device \(cpu\)"):
        pruner.update(params, state, grads={"w": torch.randn(4, 4, device="meta"), "b": None})
    assert state["step"] == saved["step"] and state["fraction"] == saved["fraction"]
    assert torch.equal(state["method_state"]["w"], saved["method_state"]["w"])
    assert torch.equal(state["masks"]["w"], saved["masks"]["w"])


def test_a_schedule_that_gives_no_number_is_refused_by_name() -> None:
    params = {"w": torch.randn(4, 4)}
    for value, error in (("half", TypeError), (float("nan"), ValueError), (None, TypeError)):
        pruner = fs.Pruner({"w": fs.Magnitude(0.5)}, schedule=lambda step, v=value: v)
        with pytest.raises(error, match=r"Pruner.update: schedule\(0\) must"):
            pruner.update(params, pruner.init(params))


# -- leaves refused at init, before any state exists (issue 9, fuzz) ------------------------


@pytest.mark.parametrize(
    "method",
    [fs.Magnitude(sparsity=0.5), fs.Movement(sparsity=0.5), fs.WeightNorm(sparsity=0.5)],
    ids=lambda m: type(m).__name__,
)
def test_init_refuses_a_meta_leaf_by_rule_and_path_before_any_state(
    monkeypatch: pytest.MonkeyPatch, method: fs.MaskMethod
) -> None:
    states: list[object] = []
    original = type(method).init_state
    monkeypatch.setattr(
        type(method), "init_state", lambda self, t: states.append(t) or original(self, t)
    )
    params = {"a": torch.randn(4, 4), "z": torch.zeros(4, 4, device="meta")}
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Pruner.init: rule '*' ({type(method).__name__}) got a 2-D torch.float32 tensor "
            "of shape (4, 4) on meta at 'z'; meta tensors have no data"
        ),
    ):
        fs.Pruner({"*": method}).init(params)
    assert states == []


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.complex64])
@pytest.mark.parametrize(
    "method",
    [fs.Magnitude(sparsity=0.5), fs.Movement(sparsity=0.5)],
    ids=lambda m: type(m).__name__,
)
def test_init_refuses_float8_and_complex_leaves_by_path(
    method: fs.MaskMethod, dtype: torch.dtype
) -> None:
    params = {"a": torch.randn(4, 4), "z": torch.randn(4, 4).to(dtype)}
    with pytest.raises(TypeError, match=re.escape(f"of dtype {dtype} at 'z'; {dtype} is not")):
        fs.Pruner({"*": method}).init(params)
    fs.Pruner({"a": method}).init(params)  # an unmatched leaf of any dtype is fine


def test_init_leaves_what_update_brings_to_update() -> None:
    # Wanda's input_norms and Movement's scores come with update: init takes the leaves
    params = {"w": torch.randn(4, 8), "b": torch.randn(4)}
    for method in (fs.Wanda(sparsity=0.5), fs.Movement(sparsity=0.5)):
        state = fs.Pruner({"w": method}).init(params)
        assert state["step"] == 0 and state["masks"] == {"w": None, "b": None}


@pytest.mark.parametrize("function", ["init", "update"])
@pytest.mark.parametrize(("leaf", "shown"), [("x", "str 'x'"), (2, "int 2")])
def test_a_leaf_that_is_not_a_tensor_is_refused_matched_or_not(
    function: str, leaf: object, shown: str
) -> None:
    pruner = fs.Pruner({"w": fs.Magnitude(sparsity=0.5)})
    good = {"w": torch.randn(4, 4), "b": None}
    state = pruner.init(good)
    bad = {"w": torch.randn(4, 4), "b": leaf}
    with pytest.raises(
        TypeError, match=rf"^Pruner.{function}: expected a pytree of tensors .*got {shown} at 'b'"
    ):
        pruner.init(bad) if function == "init" else pruner.update(bad, state)
    with pytest.raises(TypeError, match=r"as the whole tree; pass dict\(model\.named_parameters"):
        pruner.init(torch.nn.Linear(2, 2))


def test_none_leaves_are_empty_entries_as_before() -> None:
    params = {"w": torch.randn(4, 4), "b": None}
    pruner = fs.Pruner({"w": fs.Magnitude(sparsity=0.5)})
    state = pruner.init(params)
    assert state["masks"] == {"w": None, "b": None}
    masks, state = pruner.update(params, state)
    assert masks["b"] is None and int((~masks["w"]).sum()) == 8


def test_update_reuses_the_leaf_methods_for_the_same_paths() -> None:
    # Rules are matched and per-leaf methods derived once per tree, not at every step.
    calls: list[str] = []

    class Counting(fs.Random):
        def for_leaf(self, path: str) -> fs.MaskMethod:
            calls.append(path)
            return super().for_leaf(path)

    pruner = fs.Pruner({"w": Counting(0.5)})
    params = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    state = pruner.init(params)
    first, state = pruner.update(params, state)  # a mask update: compute_masks derives too
    assert calls == ["w", "w"]
    for _ in range(3):
        masks, state = pruner.update(params, state)
        assert masks["w"] is first["w"]
    assert calls == ["w", "w"]  # steps without a mask update derive nothing
    renamed = {"v": params["w"], "w": params["w"]}  # another tree: matched afresh
    pruner.init(renamed)
    assert calls == ["w", "w", "w"]
