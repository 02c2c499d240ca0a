"""Message helpers shared by every room: describing a value, and checking ints and reals.

Every message names its owner (the function or class) and the argument, as
``"WeightNorm: norm must be an int, got str 'two'"``.
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

__all__ = ["describe", "require_int", "require_real"]


def describe(value: object) -> str:
    """A short description of a value for error messages (a tensor's rank, dtype, shape)."""
    if isinstance(value, Tensor):
        shape = tuple(value.shape)
        return f"a {value.dim()}-D {value.dtype} tensor of shape {shape}"
    return f"{type(value).__name__} {value!r}"


def require_int(owner: str, name: str, value: object) -> int:
    """``value`` as an int, or a TypeError naming ``owner`` and ``name`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def require_real(owner: str, name: str, value: object) -> float:
    """``value`` as a float that is not NaN, or a TypeError/ValueError naming ``owner``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{owner}: {name} must be a real number, got {type(value).__name__} {value!r}"
        )
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} must not be NaN")
    return float(value)
