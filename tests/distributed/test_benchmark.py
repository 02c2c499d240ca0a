"""Smoke test of benchmarks/distributed.py: a --quick run on 2 gloo ranks writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distributed.py"


def test_quick_run_writes_identical_masks_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "distributed.json"
    options = ["--quick", "--repeats", "1", "--one-rank-threads", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=180,  # a 2-rank spawn on a busy 2-core machine; about 15 s when idle
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "identical" in done.stdout
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "distributed"
    assert payload["identical"] is True
    assert payload["missing"] == []
    assert {"torch", "platform", "cpu_count"} <= payload["machine"].keys()
    assert payload["settings"]["world"] == 2
    assert payload["n_weights"] == 12
    assert payload["weight_bytes"] == 4 * payload["n_params"]
    cases = payload["cases"]
    assert [(c["case"], c["ranks"]) for c in cases] == [
        (name, ranks)
        for name in ("Magnitude(0.5)", "WeightNorm(0.5, (1,1))", "GlobalMagnitude(0.5)")
        for ranks in (1, 2)
    ]
    for case in cases:
        assert len(case["seconds"]) == 1 and case["seconds_median"] > 0
        assert case["threads_per_rank"] == 1
        assert len(case["peak_extra_mib_per_rank"]) == case["ranks"]
        if case["ranks"] == 1:
            assert case["comm_bytes_per_rank"] == [0]
            continue
        assert case["identical"] is True, case["differing_leaves"]
        assert case["pruned_two_ranks"] == case["pruned_one_rank"] > 0
        # Every rank sent something, and the same every repeat.
        assert min(case["comm_bytes_per_rank"]) > 0
        assert (
            case["comm_over_weight_bytes"]
            == max(case["comm_bytes_per_rank"]) / (payload["weight_bytes"])
        )


def test_importing_the_script_runs_nothing(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("_bench_distributed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.CASES) == [
        "GlobalMagnitude(0.5)",
        "Magnitude(0.5)",
        "WeightNorm(0.5, (1,1))",
    ]
    assert capsys.readouterr().out == ""
