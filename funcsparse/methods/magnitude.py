"""Magnitude: prune the entries of lowest absolute value (nn.utils.prune's L1Unstructured)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._select import smallest_k
from funcsparse.methods._amount import check_amount, count_to_prune
from funcsparse.methods._base import LeafProblem, MaskMethod, describe

__all__ = ["Magnitude"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Magnitude(MaskMethod):
    """Zero the ``amount`` entries of lowest ``|w|`` in a tensor of any shape.

    ``amount`` is read as ``torch.nn.utils.prune`` reads it: a float is a fraction of the
    tensor's entries (``round(amount * numel)`` of them, Python's round-half-to-even), an int
    is a count. Exactly that many entries are pruned, whatever the ties: equal magnitudes are
    pruned in row-major order (the lower flat index first), and NaN counts as the largest
    magnitude, so NaN weights are kept. On tie-free inputs the mask equals
    ``torch.nn.utils.prune.l1_unstructured``'s bit for bit.

    Keyword data of a call (or ``fs.compute_masks`` pytrees of the same name):

    * ``scores``: importance scores of the tensor's shape; entries are ranked by ``|scores|``
      instead of ``|w|``, as ``prune.l1_unstructured(..., importance_scores=scores)`` does.
    * ``prev_mask``: the mask of an earlier round (``compute_masks(..., prev_masks=...)``).
      A weight pruned before stays pruned, and ``amount`` is the *total* target: previously
      pruned entries rank below every other entry, then the ``amount`` lowest are pruned. When
      more entries were pruned before than ``amount`` asks for, the mask is ``prev_mask``
      itself (nothing is un-pruned, nothing new is pruned). For ``PruningContainer``'s
      "``amount`` of what remains" semantics, convert the amount first: pruning ``a`` of the
      remainder after ``p`` pruned is a total of ``p + round(a * (numel - p))`` (see
      ``docs/unstructured.md``).

    Raising ``amount`` never un-prunes an entry (the masks nest). The method runs under
    ``torch.func.vmap`` (one mask per member).

    Examples:
        >>> import torch
        >>> from funcsparse.methods.magnitude import Magnitude
        >>> w = torch.tensor([[0.5, -2.0, 0.1], [3.0, -0.2, 1.0]])
        >>> Magnitude(amount=0.5)(w)
        tensor([[False,  True, False],
                [ True, False,  True]])
        >>> Magnitude(amount=2)(w)
        tensor([[ True,  True, False],
                [ True, False,  True]])
        >>> prev = torch.tensor([[True, True, True], [False, True, True]])
        >>> Magnitude(amount=2)(w, prev_mask=prev)  # 3.0 stays pruned; one more, 0.1
        tensor([[ True,  True, False],
                [False,  True,  True]])

    Args:
        amount: a float in ``[0, 1]`` (the fraction of entries to prune) or a non-negative
            int (the count). Required.

    Raises:
        TypeError: ``amount`` is not an int or float (bools and strings are refused); on a
            call, a tensor that is not floating-point, or ``scores`` that are not floating.
        ValueError: a float ``amount`` outside ``[0, 1]`` (or NaN), or a negative int; on a
            call, an int ``amount`` above the tensor's number of entries, or ``scores`` /
            ``prev_mask`` of another shape than the tensor.

    References:
        Han, Pool, Tran and Dally, "Learning both Weights and Connections for Efficient
        Neural Networks", NeurIPS 2015 (arXiv:1506.02626); ``torch.nn.utils.prune.L1Unstructured``.
    """

    amount: float | int

    level_field: ClassVar[str | None] = "amount"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})
    uses_prev_mask: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_amount("Magnitude", self.amount)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid Magnitude configs: fractions (edges included) and small counts."""
        fractions = st.one_of(
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
            st.floats(0.0, 1.0, allow_nan=False),
        )
        return st.builds(cls, amount=st.one_of(fractions, st.integers(0, 20)))

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "Magnitude needs a floating-point tensor"
            )
        return _amount_problem("Magnitude", self.amount, tensor)

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        ranking = data.get("scores", tensor).abs()  # a fresh tensor, which smallest_k may reuse
        k = count_to_prune("Magnitude", self.amount, tensor.numel())
        return _prune_lowest(ranking, k, data.get("prev_mask"))

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """``count_to_prune(amount, numel)``, or the previous zeros where there are more."""
        k = count_to_prune("Magnitude", self.amount, tensor.numel())
        return _total_zeros(k, data.get("prev_mask"))


def _amount_problem(owner: str, amount: float | int, tensor: Tensor) -> LeafProblem | None:
    """A count ``amount`` above the tensor's size, as a LeafProblem (shape only: meta is fine)."""
    numel = tensor.numel()
    if isinstance(amount, numbers.Integral) and amount > numel:
        return LeafProblem(
            ValueError,
            f"{describe(tensor)} ({numel} entries)",
            f"{owner} amount={amount} is more than the {numel} entries there are",
        )
    return None


def _prune_lowest(ranking: Tensor, k: int, prev_mask: Tensor | None) -> Tensor:
    """Keep all but the ``k`` lowest-ranked entries; ``prev_mask``'s zeros rank lowest and stay.

    Branch-free in the data (``k`` depends on the shape only), so it runs under vmap.
    """
    if prev_mask is not None:
        below_all = torch.full_like(ranking, -torch.inf)
        ranking = torch.where(prev_mask, ranking, below_all)
    pruned = smallest_k(ranking.reshape(-1), k).reshape(ranking.shape)
    if prev_mask is not None:
        pruned = pruned | ~prev_mask
    return pruned.logical_not_()  # fresh from smallest_k: negate in place, no new buffer


def _total_zeros(k: int, prev_mask: Tensor | None) -> int:
    """Zeros of a total-target mask: ``k``, or more where ``prev_mask`` had more."""
    return k if prev_mask is None else max(k, int(torch.count_nonzero(~prev_mask)))
