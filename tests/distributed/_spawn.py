"""Run a function on several gloo ranks (CPU processes) from pytest, with timeouts.

Every collective times out after ``COLLECTIVE_TIMEOUT`` seconds (the process group's
timeout), and the whole run after ``timeout``: a hang fails the test, it never stalls CI.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = 60.0


def _entry(
    rank: int, world: int, store: str, out: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT),
    )
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 240.0
) -> list[Any]:
    """``fn(rank, world, *args)`` on ``world`` gloo ranks; every rank's return value.

    ``fn`` must be importable (a module-level function) and return what ``torch.save``
    can write. A rank that raises fails the run with its traceback; a run longer than
    ``timeout`` seconds is killed and raises TimeoutError.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        context = mp.start_processes(
            _entry,
            args=(world, store, tmp, fn, args),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"run_ranks: {fn.__name__} on {world} ranks ran past {timeout} s"
                    )
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        return [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False) for r in range(world)]
