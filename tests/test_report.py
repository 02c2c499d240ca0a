"""``funcsparse report``: per-layer sparsity, pattern and bytes of a checkpoint file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import torch

import funcsparse as fs
from funcsparse.__main__ import main
from funcsparse.export.checkpoint import stored_nbytes
from funcsparse.report import build_report, format_report


def _model_params() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    """Tie-free weights pruned four ways, and a bias left unmasked."""
    gen = torch.Generator().manual_seed(0)
    params = {
        "nm.weight": torch.randn(8, 16, generator=gen),
        "block.weight": torch.randn(16, 16, generator=gen),
        "rows.weight": torch.randn(12, 8, generator=gen),
        "free.weight": torch.randn(10, 10, generator=gen),
        "free.bias": torch.randn(10, generator=gen),
    }
    rules = {
        "nm.weight": fs.NM(n=2, m=4),
        "block.weight": fs.WeightNorm(0.5, sparse_block_shape=(4, 4)),
        "rows.weight": fs.LnStructured(0.5, n=2, dim=0),
        "free.weight": fs.Magnitude(0.7),
    }
    return params, fs.compute_masks(params, rules)


def _patterns(report: dict[str, Any]) -> dict[str, str]:
    return {row["path"]: row["pattern"] for row in report["leaves"]}


def test_a_sparse_checkpoint_reports_masks_patterns_and_bytes(tmp_path: Path) -> None:
    params, masks = _model_params()
    fs.save_sparse(tmp_path / "model.pt", params, masks)
    report = build_report(tmp_path / "model.pt")
    assert report["format"] == "funcsparse sparse checkpoint"
    assert report["file_bytes"] == (tmp_path / "model.pt").stat().st_size
    assert _patterns(report) == {
        "nm.weight": "2:4",
        "block.weight": "block 4x4",
        "rows.weight": "channel (dim 0)",
        "free.weight": "unstructured",
        "free.bias": "not masked",
    }
    rows = {row["path"]: row for row in report["leaves"]}
    for path, mask in masks.items():
        row = rows[path]
        pruned = 0 if mask is None else int((~mask).sum())
        assert (row["shape"], row["numel"], row["pruned"]) == (
            list(params[path].shape),
            params[path].numel(),
            pruned,
        )
        assert row["dense_bytes"] == params[path].numel() * 4
        assert row["sparse_bytes"] == stored_nbytes(mask, dtype=torch.float32, numel=row["numel"])
    assert rows["free.weight"]["sparsity"] == pytest.approx(0.7)
    assert rows["free.weight"]["sparse_bytes"] == 30 * 4 + (100 + 7) // 8
    totals = report["totals"]
    assert totals["numel"] == sum(p.numel() for p in params.values())
    assert totals["pruned"] == sum(row["pruned"] for row in report["leaves"])
    assert totals["sparse_bytes"] == sum(row["sparse_bytes"] for row in report["leaves"])
    assert totals["sparse_bytes"] < totals["dense_bytes"]


def test_a_plain_state_dict_counts_its_zeros_as_pruned(tmp_path: Path) -> None:
    params, masks = _model_params()
    torch.save(fs.squash(params, masks), tmp_path / "plain.pt")
    report = build_report(tmp_path / "plain.pt")
    assert report["format"] == "state_dict"
    expected = _patterns(build_report_of_sparse(tmp_path, params, masks))
    expected["free.bias"] = "dense"  # no zeros in the plain file: saved unmasked
    assert _patterns(report) == expected
    bias = next(row for row in report["leaves"] if row["path"] == "free.bias")
    assert bias["sparse_bytes"] == bias["dense_bytes"] == 40


def build_report_of_sparse(
    tmp_path: Path, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None]
) -> dict[str, Any]:
    fs.save_sparse(tmp_path / "sparse.pt", params, masks)
    return build_report(tmp_path / "sparse.pt")


def test_nested_mappings_are_walked_and_other_entries_named(tmp_path: Path) -> None:
    weight = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    torch.save({"model": {"w": weight}, "epoch": 3, "note": "x"}, tmp_path / "ckpt.pt")
    report = build_report(tmp_path / "ckpt.pt")
    assert [row["path"] for row in report["leaves"]] == ["model.w"]
    assert report["leaves"][0]["sparsity"] == 0.5
    assert report["skipped"] == ["epoch", "note"]
    assert "not tensors, skipped: epoch, note" in format_report(report)


def test_the_cli_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params, masks = _model_params()
    fs.save_sparse(tmp_path / "model.pt", params, masks)
    assert main(["report", str(tmp_path / "model.pt")]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'model.pt'}: funcsparse sparse checkpoint, ")
    header = next(line for line in lines if line.startswith("tensor"))
    assert header.split() == ["tensor", "shape", "dtype", "sparsity", "pattern", "dense", "sparse"]
    nm_row = next(line for line in lines if line.startswith("nm.weight"))
    assert nm_row.split()[:5] == ["nm.weight", "8x16", "float32", "50.00%", "2:4"]
    assert any(line.startswith("total (5 tensors)") for line in lines)
    assert main(["report", "--json", str(tmp_path / "model.pt")]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed == json.loads(json.dumps(build_report(tmp_path / "model.pt")))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "is not a file"),
        (b"\x00not a torch file at all", "cannot be read by torch.load(weights_only=True)"),
        ("no tensors", "holds no tensors"),
    ],
)
def test_bad_files_are_a_clear_error_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, expected: str
) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no tensors":
        torch.save({"epoch": 1}, path)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"funcsparse report: error: build_report: {str(path)!r} ")
    assert expected in err


def test_a_truncated_sparse_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params, masks = _model_params()
    fs.save_sparse(tmp_path / "model.pt", params, masks)
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert main(["report", str(tmp_path / "cut.pt")]) == 2
    assert capsys.readouterr().err.startswith("funcsparse report: error: ")


def test_progress_bar_on_request_goes_to_stderr(tmp_path: Path) -> None:
    pytest.importorskip("tqdm", reason="the progress bar needs tqdm (the demo extra)")
    params, masks = _model_params()
    path = tmp_path / "model.pt"
    fs.save_sparse(path, params, masks)
    done = subprocess.run(
        [sys.executable, "-m", "funcsparse", "report", "--progress", "always", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "5/5" in done.stderr
    assert json.loads(done.stdout)["totals"]["numel"] == 8 * 16 + 256 + 96 + 100 + 10


def test_build_report_refuses_a_bad_progress_choice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"build_report: progress must be .* got 'sometimes'"):
        build_report(tmp_path, progress="sometimes")
    with pytest.raises(TypeError, match=r"build_report: progress must be .* got 1"):
        build_report(tmp_path, progress=cast(Any, 1))


def test_sparse_bytes_are_the_file_size_less_a_small_fixed_overhead(tmp_path: Path) -> None:
    params, masks = _model_params()
    fs.save_sparse(tmp_path / "model.pt", params, masks)
    report = build_report(tmp_path / "model.pt")
    overhead = report["file_bytes"] - report["totals"]["sparse_bytes"]
    assert 0 < overhead <= 1024 + 1024 * len(params)


def test_unmasked_leaves_show_a_dash_not_a_measured_sparsity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params, masks = _model_params()
    fs.save_sparse(tmp_path / "model.pt", params, masks)
    assert main(["report", str(tmp_path / "model.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    bias = next(line for line in lines if line.startswith("free.bias"))
    assert bias.split()[:6] == ["free.bias", "10", "float32", "-", "not", "masked"]
    assert any(line.startswith("sparsity -: not masked") for line in lines)
    report = build_report(tmp_path / "model.pt")
    row = next(row for row in report["leaves"] if row["path"] == "free.bias")
    assert (row["masked"], row["pruned"], row["sparsity"]) == (False, 0, 0.0)
    assert report["totals"]["masked_numel"] == report["totals"]["numel"] - 10


def test_integer_and_bool_buffers_are_sized_but_not_weights(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    state = model.state_dict()  # num_batches_tracked: an int64 0; running_mean: zeros
    state["flags"] = torch.tensor([True, False, False])
    state["phase"] = torch.tensor([1 + 1j, 0j, 0j])
    torch.save(state, tmp_path / "plain.pt")
    report = build_report(tmp_path / "plain.pt")
    rows = {row["path"]: row for row in report["leaves"]}
    for name, nbytes in (("1.num_batches_tracked", 8), ("flags", 3)):
        row = rows[name]
        assert (row["masked"], row["pruned"], row["pattern"]) == (False, 0, "not a weight")
        assert row["sparse_bytes"] == row["dense_bytes"] == nbytes
    # complex weights are weights: their zeros count as pruned, stored as kept values + bits
    assert (rows["phase"]["pruned"], rows["phase"]["pattern"]) == (2, "unstructured")
    assert rows["phase"]["sparse_bytes"] == 1 * 8 + 1
    assert rows["1.running_mean"]["pattern"] == "empty"  # a float buffer of zeros: as saved
    text = format_report(report)
    assert "sparsity -: not a weight" in text
    counter = next(line for line in text.splitlines() if line.startswith("1.num_batches"))
    assert counter.split()[1:5] == ["()", "int64", "-", "not"]


def test_saved_sparse_layouts_count_their_stored_entries_as_kept(tmp_path: Path) -> None:
    params, masks = _model_params()
    block = {"block.weight": params["block.weight"]}
    block_mask = {"block.weight": masks["block.weight"]}
    saved = {
        "csr": fs.export.to_csr(params, masks)["free.weight"],
        "bsr": fs.export.to_bsr(block, block_mask, blocksize=(4, 4))["block.weight"],
        "coo": fs.squash(params, masks)["nm.weight"].to_sparse(),
    }
    torch.save(saved, tmp_path / "layouts.pt")
    rows = {row["path"]: row for row in build_report(tmp_path / "layouts.pt")["leaves"]}
    free = masks["free.weight"]
    assert free is not None
    assert rows["csr"]["pruned"] == int((~free).sum())
    assert rows["bsr"]["pattern"] == "block 4x4"
    assert rows["coo"]["pattern"] == "2:4"


def test_a_saved_str_is_not_taken_for_a_path(tmp_path: Path) -> None:
    fs.save_sparse(tmp_path / "model.pt", {"w": torch.ones(2)}, None)
    torch.save(str(tmp_path / "model.pt"), tmp_path / "name.pt")
    with pytest.raises(ValueError, match="holds no tensors"):
        build_report(tmp_path / "name.pt")


def test_nesting_deeper_than_the_recursion_limit_is_walked_in_key_order(tmp_path: Path) -> None:
    nested: dict[object, object] = {"w": torch.zeros(2), "epoch": 1}
    for _ in range(1200):
        nested = {"a": nested, 3: torch.ones(1)}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # torch.save pickles recursively
    try:
        torch.save(nested, tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(limit)
    report = build_report(tmp_path / "deep.pt")
    paths = [row["path"] for row in report["leaves"]]
    assert len(paths) == 1201 and paths[0] == "a." * 1200 + "w" and paths[-1] == "3"
    assert paths[1] == "a." * 1199 + "3"
    assert report["skipped"] == ["a." * 1200 + "epoch"]
