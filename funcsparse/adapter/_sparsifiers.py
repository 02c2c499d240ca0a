"""WeightNormSparsifier and NearlyDiagonalSparsifier: torch.ao's objects over fs methods."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any, cast

from torch import Tensor, nn

from funcsparse._errors import describe, short_repr
from funcsparse.adapter._base import BaseSparsifier, group_error
from funcsparse.adapter._utils import UnsupportedOptionError
from funcsparse.methods import NearlyDiagonal, WeightNorm
from funcsparse.methods._base import MaskMethod

__all__ = ["NearlyDiagonalSparsifier", "WeightNormSparsifier"]

#: About how many characters of a method's own explanation an adapter message shows.
_MAX_NEED = 200


def _said(prefix: str, text: str) -> str:
    """``text`` after ``prefix: `` (just ``text`` for an empty prefix)."""
    return f"{prefix}: {text}" if prefix else text


def _clamped_level(owner: str, level: object) -> float:
    """torch.ao's level rule: ``<= 0`` keeps everything, ``>= 1`` selects every block.

    Any real number is accepted (``10**400`` included, compared without a float
    conversion); bools, non-numbers and NaN are refused.
    """
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        text = f"sparsity_level must be a real number, got {describe(level)}"
        raise TypeError(_said(owner, text))
    number = cast(float, level)  # any Real: compared as given, no float conversion yet
    if number != number:  # NaN: no comparison below holds for it
        raise ValueError(_said(owner, "sparsity_level must not be NaN"))
    if number <= 0:
        return 0.0
    if number >= 1:
        return 1.0
    return float(number)


def _leaf_check(method: MaskMethod, tensor: Tensor, owner: str, what: str) -> None:
    """Raise what ``method`` would raise on ``tensor`` (naming ``owner`` and ``what``)."""
    problem = method.check_leaf(tensor)
    if problem is not None:
        need = problem.need
        if len(need) > _MAX_NEED:  # a huge block or count spelled out: keep the message short
            half = _MAX_NEED // 2 - 2
            need = f"{need[:half]}...{need[-half:]}"
        raise problem.error(f"{owner}: {what}: got {problem.got}; {need}")


class WeightNormSparsifier(BaseSparsifier):
    """torch.ao.pruning.WeightNormSparsifier, with masks from :class:`funcsparse.WeightNorm`.

    Same constructor, defaults, config keys and masks (bit for bit on tie-free weights). As
    in torch.ao, ``step()`` scores the tensor as the module sees it: the weight times its
    current mask. Levels outside ``[0, 1]`` are clamped, as torch.ao does.

    Unlike torch.ao, every option is checked by the constructor, and every group's config by
    ``prepare`` against its tensor (before anything changes), so a bad option never leaves a
    half-prepared model. A block shape that does not divide the weight with ``0 <
    zeros_per_block < block size`` is refused there (a ValueError naming the fqn, the shape
    and the block): padding would stand in for real zeros, so edge entries would never be
    pruned (torch.ao crashes, or stores a padded-shape mask). Whole blocks
    (``zeros_per_block`` equal to the block size) over such shapes behave as in torch.ao.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from funcsparse.adapter import WeightNormSparsifier
        >>> model = nn.Sequential(nn.Linear(8, 4, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.arange(32.0).view(4, 8) - 15.5)
        >>> sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
        >>> sparsifier.prepare(model, config=None)
        >>> sparsifier.step()
        >>> model[0].parametrizations.weight[0].mask
        tensor([[1., 1., 1., 1., 1., 1., 1., 1.],
                [0., 0., 0., 0., 0., 0., 0., 0.],
                [0., 0., 0., 0., 0., 0., 0., 0.],
                [1., 1., 1., 1., 1., 1., 1., 1.]])

    Args:
        sparsity_level: fraction of blocks zeroed (any real number; clamped to ``[0, 1]``).
            Default 0.5.
        sparse_block_shape: block shape, two positive ints. Default ``(1, 4)``.
        zeros_per_block: zeros per selected block, from 0 to the block size. Default None:
            the whole block.
        norm: 1, 2, a callable or None (2).
        mask_dtype: dtype of new masks; ``torch.bool`` for one byte per weight. Default None:
            the weight's dtype, as torch.ao.

    Raises:
        TypeError: an argument of the wrong type (a str level or block, a float
            ``zeros_per_block``, a ``mask_dtype`` that is not a ``torch.dtype``).
        ValueError: a NaN level, a block side that is not positive, ``zeros_per_block``
            negative or above the block size, an unsupported ``mask_dtype``.
        UnsupportedOptionError: ``norm`` is a number other than 1 or 2 (a ValueError that is
            also torch.ao's NotImplementedError, with its message).
    """

    def __init__(
        self,
        sparsity_level: float = 0.5,
        sparse_block_shape: tuple[int, int] = (1, 4),
        zeros_per_block: int | None = None,
        norm: Callable[[Tensor], Tensor] | int | None = None,
        *,
        mask_dtype: Any = None,
    ) -> None:
        owner = type(self).__name__
        if norm is None:
            norm = 2
        if not callable(norm):
            if isinstance(norm, bool) or not isinstance(norm, numbers.Real):
                raise TypeError(f"{owner}: norm must be 1, 2 or a callable, got {describe(norm)}")
            if norm not in (1, 2):
                raise UnsupportedOptionError(f"L-{short_repr(norm)} is not yet implemented.")
            norm = int(norm)
        self.norm = norm
        _block_size(owner, sparse_block_shape)
        if zeros_per_block is None:
            zeros_per_block = reduce(operator.mul, sparse_block_shape)
        defaults = {
            "sparsity_level": sparsity_level,
            "sparse_block_shape": sparse_block_shape,
            "zeros_per_block": zeros_per_block,
        }
        self._method(owner, **defaults)
        super().__init__(defaults=defaults, mask_dtype=mask_dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "norm": self.norm}

    def norm_fn(self, tensor: Tensor) -> Tensor:
        """``norm`` applied elementwise, as torch.ao's ``norm_fn``."""
        return WeightNorm(norm=self.norm)._scores(tensor)

    def _method(
        self,
        owner: str,
        *,
        sparsity_level: object,
        sparse_block_shape: object,
        zeros_per_block: object,
        **kwargs: Any,
    ) -> WeightNorm:
        """The :class:`funcsparse.WeightNorm` of a config, or the error naming ``owner``."""
        if isinstance(zeros_per_block, bool) or not isinstance(zeros_per_block, numbers.Integral):
            text = f"zeros_per_block must be an int, got {describe(zeros_per_block)}"
            raise TypeError(_said(owner, text))
        size, zeros = _block_size(owner, sparse_block_shape), int(zeros_per_block)
        if not 0 <= zeros <= size:  # torch.ao's words, the values kept short
            text = (
                "Number of zeros per block should be positive"
                if zeros < 0
                else "Number of zeros per block cannot be more than the total number of "
                "elements in that block"
            )
            shown = f"zeros_per_block={short_repr(zeros_per_block)}, block size {short_repr(size)}"
            text += f" ({shown})"
            raise ValueError(_said(owner, text))
        level = _clamped_level(owner, sparsity_level)
        try:
            return WeightNorm(
                sparsity=level,
                sparse_block_shape=tuple(sparse_block_shape),  # type: ignore[arg-type]
                zeros_per_block=zeros,
                norm=self.norm,
            )
        except (TypeError, ValueError) as err:
            raise type(err)(_said(owner, str(err))) from None

    def _check_config(self, group: dict[str, Any], tensor: Tensor, owner: str) -> None:
        fqn = group["tensor_fqn"]
        try:
            method = self._method("", **_config(group, _WEIGHT_NORM_KEYS))
        except (TypeError, ValueError) as err:
            raise group_error(owner, fqn, err) from None
        what = (
            f"group {fqn!r} (sparse_block_shape={short_repr(tuple(method.sparse_block_shape))}, "
            f"zeros_per_block={short_repr(method.block_zeros)})"
        )
        _leaf_check(method, tensor, owner, what)

    def compute_mask(  # type: ignore[override]
        self,
        module: nn.Module,
        tensor_name: str,
        sparsity_level: float,
        sparse_block_shape: tuple[int, int],
        zeros_per_block: int,
        **kwargs: Any,
    ) -> Tensor:
        method = self._method(
            "",
            sparsity_level=sparsity_level,
            sparse_block_shape=sparse_block_shape,
            zeros_per_block=zeros_per_block,
        )
        return method(getattr(module, tensor_name))

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        self._write_mask(module, tensor_name, self.compute_mask(module, tensor_name, **kwargs))


class NearlyDiagonalSparsifier(BaseSparsifier):
    """torch.ao.pruning.NearlyDiagonalSparsifier, masks from :class:`funcsparse.NearlyDiagonal`.

    The constructor refuses a ``nearliness`` that can never work (not an int, even and
    positive), and ``prepare`` a config that cannot mask its tensor (a band wider than the
    weight), naming the fqn; torch.ao raises these at ``step()``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from funcsparse.adapter import NearlyDiagonalSparsifier
        >>> model = nn.Sequential(nn.Linear(4, 4, bias=False))
        >>> sparsifier = NearlyDiagonalSparsifier(nearliness=3)
        >>> sparsifier.prepare(model, config=None)
        >>> sparsifier.step()
        >>> model[0].parametrizations.weight[0].mask.int()
        tensor([[1, 1, 0, 0],
                [1, 1, 1, 0],
                [0, 1, 1, 1],
                [0, 0, 1, 1]], dtype=torch.int32)

    Args:
        nearliness: diagonals kept (odd), or <= 0 for an all-zero mask. Default 1.
        mask_dtype: as :class:`WeightNormSparsifier`.

    Raises:
        TypeError: ``nearliness`` is not an int, ``mask_dtype`` not a ``torch.dtype``.
        ValueError: ``nearliness`` is even and positive, ``mask_dtype`` is unsupported.
    """

    def __init__(self, nearliness: int = 1, *, mask_dtype: Any = None) -> None:
        self._method(type(self).__name__, nearliness=nearliness)
        super().__init__(defaults={"nearliness": nearliness}, mask_dtype=mask_dtype)

    @staticmethod
    def _method(owner: str, *, nearliness: object, **kwargs: Any) -> NearlyDiagonal:
        try:
            return NearlyDiagonal(nearliness=nearliness)  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise type(err)(_said(owner, str(err))) from None

    def _check_config(self, group: dict[str, Any], tensor: Tensor, owner: str) -> None:
        fqn = group["tensor_fqn"]
        try:
            method = self._method("", **_config(group, ("nearliness",)))
        except (TypeError, ValueError) as err:
            raise group_error(owner, fqn, err) from None
        _leaf_check(method, tensor, owner, f"group {fqn!r} (nearliness={method.nearliness})")

    def compute_mask(  # type: ignore[override]
        self, module: nn.Module, tensor_name: str, nearliness: int, **kwargs: Any
    ) -> Tensor:
        method = self._method("", nearliness=nearliness)
        return method(getattr(module, tensor_name))

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        self._write_mask(module, tensor_name, self.compute_mask(module, tensor_name, **kwargs))


_WEIGHT_NORM_KEYS = ("sparsity_level", "sparse_block_shape", "zeros_per_block")


def _config(group: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The values of ``keys`` in ``group``, or a ValueError naming the missing one."""
    missing = [key for key in keys if key not in group]
    if missing:
        raise ValueError(f"the config has no {missing[0]!r} (needs {list(keys)})")
    return {key: group[key] for key in keys}


def _block_size(owner: str, shape: object) -> int:
    """Entries in a ``sparse_block_shape``: a pair of positive ints, or an error."""
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, (str, bytes))
        or len(shape) != 2
        or not all(
            isinstance(side, numbers.Integral) and not isinstance(side, bool) for side in shape
        )
    ):
        text = f"sparse_block_shape must be a pair of ints, got {describe(shape)}"
        raise TypeError(_said(owner, text))
    if shape[0] <= 0 or shape[1] <= 0:
        text = f"sparse_block_shape sides must be positive, got {short_repr(tuple(shape))}"
        raise ValueError(_said(owner, text))
    return math.prod(shape)
