"""WeightNorm: prune the blocks of lowest norm (torch.ao's WeightNormSparsifier, as a function)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from funcsparse._select import lowest_covering, smallest_k, smallest_k_per_group
from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int
from funcsparse.methods._level import check_sparsity

__all__ = ["WeightNorm"]

# Blocks up to this many entries get their scores summed from strided views of the weight
# (bit-identical to avg_pool2d's loop); larger blocks go through avg_pool2d itself.
_FUSED_BLOCK_MAX = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightNorm(MaskMethod):
    """Zero the blocks of a 2-D weight whose mean norm is lowest.

    The weight is cut into ``sparse_block_shape`` blocks starting at index ``(0, 0)``; the
    last row and column of blocks may be partial. Each block's score is the mean of
    ``norm(w)`` over its entries (``|w|`` for ``norm=1``, ``w * w`` for ``norm=2``, or any
    elementwise callable). ``round(sparsity * n_blocks)`` blocks of lowest score are
    selected (at most ``n_blocks - 1`` while ``sparsity < 1``, all of them at
    ``sparsity=1``), and in each selected block the ``zeros_per_block`` entries of lowest
    ``norm(w)`` are zeroed. With ``zeros_per_block`` equal to the block size whole blocks
    are zeroed; with ``sparsity=1.0, sparse_block_shape=(1, 4), zeros_per_block=2`` every
    row gets the 2:4 pattern.

    The masks equal ``torch.ao.pruning.WeightNormSparsifier``'s bit for bit wherever the
    scores have no ties. Ties follow funcsparse's rule (equal scores: the lower row-major
    index is pruned first; NaN counts as the largest score), so the count of zeros is always
    exact. Where the block shape does not divide the weight and ``0 < zeros_per_block <
    block size``, torch.ao crashes (levels in (0, 1)) or stores a padded-shape mask (level
    >= 1); funcsparse returns what torch.ao computes on its padded grid, cropped to the
    weight's shape: padding never takes a block's zeros.

    Keyword data: ``scores``, importance scores of the weight's shape, ranked as given in
    place of ``norm(w)`` (signed: a block's score is the mean of its entries' scores, the
    lowest is pruned first). ``prev_mask``, the mask of an earlier round: nothing pruned
    before comes back, the weights are scored as the model sees them (pruned entries are
    0), pruned entries are the first of their block's zeros, and blocks are taken in rank
    order until the zeros, old and new, reach the level's target (the zeros of the
    ``round(sparsity * n_blocks)`` lowest-ranked blocks: ``round(sparsity * n_blocks) *
    zeros_per_block`` where the blocks divide the weight).

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[1.0, -4.0, 0.5, 3.0], [2.0, -0.1, 6.0, 0.2]])
        >>> fs.WeightNorm(0.5, sparse_block_shape=(1, 2))(w)
        tensor([[ True,  True, False, False],
                [False, False,  True,  True]])
        >>> fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=2)(w)
        tensor([[False,  True, False,  True],
                [ True, False,  True, False]])

    Args:
        sparsity: the fraction of blocks selected, in ``[0, 1]``; may be given
            positionally. Default 0.5.
        sparse_block_shape: ``(block_rows, block_cols)``, positive ints. Default ``(1, 4)``.
        zeros_per_block: entries zeroed in each selected block, from 0 to the block size.
            Default None: the whole block.
        norm: 1, 2 or an elementwise callable ``Tensor -> Tensor``. Default 2.

    Raises:
        TypeError: a field of the wrong type; on a call, a leaf that is not a floating tensor,
            or a ``norm`` callable that does not return a real tensor of the weight's shape.
        ValueError: ``sparsity`` is outside [0, 1] or NaN, a block side is not positive,
            ``zeros_per_block`` is negative or above the block size, ``norm`` is an int other
            than 1 or 2; on a call, a weight that is not 2-D.

    References:
        torch.ao.pruning.WeightNormSparsifier (PyTorch), whose semantics this reproduces.
    """

    sparsity: float = dataclasses.field(default=0.5, kw_only=False)
    sparse_block_shape: tuple[int, int] = (1, 4)
    zeros_per_block: int | None = None
    norm: int | Callable[[Tensor], Tensor] = 2

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})
    uses_prev_mask: ClassVar[bool] = True

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid WeightNorm configs: levels in [0, 1], blocks up to 4x4, norms 1, 2."""
        levels = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))

        def with_shape(shape: tuple[int, int]) -> Any:
            zeros = st.one_of(st.none(), st.integers(0, shape[0] * shape[1]))
            norms = st.sampled_from([1, 2])
            return st.builds(
                cls,
                sparsity=levels,
                sparse_block_shape=st.just(shape),
                zeros_per_block=zeros,
                norm=norms,
            )

        return st.tuples(st.integers(1, 4), st.integers(1, 4)).flatmap(with_shape)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity("WeightNorm", self.sparsity))
        shape = self.sparse_block_shape
        if not isinstance(shape, Sequence) or isinstance(shape, str) or len(shape) != 2:
            raise TypeError(f"WeightNorm: sparse_block_shape must be a pair of ints, got {shape!r}")
        rows = require_int("WeightNorm", "sparse_block_shape[0]", shape[0])
        cols = require_int("WeightNorm", "sparse_block_shape[1]", shape[1])
        if rows <= 0 or cols <= 0:
            raise ValueError(
                f"WeightNorm: sparse_block_shape sides must be positive, got {(rows, cols)}"
            )
        object.__setattr__(self, "sparse_block_shape", (rows, cols))
        if self.zeros_per_block is not None:
            zeros = require_int("WeightNorm", "zeros_per_block", self.zeros_per_block)
            if zeros > rows * cols:
                raise ValueError(
                    "WeightNorm: Number of zeros per block cannot be more than the total "
                    f"number of elements in that block (zeros_per_block={zeros}, "
                    f"block {rows}x{cols} has {rows * cols})."
                )
            if zeros < 0:
                raise ValueError(
                    "WeightNorm: Number of zeros per block should be positive "
                    f"(zeros_per_block={zeros})."
                )
        norm = self.norm
        if not callable(norm):
            require_int("WeightNorm", "norm", norm)
            if norm not in (1, 2):
                raise ValueError(
                    f"WeightNorm: norm must be 1, 2 or a callable, got {norm!r} "
                    f"(L-{norm} is not implemented)"
                )

    @property
    def block_size(self) -> int:
        """Entries per block."""
        return self.sparse_block_shape[0] * self.sparse_block_shape[1]

    @property
    def block_zeros(self) -> int:
        """Entries zeroed per selected block (``zeros_per_block``, default the block size)."""
        return self.block_size if self.zeros_per_block is None else self.zeros_per_block

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(
                TypeError, describe(tensor), "WeightNorm needs floating-point weights"
            )
        if tensor.dim() != 2:
            return LeafProblem(ValueError, describe(tensor), "WeightNorm needs 2-D weights")
        return None

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        prev_mask: Tensor | None = data.get("prev_mask")
        given: Tensor | None = data.get("scores")
        level, zeros = self.sparsity, self.block_zeros
        if prev_mask is not None and given is None:  # the weights as the model sees them
            tensor = torch.where(prev_mask, tensor, torch.zeros((), dtype=tensor.dtype))
        if level <= 0 or zeros == 0 or tensor.numel() == 0:
            ones = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
            return ones if prev_mask is None else prev_mask.clone()
        entries = self._scores(tensor) if given is None else given
        if prev_mask is not None:
            source = tensor if given is None else given
            return self._mask_after(source, entries, prev_mask, given=given is not None)
        if level >= 1 and zeros == self.block_size:
            return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        if level >= 1:
            return self._zeros_within_blocks(entries).logical_not()
        keep = self._kept_blocks(tensor if given is None else given, level, given=given is not None)
        if zeros < self.block_size:
            keep = keep | self._zeros_within_blocks(entries).logical_not()
        return keep

    def _mask_after(
        self, source: Tensor, entries: Tensor, prev_mask: Tensor, *, given: bool
    ) -> Tensor:
        """The mask given an earlier one: its zeros stay and count towards the target."""
        rows, cols = self.sparse_block_shape
        grid_rows, grid_cols = self._block_grid(source)
        height, width = source.shape
        ranked = torch.where(prev_mask, entries, torch.full_like(entries, -torch.inf))
        within = self._zeros_within_blocks(ranked)  # pruned entries come first in a block
        if self.sparsity < 1:
            pad = (0, grid_cols * cols - width, 0, grid_rows * rows - height)
            old = _as_groups(F.pad((~prev_mask).to(torch.int64), pad), rows, cols).sum(-1)
            quota = self._block_sizes(source).to(old.device).clamp(max=self.block_zeros)
            n_blocks = grid_rows * grid_cols
            k = max(0, min(n_blocks - 1, round(self.sparsity * n_blocks)))
            scores = self._block_scores(source, given=given).reshape(-1)
            # The target: the zeros the k lowest-ranked blocks take (k * zeros_per_block
            # where the blocks divide the weight), so an all-True prev_mask changes nothing.
            target = (quota.reshape(-1) * smallest_k(scores, k)).sum()
            gains = (quota - old).clamp(min=0).reshape(-1)
            selected = lowest_covering(scores, gains, target - old.sum())
            selected = selected.view(grid_rows, 1, grid_cols, 1)
            selected = selected.expand(grid_rows, rows, grid_cols, cols)
            selected = selected.reshape(grid_rows * rows, grid_cols * cols)[:height, :width]
            within = within & selected
        return within.logical_not() & prev_mask

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """Exact zeros, where they do not depend on which blocks the data selects.

        Levels in (0, 1) over partial blocks (or after a ``prev_mask``) select blocks of
        different sizes, so the count is data-dependent there (None);
        :meth:`structure_problem` still pins every block.
        """
        level, zeros = self.sparsity, self.block_zeros
        prev_mask = data.get("prev_mask")
        old = self._old_zeros(tensor, prev_mask)
        if level <= 0 or zeros == 0 or tensor.numel() == 0:
            return int(old.sum())
        sizes = self._block_sizes(tensor)
        if level >= 1:
            return int(sizes.clamp(max=zeros).maximum(old).sum())
        if prev_mask is None and bool((sizes == self.block_size).all()):
            n_blocks = sizes.numel()
            return max(0, min(n_blocks - 1, round(level * n_blocks))) * zeros
        return None

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Every block holds its old zeros or ``max(min(zeros_per_block, its size), old)``
        (selected), and the number of selected blocks is ``round(level * n_blocks)`` (all
        blocks at level 1); after a ``prev_mask``, nothing pruned comes back and the zeros
        reach the target unless every block was taken."""
        level, zeros = self.sparsity, self.block_zeros
        if tensor.numel() == 0:
            return None
        prev_mask = data.get("prev_mask")
        if prev_mask is not None and bool((mask.cpu() & ~prev_mask.cpu()).any()):
            return "the mask keeps entries that prev_mask prunes"
        rows, cols = self.sparse_block_shape
        grid_rows, grid_cols = self._block_grid(tensor)
        padded = torch.ones(grid_rows * rows, grid_cols * cols, dtype=torch.bool)
        padded[: tensor.shape[0], : tensor.shape[1]] = mask.cpu()
        block_zeros = (~_as_groups(padded, rows, cols)).sum(-1).flatten()
        old = self._old_zeros(tensor, prev_mask).flatten()
        full = self._block_sizes(tensor).clamp(max=zeros).flatten().maximum(old)
        n_blocks = block_zeros.numel()
        if level <= 0 or zeros == 0:
            selected = 0
        elif level >= 1:
            selected = n_blocks
        else:
            selected = max(0, min(n_blocks - 1, round(level * n_blocks)))
        partial = (block_zeros != old) & (block_zeros != full)
        if bool(partial.any()):
            index = int(partial.nonzero()[0])
            return (
                f"block {divmod(index, grid_cols)} has {int(block_zeros[index])} zeros; a block "
                f"has {int(old[index])} or {int(full[index])}"
            )
        if prev_mask is None:
            if int((block_zeros != 0).sum()) != (selected if zeros else 0):
                return (
                    f"{int((block_zeros != 0).sum())} blocks have zeros; expected {selected} "
                    f"of {n_blocks} (sparsity={level})"
                )
            return None
        quota = self._block_sizes(tensor).clamp(max=zeros).flatten()
        target = int(quota.sort().values[:selected].sum())  # the least the blocks can take
        if int(block_zeros.sum()) < target and not bool((block_zeros == full).all()):
            return f"{int(block_zeros.sum())} zeros; the level's target is {target}"
        return None

    def _old_zeros(self, tensor: Tensor, prev_mask: Tensor | None) -> Tensor:
        """Zeros of ``prev_mask`` in every block, ``(grid_rows, grid_cols)`` (0 without it)."""
        rows, cols = self.sparse_block_shape
        grid_rows, grid_cols = self._block_grid(tensor)
        if prev_mask is None:
            return torch.zeros(grid_rows, grid_cols, dtype=torch.int64)
        padded = torch.zeros(grid_rows * rows, grid_cols * cols, dtype=torch.int64)
        padded[: tensor.shape[0], : tensor.shape[1]] = (~prev_mask.cpu()).to(torch.int64)
        return _as_groups(padded, rows, cols).sum(-1)

    def _block_sizes(self, tensor: Tensor) -> Tensor:
        """Entries of every block inside the weight, ``(grid_rows, grid_cols)``."""
        rows, cols = self.sparse_block_shape
        grid_rows, grid_cols = self._block_grid(tensor)
        row_sizes = (tensor.shape[0] - torch.arange(grid_rows) * rows).clamp(max=rows)
        col_sizes = (tensor.shape[1] - torch.arange(grid_cols) * cols).clamp(max=cols)
        return row_sizes[:, None] * col_sizes[None, :]

    def _scores(self, tensor: Tensor) -> Tensor:
        """``norm(w)`` elementwise, exactly as torch.ao computes it."""
        if self.norm == 1:
            return tensor.abs()
        if self.norm == 2:
            return tensor * tensor
        if not callable(self.norm):  # unreachable after __post_init__; narrows the type
            raise TypeError(f"WeightNorm: norm must be 1, 2 or a callable, got {self.norm!r}")
        scores = self.norm(tensor.clone())  # a callable may work in place: not on the weight
        if (
            not isinstance(scores, Tensor)
            or scores.shape != tensor.shape
            or not scores.is_floating_point()
        ):
            raise TypeError(
                f"WeightNorm: norm callable must return a floating tensor of shape "
                f"{tuple(tensor.shape)}, got {describe(scores)}"
            )
        return scores

    def _block_grid(self, tensor: Tensor) -> tuple[int, int]:
        rows, cols = self.sparse_block_shape
        return -(-tensor.shape[0] // rows), -(-tensor.shape[1] // cols)

    def _kept_blocks(self, tensor: Tensor, level: float, *, given: bool) -> Tensor:
        """Entries outside the ``round(level * n_blocks)`` blocks of lowest mean score."""
        rows, cols = self.sparse_block_shape
        grid_rows, grid_cols = self._block_grid(tensor)
        n_blocks = grid_rows * grid_cols
        k = max(0, min(n_blocks - 1, round(level * n_blocks)))
        pruned = smallest_k(self._block_scores(tensor, given=given).reshape(-1), k)
        # One pass from the block grid to the entries, negated on the way.
        keep = pruned.view(grid_rows, 1, grid_cols, 1).expand(grid_rows, rows, grid_cols, cols)
        keep = keep.logical_not().reshape(grid_rows * rows, grid_cols * cols)
        height, width = tensor.shape
        return keep if keep.shape == tensor.shape else keep[:height, :width]

    def _block_scores(self, tensor: Tensor, *, given: bool = False) -> Tensor:
        """Mean score per block, bit-identical to torch.ao's ``avg_pool2d(ceil_mode=True)``.

        ``given``: ``tensor`` holds scores to average as they are, not weights to take the
        norm of.
        """
        rows, cols = self.sparse_block_shape
        if self.block_size == 1:
            return tensor if given else self._scores(tensor)
        height, width = tensor.shape
        fused = (
            not given
            and self.norm in (1, 2)
            and tensor.dtype in (torch.float32, torch.float64)
            and height % rows == 0
            and width % cols == 0
            and self.block_size <= _FUSED_BLOCK_MAX
        )
        if not fused:
            scores = (tensor if given else self._scores(tensor))[None, None]
            pooled = F.avg_pool2d(scores, self.sparse_block_shape, ceil_mode=True)
            return pooled[0, 0]
        # avg_pool2d sums a window row by row, left to right, then divides: do the same
        # over strided views, without materialising norm(w) for the whole weight.
        blocks = tensor.reshape(height // rows, rows, width // cols, cols)
        total: Tensor | None = None
        for r in range(rows):
            for c in range(cols):
                entry = blocks[:, r, :, c]
                term = entry.abs() if self.norm == 1 else entry * entry
                total = term if total is None else total + term
        if total is None:  # unreachable: a block has at least one entry
            raise ValueError("WeightNorm: empty block")
        return total / self.block_size

    def _zeros_within_blocks(self, scores: Tensor) -> Tensor:
        """Entries among the ``block_zeros`` lowest scores of their block."""
        rows, cols = self.sparse_block_shape
        height, width = scores.shape
        grid_rows, grid_cols = -(-height // rows), -(-width // cols)
        pad_rows, pad_cols = grid_rows * rows - height, grid_cols * cols - width
        valid: Tensor | None = None
        if pad_rows or pad_cols:
            scores = F.pad(scores, (0, pad_cols, 0, pad_rows))
            valid = torch.ones((height, width), dtype=torch.bool, device=scores.device)
            valid = F.pad(valid, (0, pad_cols, 0, pad_rows), value=False)
            valid = _as_groups(valid, rows, cols)
        selected = smallest_k_per_group(
            _as_groups(scores, rows, cols), self.block_zeros, valid=valid
        )
        selected = selected.view(grid_rows, grid_cols, rows, cols).permute(0, 2, 1, 3)
        return selected.reshape(grid_rows * rows, grid_cols * cols)[:height, :width]


def _as_groups(grid: Tensor, rows: int, cols: int) -> Tensor:
    """``(H, W)``, sides divisible by the block, to ``(H/rows, W/cols, rows*cols)`` (row-major)."""
    height, width = grid.shape
    blocks = grid.reshape(height // rows, rows, width // cols, cols)
    if rows == 1:
        return blocks.squeeze(1)
    return blocks.permute(0, 2, 1, 3).reshape(height // rows, width // cols, rows * cols)
