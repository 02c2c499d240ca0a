"""Benchmark: one-shot pruning, torch.nn.utils.prune / torch.ao.pruning vs funcsparse.

What it measures
----------------
For each case below, the wall-clock time (``time.perf_counter``) to compute every pruning
mask of a model once, and for the unstructured cases the peak memory it takes.

Cases, on the transformer-like stack of ``benchmarks/masks.py`` (12 blocks of bias-free
``nn.Linear`` layers, 84.9M tie-free fp32 weights in 72 tensors; ``--quick``: 2 blocks):

* ``magnitude-per-layer``: ``fs.compute_masks(params, {"**.weight": Magnitude(0.5)})``
  vs ``prune.l1_unstructured(module, "weight", amount=0.5)`` on every Linear.
* ``global-magnitude``: ``GlobalMagnitude(0.5)`` over all the weights vs
  ``prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)``.
* ``nm-2:4``: ``NM(n=2, m=4)`` vs torch.ao's ``WeightNormSparsifier(sparsity_level=1.0,
  sparse_block_shape=(1, 4), zeros_per_block=2, norm=1)`` ``step()``.

The nn.utils.prune sides run on a fresh deep copy of the model per timed call (made outside
the timed region, so no reparametrization from an earlier call is seen); only the prune
calls are timed. The torch.ao side is ``prepare()``-d once on a deep copy, and its masks are
reset to ones before every step, outside the timed region (as ``benchmarks/masks.py`` does).
funcsparse computes ``fs.compute_masks(dict(model.named_parameters()), rules)``.

Each side runs once untimed first (allocator warm-up), then ``--repeats`` timed runs
interleaved with the other side; the order within a repeat alternates. ``gc.collect()``
runs before every timed call, outside the timed region. Medians are reported, and the ratio
baseline / funcsparse.

After timing, every baseline mask (``module.weight_mask`` or torch.ao's parametrization
mask, cast with ``.bool()``) is compared with funcsparse's using ``torch.equal``; the script
exits with status 1 if any case differs.

Peak memory: each side of the two unstructured cases runs once in a fresh subprocess
(``python benchmarks/prune.py --memory CASE SIDE``): the model is built, both sides are
warmed up on a tiny model, freed heap pages are returned to the OS (``malloc_trim``), the
peak RSS mark is reset (``/proc/self/clear_refs``) and the side runs; the growth of
``VmHWM`` over the RSS before the call is reported, in GiB and as a multiple of the matched
weights' bytes ``W``. It includes what each side returns: bool masks for funcsparse, float
masks plus the masked weights for nn.utils.prune.

Goals: funcsparse at least 20x faster than the nn.utils.prune anchors (the two unstructured
cases), global selection within 0.5x ``W`` extra memory, identical masks in every case.

Usage::

    python benchmarks/prune.py [--repeats N] [--json PATH] [--quick] [--no-memory]
    python benchmarks/prune.py --memory {magnitude-per-layer,global-magnitude} {fs,baseline}

Results are printed as a table and written as JSON (default ``benchmarks/results/prune.json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from _harness import (
    base_parser,
    load_masks_benchmark,
    machine_info,
    release_free_heap,
    reset_peak,
    status_kib,
    timed,
    write_payload,
)
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import prune

import funcsparse as fs
from funcsparse.methods.global_magnitude import GlobalMagnitude

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "prune.json"
MEMORY_CASES = ("magnitude-per-layer", "global-magnitude")
GOAL_SPEEDUP = 20.0
GOAL_GLOBAL_MEMORY_W = 0.5


masks_bench = load_masks_benchmark()


def _optional_method(module: str, name: str) -> Any:
    """A funcsparse method class written concurrently elsewhere, or None if absent."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


Magnitude = _optional_method("funcsparse.methods.magnitude", "Magnitude")
NM = _optional_method("funcsparse.methods.nm", "NM")


def linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every module owning a ``weight`` that the rules match, by the weight's path."""
    names = masks_bench.weight_names(model)
    modules: dict[str, nn.Module] = masks_bench.mask_modules(model, names)
    return modules


# --- the sides of each case ----------------------------------------------------------------


def fs_rules(case: str) -> dict[str, fs.MaskMethod]:
    if case == "magnitude-per-layer":
        return {"**.weight": Magnitude(0.5)}
    if case == "global-magnitude":
        return {"**.weight": GlobalMagnitude(0.5)}
    if case == "nm-2:4":
        return {"**.weight": NM(n=2, m=4)}
    raise ValueError(f"unknown case {case!r}")


def run_prune(case: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with nn.utils.prune; return each weight's bool mask."""
    modules = linears(model)
    if case == "magnitude-per-layer":
        for module in modules.values():
            prune.l1_unstructured(module, "weight", amount=0.5)
    elif case == "global-magnitude":
        prune.global_unstructured(
            [(module, "weight") for module in modules.values()],
            pruning_method=prune.L1Unstructured,
            amount=0.5,
        )
    else:
        raise ValueError(f"no nn.utils.prune side for {case!r}")
    masks: dict[str, torch.Tensor] = {
        name: module.get_buffer("weight_mask") for name, module in modules.items()
    }
    return masks


def make_ao_sparsifier() -> WeightNormSparsifier:
    return WeightNormSparsifier(
        sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2, norm=1
    )


@dataclasses.dataclass
class Result:
    """Timings (seconds), memory and the mask comparison of one case."""

    name: str
    baseline: str
    n_weights: int
    n_params: int
    base_s: list[float]
    fs_s: list[float]
    identical: bool
    n_diff_entries: int
    memory: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def base_median_ms(self) -> float:
        return statistics.median(self.base_s) * 1e3

    @property
    def fs_median_ms(self) -> float:
        return statistics.median(self.fs_s) * 1e3

    @property
    def ratio(self) -> float:
        return self.base_median_ms / self.fs_median_ms


def compare(expected: dict[str, torch.Tensor], got: dict[str, Any]) -> tuple[bool, int]:
    differing = [name for name in expected if not torch.equal(expected[name].bool(), got[name])]
    n_diff = sum(masks_bench.mismatches(expected[n].bool(), got[n]) for n in differing)
    return not differing, n_diff


def run_prune_case(case: str, model: nn.Module, repeats: int) -> Result:
    """nn.utils.prune on a fresh deep copy per call vs funcsparse, interleaved."""
    params = dict(model.named_parameters())
    rules = fs_rules(case)

    def fs_step() -> Any:
        return fs.compute_masks(params, rules)

    base_masks = run_prune(case, copy.deepcopy(model))  # untimed warm-up
    fs_masks: Any = fs_step()
    base_s: list[float] = []
    fs_s: list[float] = []
    for repeat in range(repeats):
        fs_masks = None
        order = ("base", "fs") if repeat % 2 == 0 else ("fs", "base")
        for side in order:
            if side == "base":
                base_masks = {}  # free the last pruned copy before making the next one
                gc.collect()
                fresh = copy.deepcopy(model)
                seconds, base_masks = timed(functools.partial(run_prune, case, fresh))
                del fresh  # its masks stay alive in base_masks
                base_s.append(seconds)
            else:
                seconds, fs_masks = timed(fs_step)
                fs_s.append(seconds)
    identical, n_diff = compare(base_masks, fs_masks)
    names = list(base_masks)
    result = Result(
        name=case,
        baseline="prune.l1_unstructured per layer"
        if case == "magnitude-per-layer"
        else "prune.global_unstructured(L1Unstructured)",
        n_weights=len(names),
        n_params=sum(params[name].numel() for name in names),
        base_s=base_s,
        fs_s=fs_s,
        identical=identical,
        n_diff_entries=n_diff,
    )
    del base_masks, fs_masks
    gc.collect()
    return result


def run_nm_case(model: nn.Module, repeats: int) -> Result:
    """torch.ao's WeightNormSparsifier 2:4 step vs funcsparse NM(2, 4), interleaved."""
    names = masks_bench.weight_names(model)
    params = dict(model.named_parameters())
    rules = fs_rules("nm-2:4")
    ao_model = copy.deepcopy(model)
    sparsifier = make_ao_sparsifier()
    sparsifier.prepare(ao_model, config=[{"tensor_fqn": name} for name in names])
    modules = masks_bench.mask_modules(ao_model, names)

    def fs_step() -> Any:
        return fs.compute_masks(params, rules)

    masks_bench.reset_ao_masks(modules)
    sparsifier.step()
    fs_masks: Any = fs_step()
    base_s: list[float] = []
    fs_s: list[float] = []
    for repeat in range(repeats):
        fs_masks = None
        order = ("base", "fs") if repeat % 2 == 0 else ("fs", "base")
        for side in order:
            if side == "base":
                masks_bench.reset_ao_masks(modules)
                seconds, _ = timed(sparsifier.step)
                base_s.append(seconds)
            else:
                seconds, fs_masks = timed(fs_step)
                fs_s.append(seconds)
    expected = {name: masks_bench.ao_mask(modules[name]) for name in names}
    identical, n_diff = compare(expected, fs_masks)
    result = Result(
        name="nm-2:4",
        baseline="torch.ao WeightNormSparsifier 2:4 step",
        n_weights=len(names),
        n_params=sum(params[name].numel() for name in names),
        base_s=base_s,
        fs_s=fs_s,
        identical=identical,
        n_diff_entries=n_diff,
    )
    del ao_model, sparsifier, modules, fs_masks, expected
    gc.collect()
    return result


# --- peak memory, one side per fresh process -----------------------------------------------


def measure_memory(case: str, side: str, layers: int) -> dict[str, Any]:
    """Peak RSS growth of one side of ``case`` over the RSS after building the model."""
    model = masks_bench.transformer_stack(layers)
    weight_bytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if n.endswith("weight")
    )
    # Warm both sides up on a tiny model: library code, thread pools, first-call allocations.
    tiny = masks_bench.make_tie_free(nn.Sequential(nn.Linear(64, 64, bias=False)))
    fs.compute_masks(dict(tiny.named_parameters()), fs_rules(case))
    run_prune(case, copy.deepcopy(tiny))
    del tiny
    gc.collect()
    release_free_heap()
    exact = reset_peak()
    before_kib = (
        status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    if side == "fs":
        out: Any = fs.compute_masks(dict(model.named_parameters()), fs_rules(case))
    elif side == "baseline":
        out = run_prune(case, model)
    else:
        raise ValueError(f"unknown side {side!r}")
    peak_kib = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    growth = max(0, peak_kib - before_kib) * 1024
    return {
        "case": case,
        "side": side,
        "method": "VmHWM after clear_refs" if exact else "ru_maxrss difference",
        "peak_growth_bytes": growth,
        "peak_growth_gib": growth / 2**30,
        "weight_bytes": weight_bytes,
        "peak_growth_over_w": growth / weight_bytes,
    }


def memory_in_subprocess(case: str, side: str, layers: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory", case, side]
    if layers != 12:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    last = done.stdout.strip().splitlines()[-1]
    return json.loads(last)  # type: ignore[no-any-return]


# --- report --------------------------------------------------------------------------------


def print_table(results: list[Result]) -> None:
    header = (
        f"{'case':<21}{'weights':>8}{'params':>12}{'baseline ms':>13}"
        f"{'funcsparse ms':>15}{'base/fs':>9}  identical"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<21}{r.n_weights:>8}{r.n_params:>12,}{r.base_median_ms:>13.1f}"
            f"{r.fs_median_ms:>15.1f}{r.ratio:>8.1f}x  {r.identical}"
        )
    with_memory = [r for r in results if r.memory]
    if with_memory:
        print()
        header = f"{'peak memory growth':<21}{'baseline':>20}{'funcsparse':>20}"
        print(header)
        print("-" * len(header))
        for r in with_memory:
            cells = []
            for side in ("baseline", "fs"):
                m = r.memory.get(side)
                cells.append(
                    "n/a"
                    if m is None
                    else f"{m['peak_growth_gib']:.3f} GiB {m['peak_growth_over_w']:5.2f}x W"
                )
            print(f"{r.name:<21}{cells[0]:>20}{cells[1]:>20}")
    for r in results:
        print(f"  {r.name}: baseline = {r.baseline}")


def goals(results: list[Result]) -> dict[str, Any]:
    """Each case's speed-up and the global case's memory against the stated goals."""
    checks: dict[str, Any] = {}
    for r in results:
        if r.name in MEMORY_CASES:  # the nn.utils.prune anchors
            checks[f"{r.name}: >= {GOAL_SPEEDUP:g}x faster"] = r.ratio >= GOAL_SPEEDUP
        checks[f"{r.name}: identical masks"] = r.identical
        if r.name == "global-magnitude" and "fs" in r.memory:
            within = r.memory["fs"]["peak_growth_over_w"] <= GOAL_GLOBAL_MEMORY_W
            checks[f"{r.name}: extra memory <= {GOAL_GLOBAL_MEMORY_W}x W"] = within
    return checks


def write_json(
    path: Path,
    results: list[Result],
    args: argparse.Namespace,
    machine: dict[str, Any],
    skipped: list[str],
) -> None:
    payload = {
        "benchmark": "prune",
        "settings": {"repeats": args.repeats, "quick": args.quick, "layers": args.layers},
        "machine": machine,
        "skipped": skipped,
        "goals": goals(results),
        "cases": [
            {
                "name": r.name,
                "baseline": r.baseline,
                "n_weights": r.n_weights,
                "n_params": r.n_params,
                "baseline_median_ms": r.base_median_ms,
                "funcsparse_median_ms": r.fs_median_ms,
                "ratio_baseline_over_fs": r.ratio,
                "identical": r.identical,
                "n_diff_entries": r.n_diff_entries,
                "baseline_ms": [s * 1e3 for s in r.base_s],
                "funcsparse_ms": [s * 1e3 for s in r.fs_s],
                "memory": r.memory,
            }
            for r in results
        ],
    }
    write_payload(path, payload)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=5)
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12 (smoke test)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--memory",
        nargs=2,
        metavar=("CASE", "SIDE"),
        help=f"measure one side's peak memory and print it as JSON (CASE in {MEMORY_CASES}, "
        "SIDE in fs, baseline)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.layers = 2 if args.quick else 12
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory is not None:
        case, side = args.memory
        if case not in MEMORY_CASES or side not in ("fs", "baseline"):
            print(f"--memory takes a CASE in {MEMORY_CASES} and a SIDE in (fs, baseline)")
            return 2
        print(json.dumps(measure_memory(case, side, args.layers)))
        return 0
    info = machine_info()
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}, {info['platform']}; "
        f"{args.layers} layers, {args.repeats} repeats (load average {info['loadavg_1m']:.2f})"
    )
    skipped = []
    if Magnitude is None:
        skipped.append("magnitude-per-layer (funcsparse.methods.magnitude.Magnitude missing)")
    if NM is None:
        skipped.append("nm-2:4 (funcsparse.methods.nm.NM missing)")
    for line in skipped:
        print(f"  skipping {line}")
    model = masks_bench.transformer_stack(args.layers)
    results = []
    cases = ["global-magnitude"] if Magnitude is None else list(MEMORY_CASES)
    for case in cases:
        results.append(run_prune_case(case, model, args.repeats))
        print(f"  done {case}", flush=True)
    if NM is not None:
        results.append(run_nm_case(model, args.repeats))
        print("  done nm-2:4", flush=True)
    del model
    gc.collect()
    if not args.no_memory:
        for r in results:
            if r.name in MEMORY_CASES:
                for side in ("baseline", "fs"):
                    r.memory[side] = memory_in_subprocess(r.name, side, args.layers)
                print(f"  measured memory of {r.name}", flush=True)
    print()
    print_table(results)
    print()
    for goal, met in goals(results).items():
        print(f"  goal {goal}: {'met' if met else 'NOT met'}")
    info["loadavg_1m_after"] = os.getloadavg()[0]
    write_json(args.json, results, args, info, skipped)
    print(f"\nwrote {args.json}")
    if not all(r.identical for r in results):
        differ = ", ".join(
            f"{r.name} ({r.n_diff_entries} entries)" for r in results if not r.identical
        )
        print(f"ERROR: baseline and funcsparse masks differ in: {differ}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
