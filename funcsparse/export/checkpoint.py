"""Sparse checkpoints: the kept values and the masks bit-packed, so a pruned file shrinks.

A checkpoint is one ``torch.save`` file that loads with ``torch.load(path,
weights_only=True)``: a dict ``{"format": FORMAT, "version": VERSION, "leaves": {path:
entry}}`` with one entry per leaf of the params, in a flat dict's own key order (otherwise
the pytree's flattening order). A masked leaf's
entry holds its ``dtype`` (a string such as ``"float32"``), ``shape`` (a list of ints),
``kept`` (how many entries the mask keeps), ``values`` (the kept entries, 1-D, in the
row-major order of the mask), ``mask_bits`` (the mask, one bit per entry: bit ``i % 8`` of
byte ``i // 8`` is entry ``i`` of the flattened mask, as ``numpy.packbits(mask,
bitorder="little")``; the last byte's unused bits are 0) and ``crc32`` (``zlib.crc32`` of the
bytes of ``values`` then ``mask_bits``). An unmasked leaf's entry holds ``dtype``, ``shape``,
``dense`` (the tensor) and ``crc32`` (of its bytes).

The checksums make a flipped byte in the data a ValueError instead of a wrong tensor:
``torch.load`` does not check the zip records' CRCs. The small records (the pickle among
them) are read through :mod:`zipfile`, which does.

Packing, unpacking and densifying run in chunks of :data:`CHUNK` entries: no leaf-sized
int64, int32 or float temporary, whatever the leaf's size. Densifying is branch-free (a
cumulative count of the mask indexes into the values), so it takes the same time at any
sparsity.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import torch
from torch import Tensor

from funcsparse._apply import checked_masks
from funcsparse._errors import MAX_SHOWN, describe, short_repr
from funcsparse._tree import in_dict_order

__all__ = [
    "CHUNK",
    "FORMAT",
    "VERSION",
    "SparseLeaves",
    "is_sparse_checkpoint",
    "iter_sparse",
    "load_sparse",
    "save_sparse",
    "stored_nbytes",
]

#: The ``"format"`` marker of a sparse checkpoint.
FORMAT = "funcsparse.sparse_checkpoint"
#: The format version this funcsparse writes and reads.
VERSION = 1
#: Entries packed, unpacked or densified per step (a multiple of 8). At most torch's
#: intra-op grain (32768), so every chunked op runs on one thread: an op split across
#: threads waits at a barrier for its slowest thread, and on a busy 2-core machine those
#: waits made some loads 10 to 40 times slower than usual; serial ops never wait.
CHUNK = 1 << 15

#: A path, or a binary file object (seekable, for loading).
FileLike = str | os.PathLike[str] | IO[bytes]

_DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        *(
            getattr(torch, name)
            for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
            if hasattr(torch, name)
        ),
    )
}
# The integer dtype of each element size: entries are moved as bit patterns, never as
# values, so NaN payloads, -0.0 and every dtype's bits survive exactly.
_WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# _BYTE_BITS[b] holds the eight bits of the byte b as eight bytes 0 or 1 (bit j in byte j),
# read as one int64: unpacking is a gather of one word per packed byte.
_BYTE_BITS = (
    ((torch.arange(256, dtype=torch.uint8).unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1)
    .contiguous()
    .view(torch.int64)
    .view(256)
)
# Zip records holding tensor data ("<archive>/data/<key>"); the others are small.
_DATA_RECORD = re.compile(r"[^/]*/data/\d+")
_MASKED_KEYS = frozenset({"dtype", "shape", "kept", "values", "mask_bits", "crc32"})
_DENSE_KEYS = frozenset({"dtype", "shape", "dense", "crc32"})


# --- public API ------------------------------------------------------------------------------


def save_sparse(path: FileLike, params: Any, masks: Any) -> None:
    """Save ``squash(params, masks)`` compactly: kept values and bit-packed masks.

    A masked leaf costs its kept entries plus one bit per entry; a leaf whose mask is None
    is stored dense. The file holds ``funcsparse.squash(params, masks)`` (pruned entries
    come back as +0.0, even where the param was inf or NaN) and the masks, and loads with
    ``torch.load(path, weights_only=True)``; read it back with :func:`load_sparse` or
    :func:`iter_sparse`. The format is described in :mod:`funcsparse.export.checkpoint`.

    Everything is checked before anything is written, and a path is written through a
    temporary file in the same folder that replaces ``path`` only when complete, so a
    failure never leaves a partial file. Nothing is mutated.

    Examples:
        >>> import tempfile, torch, funcsparse as fs
        >>> params = {"w": torch.tensor([[1.0, -2.0], [3.0, 4.0]]), "b": torch.ones(2)}
        >>> masks = {"w": torch.tensor([[True, False], [False, True]]), "b": None}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fs.save_sparse(f"{tmp}/model.pt", params, masks)
        ...     loaded, loaded_masks = fs.load_sparse(f"{tmp}/model.pt")
        >>> loaded["w"]
        tensor([[1., 0.],
                [0., 4.]])
        >>> loaded_masks["w"].tolist(), loaded_masks["b"]
        ([[True, False], [False, True]], None)

    Args:
        path: a file path (``str`` or ``os.PathLike``), or a writable binary file object.
        params: a pytree of tensors, e.g. ``dict(model.named_parameters())``.
        masks: as in :func:`funcsparse.apply_masks`: a pytree of ``params``' structure with
            a ``torch.bool`` tensor of the leaf's shape and device, or None (stored dense),
            at every leaf; for a flat dict of params, a dict of some of its keys; or None
            (nothing masked).

    Raises:
        TypeError: a leaf is not a plain strided tensor, or its dtype cannot be stored; a
            mask is not a bool tensor; ``path`` is neither a path nor a file object.
        ValueError: the structures differ, a mask's shape or device differs from its leaf's,
            or a leaf is on the meta device. Messages start with ``save_sparse:`` and name
            the leaf path.
    """
    if not isinstance(path, (str, os.PathLike)) and not hasattr(path, "write"):
        raise TypeError(
            f"save_sparse: path must be a str, os.PathLike or a binary file object, "
            f"got {describe(path)}"
        )
    paths, leaves, mask_leaves = _checked(params, masks)
    entries = in_dict_order(
        params,
        {
            name: _dense_entry(leaf) if mask is None else _masked_entry(leaf, mask)
            for name, leaf, mask in zip(paths, leaves, mask_leaves, strict=True)
        },
    )
    _write({"format": FORMAT, "version": VERSION, "leaves": entries}, path)


def load_sparse(
    path: FileLike, *, device: torch.device | str | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """Read a checkpoint of :func:`save_sparse`: dense params and their masks, by leaf path.

    Built on :func:`iter_sparse`; every leaf is checked (checksums, mask popcounts) before
    this returns, so it returns everything or raises.

    Examples:
        >>> import tempfile, torch, funcsparse as fs
        >>> params = {"layer": {"weight": torch.tensor([1.0, -0.0, float("nan"), 4.0])}}
        >>> masks = {"layer": {"weight": torch.tensor([True, True, True, False])}}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fs.save_sparse(f"{tmp}/model.pt", params, masks)
        ...     loaded, loaded_masks = fs.load_sparse(f"{tmp}/model.pt")
        >>> loaded["layer.weight"]
        tensor([1., -0., nan, 0.])
        >>> loaded_masks["layer.weight"]
        tensor([ True,  True,  True, False])

    Args:
        path: a file path, or a readable, seekable binary file object.
        device: where the returned tensors go; default None (the CPU).

    Returns:
        ``(params, masks)``: flat dicts keyed by dotted leaf path, in the saved order.
        ``params`` holds fresh dense tensors with pruned entries +0.0, ``masks`` the bool
        masks (None for a leaf saved unmasked).

    Raises:
        ValueError: the file is not a sparse checkpoint (a plain state_dict, another format),
            is corrupt or truncated, has an unknown version, or a leaf's data disagrees with
            itself (checksum, mask popcount, lengths). The message starts with
            ``load_sparse:`` and names the file and, where one is at fault, the leaf.
        OSError: the file cannot be opened (missing, a folder, no permission).
    """
    params: dict[str, Tensor] = {}
    masks: dict[str, Tensor | None] = {}
    for name, tensor, mask in SparseLeaves(path, device=device, function="load_sparse"):
        params[name], masks[name] = tensor, mask
    return params, masks


def iter_sparse(path: FileLike, *, device: torch.device | str | None = None) -> SparseLeaves:
    """The leaves of a checkpoint of :func:`save_sparse`, densified one at a time.

    The file is memory-mapped (``torch.load(path, weights_only=True, mmap=True)``; a file
    object is read whole), and each leaf is densified when the iteration reaches it, so
    memory stays about one leaf. The format and every leaf's metadata are checked here,
    before the first leaf; each leaf's data (checksum, popcount) is checked before it is
    yielded, so a leaf is never yielded wrong, but the leaves before a corrupt one have
    been yielded when the error comes (:func:`load_sparse` returns nothing then).

    Examples:
        >>> import tempfile, torch, funcsparse as fs
        >>> params = {"w": torch.arange(1.0, 9.0).reshape(2, 4), "b": torch.ones(2)}
        >>> masks = {"w": fs.NM(n=2, m=4)(params["w"]), "b": None}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fs.save_sparse(f"{tmp}/model.pt", params, masks)
        ...     leaves = fs.export.iter_sparse(f"{tmp}/model.pt")
        ...     print(len(leaves))
        ...     for name, tensor, mask in leaves:
        ...         print(name, tensor.tolist(), None if mask is None else mask.sum().item())
        2
        w [[0.0, 0.0, 3.0, 4.0], [0.0, 0.0, 7.0, 8.0]] 4
        b [1.0, 1.0] None

    Args:
        path: a file path, or a readable, seekable binary file object.
        device: where the yielded tensors go; default None (the CPU).

    Returns:
        A :class:`SparseLeaves`: ``len()`` is the number of leaves; iterating yields
        ``(path, tensor, mask)`` with ``mask`` None for a leaf saved unmasked.

    Raises:
        ValueError: as :func:`load_sparse`, with messages starting ``iter_sparse:``; the
            data checks raise during the iteration.
        OSError: the file cannot be opened.
    """
    return SparseLeaves(path, device=device, function="iter_sparse")


def stored_nbytes(mask: Tensor | None, *, dtype: torch.dtype, numel: int | None = None) -> int:
    """The bytes :func:`save_sparse` spends on a leaf's data: kept values plus mask bits.

    ``kept * itemsize + ceil(numel / 8)`` for a masked leaf, ``numel * itemsize`` for an
    unmasked one (``mask`` None). The file adds a fixed overhead per leaf (metadata and zip
    records, about 0.2 KiB) and per file (about 1 KiB), not counted here.

    Examples:
        >>> import torch
        >>> from funcsparse.export.checkpoint import stored_nbytes
        >>> mask = torch.tensor([True, False] * 8)  # 16 entries, 8 kept
        >>> stored_nbytes(mask, dtype=torch.float32)  # 8 * 4 + 16 / 8
        34
        >>> stored_nbytes(None, dtype=torch.float32, numel=16)
        64

    Args:
        mask: the leaf's bool mask, or None for a leaf stored dense.
        dtype: the leaf's dtype.
        numel: the leaf's number of entries; needed when ``mask`` is None, else optional
            (and then it must equal ``mask.numel()``).

    Returns:
        A number of bytes.

    Raises:
        TypeError: ``mask`` is not a bool tensor or None, ``dtype`` not a torch.dtype, or
            ``numel`` not an int.
        ValueError: ``numel`` is missing (for ``mask`` None), negative, or disagrees with
            the mask.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"stored_nbytes: dtype must be a torch.dtype, got {describe(dtype)}")
    if numel is not None and (isinstance(numel, bool) or not isinstance(numel, int)):
        raise TypeError(f"stored_nbytes: numel must be an int, got {describe(numel)}")
    if numel is not None and numel < 0:
        raise ValueError(f"stored_nbytes: numel must be at least 0, got {numel}")
    itemsize = dtype.itemsize
    if mask is None:
        if numel is None:
            raise ValueError("stored_nbytes: give numel for an unmasked leaf (mask None)")
        return numel * itemsize
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"stored_nbytes: mask must be a bool tensor or None, got {describe(mask)}")
    if numel is not None and numel != mask.numel():
        raise ValueError(
            f"stored_nbytes: numel={numel} but the mask has {mask.numel()} entries "
            f"(shape {tuple(mask.shape)})"
        )
    return _count(mask) * itemsize + (mask.numel() + 7) // 8


def is_sparse_checkpoint(obj: object) -> bool:
    """Whether ``obj`` (a ``torch.load``-ed object, or a file path) is a sparse checkpoint.

    Looks at the format marker only; the version and the data are checked when the
    checkpoint is read. A path is loaded with ``torch.load(path, weights_only=True,
    mmap=True)``; a file that is not a readable ``torch.save`` file gives False.

    Examples:
        >>> import tempfile, torch, funcsparse as fs
        >>> from funcsparse.export.checkpoint import is_sparse_checkpoint
        >>> params = {"w": torch.ones(4)}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fs.save_sparse(f"{tmp}/sparse.pt", params, {"w": params["w"] > 0})
        ...     torch.save(params, f"{tmp}/plain.pt")
        ...     loaded = torch.load(f"{tmp}/sparse.pt", weights_only=True)
        ...     print([is_sparse_checkpoint(f"{tmp}/{name}.pt") for name in ("sparse", "plain")])
        [True, False]
        >>> is_sparse_checkpoint(loaded), is_sparse_checkpoint(params)
        (True, False)

    Args:
        obj: what ``torch.load`` returned, or a ``str`` / ``os.PathLike`` path.

    Returns:
        True when ``obj`` is (or the file holds) a dict with the sparse-checkpoint marker.

    Raises:
        OSError: ``obj`` is a path that cannot be opened.
    """
    if isinstance(obj, (str, os.PathLike)):
        try:
            obj = torch.load(obj, map_location="cpu", weights_only=True, mmap=True)
        except OSError:
            raise
        except Exception:  # not a torch.save zip file, or a pickle weights_only refuses
            return False
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


class SparseLeaves:
    """The leaves of a sparse checkpoint, densified lazily (what :func:`iter_sparse` returns).

    ``len()`` is the number of leaves (a progress bar's total); iterating yields ``(path,
    tensor, mask)`` one leaf at a time, and may be repeated. Construct it through
    :func:`iter_sparse`.
    """

    def __init__(
        self,
        path: FileLike,
        *,
        device: torch.device | str | None = None,
        function: str = "iter_sparse",
    ) -> None:
        self._function = function
        self._name = _source_name(path)
        self._device = None if device is None else torch.device(device)
        self._leaves = _read_leaves(path, function=function, name=self._name)

    def __len__(self) -> int:
        return len(self._leaves)

    def __iter__(self) -> Iterator[tuple[str, Tensor, Tensor | None]]:
        for leaf in self._leaves:
            tensor, mask = _densify(leaf, where=f"{self._function}: {self._name}")
            if self._device is not None:
                tensor = tensor.to(self._device)
                mask = None if mask is None else mask.to(self._device)
            yield leaf.path, tensor, mask

    def __repr__(self) -> str:
        return f"SparseLeaves({self._name}, {len(self)} leaves)"


# --- saving ----------------------------------------------------------------------------------


def _checked(params: Any, masks: Any) -> tuple[list[str], list[Tensor], list[Tensor | None]]:
    """Paths, leaves and masks (None: dense) of ``params``, every one checked."""
    paths, leaves, mask_leaves, _ = checked_masks(params, masks, function="save_sparse")
    for path, leaf, mask in zip(paths, leaves, mask_leaves, strict=True):
        _check_leaf(path, leaf)
        if mask is not None:
            _check_mask(path, mask)
    return paths, leaves, mask_leaves


def _check_leaf(path: str, leaf: Tensor) -> None:
    if leaf.layout != torch.strided or type(leaf) not in (Tensor, torch.nn.Parameter):
        raise TypeError(
            f"save_sparse: the leaf at {path!r} is a {type(leaf).__name__} of layout "
            f"{leaf.layout}; save_sparse stores plain strided tensors (convert it first)"
        )
    if leaf.device.type == "meta":
        raise ValueError(
            f"save_sparse: the leaf at {path!r} is on the meta device (a shape without "
            "data); there is nothing to save"
        )
    if str(leaf.dtype).removeprefix("torch.") not in _DTYPES:
        raise TypeError(
            f"save_sparse: the leaf at {path!r} has dtype {leaf.dtype}, which a sparse "
            f"checkpoint cannot store; the dtypes are {', '.join(_DTYPES)}"
        )


def _check_mask(path: str, mask: Tensor) -> None:
    """What :func:`funcsparse._apply.checked_masks` leaves open: a mask with data."""
    if mask.layout != torch.strided or mask.device.type == "meta":
        raise ValueError(
            f"save_sparse: the mask at {path!r} must be a strided tensor with data, "
            f"got {describe(mask)} of layout {mask.layout}"
        )


def _dense_entry(leaf: Tensor) -> dict[str, Any]:
    tensor = leaf.detach()
    compact = (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )
    # torch.save writes a tensor's whole storage: a view into a larger one is copied out.
    if tensor.device.type != "cpu" or not compact:
        tensor = tensor.to("cpu", memory_format=torch.contiguous_format, copy=True)
    return {**_meta(leaf), "dense": tensor, "crc32": _crc32(tensor)}


def _masked_entry(leaf: Tensor, mask: Tensor) -> dict[str, Any]:
    numel = leaf.numel()
    kept = _count(mask)
    values = torch.empty(kept, dtype=leaf.dtype)
    bits = torch.empty((numel + 7) // 8, dtype=torch.uint8)
    words = _words(values)
    done = 0
    for start, (chunk, mask_chunk) in enumerate(
        zip(_flat_chunks(leaf.detach()), _flat_chunks(mask), strict=True)
    ):
        count = int(torch.count_nonzero(mask_chunk))
        selected = words[done : done + count]
        torch.masked_select(_words(chunk), _rows(mask_chunk, selected), out=selected.view(-1))
        first = start * CHUNK // 8
        bits[first : first + (mask_chunk.numel() + 7) // 8] = _pack(mask_chunk)
        done += count
    return {
        **_meta(leaf),
        "kept": kept,
        "values": values,
        "mask_bits": bits,
        "crc32": _crc32(bits, _crc32(values)),
    }


def _meta(leaf: Tensor) -> dict[str, Any]:
    return {"dtype": str(leaf.dtype).removeprefix("torch."), "shape": list(leaf.shape)}


def _rows(mask_chunk: Tensor, words: Tensor) -> Tensor:
    """The mask broadcast over the words of an entry (two int64 words per complex128)."""
    return mask_chunk.unsqueeze(1) if words.dim() == 2 else mask_chunk


def _write(obj: dict[str, Any], path: FileLike) -> None:
    """``torch.save(obj)`` to a file object, or atomically to a path (temp file, replace)."""
    if not isinstance(path, (str, os.PathLike)):
        torch.save(obj, path)
        return
    target = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(target))
    temp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 gives the permissions of a plain open() (the umask applies).
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


# --- chunks, bits, checksums -------------------------------------------------------------------


def _flat_chunks(tensor: Tensor) -> Iterator[Tensor]:
    """``tensor`` flattened in row-major order, in contiguous CPU chunks of :data:`CHUNK`.

    A contiguous CPU tensor gives views; any other is copied piece by piece into one
    reused buffer (valid until the next chunk), so memory stays about one chunk.
    """
    if tensor.device.type == "cpu" and tensor.is_contiguous():
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            yield flat[start : start + CHUNK]
        return
    buffer = torch.empty(min(CHUNK, tensor.numel()), dtype=tensor.dtype)
    filled = 0
    for piece in _pieces(tensor):
        flat = piece.reshape(-1)
        taken = 0
        while taken < flat.numel():
            step = min(CHUNK - filled, flat.numel() - taken)
            buffer[filled : filled + step].copy_(flat[taken : taken + step])
            filled, taken = filled + step, taken + step
            if filled == CHUNK:
                yield buffer
                filled = 0
    if filled:
        yield buffer[:filled]


def _pieces(tensor: Tensor) -> Iterator[Tensor]:
    """Sub-tensors of at most :data:`CHUNK` entries that tile ``tensor`` in row-major order."""
    if tensor.numel() <= CHUNK:
        yield tensor
        return
    inner = tensor.numel() // tensor.shape[0]
    if inner <= CHUNK:
        rows = CHUNK // inner
        for start in range(0, tensor.shape[0], rows):
            yield tensor[start : start + rows]
    else:
        for row in tensor:
            yield from _pieces(row)


def _count(mask: Tensor) -> int:
    """The number of True entries, counted chunk by chunk."""
    return sum(int(torch.count_nonzero(chunk)) for chunk in _flat_chunks(mask))


def _words(flat: Tensor) -> Tensor:
    """A 1-D tensor's entries as integer words (bit patterns); two int64 per complex128."""
    size = flat.element_size()
    if size in _WORD:
        return flat.view(_WORD[size])
    return flat.view(torch.int64).view(-1, size // 8)


def _pack(mask: Tensor) -> Tensor:
    """A 1-D bool tensor's bits, little-endian within each byte, zero-padded to a byte."""
    values = mask.view(torch.uint8)
    if values.numel() % 8:
        values = torch.cat([values, values.new_zeros(8 - values.numel() % 8)])
    columns = values.view(-1, 8)
    packed = columns[:, 0].clone()
    for bit in range(1, 8):
        packed |= columns[:, bit] << bit
    return packed


def _unpack_into(packed: Tensor, out: Tensor) -> None:
    """Write the first ``len(out)`` bits of ``packed`` (int32 bytes) into ``out`` (uint8)."""
    if out.numel() == 8 * packed.numel():
        torch.index_select(_BYTE_BITS, 0, packed, out=out.view(torch.int64))
    else:
        out.copy_(torch.index_select(_BYTE_BITS, 0, packed).view(torch.uint8)[: out.numel()])


def _crc32(tensor: Tensor, value: int = 0) -> int:
    """``zlib.crc32`` of a contiguous CPU tensor's bytes, read in place (no copy)."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return value
    view = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    return zlib.crc32(view, value)


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DenseLeaf:
    """An unmasked leaf's entry, its metadata checked."""

    path: str
    crc32: int
    dense: Tensor


@dataclass(frozen=True)
class _MaskedLeaf:
    """A masked leaf's entry, its metadata checked."""

    path: str
    crc32: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    kept: int
    values: Tensor
    bits: Tensor


_Leaf = _DenseLeaf | _MaskedLeaf


def _source_name(path: FileLike) -> str:
    if isinstance(path, (str, os.PathLike)):
        return repr(os.fspath(path))
    name = getattr(path, "name", None)
    return f"file object {name!r}" if isinstance(name, str) else "the file object"


def _read_leaves(path: FileLike, *, function: str, name: str) -> list[_Leaf]:
    """The checked leaf entries of the checkpoint at ``path`` (tensors memory-mapped)."""
    where = f"{function}: {name}"
    obj = _load(path, where=where)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        got = f"a dict with keys {short_repr(list(obj)[:6])}" if isinstance(obj, Mapping) else ""
        raise ValueError(
            f"{where} is not a funcsparse sparse checkpoint (no format marker {FORMAT!r}; "
            f"found {got or describe(obj)}); a plain state_dict loads with torch.load"
        )
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where} has an invalid format version {short_repr(version)}")
    if version > VERSION:
        raise ValueError(
            f"{where} has format version {short_repr(version)}, written by a newer "
            f"funcsparse; this one reads version {VERSION}: upgrade funcsparse"
        )
    leaves = obj.get("leaves")
    if set(obj) != {"format", "version", "leaves"} or not isinstance(leaves, Mapping):
        raise ValueError(
            f"{where} is a damaged sparse checkpoint: expected the keys format, version and "
            f"leaves (a dict), got {short_repr(list(obj))}"
        )
    return [_checked_entry(key, entry, where=where) for key, entry in leaves.items()]


def _load(path: FileLike, *, where: str) -> Any:
    """``torch.load`` (weights_only, mmap for a path) after checking the small zip records."""
    is_path = isinstance(path, (str, os.PathLike))
    start = 0 if isinstance(path, (str, os.PathLike)) else path.tell()
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not _DATA_RECORD.fullmatch(info.filename):
                    archive.read(info)  # raises on a CRC mismatch
        if not isinstance(path, (str, os.PathLike)):
            path.seek(start)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_path)
    except OSError as err:
        if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{where} cannot be read ({type(err).__name__}: {err})") from err
    except Exception as err:
        reason = str(err).split("\n", 1)[0]
        reason = reason if len(reason) <= MAX_SHOWN else reason[: MAX_SHOWN - 3] + "..."
        raise ValueError(
            f"{where} is not a readable torch.save file: corrupt, truncated or another format "
            f"({type(err).__name__}: {reason})"
        ) from err


def _checked_entry(key: object, entry: object, *, where: str) -> _Leaf:
    """One leaf's entry, its metadata checked against itself (the data is checked later)."""
    if not isinstance(key, str):
        raise ValueError(f"{where}: a leaf path is {describe(key)}, not a str")
    at = f"{where}: leaf {key!r}"
    if not isinstance(entry, Mapping) or set(entry) not in (_MASKED_KEYS, _DENSE_KEYS):
        shown = short_repr(sorted(map(str, entry))) if isinstance(entry, Mapping) else ""
        raise ValueError(
            f"{at} is damaged: expected the keys {sorted(_MASKED_KEYS)} or "
            f"{sorted(_DENSE_KEYS)}, got {shown or describe(entry)}"
        )
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"{at} has an unknown dtype {short_repr(entry['dtype'])}")
    shape = entry["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape
    ):
        raise ValueError(f"{at} has an invalid shape {short_repr(shape)}")
    crc = entry["crc32"]
    if isinstance(crc, bool) or not isinstance(crc, int) or not 0 <= crc < 2**32:
        raise ValueError(f"{at} has an invalid checksum {short_repr(crc)}")
    numel = _numel(tuple(shape))
    if "dense" in entry:
        dense = entry["dense"]
        _check_stored(dense, at, "dense", dtype, tuple(shape))
        return _DenseLeaf(key, crc, dense)
    kept, values, bits = entry["kept"], entry["values"], entry["mask_bits"]
    if isinstance(kept, bool) or not isinstance(kept, int) or not 0 <= kept <= numel:
        raise ValueError(f"{at} has kept={short_repr(kept)}, not a count in [0, {numel}]")
    _check_stored(values, at, "values", dtype, (kept,))
    _check_stored(bits, at, "mask_bits", torch.uint8, ((numel + 7) // 8,))
    return _MaskedLeaf(key, crc, dtype, tuple(shape), kept, values, bits)


def _check_stored(
    tensor: object, at: str, field: str, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    if not isinstance(tensor, Tensor) or tensor.dtype != dtype or tuple(tensor.shape) != shape:
        raise ValueError(
            f"{at}: {field} should be a {dtype} tensor of shape {short_repr(shape)}, got "
            f"{describe(tensor)}"
        )
    if not tensor.is_contiguous() or tensor.layout != torch.strided:
        raise ValueError(f"{at}: {field} is not a contiguous strided tensor")


def _densify(leaf: _Leaf, *, where: str) -> tuple[Tensor, Tensor | None]:
    """The leaf's dense tensor and mask (None for a dense leaf), its data checked first."""
    at = f"{where}: leaf {leaf.path!r}"
    if isinstance(leaf, _DenseLeaf):
        _check_crc(leaf, _crc32(leaf.dense), at)
        return leaf.dense.clone(memory_format=torch.contiguous_format), None
    _check_crc(leaf, _crc32(leaf.bits, _crc32(leaf.values)), at)
    numel = _numel(leaf.shape)
    if numel % 8 and int(leaf.bits[-1]) >> (numel % 8):
        raise ValueError(f"{at}: mask_bits has bits set past the leaf's {numel} entries")
    out = torch.empty(numel, dtype=leaf.dtype)
    mask = torch.empty(numel, dtype=torch.bool)
    done = _expand(leaf.values, leaf.bits, out, mask, kept=leaf.kept, at=at)
    if done != leaf.kept:
        raise ValueError(
            f"{at}: the mask keeps {done} entries but {leaf.kept} values are stored (damaged)"
        )
    return out.view(leaf.shape), mask.view(leaf.shape)


def _expand(values: Tensor, bits: Tensor, out: Tensor, mask: Tensor, *, kept: int, at: str) -> int:
    """Fill ``out`` (1-D) with ``values`` where ``bits`` are set, 0 elsewhere, and ``mask``
    with the bits; return how many bits are set. Branch-free, chunk by chunk: the running
    count of the mask indexes into ``[0, the chunk's values...]`` (0 where pruned).
    """
    numel = out.numel()
    words, out_words = _words(values), _words(out)
    step = min(CHUNK, numel)
    # Scratch reused by every chunk; buffer[0] stays 0, each chunk's values follow it.
    buffer = torch.zeros((step + 1, *words.shape[1:]), dtype=words.dtype)
    index_buffer = torch.empty(step, dtype=torch.int32)
    byte_buffer = torch.empty((step + 7) // 8, dtype=torch.int32)
    done = 0
    for start in range(0, numel, CHUNK):
        stop = min(start + CHUNK, numel)
        ones = mask[start:stop].view(torch.uint8)
        packed = byte_buffer[: (stop - start + 7) // 8]
        _unpack_into(packed.copy_(bits[start // 8 : (stop + 7) // 8]), ones)
        index = torch.cumsum(ones, 0, dtype=torch.int32, out=index_buffer[: stop - start])
        count = int(index[-1])
        if done + count > kept:
            raise ValueError(f"{at}: the mask keeps more than the {kept} stored values (damaged)")
        buffer[1 : count + 1] = words[done : done + count]
        torch.index_select(buffer[: count + 1], 0, index.mul_(ones), out=out_words[start:stop])
        done += count
    return done


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for size in shape:
        numel *= size
    return numel


def _check_crc(leaf: _Leaf, crc: int, at: str) -> None:
    if crc != leaf.crc32:
        raise ValueError(
            f"{at}: the data does not match its checksum (crc32 {crc:#010x}, stored "
            f"{leaf.crc32:#010x}): the file is corrupt"
        )
