"""``funcsparse report PATH``: per-layer sparsity, pattern and bytes of a checkpoint.

The file is either a funcsparse sparse checkpoint (:func:`funcsparse.save_sparse`), whose
masks are read from the file, or a plain ``torch.save``'d state_dict (a mapping of tensors,
nested mappings allowed), whose zeros count as pruned in float and complex tensors (a
saved sparse layout, such as :func:`funcsparse.export.to_csr`'s, counts its stored entries
as kept); integer and bool tensors (buffers such as ``num_batches_tracked``) are listed and
sized but are not weights, so none of their entries count as pruned. For each tensor the
report gives its shape, dtype, sparsity, detected pattern
(:func:`funcsparse.export.detect_pattern`) and bytes: dense (``numel * itemsize``) and
sparse (what :func:`funcsparse.save_sparse` stores for it: the kept values and one bit per
entry, or the dense bytes for a leaf with nothing pruned), then the totals. ``--json``
prints the same as JSON. Files are read one tensor at a time (``torch.load(..., mmap=True,
weights_only=True)``), with a progress bar on stderr when the file is large and tqdm is
installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from funcsparse._errors import describe, short_repr
from funcsparse.export import detect_pattern, is_sparse_checkpoint, iter_sparse, stored_nbytes

__all__ = [
    "COMMAND",
    "DESCRIPTION",
    "HELP",
    "PROGRESS_BYTES",
    "add_arguments",
    "build_report",
    "format_report",
    "main",
]

COMMAND = "report"
HELP = "per-layer sparsity, pattern and bytes of a checkpoint"
DESCRIPTION = (
    "Report a funcsparse sparse checkpoint (fs.save_sparse) or a plain torch.save'd "
    "state_dict, whose zeros count as pruned (in float and complex tensors; integer and bool "
    "tensors such as num_batches_tracked are not weights): per tensor its shape, dtype, "
    "sparsity ('-': not masked, nothing measured), detected pattern (unstructured / N:M / "
    "block / channel) and bytes dense vs sparse (what fs.save_sparse stores), then the totals."
)

PROGRESS_BYTES = 256 * 2**20
"""Files larger than this get a progress bar (when tqdm is installed)."""

Leaf = tuple[str, Tensor, Tensor | None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report's options to its sub-parser."""
    parser.add_argument("path", help="a funcsparse sparse checkpoint or a torch.save'd state_dict")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help=f"progress bar on stderr: auto = for files over {PROGRESS_BYTES // 2**20} MiB "
        "(default: auto)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the report from parsed arguments; returns the exit status (2 on a bad file)."""
    try:
        report = build_report(args.path, progress=args.progress)
    except (TypeError, ValueError) as err:
        print(f"funcsparse report: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report), end="")
    return 0


def build_report(path: str | os.PathLike[str], *, progress: str = "never") -> dict[str, Any]:
    """The report of a checkpoint file as a JSON-ready dict.

    Examples:
        >>> import tempfile, torch, funcsparse as fs
        >>> from funcsparse.report import build_report
        >>> params = {"w": torch.tensor([[4.0, 3, 1, 2], [1, 2, 4, 3]]), "b": torch.ones(2)}
        >>> masks = {"w": fs.NM(n=2, m=4)(params["w"]), "b": None}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fs.save_sparse(f"{tmp}/model.pt", params, masks)
        ...     report = build_report(f"{tmp}/model.pt")
        >>> report["format"]
        'funcsparse sparse checkpoint'
        >>> patterns = {row["path"]: row["pattern"] for row in report["leaves"]}
        >>> patterns == {"w": "2:4", "b": "not masked"}
        True
        >>> [(row["path"], row["masked"], row["sparsity"]) for row in report["leaves"]]
        [('w', True, 0.5), ('b', False, 0.0)]
        >>> report["totals"]["sparsity"]
        0.4

    Args:
        path: a sparse checkpoint or a ``torch.save``'d mapping of tensors.
        progress: ``"auto"`` (a bar for files over :data:`PROGRESS_BYTES`), ``"always"`` or
            ``"never"``; the bar needs tqdm.

    Returns:
        ``{"path", "format", "file_bytes", "leaves": [...], "skipped": [...], "totals"}``;
        each leaf has ``path``, ``shape``, ``dtype``, ``numel``, ``masked``, ``pruned``,
        ``sparsity``, ``pattern``, ``dense_bytes``, ``sparse_bytes``. ``masked`` is False
        for a checkpoint's leaf saved unmasked (pattern ``"not masked"``) and a plain
        file's integer or bool tensor (``"not a weight"``): their ``pruned`` and
        ``sparsity`` are 0 by design, not measured. ``skipped`` names the entries of a
        plain file that are not tensors. ``totals`` has ``numel``, ``masked_numel``,
        ``pruned``, ``sparsity`` (pruned of all entries), ``dense_bytes`` and
        ``sparse_bytes`` (the file adds a small fixed overhead: metadata and zip records).

    Raises:
        ValueError: the file is missing, unreadable, corrupt, or holds no tensors, or
            ``progress`` is a str other than the three choices.
        TypeError: ``path`` is not a str or path, or ``progress`` is not a str.
    """
    if not isinstance(progress, str) or progress not in ("auto", "always", "never"):
        raise (TypeError if not isinstance(progress, str) else ValueError)(
            "build_report: progress must be 'auto', 'always' or 'never', got "
            f"{short_repr(progress)}"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"build_report: path must be a str or os.PathLike, got {describe(path)}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"build_report: {str(file)!r} is not a file")
    # torch's warnings while loading (beta sparse layouts, deprecated storages, quantized
    # tensors, pickle protocols) say nothing a reader of the report can act on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _report(file, progress)


def _report(file: Path, progress: str) -> dict[str, Any]:
    size = file.stat().st_size
    loaded = _load(file)
    skipped: list[str] = []
    leaves: Iterator[Leaf]
    # (is_sparse_checkpoint reads a str as a path: a torch.save'd str is not a checkpoint)
    if isinstance(loaded, Mapping) and is_sparse_checkpoint(loaded):
        fmt = "funcsparse sparse checkpoint"
        del loaded  # iter_sparse reads the file again, one leaf at a time
        with _as_build_report():
            reader = iter_sparse(file)
        count = len(reader)
        leaves = _renamed(reader)
    else:
        fmt = "state_dict"
        found = list(_tensors(loaded, "", skipped))
        count = len(found)
        leaves = ((name, tensor, _plain_mask(name, tensor)) for name, tensor in found)
        if not found:
            raise ValueError(
                f"build_report: {str(file)!r} holds no tensors (neither a funcsparse sparse "
                "checkpoint nor a state_dict)"
            )
    show = progress == "always" or (progress == "auto" and size > PROGRESS_BYTES)
    rows = [
        _row(name, tensor, mask, plain=fmt == "state_dict")
        for name, tensor, mask in _with_progress(leaves, count, show, file.name)
    ]
    return {
        "path": str(file),
        "format": fmt,
        "file_bytes": size,
        "leaves": rows,
        "skipped": skipped,
        "totals": _totals(rows),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table with a totals line (what ``funcsparse report`` prints).

    Examples:
        >>> import tempfile, torch
        >>> from funcsparse.report import build_report, format_report
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     torch.save({"w": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}, f"{tmp}/plain.pt")
        ...     text = format_report(build_report(f"{tmp}/plain.pt"))
        >>> print(text.splitlines()[4])
        w                  2x2    float32    50.00%  1:2       16 B     9 B

    Args:
        report: what :func:`build_report` returns.

    Returns:
        The table, one line per tensor, then the totals and notes, ending with a newline.
    """
    header = ("tensor", "shape", "dtype", "sparsity", "pattern", "dense", "sparse")
    lines = [
        (
            row["path"],
            "x".join(str(side) for side in row["shape"]) or "()",
            str(row["dtype"]).removeprefix("torch."),
            f"{row['sparsity']:.2%}" if row["masked"] else "-",
            row["pattern"],
            _size(row["dense_bytes"]),
            _size(row["sparse_bytes"]),
        )
        for row in report["leaves"]
    ]
    totals = report["totals"]
    lines.append(
        (
            f"total ({len(report['leaves'])} tensors)",
            f"{totals['numel']:,}",
            "",
            f"{totals['sparsity']:.2%}",
            "",
            _size(totals["dense_bytes"]),
            _size(totals["sparse_bytes"]),
        )
    )
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    right = {3, 5, 6}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [f"{report['path']}: {report['format']}, {_size(report['file_bytes'])} on disk", ""]
    out += [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(cells) for cells in lines[:-1]]
    out += ["  ".join("-" * w for w in widths), fmt(lines[-1])]
    ratio = totals["sparse_bytes"] / totals["dense_bytes"] if totals["dense_bytes"] else 1.0
    out += ["", f"sparse / dense bytes: {ratio:.3f}"]
    unmasked = [row["pattern"] for row in report["leaves"] if not row["masked"]]
    if "not masked" in unmasked:
        out.append("sparsity -: not masked (saved dense, no entry counted as pruned)")
    if "not a weight" in unmasked:
        out.append("sparsity -: not a weight (an int or bool tensor, e.g. a step counter)")
    if totals["masked_numel"] != totals["numel"] and totals["masked_numel"]:
        share = totals["pruned"] / totals["masked_numel"]
        out.append(
            f"total sparsity is of all {totals['numel']:,} entries; of the "
            f"{totals['masked_numel']:,} that can be pruned: {share:.2%}"
        )
    if report["skipped"]:
        shown = ", ".join(report["skipped"][:8])
        more = f" and {len(report['skipped']) - 8} more" if len(report["skipped"]) > 8 else ""
        out.append(f"not tensors, skipped: {shown}{more}")
    return "\n".join(out) + "\n"


def _load(file: Path) -> object:
    """``torch.load`` with weights_only (memory-mapped where the format allows)."""
    try:
        return _load_mmap(file)
    except Exception as err:  # pickle, zip and torch errors all mean "not a readable file"
        raise ValueError(
            f"build_report: {str(file)!r} cannot be read by torch.load(weights_only=True): "
            f"corrupt, truncated, or not a torch.save file ({type(err).__name__})"
        ) from None


def _load_mmap(file: Path) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # the legacy (non-zip) format cannot be memory-mapped
        if "mmap" not in str(err):
            raise
        return torch.load(file, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _as_build_report() -> Iterator[None]:
    """Errors of :func:`funcsparse.export.iter_sparse` renamed to start with build_report."""
    try:
        yield
    except (TypeError, ValueError) as err:
        message = str(err)
        if message.startswith("iter_sparse:"):
            message = "build_report" + message[len("iter_sparse") :]
        raise type(err)(message) from None


def _renamed(leaves: Iterable[Leaf]) -> Iterator[Leaf]:
    """``leaves``, an error while reading one renamed as by :func:`_as_build_report`."""
    iterator = iter(leaves)
    while True:
        with _as_build_report():
            leaf = next(iterator, None)
        if leaf is None:
            return
        yield leaf


def _tensors(value: object, prefix: str, skipped: list[str]) -> Iterator[tuple[str, Tensor]]:
    """The tensors of a (nested) mapping, with dotted paths; other entries go to ``skipped``.

    Depth first in key order, with a stack rather than recursion: a crafted file may nest
    deeper than Python's recursion limit."""
    stack: list[tuple[str, object]] = [(prefix, value)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, Tensor):
            yield name or "<tensor>", item
        elif isinstance(item, Mapping):
            children = [
                (f"{name}.{key}" if name else str(key), child) for key, child in item.items()
            ]
            stack.extend(reversed(children))
        else:
            skipped.append(name or "<top level>")


def _row(name: str, tensor: Tensor, mask: Tensor | None, *, plain: bool) -> dict[str, Any]:
    numel = tensor.numel()
    pruned = 0 if mask is None else numel - int(mask.sum())
    if mask is None:
        pattern = "not a weight" if plain else "not masked"
    elif plain and pruned == 0:
        pattern = "dense"
    else:
        pattern = str(detect_pattern(mask))
    # A plain file's tensor with no zeros would be saved unmasked: count its dense bytes.
    stored_mask = None if mask is None or (plain and pruned == 0) else mask
    return {
        "path": name,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "numel": numel,
        "masked": mask is not None,
        "pruned": pruned,
        "sparsity": pruned / numel if numel else 0.0,
        "pattern": pattern,
        "dense_bytes": numel * tensor.element_size(),
        "sparse_bytes": stored_nbytes(stored_mask, dtype=tensor.dtype, numel=numel),
    }


def _plain_mask(name: str, tensor: Tensor) -> Tensor | None:
    """The kept entries of a plain file's tensor: its nonzeros, or for a sparse layout
    (e.g. :func:`funcsparse.export.to_csr`'s, saved) its stored entries; None for a tensor
    that is not a weight (integer or bool: a buffer such as ``num_batches_tracked``)."""
    if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.is_quantized):
        return None
    if tensor.layout == torch.strided:
        return tensor != 0
    try:
        if tensor.layout == torch.sparse_coo:
            coalesced = tensor.coalesce()
            mask = torch.zeros(tensor.shape, dtype=torch.bool)
            mask[tuple(coalesced.indices())] = True
            return mask
        compressed, plain = (
            (tensor.crow_indices(), tensor.col_indices())
            if tensor.layout in (torch.sparse_csr, torch.sparse_bsr)
            else (tensor.ccol_indices(), tensor.row_indices())
        )
        ones = torch.ones_like(tensor.values(), dtype=torch.uint8)
        stored = torch.sparse_compressed_tensor(
            compressed, plain, ones, tensor.shape, layout=tensor.layout, check_invariants=True
        )
        return stored.to_dense().bool()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        raise ValueError(
            f"build_report: the tensor at {short_repr(name)} has layout {tensor.layout}, whose "
            "stored entries the report cannot read"
        ) from None


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    numel = sum(row["numel"] for row in rows)
    pruned = sum(row["pruned"] for row in rows)
    return {
        "numel": numel,
        "masked_numel": sum(row["numel"] for row in rows if row["masked"]),
        "pruned": pruned,
        "sparsity": pruned / numel if numel else 0.0,
        "dense_bytes": sum(row["dense_bytes"] for row in rows),
        "sparse_bytes": sum(row["sparse_bytes"] for row in rows),
    }


def _with_progress(leaves: Iterator[Leaf], count: int, show: bool, name: str) -> Iterator[Leaf]:
    if not show:
        return leaves
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        print("funcsparse report: no progress bar (pip install tqdm)", file=sys.stderr)
        return leaves
    bar: Iterator[Leaf] = tqdm.tqdm(leaves, total=count, desc=name, unit="tensor", file=sys.stderr)
    return bar


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"
