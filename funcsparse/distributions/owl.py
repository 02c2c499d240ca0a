"""OWL: outlier-weighted layerwise sparsity (Yin et al. 2024)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from funcsparse._errors import describe, require_finite, short_repr
from funcsparse._rules import glob_to_regex
from funcsparse._tree import flatten_with_paths, in_dict_order
from funcsparse.distributions._balance import shifted_levels
from funcsparse.methods._level import check_sparsity
from funcsparse.scores import wanda_inputs

__all__ = ["owl"]

_FUNCTION = "owl"
# Scores are computed a chunk of whole rows at a time (float32 or float64 temporaries of
# about this many entries), never for a whole weight or a whole layer at once.
_CHUNK = 1 << 20


def owl(
    params: Any,
    input_norms: Any,
    *,
    sparsity: float,
    blocks: str | Sequence[str] | None = None,
    outlier_threshold: float = 5.0,
    max_deviation: float = 0.08,
) -> dict[str, float]:
    """Per-layer sparsity levels from each layer's share of outlier Wanda scores (OWL).

    Every weight with input norms gets Wanda's score ``|W_ij| * ||X_j||_2``. A layer (a
    block of the model, e.g. one transformer block: all its weights together) has an
    outlier ratio ``D_l``: the fraction of its scores above ``outlier_threshold`` (the
    paper's ``M``) times the mean score of that layer. Layers with more outliers are pruned
    less: the ratios are rescaled linearly onto ``[0, 2 * max_deviation]`` (``max_deviation``
    is the paper's ``lambda``), and every layer's density (``1 - level``) is its rescaled
    ratio shifted so that the densities average to ``1 - sparsity``. So the levels spread
    over at most ``2 * max_deviation``, and the layer of most outliers gets the lowest level.

    Averaging: the paper averages the densities over the layers, unweighted; with layers of
    different sizes that misses the target's total number of pruned weights. Here the mean
    is weighted by every layer's number of weights (of the leaves with input norms), so the
    pruned fraction of all those weights is exactly ``sparsity`` (up to rounding to whole
    weights by the method that prunes). With layers of equal size, as the blocks of a
    transformer are, the two are the same.

    Edge cases: where every layer has the same outlier ratio (the reference code divides by
    zero there), every level is ``sparsity``. Where a shifted level would leave [0, 1]
    (``sparsity`` within ``2 * max_deviation`` of 0 or 1), it is clipped, and the other
    layers' levels move together to keep the weighted mean at ``sparsity``; the levels keep
    the order of the outlier ratios. A layer with no weights (empty leaves only) gets
    ``sparsity``.

    Scores are computed in float32 (float64 for float64 weights), as the reference computes
    them, a few rows at a time: the layer's mean is the float64 sum of per-leaf sums over its
    number of weights, and the outliers are counted leaf by leaf, so no concatenation of a
    layer's scores (nor a whole weight's scores) is ever built.

    Pass the levels to a method through :func:`funcsparse.distributions.level_rules`:
    ``fs.compute_masks(params, level_rules(levels, fs.Wanda()), input_norms=norms)``.

    Examples:
        >>> import torch, funcsparse as fs
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> params = {f"layers.{i}.{name}": torch.randn(8, 8) for i in range(3)
        ...           for name in ("attn", "mlp")}
        >>> params["layers.1.attn"][0, :2] = 40.0  # 2 outliers in block 1
        >>> params["layers.2.mlp"][0, :4] = 40.0  # 4 in block 2
        >>> norms = {path: torch.ones(8) for path in params}
        >>> levels = fs.distributions.owl(params, norms, sparsity=0.5, blocks="layers.*")
        >>> [round(levels[f"layers.{i}.{name}"], 4) for i in range(3) for name in ("attn", "mlp")]
        [0.58, 0.58, 0.5, 0.5, 0.42, 0.42]
        >>> round(sum(levels.values()) / len(levels), 12)  # blocks of equal size
        0.5
        >>> rules = fs.distributions.level_rules(levels, fs.Wanda())
        >>> masks = fs.compute_masks(params, rules, input_norms=norms)
        >>> (~masks["layers.2.mlp"]).sum(1).tolist()  # int(8 * 0.42) in every row
        [3, 3, 3, 3, 3, 3, 3, 3]

    Args:
        params: a pytree of tensors (``dict(model.named_parameters())``).
        input_norms: a pytree of ``params``' structure, as
            :func:`funcsparse.calibration.collect_input_norms` returns it: for a weight of
            shape ``(out, *rest)``, a floating tensor of shape ``rest`` (the L2 norm of every
            input feature), None at the leaves left out (biases, norms layers).
        sparsity: the target level, in [0, 1]: the pruned fraction of all weights with
            input norms. Required.
        blocks: how the leaves with input norms are grouped into layers. None (the
            default): every such leaf is a layer of its own. A string: a glob pattern (as
            rules' keys: ``*`` stays inside one dotted component, ``**`` crosses them); the
            layer of a leaf is the shortest dotted prefix of its path that the pattern
            matches, e.g. ``"model.layers.*"`` groups ``model.layers.0.mlp.up.weight`` into
            ``model.layers.0``. A sequence of strings: module-name prefixes, e.g.
            ``["layers.0", "layers.1"]``; a leaf belongs to the prefix equal to its path or
            followed by a ``.`` in it.
        outlier_threshold: the paper's ``M``: a score is an outlier when it exceeds ``M``
            times its layer's mean score. Finite and positive. Default 5.0.
        max_deviation: the paper's ``lambda``: the levels spread over at most
            ``2 * max_deviation`` (``sparsity +- max_deviation`` around the target when the
            mean ratio lies mid-range). In [0, 0.5]. Default 0.08.

    Returns:
        ``{path: level}`` for every leaf with input norms, every leaf of a layer at the
        layer's level (a float in [0, 1]); in ``params``' own key order for a flat dict
        (``named_parameters()`` order), in the pytree's flattening order otherwise.

    Raises:
        TypeError: ``sparsity``, ``outlier_threshold`` or ``max_deviation`` is not a real
            number; ``blocks`` is not a string, a sequence of strings or None; a leaf or its
            norms is not a floating tensor, or is a sparse one (naming the path).
        ValueError: ``sparsity`` outside [0, 1], ``outlier_threshold`` not finite and
            positive, ``max_deviation`` outside [0, 0.5]; ``input_norms`` without
            ``params``' structure; a leaf with norms of fewer than 2 dims, norms of another
            shape than the leaf's without its first dim, on another device, negative or not
            finite; a weight with a non-finite value or on the meta device; ``blocks`` that
            leave a leaf with norms in no layer, put one in two, or hold a prefix (or a
            pattern) that matches no leaf with norms, an empty or a repeated prefix.

    References:
        L. Yin, Y. Wu, Z. Zhang, C.-Y. Hsieh, Y. Wang, Y. Jia, G. Li, A. Jaiswal, M.
        Pechenizkiy, Y. Liang, M. Bendersky, Z. Wang, S. Liu. Outlier Weighed Layerwise
        Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity. ICML
        2024. arXiv:2310.05175.
    """
    target = check_sparsity(_FUNCTION, sparsity)
    threshold = require_finite(_FUNCTION, "outlier_threshold", outlier_threshold)
    if threshold <= 0:
        raise ValueError(
            f"{_FUNCTION}: outlier_threshold={short_repr(outlier_threshold)} must be positive "
            "(the paper's M: an outlier exceeds M times its layer's mean score; 5 by default)"
        )
    deviation = require_finite(_FUNCTION, "max_deviation", max_deviation)
    if not 0.0 <= deviation <= 0.5:
        raise ValueError(
            f"{_FUNCTION}: max_deviation={short_repr(max_deviation)} must be in [0, 0.5] "
            "(the paper's lambda: the levels spread over at most 2 * max_deviation)"
        )
    _refuse_sparse_norms(input_norms)
    paths, pairs, _ = wanda_inputs(params, input_norms, function=_FUNCTION)
    scored = {path: pair for path, pair in zip(paths, pairs, strict=True) if pair is not None}
    for path, (leaf, norms) in scored.items():
        for what, value in (("the leaf", leaf), ("input_norms", norms)):
            if value.layout != torch.strided:
                raise TypeError(
                    f"{_FUNCTION}: {what} at {path!r} has layout {value.layout}; OWL needs "
                    "dense (strided) tensors; convert with .to_dense()"
                )
        if leaf.device.type == "meta":
            raise ValueError(
                f"{_FUNCTION}: the leaf at {path!r} is {describe(leaf)}; OWL needs the weights' "
                "values (meta tensors hold none)"
            )
    layers = _layers(list(scored), blocks)
    # Pass 1: every layer's sum of scores and number of weights.
    sums = {path: _score_sum(path, *pair) for path, pair in scored.items()}
    ratios: list[float] = []
    counts: list[int] = []
    for members in layers.values():
        count = sum(scored[path][0].numel() for path in members)
        counts.append(count)
        if count == 0:
            ratios.append(0.0)
            continue
        mean = math.fsum(sums[path] for path in members) / count
        # Pass 2: the scores above M times the layer's mean, leaf by leaf.
        above = sum(_count_above(*scored[path], threshold * mean) for path in members)
        ratios.append(above / count)
    live = [ratio for ratio, count in zip(ratios, counts, strict=True) if count]
    low, high = (min(live), max(live)) if live else (0.0, 0.0)
    span = high - low
    # Rescaled ratios: [low, high] onto [0, 2 * lambda] (all 0 where every ratio is equal).
    offsets = [0.0 if span == 0 else (ratio - low) / span * 2 * deviation for ratio in ratios]
    levels = shifted_levels(offsets, counts, target)
    of_layer = {
        path: level
        for members, level in zip(layers.values(), levels, strict=True)
        for path in members
    }
    return in_dict_order(params, {path: of_layer[path] for path in scored})


def _refuse_sparse_norms(input_norms: Any) -> None:
    """A TypeError naming the path of a sparse (not strided) tensor in ``input_norms``; a
    tree that does not flatten is left to ``wanda_inputs``' structure check."""
    try:
        paths, leaves, _ = flatten_with_paths(input_norms, function=_FUNCTION)
    except (TypeError, ValueError):
        return
    for path, norms in zip(paths, leaves, strict=True):
        if isinstance(norms, Tensor) and norms.layout != torch.strided:
            raise TypeError(
                f"{_FUNCTION}: input_norms at {path!r} has layout {norms.layout}; OWL needs "
                "dense (strided) tensors; convert with .to_dense()"
            )


def _layers(paths: list[str], blocks: object) -> dict[str, list[str]]:
    """``{layer name: its leaf paths}`` for the leaves with norms (``paths``), per ``blocks``."""
    if blocks is None:
        return {path: [path] for path in paths}
    if isinstance(blocks, str):
        return _layers_by_pattern(paths, blocks)
    if not isinstance(blocks, Sequence) or not all(isinstance(b, str) for b in blocks):
        raise TypeError(
            f"{_FUNCTION}: blocks must be None, a glob pattern (str) or a sequence of module-"
            f"name prefixes (str), got {describe(blocks)}"
        )
    return _layers_by_prefix(paths, list(blocks))


def _layers_by_pattern(paths: list[str], pattern: str) -> dict[str, list[str]]:
    regex = glob_to_regex(pattern)
    layers: dict[str, list[str]] = {}
    outside: list[str] = []
    for path in paths:
        parts = path.split(".")
        prefixes = (".".join(parts[:end]) for end in range(1, len(parts) + 1))
        name = next((prefix for prefix in prefixes if regex.fullmatch(prefix)), None)
        if name is None:
            outside.append(path)
        else:
            layers.setdefault(name, []).append(path)
    if not layers and paths:
        raise ValueError(
            f"{_FUNCTION}: blocks={pattern!r} matches no prefix of a leaf with input_norms "
            f"(those leaves: {_some(paths)})"
        )
    _refuse_outside(outside, f"no prefix of their paths matches blocks={pattern!r}")
    return layers


def _layers_by_prefix(paths: list[str], prefixes: list[str]) -> dict[str, list[str]]:
    seen: set[str] = set()
    for prefix in prefixes:
        if not prefix:
            raise ValueError(
                f"{_FUNCTION}: blocks holds an empty prefix; name every block by its module "
                "path, e.g. 'layers.0'"
            )
        if prefix in seen:
            raise ValueError(f"{_FUNCTION}: blocks holds the prefix {prefix!r} twice")
        seen.add(prefix)
    layers: dict[str, list[str]] = {prefix: [] for prefix in prefixes}
    outside: list[str] = []
    for path in paths:
        owners = [p for p in prefixes if path == p or path.startswith(p + ".")]
        if len(owners) > 1:
            raise ValueError(
                f"{_FUNCTION}: the leaf at {path!r} lies in two blocks, {owners[0]!r} and "
                f"{owners[1]!r}; blocks must not nest"
            )
        if owners:
            layers[owners[0]].append(path)
        else:
            outside.append(path)
    empty = [prefix for prefix, members in layers.items() if not members]
    if empty:
        raise ValueError(
            f"{_FUNCTION}: the block {empty[0]!r} holds no leaf with input_norms (a typo, or "
            "norms of None there?)"
        )
    _refuse_outside(outside, "they lie under none of the blocks' prefixes")
    return layers


def _refuse_outside(outside: list[str], why: str) -> None:
    if outside:
        raise ValueError(
            f"{_FUNCTION}: {len(outside)} leaf(s) with input_norms lie in no block "
            f"({_some(outside)}): {why}; add a block for them, or give them input_norms of "
            "None to leave them out"
        )


def _some(paths: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``paths``, quoted, and how many more."""
    text = ", ".join(repr(path) for path in paths[:shown])
    return text + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _row_chunks(leaf: Tensor, norms: Tensor) -> tuple[Tensor, Tensor, int]:
    """``leaf`` as ``(rows, width)``, the norms as ``(width,)`` in the scores' dtype (float32,
    or float64 for a float64 leaf) and the rows per chunk."""
    rows = leaf.shape[0]
    width = math.prod(leaf.shape[1:])
    dtype = torch.float64 if leaf.dtype == torch.float64 else torch.float32
    flat = leaf.detach().reshape(rows, width)
    weights = norms.detach().reshape(width).to(dtype)
    return flat, weights, max(1, _CHUNK // max(width, 1))


def _scores(rows: Tensor, weights: Tensor) -> Tensor:
    """Wanda's scores of ``rows`` in ``weights``' dtype (a new tensor: nothing is mutated)."""
    return torch.mul(rows.to(weights.dtype).abs(), weights)


def _score_sum(path: str, leaf: Tensor, norms: Tensor) -> float:
    """The sum of ``leaf``'s Wanda scores, accumulated in float64; a ValueError where it is
    not finite (a NaN or infinite weight: the scores are non-negative)."""
    flat, weights, step = _row_chunks(leaf, norms)
    total = torch.zeros((), dtype=torch.float64, device=leaf.device)
    for start in range(0, flat.shape[0], step):
        total += _scores(flat[start : start + step], weights).sum(dtype=torch.float64)
    value = float(total)
    if not math.isfinite(value):
        raise ValueError(
            f"{_FUNCTION}: the leaf at {path!r} holds a value that is NaN or infinite (or its "
            "scores sum beyond float64); OWL needs finite weights (its outlier ratio compares "
            "scores with their mean)"
        )
    return value


def _count_above(leaf: Tensor, norms: Tensor, bound: float) -> int:
    """How many of ``leaf``'s Wanda scores exceed ``bound`` (exactly: the bound is rounded
    down to the scores' dtype, so a score above the rounded bound is above ``bound``)."""
    flat, weights, step = _row_chunks(leaf, norms)
    below = torch.tensor(bound, dtype=weights.dtype, device=leaf.device)
    if float(below) > bound:  # rounded up: take the next value below
        below = torch.nextafter(
            below, torch.tensor(-math.inf, dtype=weights.dtype, device=leaf.device)
        )
    count = torch.zeros((), dtype=torch.int64, device=leaf.device)
    for start in range(0, flat.shape[0], step):
        count += (_scores(flat[start : start + step], weights) > below).sum()
    return int(count)
