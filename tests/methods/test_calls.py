"""Constructing methods: one name for the level, and wrong calls that say how to call."""

from __future__ import annotations

import copy
import inspect
import math
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse._errors import describe, require_int, require_real, short_repr
from funcsparse.testing import registered_methods


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: fs.Magnitude(0.5), fs.Magnitude(sparsity=0.5)),
        (lambda: fs.Random(0.25, seed=3), fs.Random(sparsity=0.25, seed=3)),
        (lambda: fs.WeightNorm(0.3), fs.WeightNorm(sparsity=0.3)),
        (lambda: fs.Wanda(0.6), fs.Wanda(sparsity=0.6)),
        (lambda: fs.GlobalMagnitude(0), fs.GlobalMagnitude(sparsity=0.0)),
        (lambda: fs.WeightNorm(1), fs.WeightNorm(sparsity=1.0)),
        (lambda: fs.LnStructured(0.5, n=1, dim=0), fs.LnStructured(sparsity=0.5, n=1, dim=0)),
        (lambda: fs.Movement(0.5), fs.Movement(sparsity=0.5)),
    ],
)
def test_the_level_is_sparsity_and_may_be_positional(make: object, expected: object) -> None:
    made = make()
    assert made == expected
    assert isinstance(made.sparsity, float)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: fs.Magnitude(amount=0.5),
            "Magnitude: got an unexpected keyword argument 'amount' (funcsparse's 'amount' is "
            "sparsity (a fraction in [0, 1]) or count (a number of entries)); call it as "
            "Magnitude(sparsity=None, *, count=None)",
        ),
        (
            lambda: fs.WeightNorm(sparsity_level=0.5),
            "WeightNorm: got an unexpected keyword argument 'sparsity_level' (funcsparse's "
            "'sparsity_level' is sparsity); call it as WeightNorm(sparsity=0.5, *, "
            "sparse_block_shape=(1, 4), zeros_per_block=None, norm=2)",
        ),
        (
            lambda: fs.Magnitude(0.5, 3),
            "Magnitude: too many positional arguments; call it as "
            "Magnitude(sparsity=None, *, count=None)",
        ),
        (
            lambda: fs.NM(2, 4),
            "NM: too many positional arguments; call it as NM(*, n, m, axis=-1)",
        ),
        (
            lambda: fs.NM(n=2),
            "NM: missing a required argument: 'm'; call it as NM(*, n, m, axis=-1)",
        ),
        (
            lambda: fs.Magnitude(),
            "Magnitude: give exactly one of sparsity (a fraction in [0, 1]) and count (a number "
            "of entries), got neither; call it as Magnitude(sparsity=None, *, count=None)",
        ),
        (
            lambda: fs.Random(0.5, count=3),
            "Random: give exactly one of sparsity (a fraction in [0, 1]) and count (a number "
            "of entries), got both; call it as Random(sparsity=None, *, count=None, seed=0)",
        ),
        (
            lambda: fs.LnStructured(n=1, dim=0),
            "LnStructured: give exactly one of sparsity (a fraction in [0, 1]) and count (a "
            "number of slices), got neither; call it as LnStructured(sparsity=None, *, "
            "count=None, dim, n)",
        ),
        (
            lambda: fs.GlobalMagnitude(1),
            "GlobalMagnitude: sparsity=1 is an int; sparsity is a fraction (write 1.0), a "
            "number to prune is count=1",
        ),
        (
            lambda: fs.Magnitude(count=0.5),
            "Magnitude: count must be an int (a number of entries), got float 0.5; for a "
            "fraction use sparsity=",
        ),
    ],
)
def test_wrong_calls_say_how_to_call(make: object, message: str) -> None:
    with pytest.raises(TypeError) as raised:
        make()
    assert str(raised.value) == message


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_a_level_outside_zero_one_is_refused(bad: float) -> None:
    for cls in (fs.Magnitude, fs.WeightNorm, fs.Wanda, fs.GlobalMagnitude):
        with pytest.raises(
            ValueError, match=rf"{cls.__name__}: sparsity must be a fraction in \[0, 1\]"
        ):
            cls(bad)


@pytest.mark.parametrize("cls", registered_methods(), ids=lambda cls: cls.__name__)
def test_signature_pickle_and_copy(cls: type[fs.MaskMethod]) -> None:
    parameters = inspect.signature(cls).parameters
    assert "args" not in parameters and "self" not in parameters
    fields = [name for name in cls.__dataclass_fields__ if not name.startswith("_")]
    assert list(parameters) == [name for name in fields if name in parameters]
    if "sparsity" in parameters:
        assert parameters["sparsity"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_methods_pickle_and_deepcopy() -> None:
    for method in (fs.NM(n=2, m=4), fs.Magnitude(count=3), fs.Movement(select=fs.NM(n=1, m=2))):
        assert pickle.loads(pickle.dumps(method)) == method
        assert copy.deepcopy(method) == method


def test_scaled_levels() -> None:
    assert fs.Magnitude(0.8).scaled(0.5) == fs.Magnitude(0.4)
    assert fs.Magnitude(count=10).scaled(0.25) == fs.Magnitude(count=2)  # round(2.5) = 2
    assert fs.NM(n=2, m=4).scaled(0.5) == fs.NM(n=3, m=4)
    assert fs.NM(n=1, m=8).scaled(0.0) == fs.NM(n=8, m=8)
    assert fs.WeightNorm(0.6).scaled(1.0) == fs.WeightNorm(0.6)
    with pytest.raises(TypeError, match="NearlyDiagonal has no level that a schedule can scale"):
        fs.NearlyDiagonal(nearliness=3).scaled(0.5)
    with pytest.raises(ValueError, match=r"Magnitude.scaled: fraction must be in \[0, 1\], got 2"):
        fs.Magnitude(0.5).scaled(2)


# -- the central leaf checks every method shares (issue 9) -----------------------------------

METHODS = registered_methods()


def _one_config(cls: type[fs.MaskMethod]) -> fs.MaskMethod:
    """A valid config of ``cls`` that takes 2-D float weights (8 x 8)."""
    made = {
        "NM": lambda: fs.NM(n=2, m=4),
        "NearlyDiagonal": lambda: fs.NearlyDiagonal(nearliness=3),
        "LnStructured": lambda: fs.LnStructured(0.5, n=2, dim=0),
        "RandomStructured": lambda: fs.RandomStructured(0.5, dim=0),
        "Movement": lambda: fs.Movement(0.5),
    }
    return made.get(cls.__name__, lambda: cls(0.5))()


def _data(method: fs.MaskMethod, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(method, fs.Wanda):
        return {"input_norms": torch.ones(weight.shape[1])}
    if isinstance(method, fs.Movement):
        return {"scores": torch.randn(weight.shape)}
    return {}


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("leaf", ["w", None, [[1.0, 2.0]], 3.0])
def test_a_leaf_that_is_not_a_tensor_is_a_type_error(
    cls: type[fs.MaskMethod], leaf: object
) -> None:
    method = _one_config(cls)
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: got {type(leaf).__name__} "):
        method(leaf)


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
def test_meta_leaves_and_meta_data_are_refused(cls: type[fs.MaskMethod]) -> None:
    method = _one_config(cls)
    weight = torch.randn(8, 8)
    data = _data(method, weight)
    with pytest.raises(
        ValueError, match="the tensor on the meta device; meta tensors have no data"
    ):
        method(weight.to("meta"), **{k: v.to("meta") for k, v in data.items()})
    for key in [*data, "prev_mask"]:
        value = data.get(key, torch.ones(8, 8, dtype=torch.bool))
        with pytest.raises(ValueError, match=rf"{key} on the meta device") as info:
            method(weight, **{**data, key: value.to("meta")})
        assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
def test_data_on_another_device_names_the_key_and_both_devices(cls: type[fs.MaskMethod]) -> None:
    method = _one_config(cls)
    weight = torch.randn(8, 8)
    data = _data(method, weight)
    for key in [*data, "prev_mask"]:
        value = data.get(key, torch.ones(8, 8, dtype=torch.bool))
        problem = method.check_leaf(weight, **{**data, key: value.to("meta")})
        assert problem is not None and problem.error is ValueError
        assert problem.got == f"{key} on meta for a tensor on cpu"
        assert problem.need == f"{key} must be on the tensor's device"


FLOAT8 = [getattr(torch, n) for n in dir(torch) if n.startswith("float8_")]


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("dtype", [*FLOAT8, torch.complex64, torch.complex128], ids=str)
def test_float8_and_complex_are_unsupported(cls: type[fs.MaskMethod], dtype: torch.dtype) -> None:
    method = _one_config(cls)
    weight = torch.randn(8, 8).to(dtype)
    with pytest.raises(
        TypeError,
        match=rf"{dtype} is not supported; the supported dtypes are float16, bfloat16, float32, float64",
    ):
        method(weight, **_data(method, torch.randn(8, 8)))
    for key, value in _data(method, torch.randn(8, 8)).items():
        with pytest.raises(TypeError, match=rf"{key} of dtype {dtype}; {dtype} is not supported"):
            method(torch.randn(8, 8), **{key: value.to(dtype)})


def test_a_sparse_leaf_is_refused() -> None:
    with pytest.raises(TypeError, match=r"layout torch.sparse_coo; Magnitude needs dense"):
        fs.Magnitude(0.5)(torch.eye(3).to_sparse())


def test_global_masks_refuse_malformed_groups() -> None:
    method = fs.GlobalMagnitude(0.5)
    with pytest.raises(
        TypeError, match=r"global_masks: tensors must be a list of tensors, got str"
    ):
        method.global_masks("ab")
    with pytest.raises(TypeError, match=r"GlobalMagnitude: tensor 1: got str 'x'"):
        method.global_masks([torch.randn(2), "x"])
    with pytest.raises(ValueError, match=r"data must be one dict per tensor \(1\)"):
        method.global_masks([torch.randn(2)], [{}, {}])


def test_describe_and_short_repr_are_bounded() -> None:
    for value in (
        "x" * 100_000,
        list(range(100_000)),
        {i: [i] * 100 for i in range(10_000)},
        10**400,
    ):
        assert len(describe(value)) <= 120
        assert len(short_repr(value)) <= 100
    assert describe(torch.zeros(2, 3)) == "a 2-D torch.float32 tensor of shape (2, 3)"
    assert (
        describe(torch.zeros(2, device="meta"))
        == "a 1-D torch.float32 tensor of shape (2,) on meta"
    )


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_short_repr_survives_a_broken_repr() -> None:
    assert short_repr(_BadRepr()).startswith("<_BadRepr")


def test_require_real_and_int() -> None:
    with pytest.raises(ValueError, match=r"^f: x=1000.*\.\.\..*0 is too large for a float$"):
        require_real("f", "x", 10**400)
    with pytest.raises(ValueError, match=r"^f: x must not be NaN$"):
        require_real("f", "x", math.nan)
    assert require_real("f", "x", math.inf) == math.inf
    with pytest.raises(TypeError, match=r"^f: x must be an int, got str 'x{27}\.\.\."):
        require_int("f", "x", "x" * 1000)
    assert require_int("f", "x", 10**400) == 10**400


@given(st.sampled_from(METHODS), st.sampled_from([10**400, -(10**400), 2**63, math.inf, math.nan]))
def test_huge_levels_and_counts_are_value_or_type_errors(
    cls: type[fs.MaskMethod], value: object
) -> None:
    for field in ("sparsity", "count"):
        if field not in {f.name for f in __import__("dataclasses").fields(cls)}:
            continue
        try:
            cls(**{field: value})
        except (TypeError, ValueError) as err:
            assert cls.__name__ in str(err) and len(str(err)) < 400
        else:
            raise AssertionError(f"{cls.__name__}({field}={short_repr(value)}) was accepted")
