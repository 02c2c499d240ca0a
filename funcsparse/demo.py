"""End-to-end demo: prune an MLP on real digits while it trains, compare with torch.ao, save.

``python -m funcsparse demo`` (see :mod:`funcsparse.demo_cli`) runs :func:`run_demo`:

1. Data (:mod:`funcsparse.demo_data`): the UCI optical handwritten digits shipped in the
   package (E. Alpaydin, C. Kaynak, 1998, CC BY 4.0, https://doi.org/10.24432/C50P49; the
   copy scikit-learn distributes), 1797 8x8 images, split by the seed.
2. Training (:mod:`funcsparse.demo_train`): an MLP 64-256-256-10 trained in a pure
   ``torch.func`` loop, once per final sparsity, while ``fs.Pruner`` raises an unstructured
   ``fs.WeightNorm`` level on every weight along a cubic schedule.
3. The masks of each run's final level on its final weights, computed by funcsparse and by
   ``torch.ao.pruning.WeightNormSparsifier`` in the same process, timed and compared bit for
   bit (:mod:`funcsparse.demo_timing`).
4. Tables on ``out``; in ``out_dir``: ``accuracy.png``, ``masks.png``
   (:mod:`funcsparse.demo_plots`), the sparsest model as a sparse checkpoint
   (``fs.save_sparse``) and ``summary.json``.

The ``nn.Module`` only supplies the architecture and is never mutated; the global RNG is
never touched; results other than timings are deterministic for a seed.
"""

from __future__ import annotations

import importlib
import io
import json
import numbers
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import torch

import funcsparse as fs
from funcsparse._errors import describe, short_repr
from funcsparse.demo_data import DIGITS_CREDIT, N_CLASSES, load_digits, split
from funcsparse.demo_timing import compare_with_torch_ao
from funcsparse.demo_train import HIDDEN, Run, make_model, method, schedule, train

__all__ = [
    "CHECKPOINT",
    "DEFAULT_OUT",
    "DEFAULT_REPEATS",
    "DEFAULT_SPARSITIES",
    "DEFAULT_STEPS",
    "INSTALL_HINT",
    "QUICK_REPEATS",
    "QUICK_SPARSITIES",
    "QUICK_STEPS",
    "run_demo",
]

DEFAULT_STEPS = 1000
"""Training steps of each run of ``python -m funcsparse demo``."""

DEFAULT_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
"""The final sparsities of ``python -m funcsparse demo``: one training run each."""

DEFAULT_REPEATS = 7
"""Timed repetitions of each contender's masks."""

QUICK_STEPS = 40
"""Training steps of each run of ``python -m funcsparse demo --quick``."""

QUICK_SPARSITIES = (0.0, 0.5, 0.9)
"""The final sparsities of ``--quick``."""

QUICK_REPEATS = 3
"""Timed repetitions of ``--quick``."""

DEFAULT_OUT = "funcsparse-demo"
"""Where the demo writes its files."""

CHECKPOINT = "pruned-model.pt"
"""The sparse checkpoint's file name in ``out_dir``."""

INSTALL_HINT = "pip install 'funcsparse[demo]'"
"""How to get the optional packages the demo uses (tqdm, matplotlib)."""

_MODEL = f"MLP 64-{HIDDEN}-{HIDDEN}-{N_CLASSES}"
_MASKS_LAYER = "0.weight"


def run_demo(
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    repeats: int = DEFAULT_REPEATS,
    out_dir: str | os.PathLike[str] | None = DEFAULT_OUT,
    out: TextIO = sys.stdout,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and prune an MLP on the UCI digits at several sparsities; compare; write files.

    One run of ``steps`` Adam steps per sparsity, in a pure ``torch.func`` loop: dense for
    the first fifth, then ``fs.WeightNorm(level, sparse_block_shape=(1, 1))`` (unstructured:
    each weight is its own block, ranked by its magnitude) on every weight, its level raised
    by ``fs.Pruner`` along a cubic ``fs.schedules.polynomial`` until 70% of the run, then
    fine-tuning at the final masks. Unstructured, because it keeps the most accuracy at a
    given sparsity, it is what a sparse checkpoint stores best, and its masks equal
    ``torch.ao.pruning.WeightNormSparsifier``'s bit for bit on tie-free weights. A run at
    sparsity 0 (added when missing) is the dense baseline. Then, for each run, the masks of
    its final level on its final weights are computed by funcsparse and by torch.ao, timed
    (``repeats`` interleaved repetitions, medians) and compared bit for bit.

    Printed on ``out``: the accuracy per sparsity against the dense baseline, a per-layer
    sparsity table, the mask timings and ``identical: True`` (or ``identical: False`` and
    the layers that differ), and where the files are. A progress bar over all training steps
    goes to stderr. Results other than timings are deterministic for a seed: the demo runs on
    one intra-op thread (the caller's thread count is restored) and never touches the global
    RNG.

    Examples:
        >>> import io
        >>> summary = run_demo(steps=3, sparsities=[0.5], repeats=1, out_dir=None,
        ...                    out=io.StringIO(), progress=False)
        >>> [run["sparsity"] for run in summary["runs"]], summary["identical"]
        ([0.0, 0.5], True)

    Args:
        seed: seeds the split, the model's initialisation and the minibatches. Default 0.
        steps: training steps per run, at least 1 (fewer than 5: pruned at step 0).
            Default :data:`DEFAULT_STEPS`.
        sparsities: final sparsities, each in [0, 1]; sorted, duplicates dropped, 0 added.
            Default :data:`DEFAULT_SPARSITIES`.
        repeats: timed repetitions of each contender, at least 1. Default
            :data:`DEFAULT_REPEATS`.
        out_dir: the folder for ``accuracy.png``, ``masks.png``, the checkpoint and
            ``summary.json`` (created if missing; existing files of those names are
            replaced); None writes nothing. Default :data:`DEFAULT_OUT`.
        out: where the report is printed. Default ``sys.stdout``.
        progress: show a progress bar on stderr (needs tqdm). Default True.

    Returns:
        The summary (what ``summary.json`` holds): ``versions``, ``seed``, ``steps``,
        ``repeats``, ``data``, ``model``, ``method``, ``schedule``, ``dense_accuracy``,
        ``runs`` (per sparsity: ``sparsity``, ``reached``, ``accuracy``,
        ``accuracy_when_pruning_began``, ``updates`` and ``layers``), ``timing`` (per pruned
        run, see :func:`funcsparse.demo_timing.compare_with_torch_ao`), ``identical``,
        ``checkpoint`` (``path``, ``sparsity``, ``bytes``, ``dense_bytes``, ``ratio``; None
        without ``out_dir``), ``files`` (name -> path) and ``skipped``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a sparsity outside [0, 1], ``steps < 1``, ``repeats < 1``, ``seed < 0``,
            or ``out_dir`` is an existing file.
    """
    seed = _require_int("seed", seed, 0)
    steps = _require_int("steps", steps, 1)
    repeats = _require_int("repeats", repeats, 1)
    levels = _require_levels(sparsities)
    folder = _require_folder(out_dir)
    if not callable(getattr(out, "write", None)):
        raise TypeError(f"run_demo: out must be a text stream, got {describe(out)}")
    if not isinstance(progress, bool):
        raise TypeError(f"run_demo: progress must be a bool, got {describe(progress)}")
    # One intra-op thread: the tensors are small, so this is fastest, immune to oversubscribed
    # cores, and thread-count independent. The caller's setting is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(seed, steps, levels, repeats, folder, out, progress)
    finally:
        torch.set_num_threads(threads)


def _require_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"run_demo: {name} must be an int, got {describe(value)}")
    if int(value) < minimum:
        raise ValueError(f"run_demo: {name} must be at least {minimum}, got {short_repr(value)}")
    return int(value)


def _require_levels(values: object) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"run_demo: sparsities must be a sequence of numbers, got {describe(values)}"
        )
    levels = {0.0}
    for index, value in enumerate(values):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(
                f"run_demo: sparsities[{index}] must be a real number, got {describe(value)}"
            )
        level = float(value)
        if not 0.0 <= level <= 1.0:  # also rejects NaN
            raise ValueError(f"run_demo: sparsities[{index}]={short_repr(value)} must be in [0, 1]")
        levels.add(level)
    return sorted(levels)


def _require_folder(value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"run_demo: out_dir must be a path or None, got {describe(value)}")
    folder = Path(value)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"run_demo: out_dir={short_repr(str(folder))} is a file, not a folder")
    return folder


def _percent(level: float) -> str:
    """A level as a percentage with the digits it needs: 0.5 -> '50%', 0.999 -> '99.9%'."""
    return f"{100 * level:.4g}%"


def _optional(name: str) -> ModuleType | None:
    """The module ``name``, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _run(
    seed: int,
    steps: int,
    levels: list[float],
    repeats: int,
    folder: Path | None,
    out: TextIO,
    progress: bool,
) -> dict[str, Any]:
    skipped: list[str] = []
    x, y = load_digits()
    data = split(x, y, seed=seed)
    model = make_model(seed)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    print(f"funcsparse demo: {DIGITS_CREDIT}", file=out)
    print(
        f"  {len(data[0])} train / {len(data[2])} test digits, 8x8 pixels, {N_CLASSES} classes; "
        f"{_MODEL}, {steps} Adam steps per run, seed {seed}",
        file=out,
    )
    print(
        f"  every weight pruned unstructured by fs.WeightNorm (magnitude), raised gradually by "
        f"fs.Pruner: {schedule(steps) or 'full level at step 0'}",
        file=out,
    )
    tqdm = _optional("tqdm") if progress else None
    if progress and tqdm is None:
        skipped.append(f"progress bar: tqdm is not installed ({INSTALL_HINT})")
    runs = _train_all(model, data, levels, steps, seed, tqdm)
    timing = [
        compare_with_torch_ao(model, run.params, level=run.sparsity, repeats=repeats)
        for run in runs
        if run.sparsity > 0
    ]
    after = model.state_dict()
    if before.keys() != after.keys() or any(not torch.equal(before[k], after[k]) for k in before):
        raise RuntimeError("run_demo: the model module was mutated")
    summary = _summary(seed, steps, repeats, data, runs, timing)
    _print_accuracy(summary, out)
    _print_layers(summary, out)
    _print_timing(summary, out)
    files: dict[str, str] = {}
    if folder is not None:
        files, checkpoint = _write_files(folder, runs, summary, skipped)
        summary["checkpoint"] = checkpoint
    summary["files"] = files
    summary["skipped"] = skipped
    if folder is not None:
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_files(summary, out)
    return summary


def _train_all(
    model: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    levels: list[float],
    steps: int,
    seed: int,
    tqdm: ModuleType | None,
) -> list[Run]:
    bar: Any = None
    if tqdm is not None:
        bar = tqdm.tqdm(total=steps * len(levels), file=sys.stderr, unit="step", leave=False)
    tick: Callable[[], None] = (lambda: None) if bar is None else (lambda: bar.update(1))
    runs = []
    try:
        for level in levels:
            if bar is not None:
                bar.set_description(f"training, final sparsity {_percent(level)}")
            runs.append(train(model, data, level=level, steps=steps, seed=seed, tick=tick))
    finally:
        if bar is not None:
            bar.close()
    return runs


def _layers(run: Run) -> list[dict[str, Any]]:
    layers = []
    for path, value in run.params.items():
        mask = run.masks[path]
        kept = value.numel() if mask is None else int(mask.sum())
        if int(torch.count_nonzero(value)) > kept:
            raise RuntimeError(f"run_demo: pruned entries of {path!r} are nonzero")
        layers.append(
            {
                "path": path,
                "shape": list(value.shape),
                "pruned": mask is not None,
                "kept": kept,
                "total": value.numel(),
                "sparsity": 1.0 - kept / value.numel(),
                "nonzero": int(torch.count_nonzero(value)),
            }
        )
    return layers


def _summary(
    seed: int,
    steps: int,
    repeats: int,
    data: tuple[torch.Tensor, ...],
    runs: list[Run],
    timing: list[dict[str, Any]],
) -> dict[str, Any]:
    summary_runs = []
    for run in runs:
        layers = _layers(run)
        weights = [layer for layer in layers if layer["pruned"]]
        reached = 1.0 - sum(w["kept"] for w in weights) / sum(w["total"] for w in weights)
        summary_runs.append(
            {
                "sparsity": run.sparsity,
                "reached": reached,
                "accuracy": run.accuracy,
                "accuracy_when_pruning_began": run.dense_accuracy,
                "updates": run.updates,
                "layers": layers,
            }
        )
    return {
        "versions": _versions(),
        "seed": seed,
        "steps": steps,
        "repeats": repeats,
        "data": {
            "name": "UCI optical recognition of handwritten digits",
            "credit": DIGITS_CREDIT,
            "train": len(data[0]),
            "test": len(data[2]),
            "classes": N_CLASSES,
        },
        "model": _MODEL,
        "method": repr(method(runs[-1].sparsity)),
        "schedule": repr(schedule(steps)),
        "dense_accuracy": runs[0].accuracy,
        "runs": summary_runs,
        "timing": timing,
        "identical": all(t["identical"] for t in timing),
        "checkpoint": None,
    }


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("funcsparse", "numpy", "tqdm", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _print_accuracy(summary: dict[str, Any], out: TextIO) -> None:
    dense = summary["dense_accuracy"]
    print("", file=out)
    print(
        f"test accuracy on {summary['data']['test']} held-out digits "
        f"(chance {1 / N_CLASSES:.0%}), dense vs pruned:",
        file=out,
    )
    print(f"  {'target':>7} {'pruned':>8} {'accuracy':>9} {'vs dense':>9}", file=out)
    for run in summary["runs"]:
        change = (
            "baseline" if run["sparsity"] == 0 else f"{100 * (run['accuracy'] - dense):+.2f} pt"
        )
        print(
            f"  {_percent(run['sparsity']):>7} {run['reached']:>8.2%} {run['accuracy']:>9.2%}"
            f" {change:>9}",
            file=out,
        )


def _print_layers(summary: dict[str, Any], out: TextIO) -> None:
    runs = summary["runs"]
    print("", file=out)
    print("per-layer sparsity (share of entries that are zero), one column per run:", file=out)
    header = f"  {'layer':<9} {'shape':<8}" + "".join(f"{_percent(r['sparsity']):>8}" for r in runs)
    print(header, file=out)
    for i, layer in enumerate(runs[0]["layers"]):
        shape = "x".join(str(side) for side in layer["shape"])
        cells = "".join(
            f"{r['layers'][i]['sparsity']:>8.2%}" if layer["pruned"] else f"{'-':>8}" for r in runs
        )
        print(f"  {layer['path']:<9} {shape:<8}{cells}", file=out)
    total = "".join(f"{r['reached']:>8.2%}" for r in runs)
    print(f"  {'weights':<18}{total}  (biases are not pruned: -)", file=out)


def _print_timing(summary: dict[str, Any], out: TextIO) -> None:
    timing = summary["timing"]
    if not timing:
        return
    print("", file=out)
    print(
        f"masks of every weight at each run's final level, on its final weights: "
        f"median of {summary['repeats']} interleaved repetitions (ms)",
        file=out,
    )
    print(
        f"  {'sparsity':>8} {'funcsparse':>11} {'torch.ao prepare+step':>22} {'ratio':>6} "
        f"{'torch.ao step':>14} {'ratio':>6}  identical",
        file=out,
    )
    for t in timing:
        print(
            f"  {_percent(t['level']):>8} {t['funcsparse_ms']:>11.2f}"
            f" {t['torch_ao_prepare_step_ms']:>22.2f}"
            f" {t['ratio_prepare_step']:>5.1f}x {t['torch_ao_step_ms']:>14.2f}"
            f" {t['ratio_step']:>5.1f}x  {t['identical']}",
            file=out,
        )
    print(
        "  (tiny weights: per-call overhead dominates here; benchmarks/masks.py times an "
        "84.9M-weight stack)",
        file=out,
    )
    if summary["identical"]:
        print(
            "identical: True (every mask equals torch.ao.pruning.WeightNormSparsifier's, bit for "
            "bit)",
            file=out,
        )
    else:
        differing = {_percent(t["level"]): t["differing"] for t in timing if not t["identical"]}
        print(f"identical: False  <-- MASKS DIFFER from torch.ao.pruning's: {differing}", file=out)


def _write_files(
    folder: Path, runs: list[Run], summary: dict[str, Any], skipped: list[str]
) -> tuple[dict[str, str], dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if _optional("matplotlib") is None:
        skipped.append(f"accuracy.png and masks.png: matplotlib is not installed ({INSTALL_HINT})")
    else:
        from funcsparse import demo_plots

        files["accuracy"] = str(folder / "accuracy.png")
        demo_plots.plot_accuracy(
            Path(files["accuracy"]),
            sparsities=[run["reached"] for run in summary["runs"]],
            accuracies=[run.accuracy for run in runs],
            dense_accuracy=summary["dense_accuracy"],
            title=(
                f"Test accuracy vs sparsity: {_MODEL} on the UCI handwritten digits\n"
                "every weight pruned unstructured by magnitude (fs.WeightNorm),\n"
                "gradually during training (fs.Pruner, cubic schedule), one run per sparsity"
            ),
        )
        files["masks"] = str(folder / "masks.png")
        masks = [run.masks[_MASKS_LAYER] for run in runs]
        demo_plots.plot_masks(
            Path(files["masks"]),
            masks=[m for m in masks if m is not None],
            sparsities=[run.sparsity for run in runs],
            layer=f"the first layer ({_MASKS_LAYER}: {HIDDEN} hidden units x 64 input pixels)",
            rows="hidden unit (row of the weight)",
            columns="input pixel (8x8, row by row)",
        )
    sparsest = runs[-1]
    files["checkpoint"] = str(folder / CHECKPOINT)
    fs.save_sparse(files["checkpoint"], sparsest.params, sparsest.masks)
    dense = io.BytesIO()
    torch.save(sparsest.params, dense)
    size = Path(files["checkpoint"]).stat().st_size
    checkpoint = {
        "path": files["checkpoint"],
        "sparsity": sparsest.sparsity,
        "bytes": size,
        "dense_bytes": dense.getbuffer().nbytes,
        "ratio": size / dense.getbuffer().nbytes,
    }
    files["summary"] = str(folder / "summary.json")
    return files, checkpoint


def _print_files(summary: dict[str, Any], out: TextIO) -> None:
    checkpoint = summary["checkpoint"]
    if checkpoint is not None:
        print("", file=out)
        print(
            f"sparse checkpoint of the {_percent(checkpoint['sparsity'])} model (fs.save_sparse): "
            f"{checkpoint['bytes']:,} bytes, {checkpoint['ratio']:.2f}x the dense torch.save "
            f"of the same params ({checkpoint['dense_bytes']:,} bytes)",
            file=out,
        )
        print(f"  inspect it: python -m funcsparse report {checkpoint['path']}", file=out)
    for line in summary["skipped"]:
        print(f"skipped: {line}", file=out)
    if summary["files"]:
        print("", file=out)
        print("files:", file=out)
        labels = {
            "accuracy": "test accuracy vs sparsity",
            "masks": f"masks of {_MASKS_LAYER} per sparsity",
            "checkpoint": "sparse checkpoint (fs.load_sparse reads it)",
            "summary": "every figure above, versions, seed",
        }
        for name, path in summary["files"].items():
            print(f"  {path:<40} {labels[name]}", file=out)
