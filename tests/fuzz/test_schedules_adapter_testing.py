"""Fuzz the schedules, the adapter's sparsifiers, schedulers and load_state_dict, and
funcsparse.testing's checks.

Properties (see ``hostile.guarded``): only TypeError/ValueError escape with short messages;
nothing passed in changes; a call on a stateful adapter object that raised leaves it (and its
model) as it was; schedule levels are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import funcsparse as fs
from funcsparse import adapter, schedules
from funcsparse.testing import check_leaf_mask, check_masks
from tests.fuzz.hostile import (
    HUGE,
    Raised,
    fuzz,
    guarded,
    junk,
    levels,
    pytrees,
    rule_keys,
    same_output,
    snapshot,
    tensors,
)

ints = st.one_of(st.integers(-3, 12), st.sampled_from([0, HUGE, 2**63, -HUGE]), junk)
reals = st.one_of(levels, st.floats(allow_nan=True), junk)
steps = st.one_of(st.integers(-2, 20), st.sampled_from([HUGE, 2**63]), junk)


@st.composite
def schedule_calls(draw: st.DrawFn) -> tuple[str, Any, dict[str, Any]]:
    kind = draw(st.sampled_from(["constant", "one_shot", "linear", "polynomial"]))
    kwargs: dict[str, Any] = {}
    if kind == "constant":
        kwargs = {"value": draw(reals), "every": draw(st.one_of(st.none(), ints))}
    elif kind == "one_shot":
        kwargs = {"at": draw(ints)}
    else:
        kwargs = {
            "begin_step": draw(ints),
            "end_step": draw(ints),
            "every": draw(ints),
            "initial": draw(reals),
            "final": draw(reals),
        }
        if kind == "polynomial":
            kwargs["power"] = draw(reals)
    for name in draw(st.lists(st.sampled_from(sorted(kwargs)), max_size=2, unique=True)):
        del kwargs[name]
    return kind, getattr(schedules, kind), kwargs


@fuzz
@given(call=schedule_calls(), step_values=st.lists(steps, min_size=1, max_size=3))
def test_schedules(call: tuple[str, Any, dict[str, Any]], step_values: list[Any]) -> None:
    name, cls, kwargs = call
    schedule = guarded(name, cls, **kwargs)
    if isinstance(schedule, Raised):
        return
    assert isinstance(schedule, schedules.Schedule)
    for step in step_values:
        value = guarded(f"{schedule!r}({step!r})", schedule, step)
        if not isinstance(value, Raised):
            assert isinstance(value, float) and 0.0 <= value <= 1.0, value
            assert same_output(value, schedule(step))
        guarded(f"{schedule!r}.is_update_step", schedule.is_update_step, step)


@fuzz
@given(
    step=steps,
    s0=reals,
    sf=reals,
    t0=ints,
    delta=ints,
    total=ints,
    zero=st.one_of(st.booleans(), junk),
    factor=st.sampled_from([lambda t: 0.5, lambda t: min(1.0, t / 10), "x", None]),
)
def test_torch_ao_arithmetic(
    step: Any, s0: Any, sf: Any, t0: Any, delta: Any, total: Any, zero: Any, factor: Any
) -> None:
    value = guarded(
        "cubic_sparsity",
        schedules.cubic_sparsity,
        step,
        initial_sparsity=s0,
        final_sparsity=sf,
        initial_step=t0,
        delta_steps=delta,
        total_steps=total,
        initially_zero=zero,
    )
    if not isinstance(value, Raised):
        assert isinstance(value, (int, float)) and not math.isnan(value)
    if isinstance(step, int) and not isinstance(step, bool) and abs(step) < 10**6:
        guarded(
            "lambda_sparsity", schedules.lambda_sparsity, step, final_sparsity=sf, factor=factor
        )


# -- adapter --------------------------------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def _state(sparsifier: Any, model: nn.Module) -> Any:
    try:
        saved = sparsifier.state_dict()
    except Exception as err:  # state_dict itself is fuzzed elsewhere
        saved = type(err)
    return snapshot((model, saved))


@st.composite
def sparsifiers(draw: st.DrawFn) -> tuple[str, Any, dict[str, Any]]:
    if draw(st.booleans()):
        kwargs = {
            "sparsity_level": draw(st.one_of(levels, junk)),
            "sparse_block_shape": draw(
                st.one_of(
                    st.sampled_from([(1, 4), (2, 2), (1, 1), (3, 5), (10**6, 10**6), (HUGE, 1)]),
                    junk,
                )
            ),
            "zeros_per_block": draw(st.one_of(st.none(), ints)),
            "norm": draw(st.one_of(st.none(), st.sampled_from([1, 2]), junk)),
            "mask_dtype": draw(st.one_of(st.none(), st.sampled_from([torch.bool, torch.float32, "bool"]), junk)),
        }  # fmt: skip
        cls: Any = adapter.WeightNormSparsifier
    else:
        kwargs = {
            "nearliness": draw(ints),
            "mask_dtype": draw(st.one_of(st.none(), st.just(torch.bool), junk)),
        }
        cls = adapter.NearlyDiagonalSparsifier
    for name in draw(st.lists(st.sampled_from(sorted(kwargs)), max_size=3, unique=True)):
        del kwargs[name]
    return cls.__name__, cls, kwargs


configs = st.one_of(
    st.just([{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}]),
    st.just(None),
    st.just([{"tensor_fqn": "0.weight", "sparsity_level": 0.25}]),
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"tensor_fqn": st.sampled_from(["0.weight", "2.weight", "0.bias", "nope", "0"])}
            ),
            st.dictionaries(st.sampled_from(["tensor_fqn", "sparsity_level", "bogus"]), junk),
            junk,
        ),
        max_size=2,
    ),
    junk,
)


def _guarded_state(where: str, call: Any, sparsifier: Any, model: nn.Module, *args: Any) -> Any:
    """Guard a stateful call: when it raises, the sparsifier and the model are unchanged."""
    before = _state(sparsifier, model)
    data_before = snapshot(args[1:] if args and args[0] is model else args)
    result = guarded(where, call, *args, mutates=True)
    after = snapshot(args[1:] if args and args[0] is model else args)
    assert same_output(data_before, after), f"{where} changed the data passed in"
    if isinstance(result, Raised):
        assert same_output(before, _state(sparsifier, model)), f"{where} raised half-way"
    return result


@fuzz
@given(built=sparsifiers(), config=configs, data=st.data())
def test_sparsifiers(built: tuple[str, Any, dict[str, Any]], config: Any, data: Any) -> None:
    name, cls, kwargs = built
    sparsifier = guarded(name, cls, **kwargs)
    if isinstance(sparsifier, Raised):
        return
    model = _model()
    prepared = _guarded_state(
        f"{name}.prepare", sparsifier.prepare, sparsifier, model, model, config
    )
    if isinstance(prepared, Raised):
        return
    _guarded_state(f"{name}.step", sparsifier.step, sparsifier, model)
    saved = guarded(f"{name}.state_dict", sparsifier.state_dict)
    hostile_state = data.draw(
        st.one_of(
            st.just(saved),
            st.just({}),
            st.just({"state": {}, "groups": []}),
            st.just({"state": {"0.weight": {"mask": "x"}}, "groups": []}),
            st.just({**saved, "bogus": 1}) if isinstance(saved, dict) else junk,
            junk,
        ),
        label="state_dict",
    )
    _guarded_state(
        f"{name}.load_state_dict", sparsifier.load_state_dict, sparsifier, model, hostile_state
    )
    _guarded_state(f"{name}.step", sparsifier.step, sparsifier, model)
    scheduler_kind = data.draw(st.sampled_from(["cubic", "lambda", "none"]), label="scheduler")
    if scheduler_kind == "cubic":
        kwargs = {
            "init_sl": data.draw(st.one_of(levels, junk)),
            "init_t": data.draw(ints),
            "delta_t": data.draw(ints),
            "total_t": data.draw(ints),
        }
        scheduler = _guarded_state("CubicSL", adapter.CubicSL, sparsifier, model, sparsifier)
        if not isinstance(scheduler, Raised):
            scheduler = guarded("CubicSL", adapter.CubicSL, sparsifier, **kwargs)
    elif scheduler_kind == "lambda":
        # (a factor returning 10**400: test_reproducers.py, until the adapter refuses it)
        factor = data.draw(st.sampled_from([lambda t: 0.5, lambda t: math.inf, "x"]))
        scheduler = guarded("LambdaSL", adapter.LambdaSL, sparsifier, factor)
    else:
        return
    if isinstance(scheduler, Raised):
        return
    for epoch in data.draw(st.lists(st.one_of(st.none(), steps), max_size=2), label="epochs"):
        _guarded_state("scheduler.step", scheduler.step, sparsifier, model, epoch)
    state = data.draw(st.one_of(st.just(scheduler.state_dict()), st.just({}), junk), label="sched")
    _guarded_state("scheduler.load_state_dict", scheduler.load_state_dict, sparsifier, model, state)
    _guarded_state(f"{name}.squash_mask", sparsifier.squash_mask, sparsifier, model)


# -- funcsparse.testing ---------------------------------------------------------------------------

methods = st.one_of([cls.configs(st) for cls in fs.testing.registered_methods()])


@fuzz
@given(
    params=st.one_of(pytrees(), junk),
    rules=st.one_of(
        st.dictionaries(rule_keys, st.one_of(methods, st.none(), junk), max_size=2), junk
    ),
    leaf=st.one_of(tensors(), junk),
    method=st.one_of(methods, junk),
    data=st.data(),
)
def test_testing_checks(params: Any, rules: Any, leaf: Any, method: Any, data: Any) -> None:
    # On malformed input the checks raise TypeError/ValueError like every other entry; an
    # AssertionError (a broken invariant) on inputs they accept is a finding too.
    guarded("check_masks", check_masks, params, rules)
    shape = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else (2,)
    own = guarded("method", method, leaf) if isinstance(method, fs.MaskMethod) else None
    if isinstance(own, torch.Tensor) and data.draw(st.booleans(), label="own mask"):
        guarded("check_leaf_mask", check_leaf_mask, method, leaf, own)  # must pass
        return
    # A mask that is not the method's: the check may also fail it (AssertionError, its job).
    mask = data.draw(st.one_of(tensors(shape, dtypes=(torch.bool,)), junk), label="mask")
    try:
        guarded("check_leaf_mask", check_leaf_mask, method, leaf, mask)
    except AssertionError as err:
        cause = err.__cause__
        if not (isinstance(cause, AssertionError) and str(cause).startswith("check_leaf_mask")):
            raise
