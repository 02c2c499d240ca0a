"""SparseGPT: one-shot pruning with OBS weight updates from a layer's Hessian (Frantar &
Alistarh 2023)."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._errors import require_finite, short_repr
from funcsparse._select import (
    is_plain,
    keep_all_but_lowest,
    rank_pruned_first,
    smallest_k_per_group,
)
from funcsparse.methods._base import (
    LeafProblem,
    LeafResult,
    MaskMethod,
    check_fraction,
    describe,
    require_int,
)
from funcsparse.methods._level import check_sparsity

__all__ = ["SparseGPT"]

_NEEDS_HESSIAN = (
    "SparseGPT needs hessian, the (in_features, in_features) matrix X^T X of the layer's "
    "inputs over the calibration tokens (funcsparse.calibration.collect_hessians)"
)
_NEEDS_RANK = (
    "SparseGPT needs a weight of at least 2 dims (out_features, ...): a Linear's, or a "
    "conv's, flattened over every dim but the first"
)
# Above this, ``fraction * (m - n)`` is computed exactly (a float product overflows).
_FLOAT_EXACT = 1 << 53


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseGPT(MaskMethod):
    """Prune a Linear or conv weight in one shot and update the kept weights to make up for it.

    SparseGPT solves, column block by column block, the layer-wise problem
    ``min ||W X - W' X||^2`` over pruned weights ``W'`` with the Optimal Brain Surgeon
    update: pruning entry ``w`` of column ``i`` moves the row's later weights by
    ``-(w / [H^-1]_ii) [H^-1]_i,i:`` (``H = X^T X``, the inputs' Gram matrix, keyword data
    ``hessian`` of shape ``(in_features, in_features)``; its scale does not matter, from
    float64 subnormals to 1e300: it is rescaled by a power of 4 before use). A
    weight of more than 2 dims (a conv's ``(out, in_channels, *kernel)``) is flattened over
    every dim but the first, ``weight.reshape(out, -1)``, as the reference pipeline prunes
    a conv: ``in_features = in_channels * prod(kernel)``, and the hessian is that of the
    unfolded input in the same order (what ``collect_hessians`` returns for a conv weight);
    mask and updated weight come back in the weight's shape. Which
    entries go is decided per block of ``block_size`` columns, when the sweep reaches the
    block, on the block's weights as earlier blocks left them, by the OBS score
    ``w^2 / [U]_ii^2`` (``U`` the upper Cholesky factor of ``H^-1``: the inverse restricted
    to the columns not yet processed). The lowest score is pruned first.

    * Unstructured (``sparsity``): every block of ``width`` columns prunes exactly
      ``int(out_features * width * sparsity)`` entries (a floor; ties: the lower flat
      position within the block first). The reference code selects with
      ``scores <= sorted[k]`` and so prunes one entry more per block; here the count is
      exact.
    * N:M (``n``, ``m``): every ``m`` consecutive columns of a row keep exactly their ``n``
      highest scores, computed when the sweep reaches the group's first column.
      ``in_features`` must be a multiple of ``m``. The groups are aligned to the row
      (columns ``0:m``, ``m:2m``, ...) and never straddle a block: a block spans
      ``block_size`` rounded down to a multiple of ``m`` columns (126 for ``m=3`` and the
      default 128). The reference code groups relative to each block's start, which for an
      ``m`` that does not divide its block size misaligns the groups with the row's.

    Calling the method returns the mask; :meth:`prune_leaf` (and ``fs.prune`` for a params
    pytree) returns the updated weight too: zero where pruned, the kept entries moved by the
    OBS updates, in the input's dtype. Compute runs in float32 (float64 where the weight or
    the hessian is float64). Nothing passed in is changed.

    Before the factorisation ``damp * mean(diag(H))`` is added to ``H``'s diagonal (the
    paper's 1% dampening). Inputs that never fire (``H_ii == 0``) get ``H_ii = 1`` and their
    weights are set to 0: they score 0 and are pruned first, and a kept one stays 0. Where
    the damped ``H`` is still not positive definite the call raises a ValueError naming the
    damping tried; with ``retries=k`` it first tries again up to ``k`` times, with 10x the
    damping each time, and ``prune_leaf``'s info reports the damping used
    (``{"damp": ..., "retries": ..., "error": ...}``; ``error`` is the sum of the OBS
    estimates ``(w - q)^2 / (2 [U]_ii^2)`` of the loss each pruned entry adds, in ``H``'s
    units: with ``damp=0`` and ``H = X^T X`` it is ``||X (W - W')^T||^2 / 2``). ``H`` is
    symmetrised, ``(H + H^T) / 2``, before use.

    With ``prev_mask`` (``fs.compute_masks(..., prev_masks=...)``), entries pruned before
    are pruned again (ranked before every other entry, whatever their weight) and count
    towards the target: a block prunes ``max(int(out * width * sparsity), its previous
    zeros)`` entries, an N:M group ``max(m - n, its previous zeros)``. The updates make up
    for them too. Masks do not nest as the level rises (the weights, hence the scores,
    depend on what was pruned before): ``nested_levels`` is False.

    In ``fs.Pruner`` (``update(..., hessian=tree)``) the method gives its masks; the updated
    weights come from ``fs.prune``. Not vmappable (a Python loop over the columns); a DTensor
    leaf is refused: prune an unsharded copy.

    Memory: besides the weight and its hessian, a call takes about 1x the hessian's bytes
    (in the compute dtype: one working copy, symmetrised, damped, factorised, inverted and
    factorised again in place; 2x while an attempt that ``retries`` may repeat runs), plus
    about 2-3x the weight's in the compute dtype (its working copy, the update of the
    columns after a block, the result) and strips of about 2^20 entries for the checks.
    A 1024x4096 float32 weight with a float64 hessian takes about 2x the hessian's bytes
    in all.

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[4.0, -1.0, 2.0, 0.5], [1.0, 3.0, -0.25, 2.0]])
        >>> h = torch.eye(4)  # uncorrelated inputs: magnitude pruning, no updates
        >>> fs.SparseGPT(0.5)(w, hessian=h)
        tensor([[ True, False,  True, False],
                [False,  True, False,  True]])
        >>> x = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.9, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        >>> result = fs.SparseGPT(n=2, m=4, damp=0.1).prune_leaf(w, hessian=x.T @ x)
        >>> result.mask
        tensor([[ True, False,  True, False],
                [False,  True, False,  True]])
        >>> result.weight  # the kept weights absorb what the pruned ones did
        tensor([[4.0000, 0.0000, 2.5845, 0.0000],
                [0.0000, 3.8911, 0.0000, 1.9761]])
        >>> round(result.info["damp"], 3)
        0.1
        >>> conv = torch.arange(36.0).reshape(2, 2, 3, 3)  # Conv2d(2, 2, 3).weight
        >>> mask = fs.SparseGPT(n=1, m=3)(conv, hessian=torch.eye(18))  # 18 = 2 * 3 * 3
        >>> mask.shape, mask.reshape(2, 6, 3).sum(-1).unique().tolist()
        (torch.Size([2, 2, 3, 3]), [1])

    Args:
        sparsity: the fraction of every block pruned, in [0, 1]; may be given positionally.
            Default 0.5 when ``n`` and ``m`` are not given.
        n: entries kept in every group of ``m`` consecutive columns (N:M), ``0 <= n <= m``.
            Given with ``m``, instead of ``sparsity``. Default None.
        m: the group size of N:M, ``m >= 1``. Default None.
        block_size: columns per block (``B`` in the paper), ``>= 1`` (``>= m`` with N:M,
            rounded down to a multiple of ``m``). Default 128.
        damp: the fraction of ``mean(diag(H))`` added to ``H``'s diagonal, ``>= 0``.
            Default 0.01.
        retries: how many times a failed factorisation is tried again with 10x the
            damping (needs ``damp > 0``). Default 0: raise at once.

    Raises:
        TypeError: a field of the wrong type; ``sparsity`` given with ``n``/``m``, or ``n``
            without ``m``; on a call, a leaf that is not a floating tensor, or a ``hessian``
            that is not a floating tensor.
        ValueError: a field out of range (``sparsity`` outside [0, 1], ``n`` outside
            ``[0, m]``, ``block_size < 1`` or below ``m``, ``damp < 0``,
            ``retries < 0``, ``retries`` with ``damp=0``); on a call, a weight of fewer than
            2 dims or holding NaN or inf, ``in_features`` not a multiple of ``m``, a ``hessian``
            missing or not of shape ``(in_features, in_features)``, not finite, not
            symmetric, or with a negative diagonal entry, or one that damping does not make
            positive definite; scores or updates that overflow the compute dtype; from
            :meth:`prune_leaf` (and ``fs.prune``), an updated weight that overflows the
            weight's dtype (a float16 weight whose kept entries grow past 65504: prune a
            float32 copy; a call still returns the mask).

    References:
        E. Frantar, D. Alistarh. SparseGPT: Massive Language Models Can Be Accurately
        Pruned in One-Shot. ICML 2023. arXiv:2301.00774.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    n: int | None = None
    m: int | None = None
    block_size: int = 128
    damp: float = 0.01
    retries: int = 0

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"hessian"})
    needs_data: ClassVar[bool] = True
    uses_prev_mask: ClassVar[bool] = True
    vmappable: ClassVar[bool] = False
    nested_levels: ClassVar[bool] = False
    updates_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = "SparseGPT"
        if self.n is None and self.m is None:
            level = 0.5 if self.sparsity is None else self.sparsity
            object.__setattr__(self, "sparsity", check_sparsity(name, level))
        else:
            if self.sparsity is not None:
                raise TypeError(
                    f"{name}: give sparsity (unstructured) or n and m (N:M), not both; got "
                    f"sparsity={short_repr(self.sparsity)}, n={short_repr(self.n)}, "
                    f"m={short_repr(self.m)}"
                )
            if self.n is None or self.m is None:
                raise TypeError(
                    f"{name}: n and m (N:M) go together; got n={short_repr(self.n)}, "
                    f"m={short_repr(self.m)}"
                )
            n = require_int(name, "n", self.n)
            m = require_int(name, "m", self.m)
            if m < 1:
                raise ValueError(f"{name}: m={short_repr(m)} must be at least 1")
            if not 0 <= n <= m:
                raise ValueError(f"{name}: n={short_repr(n)} must be in [0, m] = [0, {m}]")
            object.__setattr__(self, "n", n)
            object.__setattr__(self, "m", m)
        block_size = require_int(name, "block_size", self.block_size)
        if block_size < 1:
            raise ValueError(f"{name}: block_size={short_repr(block_size)} must be at least 1")
        if self.m is not None and block_size < self.m:
            raise ValueError(
                f"{name}: block_size={short_repr(block_size)} must be at least m={self.m}, "
                f"so that a block holds a whole N:M group"
            )
        damp = require_finite(name, "damp", self.damp)
        if damp < 0:
            raise ValueError(f"{name}: damp={short_repr(self.damp)} must be >= 0")
        retries = require_int(name, "retries", self.retries)
        if retries < 0:
            raise ValueError(f"{name}: retries={short_repr(retries)} must be >= 0")
        if retries and damp == 0:
            raise ValueError(
                f"{name}: retries={short_repr(retries)} with damp=0 would try the same damping "
                f"again (10 x 0 = 0); give damp > 0"
            )
        object.__setattr__(self, "block_size", block_size)
        object.__setattr__(self, "damp", damp)
        object.__setattr__(self, "retries", retries)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid configs: unstructured levels and N:M patterns, blocks of 1 column to more
        than the weight, damping of 1% and more (enough for the drawn hessians)."""
        levels = st.one_of(
            st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0, allow_nan=False)
        )
        damps = st.one_of(st.sampled_from([0.01, 0.1]), st.floats(0.01, 10.0))
        unstructured = st.builds(
            cls,
            sparsity=levels,
            block_size=st.sampled_from([1, 2, 3, 4, 5, 8, 128]),
            damp=damps,
            retries=st.sampled_from([0, 2]),
        )
        patterns = st.sampled_from([(2, 4), (1, 2), (1, 4), (4, 8), (0, 2), (2, 2), (1, 1), (2, 3)])
        structured = patterns.flatmap(
            lambda nm: st.builds(
                cls,
                n=st.just(nm[0]),
                m=st.just(nm[1]),
                block_size=st.sampled_from([nm[1], 2 * nm[1], 2 * nm[1] + 1, 128 * nm[1], 128]),
                damp=damps,
            )
        )
        return st.one_of(unstructured, structured)

    @classmethod
    def example_data(cls, st: Any, tensor: Tensor) -> Any:
        """``hessian`` for a 2-D ``tensor``: ``A A^T`` of any rank (0 to full), some inputs
        dead (a zero row and column), at scales 1e-3 to 1e3, float32 or float64."""
        if not isinstance(tensor, Tensor) or tensor.dim() < 2:
            return st.just({})
        size = math.prod(tensor.shape[1:])
        if size > 1024:
            return st.just({})

        def build(seed: int, rank: int, dead: float, scale: float, dtype: torch.dtype) -> Any:
            generator = torch.Generator().manual_seed(seed)
            a = torch.randn(size, rank, generator=generator, dtype=torch.float64)
            h = a @ a.T + (torch.eye(size, dtype=torch.float64) if rank > size else 0.0)
            alive = torch.rand(size, generator=generator, dtype=torch.float64) >= dead
            h = h * alive[:, None] * alive[None, :] * scale
            return {"hessian": ((h + h.T) / 2).to(dtype)}

        return st.builds(
            build,
            st.integers(0, 2**31 - 1),
            st.integers(0, size + 1),
            st.sampled_from([0.0, 0.0, 0.25, 1.0]),
            st.sampled_from([1e-3, 1.0, 1e3]),
            st.sampled_from([torch.float32, torch.float64]),
        )

    def scaled(self, fraction: float) -> SparseGPT:
        """This method at ``fraction`` of its level: ``sparsity * fraction`` unstructured;
        for N:M, ``round(fraction * (m - n))`` zeros per group, as ``fs.NM.scaled``
        (``SparseGPT(n=2, m=4).scaled(0.5)`` is 3:4).

        Raises:
            ValueError: ``fraction`` is not in [0, 1].
        """
        if self.n is None or self.m is None:
            return super().scaled(fraction)  # type: ignore[return-value]
        fraction = check_fraction("SparseGPT.scaled", fraction)
        zeros = self.m - self.n
        kept = (
            self.m - round(fraction * zeros)
            if zeros < _FLOAT_EXACT
            else self.m - round(Fraction(fraction) * zeros)
        )
        return dataclasses.replace(self, n=kept)

    # -- checks -------------------------------------------------------------------------

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "SparseGPT needs floating-point weights"
            )
        if tensor.dim() < 2:
            return LeafProblem(ValueError, describe(tensor), _NEEDS_RANK)
        in_features = math.prod(tensor.shape[1:])
        if self.m is not None and in_features % self.m:
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"SparseGPT n={self.n}, m={self.m} needs in_features ({in_features}) to be a "
                f"multiple of m",
            )
        hessian = data.get("hessian")
        if hessian is None:
            return LeafProblem(ValueError, "no hessian", _NEEDS_HESSIAN)
        if not isinstance(hessian, Tensor) or not hessian.is_floating_point():
            return LeafProblem(
                TypeError,
                f"hessian={describe(hessian)}",
                _NEEDS_HESSIAN.replace("needs hessian", "needs a floating-point hessian"),
            )
        if tuple(hessian.shape) != (in_features, in_features):
            return LeafProblem(
                ValueError,
                f"hessian of shape {tuple(hessian.shape)} for a weight of shape "
                f"{tuple(tensor.shape)}",
                f"SparseGPT needs a hessian of shape ({in_features}, {in_features}), "
                f"(in_features, in_features), in_features the product of the weight's dims "
                f"but the first",
            )
        if _has_values(tensor):
            bad = ~tensor.isfinite()
            if bool(bad.any()):
                where = tuple(int(v) for v in bad.nonzero()[0])
                return LeafProblem(
                    ValueError,
                    f"tensor[{', '.join(map(str, where))}] = {tensor[where].item()}",
                    "SparseGPT needs finite weights (an update would spread a NaN or inf "
                    "along the row)",
                )
        if _has_values(hessian):
            return _hessian_problem(hessian)
        return None

    # -- the algorithm ------------------------------------------------------------------

    def prune_leaf(self, tensor: Tensor, /, **data: Any) -> LeafResult:
        """The mask, the OBS-updated weight and ``{"damp", "retries", "error"}``.

        ``weight`` is ``tensor``'s shape, dtype and device, exactly 0 where ``mask`` is
        False; ``info["damp"]`` is the damping fraction used (``damp * 10**retries``).

        Raises:
            TypeError, ValueError: as a call of the method does.
        """
        problem = self.check_call(tensor, **data)
        if problem is not None:
            raise problem.error(f"SparseGPT: got {problem.got}; {problem.need}")
        hessian: Tensor = data["hessian"].detach()
        prev_mask: Tensor | None = data.get("prev_mask")
        result = self._prune(
            tensor.detach(), hessian, None if prev_mask is None else prev_mask.detach()
        )
        flat = result.weight.reshape(tensor.shape[0], math.prod(tensor.shape[1:]))
        bad = ~flat.isfinite()
        if bool(bad.any()):  # the mask alone (a call of the method) is still right
            i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"SparseGPT: the updated weight (flattened) [{i}, {j}] does not fit "
                f"{tensor.dtype}: the OBS updates grow it past the dtype's range (the mask, "
                f"which a call of the method returns, is right); prune a float32 copy "
                f"(tensor.float()) and scale or clamp the result yourself"
            )
        return result

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        return self._prune(tensor, data["hessian"], data.get("prev_mask")).mask

    @property
    def _width(self) -> int:
        """The columns per block: ``block_size``, rounded down to a multiple of ``m``."""
        return self.block_size if self.m is None else self.block_size // self.m * self.m

    def _prune(self, tensor: Tensor, hessian: Tensor, prev_mask: Tensor | None) -> LeafResult:
        """SparseGPT on a checked, detached weight of 2 dims or more, flattened over every
        dim but the first (the paper's Algorithm 1)."""
        if tensor.numel() == 0:
            mask = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
            return LeafResult(
                mask, tensor.clone(), {"damp": self.damp, "retries": 0.0, "error": 0.0}
            )
        shape = tensor.shape
        rows, cols = shape[0], math.prod(shape[1:])
        if prev_mask is not None:
            prev_mask = prev_mask.reshape(rows, cols)
        dtype = torch.promote_types(torch.promote_types(tensor.dtype, hessian.dtype), torch.float32)
        weight = tensor.reshape(rows, cols).to(dtype, copy=True)
        # The one working copy of H: symmetrised, dead inputs set, scaled and damped in
        # place, then factorised, inverted and factorised again over itself (``_inverse_factor``).
        h = hessian.to(tensor.device, dtype, copy=True, memory_format=torch.contiguous_format)
        _symmetrise_(h)
        dead = h.diagonal() == 0
        h.diagonal()[dead] = 1.0
        weight[:, dead] = 0.0
        # H's scale does not change the result: scale it by a power of 4 that brings the
        # mean of its diagonal near 1 (exact in floating point: every later value scales by
        # a power of 2 and rounds the same), so that a tiny or huge H neither underflows nor
        # overflows the factorisation. ``error`` is scaled back below.
        halves = -(math.frexp(float(h.diagonal().mean()))[1] // 2)
        h.mul_(2.0**halves).mul_(2.0**halves)
        upper, damp, retries = self._inverse_factor(h)
        del h  # consumed (it may be ``upper``'s storage)
        diag = upper.diagonal()
        pruned = torch.zeros((rows, cols), dtype=torch.bool, device=tensor.device)
        error = torch.zeros((), dtype=dtype, device=tensor.device)
        zero = torch.zeros((), dtype=dtype, device=tensor.device)
        width = self._width
        for start in range(0, cols, width):
            stop = min(start + width, cols)
            block = weight[:, start:stop].clone()
            errors = torch.empty_like(block)
            d = diag[start:stop]
            prev = None if prev_mask is None else prev_mask[:, start:stop]
            if self.sparsity is not None:
                k = int(rows * (stop - start) * self.sparsity)
                scores = block.square() / d.square()
                pruned[:, start:stop] = ~keep_all_but_lowest(
                    scores, k, None if prev is None else prev.contiguous()
                )
            for i in range(stop - start):
                if self.m is not None and i % self.m == 0:
                    group = slice(i, i + self.m)
                    pruned[:, start + i : start + i + self.m] = self._group_pruned(
                        block[:, group].square() / d[group].square(),
                        None if prev is None else prev[:, group],
                    )
                column = block[:, i]
                kept = torch.where(pruned[:, start + i], zero, column)
                err = (column - kept) / d[i]
                error = error + err.square().sum() / 2
                block[:, i:] -= err[:, None] * upper[start + i, start + i : stop][None, :]
                block[:, i] = kept  # exactly 0 where pruned
                errors[:, i] = err
            weight[:, start:stop] = block
            if stop < cols:
                weight[:, stop:] -= errors @ upper[start:stop, stop:]
        total = float(error) * 2.0**-halves * 2.0**-halves
        if not math.isfinite(total) or not bool(weight.isfinite().all()):
            raise ValueError(
                f"SparseGPT: the OBS scores or updates overflow {dtype} (error estimate "
                f"{total}): the weights are too large for it; prune a float64 copy "
                f"(tensor.double(), hessian.double())"
            )
        info = {"damp": damp, "retries": float(retries), "error": total}
        return LeafResult((~pruned).reshape(shape), weight.to(tensor.dtype).reshape(shape), info)

    def _group_pruned(self, scores: Tensor, prev: Tensor | None) -> Tensor:
        """The N:M groups' pruned entries: ``m - n`` lowest scores per row of ``scores``
        ``(out, m)`` (and every entry ``prev`` pruned, ranked first)."""
        zeros = (self.m or 0) - (self.n or 0)
        if prev is None:
            return smallest_k_per_group(scores, zeros)
        ranked = rank_pruned_first(scores, prev.contiguous())
        return smallest_k_per_group(ranked, zeros) | ~prev

    def _inverse_factor(self, h: Tensor) -> tuple[Tensor, float, int]:
        """The upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``, the damping
        fraction used and the retries it took.

        ``h`` (symmetric, square) is consumed: the factorisation, the inverse and its
        factor are written over it (through its transpose, the column-major layout LAPACK
        works in, which holds the same values as ``h``), so no other matrix of its size is
        allocated; only an attempt that may be retried works on a copy.
        """
        mean = h.diagonal().mean()
        tried: list[float] = []
        damp = self.damp
        info = torch.zeros((), dtype=torch.int32, device=h.device)
        for attempt in range(self.retries + 1):
            if not math.isfinite(damp):
                break
            tried.append(damp)
            last = attempt == self.retries or not math.isfinite(damp * 10)
            work = (h if last else h.clone()).mT  # column-major: factorised in place
            work.diagonal().add_(damp * mean)
            # In place (out= aliasing the input) where it was checked bit for bit: CPU,
            # torch's LAPACK path. Elsewhere each step allocates its result (2x H at most).
            in_place = _factors_in_place(work.device)
            if in_place:
                torch.linalg.cholesky_ex(work, out=(work, info))
            else:
                work, info = torch.linalg.cholesky_ex(work)
            if int(info) == 0:
                if in_place:
                    torch.cholesky_inverse(work, out=work)
                    torch.linalg.cholesky_ex(work, upper=True, out=(work, info))
                else:
                    work, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(work), upper=True)
                diag = work.diagonal()
                if int(info) == 0 and bool((diag.isfinite() & (diag > 0)).all()):
                    return work, damp, attempt
            del work
            damp *= 10
        values = [f"{d:g}" for d in tried]
        shown = values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"
        hint = (
            "give a larger damp, or retries=k to try again with 10x the damping up to k times"
            if not self.retries
            else "give a larger damp or more retries"
        )
        raise ValueError(
            f"SparseGPT: the damped hessian is not positive definite: the Cholesky "
            f"factorisation failed with damp={shown}{' in turn' if len(values) > 1 else ''} "
            f"(the fraction of mean(diag(hessian)) added to its diagonal); {hint}"
        )

    # -- promises -----------------------------------------------------------------------

    def _units(self, tensor: Tensor) -> list[tuple[int, int, int]]:
        """``(start, stop, zeros)`` of every unit with an exact count: blocks of columns
        (unstructured) or N:M groups of columns."""
        rows, cols = tensor.shape[0], math.prod(tensor.shape[1:])
        if self.m is not None and self.n is not None:
            return [(s, s + self.m, rows * (self.m - self.n)) for s in range(0, cols, self.m)]
        level = float(self.sparsity or 0.0)
        width = self._width
        return [
            (s, min(s + width, cols), int(rows * (min(s + width, cols) - s) * level))
            for s in range(0, cols, width)
        ]

    def _zeros(self, tensor: Tensor, prev_mask: Tensor | None) -> list[int]:
        """Zeros promised per unit (blocks, or N:M groups of every row), prev_mask counted."""
        rows, cols = tensor.shape[0], math.prod(tensor.shape[1:])
        if prev_mask is not None:
            prev_mask = prev_mask.cpu().reshape(rows, cols)
        if self.m is not None and self.n is not None:
            m = self.m
            zeros = torch.full((rows, cols // m), m - self.n, dtype=torch.long)
            if prev_mask is not None:
                zeros = zeros.maximum((~prev_mask).reshape(rows, cols // m, m).sum(-1))
            return [int(z) for z in zeros.reshape(-1)]
        result = []
        for start, stop, k in self._units(tensor):
            if prev_mask is not None:
                k = max(k, int((~prev_mask[:, start:stop]).sum()))
            result.append(k)
        return result

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The sum over blocks of ``int(out * width * sparsity)`` (N:M: ``m - n`` per
        group); a unit pruned more before (``prev_mask``) keeps its previous zeros."""
        if not isinstance(tensor, Tensor) or tensor.dim() < 2:
            return None
        return sum(self._zeros(tensor, data.get("prev_mask")))

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every block (N:M: every group of every row) holds exactly its promised zeros,
        and no entry pruned before (``prev_mask``) is kept."""
        if tensor.dim() < 2 or tensor.numel() == 0:
            return None
        rows, cols = tensor.shape[0], math.prod(tensor.shape[1:])
        prev_mask: Tensor | None = data.get("prev_mask")
        if prev_mask is not None:
            prev_mask = prev_mask.cpu().reshape(rows, cols)
        mask = mask.cpu().reshape(rows, cols)
        zeros = ~mask
        expected = self._zeros(tensor, prev_mask)
        if self.m is not None:
            found = zeros.reshape(rows, cols // self.m, self.m).sum(-1).reshape(-1)
            for index, (got, want) in enumerate(zip(found.tolist(), expected, strict=True)):
                if got != want:
                    row, group = divmod(index, cols // self.m)
                    return (
                        f"row {row}, columns {group * self.m}:{(group + 1) * self.m} hold "
                        f"{got} zeros; every group of m={self.m} holds {want}"
                    )
        else:
            for (start, stop, _), want in zip(self._units(tensor), expected, strict=True):
                got = int(zeros[:, start:stop].sum())
                if got != want:
                    return (
                        f"columns {start}:{stop} hold {got} zeros; that block holds {want} "
                        f"(int(out_features * width * sparsity), sparsity={self.sparsity})"
                    )
        if prev_mask is not None:
            revived = (mask & ~prev_mask).nonzero()
            if revived.numel():
                where = ", ".join(str(int(v)) for v in revived[0])
                return (
                    f"entry ({where}) of the flattened weight was pruned before (prev_mask) "
                    f"but is kept"
                )
        return None


def _row_chunks(matrix: Tensor) -> range:
    """Starts of the row strips a square ``matrix`` is walked in: about 2^20 entries each
    (at least 1 row), so that a strip's temporaries stay small beside the matrix."""
    size = matrix.shape[0]
    return range(0, size, max(1, (1 << 20) // max(size, 1)))


def _symmetrise_(h: Tensor) -> None:
    """Set square ``h`` to ``(h + h^T) / 2`` in place, bit for bit, a strip of rows at a
    time (no full-size temporary): strip ``i:j`` and its mirror ``i:, i:j`` hold the same
    values, and neither was written before."""
    step = _row_chunks(h).step
    for start in _row_chunks(h):
        stop = start + step
        strip = h[start:stop, start:] + h[start:, start:stop].T
        strip /= 2
        h[start:stop, start:] = strip
        h[start:, start:stop] = strip.T


def _has_values(tensor: Tensor) -> bool:
    """Whether ``tensor``'s values can be read here (not meta, not under a transform)."""
    return tensor.device.type != "meta" and is_plain(tensor) and tensor.numel() > 0


def _hessian_problem(hessian: Tensor) -> LeafProblem | None:
    """Why ``hessian`` (square, of values) is no Gram matrix: not finite, a negative
    diagonal entry, or not symmetric (to a tolerance of its dtype); or None.

    Walked a strip of rows at a time: no temporary of the hessian's size."""
    hessian = hessian.detach()
    starts = _row_chunks(hessian)
    for start in starts:
        bad = ~hessian[start : start + starts.step].isfinite()
        if bool(bad.any()):
            i, j = (int(v) for v in bad.nonzero()[0])
            i += start
            return LeafProblem(
                ValueError,
                f"hessian[{i}, {j}] = {hessian[i, j].item()}",
                "SparseGPT needs a finite hessian",
            )
    diag = hessian.diagonal()
    if bool((diag < 0).any()):
        i = int((diag < 0).nonzero()[0])
        return LeafProblem(
            ValueError,
            f"hessian[{i}, {i}] = {diag[i].item()}",
            "SparseGPT needs a hessian X^T X, whose diagonal is >= 0",
        )
    largest = float(torch.linalg.vector_norm(hessian, ord=math.inf).double())

    def gap(start: int) -> Tensor:
        """``|H - H^T|`` over strip ``start`` of rows, in float64."""
        rows = slice(start, start + starts.step)
        return (hessian[rows].double() - hessian[:, rows].T.double()).abs()

    widest = max(float(gap(start).max()) for start in starts)
    tolerance = max(1e-4, 2 * torch.finfo(hessian.dtype).eps) * largest
    if widest > tolerance:
        for start in starts:
            hits = (gap(start) == widest).nonzero()
            if hits.numel():
                i, j = int(hits[0, 0]) + start, int(hits[0, 1])
                break
        return LeafProblem(
            ValueError,
            f"hessian[{i}, {j}] = {hessian[i, j].item()} but hessian[{j}, {i}] = "
            f"{hessian[j, i].item()}",
            f"SparseGPT needs a symmetric hessian (to a relative tolerance of "
            f"{tolerance / max(largest, 1e-300):.0e})",
        )
    return None


def _factors_in_place(device: torch.device) -> bool:
    """Whether the Hessian's factorisation may write over its input (``out=`` aliasing it):
    on the CPU, where torch's LAPACK path was checked to give the same bits."""
    return device.type == "cpu"
