"""WeightNorm: prune the blocks of lowest norm (torch.ao's WeightNormSparsifier, as a function)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse._select import (
    is_plain,
    keep_all_but_lowest,
    keep_all_but_lowest_drawn,
    lowest_covering,
    rank_pruned_first,
    smallest_k,
    smallest_k_per_group,
)
from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int
from funcsparse.methods._level import check_sparsity

__all__ = ["WeightNorm"]

# Blocks up to this many entries get their scores summed from strided views of the weight
# (bit-identical to avg_pool2d's loop); larger blocks go through avg_pool2d itself.
_FUSED_BLOCK_MAX = 16
# Entries of the weight worked on at a time (a tile of whole blocks): a sixteenth of the
# weight, at least a 32nd and at most all of this. The temporaries of a call stay a small
# fraction of a large weight (the mask is the only large output), and tiles stay large
# enough that the per-tile overhead (and threads' start-up) does not show.
_TILE_ENTRIES = 1 << 21


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightNorm(MaskMethod):
    """Zero the blocks of a 2-D weight whose mean norm is lowest.

    The weight is cut into ``sparse_block_shape`` blocks starting at index ``(0, 0)``. Each
    block's score is the mean of ``norm(w)`` over its entries (``|w|`` for ``norm=1``,
    ``w * w`` for ``norm=2``, or any elementwise callable). ``round(sparsity * n_blocks)``
    blocks of lowest score are selected (at most ``n_blocks - 1`` while ``sparsity < 1``,
    all of them at ``sparsity=1``), and in each selected block the ``zeros_per_block``
    entries of lowest ``norm(w)`` are zeroed. With ``zeros_per_block`` equal to the block
    size whole blocks are zeroed; with ``sparsity=1.0, sparse_block_shape=(1, 4),
    zeros_per_block=2`` every row gets the 2:4 pattern.

    Blocks that do not divide the weight. With whole blocks (``zeros_per_block`` None or
    the block size) the last row and column of blocks are partial, as in torch.ao: an edge
    block scores the mean over its real entries, counts as one block, and is zeroed whole
    when selected. The level is a fraction of *blocks*, so the fraction of zeroed
    *entries* depends on the data: on a ``(1, 5)`` weight with ``(1, 4)`` blocks (two
    blocks: four entries, then one), ``sparsity=0.5`` zeroes one block, 4 or 1 of the 5
    entries, whichever block's mean is lower. With ``0 < zeros_per_block < block size``
    the weight's shape must be divisible by the block shape (a ValueError says so
    otherwise, as for ``NM``): padding never stands in for real zeros. Block sides longer
    than the weight's are clamped to it (the same blocks, without padding).

    The masks equal ``torch.ao.pruning.WeightNormSparsifier``'s bit for bit wherever the
    scores have no ties. Ties follow funcsparse's rule (equal scores: the lower row-major
    index is pruned first; NaN counts as the largest score), so the count of zeros is always
    exact. Memory: a call works on tiles of whole blocks (a sixteenth of the weight, at
    most two million entries, at a time); besides the mask it holds one score per block and
    the selection's work on them, so on a large float32 weight a call needs less extra
    memory than the weight's size (about 0.4x; with ``prev_mask``, whose per-block zeros
    and gains are counted in bytes, about 0.9x for ``(1, 4)`` blocks). A ``norm`` callable
    is called once on the whole weight.

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

        Width 5 with ``(1, 4)`` blocks: two blocks, of 4 entries and of 1; level 0.5 zeroes
        the one of lower mean, whole:

        >>> fs.WeightNorm(0.5)(torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0]]))
        tensor([[False, False, False, False,  True]])
        >>> fs.WeightNorm(0.5)(torch.tensor([[3.0, 3.0, 3.0, 3.0, 1.0]]))
        tensor([[ True,  True,  True,  True, False]])
        >>> fs.WeightNorm(1.0, zeros_per_block=2)(torch.ones(3, 6))
        Traceback (most recent call last):
            ...
        ValueError: WeightNorm: got a 2-D torch.float32 tensor of shape (3, 6); WeightNorm ...

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
            than 1 or 2; on a call, a weight that is not 2-D, or (with ``0 <
            zeros_per_block < block size``) whose shape the block shape does not divide.

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
        try:
            level = check_sparsity("WeightNorm", self.sparsity)
        except OverflowError:  # an int or Fraction too large for a float
            raise ValueError(
                f"WeightNorm: sparsity must be a fraction in [0, 1], got {_show(self.sparsity)}"
            ) from None
        object.__setattr__(self, "sparsity", level)
        shape = self.sparse_block_shape
        if not isinstance(shape, Sequence) or isinstance(shape, str) or len(shape) != 2:
            raise TypeError(f"WeightNorm: sparse_block_shape must be a pair of ints, got {shape!r}")
        rows = require_int("WeightNorm", "sparse_block_shape[0]", shape[0])
        cols = require_int("WeightNorm", "sparse_block_shape[1]", shape[1])
        if rows <= 0 or cols <= 0:
            raise ValueError(
                "WeightNorm: sparse_block_shape sides must be positive, got "
                f"({_show(rows)}, {_show(cols)})"
            )
        object.__setattr__(self, "sparse_block_shape", (rows, cols))
        if self.zeros_per_block is not None:
            zeros = require_int("WeightNorm", "zeros_per_block", self.zeros_per_block)
            if zeros > rows * cols:
                raise ValueError(
                    "WeightNorm: Number of zeros per block cannot be more than the total "
                    f"number of elements in that block (zeros_per_block={_show(zeros)}, "
                    f"block {_show(rows)}x{_show(cols)} has {_show(rows * cols)})."
                )
            if zeros < 0:
                raise ValueError(
                    "WeightNorm: Number of zeros per block should be positive "
                    f"(zeros_per_block={_show(zeros)})."
                )
        norm = self.norm
        if not callable(norm):
            require_int("WeightNorm", "norm", norm)
            if norm not in (1, 2):
                raise ValueError(
                    f"WeightNorm: norm must be 1, 2 or a callable, got {_show(norm)}"
                    + (f" (L-{norm} is not implemented)" if abs(norm) < 10**18 else "")
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
        rows, cols = self.sparse_block_shape
        height, width = tensor.shape
        if 0 < self.block_zeros < self.block_size and (height % rows or width % cols):
            return LeafProblem(
                ValueError,
                describe(tensor),
                f"WeightNorm with zeros_per_block={_show(self.block_zeros)} of a block of "
                f"{_show(self.block_size)} entries needs sparse_block_shape=({_show(rows)}, "
                f"{_show(cols)}) to divide the weight's shape; choose a block shape that "
                "divides it, or pad the weight (padding never stands in for real zeros)",
            )
        return None

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        prev_mask: Tensor | None = data.get("prev_mask")
        given: Tensor | None = data.get("scores")
        if self.sparsity <= 0 or self.block_zeros == 0 or tensor.numel() == 0:
            ones = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
            return ones if prev_mask is None else prev_mask.clone()
        return self._fitted(tensor)._fitted_mask(tensor, prev_mask, given)

    def _fitted(self, tensor: Tensor) -> WeightNorm:
        """This method with every block side clamped to the weight's side (at least 1).

        A block taller (wider) than the weight covers all its rows (columns) either way, so
        the blocks, their scores and the mask are the same; only padding is saved. Zeros per
        block equal to the block size stay "the whole block" (``zeros_per_block`` smaller
        than a block that does not fit is refused by :meth:`leaf_problem`).
        """
        rows, cols = self.sparse_block_shape
        height, width = tensor.shape
        fit = (max(1, min(rows, height)), max(1, min(cols, width)))
        if fit == (rows, cols):
            return self
        zeros = self.zeros_per_block
        if zeros is not None:
            zeros = None if zeros >= self.block_size else min(zeros, fit[0] * fit[1])
        return dataclasses.replace(self, sparse_block_shape=fit, zeros_per_block=zeros)

    def _fitted_mask(
        self, tensor: Tensor, prev_mask: Tensor | None, given: Tensor | None
    ) -> Tensor:
        """The mask, for a level in (0, 1] and blocks no larger than the weight."""
        plain = all(is_plain(t) for t in (tensor, prev_mask, given) if t is not None)
        if given is None and callable(self.norm):  # called once, on the whole weight (as torch.ao)
            seen = tensor if prev_mask is None else torch.where(prev_mask, tensor, _zero(tensor))
            given = self._scores(seen)
        if self.block_size == 1 and self.sparsity < 1 and plain and _own_block_scores(self):
            return self._single_entries(tensor, prev_mask, given)
        if prev_mask is not None:
            return self._mask_after(tensor, prev_mask, given, plain=plain)
        level, whole = self.sparsity, self.block_zeros >= self.block_size
        if level >= 1 and whole:
            return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
        tiles = self._tiles(tensor, plain=plain)
        pruned: Tensor | None = None  # the selected blocks (None: all of them)
        if level < 1:
            grid_rows, grid_cols = self._block_grid(tensor)
            n_blocks = grid_rows * grid_cols
            k = max(0, min(n_blocks - 1, round(level * n_blocks)))
            scores = self._block_scores(tensor if given is None else given, given=given is not None)
            pruned = smallest_k(scores.reshape(-1), k).view(grid_rows, grid_cols)
            del scores

        def keep_in(tile: _Tile) -> Tensor:
            rows, cols = self._entry_ranges(tensor, tile)
            keep: Tensor | None = None
            if pruned is not None:
                keep = self._expand(pruned[tile.rows, tile.cols].logical_not(), rows, cols)
            if not whole:
                entries = self._entry_scores(tensor, given, None, rows, cols)
                kept = self._zeros_within_blocks(entries).logical_not_()
                keep = kept if keep is None else keep | kept
            if keep is None:  # unreachable: whole blocks at level 1 returned above
                raise ValueError("WeightNorm: nothing to compute")
            return keep

        return self._assemble(tensor, tiles, keep_in, blocks=False)

    def _single_entries(
        self, tensor: Tensor, prev_mask: Tensor | None, given: Tensor | None
    ) -> Tensor:
        """``(1, 1)`` blocks at a level in (0, 1): the selection layer ranks the entries
        chunk by chunk, never holding ``norm(w)`` whole.

        The same mask as the block path: with ``prev_mask``, taking blocks in rank order
        until the new zeros reach the target prunes the ``k - old`` lowest-ranked entries
        not pruned before, as :func:`keep_all_but_lowest` does (pruned entries rank first).
        """
        n = tensor.numel()
        k = max(0, min(n - 1, round(self.sparsity * n)))
        if given is not None:
            return keep_all_but_lowest(given, k, prev_mask)
        if self.norm == 1:
            return keep_all_but_lowest(tensor, k, prev_mask, magnitude=True)
        flat = tensor.reshape(-1)

        def draws() -> Callable[[int], Tensor]:
            position = 0

            def draw(size: int) -> Tensor:
                nonlocal position
                piece = flat[position : position + size]
                position += size
                return piece * piece

            return draw

        return keep_all_but_lowest_drawn(draws, tensor, k, prev_mask)

    def _mask_after(
        self, tensor: Tensor, prev_mask: Tensor, given: Tensor | None, *, plain: bool
    ) -> Tensor:
        """The mask given an earlier one: its zeros stay and count towards the target.

        The weights are scored as the model sees them (``prev_mask``'s entries as 0), tile
        by tile, never as a whole copy.
        """
        whole = self.block_zeros >= self.block_size
        tiles = self._tiles(tensor, plain=plain)
        selected: Tensor | None = None  # the blocks taken (None: all of them)
        if self.sparsity < 1:
            grid_rows, grid_cols = self._block_grid(tensor)
            n_blocks = grid_rows * grid_cols
            k = max(0, min(n_blocks - 1, round(self.sparsity * n_blocks)))
            if given is None:
                scores = self._tiled_block_scores(tensor, given=False, prev_mask=prev_mask)
            else:
                scores = self._block_scores(given, given=True)
            scores = scores.reshape(-1)
            # Zeros per block fit in a byte for blocks up to 255 entries (the gains below
            # too): a quarter of int32's memory over the blocks.
            if self.block_size <= 255:
                count = torch.uint8
            else:
                count = torch.int32 if tensor.numel() < 2**31 else torch.int64
            old = self._assemble(
                tensor,
                tiles,
                lambda tile: self._old_zeros_in(prev_mask, tile, count),
                blocks=True,
            )
            old_total = old.sum()
            rows, cols = self.sparse_block_shape
            if tensor.shape[0] % rows == 0 and tensor.shape[1] % cols == 0:
                # Every block holds block_size entries: the k lowest take k * zeros.
                target: int | Tensor = k * self.block_zeros
                # block_zeros - min(old, block_zeros): never negative (unsigned counts)
                if plain:  # in place: old is spent
                    gains = old.clamp_(max=self.block_zeros).neg_().add_(self.block_zeros)
                else:
                    gains = self.block_zeros - old.clamp(max=self.block_zeros)
            else:  # whole blocks of different sizes: the zeros the k lowest-ranked take
                quota = self._block_sizes(tensor).to(old.device).clamp(max=self.block_zeros)
                target = (quota.reshape(-1) * smallest_k(scores, k)).sum()
                gains = (quota - old).clamp(min=0)
            del old
            selected = lowest_covering(scores, gains.reshape(-1), target - old_total)
            selected = selected.view(grid_rows, grid_cols)
            del scores, gains

        def mask_in(tile: _Tile) -> Tensor:
            rows, cols = self._entry_ranges(tensor, tile)
            prev = prev_mask[rows, cols]
            if whole:
                if selected is None:  # every block, whole: nothing is kept
                    return torch.zeros_like(prev)
                return self._expand(selected[tile.rows, tile.cols].logical_not(), rows, cols) & prev
            entries = self._entry_scores(tensor, given, prev, rows, cols)
            ranked = rank_pruned_first(entries, prev)  # previous zeros first in a block
            within = self._zeros_within_blocks(ranked)  # pruned entries come first in a block
            if selected is not None:
                within &= self._expand(selected[tile.rows, tile.cols], rows, cols)
            return within.logical_not_() & prev

        return self._assemble(tensor, tiles, mask_in, blocks=False)

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """Exact zeros, where they do not depend on which blocks the data selects.

        Levels in (0, 1) over partial blocks (or after a ``prev_mask``) select blocks of
        different sizes, so the count is data-dependent there (None);
        :meth:`structure_problem` still pins every block.
        """
        level, zeros = self.sparsity, self.block_zeros
        prev_mask = data.get("prev_mask")
        if tensor.numel() == 0:
            return 0
        fitted = self._fitted(tensor)
        if fitted is not self:
            return fitted.expected_zeros(tensor, **data)
        old = self._old_zeros(tensor, prev_mask)
        if level <= 0 or zeros == 0:
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
        fitted = self._fitted(tensor)
        if fitted is not self:
            return fitted.structure_problem(tensor, mask, **data)
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
        try:  # a callable may work in place: not on the weight
            scores = self.norm(tensor.clone())
        except RuntimeError as err:  # torch refused what the callable did with the weight
            raise ValueError(
                f"WeightNorm: the norm callable {short_repr(self.norm)} raised RuntimeError "
                f"on {describe(tensor)}: {short_repr(str(err))}; norm must map a weight to "
                "scores of its shape"
            ) from err
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

    # -- tiles: the work is done a band of whole blocks at a time --------------------------

    def _tiles(self, tensor: Tensor, *, plain: bool) -> list[_Tile]:
        """Tiles of whole blocks covering ``tensor``, of about a sixteenth of it each.

        At most ``_TILE_ENTRIES`` entries a tile (a tile holds one block at least). One
        tile (the whole weight) for small weights and under ``torch.func`` transforms
        or ``torch.compile`` (no in-place writes into a shared output there).
        """
        rows, cols = self.sparse_block_shape
        grid_rows, grid_cols = self._block_grid(tensor)
        n = tensor.numel()
        budget = max(1, min(_TILE_ENTRIES, max(_TILE_ENTRIES >> 5, n // 16)))
        if not plain or n <= budget:
            return [_Tile(slice(0, grid_rows), slice(0, grid_cols))]
        band = rows * tensor.shape[1]  # entries in one row of blocks
        if band <= budget:
            step = budget // band
            return [
                _Tile(slice(i, min(i + step, grid_rows)), slice(0, grid_cols))
                for i in range(0, grid_rows, step)
            ]
        step = max(1, budget // (rows * cols))
        return [
            _Tile(slice(i, i + 1), slice(j, min(j + step, grid_cols)))
            for i in range(grid_rows)
            for j in range(0, grid_cols, step)
        ]

    def _entry_ranges(self, tensor: Tensor, tile: _Tile) -> tuple[slice, slice]:
        """The rows and columns of ``tensor`` that ``tile``'s blocks cover."""
        rows, cols = self.sparse_block_shape
        height, width = tensor.shape
        return (
            slice(tile.rows.start * rows, min(height, tile.rows.stop * rows)),
            slice(tile.cols.start * cols, min(width, tile.cols.stop * cols)),
        )

    def _assemble(
        self,
        tensor: Tensor,
        tiles: list[_Tile],
        compute: Callable[[_Tile], Tensor],
        *,
        blocks: bool,
    ) -> Tensor:
        """``compute(tile)`` for every tile, written into one tensor: of ``tensor``'s shape,
        or (``blocks``) of its block grid's."""
        if len(tiles) == 1:
            whole = compute(tiles[0])  # a mask cropped from padded blocks is copied out
            return whole if blocks or whole.is_contiguous() else whole.contiguous()
        out: Tensor | None = None
        for tile in tiles:
            part = compute(tile)
            if out is None:
                shape = self._block_grid(tensor) if blocks else tuple(tensor.shape)
                out = torch.empty(shape, dtype=part.dtype, device=part.device)
            where = (tile.rows, tile.cols) if blocks else self._entry_ranges(tensor, tile)
            out[where] = part
        if out is None:  # unreachable: there is always a tile
            raise ValueError("WeightNorm: no tiles")
        return out

    def _expand(self, per_block: Tensor, rows: slice, cols: slice) -> Tensor:
        """Per-block values, ``(tile_rows, tile_cols)``, on the entries ``rows, cols``."""
        block_rows, block_cols = self.sparse_block_shape
        grid_rows, grid_cols = per_block.shape
        entries = per_block.view(grid_rows, 1, grid_cols, 1)
        entries = entries.expand(grid_rows, block_rows, grid_cols, block_cols)
        entries = entries.reshape(grid_rows * block_rows, grid_cols * block_cols)
        height, width = rows.stop - rows.start, cols.stop - cols.start
        return entries if entries.shape == (height, width) else entries[:height, :width]

    def _entry_scores(
        self, tensor: Tensor, given: Tensor | None, prev: Tensor | None, rows: slice, cols: slice
    ) -> Tensor:
        """Per-entry scores on ``rows, cols``: ``given``'s, or the norm of the weights as the
        model sees them (``prev``: the tile's previous mask)."""
        if given is not None:
            return given[rows, cols]
        part = tensor[rows, cols]
        if prev is not None:
            part = torch.where(prev, part, _zero(part))
        return self._scores(part)

    def _old_zeros_in(self, prev_mask: Tensor, tile: _Tile, dtype: torch.dtype) -> Tensor:
        """The zeros of ``prev_mask`` in each of ``tile``'s blocks."""
        rows, cols = self.sparse_block_shape
        entry_rows, entry_cols = self._entry_ranges(prev_mask, tile)
        pruned = prev_mask[entry_rows, entry_cols].logical_not()
        height, width = pruned.shape
        grid_rows, grid_cols = -(-height // rows), -(-width // cols)
        pad_rows, pad_cols = grid_rows * rows - height, grid_cols * cols - width
        if pad_rows or pad_cols:
            pruned = F.pad(pruned, (0, pad_cols, 0, pad_rows))
        return _as_groups(pruned, rows, cols).sum(-1, dtype=dtype)

    # -- block scores ----------------------------------------------------------------------

    def _block_scores(self, tensor: Tensor, *, given: bool = False) -> Tensor:
        """Mean score per block, bit-identical to torch.ao's ``avg_pool2d(ceil_mode=True)``.

        ``given``: ``tensor`` holds scores to average as they are, not weights to take the
        norm of.
        """
        fitted = self._fitted(tensor)
        if not given and callable(self.norm):  # once, on the whole weight (as torch.ao)
            return fitted._tiled_block_scores(self._scores(tensor), given=True)
        return fitted._tiled_block_scores(tensor, given=given)

    def _tiled_block_scores(
        self, tensor: Tensor, *, given: bool, prev_mask: Tensor | None = None
    ) -> Tensor:
        """:meth:`_block_scores` of a fitted method, a tile at a time (``prev_mask``: score
        the weights as the model sees them)."""
        rows, cols = self.sparse_block_shape
        height, width = tensor.shape
        plain = all(is_plain(t) for t in (tensor, prev_mask) if t is not None)
        fused = (
            not given
            and self.norm in (1, 2)
            and tensor.dtype in (torch.float32, torch.float64)
            and height % rows == 0
            and width % cols == 0
            and self.block_size <= _FUSED_BLOCK_MAX
        )

        def scores_in(tile: _Tile) -> Tensor:
            entry_rows, entry_cols = self._entry_ranges(tensor, tile)
            part = tensor[entry_rows, entry_cols]
            if prev_mask is not None:
                part = torch.where(prev_mask[entry_rows, entry_cols], part, _zero(part))
            if fused:
                return self._summed_block_scores(part)
            scores = part if given else self._scores(part)
            if self.block_size == 1:
                return scores
            return F.avg_pool2d(scores[None, None], self.sparse_block_shape, ceil_mode=True)[0, 0]

        return self._assemble(tensor, self._tiles(tensor, plain=plain), scores_in, blocks=True)

    def _summed_block_scores(self, tensor: Tensor) -> Tensor:
        """``norm(w)`` averaged per block of a dividing tile, from strided views of it.

        avg_pool2d sums a window row by row, left to right, then divides: the same sums,
        without materialising ``norm(w)`` for the whole tile.
        """
        rows, cols = self.sparse_block_shape
        height, width = tensor.shape
        blocks = tensor.reshape(height // rows, rows, width // cols, cols)
        total: Tensor | None = None
        for r in range(rows):
            for c in range(cols):
                entry = blocks[:, r, :, c]
                term = entry.abs() if self.norm == 1 else entry * entry
                total = term if total is None else total.add_(term)
        if total is None:  # unreachable: a block has at least one entry
            raise ValueError("WeightNorm: empty block")
        return total if self.block_size == 1 else total.div_(self.block_size)

    def _zeros_within_blocks(self, scores: Tensor) -> Tensor:
        """Entries among the ``block_zeros`` lowest scores of their block (blocks divide
        ``scores``: :meth:`leaf_problem` refuses other shapes for partial blocks)."""
        rows, cols = self.sparse_block_shape
        height, width = scores.shape
        selected = smallest_k_per_group(_as_groups(scores, rows, cols), self.block_zeros)
        selected = selected.view(height // rows, width // cols, rows, cols).permute(0, 2, 1, 3)
        return selected.reshape(height, width)


class _Tile(NamedTuple):
    """A rectangle of whole blocks: block rows and block columns."""

    rows: slice
    cols: slice


def _show(value: object) -> str:
    """``value`` for a message: a huge int by its length (its digits would flood it)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        bits = abs(value).bit_length()  # str() refuses ints past 4300 digits: estimate those
        digits = len(str(abs(value))) if bits < 14000 else math.floor(bits * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}an int of about {digits} digits"
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:40]}..."


def _own_block_scores(method: WeightNorm) -> bool:
    """Whether ``method`` scores blocks as WeightNorm does (a subclass may rank otherwise)."""
    return type(method)._block_scores is WeightNorm._block_scores


def _zero(tensor: Tensor) -> Tensor:
    """A 0-d zero of ``tensor``'s dtype and device (``torch.where``'s filler)."""
    return torch.zeros((), dtype=tensor.dtype, device=tensor.device)


def _as_groups(grid: Tensor, rows: int, cols: int) -> Tensor:
    """``(H, W)``, sides divisible by the block, to ``(H/rows, W/cols, rows*cols)`` (row-major)."""
    height, width = grid.shape
    blocks = grid.reshape(height // rows, rows, width // cols, cols)
    if rows == 1:
        return blocks.squeeze(1)
    return blocks.permute(0, 2, 1, 3).reshape(height // rows, width // cols, rows * cols)
