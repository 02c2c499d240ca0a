"""What the benchmark scripts share: timing one call, the machine's description, and
``benchmarks/masks.py`` (the 84.9M-weight stack and torch.ao helpers) as a module.

Imported by the scripts as ``_harness`` (``python benchmarks/NAME.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import funcsparse as fs

HERE = Path(__file__).resolve().parent


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` took, and its result; ``gc.collect()`` runs first, untimed."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def machine_info() -> dict[str, Any]:
    """Versions, platform, cores, torch threads and the 1-minute load average."""
    return {
        "torch": torch.__version__,
        "funcsparse": fs.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0],
    }


def load_masks_benchmark() -> ModuleType:
    """``benchmarks/masks.py`` as a module (for its model and torch.ao helpers)."""
    spec = importlib.util.spec_from_file_location("_benchmarks_masks", HERE / "masks.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HERE / 'masks.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_payload(path: Path, payload: dict[str, Any]) -> None:
    """Write a benchmark's results as indented JSON, making the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def git_head() -> dict[str, Any]:
    """The checkout's commit and whether funcsparse/ differs from it, for a results file
    (empty when not run from a git checkout, e.g. an installed copy)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "funcsparse"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return {}
    if not head:
        return {}
    return {"git_head": head, "checkout_funcsparse_dirty": bool(dirty)}


def base_parser(
    doc: str | None, default_json: Path, *, repeats: int = 5
) -> argparse.ArgumentParser:
    """A parser with the options every script takes: ``--repeats`` and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n", 1)[0])
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"timed runs per side (default {repeats})"
    )
    parser.add_argument(
        "--json", type=Path, default=default_json, help=f"output path (default {default_json})"
    )
    return parser


# --- peak memory of a call, in a fresh process ---------------------------------------------


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(match.group(1))


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so that the RSS before a
    call is live memory only and every page a call touches shows up as growth."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not support it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_kib("VmHWM") <= status_kib("VmRSS") + 1024
