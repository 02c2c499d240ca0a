"""The level of a method: ``sparsity`` (a fraction in [0, 1]) or, where offered, ``count``.

Every method names its level ``sparsity``; a method that also takes an exact number of
entries (or slices) to prune takes it as ``count``, a separate field. Exactly one is given.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse.methods._base import LeafProblem, describe, usage

#: The largest count a method accepts: no tensor has more entries (torch counts in int64).
MAX_COUNT = 2**63 - 1

__all__ = [
    "MAX_COUNT",
    "check_sparsity",
    "count_problem",
    "count_to_prune",
    "level_configs",
    "set_level",
    "total_zeros",
]


def check_sparsity(owner: str, sparsity: object, *, count_too: bool = False) -> float:
    """``sparsity`` as a float in [0, 1], or a TypeError/ValueError naming ``owner``.

    Where the method also takes a count (``count_too``), an int other than 0 is refused:
    ``1`` could mean "everything" (a fraction) or "one entry" (``torch.nn.utils.prune``'s
    int ``amount``); write ``1.0``, or ``count=1``.

    Raises:
        TypeError: not a real number (bools and strings are refused), or (``count_too``) an
            int other than 0.
        ValueError: NaN or outside [0, 1].
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{owner}: sparsity must be a fraction in [0, 1], got {describe(sparsity)}")
    if count_too and isinstance(sparsity, numbers.Integral) and sparsity != 0:
        shown = short_repr(sparsity)
        raise TypeError(
            f"{owner}: sparsity={shown} is an int; sparsity is a fraction (write "
            f"{shown}.0), a number to prune is count={shown}"
        )
    try:
        value = float(sparsity)
    except (OverflowError, ValueError):
        value = math.nan
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{owner}: sparsity must be a fraction in [0, 1], got {short_repr(sparsity)}"
        )
    return value


def set_level(method: Any, *, what: str = "entries") -> None:
    """Check a method's ``sparsity`` and ``count`` fields (exactly one given) and store them
    normalised (a float, an int), from its ``__post_init__``.

    Raises:
        TypeError: neither or both are given, ``sparsity`` is not a real number (or an int
            other than 0), or ``count`` is not an int (bools are refused).
        ValueError: ``sparsity`` is NaN or outside [0, 1], or ``count`` is negative.
    """
    owner = type(method).__name__
    sparsity, count = method.sparsity, method.count
    if (sparsity is None) == (count is None):
        given = "both" if sparsity is not None else "neither"
        raise TypeError(
            f"{owner}: give exactly one of sparsity (a fraction in [0, 1]) and count (a "
            f"number of {what}), got {given}; call it as {usage(type(method))}"
        )
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise TypeError(
                f"{owner}: count must be an int (a number of {what}), got "
                f"{describe(count)}; for a fraction use sparsity="
            )
        number = int(count)
        if number < 0:
            raise ValueError(f"{owner}: count={short_repr(number)} must be a non-negative number")
        if number > MAX_COUNT:
            raise ValueError(
                f"{owner}: count={short_repr(count)} is more than any tensor holds "
                f"(at most 2**63 - 1 {what})"
            )
        object.__setattr__(method, "count", number)
        return
    object.__setattr__(method, "sparsity", check_sparsity(owner, sparsity, count_too=True))


def count_to_prune(
    owner: str, sparsity: float | None, count: int | None, size: int, *, what: str = "entries"
) -> int:
    """How many of ``size`` units the level prunes: ``count``, or ``round(sparsity * size)``.

    ``round`` is Python's (half to even), as ``torch.nn.utils.prune`` counts a fraction.

    Raises:
        ValueError: a ``count`` above ``size``.
    """
    if count is not None:
        if count > size:
            raise ValueError(f"{owner}: count={count} is more than the {size} {what} there are")
        return count
    return round(float(sparsity or 0.0) * size)


def count_problem(owner: str, count: int | None, tensor: Any) -> LeafProblem | None:
    """A ``count`` above the tensor's size, as a LeafProblem (shape only: meta is fine)."""
    numel = tensor.numel()
    if count is not None and count > numel:
        return LeafProblem(
            ValueError,
            f"{describe(tensor)} ({numel} entries)",
            f"{owner} count={count} is more than the {numel} entries there are",
        )
    return None


def total_zeros(k: int, prev_mask: Tensor | None) -> int:
    """Zeros of a total-target mask: ``k``, or more where ``prev_mask`` had more."""
    return k if prev_mask is None else max(k, int(torch.count_nonzero(~prev_mask)))


def level_configs(st: Any, cls: type, *, max_count: int = 20, **fields: Any) -> Any:
    """A hypothesis strategy of ``cls`` configs with a fraction or a small count as level.

    ``st`` is ``hypothesis.strategies`` (passed in: the library never imports it);
    ``fields`` are strategies of the other fields.
    """
    fractions = st.one_of(
        st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
        st.floats(0.0, 1.0, allow_nan=False),
    )
    by_fraction = st.builds(cls, sparsity=fractions, **fields)
    by_count = st.builds(cls, count=st.integers(0, max_count), **fields)
    return st.one_of(by_fraction, by_count)
