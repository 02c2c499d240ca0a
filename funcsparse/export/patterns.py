"""Mask patterns: what structure a mask has, and checks that it has the one a layout needs.

:func:`detect_pattern` names a mask's structure (dense, empty, channel, N:M, block or
unstructured) for ``funcsparse report``. :func:`check_nm` and :func:`check_blocks` raise a
ValueError naming the first group that breaks a pattern, and :func:`nm_violation` /
:func:`block_violation` return that description (or None) without raising; the sparse
layouts (:mod:`funcsparse.export.layouts`) run them on every leaf before converting any.

Every scan reads the mask's bytes as int words (a group of 4 entries is one int32) and
works a chunk at a time (at most 2**22 entries, the first chunk a 64th of that), stopping
at the first chunk that breaks the pattern: a mask of 85M entries needs a few MiB besides
itself, never an int64 copy, and ``detect_pattern`` on the 84.9M weights of
``benchmarks/masks.py``'s stack takes about 0.3 to 0.7 s on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor

from funcsparse._errors import describe, require_int, short_repr

__all__ = [
    "Pattern",
    "block_violation",
    "check_blocks",
    "check_nm",
    "detect_pattern",
    "nm_violation",
    "require_blocksize",
]

#: Entries a scan looks at per step.
_CHUNK = 1 << 22
#: Group sizes ``m`` that :func:`detect_pattern` tries for N:M, smallest first.
_NM_SIZES = (2, 4, 8, 16, 32)
#: The largest block side :func:`detect_pattern` tries (powers of two up to it).
_MAX_BLOCK_SIDE = 32

Kind = Literal["dense", "empty", "unstructured", "n:m", "block", "channel"]
_KINDS = ("dense", "empty", "unstructured", "n:m", "block", "channel")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pattern:
    """The structure of a bool mask, as :func:`detect_pattern` finds it.

    * ``"dense"``: nothing pruned (a 0-size mask too); ``"empty"``: everything pruned.
    * ``"channel"``: every slice along dim ``axis`` (e.g. a row of a ``Linear`` weight: an
      output channel, ``axis=0``) is wholly kept or wholly pruned.
    * ``"n:m"``: every group of ``m`` consecutive entries along the last dim keeps exactly
      ``n`` (``0 < n < m``).
    * ``"block"``: the last two dims (a 1-D mask as one row) are tiled by blocks of shape
      ``block``, each wholly kept or wholly pruned; leading dims are a batch.
    * ``"unstructured"``: none of these.

    Examples:
        >>> from funcsparse.export import Pattern
        >>> str(Pattern(kind="n:m", n=2, m=4))
        '2:4'
        >>> str(Pattern(kind="block", block=(4, 4)))
        'block 4x4'
        >>> str(Pattern(kind="channel", axis=0))
        'channel (dim 0)'

    Args:
        kind: one of the kinds above. Required.
        n: kept entries per group (``"n:m"`` only). Default None.
        m: group size along the last dim (``"n:m"`` only). Default None.
        block: block shape ``(rows, cols)`` (``"block"`` only; a list becomes a tuple).
            Default None.
        axis: the dim whose slices are wholly kept or pruned (``"channel"`` only).
            Default None.

    Raises:
        ValueError: an unknown kind, or fields that do not fit the kind (a field the kind
            needs is missing, or one it does not use is set), or values out of range
            (``0 < n < m``, block sides at least 1, ``axis`` at least 0).
        TypeError: a field of the wrong type.
    """

    kind: Kind
    n: int | None = None
    m: int | None = None
    block: tuple[int, int] | None = None
    axis: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Pattern: kind={short_repr(self.kind)} must be one of {_KINDS}")
        needs = {"n:m": ("n", "m"), "block": ("block",), "channel": ("axis",)}.get(self.kind, ())
        for name in ("n", "m", "block", "axis"):
            value = getattr(self, name)
            if (value is None) == (name in needs):
                said = "needs" if value is None else "does not take"
                raise ValueError(f"Pattern: kind={self.kind!r} {said} {name}")
        if self.kind == "n:m":
            n = require_int("Pattern", "n", self.n)
            m = require_int("Pattern", "m", self.m)
            if not 0 < n < m:
                raise ValueError(f"Pattern: n:m={short_repr(n)}:{short_repr(m)} needs 0 < n < m")
            object.__setattr__(self, "n", n)
            object.__setattr__(self, "m", m)
        if self.kind == "block":  # a list or numpy ints become a tuple of ints (hashable)
            object.__setattr__(self, "block", require_blocksize("Pattern", "block", self.block))
        if self.kind == "channel":
            axis = require_int("Pattern", "axis", self.axis)
            if axis < 0:
                raise ValueError(f"Pattern: axis={short_repr(axis)} must be at least 0")
            object.__setattr__(self, "axis", axis)

    def __str__(self) -> str:
        if self.kind == "n:m":
            return f"{short_repr(self.n)}:{short_repr(self.m)}"
        if self.kind == "block" and self.block is not None:
            return f"block {short_repr(self.block[0])}x{short_repr(self.block[1])}"
        if self.kind == "channel":
            return f"channel (dim {short_repr(self.axis)})"
        return self.kind


def detect_pattern(mask: Tensor) -> Pattern:
    """The structure of ``mask``: dense, empty, channel, N:M, block or unstructured.

    The first kind that holds, in this order, is the answer:

    1. ``dense`` (nothing pruned; also a 0-size mask) or ``empty`` (everything pruned).
    2. ``channel``: every slice along some dim is wholly kept or wholly pruned, trying dim 0
       (a weight's output channels) first; dims whose slices hold one entry are skipped.
    3. ``n:m`` along the last dim, for ``m`` in 2, 4, 8, 16, 32 dividing it: every group of
       ``m`` consecutive entries keeps exactly ``n``. The smallest such ``m`` is reported
       (a 2:4 mask is also 4:8; it is reported as 2:4). A group keeping fewer than the
       others makes the mask unstructured here, although :func:`check_nm` (at most ``n``)
       and the 2:4 layout accept it.
    4. ``block``: the largest block over the last two dims, each side a power of two up to
       32 dividing the mask's side, of more than one entry, whose every block is wholly kept
       or pruned. (The blocks that hold are closed under taking the larger side of each,
       so the largest is unique.)
    5. ``unstructured``.

    A structured kind that does not hold usually fails within the first chunk scanned,
    so a random mask costs about two passes over its bytes (the dense/empty and channel
    checks); a mask with structure costs a pass or two per kind tried.

    Examples:
        >>> import torch
        >>> from funcsparse.export import detect_pattern
        >>> str(detect_pattern(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]]).bool()))
        '2:4'
        >>> str(detect_pattern(torch.tensor([[True, True], [False, False]])))
        'channel (dim 0)'
        >>> str(detect_pattern(torch.ones(4, 4, dtype=torch.bool).tril()))
        'unstructured'
        >>> blocks = torch.tensor([[True, True], [False, True]]).repeat_interleave(2, 0)
        >>> str(detect_pattern(blocks.repeat_interleave(2, 1)))
        'block 2x2'

    Args:
        mask: a ``torch.bool`` tensor of any shape (0-D and 0-size too), on any device.

    Returns:
        A :class:`Pattern`.

    Raises:
        TypeError: ``mask`` is not a bool tensor.
        ValueError: ``mask`` is on the meta device (no values to look at).
    """
    _check_mask("detect_pattern", mask)
    mask = mask.contiguous()
    if mask.numel() == 0:
        return Pattern(kind="dense")
    flat = mask.reshape(-1)
    low, high = torch.aminmax(_words(flat))
    if int(low) == int(high) == _ones(_word_size(flat)):
        return Pattern(kind="dense")
    if int(high) == 0:
        return Pattern(kind="empty")
    for dim in range(mask.dim()):
        if mask.numel() // mask.shape[dim] > 1 and _slices_uniform(mask, dim):
            return Pattern(kind="channel", axis=dim)
    width = mask.shape[-1]
    for m in _NM_SIZES:
        if width % m == 0 and (n := _exact_nm(mask, m)) is not None:
            return Pattern(kind="n:m", n=n, m=m)
    matrices = _as_matrices(mask)
    rows = _largest_side(matrices, vertical=True)
    cols = _largest_side(matrices, vertical=False)
    if rows * cols > 1:
        return Pattern(kind="block", block=(rows, cols))
    return Pattern(kind="unstructured")


def nm_violation(mask: Tensor, *, n: int, m: int, exact: bool = False) -> str | None:
    """Why ``mask`` is not N:M along its last dim (the first offending group), or None.

    Groups are ``m`` consecutive entries along the last dim, which must be a multiple of
    ``m``. A group may keep at most ``n`` entries (what sparse kernels such as 2:4 need), or
    exactly ``n`` with ``exact``. A 0-size mask has no groups and passes.

    Examples:
        >>> import torch
        >>> from funcsparse.export.patterns import nm_violation
        >>> mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
        >>> nm_violation(mask, n=2, m=4)
        'group [1, 0:4] keeps 3 entries; 2:4 allows at most 2'
        >>> nm_violation(mask[:1], n=2, m=4) is None
        True

    Args:
        mask: a ``torch.bool`` tensor of at least one dim.
        n: kept entries allowed per group, ``0 <= n <= m``.
        m: group size, at least 1.
        exact: require exactly ``n`` kept per group. Default False.

    Returns:
        A description such as ``"group [3, 4:8] keeps 3 entries; 2:4 allows at most 2"``
        (index the mask with the bracket to see the group), or None if ``mask`` is N:M.

    Raises:
        TypeError: ``mask`` is not a bool tensor, or ``n``, ``m``, ``exact`` have the wrong
            type.
        ValueError: ``m < 1``, ``n`` outside ``[0, m]``, or a 0-D or meta mask.
    """
    return _nm_problem("nm_violation", mask, n=n, m=m, exact=exact)


def _nm_problem(function: str, mask: Tensor, *, n: int, m: int, exact: bool) -> str | None:
    """:func:`nm_violation`, its argument errors naming ``function``."""
    n, m = _check_nm_args(function, mask, n, m, exact)
    width = mask.shape[-1]
    if width % m:
        return f"the last dim has length {width}, not a multiple of m={short_repr(m)}"
    if mask.numel() == 0:
        return None
    groups = mask.contiguous().view(-1, m)
    for start, chunk in _chunks(groups):
        kept = _group_counts(chunk)
        bad = kept != n if exact else kept > n
        if bool(bad.any()):
            index = start + int(bad.nonzero()[0, 0])
            row, group = divmod(index, width // m)
            where = _bracket(mask.shape[:-1], row, [f"{group * m}:{group * m + m}"])
            allows = f"exactly {n}" if exact else f"at most {n}"
            return (
                f"group {where} keeps {int(kept[index - start])} entries; {n}:{m} allows {allows}"
            )
    return None


def check_nm(mask: Tensor, *, n: int, m: int, path: str = "mask", exact: bool = False) -> None:
    """Raise a ValueError naming the first group of ``mask`` that breaks N:M.

    See :func:`nm_violation` for the groups and the rule.

    Examples:
        >>> import torch
        >>> from funcsparse.export.patterns import check_nm
        >>> check_nm(torch.tensor([[True, False, True, False]]), n=2, m=4)
        >>> check_nm(torch.tensor([[True, True, True, False]]), n=2, m=4, path="fc.weight")
        Traceback (most recent call last):
        ...
        ValueError: check_nm: the mask at 'fc.weight' is not 2:4 ...: group [0, 0:4] keeps 3 ...

    Args:
        mask: a ``torch.bool`` tensor of at least one dim.
        n: kept entries allowed per group, ``0 <= n <= m``.
        m: group size, at least 1.
        path: the leaf path the message names. Default ``"mask"``.
        exact: require exactly ``n`` kept per group. Default False.

    Raises:
        ValueError: ``mask`` is not N:M (the first offending group is named), or as
            :func:`nm_violation`.
        TypeError: ``path`` is not a str; or as :func:`nm_violation`.
    """
    _check_path("check_nm", path)
    problem = _nm_problem("check_nm", mask, n=n, m=m, exact=exact)
    if problem is not None:
        raise ValueError(
            f"check_nm: the mask at {short_repr(path)} is not {short_repr(n)}:{short_repr(m)} "
            f"along its last dim: {problem}"
        )


def block_violation(mask: Tensor, *, blocksize: tuple[int, int]) -> str | None:
    """Why ``mask`` is not made of whole blocks (the first offending block), or None.

    The last two dims (a 1-D mask as one row) are cut into blocks of ``blocksize``, which
    must divide them; every block must be wholly kept or wholly pruned. Leading dims are a
    batch. A 0-size mask passes if its shape is divisible.

    Examples:
        >>> import torch
        >>> from funcsparse.export.patterns import block_violation
        >>> mask = torch.zeros(4, 4, dtype=torch.bool)
        >>> mask[:2, 2:] = True
        >>> block_violation(mask, blocksize=(2, 2)) is None
        True
        >>> mask[3, 0] = True
        >>> block_violation(mask, blocksize=(2, 2))
        'block [2:4, 0:2] keeps 1 of its 4 entries; a block must be wholly kept or pruned'

    Args:
        mask: a ``torch.bool`` tensor of at least one dim.
        blocksize: ``(rows, cols)``, positive ints.

    Returns:
        A description naming the first offending block in row-major order (index the mask
        with the bracket to see it), or None.

    Raises:
        TypeError: ``mask`` is not a bool tensor, or ``blocksize`` is not two ints.
        ValueError: ``blocksize`` has a side below 1, or a 0-D or meta mask.
    """
    return _block_problem("block_violation", mask, blocksize=blocksize)


def _block_problem(function: str, mask: Tensor, *, blocksize: tuple[int, int]) -> str | None:
    """:func:`block_violation`, its argument errors naming ``function``."""
    _check_mask(function, mask, min_dim=1)
    rows, cols = require_blocksize(function, "blocksize", blocksize)
    matrices = _as_matrices(mask)
    height, width = matrices.shape[1:]
    if height % rows or width % cols:
        shape = tuple(mask.shape[-2:]) if mask.dim() > 1 else (1, width)
        return (
            f"the last two dims {shape} are not divisible by blocksize {short_repr((rows, cols))}"
        )
    if mask.numel() == 0:
        return None
    blocks = matrices.reshape(-1, rows, width // cols, cols)
    for start, chunk in _chunks(blocks):
        mixed = (chunk != chunk[:, :1, :, :1]).any(3).any(1)
        if bool(mixed.any()):
            band, block = (int(i) for i in mixed.nonzero()[0])
            batch, block_row = divmod(start + band, height // rows)
            kept = int(blocks[start + band, :, block].sum())
            spans = [f"{block * cols}:{block * cols + cols}"]
            if mask.dim() > 1:
                spans.insert(0, f"{block_row * rows}:{block_row * rows + rows}")
            where = _bracket(mask.shape[:-2], batch, spans)
            return (
                f"block {where} keeps {kept} of its {rows * cols} entries; a block must be "
                "wholly kept or pruned"
            )
    return None


def check_blocks(mask: Tensor, *, blocksize: tuple[int, int], path: str = "mask") -> None:
    """Raise a ValueError naming the first block of ``mask`` that is partly kept.

    See :func:`block_violation` for the blocks and the rule.

    Examples:
        >>> import torch
        >>> from funcsparse.export.patterns import check_blocks
        >>> check_blocks(torch.ones(2, 4, dtype=torch.bool), blocksize=(2, 2))
        >>> check_blocks(torch.eye(4, dtype=torch.bool), blocksize=(2, 2), path="w")
        Traceback (most recent call last):
        ...
        ValueError: check_blocks: the mask at 'w' is not ... blocks: block [0:2, 0:2] keeps 2 ...

    Args:
        mask: a ``torch.bool`` tensor of at least one dim.
        blocksize: ``(rows, cols)``, positive ints.
        path: the leaf path the message names. Default ``"mask"``.

    Raises:
        ValueError: a block is partly kept, or the shape is not divisible (named), or as
            :func:`block_violation`.
        TypeError: ``path`` is not a str; or as :func:`block_violation`.
    """
    _check_path("check_blocks", path)
    problem = _block_problem("check_blocks", mask, blocksize=blocksize)
    if problem is not None:
        raise ValueError(
            f"check_blocks: the mask at {short_repr(path)} is not made of whole "
            f"{short_repr(tuple(blocksize))} blocks: {problem}"
        )


def _check_mask(function: str, mask: object, *, min_dim: int = 0) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{function}: mask must be a torch.bool tensor, got {describe(mask)}")
    if mask.device.type == "meta":
        raise ValueError(f"{function}: mask is on the meta device; it has no values to check")
    if mask.dim() < min_dim:
        raise ValueError(f"{function}: mask must have at least {min_dim} dim, got a 0-D tensor")


def _check_path(function: str, path: object) -> None:
    if not isinstance(path, str):
        raise TypeError(f"{function}: path must be a str (a leaf path), got {describe(path)}")


def _check_nm_args(
    function: str, mask: object, n: object, m: object, exact: object
) -> tuple[int, int]:
    _check_mask(function, mask, min_dim=1)
    n = require_int(function, "n", n)
    m = require_int(function, "m", m)
    if not isinstance(exact, bool):
        raise TypeError(f"{function}: exact must be a bool, got {describe(exact)}")
    if m < 1:
        raise ValueError(f"{function}: m={short_repr(m)} must be at least 1")
    if not 0 <= n <= m:
        raise ValueError(f"{function}: n={short_repr(n)} must be in [0, m] = [0, {short_repr(m)}]")
    return n, m


def require_blocksize(function: str, name: str, blocksize: object) -> tuple[int, int]:
    """``blocksize`` as ``(rows, cols)`` of positive ints, or an error naming ``function``.

    Examples:
        >>> require_blocksize("to_bsr", "blocksize", [2, 4])
        (2, 4)
    """
    if not isinstance(blocksize, (tuple, list)) or len(blocksize) != 2:
        raise TypeError(
            f"{function}: {name} must be a tuple (rows, cols) of two ints, got "
            f"{describe(blocksize)}"
        )
    rows = require_int(function, f"{name}[0]", blocksize[0])
    cols = require_int(function, f"{name}[1]", blocksize[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"{function}: {name}={short_repr(tuple(blocksize))} needs sides >= 1")
    return rows, cols


def _chunks(tensor: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(start, tensor[start:stop])`` along dim 0: a first chunk of about a 64th of
    :data:`_CHUNK` entries (a mask that breaks a pattern usually does so early), growing
    fourfold up to :data:`_CHUNK`."""
    per_slice = max(1, math.prod(tensor.shape[1:]))
    budget, start = max(1, _CHUNK // 64), 0
    while start < tensor.shape[0]:
        step = max(1, budget // per_slice)
        yield start, tensor[start : start + step]
        start += step
        budget = min(_CHUNK, budget * 4)


def _all_chunks(tensor: Tensor, test: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``test`` (a 0-D bool tensor) holds on every chunk; stops at the first miss."""
    return all(bool(test(chunk)) for _, chunk in _chunks(tensor))


# Bool tensors are compared and counted through int views of their bytes (0 or 1 each):
# torch's bool reductions and reductions along a short last dim are several times slower
# than elementwise int ops and reductions on fewer, wider elements.
_WORD_TYPES = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _ones(size: int) -> int:
    """The int whose ``size`` little-endian bytes are all 1: a run of kept entries."""
    return int.from_bytes(b"\x01" * size, "little")


def _word_size(tensor: Tensor) -> int:
    """The widest word (8, 4, 2 or 1 bytes) that packs the last dim of ``tensor``."""
    width = tensor.shape[-1] if tensor.dim() else 1
    for size in (8, 4, 2):
        aligned = tensor.storage_offset() % size == 0
        if width % size == 0 and aligned and all(st % size == 0 for st in tensor.stride()[:-1]):
            return size
    return 1


def _words(tensor: Tensor, size: int | None = None) -> Tensor:
    """A bool tensor (last dim contiguous) with its last dim packed into int words."""
    size = _word_size(tensor) if size is None else size
    return tensor.view(torch.uint8).view(_WORD_TYPES[size])


def _group_counts(groups: Tensor) -> Tensor:
    """Kept entries per row of a contiguous bool ``(k, m)`` tensor (an int tensor ``(k,)``).

    Groups of 2, 4 or 8 are one word each, whose bytes a multiply sums into its top byte
    (the product wraps, as int products do; the sum, at most 8, never reaches the sign
    bit). Longer groups sum such word counts; others, and groups that do not start at a
    word boundary in memory (a view at an odd offset), add bytes.
    """
    m = groups.shape[-1]
    size = min(m, 8)
    if (m in (2, 4, 8) or m % 8 == 0) and _word_size(groups) >= size:
        words = _words(groups, size)
        counts = (words * _ones(size)) >> (8 * (size - 1))
        return counts.squeeze(-1) if m == size else counts.sum(-1)
    return groups.view(torch.uint8).sum(-1, dtype=torch.uint8 if m < 256 else torch.int32)


def _slices_uniform(mask: Tensor, dim: int) -> bool:
    """Whether every slice of contiguous ``mask`` along ``dim`` is wholly kept or pruned."""
    outer, size = math.prod(mask.shape[:dim]), mask.shape[dim]
    inner = mask.numel() // (outer * size)
    if inner == 1:  # slices across the last dim: every row equals the first
        rows = _words(mask.reshape(outer, size))
        return _all_chunks(rows, lambda chunk: (chunk == rows[:1]).all())
    words = _words(mask.reshape(outer, size, inner))
    low = words.amin(dim=(0, 2))
    high = words.amax(dim=(0, 2))
    ones = _ones(words.element_size())
    return bool(((low == high) & ((low == 0) | (low == ones))).all())


def _exact_nm(mask: Tensor, m: int) -> int | None:
    """The ``n`` with ``0 < n < m`` that every group of ``m`` along the last dim keeps, or None."""
    groups = mask.view(-1, m)
    n = int(groups[0].sum())
    if not 0 < n < m:
        return None
    return n if _all_chunks(groups, lambda chunk: (_group_counts(chunk) == n).all()) else None


def _as_matrices(mask: Tensor) -> Tensor:
    """``mask`` as a batch of matrices ``(batch, rows, cols)``; a 1-D mask is one row."""
    if mask.dim() < 2:
        return mask.reshape(1, 1, mask.numel())
    return mask.reshape(math.prod(mask.shape[:-2]), *mask.shape[-2:])


def _largest_side(matrices: Tensor, *, vertical: bool) -> int:
    """The largest power of two ``s`` up to 32 dividing the side such that every run of ``s``
    entries along it (aligned) is wholly kept or pruned; 1 if none."""
    batch, height, width = matrices.shape
    side, best = 2, 1
    while side <= _MAX_BLOCK_SIDE:
        if vertical and height % side == 0:
            runs = _words(matrices.reshape(batch * height // side, side, width))
            ok = _all_chunks(runs, lambda chunk: (chunk[:, 1:] == chunk[:, :1]).all())
        elif not vertical and width % side == 0:
            runs = matrices.reshape(-1, side)
            ok = _all_chunks(runs, lambda chunk: _runs_uniform(chunk))
        else:
            ok = False
        if not ok:
            break
        best, side = side, side * 2
    return best


def _runs_uniform(runs: Tensor) -> Tensor:
    """Whether every row of a contiguous bool ``(k, s)`` tensor is all kept or all pruned."""
    size = _word_size(runs)
    words = _words(runs, size)
    full = _ones(size)
    whole = (words[:, :1] == 0) | (words[:, :1] == full)
    return whole.all() & (words[:, 1:] == words[:, :1]).all()


def _bracket(leading: torch.Size, flat: int, spans: list[str]) -> str:
    """``"[i, j, *spans]"``: the index of flat position ``flat`` in shape ``leading``, then
    ``spans`` (slices of the trailing dims)."""
    index = []
    for size in reversed(leading):
        flat, i = divmod(flat, size)
        index.append(str(i))
    return "[" + ", ".join([*reversed(index), *spans]) + "]"
