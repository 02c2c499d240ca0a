"""BaseScheduler, LambdaSL and CubicSL: torch.ao's schedulers over funcsparse.schedules."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from functools import wraps
from typing import Any

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


class BaseScheduler:
    """torch.ao.pruning.BaseScheduler: sets every group's ``sparsity_level`` per epoch.

    Subclasses implement ``get_sl()``. Step counting, the warning when ``scheduler.step()``
    comes before ``sparsifier.step()``, ``base_sl``, ``last_epoch``, ``get_last_sl()`` and
    ``state_dict()`` behave as in torch.ao.
    """

    def __init__(
        self, sparsifier: BaseSparsifier, last_epoch: int = -1, verbose: bool = False
    ) -> None:
        if not isinstance(sparsifier, BaseSparsifier):
            raise TypeError(
                f"{type(sparsifier).__name__} is not an instance of "
                "funcsparse.adapter.BaseSparsifier"
            )
        self.sparsifier = sparsifier
        self.base_sl = [group["sparsity_level"] for group in sparsifier.groups]
        self.last_epoch = last_epoch
        sparsifier.step = _counting(sparsifier.step)  # type: ignore[method-assign]
        sparsifier._step_count = 0  # type: ignore[attr-defined]
        self._step_count = 0
        self.verbose = verbose
        self._get_sl_called_within_step = False
        self.step()

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the sparsifier."""
        return {key: value for key, value in self.__dict__.items() if key != "sparsifier"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore attributes saved by :meth:`state_dict`."""
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
        """Advance one epoch and write the new levels into the sparsifier's groups."""
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
        self._step_count += 1
        self._get_sl_called_within_step = True
        try:
            self.last_epoch += 1
            values = self.get_sl()
        finally:
            self._get_sl_called_within_step = False
        for i, (group, sl) in enumerate(zip(self.sparsifier.groups, values, strict=False)):
            group["sparsity_level"] = sl
            self.print_sl(self.verbose, i, sl, epoch)
        self._last_sl = [group["sparsity_level"] for group in self.sparsifier.groups]
        self.sparsifier.enable_mask_update = True

    def _make_sure_a_list(self, var: Any) -> list[Any]:
        """``var`` repeated per group, or checked to have one entry per group."""
        n = len(self.sparsifier.groups)
        if not isinstance(var, (list, tuple)):
            return [var] * n
        if len(var) != n:
            raise ValueError(f"Expected variable of length {n}, but got {len(var)}")
        return list(var)


class LambdaSL(BaseScheduler):
    """torch.ao.pruning.LambdaSL: ``base_sl * sl_lambda(epoch)`` per group.

    The arithmetic is :func:`funcsparse.schedules.lambda_sparsity`.
    """

    def __init__(
        self,
        sparsifier: BaseSparsifier,
        sl_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        self.sparsifier = sparsifier
        if not isinstance(sl_lambda, (list, tuple)):
            self.sl_lambdas = [sl_lambda] * len(sparsifier.groups)
        else:
            if len(sl_lambda) != len(sparsifier.groups):
                raise ValueError(
                    f"Expected {len(sparsifier.groups)} lr_lambdas, but got {len(sl_lambda)}"
                )
            self.sl_lambdas = list(sl_lambda)
        super().__init__(sparsifier, last_epoch, verbose)

    def get_sl(self) -> list[float]:
        if not self._get_sl_called_within_step:
            warnings.warn(_GET_LAST_SL, stacklevel=2)
        return [
            lambda_sparsity(self.last_epoch, final_sparsity=base, factor=factor)
            for factor, base in zip(self.sl_lambdas, self.base_sl, strict=True)
        ]


class CubicSL(BaseScheduler):
    """torch.ao.pruning.CubicSL: the cubic schedule of Zhu & Gupta (2017) per group.

    The arithmetic is :func:`funcsparse.schedules.cubic_sparsity`; each argument may be one
    value for every group or a list with one per group.
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
        self.sparsifier = sparsifier
        self.init_sl = self._make_sure_a_list(init_sl)
        self.init_t = self._make_sure_a_list(init_t)
        self.delta_t = self._make_sure_a_list(delta_t)
        self.total_t = self._make_sure_a_list(total_t)
        self.initially_zero = self._make_sure_a_list(initially_zero)
        super().__init__(sparsifier, last_epoch, verbose)

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
