"""Magnitude: prune the entries of lowest absolute value (nn.utils.prune's L1Unstructured)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor

from funcsparse._select import keep_all_but_lowest
from funcsparse.methods._base import LeafProblem, MaskMethod, describe
from funcsparse.methods._level import (
    count_problem,
    count_to_prune,
    level_configs,
    set_level,
    total_zeros,
)

__all__ = ["Magnitude"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Magnitude(MaskMethod):
    """Zero the entries of lowest ``|w|`` in a tensor of any shape.

    The level is ``sparsity``, the fraction of the tensor's entries pruned
    (``round(sparsity * numel)`` of them, Python's round-half-to-even, as
    ``torch.nn.utils.prune`` counts), or ``count``, an exact number of entries. Exactly that
    many entries are pruned, whatever the ties: equal magnitudes are pruned in row-major
    order (the lower flat index first), and NaN counts as the largest magnitude, so NaN
    weights are kept. On tie-free inputs the mask equals
    ``torch.nn.utils.prune.l1_unstructured``'s bit for bit.

    Keyword data of a call (or ``fs.compute_masks`` pytrees of the same name):

    * ``scores``: importance scores of the tensor's shape, ranked as given in place of
      ``|w|``: the lowest score is pruned first, sign included (``-3`` before ``1``).
      ``prune.l1_unstructured(..., importance_scores=s)`` ranks ``|s|``: pass ``s.abs()``.
    * ``prev_mask``: the mask of an earlier round (``compute_masks(..., prev_masks=...)``).
      A weight pruned before stays pruned, and the level is the *total* target: previously
      pruned entries rank below every other entry, then the lowest are pruned up to the
      level. When more entries were pruned before than the level asks for, the mask is
      ``prev_mask`` itself (nothing is un-pruned, nothing new is pruned). For
      ``PruningContainer``'s "a fraction of what remains" semantics, convert the level
      first: pruning ``a`` of the remainder after ``p`` pruned is a total ``count`` of
      ``p + round(a * (numel - p))`` (see ``docs/unstructured.md``).

    Raising the level never un-prunes an entry (the masks nest). The method runs under
    ``torch.func.vmap`` (one mask per member). Called eagerly on a large tensor, it never
    copies it: ``|w|`` is computed chunk by chunk inside the selection, and the peak extra
    memory stays below the tensor's size (the bool mask is most of it).

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[0.5, -2.0, 0.1], [3.0, -0.2, 1.0]])
        >>> fs.Magnitude(0.5)(w)
        tensor([[False,  True, False],
                [ True, False,  True]])
        >>> fs.Magnitude(count=2)(w)
        tensor([[ True,  True, False],
                [ True, False,  True]])
        >>> prev = torch.tensor([[True, True, True], [False, True, True]])
        >>> fs.Magnitude(count=2)(w, prev_mask=prev)  # 3.0 stays pruned; one more, 0.1
        tensor([[ True,  True, False],
                [False,  True,  True]])

    Args:
        sparsity: the fraction of entries to prune, in ``[0, 1]``; may be given
            positionally. Give it or ``count``.
        count: the number of entries to prune, an int ``>= 0``. Give it or ``sparsity``.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count``, or one of the wrong type
            (bools and strings are refused); on a call, a tensor that is not floating-point,
            or ``scores`` that are not floating.
        ValueError: ``sparsity`` outside ``[0, 1]`` (or NaN), or a negative ``count``; on a
            call, a ``count`` above the tensor's number of entries, or ``scores`` /
            ``prev_mask`` of another shape than the tensor.

    References:
        Han, Pool, Tran and Dally, "Learning both Weights and Connections for Efficient
        Neural Networks", NeurIPS 2015 (arXiv:1506.02626); ``torch.nn.utils.prune.L1Unstructured``.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})
    uses_prev_mask: ClassVar[bool] = True

    def __post_init__(self) -> None:
        set_level(self)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid Magnitude configs: fractions (edges included) and small counts."""
        return level_configs(st, cls)

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "Magnitude needs a floating-point tensor"
            )
        return count_problem("Magnitude", self.count, tensor)

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        k = count_to_prune("Magnitude", self.sparsity, self.count, tensor.numel())
        scores = data.get("scores")
        # |w| is computed chunk by chunk inside the selection, never as a full-size copy.
        ranked = tensor if scores is None else scores
        return keep_all_but_lowest(ranked, k, data.get("prev_mask"), magnitude=scores is None)

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The level's count of entries, or the previous zeros where there are more."""
        k = count_to_prune("Magnitude", self.sparsity, self.count, tensor.numel())
        return total_zeros(k, data.get("prev_mask"))
