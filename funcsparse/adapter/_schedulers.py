"""BaseScheduler, LambdaSL and CubicSL: torch.ao's schedulers over funcsparse.schedules."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
import weakref
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any

from torch import Tensor

from funcsparse._errors import describe, short_repr
from funcsparse.adapter._base import BaseSparsifier
from funcsparse.schedules import cubic_sparsity, lambda_sparsity

__all__ = ["BaseScheduler", "CubicSL", "LambdaSL"]

_GET_LAST_SL = (
    "To get the last sparsity level computed by the scheduler, please use `get_last_sl()`."
)


def _counting(method: Any) -> Any:
    """Wrap a sparsifier's bound ``step`` so that it counts its calls (weakly bound)."""
    if getattr(method, "_with_counter", False):
        return method
    instance_ref = weakref.ref(method.__self__)
    func = method.__func__
    cls = type(method.__self__)

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        instance = instance_ref()
        instance._step_count += 1  # type: ignore[union-attr]
        return func.__get__(instance, cls)(*args, **kwargs)

    wrapper._with_counter = True  # type: ignore[attr-defined]
    return wrapper


def _check_sparsifier(owner: str, sparsifier: object) -> BaseSparsifier:
    if not isinstance(sparsifier, BaseSparsifier):
        raise TypeError(
            f"{owner}: {type(sparsifier).__name__} is not an instance of "
            f"funcsparse.adapter.BaseSparsifier (got {describe(sparsifier)})"
        )
    return sparsifier


_FLOAT_MAX = sys.float_info.max


def _level(
    owner: str, where: str, value: object, *, finite: bool = False, tensors: bool = False
) -> float | int:
    """A sparsity level: a real number (with ``tensors``, a 0-d real tensor becomes one),
    not NaN (with ``finite``, not infinite or too large for a float)."""
    if tensors and isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {where} must be a real number, got {describe(value)}")
    number: Any = value
    if number != number:
        raise ValueError(f"{owner}: {where} is NaN")
    if finite:
        try:
            ok = math.isfinite(number)
        except OverflowError:
            ok = False
        if not ok:
            raise ValueError(f"{owner}: {where}={short_repr(value)} must be a finite float")
    return number  # type: ignore[no-any-return]


def _int(owner: str, where: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {where} must be an int, got {describe(value)}")
    if minimum is not None and value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{owner}: {where}={short_repr(value)} must be {bound}")
    return int(value)


class BaseScheduler:
    """torch.ao.pruning.BaseScheduler: sets every group's ``sparsity_level`` per epoch.

    Subclasses implement ``get_sl()``. Step counting, the warning when ``scheduler.step()``
    comes before ``sparsifier.step()``, ``base_sl``, ``last_epoch``, ``get_last_sl()`` and
    ``state_dict()`` behave as in torch.ao.

    Unlike torch.ao, arguments are checked before the sparsifier is touched: a sparsifier of
    the wrong type, a group without a real ``sparsity_level`` or a non-int ``last_epoch``
    raise a TypeError/ValueError naming the class, and a ``step()`` whose ``get_sl()``
    gives a level that is not a real number (or is NaN) raises naming the group, with the
    epoch, the counters and every group's level as they were.

    Args:
        sparsifier: a :class:`funcsparse.adapter.BaseSparsifier` (prepared).
        last_epoch: the epoch before the first ``step()``. Default -1.
        verbose: print every level change. Default False.

    Raises:
        TypeError: ``sparsifier`` is not a funcsparse.adapter sparsifier (torch.ao's are
            refused too), ``last_epoch`` is not an int, a level is not a real number.
        ValueError: a group has no ``sparsity_level``, or it is NaN.
    """

    def __init__(
        self, sparsifier: BaseSparsifier, last_epoch: int = -1, verbose: bool = False
    ) -> None:
        owner = type(self).__name__
        _check_sparsifier(owner, sparsifier)
        self.sparsifier = sparsifier
        base_sl = [group.get("sparsity_level", _MISSING) for group in sparsifier.groups]
        self._check_attributes(
            {**vars(self), "base_sl": base_sl, "last_epoch": last_epoch, "verbose": verbose},
            owner,
        )
        self.base_sl = base_sl
        self.last_epoch = last_epoch
        self.verbose = verbose
        self._get_sl_called_within_step = False
        self._step_count = 0
        own = vars(sparsifier)
        saved: dict[str, Any] = {k: own[k] for k in ("step", "_step_count") if k in own}
        sparsifier.step = _counting(sparsifier.step)  # type: ignore[method-assign]
        sparsifier._step_count = 0  # type: ignore[attr-defined]
        try:
            self.step()
        except BaseException:  # a first step that raises leaves the sparsifier as it was
            for key in ("step", "_step_count"):
                vars(sparsifier).pop(key, None)
            vars(sparsifier).update(saved)
            raise

    def _check_attributes(self, attributes: Mapping[str, Any], owner: str) -> None:
        """Raise if ``attributes`` (the scheduler's, as they would become) are malformed."""
        groups = self.sparsifier.groups
        base_sl = attributes.get("base_sl")
        self._check_per_group(owner, "base_sl", base_sl)
        for group, value in zip(groups, base_sl, strict=True):  # type: ignore[arg-type]
            if value is _MISSING:
                raise ValueError(
                    f"{owner}: group {group.get('tensor_fqn')!r} has no 'sparsity_level' to "
                    "schedule"
                )
            _level(owner, f"the sparsity_level of group {group.get('tensor_fqn')!r}", value)
        _int(owner, "last_epoch", attributes.get("last_epoch"))
        if "_step_count" in attributes:
            _int(owner, "_step_count", attributes["_step_count"], minimum=0)
        last_sl = attributes.get("_last_sl", [])
        if not isinstance(last_sl, list):
            raise TypeError(f"{owner}: _last_sl must be a list of levels, got {describe(last_sl)}")
        for flag in ("_get_sl_called_within_step",):
            if flag in attributes and not isinstance(attributes[flag], bool):
                raise TypeError(f"{owner}: {flag} must be a bool, got {describe(attributes[flag])}")
        verbose = attributes.get("verbose")
        if not isinstance(verbose, (bool, int)):
            raise TypeError(f"{owner}: verbose must be a bool, got {describe(verbose)}")

    def _check_per_group(self, owner: str, name: str, values: object) -> None:
        n = len(self.sparsifier.groups)
        if not isinstance(values, list):
            text = f"{name} must be a list (one per group), got {describe(values)}"
            raise TypeError(f"{owner}: {text}")
        if len(values) != n:
            raise ValueError(
                f"{owner}: expected {name} of length {n} (one per group), but got {len(values)}"
            )

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the sparsifier."""
        return {key: value for key, value in self.__dict__.items() if key != "sparsifier"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore attributes saved by :meth:`state_dict`.

        Raises:
            TypeError: ``state_dict`` is not a dict, or a value has the wrong type.
            ValueError: a key is not one :meth:`state_dict` returns, or a value is out of
                range (a per-group list of the wrong length, a NaN level, ...). Nothing is
                changed then.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{owner}: state_dict must be a dict (what state_dict() returns), got "
                f"{describe(state_dict)}"
            )
        known = self.state_dict()
        unknown = sorted(repr(key) for key in state_dict if key not in known)
        if unknown:
            raise ValueError(
                f"{owner}: unknown key(s) [{', '.join(unknown)}]; a {type(self).__name__} "
                f"state_dict has {sorted(known)}"
            )
        self._check_attributes({**vars(self), **state_dict}, owner)
        self.__dict__.update(state_dict)

    def get_last_sl(self) -> list[float]:
        """The levels the last ``step()`` set."""
        return self._last_sl

    def get_sl(self) -> list[float]:
        """The levels for ``self.last_epoch`` (called by ``step()``)."""
        if not self._get_sl_called_within_step:
            warnings.warn(_GET_LAST_SL, stacklevel=2)
        raise NotImplementedError

    def print_sl(self, is_verbose: bool, group: int, sl: float, epoch: int | None = None) -> None:
        """Print a level change when ``is_verbose``."""
        if is_verbose:
            if epoch is None:
                print(f"Adjusting sparsity level of group {group} to {sl:.4e}.")
            else:
                print(f"Epoch {epoch:5d}: adjusting sparsity level of group {group} to {sl:.4e}.")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__} (\nSparsifier {self.sparsifier}\n    base_sl: {self.base_sl}\n)"
        )

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch and write the new levels into the sparsifier's groups.

        Raises:
            TypeError: ``epoch`` is not None or an int, ``get_sl()`` gives a level that is not
                a real number.
            ValueError: ``get_sl()`` gives a NaN level, or not one level per group. The
                epoch, the counters and the groups' levels are as they were then.
        """
        owner = f"{type(self).__name__}.step"
        if epoch is not None:
            _int(owner, "epoch", epoch)
        if self._step_count == 1:
            if not hasattr(self.sparsifier.step, "_with_counter"):
                warnings.warn(
                    "Seems like `sparsifier.step()` has been overridden after sparsity scheduler "
                    "initialization. Please, make sure to call `sparsifier.step()` before "
                    "`scheduler.step()`.",
                    UserWarning,
                    stacklevel=2,
                )
            elif self.sparsifier._step_count < 1:  # type: ignore[attr-defined]
                warnings.warn(
                    "Detected call of `scheduler.step()` before `sparsifier.step()`. "
                    "You have to make sure you run the sparsifier.step() BEFORE any "
                    "calls to the scheduler.step().",
                    UserWarning,
                    stacklevel=2,
                )
        step_count, last_epoch = self._step_count, self.last_epoch
        self._step_count += 1
        self._get_sl_called_within_step = True
        try:
            self.last_epoch += 1
            values = self._checked_levels(self.get_sl(), owner)
        except BaseException:
            self._step_count, self.last_epoch = step_count, last_epoch
            raise
        finally:
            self._get_sl_called_within_step = False
        for i, (group, sl) in enumerate(zip(self.sparsifier.groups, values, strict=False)):
            group["sparsity_level"] = sl
            self.print_sl(self.verbose, i, sl, epoch)
        self._last_sl = [group["sparsity_level"] for group in self.sparsifier.groups]
        self.sparsifier.enable_mask_update = True

    def _checked_levels(self, values: object, owner: str) -> list[Any]:
        groups = self.sparsifier.groups
        try:
            levels = list(values)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(
                f"{owner}: get_sl() must return one level per group, got {describe(values)}"
            ) from None
        if len(levels) < len(groups):  # torch.ao zips: extra levels are ignored
            raise ValueError(
                f"{owner}: get_sl() returned {len(levels)} levels for {len(groups)} groups"
            )
        return [
            _level(owner, f"the level of group {group.get('tensor_fqn')!r}", level, tensors=True)
            for group, level in zip(groups, levels, strict=False)
        ]

    def _make_sure_a_list(self, var: Any, name: str = "variable") -> list[Any]:
        """``var`` repeated per group, or checked to have one entry per group."""
        n = len(self.sparsifier.groups)
        if not isinstance(var, (list, tuple)):
            return [var] * n
        if len(var) != n:
            raise ValueError(
                f"{type(self).__name__}: Expected {name} of length {n} (one per group), but "
                f"got {len(var)}"
            )
        return list(var)


class LambdaSL(BaseScheduler):
    """torch.ao.pruning.LambdaSL: ``base_sl * sl_lambda(epoch)`` per group.

    The arithmetic is :func:`funcsparse.schedules.lambda_sparsity`.

    Args:
        sparsifier: a :class:`funcsparse.adapter.BaseSparsifier`.
        sl_lambda: a callable of the epoch, or a list with one per group.
        last_epoch: as :class:`BaseScheduler`. Default -1.
        verbose: as :class:`BaseScheduler`. Default False.

    Raises:
        TypeError: as :class:`BaseScheduler`, or ``sl_lambda`` (or an entry) not callable.
        ValueError: as :class:`BaseScheduler`, or a list of the wrong length.
    """

    def __init__(
        self,
        sparsifier: BaseSparsifier,
        sl_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        owner = type(self).__name__
        self.sparsifier = _check_sparsifier(owner, sparsifier)
        if not isinstance(sl_lambda, (list, tuple)):
            self.sl_lambdas = [sl_lambda] * len(sparsifier.groups)
        else:
            if len(sl_lambda) != len(sparsifier.groups):
                raise ValueError(
                    f"{owner}: Expected {len(sparsifier.groups)} lr_lambdas, but got "
                    f"{len(sl_lambda)}"
                )
            self.sl_lambdas = list(sl_lambda)
        super().__init__(sparsifier, last_epoch, verbose)

    def _check_attributes(self, attributes: Mapping[str, Any], owner: str) -> None:
        super()._check_attributes(attributes, owner)
        lambdas = attributes.get("sl_lambdas")
        self._check_per_group(owner, "sl_lambdas", lambdas)
        for i, factor in enumerate(lambdas):  # type: ignore[arg-type]
            if not callable(factor):
                raise TypeError(
                    f"{owner}: sl_lambda[{i}] must be callable (epoch -> factor), got "
                    f"{describe(factor)}"
                )

    def get_sl(self) -> list[float]:
        if not self._get_sl_called_within_step:
            warnings.warn(_GET_LAST_SL, stacklevel=2)
        levels = []
        for i, (factor, base) in enumerate(zip(self.sl_lambdas, self.base_sl, strict=True)):
            fqn = self.sparsifier.groups[i].get("tensor_fqn")
            where = f"sl_lambda[{i}]({self.last_epoch}) for group {fqn!r}"
            checked = _Checked(f"{type(self).__name__}.step", where, factor)
            levels.append(lambda_sparsity(self.last_epoch, final_sparsity=base, factor=checked))
        return levels


class CubicSL(BaseScheduler):
    """torch.ao.pruning.CubicSL: the cubic schedule of Zhu & Gupta (2017) per group.

    The arithmetic is :func:`funcsparse.schedules.cubic_sparsity`; each argument may be one
    value for every group or a list with one per group. Unlike torch.ao (whose
    ``delta_t=0`` or ``total_t=0`` is a ZeroDivisionError at the first step), every value is
    checked by the constructor.

    Args:
        sparsifier: a :class:`funcsparse.adapter.BaseSparsifier`.
        init_sl: level at ``init_t`` (finite). Default 0.0.
        init_t: epoch when pruning starts (an int). Default 0.
        delta_t: epochs between updates (a positive int). Default 10.
        total_t: number of updates (a positive int). Default 100.
        initially_zero: level 0 before ``init_t``. Default False.
        last_epoch: as :class:`BaseScheduler`. Default -1.
        verbose: as :class:`BaseScheduler`. Default False.

    Raises:
        TypeError: as :class:`BaseScheduler`, or a value of the wrong type (a float
            ``delta_t``, a str level, a non-bool ``initially_zero``).
        ValueError: as :class:`BaseScheduler`, ``delta_t``/``total_t`` not positive, a level
            that is NaN or infinite (the groups' targets too), a list of the wrong length.
    """

    def __init__(
        self,
        sparsifier: BaseSparsifier,
        init_sl: float | list[float] = 0.0,
        init_t: int | list[int] = 0,
        delta_t: int | list[int] = 10,
        total_t: int | list[int] = 100,
        initially_zero: bool | list[bool] = False,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        self.sparsifier = _check_sparsifier(type(self).__name__, sparsifier)
        self.init_sl = self._make_sure_a_list(init_sl, "init_sl")
        self.init_t = self._make_sure_a_list(init_t, "init_t")
        self.delta_t = self._make_sure_a_list(delta_t, "delta_t")
        self.total_t = self._make_sure_a_list(total_t, "total_t")
        self.initially_zero = self._make_sure_a_list(initially_zero, "initially_zero")
        super().__init__(sparsifier, last_epoch, verbose)

    def _check_attributes(self, attributes: Mapping[str, Any], owner: str) -> None:
        super()._check_attributes(attributes, owner)
        groups = self.sparsifier.groups
        for name in ("init_sl", "init_t", "delta_t", "total_t", "initially_zero"):
            self._check_per_group(owner, name, attributes.get(name))
        for i, group in enumerate(groups):
            where = f"for group {group.get('tensor_fqn')!r}"
            _level(owner, f"init_sl {where}", attributes["init_sl"][i], finite=True)
            _level(owner, f"the target level {where}", attributes["base_sl"][i], finite=True)
            _int(owner, f"init_t {where}", attributes["init_t"][i])
            _int(owner, f"delta_t {where}", attributes["delta_t"][i], minimum=1)
            _int(owner, f"total_t {where}", attributes["total_t"][i], minimum=1)
            if not isinstance(attributes["initially_zero"][i], bool):
                raise TypeError(
                    f"{owner}: initially_zero {where} must be a bool, got "
                    f"{describe(attributes['initially_zero'][i])}"
                )

    @staticmethod
    def sparsity_compute_fn(
        s_0: float, s_f: float, t: int, t_0: int, dt: int, n: int, initially_zero: bool = False
    ) -> float:
        """torch.ao's name for :func:`funcsparse.schedules.cubic_sparsity`."""
        return cubic_sparsity(
            t,
            initial_sparsity=s_0,
            final_sparsity=s_f,
            initial_step=t_0,
            delta_steps=dt,
            total_steps=n,
            initially_zero=initially_zero,
        )

    def get_sl(self) -> list[float]:
        if not self._get_sl_called_within_step:
            warnings.warn(_GET_LAST_SL, stacklevel=2)
        return [
            self.sparsity_compute_fn(s_0, s_f, self.last_epoch, t_0, dt, n, zero)
            for s_0, s_f, t_0, dt, n, zero in zip(
                self.init_sl,
                self.base_sl,
                self.init_t,
                self.delta_t,
                self.total_t,
                self.initially_zero,
                strict=True,
            )
        ]


_MISSING: Any = object()


class _Checked:
    """A sparsity factor whose result is checked (a real number, not NaN) naming ``where``."""

    def __init__(self, owner: str, where: str, factor: Callable[[int], float]) -> None:
        self.owner, self.where, self.factor = owner, where, factor

    def __call__(self, epoch: int) -> float:
        factor = _level(self.owner, self.where, self.factor(epoch), tensors=True)
        if isinstance(factor, numbers.Integral) and abs(factor) > _FLOAT_MAX:
            # base_sl * factor would be an OverflowError (torch.ao's too)
            raise ValueError(
                f"{self.owner}: {self.where}={short_repr(factor)} is too large for a float"
            )
        return factor
