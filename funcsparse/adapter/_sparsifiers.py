"""WeightNormSparsifier and NearlyDiagonalSparsifier: torch.ao's objects over fs methods."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce
from typing import Any

from torch import Tensor, nn

from funcsparse.adapter._base import BaseSparsifier
from funcsparse.methods import NearlyDiagonal, WeightNorm

__all__ = ["NearlyDiagonalSparsifier", "WeightNormSparsifier"]


class WeightNormSparsifier(BaseSparsifier):
    """torch.ao.pruning.WeightNormSparsifier, with masks from :class:`funcsparse.WeightNorm`.

    Same constructor, defaults, config keys and masks (bit for bit on tie-free weights). As
    in torch.ao, ``step()`` scores the tensor as the module sees it: the weight times its
    current mask.

    Args:
        sparsity_level: fraction of blocks zeroed. Default 0.5.
        sparse_block_shape: block shape. Default ``(1, 4)``.
        zeros_per_block: zeros per selected block. Default None: the whole block.
        norm: 1, 2, a callable or None (2).
        mask_dtype: dtype of new masks; ``torch.bool`` for one byte per weight. Default None:
            the weight's dtype, as torch.ao.

    Raises:
        NotImplementedError: ``norm`` is an int other than 1 or 2 (torch.ao's error).
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
        if zeros_per_block is None:
            zeros_per_block = reduce(operator.mul, sparse_block_shape)
        if norm is None:
            norm = 2
        if not callable(norm) and norm not in (1, 2):
            raise NotImplementedError(f"L-{norm} is not yet implemented.")
        self.norm = norm
        defaults = {
            "sparsity_level": sparsity_level,
            "sparse_block_shape": sparse_block_shape,
            "zeros_per_block": zeros_per_block,
        }
        super().__init__(defaults=defaults, mask_dtype=mask_dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "norm": self.norm}

    def norm_fn(self, tensor: Tensor) -> Tensor:
        """``norm`` applied elementwise, as torch.ao's ``norm_fn``."""
        return WeightNorm(norm=self.norm)._scores(tensor)

    def compute_mask(  # type: ignore[override]
        self,
        module: nn.Module,
        tensor_name: str,
        sparsity_level: float,
        sparse_block_shape: tuple[int, int],
        zeros_per_block: int,
        **kwargs: Any,
    ) -> Tensor:
        # torch.ao keeps everything at levels <= 0 and selects every block at >= 1.
        level = sparsity_level
        if isinstance(level, (int, float)) and not isinstance(level, bool) and level == level:
            level = min(1.0, max(0.0, float(level)))
        method = WeightNorm(
            sparsity=level,
            sparse_block_shape=tuple(sparse_block_shape),  # type: ignore[arg-type]
            zeros_per_block=zeros_per_block,
            norm=self.norm,
        )
        return method(getattr(module, tensor_name))

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        self._write_mask(module, tensor_name, self.compute_mask(module, tensor_name, **kwargs))


class NearlyDiagonalSparsifier(BaseSparsifier):
    """torch.ao.pruning.NearlyDiagonalSparsifier, masks from :class:`funcsparse.NearlyDiagonal`.

    Args:
        nearliness: diagonals kept (odd), or <= 0 for an all-zero mask. Default 1.
        mask_dtype: as :class:`WeightNormSparsifier`.
    """

    def __init__(self, nearliness: int = 1, *, mask_dtype: Any = None) -> None:
        super().__init__(defaults={"nearliness": nearliness}, mask_dtype=mask_dtype)

    def compute_mask(  # type: ignore[override]
        self, module: nn.Module, tensor_name: str, nearliness: int, **kwargs: Any
    ) -> Tensor:
        return NearlyDiagonal(nearliness=nearliness)(getattr(module, tensor_name))

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        self._write_mask(module, tensor_name, self.compute_mask(module, tensor_name, **kwargs))
