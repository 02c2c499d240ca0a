"""Tests for the demo: ``funcsparse.demo.run_demo`` and ``python -m funcsparse demo``."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import funcsparse as fs
import funcsparse.demo
from funcsparse.__main__ import main
from funcsparse.demo import CHECKPOINT, INSTALL_HINT, QUICK_SPARSITIES, QUICK_STEPS, run_demo
from funcsparse.demo_data import DIGITS_CREDIT, load_digits, split
from funcsparse.demo_train import schedule

SHAPES = {"0.weight": [256, 64], "2.weight": [256, 256], "4.weight": [10, 256]}


def _quick(**kwargs: Any) -> dict[str, Any]:
    """A run of ``--quick``'s size, one timed repetition, no progress bar."""
    return run_demo(
        steps=QUICK_STEPS, sparsities=QUICK_SPARSITIES, repeats=1, progress=False, **kwargs
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "out"


@pytest.fixture(scope="module")
def printed(folder: Path) -> dict[str, Any]:
    """One quick run that writes files: its summary and what it printed."""
    buffer = io.StringIO()
    rng = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    summary = _quick(out_dir=folder, out=buffer)
    return {
        "summary": summary,
        "text": buffer.getvalue(),
        "rng_untouched": torch.equal(rng, torch.random.get_rng_state()),
        "threads_restored": torch.get_num_threads() == threads,
    }


@pytest.fixture(scope="module")
def summary(printed: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = printed["summary"]
    return result


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in summary.items()
        if key not in {"timing", "files", "checkpoint", "skipped"}
    }


# -- the data ------------------------------------------------------------------------------


def test_the_shipped_digits_load_and_split_by_seed() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    first = split(x, y, seed=0)
    assert [len(part) for part in first] == [1438, 1438, 359, 359]
    assert all(torch.equal(a, b) for a, b in zip(first, split(x, y, seed=0), strict=True))
    assert not torch.equal(first[3], split(x, y, seed=1)[3])
    assert "CC BY 4.0" in DIGITS_CREDIT and "Alpaydin" in DIGITS_CREDIT


def test_the_data_file_is_credited_beside_it() -> None:
    note = (Path(fs.__file__).parent / "data" / "README.md").read_text()
    for text in ("Alpaydin", "Kaynak", "CC BY 4.0", "10.24432/C50P49", "scikit-learn"):
        assert text in note


# -- one quick run -------------------------------------------------------------------------


def test_runs_are_the_sparsities_with_the_dense_baseline(summary: dict[str, Any]) -> None:
    assert [run["sparsity"] for run in summary["runs"]] == [0.0, 0.5, 0.9]
    assert summary["dense_accuracy"] == summary["runs"][0]["accuracy"]
    for run in summary["runs"]:
        assert run["accuracy"] > 0.4  # chance is 0.1; 40 steps
        assert run["accuracy_when_pruning_began"] > 0.2


def test_every_weight_has_the_exact_sparsity(summary: dict[str, Any]) -> None:
    for run in summary["runs"]:
        layers = {layer["path"]: layer for layer in run["layers"]}
        assert [path for path in layers] == [
            "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"
        ]  # fmt: skip
        for path, shape in SHAPES.items():
            layer = layers[path]
            total = shape[0] * shape[1]
            assert layer["shape"] == shape and layer["total"] == total and layer["pruned"]
            assert total - layer["kept"] == round(run["sparsity"] * total)
            assert layer["nonzero"] <= layer["kept"]  # pruned entries are exactly zero
        assert not any(layers[path]["pruned"] for path in layers if path.endswith("bias"))
        assert run["reached"] == pytest.approx(run["sparsity"], abs=1e-4)


def test_pruning_is_gradual_and_follows_the_schedule(summary: dict[str, Any]) -> None:
    plan = schedule(QUICK_STEPS)
    assert plan is not None
    for run in summary["runs"][1:]:
        updates = run["updates"]
        assert [u["step"] for u in updates] == [
            s for s in range(QUICK_STEPS) if plan.is_update_step(s)
        ]
        assert [u["fraction"] for u in updates] == [plan(u["step"]) for u in updates]
        reached = [u["sparsity"] for u in updates]
        assert reached == sorted(reached) and reached[0] == 0.0
        assert 0.0 < reached[len(reached) // 2] < run["sparsity"]
        assert reached[-1] == pytest.approx(run["sparsity"], abs=1e-4)


def test_masks_are_identical_to_torch_ao_and_timed(summary: dict[str, Any]) -> None:
    assert summary["identical"] is True
    assert [t["level"] for t in summary["timing"]] == [0.5, 0.9]
    for t in summary["timing"]:
        assert t["identical"] is True and t["differing"] == [] and t["weights"] == 3
        for key in ("funcsparse", "torch_ao_prepare_step", "torch_ao_step"):
            assert len(t[f"{key}_all_ms"]) == 1 and t[f"{key}_ms"] > 0
        assert t["ratio_step"] == pytest.approx(t["torch_ao_step_ms"] / t["funcsparse_ms"])


def test_files_are_written_and_valid(summary: dict[str, Any], folder: Path) -> None:
    names = {"accuracy.png", "masks.png", CHECKPOINT, "summary.json"}
    assert {path.name for path in folder.iterdir()} == names
    assert summary["files"] == {
        "accuracy": str(folder / "accuracy.png"),
        "masks": str(folder / "masks.png"),
        "checkpoint": str(folder / CHECKPOINT),
        "summary": str(folder / "summary.json"),
    }
    for name in ("accuracy.png", "masks.png"):
        width, height = _png_size(folder / name)
        assert 400 < width < 2000 and 300 < height < 2000
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert "matplotlib.pyplot" not in sys.modules  # Agg canvas only: no global backend
    assert summary["skipped"] == []
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["seed"] == 0 and summary["steps"] == QUICK_STEPS


def test_the_checkpoint_loads_and_is_smaller(summary: dict[str, Any], folder: Path) -> None:
    checkpoint = summary["checkpoint"]
    path = folder / CHECKPOINT
    assert checkpoint["path"] == str(path) and checkpoint["sparsity"] == 0.9
    assert checkpoint["bytes"] == path.stat().st_size
    assert checkpoint["ratio"] == checkpoint["bytes"] / checkpoint["dense_bytes"] < 0.3
    params, masks = fs.load_sparse(path)
    sparsest = {layer["path"]: layer for layer in summary["runs"][-1]["layers"]}
    assert sorted(params) == sorted(sparsest)
    for name, layer in sparsest.items():
        mask = masks[name]
        assert list(params[name].shape) == layer["shape"]
        if layer["pruned"]:
            assert mask is not None and int(mask.sum()) == layer["kept"]
            assert 1 - mask.float().mean().item() == pytest.approx(layer["sparsity"])
            assert not params[name][~mask].any()
        else:
            assert mask is None


def test_prints_the_tables_and_where_files_are(printed: dict[str, Any], folder: Path) -> None:
    text = printed["text"]
    lines = text.splitlines()
    assert lines[0] == f"funcsparse demo: {DIGITS_CREDIT}"
    rows = [line.split() for line in lines]
    assert any(row[:2] == ["0%", "0.00%"] and row[-1] == "baseline" for row in rows)
    assert any(row[:2] == ["90%", "90.00%"] and row[-1] == "pt" for row in rows)
    assert "identical: True" in text
    for path in SHAPES:
        assert any(line.split()[:1] == [path] and "90.00%" in line for line in lines)
    for name in ("accuracy.png", "masks.png", CHECKPOINT, "summary.json"):
        assert str(folder / name) in text
    assert f"python -m funcsparse report {folder / CHECKPOINT}" in text


def test_deterministic_and_pure(printed: dict[str, Any], summary: dict[str, Any]) -> None:
    assert printed["rng_untouched"] and printed["threads_restored"]
    again = _quick(out_dir=None, out=io.StringIO())
    assert _without_timing(again) == _without_timing(summary)
    assert again["files"] == {} and again["checkpoint"] is None
    other = run_demo(seed=1, steps=3, sparsities=[], repeats=1, out_dir=None,
                     out=io.StringIO(), progress=False)  # fmt: skip
    assert other["seed"] == 1 and other["timing"] == [] and other["identical"] is True


# -- the command line ----------------------------------------------------------------------


def test_main_runs_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--steps", "6", "--sparsities", "0.8", "--repeats", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "identical: True" in out and str(tmp_path / "summary.json") in out
    written = json.loads((tmp_path / "summary.json").read_text())
    assert [run["sparsity"] for run in written["runs"]] == [0.0, 0.8]
    assert written["steps"] == 6 and written["repeats"] == 1


def test_masks_that_differ_fail_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = funcsparse.demo.compare_with_torch_ao

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**real(*args, **kwargs), "identical": False, "differing": ["2.weight"]}

    monkeypatch.setattr(funcsparse.demo, "compare_with_torch_ao", broken)
    argv = ["demo", "--steps", "3", "--sparsities", "0.5", "--repeats", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        "identical: False  <-- MASKS DIFFER from torch.ao.pruning's: {'50%': ['2.weight']}" in out
    )
    assert json.loads((tmp_path / "summary.json").read_text())["identical"] is False


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sparsities": [1.5]}, ValueError, "run_demo: sparsities[0]=1.5 must be in [0, 1]"),
        ({"sparsities": [0.5, -0.1]}, ValueError, "run_demo: sparsities[1]=-0.1 must be in [0, 1]"),
        ({"sparsities": [math.nan]}, ValueError, "run_demo: sparsities[0]=nan must be in [0, 1]"),
        (
            {"sparsities": ["0.5"]},
            TypeError,
            "run_demo: sparsities[0] must be a real number, got str '0.5'",
        ),
        (
            {"sparsities": [True]},
            TypeError,
            "run_demo: sparsities[0] must be a real number, got bool True",
        ),
        (
            {"sparsities": 0.5},
            TypeError,
            "run_demo: sparsities must be a sequence of numbers, got float 0.5",
        ),
        (
            {"sparsities": "0.5"},
            TypeError,
            "run_demo: sparsities must be a sequence of numbers, got str '0.5'",
        ),
        ({"steps": 0}, ValueError, "run_demo: steps must be at least 1, got 0"),
        ({"steps": 2.0}, TypeError, "run_demo: steps must be an int, got float 2.0"),
        ({"repeats": 0}, ValueError, "run_demo: repeats must be at least 1, got 0"),
        ({"seed": -1}, ValueError, "run_demo: seed must be at least 0, got -1"),
        ({"seed": None}, TypeError, "run_demo: seed must be an int, got NoneType None"),
        ({"out": None}, TypeError, "run_demo: out must be a text stream, got NoneType None"),
        ({"out_dir": 3}, TypeError, "run_demo: out_dir must be a path or None, got int 3"),
        ({"progress": 1}, TypeError, "run_demo: progress must be a bool, got int 1"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        run_demo(**{"steps": 1, "out": io.StringIO(), "out_dir": None, **kwargs})
    assert str(caught.value) == message


def test_an_out_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("mine")
    buffer = io.StringIO()
    with pytest.raises(ValueError, match=r"^run_demo: out_dir='.*taken' is a file, not a folder$"):
        run_demo(steps=1, out_dir=file, out=buffer)
    assert file.read_text() == "mine" and buffer.getvalue() == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["demo", "--sparsities", "2"],
        ["demo", "--sparsities", "abc"],
        ["demo", "--steps", "0"],
        ["demo", "--repeats", "0"],
        ["demo", "--unknown"],
    ],
)
def test_main_bad_arguments_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_main_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--sparsities", "--quick", "--out", "--repeats", "--no-progress"):
        assert option in help_text


# -- in a fresh process --------------------------------------------------------------------


def test_the_quick_command_runs_without_warnings(tmp_path: Path) -> None:
    # torch's CPU wheels warn "Failed to initialize NumPy" at import when numpy is missing;
    # the README's set-up installs the `demo` extra (numpy), so a user sees no warning.
    done = subprocess.run(
        [sys.executable, "-W", "default", "-m", "funcsparse", "demo", "--quick", "--out", "o"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "identical: True" in done.stdout and "skipped" not in done.stdout
    assert "warn" not in done.stderr.lower() and "error" not in done.stderr.lower()
    assert "step/s" in done.stderr or "step]" in done.stderr  # tqdm's bar
    assert {path.name for path in (tmp_path / "o").iterdir()} == {
        "accuracy.png", "masks.png", CHECKPOINT, "summary.json"
    }  # fmt: skip


_WITHOUT_EXTRAS = """
import sys
sys.modules["tqdm"] = None  # as if not installed: import raises ImportError
sys.modules["matplotlib"] = None
from funcsparse.__main__ import main
raise SystemExit(main(["demo", "--steps", "6", "--sparsities", "0.5", "--repeats", "1",
                       "--out", "o"]))
"""


def test_without_tqdm_and_matplotlib_it_runs_and_says_what_it_skipped(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", _WITHOUT_EXTRAS],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    skipped = [line for line in done.stdout.splitlines() if line.startswith("skipped: ")]
    assert skipped == [
        f"skipped: progress bar: tqdm is not installed ({INSTALL_HINT})",
        f"skipped: accuracy.png and masks.png: matplotlib is not installed ({INSTALL_HINT})",
    ]
    assert {path.name for path in (tmp_path / "o").iterdir()} == {CHECKPOINT, "summary.json"}
    written = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert written["versions"]["tqdm"] is not None  # installed, only hidden from the import
    assert len(written["skipped"]) == 2 and written["identical"] is True
