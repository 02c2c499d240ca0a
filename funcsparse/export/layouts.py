"""torch's sparse layouts (CSR, BSR, 2:4 semi-structured), after a pattern check of every leaf.

Each function checks every mask first (structure, dtype, shape, then the pattern its layout
needs) and converts only when all pass, so a ValueError never comes with half a result. The
error names the function, the leaf path and the first offending group or block. Unmasked
leaves (mask None) stay dense, copied as :func:`funcsparse.export.squash` copies them; the
result is a flat dict keyed by leaf path, as ``squash``'s.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from funcsparse._errors import describe, short_repr
from funcsparse._tree import in_dict_order
from funcsparse.export.patterns import block_violation, nm_violation, require_blocksize
from funcsparse.export.squash import squashed_leaves

__all__ = ["to_bsr", "to_csr", "to_semi_structured"]


def to_csr(params: Any, masks: Any) -> dict[str, Tensor]:
    """Masked 2-D leaves as ``torch.sparse_csr`` tensors that store exactly the kept entries.

    The stored positions are the mask's kept positions, read from the mask, not from the
    values: a kept weight that is 0.0 stays stored, so ``values()`` has one entry per kept
    weight and the pattern survives. ``values()`` holds the kept values bit for bit, and
    ``.to_dense()`` equals :func:`funcsparse.squash` (torch's ``to_dense`` adds the stored
    values into zeros, so a kept -0.0 comes back +0.0, NaN payloads are normalised, and a
    complex value with an infinite part may come back with NaN in the other part).
    Indices are int64, as torch's ``to_sparse_csr`` makes them.

    CSR is a 2-D layout: a masked leaf of another rank (a conv weight, a bias) is an error
    naming it, rather than torch's batched CSR, which needs the same number of kept entries
    in every matrix of the batch. Reshape such a leaf and its mask (``w.flatten(1)``) or
    leave it unmasked. Any dtype is stored; torch's CPU ``to_dense`` lacks float8.

    Examples:
        >>> import torch
        >>> from funcsparse.export import to_csr
        >>> params = {"w": torch.tensor([[1.0, 0.0, 3.0], [4.0, 5.0, 6.0]]), "b": torch.ones(2)}
        >>> masks = {"w": torch.tensor([[True, True, False], [False, False, True]])}
        >>> csr = to_csr(params, masks)["w"]
        >>> csr.crow_indices(), csr.col_indices(), csr.values()
        (tensor([0, 2, 3]), tensor([0, 1, 2]), tensor([1., 0., 6.]))

    Args:
        params: a pytree of tensors (e.g. ``dict(model.named_parameters())``).
        masks: as in :func:`funcsparse.apply_masks`.

    Returns:
        ``{path: tensor}``: sparse CSR tensors for masked leaves, dense copies otherwise.

    Raises:
        ValueError: a masked leaf is not 2-D or is on the meta device; or as
            :func:`funcsparse.squash`.
        TypeError: as :func:`funcsparse.squash`.
    """
    paths, dense, mask_leaves = squashed_leaves(params, masks, function="to_csr")
    for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True):
        if mask is not None:
            _require_2d("to_csr", path, leaf, "CSR")
    with _quiet_beta():
        flat = {
            path: leaf if mask is None else _csr(leaf, mask)
            for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True)
        }
    return in_dict_order(params, flat)


def to_bsr(params: Any, masks: Any, *, blocksize: tuple[int, int]) -> dict[str, Tensor]:
    """Masked 2-D leaves as ``torch.sparse_bsr`` tensors of ``blocksize`` blocks.

    Every mask is checked first: its shape must be divisible by ``blocksize`` and each block
    wholly kept (stored, kept zeros included) or wholly pruned (not stored). ``values()``
    holds the kept blocks bit for bit and ``.to_dense()`` equals :func:`funcsparse.squash`
    (as for :func:`to_csr`, up to the sign of kept zeros and NaN payloads). Masks made by
    ``fs.WeightNorm(sparse_block_shape=blocksize, ...)`` with every selected block pruned
    whole have this pattern; :func:`funcsparse.export.detect_pattern` finds a mask's blocks.

    Examples:
        >>> import torch
        >>> from funcsparse.export import to_bsr
        >>> mask = torch.tensor([[True, True, False, False]] * 2)
        >>> bsr = to_bsr({"w": torch.arange(8.0).view(2, 4)}, {"w": mask}, blocksize=(2, 2))["w"]
        >>> bsr.values()
        tensor([[[0., 1.],
                 [4., 5.]]])
        >>> to_bsr({"w": torch.ones(2, 4)}, {"w": mask}, blocksize=(1, 4))
        Traceback (most recent call last):
        ...
        ValueError: to_bsr: the mask at 'w' is not made ...: block [0:1, 0:4] keeps 2 ...

    Args:
        params: a pytree of tensors.
        masks: as in :func:`funcsparse.apply_masks`.
        blocksize: ``(rows, cols)`` of a block, positive ints dividing each masked leaf's
            shape. Required.

    Returns:
        ``{path: tensor}``: sparse BSR tensors for masked leaves, dense copies otherwise.

    Raises:
        ValueError: a masked leaf is not 2-D or is on the meta device, its shape is not
            divisible by ``blocksize``, or a block is partly kept (the first such block is
            named); a block of 2**63 entries or more; or as :func:`funcsparse.squash`.
        TypeError: ``blocksize`` is not two ints; or as :func:`funcsparse.squash`.
    """
    rows, cols = require_blocksize("to_bsr", "blocksize", blocksize)
    if rows * cols >= 2**63:  # only a 0-size leaf's shape is "divisible" by such blocks
        raise ValueError(
            f"to_bsr: blocksize={short_repr((rows, cols))} has more entries per block than "
            "torch can index (2**63)"
        )
    paths, dense, mask_leaves = squashed_leaves(params, masks, function="to_bsr")
    for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True):
        if mask is None:
            continue
        _require_2d("to_bsr", path, leaf, "BSR")
        problem = block_violation(mask, blocksize=(rows, cols))
        if problem is not None:
            raise ValueError(
                f"to_bsr: the mask at {short_repr(path)} is not made of whole "
                f"{short_repr((rows, cols))} blocks: {problem}"
            )
    with _quiet_beta():
        flat = {
            path: leaf if mask is None else _bsr(leaf, mask, rows, cols)
            for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True)
        }
    return in_dict_order(params, flat)


def to_semi_structured(params: Any, masks: Any) -> dict[str, Tensor]:
    """Masked 2-D leaves as torch's 2:4 semi-structured tensors (CUDA only in torch).

    A mask must keep at most 2 of every 4 consecutive entries along each row (fewer is
    allowed: a group with one or none kept is still 2:4 for the kernels, which store its
    free slots as zeros). torch's backend also sets the dtype and the shape: with the default
    cuSPARSELt backend float16, bfloat16, int8 and float8_e4m3fn, and each side a positive
    multiple of a minimum (16 for 16-bit dtypes, 32 for 8-bit ones); with CUTLASS
    (``SparseSemiStructuredTensor._FORCE_CUTLASS``) float32 is accepted too and needs at
    most 1 kept of every 2 (torch stores float32 as 1:2). The constraints are read from the
    installed torch.

    Every leaf is checked (pattern, dtype, shape) on any device before anything is
    converted. torch runs this layout only on CUDA, so a masked leaf on another device is
    then a ValueError (the input, not funcsparse, needs to change: move params and masks
    to a CUDA device), named by path. On CUDA each masked leaf becomes
    ``torch.sparse.to_sparse_semi_structured(fs.squash(...)[path])``; ``.to_dense()`` and
    matmuls give the squashed weight's.

    Examples:
        >>> import torch
        >>> from funcsparse.export import to_semi_structured
        >>> mask = torch.tensor([[True, False, True, False]]).repeat(16, 4)
        >>> params = {"w": torch.ones(16, 16, dtype=torch.float16)}
        >>> to_semi_structured(params, {"w": mask})
        Traceback (most recent call last):
        ...
        ValueError: to_semi_structured: the leaf at 'w' is on cpu; torch's semi-structured ...
        >>> bad = mask.clone()
        >>> bad[3, 1] = True
        >>> to_semi_structured(params, {"w": bad})
        Traceback (most recent call last):
        ...
        ValueError: to_semi_structured: the mask at 'w' is not 2:4 ...: group [3, 0:4] keeps 3 ...

    Args:
        params: a pytree of tensors.
        masks: as in :func:`funcsparse.apply_masks`.

    Returns:
        ``{path: tensor}``: ``SparseSemiStructuredTensor`` for masked leaves, dense copies
        otherwise.

    Raises:
        ValueError: a masked leaf is not 2-D or is on the meta device, its shape breaks
            the backend's minimum, its mask is not 2:4 along rows (the first offending
            group is named), or, all of these passing, it is not on a CUDA device; or as
            :func:`funcsparse.squash`.
        TypeError: a masked leaf's dtype is not one the backend takes; or as
            :func:`funcsparse.squash`.
    """
    function = "to_semi_structured"
    paths, dense, mask_leaves = squashed_leaves(params, masks, function=function)
    semi = torch.sparse.SparseSemiStructuredTensor
    backend = (
        torch.sparse.SparseSemiStructuredTensorCUTLASS
        if semi._FORCE_CUTLASS
        else torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    )
    constraints = backend._DTYPE_SHAPE_CONSTRAINTS
    for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True):
        if mask is None:
            continue
        _require_2d(function, path, leaf, "the semi-structured layout")
        if leaf.dtype not in constraints:
            raise TypeError(
                f"{function}: the leaf at {short_repr(path)} is {describe(leaf)}; torch's "
                f"semi-structured backend ({backend.BACKEND}) takes "
                f"{sorted(str(d) for d in constraints)}: cast it"
            )
        sides = (constraints[leaf.dtype].sparse_min_rows, constraints[leaf.dtype].sparse_min_cols)
        if any(size < side or size % side for size, side in zip(leaf.shape, sides, strict=True)):
            raise ValueError(
                f"{function}: the leaf at {short_repr(path)} has shape {tuple(leaf.shape)}; "
                f"torch's semi-structured backend ({backend.BACKEND}) needs each side a "
                f"positive multiple of {sides} for {leaf.dtype}"
            )
        n, m = (1, 2) if leaf.dtype == torch.float32 else (2, 4)
        problem = nm_violation(mask, n=n, m=m)
        if problem is not None:
            raise ValueError(
                f"{function}: the mask at {short_repr(path)} is not {n}:{m} along its rows: "
                f"{problem}"
            )
    for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True):
        if mask is not None and leaf.device.type != "cuda":
            raise ValueError(
                f"{function}: the leaf at {short_repr(path)} is on {leaf.device}; torch's "
                "semi-structured layout runs only on CUDA: move params and masks to a CUDA "
                "device (the pattern check passed)"
            )
    flat = {
        path: leaf if mask is None else torch.sparse.to_sparse_semi_structured(leaf)
        for path, leaf, mask in zip(paths, dense, mask_leaves, strict=True)
    }
    return in_dict_order(params, flat)


def _require_2d(function: str, path: str, leaf: Tensor, layout: str) -> None:
    """A masked leaf must hold values (not meta) and be 2-D."""
    if leaf.device.type == "meta":
        raise ValueError(
            f"{function}: the masked leaf at {short_repr(path)} is on the meta device (a shape "
            "without values); there is nothing to convert"
        )
    if leaf.dim() != 2:
        raise ValueError(
            f"{function}: the masked leaf at {short_repr(path)} is {describe(leaf)}; {layout} "
            "holds 2-D matrices: reshape the leaf and its mask to 2-D (e.g. w.flatten(1)) or "
            "leave it unmasked"
        )


@contextlib.contextmanager
def _quiet_beta() -> Iterator[None]:
    """Hide torch's "Sparse CSR/BSR tensor support is in beta state" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse \w+ tensor support is in beta")
        yield


def _csr(dense: Tensor, mask: Tensor) -> Tensor:
    """``dense`` as CSR storing the kept positions of ``mask`` (row-major order)."""
    crow, flat = _compressed_indices(mask)
    values = dense.reshape(-1).index_select(0, flat)
    col = flat.remainder_(mask.shape[1]) if mask.shape[1] else flat  # in place: no 2nd copy
    return torch.sparse_csr_tensor(
        crow, col, values, tuple(dense.shape), dtype=dense.dtype, check_invariants=False
    )


def _bsr(dense: Tensor, mask: Tensor, rows: int, cols: int) -> Tensor:
    """``dense`` as BSR of ``(rows, cols)`` blocks, storing the kept blocks of ``mask``."""
    height, width = dense.shape
    block_mask = mask[::rows, ::cols]
    crow, flat = _compressed_indices(block_mask)
    col = flat.remainder_(block_mask.shape[1]) if block_mask.shape[1] else flat
    blocks = dense.view(height // rows, rows, width // cols, cols).transpose(1, 2)
    values = blocks[block_mask]  # (kept blocks, rows, cols), row-major over the grid
    return torch.sparse_bsr_tensor(
        crow, col, values, (height, width), dtype=dense.dtype, check_invariants=False
    )


def _compressed_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Compressed-row indices of a 2-D mask's kept cells: ``(crow, flat)``, int64, ``flat``
    the row-major positions (``flat % columns`` are the column indices)."""
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(mask.sum(1), 0, out=crow[1:])
    flat = mask.reshape(-1).nonzero().squeeze(1)
    return crow, flat
