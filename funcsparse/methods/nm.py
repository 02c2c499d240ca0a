"""NM: N:M fine-grained structured sparsity (2:4 and friends)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse._select import is_plain, rank_pruned_first, smallest_k_per_group
from funcsparse.methods._base import (
    LeafProblem,
    MaskMethod,
    check_fraction,
    describe,
    require_int,
)
from funcsparse.methods._base import ranking as ranking_of

__all__ = ["NM"]

# Eager calls rank groups a chunk at a time, so that the work's temporaries (the ranking,
# the selection network's wires or a sort's indices, the chunk's mask: 2.5x to 7x the
# tensor's bytes in one piece) stay a fraction of the tensor: up to about _CHUNKS chunks of
# at least _CHUNK_MIN entries (and at least one slice along the dim that is cut). Few
# chunks: every op of a chunk is a parallel region.
_CHUNKS = 16
_CHUNK_MIN = 1 << 20
# Above this, ``fraction * (m - n)`` is computed exactly (a float product overflows).
_FLOAT_EXACT = 1 << 53


@dataclasses.dataclass(frozen=True, kw_only=True)
class NM(MaskMethod):
    """Keep exactly ``n`` of every ``m`` consecutive entries along ``axis``.

    The tensor is cut along ``axis`` into groups of ``m`` consecutive entries (the length
    along ``axis`` must be a multiple of ``m``); in every group the ``m - n`` entries of
    lowest ``|w|`` are pruned. Equal magnitudes are pruned lower position first, and NaN
    counts as the largest magnitude. ``NM(n=2, m=4)`` is the 2:4 pattern that NVIDIA's
    sparse tensor cores accelerate (``axis=-1``: along a ``Linear`` weight's input
    features). On a 2-D weight with ``axis=-1`` the mask equals torch.ao's
    ``WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, m),
    zeros_per_block=m - n, norm=1)`` bit for bit on tie-free inputs.

    Keyword data of a call (or ``fs.compute_masks`` pytrees of the same name):

    * ``scores``: importance scores of the tensor's shape, ranked as given in place of
      ``|w|`` (signed: the lowest in a group is pruned first).
    * ``prev_mask``: the mask of an earlier round. Previously pruned entries stay pruned and
      rank first within their group, so a group keeps exactly ``n`` entries whenever it
      had at least ``n`` left (and all it had left otherwise).

    Runs under ``torch.func.vmap`` (one mask per member); no Python loop over groups.
    Called eagerly on a CPU tensor of more than 2**20 entries, it works a chunk of whole
    groups at a time (up to about 16 chunks of at least 2**20 entries), with the same mask:
    the memory it needs besides the tensor, the bool mask it returns included, stays below
    the tensor's size from about 8e6 entries on (and about 20 MiB plus the mask below that;
    ``benchmarks/memory.py`` measures it). An empty tensor has no groups: its mask is
    empty, whatever ``m``.

    Examples:
        >>> import torch
        >>> from funcsparse.methods.nm import NM
        >>> w = torch.tensor([[0.5, -2.0, 0.1, 3.0, 1.0, -0.2, 0.3, 4.0]])
        >>> NM(n=2, m=4)(w)
        tensor([[False,  True, False,  True,  True, False, False,  True]])
        >>> NM(n=1, m=2, axis=0)(torch.tensor([[1.0, -5.0], [-3.0, 2.0]]))
        tensor([[False,  True],
                [ True, False]])

    Args:
        n: entries kept per group, ``0 <= n <= m``. Required.
        m: group size, ``m >= 1``. Required.
        axis: the dimension along which groups run; negative counts from the end.
            Default -1.

    Raises:
        TypeError: ``n``, ``m`` or ``axis`` is not an int; on a call, a tensor that is not
            floating-point, or ``scores`` that are not floating.
        ValueError: ``m < 1`` or ``n`` outside ``[0, m]``; on a call, ``axis`` out of range
            for the tensor, or a length along ``axis`` that is not a multiple of ``m``
            (an ``m`` larger than that length is named as such).

    References:
        Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021 (arXiv:2104.08378).
        Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From
        Scratch", ICLR 2021 (arXiv:2102.04010).
    """

    n: int
    m: int
    axis: int = -1

    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})
    uses_prev_mask: ClassVar[bool] = True

    def __post_init__(self) -> None:
        n = require_int("NM", "n", self.n)
        m = require_int("NM", "m", self.m)
        require_int("NM", "axis", self.axis)
        if m < 1:
            raise ValueError(f"NM: m={short_repr(m)} must be at least 1")
        if not 0 <= n <= m:
            raise ValueError(f"NM: n={short_repr(n)} must be in [0, m] = [0, {short_repr(m)}]")

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid NM configs: 2:4, 1:4, 4:8, 1:2 and other n:m with m up to 8, either axis."""
        common = st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2), (1, 1), (0, 2), (3, 3)])
        other = st.integers(1, 8).flatmap(lambda m: st.tuples(st.integers(0, m), st.just(m)))
        return st.builds(
            lambda nm, axis: cls(n=nm[0], m=nm[1], axis=axis),
            st.one_of(common, other),
            st.sampled_from([-1, 0, 1, -2]),
        )

    def scaled(self, fraction: float) -> NM:
        """``round(fraction * (m - n))`` zeros per group: ``NM(n=2, m=4).scaled(0.5)`` is 3:4.

        Every step of a schedule keeps an N:M pattern, and the masks nest as it rises.
        """
        fraction = check_fraction("NM.scaled", fraction)
        zeros = self.m - self.n
        if zeros < _FLOAT_EXACT:
            return dataclasses.replace(self, n=self.m - round(fraction * zeros))
        # A float product would overflow: round the exact product instead.
        return dataclasses.replace(self, n=self.m - round(Fraction(fraction) * zeros))

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(TypeError, describe(tensor), "NM needs a floating-point tensor")
        ndim = tensor.dim()
        if not -ndim <= self.axis < ndim:
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"NM axis={short_repr(self.axis)} is out of range for a {ndim}-D tensor",
            )
        length = tensor.shape[self.axis]
        if self.m > length > 0:
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"NM m={short_repr(self.m)} is larger than the length along axis={self.axis} "
                f"({length}); groups of m need a length that is a multiple of m",
            )
        if length % self.m:
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"NM needs the length along axis={self.axis} ({length}) to be divisible by "
                f"m={self.m}",
            )
        return None

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        if tensor.numel() == 0:  # no groups (whatever m): nothing to rank
            return torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        inputs = [tensor, *(v for v in data.values() if isinstance(v, Tensor))]
        plan = _chunking(tensor, self.axis, self.m) if tensor.device.type == "cpu" else None
        if plan is None or not all(is_plain(t) for t in inputs):
            return self._groups_mask(tensor, data)
        dim, step = plan
        mask = torch.empty(tensor.shape, dtype=torch.bool, device=tensor.device)
        size = tensor.shape[dim]
        for start in range(0, size, step):
            length = min(step, size - start)
            part = {k: v.narrow(dim, start, length) for k, v in data.items()}
            piece = self._groups_mask(tensor.narrow(dim, start, length), part)
            mask.narrow(dim, start, length).copy_(piece)
        return mask

    def _groups_mask(self, tensor: Tensor, data: dict[str, Any]) -> Tensor:
        """The keep-mask of ``tensor`` (whole groups along ``axis``), in one piece."""
        ranking = ranking_of(tensor, data)
        prev_mask: Tensor | None = data.get("prev_mask")
        if prev_mask is not None:
            ranking = rank_pruned_first(ranking, prev_mask)  # previous zeros first
        pruned = smallest_k_per_group(self._groups(ranking), self.m - self.n)
        pruned = self._ungroup(pruned, tensor)
        if prev_mask is not None:
            pruned = pruned | ~prev_mask
        return ~pruned

    def _groups(self, tensor: Tensor) -> Tensor:
        """``tensor`` with ``axis`` moved last and split into ``(..., length // m, m)``."""
        moved = tensor.movedim(self.axis, -1)
        return moved.reshape(*moved.shape[:-1], moved.shape[-1] // self.m, self.m)

    def _ungroup(self, groups: Tensor, like: Tensor) -> Tensor:
        """Inverse of :meth:`_groups`, to ``like``'s shape."""
        moved = groups.reshape(*groups.shape[:-2], groups.shape[-2] * self.m)
        return moved.movedim(-1, self.axis).reshape(like.shape)

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """``numel // m * (m - n)``; with ``prev_mask``, per group the larger of ``m - n``
        and its previous zeros."""
        prev_mask = data.get("prev_mask")
        if prev_mask is None or tensor.numel() == 0:
            return tensor.numel() // self.m * (self.m - self.n)
        prev_zeros = (~self._groups(prev_mask.cpu())).sum(-1)
        return int(prev_zeros.clamp(min=self.m - self.n).sum())

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every group of ``m`` along ``axis`` keeps exactly ``n`` (with ``prev_mask``: the
        smaller of ``n`` and what the group kept before, and nothing pruned before)."""
        if tensor.numel() == 0:
            return None
        kept = self._groups(mask.cpu()).sum(-1)
        want = torch.full_like(kept, self.n)
        prev_mask = data.get("prev_mask")
        if prev_mask is not None:
            prev = prev_mask.cpu()
            revived = mask.cpu() & ~prev
            if bool(revived.any()):
                where = tuple(int(i) for i in revived.nonzero()[0])
                return f"entry {where} was pruned in prev_mask but is kept"
            want = want.clamp(max=self._groups(prev).sum(-1))
        wrong = (kept != want).nonzero()
        if wrong.numel():
            group = tuple(int(i) for i in wrong[0])
            return (
                f"group {group} (axis moved last, groups of {self.m}) keeps "
                f"{int(kept[group])} entries; expected {int(want[group])} ({self.n}:{self.m})"
            )
        return None


def _chunking(tensor: Tensor, axis: int, m: int) -> tuple[int, int] | None:
    """Where to cut ``tensor`` into chunks of whole groups: ``(dim, step)``, or None for one
    piece.

    The cut runs along the outermost dim whose slices fit the chunk budget (along ``axis``
    itself in steps of ``m``, so every chunk holds whole groups); where none fits, along the
    dim of thinnest slices.
    """
    numel = tensor.numel()
    budget = max(_CHUNK_MIN, -(-numel // _CHUNKS))
    if numel <= budget:
        return None
    axis %= tensor.dim()
    best: tuple[int, int, int] | None = None  # (entries per unit, dim, unit)
    for dim, size in enumerate(tensor.shape):
        unit = m if dim == axis else 1
        units = size // unit
        if units < 2:
            continue
        per_unit = numel // units
        if per_unit <= budget:
            return dim, max(1, budget // per_unit) * unit
        if best is None or per_unit < best[0]:
            best = (per_unit, dim, unit)
    return None if best is None else (best[1], best[2])
