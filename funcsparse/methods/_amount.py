"""``amount`` as torch.nn.utils.prune means it: a float fraction in [0, 1] or an int count."""

from __future__ import annotations

import numbers

__all__ = ["check_amount", "count_to_prune"]


def check_amount(owner: str, amount: object) -> None:
    """Raise unless ``amount`` is a float in [0, 1] or a non-negative int (bools refused).

    Raises:
        TypeError: ``amount`` is not a real number.
        ValueError: a float outside [0, 1] (or NaN), or a negative int.
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(
            f"{owner}: amount must be an int (a count) or a float (a fraction), "
            f"got {type(amount).__name__} {amount!r}"
        )
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"{owner}: amount={amount} must be a non-negative count")
    elif not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"{owner}: amount={amount} must be a fraction in [0, 1]")


def count_to_prune(owner: str, amount: float | int, size: int, *, what: str = "entries") -> int:
    """How many of ``size`` units ``amount`` prunes: ``round(amount * size)`` for a float.

    Raises:
        ValueError: an int ``amount`` above ``size``.
    """
    if isinstance(amount, numbers.Integral):
        if amount > size:
            raise ValueError(f"{owner}: amount={amount} is more than the {size} {what} there are")
        return int(amount)
    return round(float(amount) * size)
