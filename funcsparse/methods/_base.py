"""What every pruning method is: a frozen config that maps one tensor to a bool mask."""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, NamedTuple

from torch import Tensor

__all__ = [
    "LeafProblem",
    "MaskMethod",
    "describe",
    "registered_methods",
    "require_int",
    "require_real",
]

_REGISTRY: list[type[MaskMethod]] = []


def registered_methods() -> tuple[type[MaskMethod], ...]:
    """Every concrete method class that funcsparse ships, in definition order.

    ``funcsparse.testing``'s shared invariant suite runs on each of them, so a new method
    is covered (or the suite fails for lack of its ``configs``) as soon as it exists.
    """
    return tuple(_REGISTRY)


class LeafProblem(NamedTuple):
    """Why a method cannot handle a leaf: the exception to raise, what it got, what it needs."""

    error: type[Exception]
    got: str
    need: str


def describe(value: object) -> str:
    """A short description of a leaf for error messages."""
    if isinstance(value, Tensor):
        shape = tuple(value.shape)
        return f"a {value.dim()}-D {value.dtype} tensor of shape {shape}"
    return f"{type(value).__name__} {value!r}"


def require_int(owner: str, name: str, value: object) -> int:
    """``value`` as an int, or a TypeError naming ``owner.name`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def require_real(owner: str, name: str, value: object) -> float:
    """``value`` as a float that is not NaN, or a TypeError/ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: {name} must be a real number, got {type(value).__name__} {value!r}"
        )
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} must not be NaN")
    return float(value)


class MaskMethod(abc.ABC):
    """Base of every funcsparse method.

    A method is a frozen, keyword-only dataclass that validates itself on construction.
    Calling it on one tensor returns a ``torch.bool`` mask of the tensor's shape (``True``
    keeps a weight, ``False`` prunes it); nothing is mutated. ``fs.compute_masks`` calls
    :meth:`leaf_problem` on every matched leaf before computing any mask, so a bad leaf
    is reported before any work is done.

    ``vmappable`` says whether ``torch.func.vmap`` over a call gives every member's own mask;
    ``compute_masks(..., batch_dims=...)`` loops over the members of methods that say no.
    """

    vmappable: ClassVar[bool] = True
    #: The config field whose increase never un-prunes a weight (None: no such promise).
    level_field: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("funcsparse.") and not cls.__name__.startswith("_"):
            _REGISTRY.append(cls)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """A hypothesis strategy of valid configs of this method.

        ``st`` is ``hypothesis.strategies``, passed in by ``funcsparse.testing`` so that the
        library never imports hypothesis itself. Every method provides one next to its code.
        """
        raise NotImplementedError(f"{cls.__name__}.configs(st) is not implemented")

    def expected_zeros(self, tensor: Tensor) -> int | None:
        """The exact number of zeros promised for ``tensor``'s mask, or None (no promise)."""
        return None

    def structure_problem(self, tensor: Tensor, mask: Tensor) -> str | None:
        """Why ``mask`` breaks this method's pattern (blocks, N:M, band) for ``tensor``."""
        return None

    def __call__(self, tensor: Tensor, /, **kwargs: Any) -> Tensor:
        problem = self.leaf_problem(tensor)
        if problem is not None:
            name = type(self).__name__
            raise problem.error(f"{name}: got {problem.got}; {problem.need}")
        return self._mask(tensor.detach(), **kwargs)

    @abc.abstractmethod
    def leaf_problem(self, tensor: object) -> LeafProblem | None:
        """Why this method cannot mask ``tensor``, or None when it can."""

    @abc.abstractmethod
    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        """The mask of a detached tensor that :meth:`leaf_problem` accepted."""
