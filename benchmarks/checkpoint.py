"""Benchmark: sparse checkpoints (``fs.save_sparse`` / ``fs.load_sparse``) vs a dense torch.save.

What it measures
----------------
On the transformer-like stack of ``benchmarks/masks.py`` (12 blocks of bias-free
``nn.Linear`` layers, 84.9M float32 weights in 72 tensors; ``--layers`` to change), pruned by
``fs.compute_masks(params, {"**.weight": fs.Magnitude(level)})`` at each ``--levels`` (default
0.5 and 0.9: unstructured, the worst case for a bit-packed mask):

* file size: ``fs.save_sparse(path, params, masks)`` against the dense baseline
  ``torch.save(params, path)`` (float32), as a ratio. The issue's bounds: at most 0.55x at
  50% sparsity and 0.15x at 90%.
* load time: ``fs.load_sparse(path)`` (checks every checksum and popcount, densifies every
  leaf and unpacks every mask) against ``torch.load(dense_path, weights_only=True)``. The
  ratio is taken within each repeat (sparse over the dense load just before or after it);
  the bound is a median ratio of at most 2x.
* save time, for both, with the same ratio (no bound).
* memory while reading, in a fresh process each: the growth of anonymous memory
  (``RssAnon``; the memory-mapped file's pages are page cache, not counted) at its highest,
  read after every leaf for ``iter_sparse`` (each leaf dropped before the next) and after
  the call for ``load_sparse`` and the dense ``torch.load``. ``iter_sparse`` should stay
  about one leaf (a 768 x 3072 float32 weight and its bool mask: 11.3 MiB).

The weights are filled with ``normal_`` (seeded) instead of ``masks.py``'s tie-free values,
which take half a minute to build and change neither sizes nor times. After the timings
every loaded leaf is compared bit for bit with ``fs.squash(params, masks)`` and every mask
with the one saved; the script exits with status 1 if one differs or a bound is missed.

How: the files live in a temporary folder (``--dir``, default the system's; the page cache
holds them, so loads measure the CPU work, not the disk). Every side runs once untimed
first, then ``--repeats`` timed runs interleaved with the other sides, the order reversed
on odd repeats. Before each timed call: ``gc.collect()`` and glibc ``malloc_trim(0)``, so
every load pays for its fresh pages as a load in a new process does (without it the dense
load reuses the pages the previous one freed and looks twice as fast). Ranges (min-max)
and medians are reported.

Usage::

    python benchmarks/checkpoint.py [--repeats N] [--json PATH] [--levels 0.5 0.9]
        [--layers 12] [--dir DIR]

Results are printed as a table and written as JSON (default
``benchmarks/results/checkpoint.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _harness import (
    base_parser,
    load_masks_benchmark,
    machine_info,
    release_free_heap,
    status_kib,
    write_payload,
)
from torch import nn

import funcsparse as fs

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "checkpoint.json"
SIZE_BOUNDS = {0.5: 0.55, 0.9: 0.15}  # the bounds on file size / dense file size
LOAD_BOUND = 2.0  # load_sparse time / dense torch.load time, median over repeats


def stack_params(layers: int) -> dict[str, torch.Tensor]:
    """The stack of ``benchmarks/masks.py`` (its ``Block``), seeded normal float32 weights."""
    masks_bench = load_masks_benchmark()
    with torch.device("meta"):
        model = nn.Sequential(*(masks_bench.Block() for _ in range(layers)))
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.empty(p.shape).normal_(generator=generator)
        for name, p in model.named_parameters()
    }


def cold_timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took, after ``gc.collect()`` and returning freed heap pages to the OS;
    the result is dropped before returning."""
    gc.collect()
    release_free_heap()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    del out
    return seconds


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Each call once untimed, then ``repeats`` timed rounds, the order reversed on odd ones."""
    for call in calls.values():
        cold_timed(call)
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(cold_timed(calls[name]))
    return times


def check_round_trip(
    path: Path, params: dict[str, torch.Tensor], masks: dict[str, Any]
) -> list[str]:
    """Leaves whose loaded tensor or mask differs from ``squash(params, masks)`` or the mask."""
    loaded, loaded_masks = fs.load_sparse(path)
    expected = fs.squash(params, masks)
    wrong = []
    for name, tensor in expected.items():
        same = torch.equal(loaded[name].view(torch.int32), tensor.view(torch.int32))
        mask, got = masks[name], loaded_masks[name]
        same_mask = (got is None) if mask is None else (got is not None and torch.equal(got, mask))
        if not (same and same_mask):
            wrong.append(name)
    return wrong


def read_memory(path: str, mode: str) -> int:
    """Bytes of anonymous memory gained at the highest point of reading ``path`` (this
    process): ``mode`` is ``iter`` (iter_sparse, each leaf dropped), ``load`` or ``dense``."""
    gc.collect()
    release_free_heap()
    before = status_kib("RssAnon")
    peak = before
    if mode == "iter":
        for _, tensor, mask in fs.export.iter_sparse(path):
            peak = max(peak, status_kib("RssAnon"))
            del tensor, mask
    else:
        out = fs.load_sparse(path) if mode == "load" else torch.load(path, weights_only=True)
        peak = status_kib("RssAnon")
        del out
    return (peak - before) * 1024


def memory_in_subprocess(path: Path, mode: str) -> int:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), mode]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def span(values: list[float]) -> dict[str, Any]:
    return {
        "all": values,
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = stack_params(args.layers)
    n_weights = sum(p.numel() for p in params.values())
    masks = {
        level: fs.compute_masks(params, {"**.weight": fs.Magnitude(level)}) for level in args.levels
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        dense_path = folder / "dense.pt"
        sparse_paths = {level: folder / f"sparse-{level}.pt" for level in args.levels}
        saves: dict[str, Callable[[], Any]] = {"dense": lambda: torch.save(params, dense_path)}
        loads: dict[str, Callable[[], Any]] = {
            "dense": lambda: torch.load(dense_path, weights_only=True)
        }
        for level in args.levels:
            path, level_masks = sparse_paths[level], masks[level]
            saves[str(level)] = lambda p=path, m=level_masks: fs.save_sparse(p, params, m)
            loads[str(level)] = lambda p=path: fs.load_sparse(p)
        print("  timing saves", flush=True)
        save_times = interleaved(saves, args.repeats)
        print("  timing loads", flush=True)
        load_times = interleaved(loads, args.repeats)
        dense_bytes = dense_path.stat().st_size
        print("  measuring memory", flush=True)
        dense_memory = memory_in_subprocess(dense_path, "dense")
        levels = []
        for level in args.levels:
            key, path = str(level), sparse_paths[level]
            size = path.stat().st_size
            load_ratios = [s / d for s, d in zip(load_times[key], load_times["dense"], strict=True)]
            save_ratios = [s / d for s, d in zip(save_times[key], save_times["dense"], strict=True)]
            bound = SIZE_BOUNDS.get(level)
            levels.append(
                {
                    "sparsity": level,
                    "file_bytes": size,
                    "size_ratio": size / dense_bytes,
                    "size_bound": bound,
                    "size_pass": None if bound is None else size / dense_bytes <= bound,
                    "save_s": span(save_times[key]),
                    "save_ratio": span(save_ratios),
                    "load_s": span(load_times[key]),
                    "load_ratio": span(load_ratios),
                    "load_pass": statistics.median(load_ratios) <= LOAD_BOUND,
                    "wrong_leaves": check_round_trip(path, params, masks[level]),
                    "iter_sparse_peak_bytes": memory_in_subprocess(path, "iter"),
                    "load_sparse_peak_bytes": memory_in_subprocess(path, "load"),
                }
            )
    return {
        "n_weights": n_weights,
        "n_tensors": len(params),
        "dense": {
            "file_bytes": dense_bytes,
            "save_s": span(save_times["dense"]),
            "load_s": span(load_times["dense"]),
            "load_peak_bytes": dense_memory,
        },
        "levels": levels,
    }


def shown(values: dict[str, Any], fmt: str = ".3f") -> str:
    return f"{values['min']:{fmt}}-{values['max']:{fmt}} ({values['median']:{fmt}})"


def print_table(result: dict[str, Any]) -> None:
    dense = result["dense"]
    header = (
        f"{'file':<22}{'MiB':>9}{'x dense':>9}{'bound':>7}  {'save s min-max (med)':<24}"
        f"{'load s min-max (med)':<24}{'load x dense (med)':<22}{'pass'}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'dense torch.save':<22}{dense['file_bytes'] / 2**20:>9.1f}{1:>9.3f}{'':>7}  "
        f"{shown(dense['save_s']):<24}{shown(dense['load_s']):<24}{'1':<22}-"
    )
    for row in result["levels"]:
        bound = "-" if row["size_bound"] is None else f"{row['size_bound']:.2f}"
        verdict = (
            "yes"
            if row["size_pass"] is not False and row["load_pass"] and not row["wrong_leaves"]
            else "NO"
        )
        name = f"sparse {row['sparsity']:.0%}"
        print(
            f"{name:<22}{row['file_bytes'] / 2**20:>9.1f}"
            f"{row['size_ratio']:>9.3f}{bound:>7}  {shown(row['save_s']):<24}"
            f"{shown(row['load_s']):<24}{shown(row['load_ratio'], '.2f'):<22}{verdict}"
        )


def print_memory(result: dict[str, Any]) -> None:
    mib = 2**20
    print(
        f"\nmemory while reading (anonymous, MiB): dense torch.load "
        f"{result['dense']['load_peak_bytes'] / mib:.1f}"
    )
    for row in result["levels"]:
        print(
            f"  sparse {row['sparsity']:.0%}: load_sparse {row['load_sparse_peak_bytes'] / mib:.1f}"
            f", iter_sparse {row['iter_sparse_peak_bytes'] / mib:.1f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=5)
    parser.add_argument(
        "--levels", type=float, nargs="+", default=[0.5, 0.9], help="sparsities (default 0.5 0.9)"
    )
    parser.add_argument("--layers", type=int, default=12, help="blocks in the stack (default 12)")
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temp dir)")
    parser.add_argument(
        "--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS, default=None
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    if any(not 0.0 <= level <= 1.0 for level in args.levels):
        parser.error("--levels must be in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(read_memory(*args.child)))
        return 0
    info = machine_info()
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}, {info['platform']}; "
        f"{args.layers} layers, {args.repeats} repeats (load average {info['loadavg_1m']:.2f})"
    )
    result = run(args)
    print(
        f"\n{result['n_weights'] / 1e6:.1f}M float32 weights in {result['n_tensors']} tensors, "
        "fs.Magnitude on every weight\n"
    )
    print_table(result)
    print_memory(result)
    info["loadavg_1m_after"] = os.getloadavg()[0]
    payload = {
        "benchmark": "checkpoint",
        "settings": {
            "repeats": args.repeats,
            "levels": args.levels,
            "layers": args.layers,
            "size_bounds": SIZE_BOUNDS,
            "load_bound": LOAD_BOUND,
            "method": "interleaved repeats; gc.collect and malloc_trim before each timed call",
        },
        "machine": info,
        **result,
    }
    write_payload(args.json, payload)
    print(f"\nwrote {args.json}")
    failed = [
        f"{row['sparsity']:.0%}"
        + ("" if row["size_pass"] is not False else " size")
        + ("" if row["load_pass"] else " load time")
        + (f" wrong leaves {row['wrong_leaves'][:3]}" if row["wrong_leaves"] else "")
        for row in result["levels"]
        if row["size_pass"] is False or not row["load_pass"] or row["wrong_leaves"]
    ]
    if failed:
        print(f"missed: {'; '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
