"""Sparsity schedules: pure, validated functions from a training step to a level.

Two families live here.

* Schedule objects (:class:`constant`, :class:`one_shot`, :class:`linear`,
  :class:`polynomial`): frozen configs of the *training* step. ``schedule(step)`` is the
  fraction in ``[0, 1]`` of each pruning rule's level at that step, and
  ``schedule.is_update_step(step)`` says whether masks are recomputed there. The value only
  changes at update steps and never decreases, so a pruner that recomputes masks exactly at
  the update steps, with ``schedule(step)``, follows the schedule exactly. Every one of them
  satisfies the :class:`Schedule` protocol.
* torch.ao's arithmetic (:func:`cubic_sparsity`, :func:`lambda_sparsity`): the levels of
  ``torch.ao.pruning.CubicSL`` and ``LambdaSL``, bit for bit, as plain functions.
  ``funcsparse.adapter``'s schedulers compute their levels with them.

None of them carries state: the caller passes the step.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from funcsparse._errors import describe, require_finite, require_int, require_real, short_repr

__all__ = [
    "Schedule",
    "constant",
    "cubic_sparsity",
    "lambda_sparsity",
    "linear",
    "one_shot",
    "polynomial",
]


@runtime_checkable
class Schedule(Protocol):
    """What a pruner needs from a schedule: a level per training step and when to update.

    ``schedule(step)`` is the fraction in ``[0, 1]`` of each rule's level at ``step``;
    ``schedule.is_update_step(step)`` is whether masks are recomputed at ``step``. The level
    changes only at update steps and never decreases as the step grows.
    """

    def __call__(self, step: int) -> float:
        """The fraction in ``[0, 1]`` of each rule's level at training step ``step``."""
        ...

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed at training step ``step``."""
        ...


# -- argument checks ------------------------------------------------------------------------


def _fraction(owner: str, name: str, value: object) -> float:
    """``value`` as a float in ``[0, 1]``, or a TypeError/ValueError naming ``name``."""
    fraction = require_real(owner, name, value)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{owner}: {name}={short_repr(value)} must be in [0, 1]")
    return fraction


def _non_negative(owner: str, name: str, value: object) -> int:
    number = require_int(owner, name, value)
    if number < 0:
        raise ValueError(f"{owner}: {name}={short_repr(number)} must be non-negative")
    return number


def _positive(owner: str, name: str, value: object) -> int:
    number = require_int(owner, name, value)
    if number <= 0:
        raise ValueError(f"{owner}: {name}={short_repr(number)} must be positive")
    return number


_S = TypeVar("_S", bound="_Schedule")


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """Base of the schedule objects: turns a wrongly spelled call into a TypeError with usage."""

    #: How to call the schedule, quoted by the TypeError of a wrong call.
    usage: ClassVar[str]

    def __new__(cls: type[_S], *args: object, **kwargs: object) -> _S:
        # Python's own message for a wrong call does not say how to call the schedule.
        signature = inspect.signature(cls.__init__)
        unknown = [key for key in kwargs if key not in signature.parameters]
        # A misspelled argument first: one_shot(step=5) misspells ``at``, it does not omit it.
        problem = (
            f"got an unexpected keyword argument {short_repr(unknown[0])}" if unknown else None
        )
        if problem is None:
            try:
                signature.bind(None, *args, **kwargs)
            except TypeError as err:
                problem = str(err)
        if problem is not None:
            raise TypeError(f"{cls.__name__}: {problem}; call it as {cls.usage}")
        return super().__new__(cls)

    def __reduce__(self) -> tuple[object, ...]:
        # Copies and unpickling go through the constructor (and its checks) by name.
        return (_rebuild, (type(self), self._arguments()))

    def _arguments(self) -> dict[str, object]:
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.init
        }

    def _step(self, step: object) -> int:
        return _non_negative(type(self).__name__, "step", step)


def _rebuild(cls: type[_S], arguments: dict[str, object]) -> _S:
    """``cls(**arguments)``: how pickle and copy rebuild a schedule."""
    return cls(**arguments)


def _check_ramp(schedule: linear | polynomial) -> None:
    """Validate (and normalise) the fields ``linear`` and ``polynomial`` share."""
    owner = type(schedule).__name__
    begin = _non_negative(owner, "begin_step", schedule.begin_step)
    end = require_int(owner, "end_step", schedule.end_step)
    if end <= begin:
        shown = short_repr(begin)
        hint = (
            f" (for one jump to the full level, use one_shot(at={shown}))" if end == begin else ""
        )
        raise ValueError(
            f"{owner}: end_step={short_repr(end)} must be greater than begin_step={shown}{hint}"
        )
    every = _positive(owner, "every", schedule.every)
    initial = _fraction(owner, "initial", schedule.initial)
    final = _fraction(owner, "final", schedule.final)
    if final < initial:
        raise ValueError(
            f"{owner}: final={short_repr(schedule.final)} is less than "
            f"initial={short_repr(schedule.initial)}; "
            "decreasing targets are not supported (a schedule's level never decreases)"
        )
    for name, value in dict(begin_step=begin, end_step=end, every=every).items():
        object.__setattr__(schedule, name, value)  # plain ints (e.g. from numpy integers)
    object.__setattr__(schedule, "initial", initial)
    object.__setattr__(schedule, "final", final)


def _ramp_progress(schedule: linear | polynomial, step: int) -> float:
    """How far the last update step at or before ``step`` is from begin to end, in [0, 1)."""
    begin = schedule.begin_step
    last_update = begin + (step - begin) // schedule.every * schedule.every
    return (last_update - begin) / (schedule.end_step - begin)


def _ramp_update(schedule: linear | polynomial, step: int) -> bool:
    begin, end = schedule.begin_step, schedule.end_step
    return step == end or (begin <= step < end and (step - begin) % schedule.every == 0)


# -- schedule objects -----------------------------------------------------------------------
# Lower-case classes: a schedule is built and read like a function (fs.schedules.linear(...)),
# and the dataclass repr then spells the call that rebuilds it.


@dataclasses.dataclass(frozen=True)
class constant(_Schedule):
    """The same fraction of each rule's level at every step, from step 0 on.

    Masks are computed at step 0 and, when ``every`` is given, recomputed every ``every``
    steps at the same level: for methods whose scores move (movement, gradients), this
    re-selects which weights are pruned without changing how many.

    Examples:
        >>> from funcsparse import schedules
        >>> schedule = schedules.constant(0.5, every=100)
        >>> [schedule(t) for t in (0, 1, 1000)]
        [0.5, 0.5, 0.5]
        >>> [t for t in range(301) if schedule.is_update_step(t)]
        [0, 100, 200, 300]
        >>> [t for t in range(301) if schedules.constant().is_update_step(t)]
        [0]

    Args:
        value: the fraction in ``[0, 1]`` of each rule's level. Default 1.0 (the full level).
        every: recompute masks every ``every`` steps (a positive int), or only at step 0 when
            None. Default None.

    Returns:
        A schedule: ``schedule(step)`` is ``value`` for every step ``>= 0``;
        ``schedule.is_update_step(step)`` is True at step 0 and every ``every`` steps.

    Raises:
        TypeError: ``value`` is not a real number, ``every`` not an int or None (bools are
            refused), or the call passes an unknown argument; a step that is not an int.
        ValueError: ``value`` is NaN or outside ``[0, 1]``, ``every <= 0``; a negative step.
    """

    usage: ClassVar[str] = "constant(value=1.0, every=None)"

    value: float = 1.0
    _: dataclasses.KW_ONLY
    every: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _fraction("constant", "value", self.value))
        if self.every is not None:
            object.__setattr__(self, "every", _positive("constant", "every", self.every))

    def __call__(self, step: int) -> float:
        """``value``, at every step ``>= 0``."""
        self._step(step)
        return self.value

    def is_update_step(self, step: int) -> bool:
        """Step 0, and every ``every`` steps when ``every`` is given."""
        t = self._step(step)
        return t == 0 or (self.every is not None and t % self.every == 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class one_shot(_Schedule):
    """Nothing pruned before step ``at``, each rule's full level from ``at`` on.

    Examples:
        >>> from funcsparse import schedules
        >>> schedule = schedules.one_shot(at=500)
        >>> [schedule(t) for t in (0, 499, 500, 10_000)]
        [0.0, 0.0, 1.0, 1.0]
        >>> [schedule.is_update_step(t) for t in (0, 499, 500, 501)]
        [False, False, True, False]

    Args:
        at: the training step (an int ``>= 0``) at which masks are computed, once. Keyword
            only: ``one_shot(at=500)``.

    Returns:
        A schedule: ``schedule(step)`` is 0.0 before ``at`` and 1.0 from ``at`` on;
        ``schedule.is_update_step(step)`` is True at ``at`` only.

    Raises:
        TypeError: ``at`` is missing, not an int (bools are refused) or passed by position,
            or the call passes an unknown argument (the message says how to call it); a
            step that is not an int.
        ValueError: ``at`` is negative; a negative step.
    """

    usage: ClassVar[str] = "one_shot(at=STEP), e.g. one_shot(at=500)"

    at: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _non_negative("one_shot", "at", self.at))

    def __call__(self, step: int) -> float:
        """0.0 before ``at``, 1.0 from ``at`` on."""
        return 1.0 if self._step(step) >= self.at else 0.0

    def is_update_step(self, step: int) -> bool:
        """True at step ``at`` only."""
        return self._step(step) == self.at


@dataclasses.dataclass(frozen=True, kw_only=True)
class linear(_Schedule):
    """A straight ramp from ``initial`` at ``begin_step`` to ``final`` at ``end_step``.

    Before ``begin_step`` the value is 0.0, not ``initial``: nothing is pruned before
    ``begin_step``. Masks are recomputed at ``begin_step`` (value ``initial``), every
    ``every`` steps after it, and at ``end_step`` (value ``final``, reached there even when
    ``end_step`` is off the ``every`` grid); the value holds between updates and stays
    ``final`` after ``end_step``. At a step ``t`` with ``begin_step <= t < end_step``::

        t_q = begin_step + (t - begin_step) // every * every     # the last update step
        value = initial + (final - initial) * (t_q - begin_step) / (end_step - begin_step)

    Examples:
        >>> from funcsparse import schedules
        >>> schedule = schedules.linear(begin_step=100, end_step=500, every=100)
        >>> [schedule(t) for t in (0, 99, 100, 199, 200, 300, 499, 500, 800)]
        [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
        >>> [t for t in range(1000) if schedule.is_update_step(t)]
        [100, 200, 300, 400, 500]
        >>> schedules.linear(begin_step=0, end_step=10, every=4, initial=0.5)(9)
        0.9

    Args:
        begin_step: the first update step (an int ``>= 0``), where the value is ``initial``.
        end_step: the step from which the value is ``final`` (an int ``> begin_step``).
        every: steps between updates (a positive int). Default 1.
        initial: the fraction of each rule's level at ``begin_step``, in ``[0, 1]``.
            Default 0.0.
        final: the fraction from ``end_step`` on, in ``[initial, 1]``. Default 1.0.

    Returns:
        A schedule: ``schedule(step)`` as above; ``schedule.is_update_step(step)`` is True
        at ``begin_step + k * every`` below ``end_step``, and at ``end_step``.

    Raises:
        TypeError: an argument of the wrong type (bools are refused for ints and numbers),
            passed by position, or unknown; a step that is not an int.
        ValueError: ``begin_step < 0``; ``end_step <= begin_step`` (for one jump at a step,
            use :class:`one_shot`); ``every <= 0``; ``initial`` or ``final`` NaN or outside
            ``[0, 1]``; ``final < initial`` (decreasing targets); a negative step.
    """

    usage: ClassVar[str] = "linear(begin_step=..., end_step=..., every=1, initial=0.0, final=1.0)"

    begin_step: int
    end_step: int
    every: int = 1
    initial: float = 0.0
    final: float = 1.0

    def __post_init__(self) -> None:
        _check_ramp(self)

    def __call__(self, step: int) -> float:
        """The fraction of each rule's level at training step ``step``."""
        t = self._step(step)
        if t < self.begin_step:
            return 0.0
        if t >= self.end_step:
            return self.final
        # min: rounding must not push the last ramp value above final (the jump at end_step).
        ramp = self.initial + (self.final - self.initial) * _ramp_progress(self, t)
        return min(self.final, ramp)

    def is_update_step(self, step: int) -> bool:
        """``begin_step + k * every`` below ``end_step``, and ``end_step``."""
        return _ramp_update(self, self._step(step))


@dataclasses.dataclass(frozen=True, kw_only=True)
class polynomial(_Schedule):
    """Gradual pruning of Zhu & Gupta (2017), counted in training steps.

    The level rises fast at first and levels off as it approaches ``final``. Before
    ``begin_step`` the value is 0.0: nothing is pruned. Masks are recomputed at
    ``begin_step`` (value ``initial``), every ``every`` steps after it, and at ``end_step``
    (value ``final``, reached there even when ``end_step`` is off the ``every`` grid); the
    value holds between updates and stays ``final`` after ``end_step``. At a step ``t`` with
    ``begin_step <= t < end_step``::

        t_q = begin_step + (t - begin_step) // every * every     # the last update step
        progress = (t_q - begin_step) / (end_step - begin_step)
        value = final + (initial - final) * (1 - progress) ** power

    With ``every=1`` and ``power=3`` this is :func:`cubic_sparsity` with ``delta_steps=1``
    and ``total_steps=end_step - begin_step`` after ``begin_step`` (at ``begin_step`` it is
    ``initial`` exactly, where torch.ao's arithmetic may round one ulp away); unlike
    ``cubic_sparsity``, ``end_step`` is the step where ``final`` is reached, whatever
    ``every`` is.

    Examples:
        >>> from funcsparse import schedules
        >>> schedule = schedules.polynomial(begin_step=0, end_step=1000, every=100)
        >>> schedule
        polynomial(begin_step=0, end_step=1000, every=100, power=3, initial=0.0, final=1.0)
        >>> [round(schedule(t), 4) for t in (0, 99, 100, 500, 999, 1000, 5000)]
        [0.0, 0.0, 0.271, 0.875, 0.999, 1.0, 1.0]
        >>> [t for t in range(0, 2000, 50) if schedule.is_update_step(t)]
        [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]

    Args:
        begin_step: the first update step (an int ``>= 0``), where the value is ``initial``.
        end_step: the step from which the value is ``final`` (an int ``> begin_step``).
        every: steps between updates (a positive int), Zhu & Gupta's ``Δt``. Default 1.
        power: the exponent (a finite number ``> 0``; 1 is :class:`linear`). Default 3.
        initial: the fraction of each rule's level at ``begin_step``, in ``[0, 1]``.
            Default 0.0.
        final: the fraction from ``end_step`` on, in ``[initial, 1]``. Default 1.0.

    Returns:
        A schedule: ``schedule(step)`` as above; ``schedule.is_update_step(step)`` is True
        at ``begin_step + k * every`` below ``end_step``, and at ``end_step``.

    Raises:
        TypeError: an argument of the wrong type (bools are refused for ints and numbers),
            passed by position, or unknown; a step that is not an int.
        ValueError: ``begin_step < 0``; ``end_step <= begin_step`` (for one jump at a step,
            use :class:`one_shot`); ``every <= 0``; ``power`` not finite or ``<= 0``;
            ``initial`` or ``final`` NaN or outside ``[0, 1]``; ``final < initial``
            (decreasing targets); a negative step.

    References:
        Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
        model compression", 2017, arXiv:1710.01878.
    """

    usage: ClassVar[str] = (
        "polynomial(begin_step=..., end_step=..., every=1, power=3, initial=0.0, final=1.0)"
    )

    begin_step: int
    end_step: int
    every: int = 1
    power: float = 3
    initial: float = 0.0
    final: float = 1.0

    def __post_init__(self) -> None:
        _check_ramp(self)
        power = require_real("polynomial", "power", self.power)
        if not (math.isfinite(power) and power > 0):
            raise ValueError(
                f"polynomial: power={short_repr(self.power)} must be finite and positive"
            )

    def __call__(self, step: int) -> float:
        """The fraction of each rule's level at training step ``step``."""
        t = self._step(step)
        if t < self.begin_step:
            return 0.0
        if t >= self.end_step:
            return self.final
        progress = _ramp_progress(self, t)
        if progress == 0.0:  # exactly initial: final + (initial - final) may round away from it
            return self.initial
        remaining = 1.0 - progress
        level: float = self.final + (self.initial - self.final) * remaining**self.power
        # The clamp of torch.ao's CubicSL: rounding stays within [initial, final].
        return max(self.initial, min(self.final, level))

    def is_update_step(self, step: int) -> bool:
        """``begin_step + k * every`` below ``end_step``, and ``end_step``."""
        return _ramp_update(self, self._step(step))


# -- torch.ao's arithmetic ------------------------------------------------------------------


def cubic_sparsity(
    step: int,
    *,
    initial_sparsity: float,
    final_sparsity: float,
    initial_step: int = 0,
    delta_steps: int = 10,
    total_steps: int = 100,
    initially_zero: bool = False,
) -> float:
    """The cubic schedule of Zhu & Gupta (2017), exactly as ``torch.ao.pruning.CubicSL``.

    ``s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (delta * n)) ** 3``, clamped to
    ``[s_0, s_f]``; before ``t_0`` it is ``s_0``, or 0 when ``initially_zero``. The result
    is bit for bit ``CubicSL.sparsity_compute_fn(s_0, s_f, t, t_0, delta, n,
    initially_zero)`` on every input this function accepts.

    Warning:
        ``total_steps`` counts *pruning updates*, not training steps: ``final_sparsity`` is
        reached at step ``initial_step + delta_steps * total_steps``. With the default
        ``delta_steps=10``, ``total_steps=50`` reaches the final level at step 500, and at
        step 50 the level is only 0.217 of a final 0.8 (first example below). To count in
        training steps, use :class:`polynomial`, whose ``end_step`` is the step where the
        final level is reached. Also, ``delta_steps`` only stretches the curve: the level
        changes at every step, not every ``delta_steps`` steps (``polynomial``'s ``every``
        holds it between updates).

    Examples:
        >>> round(cubic_sparsity(50, initial_sparsity=0.0, final_sparsity=0.8, total_steps=50), 4)
        0.2168
        >>> cubic_sparsity(500, initial_sparsity=0.0, final_sparsity=0.8, total_steps=50)
        0.8
        >>> config = dict(initial_sparsity=0.0, final_sparsity=0.8, delta_steps=1, total_steps=4)
        >>> [round(cubic_sparsity(t, **config), 4) for t in range(6)]
        [0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]

    Args:
        step: the current step ``t`` (an int; torch.ao allows negative steps).
        initial_sparsity: ``s_0``, the level at ``t_0`` (a finite number).
        final_sparsity: ``s_f``, the level reached at ``t_0 + delta_steps * total_steps``
            (a finite number). When below ``s_0``, the clamp gives ``s_0`` throughout, as in
            torch.ao.
        initial_step: ``t_0``, when pruning starts. Default 0.
        delta_steps: ``delta``, steps between pruning updates (a positive int). Default 10.
        total_steps: ``n``, the number of pruning updates (a positive int), *not* a number
            of training steps. Default 100.
        initially_zero: level 0 (instead of ``s_0``) before ``t_0``. Default False.

    Returns:
        The sparsity level at ``step`` (the int 0 before ``t_0`` when ``initially_zero``,
        as torch.ao returns).

    Raises:
        TypeError: ``step``, ``initial_step``, ``delta_steps`` or ``total_steps`` not an
            int, a sparsity not a real number (bools are refused), ``initially_zero`` not a
            bool.
        ValueError: ``delta_steps <= 0`` or ``total_steps <= 0`` (torch.ao raises
            ZeroDivisionError for a zero, and for a negative product never moves from
            ``s_0``), a sparsity that is NaN or infinite.

    References:
        Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
        model compression", 2017, arXiv:1710.01878.
    """
    owner = "cubic_sparsity"
    require_int(owner, "step", step)
    require_int(owner, "initial_step", initial_step)
    _positive(owner, "delta_steps", delta_steps)
    _positive(owner, "total_steps", total_steps)
    require_finite(owner, "initial_sparsity", initial_sparsity)
    require_finite(owner, "final_sparsity", final_sparsity)
    if not isinstance(initially_zero, bool):
        raise TypeError(f"{owner}: initially_zero must be a bool, got {describe(initially_zero)}")
    # The arithmetic of torch.ao's CubicSL.sparsity_compute_fn, on the arguments as given.
    if initially_zero and step < initial_step:
        return 0
    try:
        level = (
            final_sparsity
            + (initial_sparsity - final_sparsity)
            * (1.0 - (step - initial_step) / (delta_steps * total_steps)) ** 3
        )
    except OverflowError:
        # Steps so far from initial_step that the cube leaves floats: the clamp's limits.
        # Past the end the level is final (initial when final < initial); before the start
        # it is initial, as the clamp gives for any step there.
        if step >= initial_step:
            return max(initial_sparsity, final_sparsity)
        return initial_sparsity
    return max(initial_sparsity, min(final_sparsity, level))


def lambda_sparsity(step: int, *, final_sparsity: float, factor: Callable[[int], float]) -> float:
    """``final_sparsity * factor(step)``, as ``torch.ao.pruning.LambdaSL`` computes it.

    Examples:
        >>> lambda_sparsity(3, final_sparsity=0.5, factor=lambda t: min(1.0, t / 10))
        0.15

    Args:
        step: the current step.
        final_sparsity: the level that ``factor`` scales (a real number, not NaN).
        factor: maps a step to a multiplier.

    Returns:
        The sparsity level at ``step``.

    Raises:
        TypeError: ``final_sparsity`` is not a real number (bools are refused), or
            ``factor`` is not callable.
        ValueError: ``final_sparsity`` is NaN.
    """
    require_real("lambda_sparsity", "final_sparsity", final_sparsity)
    if not callable(factor):
        raise TypeError(f"lambda_sparsity: factor must be callable, got {describe(factor)}")
    return final_sparsity * factor(step)
