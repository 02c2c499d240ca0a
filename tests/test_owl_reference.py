"""fs.distributions.owl against a direct restatement of the OWL paper (Yin et al. 2024).

The reference (:func:`reference_owl`) follows arXiv:2310.05175, Section 3 and the procedure
of its released code, in float64 numpy with each layer's scores concatenated:

* every weight with input norms gets Wanda's score ``A_ij = |W_ij| * ||X_j||_2``;
* a layer's outlier ratio ``D_l`` is the fraction of its scores (all its weights together)
  strictly above ``M`` times the mean of those scores;
* the ratios are rescaled linearly onto ``[0, 2 lambda]``, then shifted so that their mean
  is ``1 - sparsity``: these are the layers' densities, and ``level = 1 - density``.

The paper's mean is unweighted; ``fs.distributions.owl`` documents a mean weighted by the
layers' numbers of weights (equal to the paper's when the layers are of one size), so the
reference takes the weighting as a switch and the tests check both: the weighted one
against fs everywhere, the paper's unweighted one where the layers are of one size. The
layers are given to the reference by hand (``{path: layer}``), not through fs' ``blocks``
parsing. Levels are compared where no level leaves [0, 1] (``2 lambda <= sparsity <= 1 -
2 lambda``: the paper's own range; clipping beyond it is funcsparse's extension, checked
here by its documented invariants only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.demo_data import load_digits

owl = fs.distributions.owl

TOL = 1e-12


def reference_owl(
    params: Mapping[str, Tensor],
    norms: Mapping[str, Tensor | None],
    layer_of: Mapping[str, str],
    *,
    sparsity: float,
    m: float = 5.0,
    lam: float = 0.08,
    weighted: bool = True,
) -> dict[str, float]:
    """OWL's levels ``{path: level}`` for the paths with norms; ``layer_of`` names every
    such path's layer."""
    paths = [path for path in params if norms.get(path) is not None]
    layers = list(dict.fromkeys(layer_of[path] for path in paths))
    ratios, sizes = [], []
    for name in layers:
        # scores in the weights' dtype (float32 for a float32 model, as the paper's code
        # computes them), their mean and the comparison in float64
        scores = np.concatenate(
            [
                (
                    np.abs(params[path].detach().numpy()) * norms[path].detach().numpy()  # type: ignore[union-attr]  # reason: the norms at these paths are tensors, never None
                ).ravel()
                for path in paths
                if layer_of[path] == name
            ]
        ).astype(np.float64)
        ratios.append(np.count_nonzero(scores > m * scores.mean()) / scores.size)
        sizes.append(scores.size)
    d = np.array(ratios)
    if d.max() == d.min():
        return dict.fromkeys(paths, sparsity)
    density = (d - d.min()) / (d.max() - d.min()) * 2 * lam
    weights = np.array(sizes, dtype=np.float64) if weighted else np.ones(len(sizes))
    density = density - np.average(density, weights=weights) + (1 - sparsity)
    level = dict(zip(layers, (1 - density).tolist(), strict=True))
    return {path: level[layer_of[path]] for path in paths}


def assert_levels_close(got: Mapping[str, float], expected: Mapping[str, float]) -> None:
    assert set(got) == set(expected)  # (fs orders them as params' leaves: sorted keys)
    for path, level in expected.items():
        assert got[path] == pytest.approx(level, abs=TOL), path


def heavy_tailed(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Student-t-like weights (a normal over a random scale): outliers in some layers."""
    normal = torch.randn(shape, generator=generator, dtype=torch.float64)
    scale = torch.rand(shape, generator=generator, dtype=torch.float64) ** 3 + 0.05
    return normal / scale


# ---------------------------------------------------------------------------------------
# Models: a digits MLP (real activations), a transformer-shaped stack, random stacks.
# ---------------------------------------------------------------------------------------


def digits_mlp() -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """A random ``64 -> 48 -> 32 -> 10`` ReLU MLP and its input norms on the digits,
    computed here by hand (every layer's input, each feature's L2 norm over the images)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    ).double()
    x, _ = load_digits()
    h = x.double()
    params: dict[str, Tensor] = {}
    norms: dict[str, Tensor | None] = {}
    with torch.no_grad():
        for i in (0, 2, 4):
            linear = model[i]
            assert isinstance(linear, nn.Linear)
            params[f"{i}.weight"] = linear.weight.detach()
            params[f"{i}.bias"] = linear.bias.detach()
            norms[f"{i}.weight"], norms[f"{i}.bias"] = h.norm(dim=0), None
            h = torch.relu(linear(h))
    return params, norms


def transformer_stack(
    seed: int, *, n_blocks: int = 3, width: int = 16
) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """``layers.{i}.{attn.qkv, attn.out, mlp.up, mlp.down}.weight`` and biases; norms of
    heavy-tailed features (a few inputs far above the rest, as in LLMs)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "attn.qkv": (3 * width, width),
        "attn.out": (width, width),
        "mlp.up": (4 * width, width),
        "mlp.down": (width, 4 * width),
    }
    params: dict[str, Tensor] = {}
    norms: dict[str, Tensor | None] = {}
    for i in range(n_blocks):
        for name, shape in shapes.items():
            path = f"layers.{i}.{name}"
            params[f"{path}.weight"] = heavy_tailed(shape, g)
            norms[f"{path}.weight"] = torch.rand(shape[1], generator=g, dtype=torch.float64) ** 4
            params[f"{path}.bias"] = torch.randn(shape[0], generator=g, dtype=torch.float64)
            norms[f"{path}.bias"] = None
    return params, norms


def block_of(path: str) -> str:
    return ".".join(path.split(".")[:2])  # layers.3.mlp.up.weight -> layers.3


# ---------------------------------------------------------------------------------------
# Self-checks of the reference.
# ---------------------------------------------------------------------------------------


def test_reference_follows_the_paper_on_a_hand_case() -> None:
    """Layers of 10, 10 and 20 weights, norms 1. Outliers (above 5x the layer mean): none;
    100 of mean 10.9; three 1000s of mean 150.85. Ratios [0, 0.1, 0.15], rescaled onto
    [0, 0.16]: r = [0, 0.32/3, 0.16]; level = sparsity - r + mean(r)."""
    params = {
        "l0": torch.ones(1, 10, dtype=torch.float64),
        "l1": torch.tensor([[100.0] + [1.0] * 9], dtype=torch.float64),
        "l2": torch.tensor([[1000.0] * 3 + [1.0] * 17], dtype=torch.float64),
    }
    norms: dict[str, Tensor | None] = {
        path: torch.ones(p.shape[1], dtype=torch.float64) for path, p in params.items()
    }
    layer_of = {p: p for p in params}
    paper = reference_owl(params, norms, layer_of, sparsity=0.5, weighted=False)
    mean = (0.32 / 3 + 0.16) / 3
    assert paper == pytest.approx(
        {"l0": 0.5 + mean, "l1": 0.5 - 0.32 / 3 + mean, "l2": 0.5 - 0.16 + mean}, abs=TOL
    )
    weighted = reference_owl(params, norms, layer_of, sparsity=0.5)
    mean = (0.32 / 3 * 10 + 0.16 * 20) / 40
    expected = {"l0": 0.5 + mean, "l1": 0.5 - 0.32 / 3 + mean, "l2": 0.5 - 0.16 + mean}
    assert weighted == pytest.approx(expected, abs=TOL)
    assert_levels_close(owl(params, norms, sparsity=0.5), expected)


def test_reference_equal_ratios_give_the_target() -> None:
    params, norms = transformer_stack(0, n_blocks=2)
    same = {path: params["layers.0.mlp.up.weight"] for path in params if norms[path] is not None}
    same_norms = {path: norms["layers.0.mlp.up.weight"] for path in same}
    levels = reference_owl(same, same_norms, {p: p for p in same}, sparsity=0.6)
    assert set(levels.values()) == {0.6}


# ---------------------------------------------------------------------------------------
# fs.distributions.owl against the reference.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sparsity", "m", "lam"), [(0.5, 5.0, 0.08), (0.7, 3.0, 0.08), (0.3, 7.0, 0.05)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference_digits_mlp(
    sparsity: float, m: float, lam: float, dtype: torch.dtype
) -> None:
    params, norms = digits_mlp()
    params = {path: p.to(dtype) for path, p in params.items()}
    norms = {path: None if n is None else n.to(dtype) for path, n in norms.items()}
    got = owl(params, norms, sparsity=sparsity, outlier_threshold=m, max_deviation=lam)
    layer_of = {path: path for path in params}
    expected = reference_owl(params, norms, layer_of, sparsity=sparsity, m=m, lam=lam)
    assert_levels_close(got, expected)
    assert len(set(expected.values())) == 3  # three layers, three levels: not a flat case
    sizes = {path: params[path].numel() for path in expected}
    total = sum(sizes.values())
    assert sum(got[p] * sizes[p] for p in got) / total == pytest.approx(sparsity, abs=TOL)


@pytest.mark.parametrize("blocks", ["layers.*", ["layers.0", "layers.1", "layers.2", "layers.3"]])
@pytest.mark.parametrize(("sparsity", "m", "lam"), [(0.5, 5.0, 0.08), (0.6, 3.0, 0.1)])
def test_matches_reference_transformer_blocks(
    blocks: Any, sparsity: float, m: float, lam: float
) -> None:
    params, norms = transformer_stack(1, n_blocks=4)
    got = owl(
        params, norms, sparsity=sparsity, blocks=blocks, outlier_threshold=m, max_deviation=lam
    )
    layer_of = {path: block_of(path) for path in params}
    expected = reference_owl(params, norms, layer_of, sparsity=sparsity, m=m, lam=lam)
    assert_levels_close(got, expected)
    # blocks of one size: the paper's unweighted mean is the same
    paper = reference_owl(params, norms, layer_of, sparsity=sparsity, m=m, lam=lam, weighted=False)
    assert_levels_close(got, paper)
    assert len(set(expected.values())) == 4
    assert max(got.values()) - min(got.values()) == pytest.approx(2 * lam, abs=TOL)


def test_matches_reference_per_leaf_layers_of_different_sizes() -> None:
    params, norms = transformer_stack(2, n_blocks=2)
    got = owl(params, norms, sparsity=0.5)
    layer_of = {path: path for path in params}
    assert_levels_close(got, reference_owl(params, norms, layer_of, sparsity=0.5))
    paper = reference_owl(params, norms, layer_of, sparsity=0.5, weighted=False)
    # sizes differ: the paper's unweighted mean misses the total, fs' weighted one does not
    assert any(abs(got[p] - paper[p]) > 1e-6 for p in got)


def test_equal_ratios_give_the_target() -> None:
    params, norms = transformer_stack(0, n_blocks=2)
    same = {path: params["layers.0.mlp.up.weight"] for path in params if norms[path] is not None}
    same_norms: dict[str, Tensor | None] = {path: norms["layers.0.mlp.up.weight"] for path in same}
    assert owl(same, same_norms, sparsity=0.6) == dict.fromkeys(same, 0.6)


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    n_layers = draw(st.integers(2, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**20)))
    params: dict[str, Tensor] = {}
    norms: dict[str, Tensor | None] = {}
    layer_of: dict[str, str] = {}
    grouped = draw(st.booleans())
    for i in range(n_layers):
        for j in range(draw(st.integers(1, 3)) if grouped else 1):
            shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
            path = f"blocks.{i}.lin{j}.weight"
            params[path] = heavy_tailed(shape, g)
            norms[path] = torch.rand(shape[1], generator=g, dtype=torch.float64) ** 3
            layer_of[path] = f"blocks.{i}" if grouped else path
    lam = draw(st.sampled_from([0.0, 0.02, 0.08, 0.2]))
    sparsity = draw(st.floats(2 * lam, 1 - 2 * lam))
    return {
        "params": params,
        "norms": norms,
        "layer_of": layer_of,
        "blocks": "blocks.*" if grouped else None,
        "sparsity": sparsity,
        "m": draw(st.sampled_from([1.0, 2.0, 3.0, 5.0, 7.0])),
        "lam": lam,
    }


@settings(max_examples=40, deadline=None)
@given(stacks())
def test_matches_reference_property(case: dict[str, Any]) -> None:
    got = owl(
        case["params"],
        case["norms"],
        sparsity=case["sparsity"],
        blocks=case["blocks"],
        outlier_threshold=case["m"],
        max_deviation=case["lam"],
    )
    expected = reference_owl(
        case["params"],
        case["norms"],
        case["layer_of"],
        sparsity=case["sparsity"],
        m=case["m"],
        lam=case["lam"],
    )
    assert_levels_close(got, expected)


@pytest.mark.parametrize("sparsity", [0.0, 0.05, 0.95, 1.0])
def test_clipped_levels_keep_the_documented_invariants(sparsity: float) -> None:
    """Beyond the paper's range: levels in [0, 1], weighted mean the target, the order of
    the reference's levels kept (more outliers, lower level)."""
    params, norms = transformer_stack(3, n_blocks=4)
    got = owl(params, norms, sparsity=sparsity, blocks="layers.*", max_deviation=0.2)
    layer_of = {path: block_of(path) for path in params}
    unclipped = reference_owl(params, norms, layer_of, sparsity=sparsity, lam=0.2)
    assert all(0.0 <= level <= 1.0 for level in got.values())
    sizes = {path: params[path].numel() for path in got}
    mean = sum(got[p] * sizes[p] for p in got) / sum(sizes.values())
    assert mean == pytest.approx(sparsity, abs=1e-9)
    for a in got:
        for b in got:
            if unclipped[a] < unclipped[b]:
                assert got[a] <= got[b] + TOL
