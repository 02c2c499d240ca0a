"""Benchmark: dynamic sparse training on digits, static sparse vs SET vs RigL (and dense).

What it measures
----------------
Test accuracy (and test loss) of an MLP trained from scratch on the demo's data
(``funcsparse.demo_data``: the 1797 8x8 digits, the fixed split ``split(seed=0)``: 1438
train, 359 test) under one step budget, five ways:

* ``dense``: no mask (the ceiling).
* ``static``: a random sparse mask from init (``fs.Random`` at the per-layer levels), never
  changed: the sparse-from-scratch baseline.
* ``set``: ``fs.SET`` (Mocanu et al. 2018): every ``--every`` steps drop the smallest-|w|
  kept weights (``drop_fraction=0.3`` of them) and grow as many at random pruned positions.
* ``rigl``: ``fs.RigL`` (Evci et al. 2020): drop the same way with the cosine-decayed
  fraction (0.3 at the start), grow where the dense gradient is largest.

at 80% and 90% sparsity of the three weights (biases dense). ``static``, ``set`` and
``rigl`` start from the very same mask (SET's and RigL's initial mask is ``fs.Random``'s
from the same seed and leaf path), the same initial weights and the same minibatches, so
the runs of one seed differ only in how the mask moves; the paired differences per seed are
reported beside the means.

The model and the loop
----------------------
The MLP 64-256-256-10 (ReLU), 84,480 weights. Levels per layer: Erdos-Renyi-Kernel
(``fs.distributions.erk``, the RigL paper's choice; ``--distribution uniform`` for the same
level everywhere), exact in total: ``round(s * 84480)`` pruned weights, apportioned to the
layers, turned into rules by ``fs.distributions.level_rules``. SET and RigL update every
``--every`` steps up to ``end_step`` = 75% of the steps (the RigL paper's T_end; SET gets
the same interval and end so that both fine-tune their last mask equally long).

Init: PyTorch's ``nn.Linear`` init, then, once the initial mask is applied, each sparse
layer's kept weights scaled by ``1 / sqrt(density)`` (the layer's output keeps the dense
init's scale; ``--init dense`` skips it). Without it a 90% sparse MLP starts with its signal
shrunk about fourfold in the middle layer, which handicaps the static mask most: with
``--init dense`` (seeds 0..2, ``results/dynamic-init-dense.json``) static's final training
loss at 90% is 0.035 instead of 0.021 and RigL's the same (0.007), so the scaled init is
the stronger baseline.

Optimizer: ``torch.optim.SGD`` with momentum 0.9 (the RigL paper's), learning rate
``--lr`` (0.1) with a cosine decay to 0 over the run, batch 64. One step::

    loss(model(x)).backward()                   # params are projected: a masked forward,
    grads = {k: p.grad ...}                     # and p.grad is dense (pruned weights too)
    new, state = pruner.update(params, state, grads=grads)
    reset_optimizer_state_(opt, params, new & ~old)   # grown: no stale momentum
    opt.step(); fs.apply_masks_(params, new)    # pruned weights back to 0

The params are kept projected (pruned weights exactly 0), so the plain forward is the
masked forward and the gradient with respect to the params is the dense gradient RigL
needs (the docstring's "with respect to the masked params"); a weight that grows was 0, so
it starts at zero. The momentum buffer holds dense gradients at pruned positions (the
optimizer steps every weight, the projection zeroes the pruned ones again): the reset at
grown positions is what keeps that history from leaking into a new connection.

The script checks, on every run, that each layer's pruned count is the level's exact count
after every mask update (and that the total is ``round(s * 84480)``), that every grown
weight was 0 when it grew, and that static, SET and RigL of one seed and level start from
the same mask; it exits with status 1 otherwise.

Usage::

    python benchmarks/dynamic.py [--seeds 6] [--first-seed 0] [--steps 1000] [--every 50] [--lr 0.1]
                                 [--distribution erk|uniform] [--init scaled|dense]
                                 [--threads 1]
                                 [--json PATH] [--quick]
    python benchmarks/dynamic.py --markdown benchmarks/results/dynamic-run*.json

Output: a table per cell (test accuracy mean +- std and min..max over the seeds, test loss,
final training loss over the whole training set, the pruned count, ``kept0``: the share of
the final kept positions that the initial mask kept, ``redrop``: the share of the weights
grown at one update that the next update drops again, seconds per run), the paired
differences, and JSON (default ``benchmarks/results/dynamic.json``). ``--quick``: 2 seeds,
200 steps (a smoke run). ``--markdown A.json B.json ...`` prints the Markdown table of
docs/dynamic.md from several runs' JSON (each figure as the range over the runs) and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _harness import git_head, machine_info, write_payload
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.demo_data import N_CLASSES, N_PIXELS, load_digits, split

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "dynamic.json"
HIDDEN = 256
BATCH = 64
MOMENTUM = 0.9
DROP_FRACTION = 0.3
LEVELS = (0.8, 0.9)
METHODS = ("static", "set", "rigl")

Params = dict[str, Tensor]
Masks = dict[str, Tensor | None]


def make_model(seed: int) -> nn.Sequential:
    """The MLP 64-256-256-10, initialised from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(N_PIXELS, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, N_CLASSES),
        )


def make_levels(params: dict[str, Any], level: float, distribution: str) -> dict[str, float]:
    """Per-layer levels over the three weights, exact in total."""
    weights = {k: v for k, v in params.items() if k.endswith("weight")}
    if distribution == "erk":
        return fs.distributions.erk(weights, sparsity=level)
    return fs.distributions.uniform(weights, sparsity=level)


def make_pruner(
    method: str, levels: dict[str, float], *, seed: int, every: int, end_step: int
) -> fs.Pruner:
    """The pruner of one cell: fs.Random (static), fs.SET or fs.RigL at ``levels``."""
    template: fs.Random | fs.SET | fs.RigL
    if method == "static":
        template = fs.Random(0.5, seed=seed)
    elif method == "set":
        template = fs.SET(
            0.5, drop_fraction=DROP_FRACTION, every=every, end_step=end_step, seed=seed
        )
    else:
        template = fs.RigL(
            0.5, drop_fraction=DROP_FRACTION, every=every, end_step=end_step, seed=seed
        )
    return fs.Pruner(fs.distributions.level_rules(levels, template))


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy."""
    with torch.no_grad():
        logits = model(x)
    acc = float((logits.argmax(dim=1) == y).float().mean())
    return acc, float(nn.functional.cross_entropy(logits, y))


def pruned(masks: Masks) -> dict[str, int]:
    """Pruned entries per masked leaf."""
    return {k: int((~m).sum()) for k, m in masks.items() if m is not None}


def train(
    method: str,
    level: float | None,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One run; returns its record. ``level=None`` (or ``method == 'dense'``): no masks."""
    x_train, y_train, x_test, y_test = data
    model = make_model(seed)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    end_step = (3 * args.steps) // 4
    pruner = state = None
    problems: list[str] = []
    levels: dict[str, float] = {}
    expected: dict[str, int] = {}
    if method != "dense":
        assert level is not None
        levels = make_levels(params, level, args.distribution)
        expected = {k: round(v * params[k].numel()) for k, v in levels.items()}
        target = round(level * sum(params[k].numel() for k in levels))
        if sum(expected.values()) != target:
            problems.append(f"levels prune {sum(expected.values())} weights, not {target}")
        pruner = make_pruner(method, levels, seed=seed, every=args.every, end_step=end_step)
        state = pruner.init(params)
    masks: Masks = dict.fromkeys(params)
    initial: Masks = {}
    updates = grown_total = redropped = 0
    last_grown: Masks = {}
    start = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:  # cosine decay to 0 over the run
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        batch = torch.randint(0, x_train.shape[0], (BATCH,), generator=generator)
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
        if pruner is not None:
            grads = {k: p.grad for k, p in params.items()}
            new, state = pruner.update(params, state, grads=grads)
            if step == 0:
                initial = new
                with torch.no_grad():  # the first forward was dense: project, recompute
                    fs.apply_masks_(params, new)
                    if args.init == "scaled":  # keep each layer's output scale
                        for k, m in new.items():
                            if m is not None and bool(m.any()):
                                params[k].mul_((m.numel() / m.sum()).sqrt())
                optimizer.zero_grad(set_to_none=False)
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            elif new is not masks:
                grown = {k: None if m is None else m & ~masks[k] for k, m in new.items()}
                fs.reset_optimizer_state_(optimizer, params, grown)
                updates += 1
                for k, g in grown.items():
                    if g is not None:
                        grown_total += int(g.sum())
                        previous = last_grown.get(k)
                        if previous is not None:  # grown last update, dropped at this one
                            redropped += int((previous & ~new[k]).sum())
                        if bool(params[k].detach()[g].any()):
                            problems.append(f"step {step}: a grown weight of {k} was not 0")
                last_grown = grown
            if pruned(new) != expected:
                problems.append(f"step {step}: pruned {pruned(new)}, expected {expected}")
            masks = new
        optimizer.step()
        if pruner is not None:
            with torch.no_grad():
                fs.apply_masks_(params, masks)
    seconds = time.perf_counter() - start
    acc, loss = evaluate(model, x_test, y_test)
    train_acc, train_loss = evaluate(model, x_train, y_train)
    counts = pruned(masks)
    zeros = sum(int((params[k] == 0).sum()) for k in counts)
    still = 0
    kept = 0
    for k, m in masks.items():
        first = initial.get(k)
        if m is not None and first is not None:
            still += int((m & first).sum())
            kept += int(m.sum())
    return {
        "method": method,
        "level": level,
        "seed": seed,
        "test_accuracy": acc,
        "test_loss": loss,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        "seconds": seconds,
        "pruned": sum(counts.values()),
        "pruned_per_leaf": counts,
        "levels": levels,
        "zero_weights": zeros,
        "mask_updates": updates,
        "grown_total": grown_total,
        "redropped": redropped
        / (grown_total - sum(int(g.sum()) for g in last_grown.values() if g is not None))
        if updates > 1
        else None,
        "kept_from_initial": still / kept if kept else None,
        "initial_mask_checksum": sum(
            int(torch.nonzero(~m.flatten()).sum()) * (i + 1)
            for i, m in enumerate(initial.values())
            if m is not None
        ),
        "problems": problems,
    }


def summary(values: list[float]) -> dict[str, float]:
    """Mean, sample std, min and max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _span(values: list[float], scale: float, digits: int) -> str:
    """``a`` or ``a..b``: the range of ``values`` (scaled, rounded) over several runs."""
    low, high = (format(scale * v, f".{digits}f") for v in (min(values), max(values)))
    return low if low == high else f"{low}..{high}"


def _seeds(payload: dict[str, Any]) -> str:
    """A run's seeds as ``first..last``."""
    first = payload["config"].get("first_seed", 0)
    return f"{first}..{first + payload['config']['seeds'] - 1}"


def markdown(paths: list[Path]) -> str:
    """The Markdown table of several runs' JSON: each figure's range over the runs."""
    payloads = [json.loads(path.read_text()) for path in paths]
    lines = [
        f"{len(payloads)} runs, seeds "
        + ", ".join(_seeds(payload) for payload in payloads)
        + "; each figure is its range over the runs (min..max: over every run's seeds).",
        "",
        "| method | level | test accuracy % (mean over seeds) | std | min..max over seeds "
        "| test loss | train loss | pruned | kept0 | redrop | s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, row in enumerate(payloads[0]["table"]):
        rows = [payload["table"][i] for payload in payloads]
        acc = [r["test_accuracy"] for r in rows]
        kept0 = [r["kept_from_initial"] for r in rows]
        redrop = [r["redropped"] for r in rows if r.get("redropped") is not None]
        lines.append(
            f"| {row['method']} | {row['level'] or 0:.1f} "
            f"| {_span([a['mean'] for a in acc], 100, 2)} "
            f"| {_span([a['std'] for a in acc], 100, 2)} "
            f"| {100 * min(a['min'] for a in acc):.2f}..{100 * max(a['max'] for a in acc):.2f} "
            f"| {_span([r['test_loss']['mean'] for r in rows], 1, 3)} "
            f"| {_span([r['train_loss']['mean'] for r in rows], 1, 4)} "
            f"| {','.join(str(n) for n in sorted({n for r in rows for n in r['pruned']}))} "
            f"| {'' if kept0[0] is None else _span([k['mean'] for k in kept0], 1, 2)} "
            f"| {_span([k['mean'] for k in redrop], 1, 2) if redrop else ''} "
            f"| {_span([r['seconds']['mean'] for r in rows], 1, 1)} |"
        )
    runs = {
        (r["method"], r["level"], r["seed"]): r for payload in payloads for r in payload["runs"]
    }
    lines += [
        "",
        "Paired by seed (same init, initial mask and batches), over every run's seeds: the "
        "test accuracy difference in points (mean +- std, min..max), the seeds where the "
        "first is more accurate / as accurate, and where its test loss is lower:",
        "",
        "| level | pair | accuracy difference | min..max | more / as accurate "
        "| lower test loss | test loss difference |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in payloads[0]["paired"]:
        a, b = row["pair"].split(" - ")
        pairs = [
            (r, runs[(b, level, seed)])
            for (method, level, seed), r in sorted(runs.items(), key=lambda kv: kv[0][2])
            if method == a and level == row["level"] and (b, level, seed) in runs
        ]
        acc = summary([x["test_accuracy"] - y["test_accuracy"] for x, y in pairs])
        loss = summary([x["test_loss"] - y["test_loss"] for x, y in pairs])
        better = sum(x["test_accuracy"] > y["test_accuracy"] for x, y in pairs)
        same = sum(x["test_accuracy"] == y["test_accuracy"] for x, y in pairs)
        lower = sum(x["test_loss"] < y["test_loss"] for x, y in pairs)
        lines.append(
            f"| {row['level']:.1f} | {row['pair']} "
            f"| {100 * acc['mean']:+.2f} +- {100 * acc['std']:.2f} "
            f"| {100 * acc['min']:+.2f}..{100 * acc['max']:+.2f} "
            f"| {better} / {same} of {len(pairs)} | {lower} of {len(pairs)} "
            f"| {loss['mean']:+.4f} +- {loss['std']:.4f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=6, help="seeds per cell (default 6)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--every", type=int, default=50, help="steps between mask updates")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD's peak learning rate")
    parser.add_argument("--distribution", choices=("erk", "uniform"), default="erk")
    parser.add_argument(
        "--init",
        choices=("scaled", "dense"),
        default="scaled",
        help="sparse layers' init: scaled by 1/sqrt(density) (default) or the dense init as is",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="output path")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 200 steps (smoke run)")
    parser.add_argument(
        "--markdown", type=Path, nargs="+", help="print the Markdown table of these JSON runs"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if args.quick:
        args.seeds, args.steps, args.every = 2, 200, 20
    torch.set_num_threads(args.threads)
    data = split(*load_digits(), seed=0)
    cells = [("dense", None)] + [(m, s) for s in LEVELS for m in METHODS]
    runs: list[dict[str, Any]] = []
    total = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:  # seeds outermost: a cut-short run still pairs
        for method, level in cells:
            record = train(method, level, data, seed=seed, args=args)
            runs.append(record)
            print(
                f"  seed {seed} {method:6} {level or 0:.1f}: acc {record['test_accuracy']:.4f} "
                f"({record['seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    total = time.perf_counter() - total
    table: list[dict[str, Any]] = []
    for method, level in cells:
        rows = [r for r in runs if r["method"] == method and r["level"] == level]
        table.append(
            {
                "method": method,
                "level": level,
                "runs": len(rows),
                "test_accuracy": summary([r["test_accuracy"] for r in rows]),
                "test_loss": summary([r["test_loss"] for r in rows]),
                "train_loss": summary([r["train_loss"] for r in rows]),
                "seconds": summary([r["seconds"] for r in rows]),
                "pruned": sorted({r["pruned"] for r in rows}),
                "kept_from_initial": None
                if method == "dense"
                else summary([r["kept_from_initial"] for r in rows]),
                "redropped": summary([r["redropped"] for r in rows])
                if rows and rows[0]["redropped"] is not None
                else None,
            }
        )
    paired: list[dict[str, Any]] = []
    for level in LEVELS:
        by = {
            m: {r["seed"]: r for r in runs if r["method"] == m and r["level"] == level}
            for m in METHODS
        }
        for a, b in (("rigl", "set"), ("set", "static"), ("rigl", "static")):
            diffs = [
                by[a][s]["test_accuracy"] - by[b][s]["test_accuracy"]
                for s in sorted(by[a])
                if s in by[b]
            ]
            losses = [
                by[a][s]["test_loss"] - by[b][s]["test_loss"] for s in sorted(by[a]) if s in by[b]
            ]
            paired.append(
                {
                    "level": level,
                    "pair": f"{a} - {b}",
                    "accuracy": summary(diffs),
                    "wins": sum(d > 0 for d in diffs),
                    "ties": sum(d == 0 for d in diffs),
                    "seeds": len(diffs),
                    "test_loss": summary(losses),
                }
            )
    n_weights = sum(p.numel() for k, p in make_model(0).named_parameters() if "weight" in k)
    print(
        f"\ndigits MLP 64-256-256-10 ({n_weights} weights), {args.steps} steps, batch {BATCH}, "
        f"SGD momentum {MOMENTUM} lr {args.lr} cosine; {args.distribution} levels; "
        f"SET/RigL every {args.every} until step {(3 * args.steps) // 4}; "
        f"seeds {seeds.start}..{seeds.stop - 1}; {total:.0f} s in all"
    )
    print(
        f"{'method':7} {'level':>5}  {'test acc mean +- std':>21}  {'min..max':>13}  "
        f"{'test loss':>15}  {'train loss':>10}  {'pruned':>6}  {'kept0':>5}  "
        f"{'redrop':>6}  {'s/run':>5}"
    )
    for row in table:
        acc, loss = row["test_accuracy"], row["test_loss"]
        kept0, redrop = row["kept_from_initial"], row["redropped"]
        print(
            f"{row['method']:7} {row['level'] or 0:5.1f}  "
            f"{100 * acc['mean']:7.2f} +- {100 * acc['std']:4.2f} %  "
            f"{100 * acc['min']:5.2f}..{100 * acc['max']:5.2f}  "
            f"{loss['mean']:.3f} +- {loss['std']:.3f}  "
            f"{row['train_loss']['mean']:10.4f}  "
            f"{','.join(map(str, row['pruned'])):>6}  "
            f"{'' if kept0 is None else format(kept0['mean'], '.2f'):>5}  "
            f"{'' if redrop is None else format(redrop['mean'], '.2f'):>6}  "
            f"{row['seconds']['mean']:5.1f}"
        )
    print("\npaired by seed (same init, initial mask, batches): test accuracy difference")
    for row in paired:
        acc = row["accuracy"]
        print(
            f"  {row['level']:.1f} {row['pair']:15} {100 * acc['mean']:+6.2f} +- "
            f"{100 * acc['std']:4.2f} pts (min {100 * acc['min']:+5.2f}, max "
            f"{100 * acc['max']:+5.2f}); wins {row['wins']}/{row['seeds']}, ties {row['ties']}; "
            f"test loss {row['test_loss']['mean']:+.3f}"
        )
    problems = [p for r in runs for p in r["problems"]]
    for seed in seeds:  # static, SET and RigL start from the same mask
        for level in LEVELS:
            sums = {
                r["initial_mask_checksum"]
                for r in runs
                if r["seed"] == seed and r["level"] == level
            }
            if len(sums) != 1:
                problems.append(f"seed {seed}, {level}: the initial masks differ")
    for problem in problems[:20]:
        print("PROBLEM:", problem)
    payload = {
        "benchmark": "dynamic",
        "description": "static sparse (fs.Random) vs fs.SET vs fs.RigL vs dense on digits",
        "config": {
            "model": "MLP 64-256-256-10",
            "weights": n_weights,
            "steps": args.steps,
            "batch": BATCH,
            "optimizer": f"SGD momentum {MOMENTUM}, cosine lr from {args.lr}",
            "every": args.every,
            "end_step": (3 * args.steps) // 4,
            "drop_fraction": DROP_FRACTION,
            "distribution": args.distribution,
            "init": args.init,
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "split": "demo_data.split(seed=0): 1438 train, 359 test",
            "quick": args.quick,
        },
        "total_seconds": total,
        "table": table,
        "paired": paired,
        "runs": runs,
        "machine": machine_info(),
        "funcsparse": {"file": fs.__file__, **git_head()},
    }
    write_payload(args.json, payload)
    print(f"\nwrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
