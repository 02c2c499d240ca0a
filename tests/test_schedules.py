"""funcsparse.schedules: pinned levels, schedule properties, argument errors, torch.ao's cubic."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL

from funcsparse import schedules
from funcsparse.schedules import (
    Schedule,
    constant,
    cubic_sparsity,
    lambda_sparsity,
    linear,
    one_shot,
    polynomial,
)

# -- pinned levels (dyadic fractions, so that the floats are exact) -----------------------


class TestConstant:
    def test_default_is_the_full_level_from_step_0(self) -> None:
        schedule = constant()
        assert [schedule(t) for t in (0, 1, 10**9)] == [1.0, 1.0, 1.0]
        assert [t for t in range(50) if schedule.is_update_step(t)] == [0]

    def test_value_and_every(self) -> None:
        schedule = constant(0.25, every=4)
        assert [schedule(t) for t in range(3)] == [0.25, 0.25, 0.25]
        assert [t for t in range(13) if schedule.is_update_step(t)] == [0, 4, 8, 12]

    def test_value_is_stored_as_a_float(self) -> None:
        schedule = constant(1)
        assert type(schedule.value) is float
        assert type(schedule(3)) is float


class TestOneShot:
    def test_jumps_at_the_step(self) -> None:
        schedule = one_shot(at=3)
        assert [schedule(t) for t in range(6)] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        assert [t for t in range(20) if schedule.is_update_step(t)] == [3]

    def test_at_step_0(self) -> None:
        assert one_shot(at=0)(0) == 1.0
        assert one_shot(at=0).is_update_step(0)


class TestLinear:
    SCHEDULE = linear(begin_step=2, end_step=10, every=3, initial=0.25, final=0.75)

    def test_levels(self) -> None:
        # Updates at 2, 5, 8 (the grid) and 10 (end_step, off the grid):
        # 0.25 + 0.5 * 3/8 = 0.4375 and 0.25 + 0.5 * 6/8 = 0.625.
        expected = [0.0, 0.0, 0.25, 0.25, 0.25, 0.4375, 0.4375, 0.4375, 0.625, 0.625, 0.75, 0.75]
        assert [self.SCHEDULE(t) for t in range(12)] == expected

    def test_update_steps(self) -> None:
        assert [t for t in range(30) if self.SCHEDULE.is_update_step(t)] == [2, 5, 8, 10]

    def test_every_step_by_default(self) -> None:
        schedule = linear(begin_step=0, end_step=4)
        assert [schedule(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
        assert [t for t in range(10) if schedule.is_update_step(t)] == [0, 1, 2, 3, 4]

    def test_nothing_before_begin_even_with_an_initial_level(self) -> None:
        schedule = linear(begin_step=5, end_step=9, initial=0.5)
        assert [schedule(t) for t in (0, 4, 5)] == [0.0, 0.0, 0.5]


class TestPolynomial:
    SCHEDULE = polynomial(begin_step=2, end_step=10, every=3, initial=0.25, final=0.75)

    def test_levels(self) -> None:
        # 0.75 - 0.5 * (5/8)**3 = 643/1024 and 0.75 - 0.5 * (2/8)**3 = 95/128.
        first, second = 643 / 1024, 95 / 128
        expected = [0.0, 0.0, 0.25, 0.25, 0.25, first, first, first, second, second, 0.75, 0.75]
        assert [self.SCHEDULE(t) for t in range(12)] == expected

    def test_update_steps(self) -> None:
        assert [t for t in range(30) if self.SCHEDULE.is_update_step(t)] == [2, 5, 8, 10]

    def test_default_power_is_cubic(self) -> None:
        schedule = polynomial(begin_step=0, end_step=4)
        assert [schedule(t) for t in range(6)] == [0.0, 1 - 27 / 64, 1 - 1 / 8, 1 - 1 / 64, 1, 1]

    def test_power(self) -> None:
        schedule = polynomial(begin_step=0, end_step=4, power=2)
        assert [schedule(t) for t in range(5)] == [0.0, 1 - 9 / 16, 0.75, 1 - 1 / 16, 1.0]
        assert polynomial(begin_step=0, end_step=4, power=0.5)(3) == 0.5

    def test_begin_is_exactly_initial(self) -> None:
        # final + (initial - final) * 1.0 rounds to 0.1919773286067724 here.
        initial, final = 0.19197732860677236, 0.7359888091735668
        assert final + (initial - final) != initial
        schedule = polynomial(begin_step=3, end_step=4, power=1, initial=initial, final=final)
        assert schedule(3) == initial

    @given(
        st.integers(0, 100),
        st.integers(1, 200),
        st.integers(1, 30),
        st.integers(1, 5),
        st.floats(0.0, 1.0),
    )
    def test_zhu_gupta_at_update_steps(
        self, begin: int, n: int, every: int, power: int, final: float
    ) -> None:
        # The paper's s_t = s_f + (s_i - s_f)(1 - (t - t_0) / (n Δt))^3, at t = t_0 + k Δt.
        schedule = polynomial(
            begin_step=begin, end_step=begin + n * every, every=every, power=power, final=final
        )
        for k in range(n + 1):
            expected = final + (0.0 - final) * (1 - k / n) ** power
            assert schedule(begin + k * every) == pytest.approx(expected, abs=1e-12)

    @given(st.integers(0, 100), st.integers(1, 300), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
    def test_every_1_is_cubic_sparsity_with_delta_1(
        self, begin: int, span: int, a: float, b: float
    ) -> None:
        initial, final = min(a, b), max(a, b)
        schedule = polynomial(begin_step=begin, end_step=begin + span, initial=initial, final=final)
        config = dict(initial_sparsity=initial, final_sparsity=final, initial_step=begin)
        assert schedule(begin) == initial
        for t in range(begin + 1, begin + span + 3):
            assert schedule(t) == cubic_sparsity(t, **config, delta_steps=1, total_steps=span)

    @given(st.integers(0, 50), st.integers(1, 100), st.integers(1, 20))
    def test_power_1_is_linear(self, begin: int, span: int, every: int) -> None:
        ramp = dict(begin_step=begin, end_step=begin + span, every=every)
        curve, line = polynomial(**ramp, power=1), linear(**ramp)
        for t in range(begin + span + every):
            assert curve(t) == pytest.approx(line(t), abs=1e-12)


# -- properties of every schedule ---------------------------------------------------------

FRACTIONS = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))


@st.composite
def ramp_arguments(draw: st.DrawFn) -> dict[str, Any]:
    begin = draw(st.integers(0, 200))
    a, b = draw(FRACTIONS), draw(FRACTIONS)
    return {
        "begin_step": begin,
        "end_step": begin + draw(st.integers(1, 300)),
        "every": draw(st.integers(1, 60)),
        "initial": min(a, b),
        "final": max(a, b),
    }


POWERS = st.one_of(st.integers(1, 5), st.floats(0.1, 8.0))
LINEAR = ramp_arguments().map(lambda ramp: linear(**ramp))
POLYNOMIAL = st.builds(
    lambda ramp, power: polynomial(**ramp, power=power), ramp_arguments(), POWERS
)
SCHEDULES = st.one_of(
    st.builds(constant, FRACTIONS, every=st.none() | st.integers(1, 50)),
    st.builds(one_shot, at=st.integers(0, 300)),
    LINEAR,
    POLYNOMIAL,
)


def horizon(schedule: Schedule) -> int:
    """A step past everything a schedule does (its end, plus a couple of update periods)."""
    if isinstance(schedule, (linear, polynomial)):
        return schedule.end_step + 2 * schedule.every + 2
    if isinstance(schedule, one_shot):
        return schedule.at + 3
    return 120


class TestProperties:
    @given(SCHEDULES)
    def test_levels_are_non_decreasing_fractions(self, schedule: Schedule) -> None:
        levels = [schedule(t) for t in range(horizon(schedule))]
        assert all(type(level) is float and 0.0 <= level <= 1.0 for level in levels)
        assert all(a <= b for a, b in itertools.pairwise(levels))

    @given(SCHEDULES)
    def test_level_changes_only_at_update_steps(self, schedule: Schedule) -> None:
        for t in range(1, horizon(schedule)):
            if not schedule.is_update_step(t):
                assert schedule(t) == schedule(t - 1), t

    @given(SCHEDULES)
    def test_a_pruner_updating_only_at_update_steps_follows_the_schedule(
        self, schedule: Schedule
    ) -> None:
        level = 0.0  # nothing is pruned before the first update
        for t in range(horizon(schedule)):
            if schedule.is_update_step(t):
                level = schedule(t)
            assert level == schedule(t), t

    @given(st.one_of(LINEAR, POLYNOMIAL))
    def test_ramp_ends(self, schedule: linear | polynomial) -> None:
        begin, end = schedule.begin_step, schedule.end_step
        assert all(schedule(t) == 0.0 for t in range(begin))
        assert not any(schedule.is_update_step(t) for t in range(begin))
        assert schedule.is_update_step(begin)
        assert schedule(begin) == schedule.initial
        assert schedule.is_update_step(end)
        assert all(schedule(t) == schedule.final for t in range(end, horizon(schedule)))
        assert not any(schedule.is_update_step(t) for t in range(end + 1, horizon(schedule)))

    @given(st.one_of(LINEAR, POLYNOMIAL))
    def test_ramp_update_steps_are_the_grid_and_the_end(
        self, schedule: linear | polynomial
    ) -> None:
        begin, end, every = schedule.begin_step, schedule.end_step, schedule.every
        expected = {*range(begin, end, every), end}
        assert {t for t in range(horizon(schedule)) if schedule.is_update_step(t)} == expected

    @given(SCHEDULES)
    def test_pure_equal_hashable_copyable(self, schedule: Schedule) -> None:
        assert isinstance(schedule, Schedule)
        clones = [copy.deepcopy(schedule), pickle.loads(pickle.dumps(schedule))]
        for clone in [*clones, dataclasses.replace(schedule)]:
            assert clone == schedule
            assert hash(clone) == hash(schedule)
        assert [schedule(t) for t in range(5)] == [schedule(t) for t in range(5)]
        with pytest.raises(dataclasses.FrozenInstanceError):
            schedule.every = 3

    @given(SCHEDULES)
    def test_repr_rebuilds_the_schedule(self, schedule: Schedule) -> None:
        assert eval(repr(schedule), vars(schedules)) == schedule


def test_repr() -> None:
    assert repr(constant()) == "constant(value=1.0, every=None)"
    assert repr(constant(0.5, every=10)) == "constant(value=0.5, every=10)"
    assert repr(one_shot(at=500)) == "one_shot(at=500)"
    assert repr(linear(begin_step=1, end_step=5, every=2)) == (
        "linear(begin_step=1, end_step=5, every=2, initial=0.0, final=1.0)"
    )
    assert repr(polynomial(begin_step=0, end_step=1000, every=100, final=0.5)) == (
        "polynomial(begin_step=0, end_step=1000, every=100, power=3, initial=0.0, final=0.5)"
    )


def test_protocol_needs_both_methods() -> None:
    assert all(
        isinstance(s, Schedule)
        for s in (constant(), one_shot(at=1), linear(begin_step=0, end_step=1))
    )
    assert not isinstance(lambda step: 1.0, Schedule)
    assert set(schedules.__all__) == {
        "Schedule",
        "constant",
        "cubic_sparsity",
        "lambda_sparsity",
        "linear",
        "one_shot",
        "polynomial",
    }


# -- errors --------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf
RAMP = {"begin_step": 0, "end_step": 10}
BAD_ARGUMENTS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: constant(1.5), ValueError, "constant: value=1.5 must be in [0, 1]"),
    (lambda: constant(-0.1), ValueError, "constant: value=-0.1 must be in [0, 1]"),
    (lambda: constant(NAN), ValueError, "constant: value must not be NaN"),
    (lambda: constant(True), TypeError, "constant: value must be a real number, got bool True"),
    (lambda: constant("1"), TypeError, "constant: value must be a real number, got str '1'"),
    (lambda: constant(every=0), ValueError, "constant: every=0 must be positive"),
    (lambda: constant(every=2.0), TypeError, "constant: every must be an int, got float 2.0"),
    (lambda: one_shot(at=-1), ValueError, "one_shot: at=-1 must be non-negative"),
    (lambda: one_shot(at=True), TypeError, "one_shot: at must be an int, got bool True"),
    (lambda: one_shot(at=5.0), TypeError, "one_shot: at must be an int, got float 5.0"),
    (lambda: polynomial(begin_step=200, end_step=100), ValueError,
     "polynomial: end_step=100 must be greater than begin_step=200"),
    (lambda: polynomial(begin_step=100, end_step=100), ValueError,
     "polynomial: end_step=100 must be greater than begin_step=100 "
     "(for one jump to the full level, use one_shot(at=100))"),
    (lambda: linear(begin_step=5, end_step=3), ValueError,
     "linear: end_step=3 must be greater than begin_step=5"),
    (lambda: linear(begin_step=-1, end_step=3), ValueError,
     "linear: begin_step=-1 must be non-negative"),
    (lambda: linear(begin_step=0.0, end_step=3), TypeError,
     "linear: begin_step must be an int, got float 0.0"),
    (lambda: linear(begin_step=0, end_step=True), TypeError,
     "linear: end_step must be an int, got bool True"),
    (lambda: linear(**RAMP, every=0), ValueError, "linear: every=0 must be positive"),
    (lambda: polynomial(**RAMP, every=-3), ValueError, "polynomial: every=-3 must be positive"),
    (lambda: polynomial(**RAMP, every=True), TypeError,
     "polynomial: every must be an int, got bool True"),
    (lambda: polynomial(**RAMP, power=0), ValueError,
     "polynomial: power=0 must be finite and positive"),
    (lambda: polynomial(**RAMP, power=-1.0), ValueError,
     "polynomial: power=-1.0 must be finite and positive"),
    (lambda: polynomial(**RAMP, power=INF), ValueError,
     "polynomial: power=inf must be finite and positive"),
    (lambda: polynomial(**RAMP, power=NAN), ValueError, "polynomial: power must not be NaN"),
    (lambda: polynomial(**RAMP, power=True), TypeError,
     "polynomial: power must be a real number, got bool True"),
    (lambda: linear(**RAMP, initial=1.5), ValueError, "linear: initial=1.5 must be in [0, 1]"),
    (lambda: polynomial(**RAMP, initial=NAN), ValueError, "polynomial: initial must not be NaN"),
    (lambda: polynomial(**RAMP, final=-0.5), ValueError,
     "polynomial: final=-0.5 must be in [0, 1]"),
    (lambda: linear(**RAMP, final=INF), ValueError, "linear: final=inf must be in [0, 1]"),
    (lambda: linear(**RAMP, final=NAN), ValueError, "linear: final must not be NaN"),
    (lambda: polynomial(**RAMP, initial=0.5, final=0.2), ValueError,
     "polynomial: final=0.2 is less than initial=0.5; decreasing targets are not supported"),
    (lambda: linear(**RAMP, initial=0.5, final=0.2), ValueError,
     "linear: final=0.2 is less than initial=0.5; decreasing targets are not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments(make: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        make()


WRONG_CALLS: list[tuple[Callable[[], object], str]] = [
    (lambda: one_shot(500), "one_shot: too many positional arguments; call it as one_shot(at=STEP), e.g. one_shot(at=500)"),
    (lambda: one_shot(step=500), "one_shot: got an unexpected keyword argument 'step'; call it as one_shot(at=STEP)"),
    (lambda: one_shot(), "one_shot: missing a required argument: 'at'; call it as one_shot(at=STEP)"),
    (lambda: constant(0.5, 10), "constant: too many positional arguments; call it as constant(value=1.0, every=None)"),
    (lambda: linear(0, 10), "linear: too many positional arguments; call it as "
     "linear(begin_step=..., end_step=..., every=1, initial=0.0, final=1.0)"),
    (lambda: polynomial(begin_step=0, end=10), "polynomial: got an unexpected keyword argument 'end'; "
     "call it as polynomial(begin_step=..., end_step=..., every=1, power=3, initial=0.0, final=1.0)"),
    (lambda: polynomial(end_step=10), "polynomial: missing a required argument: 'begin_step'; call it as polynomial("),
]  # fmt: skip


@pytest.mark.parametrize(("call", "message"), WRONG_CALLS)
def test_wrong_calls_say_how_to_call(call: Callable[[], object], message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        call()


@pytest.mark.parametrize(
    "schedule",
    [constant(), one_shot(at=2), linear(**RAMP), polynomial(**RAMP)],
    ids=lambda s: type(s).__name__,
)
def test_bad_steps(schedule: Schedule) -> None:
    name = type(schedule).__name__
    for method in (schedule, schedule.is_update_step):
        with pytest.raises(ValueError, match=re.escape(f"{name}: step=-1 must be non-negative")):
            method(-1)
        with pytest.raises(TypeError, match=re.escape(f"{name}: step must be an int, got bool")):
            method(True)
        with pytest.raises(TypeError, match=re.escape(f"{name}: step must be an int, got float")):
            method(1.0)


# -- torch.ao's arithmetic -----------------------------------------------------------------


@settings(max_examples=2000)
@given(
    s_0=st.one_of(FRACTIONS, st.floats(-2.0, 2.0)),
    s_f=st.one_of(FRACTIONS, st.floats(-2.0, 2.0)),
    t=st.integers(-50, 3000),
    t_0=st.integers(-20, 200),
    dt=st.integers(1, 50),
    n=st.integers(1, 200),
    zero=st.booleans(),
)
def test_cubic_sparsity_is_bit_identical_to_torch_ao(
    s_0: float, s_f: float, t: int, t_0: int, dt: int, n: int, zero: bool
) -> None:
    expected = CubicSL.sparsity_compute_fn(s_0, s_f, t, t_0, dt, n, zero)
    got = cubic_sparsity(
        t,
        initial_sparsity=s_0,
        final_sparsity=s_f,
        initial_step=t_0,
        delta_steps=dt,
        total_steps=n,
        initially_zero=zero,
    )
    assert got == expected
    assert type(got) is type(expected)  # the int 0 before t_0 when initially_zero, as torch.ao


def test_cubic_sparsity_total_steps_counts_updates_not_training_steps() -> None:
    # The user who wrote total_steps=50 for 50 training steps: 0.217 at step 50, 0.8 at 500.
    config = dict(initial_sparsity=0.0, final_sparsity=0.8, total_steps=50)
    assert cubic_sparsity(50, **config) == pytest.approx(0.8 * (1 - 0.9**3))
    assert cubic_sparsity(499, **config) < 0.8
    assert cubic_sparsity(500, **config) == 0.8
    # polynomial counts training steps: the full level at end_step.
    assert 0.8 * polynomial(begin_step=0, end_step=50)(50) == 0.8


def test_cubic_sparsity_torch_ao_on_bad_update_counts() -> None:
    # What torch.ao does with the inputs cubic_sparsity refuses: a zero divides by zero, a
    # negative product never leaves s_0.
    with pytest.raises(ZeroDivisionError):
        CubicSL.sparsity_compute_fn(0.0, 0.8, 5, 0, 0, 100)
    assert all(CubicSL.sparsity_compute_fn(0.1, 0.8, t, 0, -10, 100) == 0.1 for t in range(2000))


CUBIC = {"initial_sparsity": 0.0, "final_sparsity": 0.8}
BAD_CUBIC: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"delta_steps": 0}, ValueError, "cubic_sparsity: delta_steps=0 must be positive"),
    ({"delta_steps": -10}, ValueError, "cubic_sparsity: delta_steps=-10 must be positive"),
    ({"total_steps": 0}, ValueError, "cubic_sparsity: total_steps=0 must be positive"),
    ({"total_steps": -1}, ValueError, "cubic_sparsity: total_steps=-1 must be positive"),
    ({"delta_steps": -2, "total_steps": -5}, ValueError, "cubic_sparsity: delta_steps=-2 must be positive"),
    ({"delta_steps": 2.0}, TypeError, "cubic_sparsity: delta_steps must be an int, got float 2.0"),
    ({"total_steps": True}, TypeError, "cubic_sparsity: total_steps must be an int, got bool True"),
    ({"initial_step": 1.5}, TypeError, "cubic_sparsity: initial_step must be an int, got float 1.5"),
    ({"initial_sparsity": NAN}, ValueError, "cubic_sparsity: initial_sparsity must not be NaN"),
    ({"final_sparsity": NAN}, ValueError, "cubic_sparsity: final_sparsity must not be NaN"),
    ({"final_sparsity": INF}, ValueError, "cubic_sparsity: final_sparsity=inf must be finite"),
    ({"initial_sparsity": -INF}, ValueError, "cubic_sparsity: initial_sparsity=-inf must be finite"),
    ({"final_sparsity": True}, TypeError, "cubic_sparsity: final_sparsity must be a real number, got bool True"),
    ({"initially_zero": 1}, TypeError, "cubic_sparsity: initially_zero must be a bool, got int 1"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "error", "message"), BAD_CUBIC)
def test_cubic_sparsity_bad_arguments(
    changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        cubic_sparsity(5, **{**CUBIC, **changes})


def test_cubic_sparsity_bad_step() -> None:
    with pytest.raises(
        TypeError, match=re.escape("cubic_sparsity: step must be an int, got float")
    ):
        cubic_sparsity(5.0, **CUBIC)
    with pytest.raises(TypeError, match=re.escape("cubic_sparsity: step must be an int, got bool")):
        cubic_sparsity(True, **CUBIC)


def test_lambda_sparsity() -> None:
    assert lambda_sparsity(4, final_sparsity=0.5, factor=lambda t: t / 8) == 0.25
    assert lambda_sparsity(1, final_sparsity=0.5, factor=lambda t: t * 10) == 5.0  # as torch.ao
    with pytest.raises(
        ValueError, match=re.escape("lambda_sparsity: final_sparsity must not be NaN")
    ):
        lambda_sparsity(1, final_sparsity=NAN, factor=lambda t: 1.0)
    with pytest.raises(
        TypeError, match=re.escape("lambda_sparsity: factor must be callable, got float 0.5")
    ):
        lambda_sparsity(1, final_sparsity=0.5, factor=0.5)


# -- hostile arguments (issue 9): only TypeError/ValueError, at construction, named ---------

HUGE = 10**400


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: schedules.constant(every=0), ValueError, r"constant: every=0 must be positive"),
        (lambda: schedules.constant(HUGE), ValueError, r"constant: value=1000.*too large"),
        (lambda: schedules.constant(math.inf), ValueError, r"constant: value=inf must be in"),
        (lambda: schedules.constant("0.5"), TypeError, r"constant: value must be a real"),
        (lambda: schedules.one_shot(at=-1), ValueError, r"one_shot: at=-1 must be non-neg"),
        (lambda: schedules.one_shot(at=None), TypeError, r"one_shot: at must be an int"),
        (
            lambda: schedules.linear(begin_step=0, end_step=10, every=0),
            ValueError,
            r"linear: every=0 must be positive",
        ),
        (
            lambda: schedules.linear(begin_step=0, end_step=10, every=-3),
            ValueError,
            r"linear: every=-3 must be positive",
        ),
        (
            lambda: schedules.linear(begin_step=0, end_step=0),
            ValueError,
            r"linear: end_step=0 must be greater than begin_step=0",
        ),
        (
            lambda: schedules.linear(begin_step=0, end_step=10, initial=math.nan),
            ValueError,
            r"linear: initial must not be NaN",
        ),
        (
            lambda: schedules.linear(begin_step=0.0, end_step=10),
            TypeError,
            r"linear: begin_step must be an int, got float 0.0",
        ),
        (
            lambda: schedules.polynomial(begin_step=0, end_step=10, power=HUGE),
            ValueError,
            r"polynomial: power=1000.*\.\.\..*too large for a float",
        ),
        (
            lambda: schedules.polynomial(begin_step=0, end_step=10, power=math.inf),
            ValueError,
            r"polynomial: power=inf must be finite",
        ),
        (
            lambda: schedules.cubic_sparsity(
                0, initial_sparsity=0.0, final_sparsity=0.5, delta_steps=0
            ),
            ValueError,
            r"cubic_sparsity: delta_steps=0 must be positive",
        ),
        (
            lambda: schedules.cubic_sparsity(
                0, initial_sparsity=0.0, final_sparsity=0.5, total_steps=0
            ),
            ValueError,
            r"cubic_sparsity: total_steps=0 must be positive",
        ),
        (
            lambda: schedules.cubic_sparsity(0, initial_sparsity=0.0, final_sparsity=HUGE),
            ValueError,
            r"cubic_sparsity: final_sparsity=1000.*too large",
        ),
    ],
)
def test_hostile_arguments_raise_named_errors(
    build: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        build()
    assert len(str(info.value)) < 300  # a 10**400 is shown shortened


def test_huge_steps_never_overflow() -> None:
    ramp = schedules.linear(begin_step=0, end_step=HUGE, every=3)
    assert 0.0 <= ramp(10**399) <= 1.0
    assert ramp(HUGE) == 1.0 and ramp.is_update_step(HUGE)
    curve = schedules.polynomial(begin_step=0, end_step=HUGE, power=1e300)
    assert curve(10**399) == 1.0
    for step in (HUGE, -HUGE, 10**200):
        level = schedules.cubic_sparsity(
            step, initial_sparsity=0.1, final_sparsity=0.8, delta_steps=1, total_steps=1
        )
        assert level == (0.8 if step > 0 else 0.1)
    # final below initial: the clamp gives the initial level throughout, as torch.ao does
    assert schedules.cubic_sparsity(HUGE, initial_sparsity=0.8, final_sparsity=0.1) == 0.8


@given(
    step=st.integers(-(10**6), 10**6),
    t0=st.integers(-100, 100),
    delta=st.integers(1, 50),
    n=st.integers(1, 50),
    s0=st.floats(0, 1),
    sf=st.floats(0, 1),
)
def test_cubic_overflow_limits_agree_with_torch_ao_far_out(
    step: int, t0: int, delta: int, n: int, s0: float, sf: float
) -> None:
    # The overflow branch returns the clamp's limit; far-out steps that still fit a float
    # must give that same limit through torch.ao's own arithmetic.
    far = step * 10**8 if step else 10**14
    ours = cubic_sparsity(far, initial_sparsity=s0, final_sparsity=sf, initial_step=t0,
                          delta_steps=delta, total_steps=n)  # fmt: skip
    ao = CubicSL.sparsity_compute_fn(s0, sf, far, t0, delta, n, False)
    assert ours == ao
    limit = max(s0, sf) if far >= t0 else s0
    assert ours == limit
