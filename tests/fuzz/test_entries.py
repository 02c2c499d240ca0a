"""Fuzz the tree-level entries: compute_masks, apply_masks(_), functional_call, the score
functions, collect_input_norms, fs.Pruner and fs.sensitivity.

Properties (see ``hostile.guarded``): only TypeError/ValueError escape, with short messages;
nothing passed in changes (apply_masks_ changes its params by contract, and only where the
masks prune, and only when it returns); masks are bool, leaf-shaped and on the leaf's device;
the same inputs give the same outputs.
"""

from __future__ import annotations

import copy
from typing import Any

import optree
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse import schedules
from funcsparse.testing import registered_methods
from tests.fuzz.hostile import (
    HUGE,
    Raised,
    assert_mask,
    fuzz,
    guarded,
    junk,
    levels,
    pytrees,
    rule_keys,
    same_output,
    shapes,
    snapshot,
    tensors,
)

METHODS = registered_methods()

#: Any registered method, valid or built from junk where a config would go.
methods = st.one_of([cls.configs(st) for cls in METHODS])
rules = st.dictionaries(rule_keys, st.one_of(methods, methods, st.none(), junk), max_size=3)


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    paths, leaves, _ = optree.tree_flatten_with_path(tree)
    return [(".".join(map(str, p)), leaf) for p, leaf in zip(paths, leaves, strict=True)]


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)  # hypothesis restores the global RNG around each example
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    if kind == "bn":
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def _input(kind: str) -> Tensor:
    return torch.randn(3, 2, 4, 4) if kind == "conv" else torch.randn(3, 4)


def _not_a_tensor(value: object) -> bool:
    return not isinstance(value, (Tensor, nn.Module))


@st.composite
def model_params(draw: st.DrawFn, /, model: nn.Module) -> dict[str, Any]:
    """``dict(model.named_parameters())``, with now and then a leaf replaced by a hostile one."""
    params: dict[str, Any] = dict(model.named_parameters())
    for name in draw(st.lists(st.sampled_from(sorted(params)), max_size=2, unique=True)):
        shape = tuple(params[name].shape)
        # float32 as the model's own (a float64 leaf in a float32 forward is torch's
        # RuntimeError from the user's model, not an entry's input check)
        # (junk tensors of another shape fail in torch's own forward, not an input check)
        params[name] = draw(
            st.one_of(tensors(shape, dtypes=(torch.float32,)), junk.filter(_not_a_tensor))
        )
    return params


@st.composite
def masks_for(draw: st.DrawFn, /, params: Any) -> Any:
    """Masks of ``params``' structure (good, partial, wrong dtype/shape/device), or junk."""
    kind = draw(st.sampled_from(["computed", "computed", "ones", "tree", "junk"]))
    if kind == "junk":
        return draw(junk)
    if kind == "tree":
        return draw(pytrees(tensors(dtypes=(torch.bool,))))
    try:
        paths_leaves = _leaves(params)
    except Exception:
        return draw(junk)
    masks: dict[str, Any] = {}
    for path, leaf in paths_leaves:
        if not isinstance(leaf, Tensor) or draw(st.integers(0, 3)) == 0:
            masks[path] = None
            continue
        shape = tuple(leaf.shape)
        if kind == "ones":
            masks[path] = torch.ones(shape, dtype=torch.bool)
        else:
            masks[path] = draw(
                st.one_of(
                    tensors(shape, dtypes=(torch.bool,), odd=False),
                    tensors(shape, dtypes=(torch.bool,)),
                    junk,
                )
            )
    if not isinstance(params, dict):
        return masks
    if draw(st.booleans()):  # the masks pytree as params' own structure where possible
        return {k: masks.get(k) for k in params}
    return masks


# -- compute_masks -----------------------------------------------------------------------------


@fuzz
@given(data=st.data())
def test_compute_masks(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    rule_map = data.draw(st.one_of(rules, junk), label="rules")
    batch_dims = data.draw(st.sampled_from([0, 0, 0, 1, 2, -1, "1", HUGE, True]), label="batch")
    extra: dict[str, Any] = {}
    if data.draw(st.booleans()):
        extra[data.draw(st.sampled_from(["prev_masks", "scores"]))] = data.draw(
            masks_for(params), label="data"
        )
    masks = guarded(
        "compute_masks", fs.compute_masks, params, rule_map, batch_dims=batch_dims, **extra
    )
    if isinstance(masks, Raised):
        return
    given_leaves = dict(_leaves(params))
    for path, mask in _leaves(masks):
        if mask is not None:
            assert_mask(f"compute_masks at {path!r}", mask, given_leaves[path])
    again = guarded(
        "compute_masks", fs.compute_masks, params, rule_map, batch_dims=batch_dims, **extra
    )
    assert same_output(masks, again), "compute_masks: two calls gave different masks"


# -- apply_masks, apply_masks_, functional_call ---------------------------------------------------


@fuzz
@given(data=st.data())
def test_apply_masks(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    masks = data.draw(masks_for(params), label="masks")
    out = guarded("apply_masks", fs.apply_masks, params, masks)
    if isinstance(out, Raised):
        return
    for path, leaf in _leaves(params):
        if isinstance(leaf, Tensor):
            new = dict(_leaves(out))[path]
            assert isinstance(new, Tensor) and new.shape == leaf.shape and new.dtype == leaf.dtype
    assert same_output(out, guarded("apply_masks", fs.apply_masks, params, masks))


@fuzz
@given(data=st.data())
def test_apply_masks_in_place_changes_nothing_when_it_raises(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    masks = data.draw(masks_for(params), label="masks")
    before = snapshot(params)
    expected = guarded("apply_masks", fs.apply_masks, params, masks)
    out = guarded("apply_masks_", lambda m: fs.apply_masks_(params, m), masks)
    if isinstance(out, Raised):
        assert same_output(before, snapshot(params)), "apply_masks_ raised after changing params"
        return
    if not isinstance(expected, Raised):
        for (path, leaf), (_, want) in zip(_leaves(params), _leaves(expected), strict=True):
            if isinstance(leaf, Tensor):
                # values only (clones: the in-place call bumps the leaf's version counter)
                got, wanted = leaf.detach().clone(), want.detach().clone()
                assert same_output(got, wanted), f"apply_masks_ at {path!r}"


@fuzz
@given(data=st.data(), kind=st.sampled_from(["mlp", "conv", "bn"]))
def test_functional_call(data: Any, kind: str) -> None:
    model = _model(kind)
    model.train(data.draw(st.booleans(), label="train"))
    params = data.draw(model_params(model), label="params")
    masks = data.draw(masks_for(params), label="masks")
    x = data.draw(st.one_of(st.just(_input(kind)), junk.filter(_not_a_tensor)), label="x")
    straight = data.draw(st.one_of(st.booleans(), junk), label="straight_through")
    if model.training and kind == "bn":
        # BatchNorm in train mode: torch updates the running stats of the module it runs
        # (documented); funcsparse must add nothing to that. Compare with torch's own call.
        reference = copy.deepcopy(model)
        state = snapshot(model)
        out = guarded(
            "functional_call",
            lambda *a, **k: fs.functional_call(model, *a, **k),
            params, masks, (x,), straight_through=straight,
        )  # fmt: skip
        if isinstance(out, Raised):
            assert same_output(state, snapshot(model)), "functional_call raised half-way"
            return
        dense = {k: v for k, v in params.items() if isinstance(v, Tensor)}
        torch.func.functional_call(reference, dense, (x,))
        for (name, ours), (_, theirs) in zip(
            model.named_buffers(), reference.named_buffers(), strict=True
        ):
            if masks is None or name.endswith("num_batches_tracked"):  # unmasked: all equal
                assert torch.equal(ours, theirs), f"functional_call: {name}"
        return
    out = guarded(
        "functional_call", fs.functional_call, model, params, masks, (x,), straight_through=straight
    )
    if not isinstance(out, Raised):
        assert isinstance(out, Tensor) and out.shape[0] == 3


# -- scores and calibration -----------------------------------------------------------------------


@fuzz
@given(data=st.data())
def test_score_functions(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    other = data.draw(st.one_of(masks_for(params), pytrees(), junk), label="grads/norms")
    for name, call, args in (
        ("magnitude_scores", fs.magnitude_scores, (params,)),
        ("saliency_scores", fs.saliency_scores, (params, other)),
        ("wanda_scores", fs.wanda_scores, (params, other)),
    ):
        out = guarded(name, call, *args)
        if isinstance(out, Raised):
            continue
        assert same_output(out, guarded(name, call, *args)), f"{name}: not deterministic"
        given_leaves = dict(_leaves(params))
        for path, score in _leaves(out):
            if isinstance(score, Tensor) and isinstance(given_leaves.get(path), Tensor):
                assert score.device == given_leaves[path].device, f"{name} at {path!r}"


@fuzz
@given(data=st.data(), kind=st.sampled_from(["mlp", "conv", "bn"]))
def test_collect_input_norms(data: Any, kind: str) -> None:
    model = _model(kind).eval()
    params = data.draw(model_params(model), label="params")
    good = [_input(kind), _input(kind)]
    # (a tensor batch of the wrong shape fails in the model's own forward, as torch raises:
    # a 0-D batch is test_reproducers.py's)
    no_tensor = junk.filter(_not_a_tensor)
    batches = data.draw(
        st.one_of(st.just(good), st.just([]), st.lists(st.one_of(st.just(good[0]), no_tensor), max_size=2), no_tensor),
        label="batches",
    )  # fmt: skip
    paths = data.draw(
        st.one_of(st.none(), st.lists(st.sampled_from([*params, "nope", "0"]), max_size=2), junk),
        label="paths",
    )
    masks = data.draw(st.one_of(st.none(), masks_for(params)), label="masks")
    out = guarded(
        "collect_input_norms", fs.collect_input_norms, model, params, batches, paths=paths, masks=masks
    )  # fmt: skip
    if not isinstance(out, Raised):
        again = guarded(
            "collect_input_norms", fs.collect_input_norms, model, params, batches, paths=paths, masks=masks
        )  # fmt: skip
        assert same_output(out, again), "collect_input_norms: not deterministic"


# -- Pruner ---------------------------------------------------------------------------------------


schedule_values = st.one_of(
    st.none(),
    st.just(schedules.constant(0.5)),
    st.just(schedules.linear(begin_step=0, end_step=4, every=1)),
    st.just(schedules.one_shot(at=1)),
    st.just(lambda step: 0.5),
    st.just(lambda step: HUGE),
    st.just(lambda step: "x"),
    junk,
)


@fuzz
@given(data=st.data())
def test_pruner(data: Any) -> None:
    model = _model("mlp")
    rule_map = data.draw(
        st.one_of(st.just({"*.weight": fs.Magnitude(0.5)}), st.just({"**": fs.Movement(0.5)}), rules),
        label="rules",
    )  # fmt: skip
    schedule = data.draw(schedule_values, label="schedule")
    regrow = data.draw(st.one_of(st.booleans(), junk), label="regrow")
    pruner = guarded("Pruner", fs.Pruner, rule_map, schedule=schedule, regrow=regrow)
    if isinstance(pruner, Raised):
        return
    params = data.draw(st.one_of(model_params(model), pytrees(), junk), label="params")
    state = guarded("Pruner.init", pruner.init, params)
    if isinstance(state, Raised):
        return
    if data.draw(st.booleans(), label="hostile state"):
        state = data.draw(st.one_of(junk, st.just({}), st.just({**state, "step": -1})))
    grads = data.draw(st.one_of(st.none(), masks_for(params), pytrees(), junk), label="grads")
    for _ in range(2):
        out = guarded("Pruner.update", pruner.update, params, state, grads=grads)
        if isinstance(out, Raised):
            return
        masks, state = out
        given_leaves = dict(_leaves(params))
        for path, mask in _leaves(masks):
            if mask is not None:
                assert_mask(f"Pruner.update at {path!r}", mask, given_leaves[path])


# -- sensitivity ----------------------------------------------------------------------------------


@fuzz
@given(data=st.data())
def test_sensitivity(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    rule_map = data.draw(st.one_of(rules, st.just({"**": fs.Magnitude(0.5)}), junk), label="rules")
    level_list = data.draw(
        st.one_of(st.lists(levels, min_size=0, max_size=3), st.just([0.0, 0.5, 1.0]), junk),
        label="levels",
    )
    use_vmap = data.draw(st.one_of(st.booleans(), junk), label="vmap")
    chunk = data.draw(st.one_of(st.none(), st.integers(-1, 3), junk), label="chunk_size")

    def loss_fn(tree: Any) -> Tensor:
        total = torch.zeros(())
        for _, leaf in _leaves(tree):
            if (
                isinstance(leaf, Tensor)
                and leaf.device.type == "cpu"
                and leaf.dtype.is_floating_point
            ):
                total = total + leaf.detach().float().nan_to_num().square().sum().clamp(max=1e30)
        return total

    out = guarded(
        "sensitivity", fs.sensitivity, loss_fn, params, rule_map, levels=level_list, vmap=use_vmap,
        chunk_size=chunk,
    )  # fmt: skip
    if isinstance(out, Raised):
        return
    assert out.losses.shape == (len(out.paths), len(out.levels))


@fuzz
@given(shape=shapes(min_dims=1, max_dims=3), batch_dims=st.integers(0, 2), data=st.data())
def test_compute_masks_zero_size_and_0d_members(
    shape: tuple[int, ...], batch_dims: int, data: Any
) -> None:
    leaf = data.draw(tensors(shape, odd=False), label="leaf")
    method = data.draw(methods, label="method")
    masks = guarded(
        "compute_masks", fs.compute_masks, {"w": leaf}, {"w": method}, batch_dims=batch_dims
    )
    if not isinstance(masks, Raised):
        assert_mask("compute_masks", masks["w"], leaf)
