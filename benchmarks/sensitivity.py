"""Benchmark: per-layer sensitivity, ``fs.sensitivity`` (vmapped) vs the plain K x L loop.

What it measures
----------------
For each case below, the wall-clock time (``time.perf_counter``) to compute the loss of a
model with each layer alone pruned at each of K levels (a sensitivity table), two ways:

* loop (the baseline a user writes without funcsparse's helper): for every layer and every
  level, ``masks = fs.compute_masks(params, {path: dataclasses.replace(method,
  sparsity=s)})`` and ``loss_fn(fs.apply_masks(params, masks))`` under ``torch.no_grad()``:
  K x L forward runs.
* funcsparse: ``fs.sensitivity(loss_fn, params, rules, levels=levels)``: the same masks, and
  one ``torch.func.vmap`` call per layer over the K masked copies of that layer (L calls).

Both compute the same K x L masks; they differ in how the losses are evaluated. vmap runs
the part of the forward before the pruned layer once instead of K times, batches the rest
(K copies of the activations from that layer on: larger matmuls, K x fewer Python-level
dispatches), and costs K masked copies of one layer at a time.

Cases: a transformer-like stack on a batch of tokens (``--batch`` x ``--tokens``, default
8 x 32 = 256 tokens): an embedding, 4 blocks of ``x + proj(gelu(mix(ln(x))))`` and
``x + down(gelu(up(ln(x))))`` (``Linear(d, d)`` twice, ``Linear(d, 4d)``,
``Linear(4d, d)``, with biases), a final LayerNorm and a ``Linear(d, 256)`` head; the loss
is the cross-entropy against the dense model's own argmax tokens (so pruning raises it).
The layers are the 17 Linear weights (``Magnitude``), one case per width ``d`` in
``--widths`` (default 32, 64, 128, 256). K = 9 levels, 0.1 to 0.9.

Each side runs once untimed first (warm-up), then ``--repeats`` timed runs interleaved with
the other side; the order within a repeat alternates (loop first on even repeats).
``gc.collect()`` runs before every timed call, outside the timed region. Medians are
reported, and the ratio loop / funcsparse (above 1: vmap is faster).

After timing, the two tables are compared: the script exits with status 1 if any loss
differs by more than 1e-4 (relative to max(1, |loss|)); the largest difference is reported.

Usage::

    python benchmarks/sensitivity.py [--repeats N] [--widths 32,64,128,256] [--threads N]
                                     [--batch B] [--tokens T] [--json PATH] [--quick]

Results are printed as a table and written as JSON (default
``benchmarks/results/sensitivity.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _harness import base_parser, machine_info, timed, write_payload
from torch import Tensor, nn

import funcsparse as fs

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "sensitivity.json"
LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
VOCAB = 256
BLOCKS = 4
TOLERANCE = 1e-4


class Block(nn.Module):
    """A pre-norm residual block of Linear layers: a token mixer and an MLP."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.proj(F.gelu(self.mix(self.ln1(x))))
        out: Tensor = x + self.down(F.gelu(self.up(self.ln2(x))))
        return out


def transformer_stack(d: int) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Embedding(VOCAB, d), *(Block(d) for _ in range(BLOCKS))]
    return nn.Sequential(*layers, nn.LayerNorm(d), nn.Linear(d, VOCAB)).eval()


@dataclasses.dataclass
class Case:
    name: str
    width: int
    loss_fn: Callable[[Any], Tensor]
    params: dict[str, Tensor]
    rules: dict[str, fs.MaskMethod]
    tokens: int


def build_case(width: int, batch: int, tokens: int) -> Case:
    model = transformer_stack(width)
    x = torch.randint(0, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(-1).flatten()

    def loss_fn(p: Any) -> Tensor:
        logits = torch.func.functional_call(model, p, (x,))
        return F.cross_entropy(logits.flatten(0, 1), y)

    params: dict[str, Tensor] = dict(model.named_parameters())
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    rules: dict[str, fs.MaskMethod] = {f"{n}.weight": fs.Magnitude(0.5) for n in linears}
    return Case(f"stack-d{width}", width, loss_fn, params, rules, batch * tokens)


def plain_loop(case: Case, levels: tuple[float, ...]) -> Tensor:
    """K x L forward runs: every layer pruned alone at every level, one loss at a time."""
    rows = []
    for path, method in case.rules.items():
        row = []
        for s in levels:
            masks = fs.compute_masks(case.params, {path: dataclasses.replace(method, sparsity=s)})  # type: ignore[type-var]
            with torch.no_grad():
                row.append(case.loss_fn(fs.apply_masks(case.params, masks)))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def vmapped(case: Case, levels: tuple[float, ...]) -> Tensor:
    return fs.sensitivity(case.loss_fn, case.params, case.rules, levels=levels).losses


@dataclasses.dataclass
class Result:
    name: str
    width: int
    n_layers: int
    n_levels: int
    n_pruned_params: int
    tokens: int
    loop_s: list[float]
    fs_s: list[float]
    max_abs_diff: float
    agree: bool

    @property
    def loop_median_ms(self) -> float:
        return statistics.median(self.loop_s) * 1e3

    @property
    def fs_median_ms(self) -> float:
        return statistics.median(self.fs_s) * 1e3

    @property
    def ratio(self) -> float:
        return self.loop_median_ms / self.fs_median_ms


def run_case(case: Case, repeats: int) -> Result:
    loop_table = plain_loop(case, LEVELS)  # untimed warm-up
    fs_table = vmapped(case, LEVELS)
    loop_s: list[float] = []
    fs_s: list[float] = []
    for repeat in range(repeats):
        order = ("loop", "fs") if repeat % 2 == 0 else ("fs", "loop")
        for side in order:
            if side == "loop":
                seconds, loop_table = timed(lambda: plain_loop(case, LEVELS))
                loop_s.append(seconds)
            else:
                seconds, fs_table = timed(lambda: vmapped(case, LEVELS))
                fs_s.append(seconds)
    diff = (loop_table - fs_table).abs()
    scale = loop_table.abs().clamp(min=1.0)
    return Result(
        name=case.name,
        width=case.width,
        n_layers=len(case.rules),
        n_levels=len(LEVELS),
        n_pruned_params=sum(case.params[p].numel() for p in case.rules),
        tokens=case.tokens,
        loop_s=loop_s,
        fs_s=fs_s,
        max_abs_diff=float(diff.max()),
        agree=bool((diff <= TOLERANCE * scale).all()),
    )


def print_table(results: list[Result]) -> None:
    header = (
        f"{'case':<14}{'layers':>7}{'K':>4}{'pruned params':>15}{'loop ms':>11}"
        f"{'funcsparse ms':>15}{'loop/fs':>9}{'max |diff|':>12}  agree"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<14}{r.n_layers:>7}{r.n_levels:>4}{r.n_pruned_params:>15,}"
            f"{r.loop_median_ms:>11.1f}{r.fs_median_ms:>15.1f}{r.ratio:>8.2f}x"
            f"{r.max_abs_diff:>12.1e}  {r.agree}"
        )
    slower = [r.name for r in results if r.ratio < 1.0]
    if slower:
        print(f"  vmap is SLOWER than the loop in: {', '.join(slower)}")


def write_json(
    path: Path, results: list[Result], args: argparse.Namespace, machine: dict[str, Any]
) -> None:
    payload = {
        "benchmark": "sensitivity",
        "settings": {
            "repeats": args.repeats,
            "widths": args.widths,
            "batch": args.batch,
            "tokens": args.tokens,
            "levels": list(LEVELS),
            "blocks": BLOCKS,
            "quick": args.quick,
            "threads": args.threads,
        },
        "machine": machine,
        "cases": [
            {
                "name": r.name,
                "width": r.width,
                "n_layers": r.n_layers,
                "n_levels": r.n_levels,
                "n_pruned_params": r.n_pruned_params,
                "tokens": r.tokens,
                "loop_median_ms": r.loop_median_ms,
                "funcsparse_median_ms": r.fs_median_ms,
                "ratio_loop_over_fs": r.ratio,
                "max_abs_diff": r.max_abs_diff,
                "agree": r.agree,
                "loop_ms": [s * 1e3 for s in r.loop_s],
                "funcsparse_ms": [s * 1e3 for s in r.fs_s],
            }
            for r in results
        ],
    }
    write_payload(path, payload)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=3)
    parser.add_argument(
        "--widths",
        default="32,64,128,256",
        help="model widths d, comma-separated (default 32,64,128,256)",
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sequence (default 32)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own; 1 is steadier on a shared machine)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="width 32, 1 repeat, 2 x 8 tokens (smoke test)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.repeats, args.batch, args.tokens = "32", 1, 2, 8
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    try:
        args.widths = [int(w) for w in str(args.widths).split(",")]
    except ValueError:
        parser.error(f"--widths must be comma-separated ints, got {args.widths!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}, {info['platform']}; "
        f"widths {args.widths}, {args.batch} x {args.tokens} tokens, K={len(LEVELS)}, "
        f"{args.repeats} repeats (load average {info['loadavg_1m']:.2f})"
    )
    results = []
    for width in args.widths:
        results.append(run_case(build_case(width, args.batch, args.tokens), args.repeats))
        print(f"  done stack-d{width}", flush=True)
    print()
    print_table(results)
    info["loadavg_1m_after"] = os.getloadavg()[0]
    write_json(args.json, results, args, info)
    print(f"\nwrote {args.json}")
    if not all(r.agree for r in results):
        differ = ", ".join(f"{r.name} ({r.max_abs_diff:.1e})" for r in results if not r.agree)
        print(f"ERROR: the vmapped table and the plain loop differ in: {differ}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
