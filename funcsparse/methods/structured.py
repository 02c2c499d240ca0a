"""Structured pruning: whole slices along one dim (rows, output channels, conv filters).

``LnStructured`` prunes the slices of lowest Ln norm and ``RandomStructured`` random ones,
as ``torch.nn.utils.prune.ln_structured`` and ``random_structured`` do, as pure functions.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse._select import lowest_covering, smallest_k
from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int, require_real
from funcsparse.methods._level import count_to_prune, level_configs, set_level
from funcsparse.methods._seeds import SEED_LIMIT as _SEED_LIMIT
from funcsparse.methods._seeds import leaf_seed

__all__ = ["LnStructured", "RandomStructured", "leaf_seed", "slice_chunks"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Slices(MaskMethod):
    """What the slice methods share: the level in slices, the checks and the selection.

    With a ``prev_mask``, slices are taken in rank order until the zeros reach the level's
    target (``count`` slices' worth of entries), counting the zeros ``prev_mask`` already
    has: a slice adds the entries of it that were not pruned before. So the level is the
    total target, the kept set only shrinks, and slices pruned whole before cost nothing.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None
    dim: int

    level_field: ClassVar[str | None] = "sparsity"
    uses_prev_mask: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        set_level(self, what="slices")
        require_int(name, "dim", self.dim)

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        name = type(self).__name__
        if not isinstance(tensor, Tensor):
            return LeafProblem(TypeError, describe(tensor), f"{name} needs a tensor")
        ndim = tensor.dim()
        if ndim <= 1:
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"structured pruning needs a tensor of 2 or more dims ({name} prunes whole "
                f"slices along dim={self.dim})",
            )
        if not -ndim <= self.dim < ndim:
            return LeafProblem(
                ValueError,
                f"dim={self.dim} for {describe(tensor)}",
                f"dim must be in [{-ndim}, {ndim - 1}]",
            )
        size = tensor.shape[self.dim]
        if self.count is not None and self.count > size:
            return LeafProblem(
                ValueError,
                f"count={self.count} for {describe(tensor)}",
                f"count={self.count} is more than the {size} slices along dim={self.dim}",
            )
        return None

    def slices_to_prune(self, tensor: Tensor) -> int:
        """Slices along ``dim`` that the level prunes (nn.utils.prune's rounding)."""
        size = tensor.shape[self.dim]
        return count_to_prune(type(self).__name__, self.sparsity, self.count, size, what="slices")

    @abc.abstractmethod
    def slice_scores(self, tensor: Tensor, data: dict[str, Any]) -> Tensor:
        """One score per slice along ``dim`` (the lowest are pruned first)."""

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        dim = self.dim % tensor.dim()
        size = tensor.shape[dim]
        count = self.slices_to_prune(tensor)
        prev_mask: Tensor | None = data.get("prev_mask")
        if tensor.numel() == 0 or (count == 0 and prev_mask is None):
            return torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        if count >= size:
            return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        if prev_mask is None:
            pruned = smallest_k(self.slice_scores(tensor, data), count)
            return _keep_slices(pruned.logical_not(), tensor.shape, dim)
        slice_size = tensor.numel() // size
        prev_zeros = slice_size - _kept_per_slice(prev_mask, dim)
        needed = count * slice_size - prev_zeros.sum()
        pruned = lowest_covering(self.slice_scores(tensor, data), slice_size - prev_zeros, needed)
        keep = _keep_slices(pruned.logical_not(), tensor.shape, dim)  # fresh memory
        if _plain(keep) and _plain(prev_mask):
            return keep.logical_and_(prev_mask)  # in place: no second leaf-sized mask
        return keep & prev_mask

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """Pruned slices times the slice size (None with a ``prev_mask`` that has zeros)."""
        prev_mask = data.get("prev_mask")
        if prev_mask is not None and not bool(prev_mask.all()):
            return None
        if tensor.numel() == 0:
            return 0
        return self.slices_to_prune(tensor) * (tensor.numel() // tensor.shape[self.dim])

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every slice all kept or all pruned, and exactly the promised number pruned.

        With a ``prev_mask``: the mask keeps nothing ``prev_mask`` prunes, its new zeros fill
        whole slices, the total reaches the target (or everything is pruned), and it would
        not without the slice that adds the most (the fewest slices were taken).
        """
        if tensor.numel() == 0:
            return None
        dim = self.dim % tensor.dim()
        size = tensor.shape[dim]
        count = self.slices_to_prune(tensor)
        level = f"sparsity={self.sparsity}" if self.count is None else f"count={self.count}"
        rows = mask.detach().cpu().movedim(dim, 0).reshape(size, -1)
        all_pruned = ~rows.any(dim=1)
        prev_mask = data.get("prev_mask")
        if prev_mask is None:
            partial = rows.any(dim=1) & ~rows.all(dim=1)
            if bool(partial.any()):
                index = int(partial.nonzero()[0])
                zeros = int((~rows[index]).sum())
                return (
                    f"slice {index} along dim={dim} has {zeros} of {rows.shape[1]} entries "
                    "pruned; a slice is all kept or all pruned"
                )
            if int(all_pruned.sum()) != count:
                return (
                    f"{int(all_pruned.sum())} of {size} slices along dim={dim} are pruned; "
                    f"expected {count} ({level})"
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
        target = count * rows.shape[1]
        zeros = int((~rows).sum())
        gains = prev_rows.sum(1)[touched]
        if zeros < min(target, rows.numel()):
            return f"{zeros} zeros; the level's target is {target} ({level})"
        if gains.numel() and zeros - int(gains.max()) >= target:
            return (
                f"{zeros} zeros where {target} are the target ({level}): more slices were "
                "pruned than needed"
            )
        return None


#: Entries per chunk where a per-slice pass over the whole tensor would cost more than the
#: leaf's own size (a bool mask summed as int64, a masked copy of the weight).
_CHUNK = 1 << 22


def slice_chunks(shape: torch.Size, dim: int) -> list[tuple[int, int]]:
    """``(start, length)`` runs of slices along ``dim``, each about :data:`_CHUNK` entries.

    Where a per-slice pass runs chunk by chunk, these are its chunks (the sharded strategy
    norms each rank's slices in the same runs, since torch reduces a slice that is alone in
    its call in another order).

    Examples:
        >>> slice_chunks(torch.Size([3, 4]), 0)
        [(0, 3)]
    """
    size = shape[dim]
    slice_size = max(1, math.prod(shape) // max(1, size))
    step = max(1, _CHUNK // slice_size)
    return [(start, min(step, size - start)) for start in range(0, size, step)]


def _kept_per_slice(mask: Tensor, dim: int) -> Tensor:
    """How many entries of every slice along ``dim`` ``mask`` keeps (int64), chunk by chunk.

    Counting a whole bool mask at once casts it to int64 (8 bytes per entry, twice a
    float32 weight); counts are exact, so chunks give the same numbers. On a plain tensor
    every chunk is cast into one reused int64 buffer and summed into the preallocated
    counts: a fresh cast per chunk (32 MB) next to the small per-chunk results fragmented
    the heap (glibc serves the small results from the freed cast, so the next cast cannot
    reuse its place), and the casts piled up to nearly twice the leaf's size, run by run.
    """
    size = mask.shape[dim]
    chunks = slice_chunks(mask.shape, dim)
    slice_size = mask.numel() // max(1, size)
    if not chunks or slice_size == 0:
        return torch.full((size,), slice_size, dtype=torch.int64, device=mask.device)
    if not _plain(mask):
        counts = [
            torch.count_nonzero(
                mask.narrow(dim, start, length).movedim(dim, 0).reshape(length, -1), 1
            )
            for start, length in chunks
        ]
        return torch.cat(counts)
    largest = slice_size * max(length for _, length in chunks)
    buffer = torch.empty(largest, dtype=torch.int64, device=mask.device)  # reused
    kept = torch.empty(size, dtype=torch.int64, device=mask.device)
    for start, length in chunks:
        part = mask.narrow(dim, start, length).movedim(dim, 0)
        cast = buffer[: part.numel()].view(part.shape)
        cast.copy_(part)
        torch.sum(cast.view(length, -1), 1, out=kept.narrow(0, start, length))
    return kept


def _plain(tensor: Tensor) -> bool:
    """Whether in-place work on buffers is allowed (no torch.func transform, no trace)."""
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return not torch.compiler.is_compiling() and is_wrapped is not None and not is_wrapped(tensor)


def _keep_slices(keep: Tensor, shape: torch.Size, dim: int) -> Tensor:
    """A per-slice bool vector along ``dim`` broadcast to a mask of ``shape`` (own memory)."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return keep.reshape(view).expand(shape).contiguous()


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
    elif n == "nuc" and tensor.dtype in (torch.float16, torch.bfloat16):
        # torch's SVD refuses low precision (so does prune): the nuclear norm in float32.
        norms = torch.norm(tensor.float(), p=n, dim=dims)
    else:
        norms = torch.norm(tensor, p=n, dim=dims)
    return norms


@dataclasses.dataclass(frozen=True, kw_only=True)
class LnStructured(_Slices):
    """Prune the slices along ``dim`` of lowest Ln norm: rows, output channels, conv filters.

    A slice is everything with one index along ``dim``: ``dim=0`` selects the rows of a
    Linear weight (its output features) or the filters of a Conv2d weight ``(out, in, kh,
    kw)``; ``dim=1`` the columns (input features, input channels). Each slice's score is its
    Ln norm over all other dims, computed by the same ``torch.norm`` call as
    ``torch.nn.utils.prune.ln_structured``, and the slices of lowest norm are pruned whole:
    ``round(sparsity * size)`` of them, or ``count``.

    The masks equal ``torch.nn.utils.prune.ln_structured``'s bit for bit when the slice norms
    have no ties. prune keeps the ``topk`` largest norms, so which of two tied slices it
    prunes is up to ``topk``; funcsparse prunes the lower index first (NaN norms count as the
    largest), so the count is always exact. ``n='fro'`` on tensors of more than 3 dims, where
    ``torch.norm`` (and so prune) raises, uses the 2-norm of each flattened slice, which is
    its Frobenius norm.

    Keyword data: ``scores``, importance scores of the tensor's shape, ranked as given: a
    slice's score is the sum of its entries' scores (signed), and the lowest is pruned
    first. (prune's ``importance_scores=s`` ranks the Ln norm of ``s``; for a finite ``n``
    pass ``scores=s.abs() ** n``, whose slice sums rank the same.) ``prev_mask``, the mask
    of an earlier round: the norms are taken over the weights as the model sees them (pruned
    entries count as 0), nothing pruned before comes back, and slices are taken in rank
    order until the zeros, old and new, reach the level's total.

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[1.0, -2.0], [0.1, 0.2], [3.0, 0.0]])
        >>> fs.LnStructured(count=1, n=2, dim=0)(w)  # the row of lowest L2 norm
        tensor([[ True,  True],
                [False, False],
                [ True,  True]])
        >>> fs.LnStructured(0.5, n=1, dim=1)(w)  # half the columns, by L1 norm
        tensor([[ True, False],
                [ True, False],
                [ True, False]])
        >>> conv = torch.randn(8, 3, 3, 3)  # Conv2d(3, 8, 3).weight: 8 filters
        >>> mask = fs.LnStructured(0.25, n=2, dim=0)(conv)
        >>> (~mask).flatten(1).all(1).sum().item()  # filters pruned whole
        2

    Args:
        sparsity: the fraction of slices to prune, in ``[0, 1]``; may be given
            positionally. Give it or ``count``.
        count: the number of slices to prune, an int ``>= 0``. Give it or ``sparsity``.
        n: the norm's order, as ``p`` of ``torch.norm``: an int or float (``1``, ``2``,
            ``math.inf``, ``-math.inf``, ...), ``'fro'`` or ``'nuc'`` (3-D tensors only:
            the nuclear norm of each 2-D slice).
        dim: the dim whose indices are the slices; negative dims count from the end.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count`` (or one of the wrong
            type), ``n`` is neither a real number nor a string, ``dim`` is not an int; on a
            call, a leaf (or ``scores``) that is not a floating tensor.
        ValueError: ``sparsity`` outside [0, 1], a negative ``count``, ``n`` is NaN or a
            string other than ``'fro'``/``'nuc'``; on a call, a tensor of fewer than 2 dims,
            ``dim`` out of range, a ``count`` above the number of slices, ``n='nuc'`` on a
            tensor that is not 3-D.

    References:
        Li, Kadav, Durdanovic, Samet, Graf. "Pruning Filters for Efficient ConvNets".
        ICLR 2017. arXiv:1608.08710 (filters of lowest L1 norm).
        ``torch.nn.utils.prune.LnStructured`` (PyTorch), whose semantics this reproduces.
    """

    n: float | str

    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n, str):
            if self.n not in ("fro", "nuc"):
                raise ValueError(
                    f"LnStructured: n must be a number, 'fro' or 'nuc', got {self.n!r}"
                )
        else:
            require_real("LnStructured", "n", self.n)
            if isinstance(self.n, numbers.Integral) and abs(int(self.n)) > 2**63 - 1:
                raise ValueError(
                    f"LnStructured: n={short_repr(self.n)} does not fit in 64 bits (torch's "
                    "norms take int64 or float orders); give it as a float"
                )

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid configs: fractions and small counts, n in (1, 2, inf, -inf, 'fro'), dims
        0, 1, -1."""
        return level_configs(
            st,
            cls,
            max_count=3,
            n=st.sampled_from([1, 2, math.inf, -math.inf, "fro"]),
            dim=st.sampled_from([0, 1, -1]),
        )

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "LnStructured needs floating-point weights"
            )
        problem = super().leaf_problem(tensor, **data)
        if problem is not None:
            return problem
        if self.n == "nuc" and tensor.dim() != 3:
            return LeafProblem(
                ValueError,
                describe(tensor),
                "n='nuc' needs a 3-D tensor (the nuclear norm of each 2-D slice)",
            )
        return None

    def slice_scores(self, tensor: Tensor, data: dict[str, Any]) -> Tensor:
        """The Ln norm of every slice of the weight, or the sum of its given scores."""
        dim = self.dim % tensor.dim()
        scores: Tensor | None = data.get("scores")
        if scores is not None:
            dims = [d for d in range(tensor.dim()) if d != dim]
            return scores.sum(dim=dims)
        prev_mask = data.get("prev_mask")
        if prev_mask is None:
            return _norms(tensor, self.n, dim)
        size = tensor.shape[dim]
        # The weights as the model sees them (pruned entries 0), a chunk of slices at a time:
        # a masked copy of the whole weight would cost its full size again.
        zero = torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        if torch._C._functorch.is_batchedtensor(tensor):  # under vmap: no out= (one pass)
            return _norms(torch.where(prev_mask, tensor, zero), self.n, dim)
        chunks = slice_chunks(tensor.shape, dim)
        if not chunks:  # no slices
            return _norms(tensor, self.n, dim)
        largest = max((tensor.numel() // max(1, size)) * length for _, length in chunks)
        buffer = torch.empty(largest, dtype=tensor.dtype, device=tensor.device)  # reused

        def masked(start: int, length: int) -> Tensor:
            keep = prev_mask.narrow(dim, start, length)
            part = tensor.narrow(dim, start, length)
            out = buffer[: part.numel()].view(part.shape)
            return torch.where(keep, part, zero, out=out)

        return torch.cat([_norms(masked(start, length), self.n, dim) for start, length in chunks])


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomStructured(_Slices):
    """Prune random slices along ``dim``, reproducibly from a seed.

    Draws one uniform value per slice, ``torch.rand(size)`` in float32 on the CPU from a
    ``torch.Generator`` seeded with ``seed`` (never the global RNG), and prunes the slices
    with the lowest values: ``round(sparsity * size)`` of them, or ``count``. That is the
    draw ``torch.nn.utils.prune.random_structured`` makes, so a single-tensor call equals
    ``torch.manual_seed(seed); prune.random_structured(...)`` (under the default float32
    dtype). prune prunes every value ``<=`` the k-th smallest, so on a tie at the threshold
    (float32 values repeat: likely among a few thousand slices) it prunes more than
    promised; funcsparse prunes exactly the promised number, the lower index first among
    tied values. Like prune, nothing is drawn when no slice is pruned.

    A higher level with the same seed prunes a superset: the same values, more slices.

    Through ``fs.compute_masks`` every leaf gets its own stream: the leaf at ``path`` uses
    ``for_leaf(path)``, whose seed is :func:`leaf_seed` ``(seed, path)``, a hash of the
    seed and the path. ``method.for_leaf(path)(tensor)`` reproduces that leaf's mask.
    Ensemble members (``batch_dims``) of one leaf share the leaf's stream, so they get the
    same slices.

    Keyword data: ``generator``, a ``torch.Generator`` whose state replaces the seed (drawn
    from a copy, so it is not advanced and the same state gives the same mask; values are
    drawn on its device); ``prev_mask``, the mask of an earlier round: nothing pruned before
    comes back, and slices are taken in the order of their values until the level's total
    is reached. The method draws random numbers, so it is not ``vmappable``:
    ``compute_masks(..., batch_dims=...)`` loops over members.

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.randn(6, 4)
        >>> mask = fs.RandomStructured(0.5, dim=0, seed=3)(w)
        >>> (~mask).all(1).sum().item(), (~mask).sum().item()  # 3 rows of 4
        (3, 12)
        >>> torch.equal(mask, fs.RandomStructured(0.5, dim=0, seed=3)(w))
        True

    Args:
        sparsity: the fraction of slices to prune, in ``[0, 1]``; may be given
            positionally. Give it or ``count``.
        count: the number of slices to prune, an int ``>= 0``. Give it or ``sparsity``.
        dim: the dim whose indices are the slices; negative dims count from the end.
        seed: the seed of the stream, an int in ``[0, 2**64)``. Default 0.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count`` (or one of the wrong
            type), ``dim`` or ``seed`` is not an int; on a call, a leaf that is not a
            tensor, or a ``generator`` that is not a ``torch.Generator``.
        ValueError: ``sparsity`` outside [0, 1], a negative ``count``, ``seed`` out of
            range; on a call, a tensor of fewer than 2 dims, ``dim`` out of range, or a
            ``count`` above the number of slices.

    References:
        ``torch.nn.utils.prune.RandomStructured`` (PyTorch), whose draw this reproduces.
        Li et al. "Pruning Filters for Efficient ConvNets". ICLR 2017. arXiv:1608.08710
        (random filter pruning as the baseline of norm-based selection).
    """

    seed: int = 0

    leaf_data: ClassVar[frozenset[str]] = frozenset({"generator"})
    vmappable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        seed = require_int("RandomStructured", "seed", self.seed)
        if not 0 <= seed < _SEED_LIMIT:
            raise ValueError(f"RandomStructured: seed must be in [0, 2**64), got {seed}")

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid configs: fractions and small counts, dims 0, 1, -1, a few seeds."""
        return level_configs(
            st,
            cls,
            max_count=3,
            dim=st.sampled_from([0, 1, -1]),
            seed=st.integers(0, 2**32 - 1),
        )

    def for_leaf(self, path: str) -> RandomStructured:
        """This config with the seed :func:`leaf_seed` ``(seed, path)``: one stream per leaf."""
        return dataclasses.replace(self, seed=leaf_seed(self.seed, path))

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        problem = super().leaf_problem(tensor, **data)
        if problem is not None:
            return problem
        generator = data.get("generator")
        if generator is not None and not isinstance(generator, torch.Generator):
            return LeafProblem(
                TypeError, f"generator={describe(generator)}", "generator must be a torch.Generator"
            )
        return None

    def slice_scores(self, tensor: Tensor, data: dict[str, Any]) -> Tensor:
        """One uniform draw per slice (from a copy of ``generator``, or from ``seed``)."""
        size = tensor.shape[self.dim]
        given = data.get("generator")
        generator = torch.Generator(device=given.device if given is not None else "cpu")
        if given is None:
            generator.manual_seed(self.seed)
        else:  # draw from a copy: the caller's generator is not advanced
            generator.set_state(given.get_state())
        values = torch.rand(size, generator=generator, dtype=torch.float32, device=generator.device)
        return values.to(tensor.device)
