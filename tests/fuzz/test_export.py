"""Fuzz the export entries: squash, to_csr, to_bsr, to_semi_structured, detect_pattern,
check_nm, check_blocks, and ``funcsparse report``'s build_report.

Properties (see ``hostile.guarded``): only TypeError/ValueError escape, with short messages;
nothing passed in changes; and where a call succeeds, its result is right: ``squash`` equals
``apply_masks`` detached, CSR/BSR ``to_dense()`` equals ``squash`` (up to the sign of zeros
and NaN payloads) and stores exactly the kept entries, ``detect_pattern``'s claim holds
(``check_nm`` / ``check_blocks`` on the same mask pass), and ``check_nm`` / ``check_blocks``
agree with a brute-force count. ``build_report`` on a damaged or odd file gives a report or
a TypeError/ValueError.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.__main__ import main
from funcsparse.export import (
    Pattern,
    check_blocks,
    check_nm,
    detect_pattern,
    to_bsr,
    to_csr,
    to_semi_structured,
)
from funcsparse.report import build_report, format_report
from tests.fuzz.hostile import (
    FLOAT8,
    HUGE,
    Raised,
    fuzz,
    guarded,
    junk,
    pytrees,
    same_output,
    shapes,
    tensors,
)
from tests.fuzz.test_entries import _leaves, masks_for

#: n, m, a block side: valid, edge and hostile.
ints = st.one_of(
    st.integers(-1, 9), st.sampled_from([0, -1, True, False, 2.5, HUGE, 2**63, "2"]), junk
)
paths = st.sampled_from(["mask", "fc.weight", "", "x" * 500])
blocksizes = st.one_of(
    st.tuples(st.integers(1, 4), st.integers(1, 4)),
    st.lists(st.integers(1, 4), min_size=2, max_size=2),
    st.tuples(ints, ints),
    st.sampled_from([(2**40, 2**40), (10**6, 1), (1, HUGE), (0, 1), (-1, 2), (1, 2, 3), (2,)]),
    junk,
)


def _comparable(tensor: Tensor) -> Tensor:
    """Values to compare up to the sign of zeros and NaN payloads (float8 as float32)."""
    tensor = tensor.detach()
    if tensor.dtype in FLOAT8:
        tensor = tensor.float()
    if tensor.dtype.is_complex:
        tensor = torch.view_as_real(tensor)
    if tensor.dtype.is_floating_point:
        tensor = torch.where(tensor.isnan(), torch.zeros((), dtype=tensor.dtype), tensor) + 0.0
    return tensor


def _equal_values(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and values, NaN where NaN, ``-0.0 == 0.0``."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point or a.dtype.is_complex:
        nan_a = a.isnan() if a.dtype not in FLOAT8 else a.float().isnan()
        nan_b = b.isnan() if b.dtype not in FLOAT8 else b.float().isnan()
        if not torch.equal(nan_a, nan_b):
            return False
    return torch.equal(_comparable(a), _comparable(b))


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equal (shape, dtype, bytes)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0 or a.device.type == "meta" or b.device.type == "meta":
        return a.device == b.device
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    # (a clone: a 1-entry view may keep a stride of 2 and still count as contiguous)
    a = a.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    b = b.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _short(out: Any) -> None:
    """An error's message shows no value in full (a 10**400 is shortened)."""
    if isinstance(out, Raised):
        assert len(str(out.error)) <= 600, f"a {len(str(out.error))}-character message"
        assert "0" * 50 not in str(out.error), f"a huge number in full: {out.error}"


# -- squash and the sparse layouts --------------------------------------------------------------


@fuzz
@given(data=st.data())
def test_squash(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    masks = data.draw(st.one_of(masks_for(params), st.none()), label="masks")
    out = guarded("squash", fs.squash, params, masks)
    expected = guarded("apply_masks", fs.apply_masks, params, masks)
    assert isinstance(out, Raised) == isinstance(expected, Raised), (
        f"squash and apply_masks disagree on raising: {out!r} vs {expected!r}"
    )
    if isinstance(out, Raised):
        assert str(out.error).startswith("squash:"), str(out.error)
        return
    want = dict(_leaves(expected))
    assert set(out) == set(want), f"squash keys {sorted(out)} vs {sorted(want)}"
    given_leaves = dict(_leaves(params))
    for path, leaf in out.items():
        assert not leaf.requires_grad, f"squash at {path!r} requires grad"
        assert leaf.is_contiguous(), f"squash at {path!r} is not contiguous"
        assert _same_bits(leaf, want[path]), f"squash at {path!r} differs from apply_masks"
        source = given_leaves[path]
        if leaf.numel() and source.device.type != "meta":
            assert leaf.untyped_storage().data_ptr() != source.untyped_storage().data_ptr(), (
                f"squash at {path!r} shares memory with params"
            )
    assert same_output(out, guarded("squash", fs.squash, params, masks))


def _check_layout(name: str, out: dict[str, Tensor], params: Any, masks: Any) -> None:
    """A layout's result: to_dense equals squash; stored entries are the mask's kept ones."""
    squashed = fs.squash(params, masks)
    assert list(out) == list(squashed), f"{name}: keys {list(out)} vs {list(squashed)}"
    flat_masks: dict[str, Any] = {}
    if isinstance(masks, dict) and set(masks) <= set(squashed):
        flat_masks = dict(masks)
    elif masks is not None:
        flat_masks = dict(_leaves(masks))
    for path, leaf in out.items():
        mask = flat_masks.get(path)
        if mask is None or leaf.layout == torch.strided:
            assert leaf.layout == torch.strided and mask is None, f"{name} at {path!r}"
            assert _same_bits(leaf, squashed[path]), f"{name} at {path!r}: dense copy differs"
            continue
        assert leaf.shape == squashed[path].shape and leaf.dtype == squashed[path].dtype
        stored = leaf.values().numel()
        assert stored == int(mask.sum()), f"{name} at {path!r}: {stored} stored values"
        if leaf.layout == torch.sparse_csr:  # the kept values, bit for bit
            kept = squashed[path].reshape(-1)[mask.reshape(-1)]
            assert _same_bits(leaf.values(), kept), f"{name} at {path!r}: values"
        if leaf.dtype in FLOAT8:  # torch's CPU to_dense lacks float8
            continue
        if leaf.dtype.is_complex and not bool(squashed[path].isfinite().all()):
            continue  # torch's to_dense adds into zeros: 0 + (x - inf j) has a NaN real part
        assert _equal_values(leaf.to_dense(), squashed[path]), f"{name} at {path!r}: to_dense"


@fuzz
@given(data=st.data())
def test_to_csr(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    masks = data.draw(st.one_of(masks_for(params), st.none()), label="masks")
    out = guarded("to_csr", to_csr, params, masks)
    if isinstance(out, Raised):
        assert str(out.error).startswith("to_csr:"), str(out.error)
        return
    _check_layout("to_csr", out, params, masks)


@fuzz
@given(data=st.data())
def test_to_bsr(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    masks = data.draw(st.one_of(masks_for(params), st.none()), label="masks")
    blocksize = data.draw(blocksizes, label="blocksize")
    out = guarded("to_bsr", to_bsr, params, masks, blocksize=blocksize)
    _short(out)
    if isinstance(out, Raised):
        assert str(out.error).startswith("to_bsr:"), str(out.error)
        return
    _check_layout("to_bsr", out, params, masks)


@st.composite
def block_masks(draw: st.DrawFn, /) -> tuple[Tensor, tuple[int, int]]:
    """A 2-D mask made of whole blocks, and its block shape."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    grid = draw(st.tuples(st.integers(0, 4), st.integers(0, 4)))
    seed = draw(st.integers(0, 2**31 - 1))
    cells = torch.rand(grid, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask = cells.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    return mask, (rows, cols)


@fuzz
@given(
    case=block_masks(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int8, *FLOAT8]),
    data=st.data(),
)
def test_to_csr_and_to_bsr_on_valid_masks(
    case: tuple[Tensor, tuple[int, int]], dtype: torch.dtype, data: Any
) -> None:
    mask, blocksize = case
    weight = data.draw(tensors(tuple(mask.shape), dtypes=(dtype,), odd=False), label="weight")
    params = {"w": weight, "b": torch.ones(3)}
    masks = {"w": mask}
    csr = guarded("to_csr", to_csr, params, masks)
    bsr = guarded("to_bsr", to_bsr, params, masks, blocksize=blocksize)
    assert not isinstance(csr, Raised), f"to_csr refused a valid input: {csr.error}"
    assert not isinstance(bsr, Raised), f"to_bsr refused a valid input: {bsr.error}"
    _check_layout("to_csr", csr, params, masks)
    _check_layout("to_bsr", bsr, params, masks)
    kept = weight.detach().reshape(-1)[mask.reshape(-1)]
    assert _same_bits(csr["w"].values(), kept), "to_csr: values are not the kept values"


@st.composite
def matched(draw: st.DrawFn, /) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """A flat dict of hostile leaves (any rank, dtype, layout, meta) and masks that fit each
    leaf's shape and device: inputs that pass squash's checks and reach the conversions."""
    params: dict[str, Tensor] = {}
    masks: dict[str, Tensor | None] = {}
    for name in draw(st.lists(st.sampled_from(["w", "b", "fc.weight", "0"]), unique=True)):
        shape = draw(st.one_of(shapes(min_dims=2, max_dims=2), shapes()))
        dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.int8, *FLOAT8)
        leaf = draw(tensors(shape, dtypes=dtypes))
        params[name] = leaf
        if draw(st.integers(0, 3)) == 0:
            masks[name] = None
            continue
        mask = draw(st.one_of(structured_masks(), tensors(shape, dtypes=(torch.bool,), odd=False)))
        if mask.shape != leaf.shape:
            mask = torch.rand(leaf.shape) < 0.5
        if leaf.device.type == "meta":
            mask = mask.to("meta")
        masks[name] = mask
    return params, masks


@fuzz
@given(case=matched(), blocksize=blocksizes)
def test_layouts_on_inputs_that_fit(
    case: tuple[dict[str, Tensor], dict[str, Tensor | None]], blocksize: Any
) -> None:
    params, masks = case
    for name, call, kwargs in (
        ("to_csr", to_csr, {}),
        ("to_bsr", to_bsr, {"blocksize": blocksize}),
        ("to_semi_structured", to_semi_structured, {}),
    ):
        out = guarded(name, call, params, masks, **kwargs)
        _short(out)
        if isinstance(out, Raised):
            assert str(out.error).startswith(f"{name}:"), str(out.error)
        elif name != "to_semi_structured":
            _check_layout(name, out, params, masks)


@fuzz
@given(data=st.data())
def test_to_semi_structured(data: Any) -> None:
    params = data.draw(st.one_of(pytrees(), junk), label="params")
    masks = data.draw(st.one_of(masks_for(params), st.none()), label="masks")
    out = guarded("to_semi_structured", to_semi_structured, params, masks)
    if isinstance(out, Raised):
        assert str(out.error).startswith("to_semi_structured:"), str(out.error)
        return
    for path, leaf in out.items():  # no CUDA here: only unmasked leaves convert (to copies)
        if leaf.device.type != "cuda":
            assert leaf.layout == torch.strided, f"to_semi_structured at {path!r}"


# -- patterns -----------------------------------------------------------------------------------


def _brute_nm(mask: Tensor, n: int, m: int, exact: bool) -> bool:
    """Whether every group of ``m`` along the last dim keeps at most (exactly) ``n``."""
    if mask.shape[-1] % m:
        return False
    counts = mask.reshape(-1, m).sum(1) if mask.numel() else torch.zeros(0)
    return bool((counts == n).all() if exact else (counts <= n).all())


def _brute_blocks(mask: Tensor, rows: int, cols: int) -> bool:
    """Whether the last two dims (a 1-D mask as one row) are tiled by whole blocks."""
    if mask.dim() > 1:
        matrices = mask.reshape(math.prod(mask.shape[:-2]), *mask.shape[-2:])
    else:
        matrices = mask.reshape(1, 1, mask.numel())
    height, width = matrices.shape[1:]
    if height % rows or width % cols:
        return False
    for batch in matrices:
        for i in range(0, height, rows):
            for j in range(0, width, cols):
                block = batch[i : i + rows, j : j + cols]
                if bool(block.any()) != bool(block.all()):
                    return False
    return True


@st.composite
def structured_masks(draw: st.DrawFn, /) -> Tensor:
    """Bool masks with structure (N:M, blocks, channels, dense, empty) or none, often in
    hostile layouts (transposed, strided, expanded views)."""
    kind = draw(st.sampled_from(["nm", "block", "channel", "random", "full", "odd"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if kind == "odd":
        return draw(tensors(dtypes=(torch.bool,)))
    if kind == "nm":
        m = draw(st.sampled_from([2, 4, 8, 16]))
        n = draw(st.integers(1, m - 1))
        rows, groups = draw(st.integers(1, 5)), draw(st.integers(1, 4))
        keep = torch.rand(rows * groups, m, generator=gen).argsort(1)[:, :n]
        mask = torch.zeros(rows * groups, m, dtype=torch.bool).scatter_(1, keep, True)
        return mask.reshape(rows, groups * m)
    if kind == "block":
        return draw(block_masks())[0]
    if kind == "channel":
        shape = draw(shapes(min_dims=1, max_dims=3))
        dim = draw(st.integers(0, len(shape) - 1))
        keep = torch.rand(shape[dim], generator=gen) < 0.5
        view = [1] * len(shape)
        view[dim] = shape[dim]
        return keep.reshape(view).expand(shape).clone()
    if kind == "full":
        shape = draw(shapes())
        return torch.full(shape, draw(st.booleans()), dtype=torch.bool)
    shape = draw(shapes())
    return torch.rand(shape, generator=gen) < draw(st.floats(0, 1))


def _hostile_view(draw: st.DrawFn, mask: Tensor) -> Tensor:
    """``mask`` itself, or the same values in a non-contiguous layout or at an odd offset."""
    kind = draw(st.sampled_from(["same", "same", "transposed", "strided", "offset"]))
    if kind == "transposed" and mask.dim() >= 2:
        return mask.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "strided" and mask.dim() >= 1:
        wide = torch.zeros((*mask.shape[:-1], mask.shape[-1] * 2), dtype=torch.bool)
        wide[..., ::2] = mask
        return wide[..., ::2]
    if kind == "offset":
        flat = torch.zeros(mask.numel() + 3, dtype=torch.bool)
        flat[3:] = mask.reshape(-1)
        return flat[3:].view(mask.shape)
    return mask


@fuzz
@given(data=st.data())
def test_detect_pattern_claims_hold(data: Any) -> None:
    mask = data.draw(st.one_of(structured_masks(), junk), label="mask")
    if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.device.type == "cpu":
        mask = _hostile_view(data.draw, mask)
    pattern = guarded("detect_pattern", detect_pattern, mask)
    if isinstance(pattern, Raised):
        assert str(pattern.error).startswith("detect_pattern:"), str(pattern.error)
        return
    assert isinstance(mask, Tensor)
    kept = int(mask.sum())
    if pattern.kind == "dense":
        assert kept == mask.numel()
    elif pattern.kind == "empty":
        assert kept == 0 and mask.numel() > 0
    elif pattern.kind == "channel":
        assert pattern.axis is not None
        moved = mask.movedim(pattern.axis, 0).reshape(mask.shape[pattern.axis], -1)
        assert bool((moved.all(1) | ~moved.any(1)).all()), f"{pattern} does not hold"
        assert 0 < kept < mask.numel()
    elif pattern.kind == "n:m":
        assert pattern.n is not None and pattern.m is not None
        check_nm(mask, n=pattern.n, m=pattern.m, exact=True)
        assert _brute_nm(mask, pattern.n, pattern.m, exact=True), f"{pattern} does not hold"
    elif pattern.kind == "block":
        assert pattern.block is not None
        check_blocks(mask, blocksize=pattern.block)
        assert _brute_blocks(mask, *pattern.block), f"{pattern} does not hold"
        assert pattern.block[0] * pattern.block[1] > 1
    else:
        assert pattern.kind == "unstructured"
        assert 0 < kept < mask.numel()
        for m in (2, 4, 8):
            for n in range(1, m):
                assert not _brute_nm(mask, n, m, exact=True), f"missed {n}:{m}"
        assert not _brute_blocks(mask, 1, 2), "missed a 1x2 block pattern"
        assert not _brute_blocks(mask, 2, 1), "missed a 2x1 block pattern"
    assert same_output(pattern, guarded("detect_pattern", detect_pattern, mask))


@fuzz
@given(data=st.data())
def test_check_nm_agrees_with_a_brute_count(data: Any) -> None:
    mask = data.draw(st.one_of(structured_masks(), junk), label="mask")
    if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.device.type == "cpu":
        mask = _hostile_view(data.draw, mask)
    n = data.draw(st.one_of(st.integers(0, 4), ints), label="n")
    m = data.draw(st.one_of(st.sampled_from([1, 2, 4, 8]), ints), label="m")
    exact = data.draw(st.one_of(st.booleans(), junk), label="exact")
    path = data.draw(st.one_of(paths, junk), label="path")
    out = guarded("check_nm", check_nm, mask, n=n, m=m, exact=exact, path=path)
    _short(out)
    valid = (
        isinstance(mask, Tensor)
        and mask.dtype == torch.bool
        and mask.device.type == "cpu"
        and mask.dim() >= 1
        and type(n) is int
        and type(m) is int
        and isinstance(exact, bool)
        and isinstance(path, str)
        and m >= 1
        and 0 <= n <= m
    )
    if isinstance(out, Raised):
        assert str(out.error).startswith("check_nm"), str(out.error)
        if valid and isinstance(out.error, ValueError):
            assert isinstance(mask, Tensor) and isinstance(n, int) and isinstance(m, int)
            assert isinstance(exact, bool)
            assert not _brute_nm(mask, n, m, exact), f"check_nm refused a {n}:{m} mask"
        else:
            assert not valid or isinstance(out.error, ValueError)
        return
    assert valid, f"check_nm passed n={n!r} m={m!r} exact={exact!r} on {mask!r}"
    assert isinstance(mask, Tensor) and isinstance(n, int) and isinstance(m, int)
    assert _brute_nm(mask, n, m, bool(exact)), f"check_nm passed a mask that is not {n}:{m}"


@fuzz
@given(data=st.data())
def test_check_blocks_agrees_with_a_brute_count(data: Any) -> None:
    mask = data.draw(st.one_of(structured_masks(), junk), label="mask")
    if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.device.type == "cpu":
        mask = _hostile_view(data.draw, mask)
    blocksize = data.draw(blocksizes, label="blocksize")
    path = data.draw(st.one_of(paths, junk), label="path")
    out = guarded("check_blocks", check_blocks, mask, blocksize=blocksize, path=path)
    _short(out)
    valid = (
        isinstance(mask, Tensor)
        and mask.dtype == torch.bool
        and mask.device.type == "cpu"
        and mask.dim() >= 1
        and isinstance(blocksize, (tuple, list))
        and len(blocksize) == 2
        and isinstance(path, str)
        and all(type(side) is int and side >= 1 for side in blocksize)
    )
    if isinstance(out, Raised):
        assert str(out.error).startswith("check_blocks") or str(out.error).startswith(
            "block_violation"
        ), str(out.error)
        if valid and isinstance(out.error, ValueError):
            assert isinstance(mask, Tensor) and isinstance(blocksize, (tuple, list))
            assert not _brute_blocks(mask, blocksize[0], blocksize[1]), "refused whole blocks"
        return
    assert valid, f"check_blocks passed blocksize={blocksize!r} on {mask!r}"
    assert isinstance(mask, Tensor) and isinstance(blocksize, (tuple, list))
    assert _brute_blocks(mask, blocksize[0], blocksize[1]), "check_blocks passed a partial block"


@fuzz
@given(data=st.data())
def test_pattern_fields(data: Any) -> None:
    kind = data.draw(st.one_of(st.sampled_from(["dense", "n:m", "block", "channel", "x"]), junk))
    needs = {"n:m": ("n", "m"), "block": ("block",), "channel": ("axis",)}
    fit = data.draw(st.booleans(), label="fields that fit the kind")
    fields = {
        name: data.draw(strategy if name in needs.get(kind, ()) else st.none(), label=name)
        if fit and isinstance(kind, str)
        else data.draw(st.one_of(st.none(), strategy), label=name)
        for name, strategy in (("n", ints), ("m", ints), ("block", blocksizes), ("axis", ints))
    }
    pattern = guarded("Pattern", Pattern, kind=kind, **fields)
    _short(pattern)
    if isinstance(pattern, Raised):
        assert str(pattern.error).startswith("Pattern:"), str(pattern.error)
        return
    assert len(str(pattern)) <= 200, str(pattern)
    assert pattern == Pattern(kind=kind, **fields)
    assert hash(pattern) == hash(Pattern(kind=kind, **fields))


# -- funcsparse report ---------------------------------------------------------------------------


def _odd_tensors() -> list[Tensor]:
    """Tensors a state_dict may hold besides float weights (sparse layouts: torch warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [
            torch.zeros(0),
            torch.zeros(3, 0),
            torch.tensor(0.0),
            torch.tensor(2.5),
            torch.tensor(7),  # num_batches_tracked
            torch.tensor([True, False]),
            torch.arange(6).reshape(2, 3),
            torch.tensor([1 + 1j, 0j]),
            torch.zeros(2, 2, dtype=torch.complex128),
            *(torch.zeros(4, dtype=dtype) for dtype in FLOAT8),
            torch.ones(4, dtype=torch.uint8),
            torch.eye(3).to_sparse(),
            torch.eye(4).to_sparse(1),
            torch.eye(3).to_sparse_csr(),
            torch.eye(4).to_sparse_bsr((2, 2)),
            torch.zeros(2, 3).to_sparse_csc(),
            torch.quantize_per_tensor(torch.tensor([0.0, 1.0]), 0.1, 0, torch.qint8),
        ]


odd_tensors = st.one_of(tensors(odd=False), st.sampled_from(_odd_tensors()))
odd_keys = st.one_of(st.sampled_from(["w", "a.b", "", ".", "0", "x" * 300]), st.integers(-3, 3))
state_dicts = st.recursive(
    st.one_of(odd_tensors, st.sampled_from([None, 3, "text", 1.5, [1, 2], ()])),
    lambda inner: st.dictionaries(odd_keys, inner, min_size=1, max_size=4),
    max_leaves=6,
)


def _file_bytes(draw: st.DrawFn, kind: str) -> tuple[bytes, str]:
    """The bytes of a hostile checkpoint file and what it is."""
    if kind == "random":
        return draw(st.binary(max_size=300)), kind
    buffer = io.BytesIO()
    if kind in ("sparse", "truncated", "flipped"):
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        params = {"w": torch.randn(4, 8, generator=gen), "b": torch.randn(8, generator=gen)}
        masks = {"w": torch.rand(4, 8, generator=gen) < 0.5, "b": None}
        fs.save_sparse(buffer, params, masks)
        raw = buffer.getvalue()
        if kind == "truncated":
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        elif kind == "flipped":
            where = draw(st.integers(0, len(raw) - 1))
            raw = raw[:where] + bytes([raw[where] ^ 0xFF]) + raw[where + 1 :]
        return raw, kind
    if kind == "forged":  # a sparse checkpoint's dict with one field replaced by junk
        fs.save_sparse(buffer, {"w": torch.ones(2, 8)}, {"w": torch.rand(2, 8) < 0.5})
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        leaf = checkpoint["leaves"]["w"]
        field = draw(st.sampled_from([*leaf, "version", "leaves", "extra"]))
        junk_value = draw(
            st.one_of(
                junk.filter(lambda value: not isinstance(value, (torch.nn.Module, set))),
                st.sampled_from([[2, 8], [10**6, 10**6], [-1, 16], "float8_e4m3fn", "bogus"]),
                st.sampled_from([torch.zeros(3), torch.zeros(1, dtype=torch.uint8), 2**40]),
            )
        )
        if field in ("version", "leaves", "extra"):
            checkpoint[field] = junk_value
        else:
            leaf[field] = junk_value
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        return buffer.getvalue(), kind
    if kind == "pickle":
        obj = draw(st.sampled_from([{"w": Path("x")}, [1, 2], {"a": {1, 2}}, object]))
        return pickle.dumps(obj), kind
    obj = draw(st.one_of(state_dicts, st.just({}), st.lists(odd_tensors, max_size=2), odd_tensors))
    torch.save(obj, buffer)
    return buffer.getvalue(), kind


@fuzz
@given(data=st.data())
def test_build_report_on_hostile_files(data: Any) -> None:
    kind = data.draw(
        st.sampled_from(
            ["random", "sparse", "truncated", "flipped", "forged", "pickle", "state_dict"]
        )
    )
    raw, kind = _file_bytes(data.draw, kind)
    progress = data.draw(st.sampled_from(["never", "never", "never", "bogus", 1]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(raw)
        given_path: Any = data.draw(st.one_of(st.just(path), st.just(str(path)), junk))
        good_call = progress == "never" and (
            isinstance(given_path, Path)
            or (isinstance(given_path, str) and given_path == str(path))
        )
        report = guarded("build_report", build_report, given_path, progress=progress)
        if good_call:  # the command line says the same: a JSON report, or status 2 and a line
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(["report", "--json", "--progress", "never", str(path)])
            if isinstance(report, Raised):
                assert (
                    status == 2 and err.getvalue() == f"funcsparse report: error: {report.error}\n"
                )
            else:
                assert status == 0 and json.loads(out.getvalue()) == json.loads(json.dumps(report))
        if isinstance(report, Raised):
            assert str(report.error).startswith("build_report:"), str(report.error)
            assert kind != "sparse" or not good_call, f"refused a good file: {report.error}"
            return
    assert good_call
    assert report["file_bytes"] == len(raw)
    totals = report["totals"]
    assert totals["numel"] == sum(row["numel"] for row in report["leaves"])
    for row in report["leaves"]:
        assert 0 <= row["pruned"] <= row["numel"] == math.prod(row["shape"])
        assert 0.0 <= row["sparsity"] <= 1.0
        assert row["sparse_bytes"] >= 0 and row["dense_bytes"] >= 0
    text = format_report(report)
    assert text.count("\n") >= len(report["leaves"]) + 4, text
