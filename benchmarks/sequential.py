"""Benchmark: peak extra memory of fs.prune_blocks against one-shot calibration of the model.

What it measures
----------------
A transformer-like decoder built here (no download, float32, seeded): an ``nn.Embedding``,
``--blocks`` pre-norm blocks (LayerNorm, ``q/k/v/o_proj`` of ``hidden x hidden``, causal
``scaled_dot_product_attention`` with a padding mask passed to every block as the keyword
``attention_mask``, LayerNorm, ``up_proj`` ``hidden -> mlp``, GELU, ``down_proj`` back), a
final LayerNorm and a bias-free head. Default: 8 blocks, hidden 1024, MLP 4096, vocabulary
1024: 102.9M weights (412 MB), 100.7M of them in the 48 pruned ``*_proj`` weights.
Calibration: ``--sequences`` sequences (default 16) of ``--tokens`` tokens (default 128) in
batches of ``--batch`` (default 4), a tokenizer-style dict ``{"input_ids", "attention_mask"}``
per batch, the last sequence of every batch right-padded by an eighth of its tokens.

Cases, every weight ``layers.*.*_proj.weight`` pruned at 0.5:

* ``sequential <M>``: ``fs.prune_blocks(model, batches, rules, blocks="layers.*",
  in_place=True)``: the first block's inputs captured, then block by block: its statistics
  collected on its current inputs, pruned, written into the model, run pruned.
* ``one-shot <M>``: the naive pipeline, as lean as it can be: the statistics of every
  pruned weight collected in one pass over the whole dense model
  (``funcsparse.calibration.collect_statistics``), then every weight pruned leaf by leaf
  with ``fs.prune`` and written into the model in place (only one leaf's new values exist
  at a time).

for ``<M>`` = ``Wanda`` (``input_norms``: one float64 per input feature) and ``SparseGPT``
(``hessian``: ``in x in`` float64 per weight; default block size 128, damping 0.01).
Both sides return (keep) the bool masks of every pruned weight: 0.25x the float32 weights.

How: every measurement runs in a fresh process (``python benchmarks/sequential.py --child
CASE``), as ``benchmarks/memory.py`` does: it runs the case once on a tiny model (code paths,
thread pools), builds the model and the batches (every page written), returns freed heap
pages to the OS (``malloc_trim``), resets the peak RSS mark (``/proc/self/clear_refs``),
reads ``VmRSS``, runs the case and reads ``VmHWM``. The growth is the peak extra memory,
shown in MiB and as a multiple of the model's weight bytes ``W``; the ratio one-shot /
sequential is printed beside it. The cases run interleaved, ``--repeats`` rounds (default 2),
and the table shows the range. The expected floor is printed too: the masks, one block's
statistics and one set of block inputs (hidden states of every calibration token).

Usage::

    python benchmarks/sequential.py [--repeats N] [--json PATH] [--quick]
        [--cases NAME ...] [--blocks N] [--hidden N] [--mlp N] [--sequences N]

``--quick`` runs a tiny model (2 blocks, hidden 128) once per case: a smoke test in seconds.
Results are printed as a table and written as JSON (default
``benchmarks/results/sequential.json``). Exit status 1 when a case crashes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _harness import (
    base_parser,
    machine_info,
    release_free_heap,
    reset_peak,
    status_kib,
    write_payload,
)
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.calibration import collect_statistics

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "sequential.json"
CASES = ("sequential Wanda", "one-shot Wanda", "sequential SparseGPT", "one-shot SparseGPT")
PATTERN = "layers.*.*_proj.weight"
STATISTIC = {"Wanda": "input_norms", "SparseGPT": "hessian"}


class Block(nn.Module):
    """A pre-norm decoder block; returns a tuple whose first element is the hidden state."""

    def __init__(self, hidden: int, mlp: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.up_proj = nn.Linear(hidden, mlp)
        self.down_proj = nn.Linear(mlp, hidden)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor) -> tuple[Tensor]:
        b, t, d = hidden_states.shape
        h = self.norm1(hidden_states)

        def heads(x: Tensor) -> Tensor:
            return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(h)), heads(self.k_proj(h)), heads(self.v_proj(h))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        x = hidden_states + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        return (x + self.down_proj(F.gelu(self.up_proj(self.norm2(x)))),)


class Decoder(nn.Module):
    """Embedding, blocks, norm, head; called with a tokenizer's output as keywords."""

    def __init__(self, blocks: int, hidden: int, mlp: int, vocab: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, mlp, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        t = input_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, attention_mask=mask)[0]
        return self.head(self.norm(x))  # type: ignore[no-any-return]


def build(config: dict[str, int]) -> tuple[Decoder, list[dict[str, Tensor]]]:
    """The model (seeded, eval mode) and its calibration batches."""
    torch.manual_seed(0)
    with torch.no_grad():
        model = Decoder(
            config["blocks"], config["hidden"], config["mlp"], config["vocab"], config["heads"]
        ).eval()
    generator = torch.Generator().manual_seed(1)
    batches = []
    n, tokens, size = config["sequences"], config["tokens"], config["batch"]
    for start in range(0, n, size):
        rows = min(size, n - start)
        ids = torch.randint(0, config["vocab"], (rows, tokens), generator=generator)
        mask = torch.ones(rows, tokens, dtype=torch.long)
        mask[-1, tokens - tokens // 8 :] = 0  # right padding
        batches.append({"input_ids": ids, "attention_mask": mask})
    return model, batches


def make_method(method: str) -> fs.MaskMethod:
    return fs.Wanda(0.5) if method == "Wanda" else fs.SparseGPT(0.5)


def collect_whole(model: nn.Module, batches: Any, stat: str, paths: list[str]) -> Any:
    """One pass over the dense model: the statistic of every pruned weight at once."""
    params = dict(model.named_parameters())
    return collect_statistics(model, params, batches, statistics=(stat,), paths=paths)[stat]


def prune_leaf(path: str, leaf: Tensor, method: fs.MaskMethod, stat: str, data: Any) -> Any:
    """One leaf pruned with ``fs.prune``: (mask, new values)."""
    with torch.no_grad():
        pruned = fs.prune({path: leaf}, {path: method}, **{stat: {path: data}})
    return pruned.masks[path], pruned.params[path]


def run_case(case: str, model: Decoder, batches: list[dict[str, Tensor]]) -> Any:
    """Prune ``model`` in place as ``case`` says; returns the masks."""
    side, method_name = case.split()
    method = make_method(method_name)
    rules: dict[str, fs.MaskMethod | None] = {PATTERN: method}
    if side == "sequential":
        pruned = fs.prune_blocks(
            model, batches, rules, blocks="layers.*", in_place=True, progress=False
        )
        return pruned.masks
    stat = STATISTIC[method_name]
    params = dict(model.named_parameters())
    paths = [p for p in params if p.startswith("layers.") and p.endswith("_proj.weight")]
    stats = collect_whole(model, batches, stat, paths)
    masks: dict[str, Tensor] = {}
    for path in paths:
        mask, new = prune_leaf(path, params[path], method, stat, stats[path])
        with torch.no_grad():
            params[path].copy_(new)
        masks[path] = mask
        del new
    del stats
    return masks


def config_of(args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        return {"blocks": 2, "hidden": 128, "mlp": 512, "vocab": 256, "heads": 4,
                "sequences": 4, "tokens": 32, "batch": 2}  # fmt: skip
    return {
        "blocks": args.blocks,
        "hidden": args.hidden,
        "mlp": args.mlp,
        "vocab": args.vocab,
        "heads": args.heads,
        "sequences": args.sequences,
        "tokens": args.tokens,
        "batch": args.batch,
    }


TINY = {"blocks": 2, "hidden": 64, "mlp": 128, "vocab": 64, "heads": 2,
        "sequences": 2, "tokens": 8, "batch": 2}  # fmt: skip


def floor_bytes(config: dict[str, int], method: str) -> dict[str, int]:
    """What prune_blocks must hold besides the model: masks, one block's statistics and one
    set of block inputs (float32 hidden states of every calibration token)."""
    d, m = config["hidden"], config["mlp"]
    weights = 4 * d * d + 2 * d * m
    # Wanda: one float64 norm per input feature; SparseGPT: an in x in float64 Hessian.
    block_stats = 8 * (5 * d + m) if method == "Wanda" else 8 * (5 * d * d + m * m)
    return {
        "masks": config["blocks"] * weights,
        "one_block_statistics": block_stats,
        "all_blocks_statistics": config["blocks"] * block_stats,
        "block_inputs": 4 * config["sequences"] * config["tokens"] * d,
    }


def measure(case: str, config: dict[str, int]) -> dict[str, Any]:
    """Peak RSS growth of one run of ``case`` over the RSS with the model and batches built."""
    tiny_model, tiny_batches = build(TINY)
    run_case(case, tiny_model, tiny_batches)
    del tiny_model, tiny_batches
    model, batches = build(config)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    release_free_heap()
    if not reset_peak():
        raise RuntimeError("clear_refs did not reset VmHWM (kernel too old?)")
    before_kib = status_kib("VmRSS")
    start = time.perf_counter()
    masks = run_case(case, model, batches)
    seconds = time.perf_counter() - start
    peak_kib = status_kib("VmHWM")
    pruned = [name for name, mask in masks.items() if mask is not None]
    zeros = sum(int((~masks[name]).sum()) for name in pruned)
    total = sum(masks[name].numel() for name in pruned)
    extra = max(0, peak_kib - before_kib) * 1024
    return {
        "case": case,
        "weights": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weight_bytes,
        "pruned_weights": total,
        "sparsity": zeros / total,
        "extra_bytes": extra,
        "ratio": extra / weight_bytes,
        "seconds": seconds,
    }


def in_subprocess(case: str, argv: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"case": case, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def summarise(case: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case}
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {**row, "error": errors[0]}
    return {
        **row,
        "weights": runs[0]["weights"],
        "weight_bytes": runs[0]["weight_bytes"],
        "pruned_weights": runs[0]["pruned_weights"],
        "sparsity": runs[0]["sparsity"],
        "extra_mib": [r["extra_bytes"] / 2**20 for r in runs],
        "ratio": [r["ratio"] for r in runs],
        "seconds": [r["seconds"] for r in runs],
        "seconds_median": statistics.median(r["seconds"] for r in runs),
    }


def span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return format(low, fmt) if len(values) == 1 else f"{low:{fmt}}-{high:{fmt}}"


def print_table(rows: list[dict[str, Any]], config: dict[str, int]) -> None:
    header = f"{'case':<22}{'peak extra MiB':>16}{'x W':>12}{'one-shot/seq':>14}{'s':>8}"
    print(header)
    print("-" * len(header))
    by_case = {r["case"]: r for r in rows}
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<22}  {r['error']}")
            continue
        ratio = ""
        side, method = r["case"].split()
        other = by_case.get(f"one-shot {method}")
        if side == "sequential" and other is not None and "extra_mib" in other:
            pairs = [o / s for o, s in zip(other["extra_mib"], r["extra_mib"], strict=True)]
            ratio = span(pairs, ".2f")
        print(
            f"{r['case']:<22}{span(r['extra_mib'], '.0f'):>16}{span(r['ratio'], '.2f'):>12}"
            f"{ratio:>14}{r['seconds_median']:>8.1f}"
        )
    for method in ("Wanda", "SparseGPT"):
        floor = floor_bytes(config, method)
        parts = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in floor.items())
        print(f"  {method}: {parts}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=2)
    parser.add_argument("--quick", action="store_true", help="a tiny model, one round")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    for name, default in (
        ("blocks", 8),
        ("hidden", 1024),
        ("mlp", 4096),
        ("vocab", 1024),
        ("heads", 16),
        ("sequences", 16),
        ("tokens", 128),
        ("batch", 4),
    ):
        parser.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    parser.add_argument("--child", metavar="CASE", help=argparse.SUPPRESS, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.hidden % args.heads:
        parser.error("--hidden must be a multiple of --heads")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config = config_of(args)
    if args.child is not None:
        print(json.dumps(measure(args.child, config)))
        return 0
    repeats = 1 if args.quick else args.repeats
    info = machine_info()
    weights = 4 * config["hidden"] ** 2 + 2 * config["hidden"] * config["mlp"]
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}; {config['blocks']} "
        f"blocks, hidden {config['hidden']}, MLP {config['mlp']} "
        f"({config['blocks'] * weights / 1e6:.1f}M pruned weights); {config['sequences']} x "
        f"{config['tokens']} tokens; {repeats} round(s) (load average {info['loadavg_1m']:.2f})"
    )
    child_argv = [a for a in argv if a not in ("--quick",)] + (["--quick"] if args.quick else [])
    child_argv = _strip_option(child_argv, "--json")
    child_argv = _strip_option(child_argv, "--repeats")
    child_argv = _strip_option(child_argv, "--cases", many=True)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in args.cases}

    def payload() -> dict[str, Any]:
        rows = [summarise(case, runs[case]) for case in args.cases if runs[case]]
        return {
            "benchmark": "sequential",
            "settings": {
                "repeats": repeats,
                "config": config,
                "rules": {PATTERN: "<method>(0.5)"},
                "method": "VmHWM growth after clear_refs, one fresh process per run, interleaved",
                "floor_bytes": {m: floor_bytes(config, m) for m in ("Wanda", "SparseGPT")},
            },
            "machine": {**info, "loadavg_1m_after": os.getloadavg()[0]},
            "cases": rows,
            "failed": [r["case"] for r in rows if "error" in r],
        }

    for round_ in range(repeats):
        for case in args.cases:
            result = in_subprocess(case, child_argv)
            runs[case].append(result)
            shown = result.get("extra_bytes")
            what = "-" if shown is None else f"{shown / 2**20:.0f} MiB, {result['seconds']:.0f} s"
            print(f"  round {round_ + 1}: {case}: {what}", flush=True)
            write_payload(args.json, payload())  # after every run: a killed run keeps its rows
    final = payload()
    print()
    print_table(final["cases"], config)
    print(f"\nwrote {args.json}")
    failed = final["failed"]
    return 1 if failed else 0


def _strip_option(argv: list[str], name: str, *, many: bool = False) -> list[str]:
    """``argv`` without ``name`` and its value(s) (the parent's options a child ignores)."""
    out: list[str] = []
    skipping = False
    for arg in argv:
        if arg == name or arg.startswith(name + "="):
            skipping = arg == name
            continue
        if skipping and not arg.startswith("--"):
            if not many:
                skipping = False
            continue
        skipping = False
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
