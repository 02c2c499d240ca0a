"""NearlyDiagonal: keep a band around the main diagonal (torch.ao's NearlyDiagonalSparsifier)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int

__all__ = ["NearlyDiagonal"]

# Bands at least this many diagonals to each side are cut from a full mask by triu/tril
# (three passes over the mask); narrower ones are filled diagonal by diagonal.
_FILL_DIAGONALS_MAX = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class NearlyDiagonal(MaskMethod):
    """Keep the ``nearliness`` diagonals closest to the main diagonal of a 2-D weight.

    Entry ``(i, j)`` is kept when ``|i - j| <= nearliness // 2``. ``nearliness`` 1 keeps the
    main diagonal only; ``nearliness <= 0`` prunes everything. The masks and errors equal
    ``torch.ao.pruning.NearlyDiagonalSparsifier``'s, built by filling diagonals (or by
    ``triu``/``tril`` for wide bands) instead of a Python loop over rows.

    Examples:
        >>> import torch, funcsparse as fs
        >>> fs.NearlyDiagonal(nearliness=3)(torch.ones(4, 4)).int()
        tensor([[1, 1, 0, 0],
                [1, 1, 1, 0],
                [0, 1, 1, 1],
                [0, 0, 1, 1]], dtype=torch.int32)

    Args:
        nearliness: number of diagonals kept, odd when positive. Default 1.

    Raises:
        TypeError: ``nearliness`` is not an int.
        ValueError: ``nearliness`` is positive and even; on a call with positive
            ``nearliness``, the weight is not 2-D or ``nearliness // 2 >= min(height, width)``
            (with ``nearliness <= 0`` any tensor gets an all-zero mask, as in torch.ao).
    """

    nearliness: int = 1

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid NearlyDiagonal configs: odd nearliness 1 to 9, or a non-positive one."""
        odd = st.integers(0, 4).map(lambda i: 2 * i + 1)
        return st.builds(cls, nearliness=st.one_of(odd, st.integers(-2, 0)))

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """Entries off the band of ``2 * (nearliness // 2) + 1`` diagonals (and, with a
        ``prev_mask``, the entries it prunes)."""
        prev_mask = data.get("prev_mask")
        if prev_mask is not None:
            return int((~(self._band(tensor) & prev_mask.cpu())).sum())
        if self.nearliness <= 0:
            return tensor.numel()
        height, width = tensor.shape
        reach = self.nearliness // 2
        rows = torch.arange(height)
        kept = ((rows + reach + 1).clamp(max=width) - (rows - reach).clamp(min=0)).clamp(min=0)
        kept = kept.sum()
        return height * width - int(kept)

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """The mask must be the band ``|i - j| <= nearliness // 2`` exactly (within
        ``prev_mask``, where one is given: the kept set only shrinks)."""
        band = self._band(tensor)
        prev_mask = data.get("prev_mask")
        if prev_mask is not None:
            band &= prev_mask.cpu()
        wrong = (mask.cpu() != band).nonzero()
        if wrong.numel():
            i, j = (int(v) for v in wrong[0])
            state = "kept" if bool(mask[i, j]) else "pruned"
            return f"entry ({i}, {j}) is {state}, against the band of nearliness {self.nearliness}"
        return None

    def _band(self, tensor: Tensor) -> Tensor:
        """The band ``|i - j| <= nearliness // 2`` on the CPU (all False at ``nearliness <= 0``)."""
        if self.nearliness <= 0:
            return torch.zeros(tensor.shape, dtype=torch.bool)
        height, width = tensor.shape
        offset = torch.arange(width)[None, :] - torch.arange(height)[:, None]
        return offset.abs() <= self.nearliness // 2

    def __post_init__(self) -> None:
        nearliness = require_int("NearlyDiagonal", "nearliness", self.nearliness)
        if nearliness > 0 and nearliness % 2 == 0:
            raise ValueError(
                f"NearlyDiagonal: nearliness can only be an odd number, got {nearliness}"
            )

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor):
            return LeafProblem(TypeError, describe(tensor), "NearlyDiagonal needs a tensor")
        if self.nearliness <= 0:
            return None  # torch.ao zeroes a tensor of any shape before looking at it
        if tensor.dim() != 2:
            return LeafProblem(ValueError, describe(tensor), "NearlyDiagonal needs 2-D weights")
        if self.nearliness // 2 >= min(tensor.shape):
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"nearliness cannot be larger than the dimensions of tensor "
                f"(nearliness {self.nearliness} needs both sides > {self.nearliness // 2})",
            )
        return None

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        if self.nearliness <= 0:
            return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        reach = self.nearliness // 2
        if reach >= _FILL_DIAGONALS_MAX:
            mask = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
            return mask.triu_(-reach).tril_(reach)
        # A narrow band: one zeroing pass, then fill the 2 * reach + 1 diagonals in place.
        mask = torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        for offset in range(-reach, reach + 1):
            mask.diagonal(offset).fill_(True)
        return mask
