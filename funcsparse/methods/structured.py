"""Structured pruning: whole slices along one dim (rows, output channels, conv filters).

``LnStructured`` prunes the slices of lowest Ln norm and ``RandomStructured`` random ones,
as ``torch.nn.utils.prune.ln_structured`` and ``random_structured`` do, as pure functions.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._select import smallest_k
from funcsparse.methods._amount import check_amount, count_to_prune
from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int, require_real
from funcsparse.methods._seeds import SEED_LIMIT as _SEED_LIMIT
from funcsparse.methods._seeds import leaf_seed

__all__ = ["LnStructured", "RandomStructured", "leaf_seed"]


def _slice_problem(owner: str, tensor: Tensor, dim: int, amount: float) -> LeafProblem | None:
    """Why ``owner`` cannot prune slices of ``tensor`` along ``dim`` (prune's checks)."""
    ndim = tensor.dim()
    if ndim <= 1:
        return LeafProblem(
            ValueError,
            describe(tensor),
            f"structured pruning needs a tensor of 2 or more dims ({owner} prunes whole "
            f"slices along dim={dim})",
        )
    if not -ndim <= dim < ndim:
        return LeafProblem(
            ValueError,
            f"dim={dim} for {describe(tensor)}",
            f"dim must be in [{-ndim}, {ndim - 1}]",
        )
    size = tensor.shape[dim]
    if isinstance(amount, numbers.Integral) and amount > size:
        return LeafProblem(
            ValueError,
            f"amount={amount} for {describe(tensor)}",
            f"amount={amount} is more than the {size} slices along dim={dim}",
        )
    return None


def _n_pruned(owner: str, amount: float, tensor: Tensor, dim: int) -> int:
    """Slices along ``dim`` that ``amount`` prunes (nn.utils.prune's rounding)."""
    return count_to_prune(owner, amount, tensor.shape[dim], what="slices")


def _keep_slices(keep: Tensor, shape: torch.Size, dim: int) -> Tensor:
    """A per-slice bool vector along ``dim`` broadcast to a mask of ``shape`` (own memory)."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return keep.reshape(view).expand(shape).contiguous()


def _expected_zeros(
    owner: str, amount: float, dim: int, tensor: Tensor, data: dict[str, Any]
) -> int | None:
    """Pruned slices times the slice size; None where a ``prev_mask`` has zeros of its own."""
    prev_mask = data.get("prev_mask")
    if prev_mask is not None and not bool(prev_mask.all()):
        return None
    if tensor.numel() == 0:
        return 0
    size = tensor.shape[dim]
    return _n_pruned(owner, amount, tensor, dim) * (tensor.numel() // size)


def _slices_problem(
    owner: str, amount: float, dim: int, tensor: Tensor, mask: Tensor, data: dict[str, Any]
) -> str | None:
    """Every slice all kept or all pruned, and exactly the promised number pruned.

    With a ``prev_mask``, the mask must be ``prev_mask`` with exactly that many whole slices
    zeroed: its zeros include ``prev_mask``'s, and its other zeros fill whole slices, at most
    as many as promised, among at least as many all-zero slices.
    """
    if tensor.numel() == 0:
        return None
    dim = dim % tensor.dim()
    size = tensor.shape[dim]
    count = _n_pruned(owner, amount, tensor, dim)
    rows = mask.detach().cpu().movedim(dim, 0).reshape(size, -1)
    all_pruned = ~rows.any(dim=1)
    prev_mask = data.get("prev_mask")
    if prev_mask is None:
        partial = rows.any(dim=1) & ~rows.all(dim=1)
        if bool(partial.any()):
            index = int(partial.nonzero()[0])
            zeros = int((~rows[index]).sum())
            return (
                f"slice {index} along dim={dim} has {zeros} of {rows.shape[1]} entries pruned; "
                "a slice is all kept or all pruned"
            )
        if int(all_pruned.sum()) != count:
            return (
                f"{int(all_pruned.sum())} of {size} slices along dim={dim} are pruned; "
                f"expected {count} (amount={amount})"
            )
        return None
    prev_rows = prev_mask.detach().cpu().movedim(dim, 0).reshape(size, -1)
    if bool((rows & ~prev_rows).any()):
        return "the mask keeps entries that prev_mask prunes"
    touched = (~rows & prev_rows).any(dim=1)
    if bool((touched & ~all_pruned).any()):
        index = int((touched & ~all_pruned).nonzero()[0])
        return (
            f"slice {index} along dim={dim} has new zeros but is not all pruned; pruning "
            "takes whole slices"
        )
    if not int(touched.sum()) <= count <= int(all_pruned.sum()):
        return (
            f"{int(touched.sum())} slices along dim={dim} are newly pruned and "
            f"{int(all_pruned.sum())} are all pruned; {count} pruned slices cannot explain it "
            f"(amount={amount})"
        )
    return None


def _norms(tensor: Tensor, n: float | str, dim: int) -> Tensor:
    """The Ln norm of every slice along ``dim``, as ``prune._compute_norm`` computes it.

    The same ``torch.norm`` call, so the norms are bit-identical to prune's. ``'fro'`` over
    more than two dims (4-D conv weights), where ``torch.norm`` raises, is the vector 2-norm
    over them, which is the Frobenius norm of the flattened slice.
    """
    dims = list(range(tensor.dim()))
    dims.remove(dim)
    norms: Tensor
    if n == "fro" and len(dims) > 2:
        norms = torch.linalg.vector_norm(tensor, 2, dims)
    else:
        norms = torch.norm(tensor, p=n, dim=dims)
    return norms


@dataclasses.dataclass(frozen=True, kw_only=True)
class LnStructured(MaskMethod):
    """Prune the slices along ``dim`` of lowest Ln norm: rows, output channels, conv filters.

    A slice is everything with one index along ``dim``: ``dim=0`` selects the rows of a
    Linear weight (its output features) or the filters of a Conv2d weight ``(out, in, kh,
    kw)``; ``dim=1`` the columns (input features, input channels). Each slice's score is its
    Ln norm over all other dims, computed by the same ``torch.norm`` call as
    ``torch.nn.utils.prune.ln_structured``, and the ``amount`` slices of lowest norm are
    pruned whole: ``round(amount * size)`` slices for a float ``amount``, ``amount`` slices
    for an int.

    The masks equal ``torch.nn.utils.prune.ln_structured``'s bit for bit when the slice norms
    have no ties. prune keeps the ``topk`` largest norms, so which of two tied slices it
    prunes is up to ``topk``; funcsparse prunes the lower index first (NaN norms count as the
    largest), so the count is always exact. ``n='fro'`` on tensors of more than 3 dims, where
    ``torch.norm`` (and so prune) raises, uses the 2-norm of each flattened slice, which is
    its Frobenius norm.

    ``scores`` (keyword data) are importance scores standing in for the weight, as prune's
    ``importance_scores``: the norms are taken over the scores. A ``prev_mask`` (keyword
    data) is intersected with the result: slices are ranked over the whole tensor and
    ``amount`` counts slices of the whole tensor, as one ``prune.LnStructured.compute_mask``
    with ``default_mask=prev_mask`` does. (prune's iterative ``ln_structured`` on an already
    pruned module ranks only the slices not yet all zero, and a float ``amount`` is a
    fraction of those.)

    Examples:
        >>> import torch
        >>> from funcsparse.methods.structured import LnStructured
        >>> w = torch.tensor([[1.0, -2.0], [0.1, 0.2], [3.0, 0.0]])
        >>> LnStructured(amount=1, n=2, dim=0)(w)  # the row of lowest L2 norm
        tensor([[ True,  True],
                [False, False],
                [ True,  True]])
        >>> LnStructured(amount=0.5, n=1, dim=1)(w)  # half the columns, by L1 norm
        tensor([[ True, False],
                [ True, False],
                [ True, False]])
        >>> conv = torch.randn(8, 3, 3, 3)  # Conv2d(3, 8, 3).weight: 8 filters
        >>> mask = LnStructured(amount=0.25, n=2, dim=0)(conv)
        >>> (~mask).flatten(1).all(1).sum().item()  # filters pruned whole
        2

    Args:
        amount: a float in [0, 1] (the fraction of slices to prune) or an int >= 0 (how
            many slices), as in ``torch.nn.utils.prune``.
        n: the norm's order, as ``p`` of ``torch.norm``: an int or float (``1``, ``2``,
            ``math.inf``, ``-math.inf``, ...), ``'fro'`` or ``'nuc'`` (3-D tensors only:
            the nuclear norm of each 2-D slice).
        dim: the dim whose indices are the slices; negative dims count from the end.

    Raises:
        TypeError: ``amount`` is not a real number (bools refused), ``n`` is neither a real
            number nor a string, ``dim`` is not an int; on a call, a leaf (or ``scores``)
            that is not a floating tensor.
        ValueError: ``amount`` is a float outside [0, 1] or a negative int, ``n`` is NaN or a
            string other than ``'fro'``/``'nuc'``; on a call, a tensor of fewer than 2 dims,
            ``dim`` out of range, an int ``amount`` above the number of slices, ``n='nuc'``
            on a tensor that is not 3-D.

    References:
        Li, Kadav, Durdanovic, Samet, Graf. "Pruning Filters for Efficient ConvNets".
        ICLR 2017. arXiv:1608.08710 (filters of lowest L1 norm).
        ``torch.nn.utils.prune.LnStructured`` (PyTorch), whose semantics this reproduces.
    """

    amount: float
    n: float | str
    dim: int

    level_field: ClassVar[str | None] = "amount"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})

    def __post_init__(self) -> None:
        check_amount("LnStructured", self.amount)
        if isinstance(self.n, str):
            if self.n not in ("fro", "nuc"):
                raise ValueError(
                    f"LnStructured: n must be a number, 'fro' or 'nuc', got {self.n!r}"
                )
        else:
            require_real("LnStructured", "n", self.n)
        require_int("LnStructured", "dim", self.dim)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid configs: fractions and small counts, n in (1, 2, inf, -inf, 'fro'), dims
        0, 1, -1."""
        amounts = st.one_of(
            st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0), st.integers(0, 3)
        )
        return st.builds(
            cls,
            amount=amounts,
            n=st.sampled_from([1, 2, math.inf, -math.inf, "fro"]),
            dim=st.sampled_from([0, 1, -1]),
        )

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "LnStructured needs floating-point weights"
            )
        problem = _slice_problem("LnStructured", tensor, self.dim, self.amount)
        if problem is not None:
            return problem
        if self.n == "nuc" and tensor.dim() != 3:
            return LeafProblem(
                ValueError,
                describe(tensor),
                "n='nuc' needs a 3-D tensor (the nuclear norm of each 2-D slice)",
            )
        return None

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        scores = data.get("scores", tensor)  # importance scores stand in for the weight
        dim = self.dim % tensor.dim()
        size = tensor.shape[dim]
        count = _n_pruned("LnStructured", self.amount, tensor, dim)
        if count == 0 or tensor.numel() == 0:
            return torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        if count >= size:
            return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        pruned = smallest_k(_norms(scores, self.n, dim), count)
        return _keep_slices(pruned.logical_not(), tensor.shape, dim)

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """Pruned slices times the slice size (None with a ``prev_mask`` that has zeros)."""
        return _expected_zeros("LnStructured", self.amount, self.dim, tensor, data)

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every slice along ``dim`` is all kept or all pruned; exactly the promised number
        of slices is pruned."""
        return _slices_problem("LnStructured", self.amount, self.dim, tensor, mask, data)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomStructured(MaskMethod):
    """Prune random slices along ``dim``, reproducibly from a seed.

    Draws one uniform value per slice, ``torch.rand(size)`` in float32 on the CPU from a
    ``torch.Generator`` seeded with ``seed`` (never the global RNG), and prunes the
    ``amount`` slices with the lowest values: ``round(amount * size)`` slices for a float
    ``amount``, ``amount`` slices for an int. That is the draw
    ``torch.nn.utils.prune.random_structured`` makes, so a single-tensor call equals
    ``torch.manual_seed(seed); prune.random_structured(...)`` (under the default float32
    dtype). prune prunes every value ``<=`` the k-th smallest, so on a tie at the threshold
    (float32 values repeat: likely among a few thousand slices) it prunes more than
    promised; funcsparse prunes exactly the promised number, the lower index first among
    tied values. Like prune, nothing is drawn when no slice is pruned.

    A higher ``amount`` with the same seed prunes a superset: the same values, more slices.

    Through ``fs.compute_masks`` every leaf gets its own stream: the leaf at ``path`` uses
    ``for_leaf(path)``, whose seed is :func:`leaf_seed` ``(seed, path)``, the seed mixed
    with the CRC-32 of the path. ``method.for_leaf(path)(tensor)`` reproduces that leaf's
    mask. Ensemble members (``batch_dims``) of one leaf share the leaf's stream, so they
    get the same slices.

    Keyword data: ``generator``, a ``torch.Generator`` whose state replaces the seed (drawn
    from a copy, so it is not advanced and the same state gives the same mask; values are
    drawn on its device); ``prev_mask``, intersected with the
    result (``amount`` counts slices of the whole tensor). The method draws random numbers,
    so it is not ``vmappable``: ``compute_masks(..., batch_dims=...)`` loops over members.

    Examples:
        >>> import torch
        >>> from funcsparse.methods.structured import RandomStructured
        >>> w = torch.randn(6, 4)
        >>> mask = RandomStructured(amount=0.5, dim=0, seed=3)(w)
        >>> (~mask).all(1).sum().item(), (~mask).sum().item()  # 3 rows of 4
        (3, 12)
        >>> torch.equal(mask, RandomStructured(amount=0.5, dim=0, seed=3)(w))
        True

    Args:
        amount: a float in [0, 1] (the fraction of slices to prune) or an int >= 0 (how
            many slices), as in ``torch.nn.utils.prune``.
        dim: the dim whose indices are the slices; negative dims count from the end.
        seed: the seed of the stream, an int in ``[0, 2**64)``. Default 0.

    Raises:
        TypeError: ``amount`` is not a real number (bools refused), ``dim`` or ``seed`` is
            not an int; on a call, a leaf that is not a tensor, or a ``generator`` that is
            not a ``torch.Generator``.
        ValueError: ``amount`` is a float outside [0, 1] or a negative int, ``seed`` is out
            of range; on a call, a tensor of fewer than 2 dims, ``dim`` out of range, or an
            int ``amount`` above the number of slices.

    References:
        ``torch.nn.utils.prune.RandomStructured`` (PyTorch), whose draw this reproduces.
        Li et al. "Pruning Filters for Efficient ConvNets". ICLR 2017. arXiv:1608.08710
        (random filter pruning as the baseline of norm-based selection).
    """

    amount: float
    dim: int
    seed: int = 0

    level_field: ClassVar[str | None] = "amount"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"generator"})
    vmappable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_amount("RandomStructured", self.amount)
        require_int("RandomStructured", "dim", self.dim)
        seed = require_int("RandomStructured", "seed", self.seed)
        if not 0 <= seed < _SEED_LIMIT:
            raise ValueError(f"RandomStructured: seed must be in [0, 2**64), got {seed}")

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid configs: fractions and small counts, dims 0, 1, -1, a few seeds."""
        amounts = st.one_of(
            st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0), st.integers(0, 3)
        )
        return st.builds(
            cls,
            amount=amounts,
            dim=st.sampled_from([0, 1, -1]),
            seed=st.integers(0, 2**32 - 1),
        )

    def for_leaf(self, path: str) -> RandomStructured:
        """This config with the seed :func:`leaf_seed` ``(seed, path)``: one stream per leaf."""
        return dataclasses.replace(self, seed=leaf_seed(self.seed, path))

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor):
            return LeafProblem(TypeError, describe(tensor), "RandomStructured needs a tensor")
        problem = _slice_problem("RandomStructured", tensor, self.dim, self.amount)
        if problem is not None:
            return problem
        generator = data.get("generator")
        if generator is not None and not isinstance(generator, torch.Generator):
            return LeafProblem(
                TypeError, f"generator={describe(generator)}", "generator must be a torch.Generator"
            )
        return None

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        dim = self.dim % tensor.dim()
        size = tensor.shape[dim]
        count = _n_pruned("RandomStructured", self.amount, tensor, dim)
        if count == 0:  # prune draws nothing here either
            return torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        given = data.get("generator")
        generator = torch.Generator(device=given.device if given is not None else "cpu")
        if given is None:
            generator.manual_seed(self.seed)
        else:  # draw from a copy: the caller's generator is not advanced
            generator.set_state(given.get_state())
        values = torch.rand(size, generator=generator, dtype=torch.float32, device=generator.device)
        pruned = smallest_k(values, count).to(tensor.device)
        return _keep_slices(pruned.logical_not(), tensor.shape, dim)

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """Pruned slices times the slice size (None with a ``prev_mask`` that has zeros)."""
        return _expected_zeros("RandomStructured", self.amount, self.dim, tensor, data)

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every slice along ``dim`` is all kept or all pruned; exactly the promised number
        of slices is pruned."""
        return _slices_problem("RandomStructured", self.amount, self.dim, tensor, mask, data)
