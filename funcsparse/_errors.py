"""Message helpers shared by every room: describing a value, and checking ints and reals.

Every message names its owner (the function or class) and the argument, as
``"WeightNorm: norm must be an int, got str 'two'"``. Values are shown shortened
(:func:`describe`, :func:`short_repr`), so a bad batch or a 10**400 never floods a message.
"""

from __future__ import annotations

import math
import numbers
import reprlib

from torch import Tensor

__all__ = ["MAX_SHOWN", "describe", "require_finite", "require_int", "require_real", "short_repr"]

#: About how many characters of a value a message shows.
MAX_SHOWN = 100

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6
_REPR.maxdict = 4
_REPR.maxstring = 60
_REPR.maxlong = 40
_REPR.maxother = 60


def short_repr(value: object) -> str:
    """``repr(value)`` shortened to about :data:`MAX_SHOWN` characters (reprlib style).

    Examples:
        >>> short_repr(10**400)
        '100000000000000000...0000000000000000000'
        >>> short_repr(list(range(1000)))
        '[0, 1, 2, 3, 4, 5, ...]'
    """
    if isinstance(value, Tensor):
        return describe(value)
    try:
        text = _REPR.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    if len(text) > MAX_SHOWN:
        half = (MAX_SHOWN - 3) // 2
        text = f"{text[:half]}...{text[-half:]}"
    return text


def describe(value: object) -> str:
    """A short description of a value for error messages (a tensor's rank, dtype, shape).

    At most about :data:`MAX_SHOWN` characters besides the type name, whatever the value.

    Examples:
        >>> import torch
        >>> describe(torch.zeros(2, 3))
        'a 2-D torch.float32 tensor of shape (2, 3)'
        >>> len(describe("x" * 10_000)) <= 110
        True
        >>> len(describe({i: i for i in range(10_000)})) <= 120
        True
    """
    if isinstance(value, Tensor):
        shape = tuple(value.shape)
        device = "" if value.device.type == "cpu" else f" on {value.device}"
        return f"a {value.dim()}-D {value.dtype} tensor of shape {short_repr(shape)}{device}"
    return f"{type(value).__name__} {short_repr(value)}"


def require_int(owner: str, name: str, value: object) -> int:
    """``value`` as an int, or a TypeError naming ``owner`` and ``name`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {describe(value)}")
    return int(value)


def require_real(owner: str, name: str, value: object) -> float:
    """``value`` as a float that is not NaN, or a TypeError/ValueError naming ``owner``.

    Infinities pass (as ``inf``); a number too large for a float (``10**400``) is a
    ValueError, not Python's OverflowError.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {describe(value)}")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{owner}: {name}={short_repr(value)} is too large for a float") from None
    if math.isnan(number):
        raise ValueError(f"{owner}: {name} must not be NaN")
    return number


def require_finite(owner: str, name: str, value: object) -> float:
    """``value`` as a finite float, or a TypeError/ValueError naming ``owner`` and ``name``."""
    number = require_real(owner, name, value)
    if not math.isfinite(number):
        raise ValueError(f"{owner}: {name}={short_repr(value)} must be finite")
    return number
