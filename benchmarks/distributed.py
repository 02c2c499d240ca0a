"""Benchmark: masks of the 84.9M-weight stack on 1 rank vs 2 gloo ranks (DTensor ``Shard(0)``).

What it measures
----------------
For each case, ``fs.compute_masks(params, {"**.weight": method})`` over every weight of the
stack of ``benchmarks/masks.py`` (12 blocks of bias-free ``nn.Linear`` layers, 84.9M float32
weights in 72 tensors; ``--quick``: 2 blocks of width 128, 0.39M weights) in these settings:

* ``1 rank``: plain tensors in one process, the single-process methods, with torch's
  default thread count (every core: 2 here), and again with 1 thread (``--one-rank-threads``
  picks the counts). On a busy machine, 2 threads can be much slower than 1: an intra-op
  parallel region waits for its slowest thread, and another process may hold that core;
* ``2 ranks``: two processes (``torch.multiprocessing`` spawn, gloo on CPU, one torch
  thread each), every weight a DTensor placed ``Shard(0)`` on a 1-D mesh of 2 ranks; the
  masks come back as DTensors, selected through ``funcsparse.distributed``'s collectives.

Cases: ``Magnitude(0.5)``, ``WeightNorm(0.5, sparse_block_shape=(1, 1))`` (its block level
ranked across the ranks) and ``GlobalMagnitude(0.5)`` (one selection over all 72 weights).
The weights are filled with ``normal_`` (seeded per leaf): not tie-free, so the check below
also covers the tie rule.

Per case and setting, it reports:

* time: the median wall time of ``--repeats`` calls (for 2 ranks, the slower rank's; a
  barrier starts both ranks together);
* peak extra memory per rank: the growth of ``VmHWM`` over ``VmRSS`` during the call, after
  ``gc.collect()``, glibc ``malloc_trim`` and a peak reset (``echo 5 > clear_refs``), as
  ``benchmarks/memory.py`` measures it (the largest over the repeats);
* bytes communicated per mask computation, per rank: ``funcsparse.distributed.counting()``
  (the payload this rank contributed to the collectives), and its ratio to the weights'
  bytes (the whole stack's, and this rank's shard's).

All settings run in the same two spawned processes, alternately: every repeat runs the
1-rank calls on rank 0 (rank 1 waits in a barrier; its CPU time while waiting is recorded,
to show it takes no core from rank 0) and the 2-rank call on both ranks, the order reversed
on odd repeats. One untimed call of each side comes first (warm-up).

After timing, the 2-rank masks are checked against the 1-rank masks without gathering
them: per leaf, the count of pruned entries, the sum of their flat indices in the full
tensor and a sum of a hash of those indices (each rank sums over its piece; the sums are
all-reduced outside the counted region), plus ``full_tensor()`` of the first and the last
leaf compared with ``torch.equal``. ``identical`` is True when all of them agree.

Usage::

    python benchmarks/distributed.py [--repeats N] [--quick] [--out PATH]
        [--one-rank-threads N ...] [--timeout S]

Results are printed as a table and written as JSON (default
``benchmarks/results/distributed.json``); the exit status is 1 if a case's masks differ or
a run fails. A method without a sharded strategy is reported as missing, and a case that
sends more than ``COMM_BOUND`` (1%) of the weights' bytes per rank is flagged in a note.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _harness import (
    load_masks_benchmark,
    machine_info,
    release_free_heap,
    reset_peak,
    status_kib,
    write_payload,
)

import funcsparse as fs

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "distributed.json"
WORLD = 2
SEED = 0
RULES_KEY = "**.weight"
# The issue asks for bytes sent that are a tiny fraction of the weights: flagged above this.
COMM_BOUND = 0.01
# name -> factory of the method
CASES: dict[str, Callable[[], Any]] = {
    "Magnitude(0.5)": lambda: fs.Magnitude(0.5),
    "WeightNorm(0.5, (1,1))": lambda: fs.WeightNorm(0.5, sparse_block_shape=(1, 1)),
    "GlobalMagnitude(0.5)": lambda: fs.GlobalMagnitude(0.5),
}
# Odd 64-bit multiplier for the index hash (0x9E3779B97F4A7C15 as a signed int64).
_HASH_MUL = -7046029254386353131


# --- the stack -------------------------------------------------------------------------------


def stack_shapes(quick: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the stack's weights (``masks.py``'s ``Block``, built on meta)."""
    masks_bench = load_masks_benchmark()
    layers, width, hidden = (2, 128, 512) if quick else (12, 768, 3072)
    with torch.device("meta"):
        model = torch.nn.Sequential(*(masks_bench.Block(width, hidden) for _ in range(layers)))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def make_leaf(shape: tuple[int, ...], index: int) -> torch.Tensor:
    """Leaf ``index`` of the stack: seeded normal values, the same on every rank."""
    generator = torch.Generator().manual_seed(SEED * 1000 + index)
    return torch.empty(shape).normal_(generator=generator)


def row_offset(rows: int, rank: int, world: int) -> int:
    """The first row of ``rank``'s piece under ``Shard(0)`` (``torch.chunk``'s split)."""
    chunk = -(-rows // world)
    return min(rank * chunk, rows)


# --- fingerprints of masks (no gather) --------------------------------------------------------


def fingerprint(mask: torch.Tensor, offset: int) -> torch.Tensor:
    """``[pruned count, sum of flat indices, sum of hashed flat indices]`` (int64, wrapping),
    the indices of ``mask``'s pruned entries shifted by ``offset`` (the piece's start)."""
    index = mask.reshape(-1).logical_not().nonzero().squeeze(1) + offset
    hashed = index * _HASH_MUL
    hashed = hashed ^ (hashed >> 29)
    return torch.stack([torch.tensor(index.numel()), index.sum(), hashed.sum()])


# --- one measured call ------------------------------------------------------------------------


def measured(call: Callable[[], Any]) -> tuple[float, int, Any]:
    """Seconds, peak extra bytes (VmHWM growth over VmRSS) and result of ``call()``."""
    gc.collect()
    release_free_heap()
    if not reset_peak():
        raise RuntimeError("clear_refs did not reset VmHWM (kernel too old?)")
    before = status_kib("VmRSS")
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    extra = max(0, status_kib("VmHWM") - before) * 1024
    return seconds, extra, out


# --- the ranks --------------------------------------------------------------------------------


class _Sides:
    """One case on one rank: the 1-rank and 2-rank calls, their records and last masks."""

    def __init__(
        self,
        rank: int,
        rules: dict[str, Any],
        plain: dict[str, torch.Tensor],
        sharded: dict[str, Any],
        result: dict[str, Any],
    ) -> None:
        self.rank, self.rules = rank, rules
        self.plain, self.sharded, self.result = plain, sharded, result
        self.one_masks: Any = None
        self.two_masks: Any = None

    def run_one(self, record: bool, threads: int) -> None:
        """The single-process call on rank 0 with ``threads`` torch threads; the other ranks
        wait in a barrier."""
        import torch.distributed as dist

        one = self.result["one"].setdefault(str(threads), _one_record())
        dist.barrier()
        if self.rank != 0:
            cpu = time.process_time()
            dist.barrier()
            if record:
                one["idle_rank_cpu_s"].append(time.process_time() - cpu)
            return
        self.one_masks = None
        torch.set_num_threads(threads)
        try:
            seconds, extra, self.one_masks = measured(
                lambda: fs.compute_masks(self.plain, self.rules)
            )
        finally:
            torch.set_num_threads(1)
        if record:
            one["seconds"].append(seconds)
            one["extra_bytes"].append(extra)
        dist.barrier()

    def run_two(self, record: bool) -> None:
        """The sharded call on every rank, its collectives counted."""
        import torch.distributed as dist

        from funcsparse.distributed import counting

        two = self.result["two"]
        self.two_masks = None
        dist.barrier()
        with counting() as traffic:
            seconds, extra, self.two_masks = measured(
                lambda: fs.compute_masks(self.sharded, self.rules)
            )
        if record:
            two["seconds"].append(seconds)
            two["extra_bytes"].append(extra)
            two["comm_bytes"].append(traffic.bytes)
            two["comm_calls"].append(traffic.calls)

    def compare(self, names: list[str], offsets: dict[str, int]) -> None:
        """Record on rank 0 whether the last 2-rank masks equal the last 1-rank masks."""
        import torch.distributed as dist

        mine = torch.stack([fingerprint(self.two_masks[n].to_local(), offsets[n]) for n in names])
        dist.all_reduce(mine, op=dist.ReduceOp.SUM)  # outside counting(): not reported
        ends = (names[0], names[-1])
        gathered = [self.two_masks[n].full_tensor() for n in ends]
        if self.rank == 0:
            want = torch.stack([fingerprint(self.one_masks[n], 0) for n in names])
            same = [bool(torch.equal(mine[i], want[i])) for i in range(len(names))]
            same_ends = [
                bool(torch.equal(got, self.one_masks[n]))
                for got, n in zip(gathered, ends, strict=True)
            ]
            self.result["identical"] = all(same) and all(same_ends)
            self.result["differing_leaves"] = [
                n for n, s in zip(names, same, strict=True) if not s
            ] + [f"{n} (full_tensor)" for n, s in zip(ends, same_ends, strict=True) if not s]
            self.result["pruned_one_rank"] = int(want[:, 0].sum())
            self.result["pruned_two_ranks"] = int(mine[:, 0].sum())
        self.one_masks = self.two_masks = None


def _one_record() -> dict[str, list[float]]:
    return {"seconds": [], "extra_bytes": [], "idle_rank_cpu_s": []}


def worker(rank: int, world: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Build the stack, run every case in both settings, check the masks; return the runs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    shapes = stack_shapes(settings["quick"])
    plain: dict[str, torch.Tensor] = {}
    sharded: dict[str, DTensor] = {}
    offsets: dict[str, int] = {}
    for index, (name, shape) in enumerate(shapes.items()):
        full = make_leaf(shape, index)
        if rank == 0:
            plain[name] = full
        local = full.chunk(world, 0)[rank].clone()
        sharded[name] = DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride()
        )
        offsets[name] = row_offset(shape[0], rank, world) * (full.numel() // shape[0])
        del full
    weight_bytes = sum(4 * torch.Size(s).numel() for s in shapes.values())
    shard_bytes = sum(p.to_local().numel() * 4 for p in sharded.values())

    runs: list[dict[str, Any]] = []
    for case, make in CASES.items():
        result: dict[str, Any] = {
            "case": case,
            "one": {},
            "two": {"seconds": [], "extra_bytes": [], "comm_bytes": [], "comm_calls": []},
        }
        runs.append(result)
        sides = _Sides(rank, {RULES_KEY: make()}, plain, sharded, result)
        threads = [int(t) for t in settings["one_rank_threads"]]
        try:
            sides.run_two(False)  # warm-up
        except ValueError as err:
            # A method without a sharded strategy is refused on every rank alike, before
            # any collective: report it, and time the 1-rank side alone.
            result["two_error"] = f"{type(err).__name__}: {err}"
        sides.run_one(False, threads[0])  # warm-up
        for repeat in range(settings["repeats"]):
            order: list[Callable[[bool], None]] = [
                functools.partial(sides.run_one, threads=t) for t in threads
            ]
            if "two_error" not in result:
                order.append(sides.run_two)
            for run in order if repeat % 2 == 0 else order[::-1]:
                run(True)
        if "two_error" not in result:
            sides.compare(list(shapes), offsets)
        del sides
        gc.collect()
    return {
        "rank": rank,
        "weight_bytes": weight_bytes,
        "shard_bytes": shard_bytes,
        "n_weights": len(shapes),
        "n_params": weight_bytes // 4,
        "runs": runs,
    }


def _entry(rank: int, world: int, store: str, out: str, settings: dict[str, Any]) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=settings["collective_timeout"]),
    )
    try:
        result = worker(rank, world, settings)
    except BaseException:
        result = {"rank": rank, "error": traceback.format_exc()}
        raise
    finally:
        Path(out, f"{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def spawn_ranks(settings: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Run :func:`worker` on ``WORLD`` gloo ranks; every rank's result (or its error)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(  # type: ignore[attr-defined, no-untyped-call]
            _entry,
            args=(WORLD, os.path.join(tmp, "store"), tmp, settings),
            nprocs=WORLD,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        failure = None
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    failure = f"ran past {timeout:.0f} s"
                    break
        except Exception as err:  # a rank raised: its traceback is in its file
            failure = f"{type(err).__name__}: {str(err).strip().splitlines()[-1:]}"
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        results = []
        for rank in range(WORLD):
            path = Path(tmp, f"{rank}.json")
            if path.exists():
                results.append(json.loads(path.read_text()))
            else:
                results.append({"rank": rank, "error": failure or "no result"})
        return results


def source_state() -> dict[str, Any]:
    """The checkout measured: HEAD's commit and the files of ``funcsparse/`` that differ."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "funcsparse")
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "funcsparse_changes": [line[3:] for line in changed.splitlines()],
    }


# --- the table -------------------------------------------------------------------------------


def summarise(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case and setting, from every rank's runs."""
    weight_bytes = ranks[0]["weight_bytes"]
    rows = []
    for i, first in enumerate(ranks[0]["runs"]):
        per_rank = [r["runs"][i] for r in ranks]
        case = first["case"]
        for threads, one in first["one"].items():
            rows.append(
                {
                    "case": case,
                    "ranks": 1,
                    "threads_per_rank": int(threads),
                    "seconds": one["seconds"],
                    "seconds_median": statistics.median(one["seconds"]),
                    "extra_bytes_per_rank": [one["extra_bytes"]],
                    "peak_extra_mib_per_rank": [max(one["extra_bytes"]) / 2**20],
                    "weight_bytes_per_rank": [weight_bytes],
                    "idle_rank_cpu_s": per_rank[1]["one"][threads]["idle_rank_cpu_s"],
                    "comm_bytes_per_rank": [0],
                }
            )
        if "two_error" in first:
            rows.append({"case": case, "ranks": WORLD, "missing": first["two_error"]})
            continue
        two = [r["two"] for r in per_rank]
        # A call ends when its slower rank ends: the time per repeat is the max over ranks.
        seconds = [max(s) for s in zip(*(t["seconds"] for t in two), strict=True)]
        comm = [max(t["comm_bytes"]) for t in two]
        rows.append(
            {
                "case": case,
                "ranks": WORLD,
                "threads_per_rank": 1,
                "seconds": seconds,
                "seconds_median": statistics.median(seconds),
                "seconds_per_rank": [t["seconds"] for t in two],
                "extra_bytes_per_rank": [t["extra_bytes"] for t in two],
                "peak_extra_mib_per_rank": [max(t["extra_bytes"]) / 2**20 for t in two],
                "weight_bytes_per_rank": [r["shard_bytes"] for r in ranks],
                "comm_bytes_per_rank": comm,
                "comm_bytes_all_repeats": [t["comm_bytes"] for t in two],
                "comm_calls_per_rank": [max(t["comm_calls"]) for t in two],
                "comm_over_weight_bytes": max(comm) / weight_bytes,
                "comm_within_bound": max(comm) / weight_bytes <= COMM_BOUND,
                "comm_over_shard_bytes": max(
                    c / r["shard_bytes"] for c, r in zip(comm, ranks, strict=True)
                ),
                "identical": first.get("identical"),
                "differing_leaves": first.get("differing_leaves"),
                "pruned_one_rank": first.get("pruned_one_rank"),
                "pruned_two_ranks": first.get("pruned_two_ranks"),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'method':<24}{'ranks':>6}{'threads':>8}{'median s':>10}{'range s':>15}"
        f"{'peak extra MiB/rank':>21}{'x shard':>12}{'sent B/rank':>23}"
        f"{'sent/W':>9}  identical"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "missing" in r:
            print(f"{r['case']:<24}{r['ranks']:>6}{'':>8}  missing: {r['missing'][:100]}")
            continue
        spread = f"{min(r['seconds']):.2f}-{max(r['seconds']):.2f}"
        mib = "/".join(f"{m:.0f}" for m in r["peak_extra_mib_per_rank"])
        over = "/".join(
            f"{m * 2**20 / w:.2f}"
            for m, w in zip(r["peak_extra_mib_per_rank"], r["weight_bytes_per_rank"], strict=True)
        )
        sent = "/".join(f"{c:,}" for c in r["comm_bytes_per_rank"]) if r["ranks"] > 1 else "-"
        ratio = f"{r['comm_over_weight_bytes']:.1e}" if r["ranks"] > 1 else "-"
        same = str(r["identical"]) if r["ranks"] > 1 else ""
        print(
            f"{r['case']:<24}{r['ranks']:>6}{r['threads_per_rank']:>8}"
            f"{r['seconds_median']:>10.2f}{spread:>15}"
            f"{mib:>21}{over:>12}{sent:>23}{ratio:>9}  {same}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls per case and setting (default 5)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 blocks of width 128 (0.39M weights; smoke run)"
    )
    parser.add_argument(
        "--out",
        "--json",
        dest="json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"output path (default {DEFAULT_JSON})",
    )
    parser.add_argument(
        "--one-rank-threads",
        type=int,
        nargs="+",
        default=None,
        help="torch threads of the 1-rank runs (default: torch's default, and 1 if that differs)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before the run is killed"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.one_rank_threads is not None and min(args.one_rank_threads) < 1:
        parser.error("--one-rank-threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = {**machine_info(), **source_state()}
    shapes = stack_shapes(args.quick)
    n_params = sum(torch.Size(s).numel() for s in shapes.values())
    settings = {
        "quick": args.quick,
        "repeats": args.repeats,
        "one_rank_threads": args.one_rank_threads
        or sorted({info["torch_num_threads"], 1}, reverse=True),
        "collective_timeout": min(args.timeout, 1800.0),
    }
    threads = "/".join(map(str, settings["one_rank_threads"]))
    print(
        f"torch {info['torch']}, {info['cpu_count']} cores, {info['platform']}; "
        f"{len(shapes)} weights, {n_params / 1e6:.2f}M params; 1 rank ({threads} threads) vs "
        f"{WORLD} gloo ranks (1 thread each), {args.repeats} repeats "
        f"(load average {info['loadavg_1m']:.2f})",
        flush=True,
    )
    start = time.perf_counter()
    ranks = spawn_ranks(settings, args.timeout)
    wall = time.perf_counter() - start
    info["loadavg_1m_after"] = os.getloadavg()[0]
    errors = [r for r in ranks if "error" in r]
    payload: dict[str, Any] = {
        "benchmark": "distributed",
        "settings": {
            **{k: v for k, v in settings.items() if k != "collective_timeout"},
            "world": WORLD,
            "threads_per_rank": 1,
            "placement": "Shard(0) on a 1-D mesh",
            "backend": "gloo",
            "memory": "VmHWM growth over VmRSS after malloc_trim and clear_refs, per call",
            "time": "median over repeats; 2 ranks: the slower rank per repeat",
            "comm_bytes": "funcsparse.distributed.counting(): payload this rank contributed",
            "comm_bound_over_w": COMM_BOUND,
        },
        "machine": info,
        "wall_s": wall,
    }
    if errors:
        payload["errors"] = errors
        write_payload(args.json, payload)
        for r in errors:
            print(f"rank {r['rank']} failed:\n{r['error']}")
        return 1
    rows = summarise(ranks)
    print()
    print_table(rows)
    payload.update(
        {
            "n_weights": ranks[0]["n_weights"],
            "n_params": ranks[0]["n_params"],
            "weight_bytes": ranks[0]["weight_bytes"],
            "shard_bytes_per_rank": [r["shard_bytes"] for r in ranks],
            "cases": rows,
            "identical": all(r["identical"] for r in rows if r["ranks"] > 1 and "missing" not in r),
            "missing": [r["case"] for r in rows if "missing" in r],
        }
    )
    write_payload(args.json, payload)
    over = [r["case"] for r in rows if r.get("comm_within_bound") is False]
    if over:
        print(f"\nNOTE: sent more than {COMM_BOUND:.0%} of the weights' bytes: {', '.join(over)}")
    if payload["missing"]:
        print(f"NOTE: no sharded strategy: {', '.join(payload['missing'])}")
    print(f"\nwrote {args.json} ({wall:.0f} s)")
    if not payload["identical"]:
        print("ERROR: the 2-rank masks differ from the 1-rank masks")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
