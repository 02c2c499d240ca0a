"""Constructing methods: one name for the level, and wrong calls that say how to call."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest

import funcsparse as fs
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
