"""Benchmark: peak extra memory of every funcsparse method, on one large leaf and on a stack.

What it measures
----------------
For every registered method (``funcsparse.methods._base.registered_methods()``; the script
refuses to run if one has no case below) and for the baselines, the peak memory a call
takes besides its inputs, as a multiple of the inputs' weight bytes ``W`` (float32). The
issue's bound is 1x: a call may take at most as much again as the weight, the bool mask it
returns included.

Two scopes:

* ``leaf``: one float32 leaf of ``--numel`` entries (default 1e8: 10000 x 10000; the rows
  are rounded down to a multiple of 30, 9990 x 10000 at 1e8, for the (3, 5) blocks). The
  method is called on the tensor directly: ``method(leaf, **data)``.
* ``stack``: the transformer-like stack of ``benchmarks/masks.py`` (12 blocks of bias-free
  ``nn.Linear`` layers, 84.9M float32 weights in 72 tensors), every weight masked by one
  ``fs.compute_masks(params, {"**.weight": method}, **data)`` call. The weights are filled
  with ``normal_`` (seeded) instead of ``masks.py``'s tie-free values, which take half a
  minute to build and do not change the memory a call takes.

Cases: ``Magnitude(0.5)``, ``Random(0.5)``, ``LnStructured(0.5, n=1, dim=0)``,
``RandomStructured(0.5, dim=0)``, ``GlobalMagnitude(0.5)``, ``Movement(0.5)`` (with
``scores`` of the leaf's shape), ``WeightNorm(0.5)`` (blocks (1, 4)), ``WeightNorm(1.0,
(1, 4), zeros_per_block=2)`` (2:4), ``WeightNorm(0.5, (3, 5), zeros_per_block=2)``,
``Wanda(0.5)`` (with float64 ``input_norms``, as ``collect_input_norms`` returns them),
``NM(n=2, m=4)`` and ``NearlyDiagonal(nearliness=3)``. Baselines, on the leaf held by an
``nn.Linear``: torch.ao's ``WeightNormSparsifier`` ``step()`` with blocks (1, 4) at 0.5 and
2:4 (``prepare()`` runs before the measurement: its float mask is an input, as torch.ao
keeps it), and ``torch.nn.utils.prune``'s ``l1_unstructured`` and ``random_unstructured``
at ``amount=0.5`` (they return a float mask and the masked weight, both counted).

How: every measurement runs in a fresh process (``python benchmarks/memory.py --child
CASE SCOPE``). It builds the inputs (allocated and written, so every page is resident),
warms the call up on a tiny input (library code, thread pools, first-call allocations),
returns freed heap pages to the OS (glibc ``malloc_trim``), resets the peak RSS mark
(``echo 5 > /proc/self/clear_refs``), reads ``VmRSS``, runs the call once and reads
``VmHWM``. The growth is the peak extra memory; the call's wall time is reported beside
it. ``--repeats`` fresh processes per case give a range.

Usage::

    python benchmarks/memory.py [--repeats N] [--json PATH] [--numel N] [--scopes leaf stack]
        [--cases NAME ...]

Results are printed as a table and written as JSON (default ``benchmarks/results/memory.json``).
The script exits with status 1 when a case fails (a funcsparse case above 1x, or a crash); a
case whose method refuses the inputs with a TypeError/ValueError (blocks that do not divide
the stack's shapes) is shown as refused.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
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
    reset_peak,
    status_kib,
    write_payload,
)
from torch import nn

import funcsparse as fs
from funcsparse.methods._base import registered_methods

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "memory.json"
BOUND = 1.0  # the bound: extra memory at most 1x the weight bytes

# name -> (method class name, factory). The factory takes nothing and returns the method.
FS_CASES: dict[str, tuple[str, Callable[[], Any]]] = {
    "Magnitude": ("Magnitude", lambda: fs.Magnitude(0.5)),
    "Random": ("Random", lambda: fs.Random(0.5)),
    "LnStructured": ("LnStructured", lambda: fs.LnStructured(0.5, n=1, dim=0)),
    "RandomStructured": ("RandomStructured", lambda: fs.RandomStructured(0.5, dim=0)),
    "GlobalMagnitude": ("GlobalMagnitude", lambda: fs.GlobalMagnitude(0.5)),
    "Movement": ("Movement", lambda: fs.Movement(0.5)),
    "WeightNorm (1,4)": ("WeightNorm", lambda: fs.WeightNorm(0.5)),
    "WeightNorm 2:4": (
        "WeightNorm",
        lambda: fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=2),
    ),
    "WeightNorm (3,5) zpb=2": (
        "WeightNorm",
        lambda: fs.WeightNorm(0.5, sparse_block_shape=(3, 5), zeros_per_block=2),
    ),
    "Wanda": ("Wanda", lambda: fs.Wanda(0.5)),
    "NM 2:4": ("NM", lambda: fs.NM(n=2, m=4)),
    "NearlyDiagonal": ("NearlyDiagonal", lambda: fs.NearlyDiagonal(nearliness=3)),
}
BASELINES = (
    "torch.ao WeightNormSparsifier (1,4)",
    "torch.ao WeightNormSparsifier 2:4",
    "prune.l1_unstructured",
    "prune.random_unstructured",
)
# The funcsparse case each baseline compares with (printed next to it).
COMPARES_WITH = {
    "torch.ao WeightNormSparsifier (1,4)": "WeightNorm (1,4)",
    "torch.ao WeightNormSparsifier 2:4": "WeightNorm 2:4",
    "prune.l1_unstructured": "Magnitude",
    "prune.random_unstructured": "Random",
}
SCOPES = ("leaf", "stack")


def leaf_shape(numel: int, case: str) -> tuple[int, int]:
    """The leaf's shape: about ``numel`` entries, columns a multiple of 20 (N:M, (1, 4) and
    (3, 5) blocks divide them), rows a multiple of 30 for the (3, 5) blocks."""
    cols = max(20, math.isqrt(numel) // 20 * 20)
    rows = max(1, numel // cols)
    if "(3,5)" in case:
        rows = max(30, rows - rows % 30)
    return rows, cols


def leaf_data(case: str, leaf: torch.Tensor) -> dict[str, Any]:
    """The keyword data a call on ``leaf`` reads (an input: allocated before measuring)."""
    generator = torch.Generator().manual_seed(1)
    if case == "Wanda":
        return {"input_norms": torch.rand(leaf.shape[1:], generator=generator, dtype=torch.float64)}
    if case == "Movement":
        scores = torch.empty(leaf.shape, dtype=leaf.dtype)
        return {"scores": scores.normal_(generator=generator)}
    return {}


def method_of(case: str) -> Any:
    return FS_CASES[case][1]()


# --- the calls measured -------------------------------------------------------------------


def make_leaf(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor of ``shape`` filled in place with seeded normal values."""
    return torch.empty(shape).normal_(generator=torch.Generator().manual_seed(0))


def linear_holding(leaf: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` whose weight is ``leaf`` itself (no copy)."""
    module = nn.Linear(1, 1, bias=False)
    module.weight = nn.Parameter(leaf)
    module.in_features, module.out_features = leaf.shape[1], leaf.shape[0]
    return module


def prepare_call(case: str, scope: str, numel: int) -> tuple[Callable[[], Any], int, str]:
    """The inputs of one measurement, built; returns the call, ``W`` and the shape shown."""
    if scope == "stack":
        params = stack_params()
        weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
        data = {}
        if case == "Wanda":
            data["input_norms"] = {k: leaf_data(case, p)["input_norms"] for k, p in params.items()}
        elif case == "Movement":
            data["scores"] = {k: leaf_data(case, p)["scores"] for k, p in params.items()}
        rules = {"**.weight": method_of(case)}
        shown = f"{len(params)} weights"
        return (lambda: fs.compute_masks(params, rules, **data)), weight_bytes, shown
    shape = leaf_shape(numel, case)
    leaf = make_leaf(shape)
    weight_bytes = leaf.numel() * leaf.element_size()
    shown = "x".join(map(str, shape))
    if case in FS_CASES:
        method, data = method_of(case), leaf_data(case, leaf)
        return (lambda: method(leaf, **data)), weight_bytes, shown
    return baseline_call(case, linear_holding(leaf)), weight_bytes, shown


def baseline_call(case: str, module: nn.Linear) -> Callable[[], Any]:
    """The baseline's call on ``module.weight`` (torch.ao is prepared here, not measured)."""
    from torch.ao.pruning import WeightNormSparsifier
    from torch.nn.utils import prune

    if case.startswith("torch.ao"):
        two_four = case.endswith("2:4")
        sparsifier = WeightNormSparsifier(
            sparsity_level=1.0 if two_four else 0.5,
            sparse_block_shape=(1, 4),
            zeros_per_block=2 if two_four else None,
        )
        sparsifier.prepare(nn.Sequential(module), config=[{"tensor_fqn": "0.weight"}])
        return sparsifier.step
    if case == "prune.l1_unstructured":
        return lambda: prune.l1_unstructured(module, "weight", amount=0.5)
    if case == "prune.random_unstructured":
        return lambda: prune.random_unstructured(module, "weight", amount=0.5)
    raise ValueError(f"unknown case {case!r}")


def stack_params() -> dict[str, torch.Tensor]:
    """The 84.9M-weight stack of ``benchmarks/masks.py`` (its ``Block``), seeded normal."""
    masks_bench = load_masks_benchmark()
    torch.manual_seed(0)
    with torch.device("meta"):
        model = nn.Sequential(*(masks_bench.Block() for _ in range(12)))
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.empty(p.shape).normal_(generator=generator)
        for name, p in model.named_parameters()
    }


def warm_up(case: str, scope: str) -> None:
    """Run the case once on a tiny input (code paths, thread pools, first allocations)."""
    call, _, _ = prepare_call(case, "leaf", 30 * 40) if scope == "leaf" else tiny_stack(case)
    call()


def tiny_stack(case: str) -> tuple[Callable[[], Any], int, str]:
    params = {f"{i}.weight": make_leaf((30, 40)) for i in range(3)}
    data: dict[str, Any] = {}
    if case in ("Wanda", "Movement"):
        key = "input_norms" if case == "Wanda" else "scores"
        data[key] = {k: leaf_data(case, p)[key] for k, p in params.items()}
    rules = {"**.weight": method_of(case)}
    return (lambda: fs.compute_masks(params, rules, **data)), 0, ""


# --- one measurement in this (fresh) process ------------------------------------------------


def measure(case: str, scope: str, numel: int) -> dict[str, Any]:
    """Peak RSS growth of one call of ``case`` over the RSS with its inputs built."""
    result: dict[str, Any] = {"case": case, "scope": scope}
    try:
        warm_up(case, scope)
        call, weight_bytes, shown = prepare_call(case, scope, numel)
    except (TypeError, ValueError) as err:
        return {**result, "error": f"{type(err).__name__}: {err}"}
    gc.collect()
    release_free_heap()
    if not reset_peak():
        raise RuntimeError("clear_refs did not reset VmHWM (kernel too old?)")
    before_kib = status_kib("VmRSS")
    start = time.perf_counter()
    try:
        out = call()
    except (TypeError, ValueError) as err:
        return {**result, "error": f"{type(err).__name__}: {err}"}
    seconds = time.perf_counter() - start
    peak_kib = status_kib("VmHWM")
    del out
    extra = max(0, peak_kib - before_kib) * 1024
    return {
        **result,
        "shape": shown,
        "weight_bytes": weight_bytes,
        "extra_bytes": extra,
        "ratio": extra / weight_bytes,
        "seconds": seconds,
    }


def in_subprocess(case: str, scope: str, numel: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, scope]
    command += ["--numel", str(numel)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"case": case, "scope": scope, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


# --- the table -------------------------------------------------------------------------------


def summarise(case: str, scope: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: the range over the repeats, and whether the case meets the bound."""
    row: dict[str, Any] = {"case": case, "scope": scope, "baseline": case in BASELINES}
    errors = [r["error"] for r in runs if "error" in r]
    if errors and errors[0].startswith(("TypeError", "ValueError")):
        # The method refuses these inputs (say, blocks that do not divide the shapes): no
        # memory to measure, and not a failure.
        return {**row, "refused": errors[0], "pass": None}
    if errors:
        return {**row, "error": errors[0], "pass": False}
    ratios = [r["ratio"] for r in runs]
    extra = [r["extra_bytes"] / 2**20 for r in runs]
    return {
        **row,
        "shape": runs[0]["shape"],
        "weight_bytes": runs[0]["weight_bytes"],
        "extra_mib": extra,
        "extra_mib_median": statistics.median(extra),
        "ratio": ratios,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "seconds": [r["seconds"] for r in runs],
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "pass": max(ratios) <= BOUND,
        **({"compares_with": COMPARES_WITH[case]} if case in COMPARES_WITH else {}),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'method':<48}{'case':<17}{'peak extra MiB':>18}{'x W':>15}{'s':>8}  pass (<= 1x)"
    print(header)
    print("-" * len(header))
    for r in rows:
        name = r["case"] + (" [baseline]" if r["baseline"] else "")
        where = r["scope"] if "shape" not in r else f"{r['scope']} {r['shape']}"
        if "error" in r or "refused" in r:
            shown = f"refused: {r['refused']}" if "refused" in r else r["error"]
            print(f"{name:<48}{where:<17}  {shown[:110]}")
            continue
        mib = r["extra_mib"]
        shown_mib = f"{min(mib):.0f}-{max(mib):.0f}" if len(mib) > 1 else f"{mib[0]:.0f}"
        shown_ratio = (
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
            if len(mib) > 1
            else f"{r['ratio_min']:.2f}"
        )
        verdict = "-" if r["baseline"] else ("yes" if r["pass"] else "NO")
        print(
            f"{name:<48}{where:<17}{shown_mib:>18}{shown_ratio:>15}"
            f"{r['seconds_median']:>8.2f}  {verdict}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=2)
    parser.add_argument(
        "--numel", type=int, default=10**8, help="entries of the one large leaf (default 1e8)"
    )
    parser.add_argument(
        "--scopes", nargs="+", choices=SCOPES, default=list(SCOPES), help="leaf, stack or both"
    )
    parser.add_argument(
        "--cases", nargs="+", default=None, help="only these cases (names as in the table)"
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("CASE", "SCOPE"), help=argparse.SUPPRESS, default=None
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.numel < 1200:
        parser.error("--numel must be at least 1200")
    known = [*FS_CASES, *BASELINES]
    for case in args.cases or []:
        if case not in known:
            parser.error(f"unknown case {case!r}; the cases are {known}")
    return args


def check_every_method_has_a_case() -> None:
    covered = {cls_name for cls_name, _ in FS_CASES.values()}
    missing = sorted(cls.__name__ for cls in registered_methods() if cls.__name__ not in covered)
    if missing:
        raise SystemExit(f"memory.py: no case for registered method(s) {missing}; add them")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        case, scope = args.child
        print(json.dumps(measure(case, scope, args.numel)))
        return 0
    check_every_method_has_a_case()
    info = machine_info()
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}, {info['platform']}; "
        f"leaf of {args.numel:,} entries, {args.repeats} fresh processes per case "
        f"(load average {info['loadavg_1m']:.2f})"
    )
    cases = args.cases or [*FS_CASES, *BASELINES]
    rows = []
    for scope in args.scopes:
        for case in cases:
            if case in BASELINES and scope == "stack":
                continue
            runs = [in_subprocess(case, scope, args.numel) for _ in range(args.repeats)]
            rows.append(summarise(case, scope, runs))
            print(f"  done {case} ({scope})", flush=True)
    print()
    print_table(rows)
    info["loadavg_1m_after"] = os.getloadavg()[0]
    failed = [
        f"{r['case']} ({r['scope']})" for r in rows if not r["baseline"] and r["pass"] is False
    ]
    payload = {
        "benchmark": "memory",
        "settings": {
            "repeats": args.repeats,
            "numel": args.numel,
            "scopes": args.scopes,
            "bound_over_w": BOUND,
            "method": "VmHWM growth after clear_refs, one fresh process per run",
        },
        "machine": info,
        "cases": rows,
        "failed": failed,
    }
    write_payload(args.json, payload)
    print(f"\nwrote {args.json}")
    if failed:
        print(f"above {BOUND}x (or failed): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
