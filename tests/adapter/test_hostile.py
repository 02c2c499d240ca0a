"""The adapter under hostile input: only TypeError/ValueError, and a raising call changes nothing.

Also: ``state`` in memory as torch.ao's, and the refusal of block shapes that do not divide
the weight when ``0 < zeros_per_block < block size``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.ao.pruning as ao
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrize import is_parametrized

import funcsparse.adapter as fa


def same(left: Any, right: Any, where: str = "") -> None:
    """Recursive equality of dicts, lists and tensors (dtype, shape and values)."""
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        assert isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor), where
        assert left.dtype == right.dtype and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert isinstance(right, dict) and list(left) == list(right), f"{where}: keys"
        for key in left:
            same(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        assert type(left) is type(right) and len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            same(a, b, f"{where}[{i}]")
    else:
        assert left is right or left == right, f"{where}: {left!r} != {right!r}"


def cloned(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: cloned(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cloned(v) for v in value)
    return value


def snapshot(model: nn.Module, sparsifier: Any) -> dict[str, Any]:
    """Everything a call could change: the model's tensors, classes and parametrizations,
    and the sparsifier's state, groups and step."""
    parametrizations = {
        f"{name}.{tensor}": [
            (type(p).__name__, cloned(getattr(p, "mask", None)))
            for p in module.parametrizations[tensor]
        ]
        for name, module in model.named_modules()
        if is_parametrized(module)
        for tensor in module.parametrizations
    }
    return {
        "model": cloned(model.state_dict()),
        "classes": [type(m).__name__ for m in model.modules()],
        "parametrizations": parametrizations,
        "state": cloned(dict(sparsifier.state)),
        "groups": cloned(
            [{k: v for k, v in g.items() if k != "module"} for g in sparsifier.groups]
        ),
        "group_modules": [id(g["module"]) for g in sparsifier.groups],
        "step": vars(sparsifier).get("step"),
        "step_count": vars(sparsifier).get("_step_count"),
    }


def model_and_sparsifier(**kwargs: Any) -> tuple[nn.Module, Any]:
    """Layer 0 prepared and stepped; layer 2 (width 6) left for prepare calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(6, 4))
    sparsifier = fa.WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 2), **kwargs)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    return model, sparsifier


def a_state_dict() -> dict[str, Any]:
    _, sparsifier = model_and_sparsifier()
    return sparsifier.state_dict()


def with_state(entry: dict[str, Any]) -> dict[str, Any]:
    state_dict = a_state_dict()
    state_dict["state"]["0.weight"].update(entry)
    return state_dict


def with_group(entry: dict[str, Any]) -> dict[str, Any]:
    state_dict = a_state_dict()
    state_dict["groups"][0].update(entry)
    return state_dict


Call = Callable[[nn.Module, Any], object]
BAD_CALLS: list[tuple[str, Call, type[Exception], str]] = [
    # prepare
    ("model is a str", lambda m, s: s.prepare("model", None), TypeError, r"prepare: model must"),
    ("model is None", lambda m, s: s.prepare(None, None), TypeError, r"got NoneType None"),
    (
        "level is a str",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "sparsity_level": "half"}]),
        TypeError,
        r"prepare: group '2\.weight': sparsity_level must be a real number, got str 'half'",
    ),
    (
        "level is NaN",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "sparsity_level": math.nan}]),
        ValueError,
        r"prepare: group '2\.weight': sparsity_level must not be NaN",
    ),
    (
        "block of zero rows",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "sparse_block_shape": (0, 2)}]),
        ValueError,
        r"prepare: group '2\.weight': sparse_block_shape sides must be positive, got \(0, 2\)",
    ),
    (
        "block is a str",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "sparse_block_shape": "1x4"}]),
        TypeError,
        r"group '2\.weight': sparse_block_shape must be a pair of ints, got str '1x4'",
    ),
    (
        "zeros_per_block None",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "zeros_per_block": None}]),
        TypeError,
        r"group '2\.weight': zeros_per_block must be an int, got NoneType None",
    ),
    (
        "block not dividing the weight, zeros < block",
        lambda m, s: s.prepare(
            m, [{"tensor_fqn": "2.weight", "sparse_block_shape": (1, 4), "zeros_per_block": 2}]
        ),
        ValueError,
        r"prepare: group '2\.weight' \(sparse_block_shape=\(1, 4\), zeros_per_block=2\): "
        r"got a 2-D torch.float32 tensor of shape \(4, 6\)",
    ),
    (
        "a good entry then a bad one",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight"}, {"tensor_fqn": "3.weight"}]),
        ValueError,
        r"prepare: tensor_fqn '3\.weight' names no tensor of the Sequential",
    ),
    (
        "a plain tensor attribute",
        lambda m, s: (
            setattr(m[2], "extra", torch.ones(2)),
            s.prepare(m, [{"tensor_fqn": "2.extra"}]),
        ),
        ValueError,
        r"prepare: tensor_fqn '2\.extra' names a plain tensor attribute",
    ),
    (
        "tensor_fqn is an int",
        lambda m, s: s.prepare(m, [{"tensor_fqn": 2}]),
        TypeError,
        r"prepare: tensor_fqn must be a str, got int 2",
    ),
    (
        "configured twice",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "0.weight"}]),
        ValueError,
        r"prepare: tensor_fqn '0\.weight' is configured twice",
    ),
    (
        "a config mask of the wrong shape",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "mask": torch.ones(3, 3)}]),
        ValueError,
        r"prepare: the mask for '2\.weight' has shape \(3, 3\), the tensor \(4, 6\)",
    ),
    (
        "a config mask that is a str",
        lambda m, s: s.prepare(m, [{"tensor_fqn": "2.weight", "mask": "ones"}]),
        TypeError,
        r"prepare: the mask for '2\.weight' must be a torch.Tensor, got str 'ones'",
    ),
    # load_state_dict
    (
        "empty state_dict",
        lambda m, s: s.load_state_dict({}),
        ValueError,
        r"load_state_dict: state_dict has missing key\(s\) \['state', 'groups'\]",
    ),
    (
        "a list",
        lambda m, s: s.load_state_dict([]),
        TypeError,
        r"load_state_dict: state_dict must be a dict .*, got list \[\]",
    ),
    (
        "unknown key",
        lambda m, s: s.load_state_dict({**a_state_dict(), "extra": 1}),
        ValueError,
        r"load_state_dict: state_dict has unknown key\(s\) \['extra'\]",
    ),
    (
        "groups is a dict",
        lambda m, s: s.load_state_dict({"state": {}, "groups": {}}),
        TypeError,
        r"state_dict\['groups'\] must be a list, got dict",
    ),
    (
        "state entry is a str",
        lambda m, s: s.load_state_dict({"state": {"0.weight": "mask"}, "groups": []}),
        TypeError,
        r"load_state_dict: state\['0\.weight'\] must be a dict .*, got str 'mask'",
    ),
    (
        "str mask",
        lambda m, s: s.load_state_dict(with_state({"mask": "1111"})),
        TypeError,
        r"load_state_dict: the mask for '0\.weight' must be a torch.Tensor, got str '1111'",
    ),
    (
        "mask of the wrong shape",
        lambda m, s: s.load_state_dict(with_state({"mask": torch.ones(8, 4)})),
        ValueError,
        r"load_state_dict: the mask for '0\.weight' has shape \(8, 4\), the tensor \(4, 8\)",
    ),
    (
        "complex mask",
        lambda m, s: s.load_state_dict(with_state({"mask": torch.ones(4, 8, dtype=torch.cfloat)})),
        TypeError,
        r"load_state_dict: the mask for '0\.weight' is a 2-D torch.complex64 tensor",
    ),
    (
        "meta mask",
        lambda m, s: s.load_state_dict(with_state({"mask": torch.ones(4, 8, device="meta")})),
        ValueError,
        r"load_state_dict: the mask for '0\.weight' is .* on the meta device",
    ),
    (
        "unknown fqn",
        lambda m, s: s.load_state_dict(
            {"state": {"9.weight": {"mask": torch.ones(2, 2)}}, "groups": []}
        ),
        ValueError,
        r"load_state_dict: tensor_fqn '9\.weight' names no tensor of the Sequential",
    ),
    (
        "a plain tensor attribute in state",
        lambda m, s: (
            setattr(m[2], "extra", torch.ones(2)),
            s.load_state_dict({"state": {"2.extra": {}}, "groups": []}),
        ),
        ValueError,
        r"load_state_dict: tensor_fqn '2\.extra' names a plain tensor attribute",
    ),
    (
        "fqn is an int",
        lambda m, s: s.load_state_dict({"state": {0: {}}, "groups": []}),
        TypeError,
        r"load_state_dict: the keys of 'state' are tensor fqns, got int 0",
    ),
    (
        "group without tensor_fqn",
        lambda m, s: s.load_state_dict({"state": {}, "groups": [{"sparsity_level": 0.5}]}),
        TypeError,
        r"load_state_dict: groups\[0\] needs a 'tensor_fqn' str, got NoneType None",
    ),
    (
        "group level is a str",
        lambda m, s: s.load_state_dict(with_group({"sparsity_level": "0.5"})),
        TypeError,
        r"load_state_dict: group '0\.weight': sparsity_level must be a real number, got str",
    ),
    (
        "group names a tensor without state or mask",
        lambda m, s: s.load_state_dict(
            {"state": {}, "groups": [{**a_state_dict()["groups"][0], "tensor_fqn": "2.weight"}]}
        ),
        ValueError,
        r"load_state_dict: groups\[0\] names '2\.weight', which has no entry in 'state'",
    ),
    (
        "strict is a str",
        lambda m, s: s.load_state_dict(a_state_dict(), strict="yes"),
        TypeError,
        r"load_state_dict: strict must be a bool, got str 'yes'",
    ),
    # squash_mask and convert
    (
        "unknown key to keep",
        lambda m, s: s.squash_mask(params_to_keep=("nope",)),
        ValueError,
        r"squash_mask: key 'nope' is not in the config of group '0\.weight'",
    ),
    (
        "keys to keep as a str",
        lambda m, s: s.squash_mask(params_to_keep="sparsity_level"),
        TypeError,
        r"squash_mask: params_to_keep must be a tuple of config keys, got str",
    ),
    (
        "per-layer keys as a list",
        lambda m, s: s.squash_mask(params_to_keep_per_layer=["0"]),
        TypeError,
        r"squash_mask: params_to_keep_per_layer must be a dict",
    ),
    (
        "convert without a mapping",
        lambda m, s: s.convert(m),
        fa.UnsupportedOptionError,
        r"convert: Need to auto generate mapping",
    ),
    (
        "convert a str",
        lambda m, s: s.convert("model", mapping={}),
        TypeError,
        r"convert: module must be an nn.Module, got str 'model'",
    ),
    # schedulers (their constructors must not touch the sparsifier when they raise)
    (
        "delta_t=0",
        lambda m, s: fa.CubicSL(s, delta_t=0),
        ValueError,
        r"CubicSL: delta_t for group '0\.weight'=0 must be positive",
    ),
    (
        "total_t=0",
        lambda m, s: fa.CubicSL(s, total_t=0),
        ValueError,
        r"CubicSL: total_t for group '0\.weight'=0 must be positive",
    ),
    (
        "negative total_t",
        lambda m, s: fa.CubicSL(s, total_t=-3),
        ValueError,
        r"CubicSL: total_t for group '0\.weight'=-3 must be positive",
    ),
    (
        "huge init_sl",
        lambda m, s: fa.CubicSL(s, init_sl=10**400),
        ValueError,
        r"CubicSL: init_sl for group '0\.weight'=1000.* must be a finite float",
    ),
    (
        "float delta_t",
        lambda m, s: fa.CubicSL(s, delta_t=2.5),
        TypeError,
        r"CubicSL: delta_t for group '0\.weight' must be an int, got float 2\.5",
    ),
    (
        "list of the wrong length",
        lambda m, s: fa.CubicSL(s, init_t=[0, 1]),
        ValueError,
        r"CubicSL: Expected init_t of length 1 \(one per group\), but got 2",
    ),
    (
        "a str where the sparsifier goes",
        lambda m, s: fa.CubicSL("sparsifier"),
        TypeError,
        r"CubicSL: str is not an instance of funcsparse\.adapter\.BaseSparsifier",
    ),
    (
        "a lambda that is not callable",
        lambda m, s: fa.LambdaSL(s, 0.5),
        TypeError,
        r"LambdaSL: sl_lambda\[0\] must be callable .*, got float 0\.5",
    ),
    (
        "a lambda giving NaN at the first step",
        lambda m, s: fa.LambdaSL(s, lambda epoch: math.nan),
        ValueError,
        r"LambdaSL\.step: sl_lambda\[0\]\(0\) for group '0\.weight' is NaN",
    ),
    (
        "a lambda giving a str",
        lambda m, s: fa.LambdaSL(s, lambda epoch: "x"),
        TypeError,
        r"LambdaSL\.step: sl_lambda\[0\]\(0\) for group '0\.weight' must be a real number, got str",
    ),
    (
        "last_epoch is a str",
        lambda m, s: fa.LambdaSL(s, lambda epoch: 1.0, last_epoch="0"),
        TypeError,
        r"LambdaSL: last_epoch must be an int, got str '0'",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_a_raising_call_changes_nothing(call: Call, error: type[Exception], message: str) -> None:
    model, sparsifier = model_and_sparsifier()
    before = snapshot(model, sparsifier)
    with pytest.raises(error, match=message):
        call(model, sparsifier)
    same(snapshot(model, sparsifier), before)
    # And the sparsifier still works.
    sparsifier.groups[0]["sparsity_level"] = 0.75
    sparsifier.step()
    mask = model[0].parametrizations.weight[0].mask
    assert float(mask.mean()) == 0.25


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: fa.WeightNormSparsifier(mask_dtype="bool"), TypeError, r"mask_dtype must be"),
        (
            lambda: fa.WeightNormSparsifier(mask_dtype=torch.complex64),
            ValueError,
            r"WeightNormSparsifier: mask_dtype=torch.complex64 is not supported",
        ),
        (
            lambda: fa.WeightNormSparsifier(mask_dtype=torch.float8_e4m3fn),
            ValueError,
            r"mask_dtype=torch.float8_e4m3fn is not supported",
        ),
        (lambda: fa.WeightNormSparsifier(sparsity_level="0.5"), TypeError, r"got str '0\.5'"),
        (lambda: fa.WeightNormSparsifier(sparsity_level=math.nan), ValueError, r"NaN"),
        (lambda: fa.WeightNormSparsifier(sparse_block_shape=(1,)), TypeError, r"pair of ints"),
        (lambda: fa.WeightNormSparsifier(sparse_block_shape=(1, -4)), ValueError, r"positive"),
        (
            lambda: fa.WeightNormSparsifier(sparse_block_shape=(1, 4), zeros_per_block=5),
            ValueError,
            r"WeightNormSparsifier: Number of zeros per block cannot be more than the total "
            r"number of elements in that block \(zeros_per_block=5, block size 4\)",
        ),
        (lambda: fa.WeightNormSparsifier(zeros_per_block=-1), ValueError, r"should be positive"),
        (lambda: fa.WeightNormSparsifier(zeros_per_block=2.0), TypeError, r"got float 2\.0"),
        (lambda: fa.WeightNormSparsifier(norm="l2"), TypeError, r"norm must be 1, 2 or a"),
        (lambda: fa.WeightNormSparsifier(norm=10**400), ValueError, r"L-1000.* is not yet"),
        (lambda: fa.NearlyDiagonalSparsifier(nearliness=2), ValueError, r"odd number, got 2"),
        (lambda: fa.NearlyDiagonalSparsifier(nearliness="1"), TypeError, r"got str '1'"),
        (
            lambda: fa.NearlyDiagonalSparsifier(mask_dtype=torch.int8),
            ValueError,
            r"NearlyDiagonalSparsifier: mask_dtype=torch.int8",
        ),
    ],
)
def test_constructors_refuse_bad_options(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_the_issues_case_mask_dtype_str_is_refused_before_prepare() -> None:
    """torch.ao-style late failure: accepted, then prepare half-registers, then step fails."""
    with pytest.raises(TypeError, match=r"WeightNormSparsifier: mask_dtype must be None or a"):
        fa.WeightNormSparsifier(mask_dtype="bool")


HOSTILE = [
    None,
    "x",
    b"x",
    10**400,
    -(10**400),
    math.nan,
    math.inf,
    -math.inf,
    0,
    -1,
    1.5,
    True,
    [],
    (),
    (1,),
    (0, 4),
    (1, 2, 1),
    [1, 2],
    {},
    object(),
    complex(1, 1),
    torch.tensor(0.5),
    torch.ones(4, 6),
    torch.ones(4, 6, dtype=torch.bool),
    torch.ones(3),
    nn.Linear(2, 2),
]
CONFIG_KEYS = ["sparsity_level", "sparse_block_shape", "zeros_per_block", "tensor_fqn", "mask"]


def only_type_or_value_errors(
    call: Callable[[], object], owner: str, model: nn.Module, sparsifier: Any
) -> bool:
    """Run ``call``: True if it passed; if it raised, the error is a short TypeError or
    ValueError naming ``owner``, and nothing changed."""
    before = snapshot(model, sparsifier)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except (TypeError, ValueError) as err:
        assert owner in str(err), str(err)
        assert len(str(err)) < 400, str(err)  # short, whatever the value
        same(snapshot(model, sparsifier), before)
        return False
    return True


# Every hostile value at every place (the pools are small: all pairs, not a sample).


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_hostile_config_values_raise_only_type_or_value_errors(key: str) -> None:
    for value in HOSTILE:
        model, sparsifier = model_and_sparsifier()
        entry = {"tensor_fqn": "2.weight", key: value}
        prepare = lambda: sparsifier.prepare(model, [entry])  # noqa: E731, B023 (a named call, used within this iteration only)
        if only_type_or_value_errors(prepare, "WeightNormSparsifier.prepare", model, sparsifier):
            sparsifier.step()  # what prepare accepts, step can mask
            assert model[2].parametrizations.weight[0].mask.shape == (4, 6)


def hostile_state_dict(where: str, value: Any) -> dict[str, Any]:
    state_dict = a_state_dict()
    if where in ("state", "groups"):
        state_dict[where] = value
    elif where == "mask":
        state_dict["state"]["0.weight"]["mask"] = value
    elif where == "entry":
        state_dict["state"]["0.weight"] = value
    elif where == "group":
        state_dict["groups"][0] = value
    elif where == "fqn":
        state_dict["state"] = {value if not isinstance(value, (list, dict)) else "x": {}}
    else:
        state_dict["groups"][0][where] = value
    return state_dict


@pytest.mark.parametrize(
    "where",
    [
        *("state", "groups", "mask", "entry", "group", "fqn"),
        *("sparsity_level", "sparse_block_shape", "zeros_per_block", "tensor_fqn"),
    ],
)
def test_hostile_state_dicts_raise_only_type_or_value_errors(where: str) -> None:
    for value in HOSTILE:
        model, sparsifier = model_and_sparsifier()
        try:
            state_dict = hostile_state_dict(where, value)
        except TypeError:  # an unhashable fqn cannot even be a dict key
            continue
        given_copy = cloned(state_dict)
        load = lambda: sparsifier.load_state_dict(state_dict)  # noqa: E731, B023 (a named call, used within this iteration only)
        if only_type_or_value_errors(
            load, "WeightNormSparsifier.load_state_dict", model, sparsifier
        ):
            sparsifier.step()
        same(state_dict, given_copy)  # the caller's dict is never mutated


@pytest.mark.parametrize(
    "name", ["init_sl", "init_t", "delta_t", "total_t", "initially_zero", "last_epoch"]
)
def test_hostile_cubic_arguments_raise_only_type_or_value_errors(name: str) -> None:
    for value in HOSTILE:
        model, sparsifier = model_and_sparsifier()
        make = lambda: fa.CubicSL(sparsifier, **{name: value})  # noqa: E731, B023 (a named call, used within this iteration only)
        if only_type_or_value_errors(make, "CubicSL", model, sparsifier):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scheduler = make()
                for _ in range(3):
                    sparsifier.step()
                    scheduler.step()
            assert all(isinstance(level, (int, float)) for level in scheduler.get_last_sl())


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**500), 10**500))
def test_any_number_as_a_level_masks_as_torch_ao_or_is_refused(level: float) -> None:
    model, sparsifier = model_and_sparsifier()
    entry = {"tensor_fqn": "2.weight", "sparsity_level": level}
    prepare = lambda: sparsifier.prepare(model, [entry])  # noqa: E731 (a named call for the checks below)
    if only_type_or_value_errors(prepare, "WeightNormSparsifier.prepare", model, sparsifier):
        sparsifier.step()
        zeros = int((model[2].parametrizations.weight[0].mask == 0).sum())
        # 12 blocks of (1, 2) in a (4, 6) weight: round(level * 12) of them, at most 11
        # below level 1 (torch.ao's rule), clamped to [0, 1].
        blocks = 12 if level >= 1 else 0 if level <= 0 else min(11, round(float(level) * 12))
        assert zeros == 2 * blocks
    else:
        assert level != level  # only NaN is refused


def test_scheduler_step_that_raises_changes_nothing() -> None:
    model, sparsifier = model_and_sparsifier()
    factors = iter([1.0, 0.5, math.nan])
    scheduler = fa.LambdaSL(sparsifier, lambda epoch: next(factors))
    sparsifier.step()
    scheduler.step()
    before = (scheduler.state_dict(), snapshot(model, sparsifier))
    before = copy.copy(before[0]), before[1]
    with pytest.raises(ValueError, match=r"LambdaSL\.step: sl_lambda\[0\]\(2\) for group '0\."):
        scheduler.step()
    same(scheduler.state_dict(), before[0])
    same(snapshot(model, sparsifier), before[1])


@pytest.mark.parametrize(
    ("state_dict", "error", "message"),
    [
        ([], TypeError, r"LambdaSL\.load_state_dict: state_dict must be a dict"),
        ({"sparsifier": None}, ValueError, r"unknown key\(s\) \['sparsifier'\]"),
        ({"base_sl": [0.5, 0.5]}, ValueError, r"expected base_sl of length 1"),
        ({"base_sl": ["x"]}, TypeError, r"sparsity_level of group '0\.weight' must be a real"),
        ({"last_epoch": 1.5}, TypeError, r"last_epoch must be an int, got float 1\.5"),
        ({"sl_lambdas": [None]}, TypeError, r"sl_lambda\[0\] must be callable"),
        ({"_last_sl": "x"}, TypeError, r"_last_sl must be a list of levels, got str 'x'"),
        ({"_step_count": -1}, ValueError, r"_step_count=-1 must be >= 0"),
    ],
)
def test_scheduler_load_state_dict_refuses_and_changes_nothing(
    state_dict: Any, error: type[Exception], message: str
) -> None:
    _, sparsifier = model_and_sparsifier()
    scheduler = fa.LambdaSL(sparsifier, lambda epoch: 1.0)
    before = dict(scheduler.state_dict())
    with pytest.raises(error, match=message):
        scheduler.load_state_dict(state_dict)
    same(scheduler.state_dict(), before)


def test_huge_values_where_torch_ao_accepts_them() -> None:
    """10**400 levels select every block and huge schedule lengths work, as in torch.ao."""
    results = []
    for pruning in (ao, fa):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 4))
        sparsifier = pruning.WeightNormSparsifier(sparsity_level=10**400)
        sparsifier.prepare(model, None)
        sparsifier.step()
        results.append(model[0].parametrizations.weight[0].mask.clone())
        sparsifier.groups[0]["sparsity_level"] = 0.8  # torch.ao's CubicSL overflows on 10**400
        scheduler = pruning.CubicSL(sparsifier, delta_t=10**400, total_t=10**400)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.step()
        results.append(torch.tensor(scheduler.get_last_sl()))
    assert torch.equal(results[0], results[2]) and not bool(results[0].any())
    assert torch.equal(results[1], results[3])


def test_load_before_prepare_is_refused() -> None:
    sparsifier = fa.WeightNormSparsifier()
    with pytest.raises(ValueError, match=r"load_state_dict: prepare\(model, config\) must come"):
        sparsifier.load_state_dict(a_state_dict())
    assert sparsifier.groups == [] and sparsifier.state == {}


def test_none_config_stays_accepted() -> None:
    sparsifier = fa.NearlyDiagonalSparsifier()
    sparsifier.prepare(nn.Sequential(nn.Linear(4, 4)), config=None)  # as torch.ao
    assert [group["tensor_fqn"] for group in sparsifier.groups] == ["0.weight"]
    assert fa.WeightNormSparsifier(norm=None).norm == 2


# -- in-memory state, as torch.ao's -----------------------------------------------------------


def state_view(state: Any) -> dict[str, dict[str, Any]]:
    return {fqn: cloned(dict(entry)) for fqn, entry in state.items()}


@pytest.mark.parametrize("mask_dtype", [None, torch.bool])
def test_state_in_memory_equals_torch_aos_through_the_lifecycle(mask_dtype: Any) -> None:
    trace: dict[str, list[Any]] = {"ao": [], "fa": []}
    for key, pruning in (("ao", ao), ("fa", fa)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        kwargs = {"mask_dtype": mask_dtype} if key == "fa" else {}
        sparsifier = pruning.WeightNormSparsifier(sparse_block_shape=(1, 2), **kwargs)
        sparsifier.prepare(model, None)
        for group in sparsifier.groups:  # after prepare: the parametrization's mask itself
            live = group["module"].parametrizations.weight[0].mask
            assert sparsifier.state[group["tensor_fqn"]]["mask"] is live
        trace[key].append(state_view(sparsifier.state))
        sparsifier.step()
        trace[key].append(state_view(sparsifier.state))
        state_dict = sparsifier.state_dict()
        torch.manual_seed(1)
        other = pruning.WeightNormSparsifier(sparse_block_shape=(1, 2), **kwargs)
        other.prepare(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), None)
        other.load_state_dict(state_dict)
        trace[key].append(state_view(other.state))
        trace[key].append(state_view(sparsifier.state))
        assert other.state == sparsifier.state  # legacy comparisons answer, both ways
        assert other.state != {}  # and != answers too
        other.squash_mask()
        trace[key].append(state_view(other.state))
    for ours, theirs in zip(trace["fa"], trace["ao"], strict=True):
        if mask_dtype is None:
            same(ours, theirs)
        else:  # the same structure and values, masks one byte per weight
            assert ours.keys() == theirs.keys()
            for fqn, entry in ours.items():
                assert entry.keys() == theirs[fqn].keys()
                if "mask" in entry:
                    assert entry["mask"].dtype == torch.bool
                    assert torch.equal(entry["mask"], theirs[fqn]["mask"].bool())


def test_state_dict_after_a_load_still_carries_the_masks_both_ways() -> None:
    def build(pruning: Any, seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        sparsifier = pruning.WeightNormSparsifier(sparse_block_shape=(1, 2))
        sparsifier.prepare(model, None)
        sparsifier.step()
        return model, sparsifier

    _, source = build(fa, 0)
    _, ours = build(fa, 1)
    ours.load_state_dict(source.state_dict())
    saved = ours.state_dict()  # torch.ao's state_dict after a load has lost its masks
    assert all("mask" in entry for entry in saved["state"].values())
    _, theirs = build(ao, 2)
    theirs.load_state_dict(copy.deepcopy(saved))
    for group in theirs.groups:
        mask = group["module"].parametrizations.weight[0].mask
        assert torch.equal(mask, saved["state"][group["tensor_fqn"]]["mask"])
        assert mask.dtype == torch.float32
    back = theirs.state_dict()
    _, again = build(fa, 3)
    before = cloned(back)
    again.load_state_dict(back)  # a dict torch.ao made, after its own load: no masks left
    same(back, before)


# -- refusal of non-dividing blocks with partial zeros ----------------------------------------


def test_non_dividing_partial_blocks_are_refused_at_prepare() -> None:
    model = nn.Sequential(nn.Linear(6, 3))
    sparsifier = fa.WeightNormSparsifier(sparse_block_shape=(1, 4), zeros_per_block=2)
    with pytest.raises(
        ValueError,
        match=r"WeightNormSparsifier\.prepare: group '0\.weight' \(sparse_block_shape=\(1, 4\), "
        r"zeros_per_block=2\): got a 2-D torch\.float32 tensor of shape \(3, 6\);",
    ):
        sparsifier.prepare(model, None)
    assert sparsifier.groups == [] and not is_parametrized(model[0])
    # Whole blocks over the same shape keep torch.ao's behaviour.
    masks = []
    for pruning in (ao, fa):
        torch.manual_seed(0)
        layer = nn.Sequential(nn.Linear(6, 3))
        whole = pruning.WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
        whole.prepare(layer, None)
        whole.step()
        masks.append(layer[0].parametrizations.weight[0].mask.clone())
    assert torch.equal(masks[0], masks[1])


def test_non_dividing_partial_blocks_set_after_prepare_are_refused_at_step() -> None:
    model = nn.Sequential(nn.Linear(6, 3), nn.Linear(3, 8))
    sparsifier = fa.WeightNormSparsifier(sparse_block_shape=(1, 2))
    sparsifier.prepare(model, None)
    sparsifier.groups[1]["sparse_block_shape"] = (1, 4)
    sparsifier.groups[1]["zeros_per_block"] = 2
    before = snapshot(model, sparsifier)
    with pytest.raises(ValueError, match=r"WeightNormSparsifier\.step: group '1\.weight': "):
        sparsifier.step()
    same(snapshot(model, sparsifier), before)
