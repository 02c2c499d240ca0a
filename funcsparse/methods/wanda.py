"""Wanda: prune by |weight| x input activation norm, per output row or per n:m group
(Sun et al. 2023)."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse._select import is_plain, rank_pruned_first, smallest_k, smallest_k_per_group
from funcsparse.methods._base import (
    LeafProblem,
    MaskMethod,
    check_fraction,
    describe,
    require_int,
)
from funcsparse.methods._level import check_sparsity

__all__ = ["Wanda"]

_NEEDS_NORMS = (
    "Wanda needs input_norms, the L2 norm of every input feature over the calibration "
    "tokens, a tensor of shape (in_features,) (funcsparse.calibration.collect_input_norms; "
    "for a conv weight, of the weight's shape without its first dim)"
)
_NEEDS_RANK = (
    "Wanda needs weights of 2 or more dims, (out_features, in_features) or a conv weight "
    "(out_channels, in_channels / groups, *kernel)"
)
# Eager calls score and select rows a chunk at a time, so that the work's temporaries (the
# scores, kthvalue's copy and int64 indices, an int64 running count: up to 10x the weight's
# bytes in one piece, with float64 norms) stay a fraction of the weight: up to _CHUNKS
# chunks of at least _CHUNK_MIN entries (and at least one row). No more chunks than that:
# every op on a chunk is a parallel region of its own.
_CHUNKS = 32
_CHUNK_MIN = 1 << 20
# A sparsity given beside n and m must be within this of (m - n) / m (2/3 written as 1 - 1/3).
_LEVEL_TOLERANCE = 1e-12
# Above this, ``fraction * (m - n)`` is computed exactly (a float product overflows).
_FLOAT_EXACT = 1 << 53


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wanda(MaskMethod):
    """Prune the weights of lowest ``|W_ij| * ||X_j||_2`` in every output row of a weight.

    ``W`` is a linear layer's weight of shape ``(out_features, in_features)`` and ``||X_j||_2``
    the L2 norm of input feature ``j`` over every calibration token (keyword data
    ``input_norms``, shape ``(in_features,)``, from
    :func:`funcsparse.calibration.collect_input_norms`). As the paper defines it, scores are
    compared within each output row: every row prunes exactly
    ``int(in_features * sparsity)`` entries (a floor, as the reference code counts). Ties
    follow funcsparse's rule (equal scores: the lower column is pruned first; NaN ranks
    above every number), which is the order of
    the reference code's ``torch.sort(..., stable=True)``. Scores are computed in the
    promoted dtype of the weight and the norms (float64 for float64 norms).

    A weight of more dims, ``(out, *rest)`` (a conv weight ``(out_channels, in_channels /
    groups, kh, kw)``), takes ``input_norms`` of shape ``rest``: one norm per unfolded input
    feature, as the reference code unfolds a convolution's input. Each output row, flattened
    over ``rest``, is pruned on its own, as a linear layer's row with
    ``in_features = prod(rest)``.

    With ``prev_mask`` (``fs.compute_masks(..., prev_masks=...)``), entries pruned before
    stay pruned and count towards the row's target: a row prunes
    ``max(int(in_features * sparsity), its previous zeros)`` entries.

    With ``n`` and ``m`` (``Wanda(n=2, m=4)``: the 2:4 pattern), Wanda prunes to an N:M
    pattern in one step: every output row, flattened over every dim but the first, is cut
    into groups of ``m`` consecutive entries, and every group keeps the ``n`` entries of
    highest score (equal scores: the lower column is pruned first), as the reference
    code's structured option does. Note the counts: ``n`` is the number KEPT, as in
    ``fs.NM(n=, m=)``, while the reference's ``prune_n:prune_m`` ("2:4") counts the entries
    PRUNED per group; its ``2:4`` is ``Wanda(n=2, m=4)``, its ``1:4`` is ``Wanda(n=3, m=4)``.
    The row length must be a multiple of ``m``. The level is then ``(m - n) / m``: leave
    ``sparsity`` out (a value given beside ``n`` and ``m`` must equal it). With
    ``prev_mask``, entries pruned before stay pruned and are pruned first within their group:
    a group keeps ``n`` entries where it had at least ``n`` left, and all it had otherwise.
    :meth:`scaled` keeps the pattern (``round(fraction * (m - n))`` zeros per group:
    ``Wanda(n=2, m=4).scaled(0.5)`` is ``Wanda(n=3, m=4)``), as ``fs.NM`` does.

    Runs under ``torch.func.vmap``. Called eagerly on a CPU weight of more than 2**20
    entries, it works a chunk of rows at a time (up to 32 chunks of at least 2**20 entries,
    whole rows), with the same mask: the memory it needs besides the weight and the norms,
    the bool mask it returns included, stays below the weight's size from about 1.5e7
    entries on (and about 40 MiB plus the mask below that), unless one row is most of the
    weight (``benchmarks/memory.py`` measures it).

    Examples:
        >>> import torch, funcsparse as fs
        >>> from funcsparse.methods.wanda import Wanda
        >>> w = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]])
        >>> norms = torch.tensor([4.0, 1.0, 1.0, 0.5])  # scores [[4, 2, 3, 2], [16, 3, 2, 0.5]]
        >>> Wanda(sparsity=0.5)(w, input_norms=norms)
        tensor([[ True, False,  True, False],
                [ True,  True, False, False]])
        >>> conv = torch.randn(8, 3, 3, 3)  # Conv2d(3, 8, 3).weight
        >>> mask = Wanda(sparsity=0.5)(conv, input_norms=torch.rand(3, 3, 3))
        >>> (~mask).flatten(1).sum(1).tolist()  # int(27 * 0.5) per output channel
        [13, 13, 13, 13, 13, 13, 13, 13]
        >>> Wanda(n=1, m=2)(w, input_norms=norms)  # the higher score of every pair is kept
        tensor([[ True, False,  True, False],
                [ True, False,  True, False]])
        >>> Wanda(n=2, m=4).sparsity
        0.5

    Args:
        sparsity: the fraction of every row pruned, in [0, 1]; may be given positionally.
            Default 0.5, or ``(m - n) / m`` with ``n`` and ``m``.
        n: entries kept in every group of ``m``, ``0 <= n <= m``; given with ``m``. Default
            None (no N:M pattern: the paper's per-row selection).
        m: the group size, ``m >= 1``, along every flattened row; given with ``n``. Default
            None.

    Raises:
        TypeError: ``sparsity`` is not a real number, ``n`` or ``m`` not an int, or only
            one of ``n`` and ``m`` given (as for ``fs.SparseGPT``); on a call, a leaf that
            is not a floating tensor, or ``input_norms`` that is not a floating tensor.
        ValueError: ``sparsity`` is NaN or outside [0, 1]; ``m < 1``, ``n`` outside
            ``[0, m]``, or a ``sparsity`` other than ``(m - n) / m`` beside them; on a
            call, a weight of fewer than 2 dims, a row length (the product of every dim but
            the first) that is not a multiple of ``m``, or ``input_norms`` missing, of a
            shape other than the weight's shape without its first dim, or with a negative
            or non-finite entry.

    References:
        M. Sun, Z. Liu, A. Bair, J. Z. Kolter. A Simple and Effective Pruning Approach for
        Large Language Models. ICLR 2024. arXiv:2306.11695.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    n: int | None = None
    m: int | None = None

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"input_norms"})
    needs_data: ClassVar[bool] = True
    uses_prev_mask: ClassVar[bool] = True
    vmappable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.n is None and self.m is None:
            level = 0.5 if self.sparsity is None else check_sparsity("Wanda", self.sparsity)
            object.__setattr__(self, "sparsity", level)
            return
        if self.n is None or self.m is None:
            given, missing = ("n", "m") if self.m is None else ("m", "n")
            raise TypeError(
                f"Wanda: {given}={short_repr(getattr(self, given))} was given without "
                f"{missing}; an N:M pattern needs both (Wanda(n=2, m=4) keeps 2 of every 4)"
            )
        n = require_int("Wanda", "n", self.n)
        m = require_int("Wanda", "m", self.m)
        if m < 1:
            raise ValueError(f"Wanda: m={short_repr(m)} must be at least 1")
        if not 0 <= n <= m:
            raise ValueError(f"Wanda: n={short_repr(n)} must be in [0, m] = [0, {short_repr(m)}]")
        level = (m - n) / m
        if self.sparsity is not None:
            given_level = check_sparsity("Wanda", self.sparsity)
            if abs(given_level - level) > _LEVEL_TOLERANCE:
                raise ValueError(
                    f"Wanda: sparsity={short_repr(self.sparsity)} does not match n:m = {n}:{m}, "
                    f"which prunes (m - n) / m = {level!r} of every row; leave sparsity out "
                    "beside n and m"
                )
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "sparsity", level)

    @property
    def _level(self) -> float:
        """The fraction of every row pruned (``sparsity``, always set after construction)."""
        return float(self.sparsity if self.sparsity is not None else 0.5)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid Wanda configs: sparsity at the ends, at quarters, and anywhere in [0, 1];
        and N:M patterns (2:4, 1:4, 1:2 and others with ``m`` up to 8)."""
        levels = st.one_of(
            st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0, allow_nan=False)
        )
        common = st.sampled_from([(2, 4), (1, 4), (1, 2), (4, 8), (1, 1), (0, 2), (3, 3)])
        other = st.integers(1, 8).flatmap(lambda m: st.tuples(st.integers(0, m), st.just(m)))
        patterns = st.one_of(common, other).map(lambda nm: cls(n=nm[0], m=nm[1]))
        return st.one_of(st.builds(cls, sparsity=levels), patterns)

    def scaled(self, fraction: float) -> Wanda:
        """This method at ``fraction`` of its level, as a schedule asks for it.

        Without ``n`` and ``m``: ``sparsity * fraction``. With them, the N:M pattern stays:
        ``round(fraction * (m - n))`` zeros per group (``Wanda(n=2, m=4).scaled(0.5)`` is
        ``Wanda(n=3, m=4)``), as ``fs.NM.scaled`` does; a higher fraction never un-prunes.

        Raises:
            ValueError: ``fraction`` is not in [0, 1].
        """
        if self.n is None or self.m is None:
            return cast(Wanda, super().scaled(fraction))
        fraction = check_fraction("Wanda.scaled", fraction)
        zeros = self.m - self.n
        if zeros < _FLOAT_EXACT:
            kept = self.m - round(fraction * zeros)
        else:  # a float product would overflow: round the exact product instead
            kept = self.m - round(Fraction(fraction) * zeros)
        return dataclasses.replace(self, sparsity=None, n=kept)

    @classmethod
    def example_data(cls, st: Any, tensor: Tensor) -> Any:
        """``input_norms`` for ``tensor``: non-negative float64 norms, often tied."""
        if not isinstance(tensor, Tensor) or tensor.dim() < 2:
            return st.just({})
        rest = tuple(tensor.shape[1:])
        size = math.prod(rest)
        tied = st.sampled_from([0.0, 0.5, 1.0, 2.0])
        spread = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)
        values = st.lists(st.one_of(tied, spread), min_size=size, max_size=size)
        return values.map(
            lambda norms: {"input_norms": torch.tensor(norms, dtype=torch.float64).reshape(rest)}
        )

    def rows_to_prune(self, tensor: Tensor) -> int:
        """Entries every row prunes: ``int(in_features * sparsity)``, the reference code's
        count (a floor: 3 of 7 at sparsity 0.5); ``in_features`` is the product of every dim
        but the first. With ``n`` and ``m``: ``in_features // m * (m - n)``."""
        in_features = math.prod(tensor.shape[1:])
        if self.n is not None and self.m is not None:
            return in_features // self.m * (self.m - self.n)
        return int(in_features * self._level)

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(TypeError, describe(tensor), "Wanda needs floating-point weights")
        if tensor.dim() < 2:
            return LeafProblem(ValueError, describe(tensor), _NEEDS_RANK)
        if self.m is not None:
            in_features = math.prod(tensor.shape[1:])
            if in_features % self.m:
                return LeafProblem(
                    ValueError,
                    describe(tensor),
                    f"Wanda n:m = {self.n}:{self.m} needs rows (the weight's dims but the first, "
                    f"flattened: {in_features} entries) whose length is a multiple of "
                    f"m={self.m}",
                )
        norms = data.get("input_norms")
        if norms is None:
            return LeafProblem(ValueError, "no input_norms", _NEEDS_NORMS)
        if not isinstance(norms, Tensor) or not norms.is_floating_point():
            return LeafProblem(TypeError, f"input_norms={describe(norms)}", _NEEDS_NORMS)
        rest = tuple(tensor.shape[1:])
        if tuple(norms.shape) != rest:
            what = "one per input feature"
            if len(rest) > 1:
                what = "one per unfolded input feature (the weight's shape without its first dim)"
            return LeafProblem(
                ValueError,
                f"input_norms of shape {tuple(norms.shape)} for a weight of shape "
                f"{tuple(tensor.shape)}",
                f"Wanda needs input_norms of shape {rest}, {what}",
            )
        if norms.device.type != "meta" and is_plain(norms) and norms.numel():
            bad = ~(norms.isfinite() & (norms >= 0))
            if bool(bad.any()):
                where = tuple(int(i) for i in bad.nonzero()[0])
                index = ", ".join(str(i) for i in where)
                return LeafProblem(
                    ValueError,
                    f"input_norms[{index}] = {norms[where].item()}",
                    "norms must be finite and non-negative",
                )
        return None

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        norms: Tensor = data["input_norms"].to(tensor.device)
        prev_mask: Tensor | None = data.get("prev_mask")
        rows = tensor.shape[0]
        plain = [tensor, norms] + ([] if prev_mask is None else [prev_mask])
        step = _rows_per_chunk(tensor)
        if step >= rows or tensor.device.type != "cpu" or not all(is_plain(t) for t in plain):
            return self._rows_mask(tensor, norms, prev_mask)
        mask = torch.empty(tensor.shape, dtype=torch.bool, device=tensor.device)
        for start in range(0, rows, step):
            part = slice(start, start + step)
            prev = None if prev_mask is None else prev_mask[part]
            mask[part] = self._rows_mask(tensor[part], norms, prev)
        return mask

    def _rows_mask(self, tensor: Tensor, norms: Tensor, prev_mask: Tensor | None) -> Tensor:
        """The keep-mask of ``tensor``'s rows, each row flattened and pruned on its own (or,
        with ``n`` and ``m``, each group of ``m`` of a flattened row)."""
        rows = (tensor.shape[0], math.prod(tensor.shape[1:]))
        scores = (tensor.abs() * norms).reshape(rows)
        prev = None if prev_mask is None else prev_mask.reshape(rows)
        if self.n is not None and self.m is not None:
            if prev is not None:  # pruned before: first in its group
                scores = rank_pruned_first(scores, prev)
            if rows[1] == 0:  # no groups, whatever m
                pruned = torch.zeros(rows, dtype=torch.bool, device=tensor.device)
            else:
                groups = scores.reshape(rows[0], rows[1] // self.m, self.m)
                pruned = smallest_k_per_group(groups, self.m - self.n).reshape(rows)
        else:
            if prev is not None:  # pruned before: rank below every score
                scores = torch.where(prev, scores, torch.full_like(scores, -math.inf))
            pruned = smallest_k(scores, self.rows_to_prune(tensor))
        if prev is not None:
            pruned = pruned | ~prev
        return (~pruned).reshape(tensor.shape)

    def _row_zeros(self, tensor: Tensor, prev_mask: Tensor | None) -> Tensor:
        """Zeros promised in every row: ``int(in * sparsity)``, or more where pruned before
        (with ``n`` and ``m``: per group, the larger of ``m - n`` and its previous zeros)."""
        k = self.rows_to_prune(tensor)
        rows = torch.full((tensor.shape[0],), k, dtype=torch.long)
        if prev_mask is None:
            return rows
        flat = prev_mask.cpu().reshape(tensor.shape[0], math.prod(tensor.shape[1:]))
        if self.n is not None and self.m is not None:
            if flat.shape[1] == 0:
                return rows
            groups = (~flat).reshape(flat.shape[0], flat.shape[1] // self.m, self.m).sum(-1)
            return groups.clamp(min=self.m - self.n).sum(-1)
        return rows.maximum((~flat).sum(-1))

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """``out_features * int(in_features * sparsity)`` (rows pruned before may hold more)."""
        if not isinstance(tensor, Tensor) or tensor.dim() < 2:
            return None
        return int(self._row_zeros(tensor, data.get("prev_mask")).sum())

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every row holds exactly ``int(in_features * sparsity)`` zeros (or its previous
        zeros, where ``prev_mask`` pruned more), and every entry pruned before stays pruned.
        With ``n`` and ``m``: every group of ``m`` in a flattened row keeps exactly ``n``
        (with ``prev_mask``, the smaller of ``n`` and what the group kept before)."""
        if tensor.dim() < 2:
            return None
        prev_mask: Tensor | None = data.get("prev_mask")
        in_features = math.prod(tensor.shape[1:])
        if self.n is not None and self.m is not None:
            return self._pattern_problem(tensor, mask, prev_mask)
        found = (~mask.cpu()).reshape(tensor.shape[0], in_features).sum(-1)
        expected = self._row_zeros(tensor, prev_mask)
        wrong = (found != expected).nonzero()
        if wrong.numel():
            row = int(wrong[0])
            return (
                f"row {row} has {int(found[row])} zeros; every row has {int(expected[row])} "
                f"(int(in_features * sparsity) with sparsity={self.sparsity}, "
                f"in_features={in_features})"
            )
        if prev_mask is not None:
            revived = (mask.cpu() & ~prev_mask.cpu()).nonzero()
            if revived.numel():
                where = ", ".join(str(int(v)) for v in revived[0])
                return f"entry ({where}) was pruned before (prev_mask) but is kept"
        return None

    def _pattern_problem(self, tensor: Tensor, mask: Tensor, prev: Tensor | None) -> str | None:
        """Why ``mask`` is not this method's N:M pattern on ``tensor`` (None: it is)."""
        if self.n is None or self.m is None or tensor.numel() == 0:
            return None
        shape = (tensor.shape[0], math.prod(tensor.shape[1:]) // self.m, self.m)
        kept = mask.cpu().reshape(shape).sum(-1)
        want = torch.full_like(kept, self.n)
        if prev is not None:
            revived = (mask.cpu() & ~prev.cpu()).nonzero()
            if revived.numel():
                where = ", ".join(str(int(v)) for v in revived[0])
                return f"entry ({where}) was pruned before (prev_mask) but is kept"
            want = want.clamp(max=prev.cpu().reshape(shape).sum(-1))
        wrong = (kept != want).nonzero()
        if wrong.numel():
            row, group = (int(v) for v in wrong[0])
            return (
                f"row {row}, group {group} (entries {group * self.m} to "
                f"{(group + 1) * self.m - 1} of the flattened row) keeps {int(kept[row, group])} "
                f"entries; expected {int(want[row, group])} ({self.n}:{self.m})"
            )
        return None


def _rows_per_chunk(tensor: Tensor) -> int:
    """How many rows of ``tensor`` one chunk takes (at least one; all of them for a tensor
    that fits one chunk, an empty one included)."""
    numel = tensor.numel()
    budget = max(_CHUNK_MIN, -(-numel // _CHUNKS))
    if numel <= budget:
        return max(1, tensor.shape[0])
    return max(1, budget // math.prod(tensor.shape[1:]))
