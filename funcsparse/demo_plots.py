"""The demo's PNG plots, drawn with matplotlib's Agg canvas (pyplot and its global backend
are never touched, so importing this from a notebook changes nothing there).

Needs matplotlib (``pip install 'funcsparse[demo]'``); :mod:`funcsparse.demo` checks that it
imports before calling these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

__all__ = ["plot_accuracy", "plot_masks"]

_KEPT, _PRUNED = "#1f4e79", "#f2f2f2"
_DPI = 100


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)  # attaches the Agg canvas: no pyplot, no global backend
    figure.savefig(path, format="png", bbox_inches="tight", pad_inches=0.15)


def plot_accuracy(
    path: Path,
    *,
    sparsities: Sequence[float],
    accuracies: Sequence[float],
    dense_accuracy: float,
    title: str,
) -> None:
    """Test accuracy (%) against the fraction of weights pruned (%), dense baseline marked.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "accuracy.png"
        ...     plot_accuracy(path, sparsities=[0.0, 0.5, 0.9], accuracies=[0.98, 0.97, 0.9],
        ...                   dense_accuracy=0.98, title="an MLP")
        ...     path.read_bytes()[:4]
        b'\x89PNG'

    Args:
        path: the PNG to write.
        sparsities: the fractions of weights pruned, one per run.
        accuracies: the held-out accuracies (fractions), one per run.
        dense_accuracy: the unpruned model's held-out accuracy (fraction).
        title: the plot's title (the model, the data, how it was pruned).
    """
    xs = [100 * s for s in sparsities]
    ys = [100 * a for a in accuracies]
    figure = Figure(figsize=(7.5, 4.8), dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.axhline(
        100 * dense_accuracy,
        color="0.45",
        linestyle="--",
        linewidth=1.2,
        label=f"dense baseline (nothing pruned): {100 * dense_accuracy:.1f}%",
    )
    axes.plot(xs, ys, marker="o", color=_KEPT, linewidth=2, label="pruned while training")
    for x, y in zip(xs, ys, strict=True):
        below = y < 100 * dense_accuracy  # labels away from the baseline, so they never cross it
        axes.annotate(
            f"{y:.1f}%",
            (x, y),
            textcoords="offset points",
            xytext=(0, -15 if below else 8),
            ha="center",
            fontsize=9,
        )
    low = min([*ys, 100 * dense_accuracy])
    axes.set_ylim(min(90.0, 5 * (low // 5) - 5), 100.5)
    axes.set_xlim(-3, 103)
    axes.set_xticks(range(0, 101, 10))
    axes.set_xlabel("weights pruned, every layer (%)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left")
    _save(figure, path)


def plot_masks(
    path: Path,
    *,
    masks: Sequence[Tensor],
    sparsities: Sequence[float],
    layer: str,
    rows: str,
    columns: str,
) -> None:
    """The masks of one layer side by side, one per run, kept and pruned weights in two colours.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> masks = [torch.ones(8, 4, dtype=torch.bool), torch.arange(32).reshape(8, 4) % 3 > 0]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "masks.png"
        ...     plot_masks(path, masks=masks, sparsities=[0.0, 0.5], layer="a layer",
        ...                rows="output", columns="input")
        ...     path.read_bytes()[:4]
        b'\x89PNG'

    Args:
        path: the PNG to write.
        masks: one bool mask of the layer (out_features x in_features) per run.
        sparsities: the fraction of the layer's weights pruned in each run.
        layer: the layer's path and what its rows and columns are, for the title.
        rows: what a row of the weight is (the y label).
        columns: what a column of the weight is (the x label).
    """
    n = len(masks)
    figure = Figure(figsize=(1.8 * n + 0.8, 6.2), dpi=_DPI, layout="constrained")
    colours = ListedColormap([_PRUNED, _KEPT])
    for i, (mask, level) in enumerate(zip(masks, sparsities, strict=True)):
        axes = figure.add_subplot(1, n, i + 1)
        kept = int(mask.sum())
        axes.imshow(
            mask.int().numpy(), cmap=colours, vmin=0, vmax=1, aspect="auto", interpolation="nearest"
        )
        axes.set_title(f"{100 * level:.4g}% pruned\n{kept:,} of {mask.numel():,} kept", fontsize=9)
        axes.set_xlabel(columns, fontsize=8)
        axes.tick_params(labelsize=7)
        if i == 0:
            axes.set_ylabel(rows, fontsize=8)
    figure.legend(
        handles=[
            Patch(color=_KEPT, label="kept weight"),
            Patch(facecolor=_PRUNED, edgecolor="0.6", label="pruned weight (zero)"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=9,
    )
    figure.suptitle(f"Masks of {layer}, one per final sparsity", fontsize=11)
    _save(figure, path)
