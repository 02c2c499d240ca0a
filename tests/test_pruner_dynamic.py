"""fs.Pruner with fs.SET and fs.RigL: the training loop, update steps, checkpoint and resume,
schedules and mixed rules, and refusals that leave the state as it was (issue 13)."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import funcsparse as fs


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train(
    pruner: fs.Pruner,
    steps: range,
    params: dict[str, torch.Tensor],
    state: fs.PrunerState,
    history: list[dict[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], fs.PrunerState]:
    """The loop of docs: dense grads (straight-through), update, SGD step, projection."""
    model = _model()

    def loss_fn(p: dict[str, torch.Tensor], masks: object, x: torch.Tensor, y: torch.Tensor):
        out = fs.functional_call(model, p, masks, (x,), straight_through=True)
        return nn.functional.cross_entropy(out, y)

    masks = state["masks"]
    for step in steps:
        x, y = _batch(step)
        grads = torch.func.grad(loss_fn)(params, masks, x, y)
        new, state = pruner.update(params, state, grads=grads)
        if history is not None:
            # grown weights start at zero: the projection zeroed them at the last step
            for path, mask in new.items():
                if mask is not None and masks is not None and masks[path] is not None:
                    assert bool((params[path][mask & ~masks[path]] == 0).all())
            history.append({k: v for k, v in new.items() if v is not None})
        masks = new
        params = {k: v - 0.1 * grads[k] for k, v in params.items()}
        params = fs.apply_masks(params, masks)
    return params, state


RULES = {"*.weight": fs.RigL(0.75, every=3, end_step=20, seed=1)}


def _start() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _model().named_parameters()}


@pytest.mark.parametrize(
    "rules",
    [RULES, {"*.weight": fs.SET(count=40, every=4, seed=9), "0.bias": fs.Magnitude(0.5)}],
    ids=["RigL", "SET+Magnitude"],
)
def test_the_loop_keeps_exact_counts_and_updates_on_the_interval(rules: dict) -> None:
    pruner = fs.Pruner(rules)
    params = _start()
    history: list[dict[str, torch.Tensor]] = []
    _train(pruner, range(25), params, pruner.init(params), history)
    method = next(iter(rules.values()))
    for step, masks in enumerate(history):
        for path, mask in masks.items():
            expected = (
                40 if isinstance(method, fs.SET) and path.endswith("weight")
                else round((0.75 if path.endswith("weight") else 0.5) * mask.numel())
            )  # fmt: skip
            assert int((~mask).sum()) == expected, (step, path)
            if step == 0:
                continue
            before = history[step - 1][path]
            if not path.endswith("weight"):
                assert mask is history[step - 1][path]  # a static rule: the same object
            elif not method.updates_at(step):
                assert mask is history[step - 1][path], (step, path)
            else:  # exactly the drop count moves (0 near end_step: the cosine's tail)
                kept = int(before.sum())
                d = method.drop_count(kept, mask.numel() - kept, step)
                assert int((mask & ~before).sum()) == d == int((before & ~mask).sum())
                assert d > 0 or step > 15


def test_resume_from_a_saved_state_is_bit_identical() -> None:
    pruner = fs.Pruner(
        {"*.weight": fs.SET(0.8, every=2, seed=4), "2.weight": fs.RigL(0.5, every=3)}
    )
    params = _start()
    whole: list[dict[str, torch.Tensor]] = []
    _train(pruner, range(14), params, pruner.init(params), whole)
    params = _start()
    first: list[dict[str, torch.Tensor]] = []
    params, state = _train(pruner, range(7), params, pruner.init(params), first)
    buffer = io.BytesIO()
    torch.save({"state": state, "params": params}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    second: list[dict[str, torch.Tensor]] = []
    _train(pruner, range(7, 14), loaded["params"], loaded["state"], second)
    assert len(first + second) == len(whole)
    for a, b in zip(whole, first + second, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_update_at_or_after_end_step_nor_off_the_interval() -> None:
    w = torch.randn(10, 10)
    pruner = fs.Pruner({"w": fs.RigL(0.5, every=5, end_step=15)})
    state = pruner.init({"w": w})
    masks, state = pruner.update({"w": w}, state)
    seen = [masks["w"]]
    for step in range(1, 40):
        grads = {"w": torch.randn(10, 10)} if step in (5, 10) else None
        masks, state = pruner.update({"w": w * seen[-1]}, state, grads=grads)
        seen.append(masks["w"])
    changed = [t for t in range(1, 40) if seen[t] is not seen[t - 1]]
    assert changed == [5, 10]
    assert all(int((~m).sum()) == 50 for m in seen)


def test_rigl_without_grads_at_an_update_step_is_refused_and_nothing_changes() -> None:
    w = torch.randn(6, 6)
    pruner = fs.Pruner({"w": fs.RigL(0.5, every=2)})
    state = pruner.init({"w": w})
    _, state = pruner.update({"w": w}, state)
    _, state = pruner.update({"w": w}, state)
    saved = {"step": state["step"], "mask": state["masks"]["w"].clone()}
    with pytest.raises(ValueError, match=r"^Pruner.update: the methods at \['w'\] grow .*step 2"):
        pruner.update({"w": w}, state)
    with pytest.raises(ValueError, match=r"^Pruner.update: grads is None at 'w'"):
        pruner.update({"w": w}, state, grads={"w": None})
    with pytest.raises(
        ValueError, match=r"Pruner.update: rule 'w' \(RigL\) got .*masked forward.* at 'w'"
    ):
        pruner.update({"w": w}, state, grads={"w": torch.randn(6, 6) * state["masks"]["w"]})
    with pytest.raises(ValueError, match=r"grads does not have the structure of params"):
        pruner.update({"w": w}, state, grads={"v": torch.randn(6, 6)})
    assert state["step"] == saved["step"] and torch.equal(state["masks"]["w"], saved["mask"])
    new, after = pruner.update({"w": w}, state, grads={"w": torch.randn(6, 6)})
    assert after["step"] == 3 and int((~new["w"]).sum()) == 18


def test_the_pruner_owns_current_mask_and_step() -> None:
    w = torch.randn(4, 4)
    pruner = fs.Pruner({"w": fs.SET(0.5)})
    state = pruner.init({"w": w})
    for name in ("current_mask", "step"):
        with pytest.raises(TypeError, match=rf"Pruner.update: {name} is the pruner's own"):
            pruner.update({"w": w}, state, **{name: {"w": None}})


def test_a_schedule_ramps_the_level_then_drop_and_grow_begin() -> None:
    w = torch.randn(20, 20)
    schedule = fs.schedules.linear(begin_step=0, end_step=6, every=2)
    pruner = fs.Pruner({"w": fs.SET(0.5, every=1, seed=3)}, schedule=schedule)
    state = pruner.init({"w": w})
    seen = []
    for _ in range(10):
        masks, state = pruner.update({"w": w}, state)
        seen.append(masks["w"])
        w = w * masks["w"]
    zeros = [int((~m).sum()) for m in seen]
    assert zeros == [0, 0, 67, 67, 133, 133, 200, 200, 200, 200]
    for t in range(1, 7):  # the ramp: pruned stays pruned, no growth between its steps
        assert not bool((seen[t] & ~seen[t - 1]).any())
        if not schedule.is_update_step(t):
            assert seen[t] is seen[t - 1]
    for t in (7, 8, 9):  # the full level: SET updates at every step
        assert bool((seen[t] & ~seen[t - 1]).any())
    ramp = fs.SET(0.5, every=1, seed=3).scaled(schedule(4)).for_leaf("w")
    assert torch.equal(seen[4], ramp(w, prev_mask=seen[3]))


def test_dynamic_only_steps_leave_static_rules_and_their_data_alone() -> None:
    # Wanda needs input_norms on its update steps; RigL's steps must not ask for them.
    params = {"a": torch.randn(8, 8), "b": torch.randn(8, 8)}
    pruner = fs.Pruner({"a": fs.Wanda(0.5), "b": fs.RigL(0.5, every=2)})
    state = pruner.init(params)
    masks, state = pruner.update(params, state, input_norms={"a": torch.ones(8), "b": None})
    a0 = masks["a"]
    for _ in range(4):
        grads = {"a": None, "b": torch.randn(8, 8)}
        masks, state = pruner.update(params, state, grads=grads)
        assert masks["a"] is a0
    assert state["step"] == 5


def test_grown_positions_reset_the_optimizer_state() -> None:
    model = _model()
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    pruner = fs.Pruner({"0.weight": fs.RigL(0.5, every=2)})
    state = pruner.init(params)
    masks, state = pruner.update(params, state)
    with torch.no_grad():
        fs.apply_masks_(params, masks)
    for step in range(1, 5):
        x, y = _batch(step)
        out = fs.functional_call(model, params, masks, (x,), straight_through=True)
        nn.functional.cross_entropy(out, y).backward()
        grads = {k: v.grad.detach().clone() for k, v in params.items()}
        new, state = pruner.update(params, state, grads=grads)
        grown = {k: None if m is None else m & ~masks[k] for k, m in new.items()}
        fs.reset_optimizer_state_(optimizer, params, grown)
        if step % 2 == 0 and step > 2:
            moments = optimizer.state[params["0.weight"]]["exp_avg"]
            assert bool((moments[grown["0.weight"]] == 0).all())
        masks = new
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            fs.apply_masks_(params, masks)
        assert int((params["0.weight"] == 0).sum()) >= 96


@settings(max_examples=25, deadline=None)
@given(
    rigl=st.booleans(),
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    level=st.floats(0.0, 1.0),
    every=st.integers(1, 4),
    end=st.one_of(st.none(), st.integers(0, 12)),
    seed=st.integers(0, 2**32),
)
def test_pruner_counts_stay_exact_and_masks_move_only_at_update_steps(
    rigl: bool, shape: tuple[int, int], level: float, every: int, end: int | None, seed: int
) -> None:
    cls = fs.RigL if rigl else fs.SET
    method = cls(level, every=every, end_step=end, seed=seed)
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(shape, generator=g), "b": torch.randn(shape[0], generator=g)}
    pruner = fs.Pruner({"w": method})
    state = pruner.init(params)
    masks, state = pruner.update(params, state)
    k = round(level * params["w"].numel())
    for step in range(1, 16):
        params = fs.apply_masks(
            {k_: v + torch.randn(v.shape, generator=g) for k_, v in params.items()}, masks
        )
        grads = {"w": torch.randn(shape, generator=g), "b": None}
        new, state = pruner.update(params, state, grads=grads)
        assert int((~new["w"]).sum()) == k and new["b"] is None
        if not method.updates_at(step):
            assert new["w"] is masks["w"]
        else:
            grown = new["w"] & ~masks["w"]
            assert bool((params["w"][grown] == 0).all())  # grown weights start at zero
        masks = new


def _sharded_worker(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    out = []
    for method in (fs.SET(0.5), fs.RigL(0.5)):
        sharded = {"w": distribute_tensor(full, mesh, [Shard(0)])}
        try:
            fs.Pruner({"w": method}).update(sharded, fs.Pruner({"w": method}).init(sharded))
        except ValueError as err:
            out.append(str(err))
        replicated = {"w": distribute_tensor(full, mesh, [Replicate()])}
        pruner = fs.Pruner({"w": method})
        masks, _ = pruner.update(replicated, pruner.init(replicated))
        local = masks["w"].to_local()
        expected = fs.compute_masks({"w": full}, {"w": method})["w"]
        out.append(f"replicated equal: {torch.equal(local, expected)}")
    return out


def test_sharded_leaves_are_refused_by_name_and_replicated_ones_work() -> None:
    from tests.distributed._spawn import run_ranks

    for result in run_ranks(_sharded_worker):
        assert len(result) == 4
        for name, refused, replicated in (("SET", *result[:2]), ("RigL", *result[2:])):
            assert f"({name}) at 'w': {name} cannot compute an exact mask" in refused
            assert "dynamic sparse training on sharded leaves is not supported" in refused
            assert replicated == "replicated equal: True"
