"""Tests for ``funcsparse.demo.run_demo`` and the ``python -m funcsparse`` command line."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from typing import Any

import pytest
import torch

import funcsparse as fs
from funcsparse.__main__ import main
from funcsparse.demo import run_demo

STEPS = 60


def _blocks_pruned(rows: int, cols: int, level: float, block: tuple[int, int] = (1, 4)) -> int:
    """Entries WeightNorm zeroes at ``level`` (whole blocks; see its docstring)."""
    n_blocks = math.ceil(rows / block[0]) * math.ceil(cols / block[1])
    if level >= 1:
        return rows * cols
    k = max(0, min(n_blocks - 1, round(level * n_blocks)))
    return k * block[0] * block[1]


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return run_demo(seed=0, steps=STEPS, sparsity=0.5, out=io.StringIO())


def test_accuracies_are_sane(result: dict[str, Any]) -> None:
    assert result["dense_accuracy"] > 0.6  # chance is 0.25
    assert result["final_accuracy"] > 0.6


def test_pruning_is_gradual_and_follows_the_schedule(result: dict[str, Any]) -> None:
    """Masks change on the schedule's update steps, the level rises to the full one, and
    the sparsity reached at each update is nondecreasing and ends at the target."""
    schedule = fs.schedules.polynomial(begin_step=12, end_step=42, every=6)
    updates = result["updates"]
    assert [u["step"] for u in updates] == [12, 18, 24, 30, 36, 42]
    assert [u["fraction"] for u in updates] == [schedule(u["step"]) for u in updates]
    reached = [u["sparsity"] for u in updates]
    assert reached == sorted(reached) and reached[0] == 0.0 and reached[-1] == 0.5
    assert 0.0 < reached[2] < 0.5


def test_the_schedule_levels_are_printed() -> None:
    buffer = io.StringIO()
    run_demo(seed=0, steps=STEPS, sparsity=0.5, out=buffer)
    lines = [line for line in buffer.getvalue().splitlines() if line.lstrip().startswith("step")]
    assert len(lines) == 6
    assert lines[-1].startswith("  step   42: schedule 1.000 x sparsity 0.5 -> 50.00% of the")


@pytest.mark.parametrize("level", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("steps", [2, 20])
def test_sparsity_is_what_weightnorm_promises(level: float, steps: int) -> None:
    res = run_demo(seed=1, steps=steps, sparsity=level, out=io.StringIO())
    layers = res["layers"]
    assert [layer["path"] for layer in layers] == ["0.weight", "2.weight", "4.weight"]
    assert [layer["shape"] for layer in layers] == [(128, 32), (128, 128), (4, 128)]
    for layer in layers:
        rows, cols = layer["shape"]
        assert layer["total"] == rows * cols
        assert layer["total"] - layer["kept"] == _blocks_pruned(rows, cols, level)
        assert layer["sparsity"] == pytest.approx(1 - layer["kept"] / layer["total"])


def test_deterministic(result: dict[str, Any]) -> None:
    again = run_demo(seed=0, steps=STEPS, sparsity=0.5, out=io.StringIO())
    assert again == result
    other = run_demo(seed=1, steps=STEPS, sparsity=0.5, out=io.StringIO())
    assert other["dense_accuracy"] != result["dense_accuracy"]  # the seed matters


def test_restores_thread_count() -> None:
    threads = torch.get_num_threads()
    run_demo(seed=0, steps=1, out=io.StringIO())
    assert torch.get_num_threads() == threads


def test_main_demo_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "0", "--steps", str(STEPS), "--sparsity", "0.5"]) == 0
    printed = capsys.readouterr().out
    for text in ("accuracy when pruning began", "final accuracy", "schedule", "sparsity"):
        assert text in printed
    for row in ("0.weight", "2.weight", "4.weight"):
        assert any(line.startswith(row) and "50.00%" in line for line in printed.splitlines())
    # the CLI prints what run_demo prints
    buffer = io.StringIO()
    run_demo(seed=0, steps=STEPS, sparsity=0.5, out=buffer)
    assert printed == buffer.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"sparsity": 1.5}, ValueError),
        ({"sparsity": -0.1}, ValueError),
        ({"sparsity": float("nan")}, ValueError),
        ({"sparsity": "0.5"}, TypeError),
        ({"sparsity": True}, TypeError),
        ({"steps": 0}, ValueError),
        ({"steps": 2.0}, TypeError),
        ({"seed": -1}, ValueError),
        ({"seed": None}, TypeError),
        ({"out": None}, TypeError),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        run_demo(**{"steps": 1, "out": io.StringIO(), **kwargs})


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["demo", "--sparsity", "2"],
        ["demo", "--sparsity", "abc"],
        ["demo", "--steps", "0"],
        ["demo", "--unknown"],
    ],
)
def test_main_bad_arguments_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_main_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    assert "--sparsity" in capsys.readouterr().out


def test_the_command_line_starts_without_warnings() -> None:
    # torch's CPU wheels warn "Failed to initialize NumPy" at import when numpy is missing;
    # the README's set-up installs the `demo` extra (numpy), so a user sees no warning.
    done = subprocess.run(
        [sys.executable, "-W", "default", "-m", "funcsparse", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--sparsity" in done.stdout
    assert done.stderr == ""
