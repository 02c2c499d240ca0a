"""Sparse checkpoints: bit-exact round trips, the file format, sizes, and loud bad input."""

from __future__ import annotations

import io
import os
import random
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.export import checkpoint
from funcsparse.export.checkpoint import (
    FORMAT,
    VERSION,
    is_sparse_checkpoint,
    iter_sparse,
    load_sparse,
    save_sparse,
    stored_nbytes,
)
from funcsparse.methods._base import SUPPORTED_DTYPES

FLOAT8 = [
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
]
EXTRA_DTYPES = [
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.complex64,
    torch.complex128,
    *FLOAT8,
]
ALL_DTYPES = [*SUPPORTED_DTYPES, *EXTRA_DTYPES]
WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- helpers -----------------------------------------------------------------------------------


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> Tensor:
    """A tensor whose bytes are random: NaN payloads, -0.0, inf, subnormals all come up."""
    generator = torch.Generator().manual_seed(seed)
    numel = 1
    for size in shape:
        numel *= size
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).view(shape)


def bits_of(tensor: Tensor) -> Tensor:
    """A tensor's bit patterns as integers (so NaN payloads and -0.0 compare exactly)."""
    flat = tensor.detach().contiguous().view(-1)
    if flat.element_size() in WORD:
        return flat.view(WORD[flat.element_size()])
    return flat.view(torch.int64)


def expected_leaf(param: Tensor, mask: Tensor | None) -> Tensor:
    """What the checkpoint holds for a leaf: kept bits as they are, pruned entries all zero."""
    words = bits_of(param).clone()
    if mask is not None:
        keep = mask.reshape(-1)
        if words.numel() != keep.numel():  # two words per complex128 entry
            keep = keep.repeat_interleave(words.numel() // max(keep.numel(), 1))
        words[~keep] = 0
    return words


def assert_same_bits(actual: Tensor, param: Tensor, mask: Tensor | None) -> None:
    assert actual.dtype == param.dtype
    assert actual.shape == param.shape
    assert actual.is_contiguous()
    assert not actual.requires_grad
    assert torch.equal(bits_of(actual), expected_leaf(param, mask))


def round_trip(params: Any, masks: Any, target: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    save_sparse(target, params, masks)
    if isinstance(target, io.BytesIO):
        target.seek(0)
    return load_sparse(target)


def crc_of(*tensors: Tensor) -> int:
    """zlib.crc32 of the tensors' bytes, computed independently of the module (numpy)."""
    value = 0
    for tensor in tensors:
        value = zlib.crc32(tensor.contiguous().view(torch.uint8).numpy().tobytes(), value)
    return value


def small_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    generator = torch.Generator().manual_seed(0)
    params = {
        "a": torch.randn(5, 3, generator=generator),
        "b": torch.randn(4, generator=generator),
        "c": torch.randn(2, 9, generator=generator),
    }
    masks: dict[str, Tensor | None] = {
        "a": torch.rand(5, 3, generator=generator) < 0.5,
        "b": None,
        "c": torch.rand(2, 9, generator=generator) < 0.3,
    }
    save_sparse(path, params, masks)
    return params, masks


def rewrite(path: Path, obj: Any) -> None:
    """A hand-made (damaged) checkpoint: torch.save of ``obj``."""
    torch.save(obj, path)


def loaded_raw(path: Path) -> dict[str, Any]:
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict)
    return raw


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_round_trip_is_bit_exact_for_every_dtype(dtype: torch.dtype, tmp_path: Path) -> None:
    params = {
        "w": random_bits((7, 5), dtype, seed=1),
        "scalar": random_bits((), dtype, seed=2),
        "empty": random_bits((0, 3), dtype, seed=3),
        "dense": random_bits((3,), dtype, seed=4),
        "all_kept": random_bits((9,), dtype, seed=5),
        "none_kept": random_bits((2, 2), dtype, seed=6),
    }
    generator = torch.Generator().manual_seed(7)
    masks = {
        "w": torch.rand(7, 5, generator=generator) < 0.5,
        "scalar": torch.tensor(True),
        "empty": torch.zeros(0, 3, dtype=torch.bool),
        "dense": None,
        "all_kept": torch.ones(9, dtype=torch.bool),
        "none_kept": torch.zeros(2, 2, dtype=torch.bool),
    }
    loaded, loaded_masks = round_trip(params, masks, tmp_path / "model.pt")
    assert list(loaded) == list(params)  # a flat dict's own key order, not optree's sorted one
    for key, param in params.items():
        assert_same_bits(loaded[key], param, masks[key])
        mask = masks[key]
        assert (loaded_masks[key] is None) if mask is None else torch.equal(loaded_masks[key], mask)


def test_special_float_values_among_kept_entries(tmp_path: Path) -> None:
    nan_payload = torch.tensor([0x7FC00123, 0xFFC00001, 0x7F800001], dtype=torch.int64).to(
        torch.int32
    )
    special = torch.cat(
        [
            torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 3.0]),
            nan_payload.view(torch.float32),
        ]
    )
    mask = torch.tensor([True] * 9 + [False])
    loaded, _ = round_trip({"x": special}, {"x": mask}, tmp_path / "s.pt")
    assert_same_bits(loaded["x"], special, mask)
    assert bits_of(loaded["x"])[0].item() == bits_of(torch.tensor(-0.0)).item()  # -0.0 kept
    assert bits_of(loaded["x"])[9].item() == 0  # a pruned NaN is +0.0


def test_pruned_inf_and_nan_come_back_as_positive_zero(tmp_path: Path) -> None:
    param = torch.tensor([float("nan"), -float("inf"), -0.0, 2.0])
    mask = torch.tensor([False, False, False, True])
    loaded, _ = round_trip({"x": param}, {"x": mask}, tmp_path / "s.pt")
    assert bits_of(loaded["x"]).tolist() == [0, 0, 0, bits_of(torch.tensor(2.0)).item()]
    assert torch.equal(loaded["x"], fs.squash({"x": param}, {"x": mask})["x"])


def test_nested_pytree_paths_and_file_objects() -> None:
    params = {"enc": [torch.ones(3), {"w": torch.arange(6.0).view(2, 3)}], "head": torch.ones(2)}
    masks = {
        "enc": [None, {"w": torch.tensor([[True, False, True], [False, True, False]])}],
        "head": None,
    }
    buffer = io.BytesIO()
    loaded, loaded_masks = round_trip(params, masks, buffer)
    assert list(loaded) == ["enc.0", "enc.1.w", "head"]
    assert loaded["enc.1.w"].tolist() == [[0.0, 0.0, 2.0], [0.0, 4.0, 0.0]]
    assert loaded_masks["enc.0"] is None and loaded_masks["enc.1.w"] is not None


def test_strided_params_masks_and_requires_grad(tmp_path: Path) -> None:
    base = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    param = torch.nn.Parameter(base.t())  # non-contiguous, requires grad
    sliced = base[::2, 1::3]  # strided view of a larger storage
    mask = (torch.rand(8, 6, generator=torch.Generator().manual_seed(1)) < 0.5).t().t()
    strided_mask = torch.ones(6, 16, dtype=torch.bool)[:, ::2].t()
    params = {"p": param, "s": sliced, "m": base.clone()}
    masks = {"p": mask, "s": None, "m": strided_mask.t()}
    assert not params["p"].is_contiguous() and not masks["m"].is_contiguous()
    loaded, _ = round_trip(params, masks, tmp_path / "s.pt")
    assert_same_bits(loaded["p"], param, mask)
    assert_same_bits(loaded["s"], sliced, None)
    assert_same_bits(loaded["m"], params["m"], masks["m"])
    # The strided dense leaf is stored compactly: not its whole 48-entry storage.
    raw = loaded_raw(tmp_path / "s.pt")
    assert raw["leaves"]["s"]["dense"].untyped_storage().nbytes() == sliced.numel() * 4


def test_chunk_boundaries(tmp_path: Path) -> None:
    # Leaves of several chunks, a length not a multiple of 8, strided: chunked paths.
    generator = torch.Generator().manual_seed(3)
    params = {
        "w": torch.randn(13, 11, generator=generator),
        "v": torch.randn(37, 3, generator=generator).t(),
    }
    masks = {k: torch.rand(p.shape, generator=generator) < 0.6 for k, p in params.items()}
    masks["v"] = masks["v"].t().contiguous().t()
    with mock.patch.object(checkpoint, "CHUNK", 16):
        loaded, loaded_masks = round_trip(params, masks, tmp_path / "c.pt")
    for key in params:
        assert_same_bits(loaded[key], params[key], masks[key])
        assert torch.equal(loaded_masks[key], masks[key])
    # Written in chunks, read whole (and the other way round): the same file.
    loaded_whole, _ = load_sparse(tmp_path / "c.pt")
    assert all(torch.equal(bits_of(loaded_whole[k]), bits_of(loaded[k])) for k in params)


@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple),
    dtype=st.sampled_from(ALL_DTYPES),
    seed=st.integers(0, 2**31 - 1),
    density=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    masked=st.booleans(),
    transpose=st.booleans(),
    chunk=st.sampled_from([8, 16, checkpoint.CHUNK]),
)
def test_round_trip_property(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    seed: int,
    density: float,
    masked: bool,
    transpose: bool,
    chunk: int,
) -> None:
    param = random_bits(shape, dtype, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(shape, generator=generator) < density if masked else None
    if transpose and param.dim() >= 2:
        param = param.transpose(0, 1)
        mask = None if mask is None else mask.transpose(0, 1)
    before = param.clone()
    with mock.patch.object(checkpoint, "CHUNK", chunk):
        loaded, loaded_masks = round_trip({"x": param}, {"x": mask}, io.BytesIO())
    assert_same_bits(loaded["x"], param, mask)
    assert torch.equal(bits_of(param), bits_of(before))
    if mask is None:
        assert loaded_masks["x"] is None
    else:
        assert torch.equal(loaded_masks["x"], mask)
        kept = int(mask.sum())
        assert stored_nbytes(mask, dtype=dtype) == kept * dtype.itemsize + (mask.numel() + 7) // 8


def test_inputs_are_not_mutated_and_results_share_no_memory(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    model.get_parameter("1.weight").data = model.get_parameter("0.weight").data[:2, :4]  # a view
    params = dict(model.named_parameters())
    masks = fs.compute_masks(params, {"*.weight": fs.Magnitude(0.5)})
    snapshot = {k: (p.detach().clone(), p._version) for k, p in params.items()}
    mask_snapshot = {k: (None if m is None else m.clone()) for k, m in masks.items()}
    loaded, _ = round_trip(params, masks, tmp_path / "m.pt")
    for key, param in params.items():
        assert torch.equal(bits_of(param), bits_of(snapshot[key][0]))
        assert param._version == snapshot[key][1]
        assert param.requires_grad
        mask = masks[key]
        assert mask is None or torch.equal(mask, mask_snapshot[key])
        assert loaded[key].untyped_storage().data_ptr() != param.untyped_storage().data_ptr()
    pointers = [t.untyped_storage().data_ptr() for t in loaded.values()]
    assert len(set(pointers)) == len(pointers)
    loaded["0.bias"].add_(1)  # the results are ordinary, writable tensors
    assert not torch.equal(loaded["0.bias"], params["0.bias"].detach())


def test_partial_mask_dict_and_masks_none(tmp_path: Path) -> None:
    params = {"w": torch.arange(4.0), "b": torch.ones(2)}
    loaded, loaded_masks = round_trip(
        params, {"w": torch.tensor([True, False, True, False])}, tmp_path / "a.pt"
    )
    assert loaded["w"].tolist() == [0.0, 0.0, 2.0, 0.0] and loaded_masks["b"] is None
    loaded, loaded_masks = round_trip(params, None, tmp_path / "b.pt")
    assert loaded_masks == {"b": None, "w": None} and torch.equal(loaded["w"], params["w"])


def test_empty_params(tmp_path: Path) -> None:
    assert round_trip({}, {}, tmp_path / "e.pt") == ({}, {})
    assert len(iter_sparse(tmp_path / "e.pt")) == 0


def test_device_keyword(tmp_path: Path) -> None:
    params = {"w": torch.arange(4.0)}
    save_sparse(tmp_path / "d.pt", params, {"w": params["w"] > 1})
    loaded, loaded_masks = load_sparse(tmp_path / "d.pt", device="meta")
    assert loaded["w"].device.type == "meta" and loaded_masks["w"] is not None
    assert loaded_masks["w"].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_leaves_round_trip(tmp_path: Path) -> None:
    params = {"w": torch.randn(33, 17, device="cuda").t(), "b": torch.randn(5, device="cuda")}
    masks = {"w": params["w"] > 0, "b": None}
    loaded, _ = round_trip(params, masks, tmp_path / "g.pt")
    assert_same_bits(loaded["w"], params["w"].cpu(), masks["w"].cpu())
    loaded, loaded_masks = load_sparse(tmp_path / "g.pt", device="cuda")
    assert loaded["w"].is_cuda and loaded_masks["w"] is not None and loaded_masks["w"].is_cuda


# --- the format ----------------------------------------------------------------------------------


def test_file_format_loads_with_weights_only(tmp_path: Path) -> None:
    params = {
        "w": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]),
        "b": torch.ones(2),
    }
    mask = torch.tensor([[True, False, True], [False, False, True], [True, True, False]])
    save_sparse(tmp_path / "f.pt", params, {"w": mask, "b": None})
    raw = loaded_raw(tmp_path / "f.pt")
    assert (
        raw["format"] == FORMAT == "funcsparse.sparse_checkpoint" and raw["version"] == VERSION == 1
    )
    assert list(raw["leaves"]) == ["w", "b"]  # the flat dict's own order
    entry = raw["leaves"]["w"]
    assert set(entry) == {"dtype", "shape", "kept", "values", "mask_bits", "crc32"}
    assert entry["dtype"] == "float32" and entry["shape"] == [3, 3] and entry["kept"] == 5
    assert entry["values"].tolist() == [1.0, 3.0, 6.0, 7.0, 8.0]  # row-major order
    packed = np.packbits(mask.numpy().reshape(-1), bitorder="little")
    assert entry["mask_bits"].tolist() == packed.tolist() == [0b11100101, 0b0]
    assert entry["crc32"] == crc_of(entry["values"], entry["mask_bits"])
    dense = raw["leaves"]["b"]
    assert set(dense) == {"dtype", "shape", "dense", "crc32"}
    assert dense["dense"].tolist() == [1.0, 1.0] and dense["crc32"] == crc_of(dense["dense"])


def test_stored_nbytes_matches_the_stored_tensors(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(10, 13, generator=generator).half(),
        "b": torch.randn(7, generator=generator),
    }
    masks = {"w": torch.rand(10, 13, generator=generator) < 0.3, "b": None}
    save_sparse(tmp_path / "n.pt", params, masks)
    raw = loaded_raw(tmp_path / "n.pt")["leaves"]
    w_bytes = sum(t.numel() * t.element_size() for t in (raw["w"]["values"], raw["w"]["mask_bits"]))
    assert (
        stored_nbytes(masks["w"], dtype=torch.float16) == w_bytes == int(masks["w"].sum()) * 2 + 17
    )
    assert stored_nbytes(masks["w"], dtype=torch.float16, numel=130) == w_bytes
    assert stored_nbytes(None, dtype=torch.float32, numel=7) == raw["b"]["dense"].numel() * 4 == 28
    assert stored_nbytes(torch.zeros(0, dtype=torch.bool), dtype=torch.float64) == 0


def test_stored_nbytes_refuses_bad_input() -> None:
    mask = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^stored_nbytes: give numel"):
        stored_nbytes(None, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^stored_nbytes: numel=5 but the mask has 4 entries"):
        stored_nbytes(mask, dtype=torch.float32, numel=5)
    with pytest.raises(ValueError, match=r"^stored_nbytes: numel must be at least 0, got -1"):
        stored_nbytes(None, dtype=torch.float32, numel=-1)
    with pytest.raises(
        TypeError,
        match=r"^stored_nbytes: mask must be a bool tensor or None, got a 1-D torch.float32",
    ):
        stored_nbytes(mask.float(), dtype=torch.float32)
    with pytest.raises(
        TypeError, match=r"^stored_nbytes: dtype must be a torch.dtype, got str 'float32'"
    ):
        stored_nbytes(mask, dtype="float32")
    with pytest.raises(TypeError, match=r"^stored_nbytes: numel must be an int, got bool True"):
        stored_nbytes(None, dtype=torch.float32, numel=True)


def test_is_sparse_checkpoint(tmp_path: Path) -> None:
    small_checkpoint(tmp_path / "s.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    assert is_sparse_checkpoint(tmp_path / "s.pt") and is_sparse_checkpoint(str(tmp_path / "s.pt"))
    assert is_sparse_checkpoint(torch.load(tmp_path / "s.pt", weights_only=True, mmap=True))
    assert not is_sparse_checkpoint(tmp_path / "plain.pt")
    assert not is_sparse_checkpoint(tmp_path / "junk.pt")
    assert not is_sparse_checkpoint({"w": torch.ones(2)})
    assert not is_sparse_checkpoint({"format": "something else"})
    assert not is_sparse_checkpoint([1, 2])
    with pytest.raises(FileNotFoundError):
        is_sparse_checkpoint(tmp_path / "missing.pt")


def test_iter_sparse_is_lazy_and_repeatable(tmp_path: Path) -> None:
    params, masks = small_checkpoint(tmp_path / "s.pt")
    leaves = iter_sparse(tmp_path / "s.pt")
    assert len(leaves) == 3 and "3 leaves" in repr(leaves)
    first = [(name, tensor.clone()) for name, tensor, _ in leaves]
    second = list(leaves)
    assert [name for name, _ in first] == [name for name, _, _ in second] == ["a", "b", "c"]
    for (name, tensor), (_, again, _mask) in zip(first, second, strict=True):
        assert torch.equal(tensor, again)
        assert_same_bits(again, params[name], masks[name])
    # A leaf is checked when reached: the ones before a damaged leaf come out first.
    raw = loaded_raw(tmp_path / "s.pt")
    raw["leaves"]["c"]["values"][0] += 1
    rewrite(tmp_path / "bad.pt", raw)
    reader = iter(iter_sparse(tmp_path / "bad.pt"))
    assert next(reader)[0] == "a" and next(reader)[0] == "b"
    with pytest.raises(
        ValueError,
        match=r"^iter_sparse: '.*bad\.pt': leaf 'c': the data does not match its checksum",
    ):
        next(reader)


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sparsity", "bound"), [(0.5, 0.55), (0.9, 0.15)])
def test_file_size_ratio_on_a_small_model(sparsity: float, bound: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256, bias=False), torch.nn.Linear(256, 256, bias=False)
    )
    params = {k: p.detach() for k, p in model.named_parameters()}
    masks = fs.compute_masks(params, {"*.weight": fs.Magnitude(sparsity)})
    torch.save(params, tmp_path / "dense.pt")
    save_sparse(tmp_path / "sparse.pt", params, masks)
    dense_size = os.path.getsize(tmp_path / "dense.pt")
    sparse_size = os.path.getsize(tmp_path / "sparse.pt")
    data = sum(stored_nbytes(m, dtype=torch.float32) for m in masks.values())
    # The overhead beyond the data: zip records (local header, central directory entry and
    # up to 63 bytes of alignment padding each: about 0.2 KiB per tensor record), the pickle
    # (about 0.15 KiB per leaf) and the fixed records (version, byteorder, ...: about 1 KiB).
    # 2 KiB + 0.6 KiB per leaf bounds it; at 2 x 256 x 256 it is under 1% of the dense file.
    overhead = sparse_size - data
    assert 0 < overhead <= 2048 + 600 * len(params)
    assert sparse_size <= bound * dense_size
    # The ratio is the data's ratio plus that overhead, not luck: the data alone is
    # kept * 4 + numel / 8 bytes against numel * 4.
    numel = sum(p.numel() for p in params.values())
    data_ratio = (1 - sparsity) + 1 / 32
    assert data == pytest.approx(data_ratio * numel * 4, abs=8)


def quietly(make: Any) -> Any:
    """``make()`` with its warnings silenced (experimental and deprecated dtypes warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


# --- saving: bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "masks", "error", "pattern"),
    [
        (
            {"w": torch.ones(2, 2)},
            {"w": torch.ones(2, 3, dtype=torch.bool)},
            ValueError,
            r"^save_sparse: the mask at 'w' has shape \(2, 3\) but the leaf has shape \(2, 2\)$",
        ),
        (
            {"w": torch.ones(2)},
            {"w": torch.ones(2)},
            TypeError,
            r"^save_sparse: the mask at 'w' must be a torch.bool tensor or None, got a 1-D torch.float32 tensor",
        ),
        (
            {"w": torch.ones(2)},
            {"w": "yes"},
            TypeError,
            r"^save_sparse: the mask at 'w' must be a torch.bool tensor or None, got str 'yes'",
        ),
        (
            {"w": torch.ones(2)},
            {"v": torch.ones(2, dtype=torch.bool)},
            ValueError,
            r"^save_sparse: masks has keys that are not keys of params: \['v'\]",
        ),
        (
            [torch.ones(2), torch.ones(3)],
            [None],
            ValueError,
            r"^save_sparse: masks do not have the structure of params",
        ),
        (
            {"w": torch.ones(2), "n": 3},
            None,
            TypeError,
            r"^save_sparse: expected a pytree of tensors .* got int 3 at 'n'",
        ),
        (
            {"w": torch.ones(2, device="meta")},
            None,
            ValueError,
            r"^save_sparse: the leaf at 'w' is on the meta device",
        ),
        (
            {"w": torch.ones(2)},
            {"w": torch.ones(2, dtype=torch.bool, device="meta")},
            ValueError,
            r"^save_sparse: the mask at 'w' is on meta but the leaf is on cpu",
        ),
        (
            {"w": torch.ones(2, 2).to_sparse()},
            None,
            TypeError,
            r"^save_sparse: the leaf at 'w' is a Tensor of layout torch.sparse_coo",
        ),
        (
            {"w": quietly(lambda: torch.ones(2, dtype=torch.complex32))},
            None,
            TypeError,
            r"^save_sparse: the leaf at 'w' has dtype torch.complex32, which a sparse checkpoint cannot store",
        ),
        (
            {"w": quietly(lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8))},
            None,
            TypeError,
            r"^save_sparse: the leaf at 'w' has dtype torch.quint8",
        ),
    ],
    ids=[
        "mask-shape",
        "float-mask",
        "str-mask",
        "extra-key",
        "structure",
        "non-tensor-leaf",
        "meta-leaf",
        "meta-mask",
        "sparse-leaf",
        "complex32",
        "quantized",
    ],
)
def test_save_refuses_bad_input_and_writes_nothing(
    params: Any, masks: Any, error: type[Exception], pattern: str, tmp_path: Path
) -> None:
    target = tmp_path / "model.pt"
    with pytest.raises(error, match=pattern):
        save_sparse(target, params, masks)
    assert list(tmp_path.iterdir()) == []
    # An existing file stays as it was.
    target.write_bytes(b"previous")
    with pytest.raises(error, match=pattern):
        save_sparse(target, params, masks)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def test_save_refuses_a_bad_path_and_a_mask_on_another_device() -> None:
    with pytest.raises(
        TypeError,
        match=r"^save_sparse: path must be a str, os.PathLike or a binary file object, got int 3",
    ):
        save_sparse(3, {"w": torch.ones(2)}, None)
    if torch.cuda.is_available():
        with pytest.raises(
            ValueError, match=r"^save_sparse: the mask at 'w' is on cuda:0 but the leaf is on cpu"
        ):
            save_sparse(
                io.BytesIO(),
                {"w": torch.ones(2)},
                {"w": torch.ones(2, dtype=torch.bool, device="cuda")},
            )


def test_a_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")

    def broken_save(obj: Any, file: Any) -> None:
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(target, {"w": torch.ones(3)}, None)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def test_saved_file_permissions_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        save_sparse(tmp_path / "p.pt", {"w": torch.ones(2)}, None)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "p.pt").st_mode) == 0o644


# --- loading: damaged files ----------------------------------------------------------------------


def test_load_refuses_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(5000))
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("random", "empty", "legacy"):
        with pytest.raises(
            ValueError, match=rf"^load_sparse: '.*{name}\.pt' is not a readable torch.save file"
        ):
            load_sparse(tmp_path / f"{name}.pt")
    with pytest.raises(
        ValueError,
        match=r"^load_sparse: '.*plain\.pt' is not a funcsparse sparse checkpoint \(no format marker .*found a dict with keys \['w'\]\); a plain state_dict loads with torch.load",
    ):
        load_sparse(tmp_path / "plain.pt")
    with pytest.raises(
        ValueError,
        match=r"^iter_sparse: '.*list\.pt' is not a funcsparse sparse checkpoint .*found list",
    ):
        iter_sparse(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "missing.pt")


def test_load_refuses_a_pickle_that_weights_only_refuses(tmp_path: Path) -> None:
    torch.save(
        {"format": FORMAT, "version": 1, "leaves": {}, "x": fs.Magnitude(0.5)}, tmp_path / "obj.pt"
    )
    with pytest.raises(
        ValueError,
        match=r"^load_sparse: '.*obj\.pt' is not a readable torch.save file.*UnpicklingError",
    ):
        load_sparse(tmp_path / "obj.pt")


def test_truncated_files(tmp_path: Path) -> None:
    small_checkpoint(tmp_path / "s.pt")
    data = (tmp_path / "s.pt").read_bytes()
    for size in [
        0,
        1,
        4,
        30,
        100,
        len(data) // 3,
        len(data) // 2,
        len(data) - 100,
        len(data) - 22,
        len(data) - 1,
    ]:
        (tmp_path / "t.pt").write_bytes(data[:size])
        with pytest.raises(
            ValueError, match=r"^load_sparse: '.*t\.pt' is not a readable torch.save file"
        ):
            load_sparse(tmp_path / "t.pt")


def test_a_flipped_byte_is_an_error_or_harmless(tmp_path: Path) -> None:
    params, masks = small_checkpoint(tmp_path / "s.pt")
    data = (tmp_path / "s.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "s.pt") as archive:
        infos = archive.infolist()
    # Every byte of every record's data (tensors, the pickle), and a sample of the rest.
    offsets: set[int] = set()
    for info in infos:
        header = info.header_offset
        name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
        start = header + 30 + name_length + extra_length
        offsets |= set(range(start, start + info.compress_size))
    offsets |= set(random.Random(0).sample(range(len(data)), 150))
    errors = 0
    for offset in sorted(offsets):
        damaged = bytearray(data)
        damaged[offset] ^= 0x5A
        (tmp_path / "f.pt").write_bytes(bytes(damaged))
        try:
            loaded, loaded_masks = load_sparse(tmp_path / "f.pt")
        except ValueError as err:
            assert str(err).startswith("load_sparse: ")
            errors += 1
            continue
        for key in params:  # where no error is raised, every tensor is right
            assert_same_bits(loaded[key], params[key], masks[key])
            mask = masks[key]
            assert (
                (loaded_masks[key] is None)
                if mask is None
                else torch.equal(loaded_masks[key], mask)
            )
    assert errors >= len(offsets) - 150  # every data and pickle byte is caught


def damaged(path: Path, change: Any) -> Path:
    """A copy of the checkpoint at ``path`` with ``change(raw)`` applied, crcs left as they are."""
    raw = loaded_raw(path)
    change(raw)
    out = path.with_name("damaged.pt")
    rewrite(out, raw)
    return out


def recrc(entry: dict[str, Any]) -> None:
    """Recompute an entry's checksum after changing its data (to reach the later checks)."""
    if "dense" in entry:
        entry["crc32"] = crc_of(entry["dense"])
    else:
        entry["crc32"] = crc_of(entry["values"], entry["mask_bits"])


def set_bits(raw: dict[str, Any], bits: Tensor) -> None:
    raw["leaves"]["a"]["mask_bits"] = bits
    recrc(raw["leaves"]["a"])


def flip_first_mask_bit(raw: dict[str, Any]) -> None:
    bits = raw["leaves"]["a"]["mask_bits"].clone()
    bits[0] ^= 1
    set_bits(raw, bits)


def drop_a_kept_bit(raw: dict[str, Any]) -> None:
    bits = raw["leaves"]["a"]["mask_bits"].clone()
    first = int((bits != 0).nonzero()[0])
    bits[first] &= bits[first] - 1  # clear the lowest set bit
    set_bits(raw, bits)


def set_padding_bit(raw: dict[str, Any]) -> None:
    bits = raw["leaves"]["a"]["mask_bits"].clone()
    bits[-1] |= 0x80  # 15 entries: bit 7 of byte 1 is padding
    set_bits(raw, bits)


def entry_change(key: str, field: str, value: Any, *, crc: bool = False) -> Any:
    def change(raw: dict[str, Any]) -> None:
        raw["leaves"][key][field] = value
        if crc:
            recrc(raw["leaves"][key])

    return change


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            lambda raw: raw.update(version=2),
            r" has format version 2, written by a newer funcsparse; this one reads version 1",
        ),
        (lambda raw: raw.update(version=0), r" has an invalid format version 0$"),
        (lambda raw: raw.update(version="1"), r" has an invalid format version '1'"),
        (lambda raw: raw.update(version=True), r" has an invalid format version True"),
        (lambda raw: raw.pop("version"), r" has an invalid format version None"),
        (
            lambda raw: raw.update(leaves=[1]),
            r" is a damaged sparse checkpoint: expected the keys format, version and leaves",
        ),
        (lambda raw: raw.update(extra=1), r" is a damaged sparse checkpoint"),
        (
            lambda raw: raw["leaves"].update({3: raw["leaves"]["a"]}),
            r": a leaf path is int 3, not a str",
        ),
        (entry_change("a", "dtype", "float33"), r": leaf 'a' has an unknown dtype 'float33'"),
        (
            entry_change("a", "dtype", torch.float32),
            r": leaf 'a' has an unknown dtype torch.float32",
        ),
        (
            entry_change("a", "dtype", "float64"),
            r": leaf 'a': values should be a torch.float64 tensor of shape \(\d+,\), got a 1-D torch.float32",
        ),
        (entry_change("a", "shape", [5, -3]), r": leaf 'a' has an invalid shape \[5, -3\]"),
        (entry_change("a", "shape", [5, True]), r": leaf 'a' has an invalid shape \[5, True\]"),
        (entry_change("a", "shape", "5x3"), r": leaf 'a' has an invalid shape '5x3'"),
        (
            entry_change("a", "shape", [5, 4]),
            r": leaf 'a': mask_bits should be a torch.uint8 tensor of shape \(3,\), got a 1-D torch.uint8 tensor of shape \(2,\)",
        ),
        (
            entry_change("a", "shape", [10**12]),
            r": leaf 'a': mask_bits should be a torch.uint8 tensor of shape \(125000000000,\)",
        ),
        (entry_change("a", "kept", 99), r": leaf 'a' has kept=99, not a count in \[0, 15\]"),
        (entry_change("a", "kept", -1), r": leaf 'a' has kept=-1, not a count in \[0, 15\]"),
        (
            entry_change("a", "kept", 2),
            r": leaf 'a': values should be a torch.float32 tensor of shape \(2,\)",
        ),
        (
            entry_change("a", "values", torch.ones(2, 2)),
            r": leaf 'a': values should be a torch.float32 tensor of shape",
        ),
        (
            entry_change("a", "values", [1.0]),
            r": leaf 'a': values should be a torch.float32 tensor of shape .* got list",
        ),
        (
            entry_change("a", "mask_bits", torch.zeros(2, dtype=torch.int8)),
            r": leaf 'a': mask_bits should be a torch.uint8 tensor",
        ),
        (entry_change("a", "crc32", -5), r": leaf 'a' has an invalid checksum -5"),
        (entry_change("a", "crc32", 2**32), r": leaf 'a' has an invalid checksum 4294967296"),
        (
            entry_change("a", "crc32", 12345),
            r": leaf 'a': the data does not match its checksum \(crc32 0x[0-9a-f]{8}, stored 0x00003039\): the file is corrupt",
        ),
        (
            entry_change("b", "dense", torch.ones(5)),
            r": leaf 'b': dense should be a torch.float32 tensor of shape \(4,\), got a 1-D torch.float32 tensor of shape \(5,\)",
        ),
        (
            entry_change("b", "dense", torch.ones(8)[::2]),
            r": leaf 'b': dense is not a contiguous strided tensor",
        ),
        (
            entry_change("b", "dense", torch.zeros(4), crc=False),
            r": leaf 'b': the data does not match its checksum",
        ),
        (entry_change("b", "extra", 1), r": leaf 'b' is damaged: expected the keys"),
        (lambda raw: raw["leaves"]["a"].pop("kept"), r": leaf 'a' is damaged: expected the keys"),
        (
            lambda raw: raw["leaves"].update(a=[1, 2]),
            r": leaf 'a' is damaged: expected the keys .* got list \[1, 2\]",
        ),
        (
            flip_first_mask_bit,
            r": leaf 'a': the mask keeps (more than the \d+ stored values|\d+ entries but \d+ values are stored) \(damaged\)",
        ),
        (
            drop_a_kept_bit,
            r": leaf 'a': the mask keeps \d+ entries but \d+ values are stored \(damaged\)",
        ),
        (set_padding_bit, r": leaf 'a': mask_bits has bits set past the leaf's 15 entries"),
    ],
)
def test_load_refuses_damaged_entries(change: Any, pattern: str, tmp_path: Path) -> None:
    small_checkpoint(tmp_path / "s.pt")
    path = damaged(tmp_path / "s.pt", change)
    for function, call in (
        ("load_sparse", load_sparse),
        ("iter_sparse", lambda p: list(iter_sparse(p))),
    ):
        with pytest.raises(ValueError, match=rf"^{function}: '.*damaged\.pt'" + pattern) as info:
            call(path)
        assert type(info.value) is ValueError


def test_popcount_beyond_the_values_is_caught_before_reading_past_them(tmp_path: Path) -> None:
    small_checkpoint(tmp_path / "s.pt")

    def all_ones(raw: dict[str, Any]) -> None:
        set_bits(raw, torch.tensor([0xFF, 0x7F], dtype=torch.uint8))

    with (
        mock.patch.object(checkpoint, "CHUNK", 8),
        pytest.raises(
            ValueError,
            match=r"^load_sparse: .*leaf 'a': the mask keeps more than the \d+ stored values \(damaged\)",
        ),
    ):
        load_sparse(damaged(tmp_path / "s.pt", all_ones))


def test_load_from_a_file_object_names_it(tmp_path: Path) -> None:
    small_checkpoint(tmp_path / "s.pt")
    with open(tmp_path / "s.pt", "rb") as file:
        loaded, _ = load_sparse(file)
    assert sorted(loaded) == ["a", "b", "c"]
    with pytest.raises(
        ValueError, match=r"^load_sparse: the file object is not a readable torch.save file"
    ):
        load_sparse(io.BytesIO(b"garbage" * 10))
    (tmp_path / "junk.pt").write_bytes(b"garbage" * 10)
    with (
        open(tmp_path / "junk.pt", "rb") as file,
        pytest.raises(
            ValueError, match=r"^iter_sparse: file object '.*junk\.pt' is not a readable"
        ),
    ):
        iter_sparse(file)
