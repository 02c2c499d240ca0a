"""OWL: the paper's levels restated directly, properties, blocks, edge cases, errors."""

from __future__ import annotations

import importlib
import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.distributions import level_rules, owl
from funcsparse.testing import check_masks

owl_module = importlib.import_module("funcsparse.distributions.owl")


# -- the direct restatement -------------------------------------------------------------------


def layer_ratio(weights: list[Tensor], norms: list[Tensor], threshold: float) -> float:
    """A layer's outlier ratio as the reference computes it: every score of the layer
    concatenated, the fraction above ``threshold`` times their mean."""
    scores = np.concatenate(
        [
            (w.double().abs() * n.double()).numpy().ravel()
            for w, n in zip(weights, norms, strict=True)
        ]
    )
    return float(np.mean(scores > threshold * np.mean(scores)))


def reference_levels(
    layers: list[tuple[list[Tensor], list[Tensor]]],
    sparsity: float,
    threshold: float = 5.0,
    lam: float = 0.08,
    *,
    weighted: bool = True,
) -> list[float]:
    """OWL as the reference code computes it (prune_wanda_outlier's all_layer_ratio): ratios
    rescaled to [0, 2 * lambda], shifted to mean ``1 - sparsity`` as densities; the mean
    weighted by the layers' sizes (``weighted``) or, as the reference, unweighted."""
    ratios = np.array([layer_ratio(w, n, threshold) for w, n in layers])
    sizes = np.array([sum(t.numel() for t in w) for w, _ in layers], dtype=np.float64)
    if ratios.max() == ratios.min():
        return [sparsity] * len(layers)
    rescaled = (ratios - ratios.min()) / (ratios.max() - ratios.min()) * lam * 2
    mean = np.sum(rescaled * sizes) / np.sum(sizes) if weighted else np.mean(rescaled)
    density = rescaled - mean + (1 - sparsity)
    return [float(1 - d) for d in density]


# -- small models with exact sums: integer weights, dyadic norms -------------------------------


@st.composite
def models(
    draw: st.DrawFn, *, max_blocks: int = 5, equal: bool = False
) -> tuple[dict[str, Tensor], dict[str, Tensor | None], list[str]]:
    """``layers.{i}.{name}`` weights (2-D to 4-D, integer values with a few large outliers)
    and biases without norms; every sum of scores is exact in float64 whatever its order."""
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    n_blocks = draw(st.integers(1, max_blocks))
    params: dict[str, Tensor] = {}
    norms: dict[str, Tensor | None] = {}
    shapes = draw(
        st.lists(
            st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple),
            min_size=1,
            max_size=3,
        )
    )
    prefixes = []
    for block in range(n_blocks):
        prefix = f"layers.{block}"
        prefixes.append(prefix)
        block_shapes = (
            shapes
            if equal
            else draw(
                st.lists(
                    st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple),
                    min_size=1,
                    max_size=3,
                )
            )
        )
        outliers = draw(st.integers(0, 6))
        for index, shape in enumerate(block_shapes):
            weight = torch.randint(-4, 5, shape, generator=generator).double()
            flat = weight.view(-1)
            picks = torch.randint(0, flat.numel(), (outliers,), generator=generator)
            flat[picks] = 64.0 * torch.randint(1, 4, (outliers,), generator=generator).double()
            dtype = draw(st.sampled_from([torch.float32, torch.float64]))
            params[f"{prefix}.lin{index}.weight"] = weight.to(dtype)
            quarters = torch.randint(0, 9, shape[1:], generator=generator).double() / 4
            norms[f"{prefix}.lin{index}.weight"] = quarters.to(dtype)
            params[f"{prefix}.lin{index}.bias"] = torch.randn(shape[0], generator=generator)
            norms[f"{prefix}.lin{index}.bias"] = None
    return params, norms, prefixes


def grouped(
    params: dict[str, Tensor], norms: dict[str, Tensor | None], prefixes: list[str]
) -> list[tuple[list[Tensor], list[Tensor]]]:
    layers = []
    for prefix in prefixes:
        paths = [p for p in params if p.startswith(prefix + ".") and norms[p] is not None]
        layers.append(([params[p] for p in paths], [norms[p] for p in paths]))  # type: ignore[misc]  # reason: norms here are never None (the test built them)
    return layers


def weighted_mean(levels: dict[str, float], params: dict[str, Tensor]) -> float:
    total = sum(params[path].numel() for path in levels)
    return math.fsum(level * params[path].numel() for path, level in levels.items()) / total


# -- against the restatement ------------------------------------------------------------------


@settings(deadline=None)
@given(
    models(),
    st.floats(0.2, 0.8),
    st.sampled_from([2.0, 3.0, 5.0, 7.0]),
    st.floats(0.0, 0.1),
)
def test_equals_the_reference_computation_on_unequal_blocks(
    model: Any, sparsity: float, threshold: float, lam: float
) -> None:
    params, norms, prefixes = model
    expected = reference_levels(grouped(params, norms, prefixes), sparsity, threshold, lam)
    for blocks in (prefixes, "layers.*", tuple(prefixes)):
        levels = owl(
            params,
            norms,
            sparsity=sparsity,
            blocks=blocks,
            outlier_threshold=threshold,
            max_deviation=lam,
        )
        assert list(levels) == [p for p in params if norms[p] is not None]
        for path, level in levels.items():
            block = prefixes.index(".".join(path.split(".")[:2]))
            assert level == pytest.approx(expected[block], abs=1e-12), path


@settings(deadline=None)
@given(models(equal=True), st.floats(0.2, 0.8))
def test_equal_blocks_give_the_papers_unweighted_levels(model: Any, sparsity: float) -> None:
    params, norms, prefixes = model
    layers = grouped(params, norms, prefixes)
    unweighted = reference_levels(layers, sparsity, weighted=False)
    levels = owl(params, norms, sparsity=sparsity, blocks="layers.*")
    for i, prefix in enumerate(prefixes):
        assert levels[f"{prefix}.lin0.weight"] == pytest.approx(unweighted[i], abs=1e-12)


@settings(deadline=None)
@given(models(max_blocks=2), st.floats(0.2, 0.8))
def test_default_blocks_make_every_leaf_a_layer(model: Any, sparsity: float) -> None:
    params, norms, _ = model
    paths = [p for p in params if norms[p] is not None]
    layers = [([params[p]], [norms[p]]) for p in paths]
    expected = reference_levels(layers, sparsity)  # type: ignore[arg-type]  # reason: the test's own tensors, which numpy-typed reference accepts
    levels = owl(params, norms, sparsity=sparsity)
    assert levels == pytest.approx(dict(zip(paths, expected, strict=True)), abs=1e-12)


# -- properties -------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    models(),
    st.one_of(st.sampled_from([0.0, 0.01, 0.5, 0.95, 0.99, 1.0]), st.floats(0.0, 1.0)),
    st.sampled_from([1.0, 3.0, 5.0]),
    st.one_of(st.sampled_from([0.0, 0.08, 0.5]), st.floats(0.0, 0.5)),
)
def test_levels_are_fractions_that_average_to_the_target(
    model: Any, sparsity: float, threshold: float, lam: float
) -> None:
    params, norms, prefixes = model
    levels = owl(
        params,
        norms,
        sparsity=sparsity,
        blocks=prefixes,
        outlier_threshold=threshold,
        max_deviation=lam,
    )
    assert all(isinstance(level, float) and 0.0 <= level <= 1.0 for level in levels.values())
    assert abs(weighted_mean(levels, params) - sparsity) <= 1e-12
    assert max(levels.values()) - min(levels.values()) <= 2 * lam + 1e-12
    # every leaf of a block at the block's level, and more outliers never a higher level
    layers = grouped(params, norms, prefixes)
    ratios = [layer_ratio(w, n, threshold) for w, n in layers]
    block_levels = []
    for prefix in prefixes:
        members = {level for path, level in levels.items() if path.startswith(prefix + ".")}
        assert len(members) == 1
        block_levels.append(members.pop())
    for i in range(len(prefixes)):
        for j in range(len(prefixes)):
            if ratios[i] > ratios[j]:
                assert block_levels[i] <= block_levels[j]
            if ratios[i] == ratios[j]:
                assert block_levels[i] == block_levels[j]


def test_more_outliers_give_a_lower_level() -> None:
    generator = torch.Generator().manual_seed(0)
    params = {f"b{i}.w": torch.randn(16, 16, generator=generator) for i in range(3)}
    norms = {path: torch.ones(16) for path in params}
    # b0 plain (no score above 5x the mean), b1 two outliers, b2 six
    params["b1.w"][0, :2] = 50.0
    params["b2.w"][1, :6] = 50.0
    levels = owl(params, norms, sparsity=0.6)
    assert levels["b0.w"] > levels["b1.w"] > levels["b2.w"]
    assert levels["b0.w"] - levels["b2.w"] == pytest.approx(0.16, abs=1e-12)  # 2 * lambda
    assert sum(levels.values()) / 3 == pytest.approx(0.6, abs=1e-12)
    # lambda and M as the paper's: a wider lambda spreads further; a high M sees no outlier
    wide = owl(params, norms, sparsity=0.6, max_deviation=0.2)
    assert wide["b0.w"] - wide["b2.w"] == pytest.approx(0.4, abs=1e-12)
    blind = owl(params, norms, sparsity=0.6, outlier_threshold=1e6)
    assert set(blind.values()) == {0.6}
    # input norms count: the same outliers under a zero norm are no outliers
    quiet = dict(norms, **{"b2.w": torch.cat([torch.ones(15), torch.zeros(1)])})
    params["b2.w"][1, :6] = 1.0
    params["b2.w"][:, 15] = 50.0  # a whole column of large weights on a silent input
    assert owl(params, quiet, sparsity=0.6)["b2.w"] == owl(params, quiet, sparsity=0.6)["b0.w"]


# -- edge cases -------------------------------------------------------------------------------


def test_equal_ratios_give_the_target_everywhere() -> None:
    params = {"a": torch.ones(4, 4), "b": torch.full((2, 8), 3.0), "c": torch.ones(3, 5)}
    norms = {path: torch.ones(leaf.shape[1:]) for path, leaf in params.items()}
    assert owl(params, norms, sparsity=0.37) == {"a": 0.37, "b": 0.37, "c": 0.37}
    one = {"a": params["a"]}
    assert owl(one, {"a": norms["a"]}, sparsity=0.9, blocks=["a"]) == {"a": 0.9}
    assert owl({}, {}, sparsity=0.5) == {}
    only_bias = owl({"b": torch.ones(3)}, {"b": None}, sparsity=0.5)
    assert only_bias == {}


def test_targets_near_the_ends_are_clipped_and_redistributed() -> None:
    generator = torch.Generator().manual_seed(1)
    params = {f"b{i}.w": torch.randn(8, 8, generator=generator) for i in range(4)}
    params["b3.w"][0, :8] = 60.0
    params["b2.w"][0, :3] = 60.0
    norms = {path: torch.ones(8) for path in params}
    for target in (0.95, 0.99, 0.02, 0.0, 1.0):
        levels = owl(params, norms, sparsity=target, max_deviation=0.1)
        values = list(levels.values())
        assert all(0.0 <= v <= 1.0 for v in values)
        assert sum(values) / 4 == pytest.approx(target, abs=1e-12)
        assert max(values) - min(values) <= 0.2 + 1e-12
        assert values[0] >= values[2] >= values[3]
    high = owl(params, norms, sparsity=0.95, max_deviation=0.1)
    assert high["b0.w"] == high["b1.w"] == 1.0  # 0.95 + ~0.07 clipped; the rest pruned less
    # offsets (0, 0, 0.075, 0.2): 0.95 + 0.06875 would put b0 and b1 at 1.01875; clipped
    # to 1, their excess 2 * 0.01875 moves to b2 and b3, which rise together by 0.01875
    assert high["b2.w"] == pytest.approx(0.9625, abs=1e-12)
    assert high["b3.w"] == pytest.approx(0.8375, abs=1e-12)
    assert set(owl(params, norms, sparsity=0.0).values()) == {0.0}
    assert set(owl(params, norms, sparsity=1.0).values()) == {1.0}


def test_an_empty_layer_gets_the_target_and_weighs_nothing() -> None:
    generator = torch.Generator().manual_seed(2)
    params = {
        "a.w": torch.randn(6, 6, generator=generator),
        "b.w": torch.randn(6, 6, generator=generator),
        "e.w": torch.ones(0, 6),
    }
    params["b.w"][0, :3] = 40.0
    norms = {path: torch.ones(6) for path in params}
    levels = owl(params, norms, sparsity=0.5)
    assert levels["e.w"] == 0.5
    assert (levels["a.w"] + levels["b.w"]) / 2 == pytest.approx(0.5, abs=1e-12)
    assert levels["a.w"] == pytest.approx(0.58, abs=1e-12)


def test_chunks_give_the_same_levels_and_inputs_stay_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(3)
    params = {
        f"layers.{i}.{name}": torch.randint(-5, 6, (12, 10), generator=generator).double()
        for i in range(3)
        for name in ("q", "k")
    }
    params["layers.1.q"][3, :4] = 80.0
    norms = {path: torch.randint(0, 5, (10,), generator=generator).double() / 2 for path in params}
    saved = {path: leaf.clone() for path, leaf in params.items()}
    whole = owl(params, norms, sparsity=0.7, blocks="layers.*")
    monkeypatch.setattr(owl_module, "_CHUNK", 7)  # a row or so at a time
    assert owl(params, norms, sparsity=0.7, blocks="layers.*") == whole
    assert all(torch.equal(params[path], saved[path]) for path in params)


def test_nested_pytrees_and_conv_weights() -> None:
    generator = torch.Generator().manual_seed(4)
    params = {
        "blocks": [
            {
                "conv": {"weight": torch.randn(4, 2, 3, 3, generator=generator)},
                "scale": torch.ones(4),
            },
            {
                "conv": {"weight": torch.randn(4, 2, 3, 3, generator=generator) * 0.1},
                "scale": torch.ones(4),
            },
        ]
    }
    params["blocks"][1]["conv"]["weight"][0, 0] = 30.0
    norms = {
        "blocks": [
            {"conv": {"weight": torch.ones(2, 3, 3)}, "scale": None},
            {"conv": {"weight": torch.ones(2, 3, 3)}, "scale": None},
        ]
    }
    levels = owl(params, norms, sparsity=0.5, blocks="blocks.*")
    assert levels == pytest.approx({"blocks.0.conv.weight": 0.58, "blocks.1.conv.weight": 0.42})


# -- with methods, through level_rules --------------------------------------------------------


def test_with_wanda_and_magnitude_through_level_rules() -> None:
    generator = torch.Generator().manual_seed(5)
    params = {
        f"layers.{i}.{name}.weight": torch.randn(32, 64, generator=generator)
        for i in range(4)
        for name in ("up", "down")
    }
    params["layers.3.up.weight"][:2, :10] *= 20
    params["layers.1.down.weight"][:1, :10] *= 20
    params["head.bias"] = torch.randn(8, generator=generator)
    norms: dict[str, Tensor | None] = {
        path: torch.rand(64, generator=generator) + 0.5 for path in params
    }
    norms["head.bias"] = None
    levels = owl(params, norms, sparsity=0.6, blocks="layers.*")
    assert "head.bias" not in levels
    total = sum(params[path].numel() for path in levels)
    for method in (fs.Wanda(), fs.Magnitude(0.5)):
        rules = level_rules(levels, method)
        data = {"input_norms": norms} if isinstance(method, fs.Wanda) else {}
        masks = fs.compute_masks(params, rules, **data)
        assert masks["head.bias"] is None
        check_masks(params, rules, masks, **data)
        pruned = sum(int((~masks[path]).sum()) for path in levels)
        # every leaf rounds its own count (Wanda: a floor per row of 64)
        assert abs(pruned - 0.6 * total) <= 32 * len(levels)
        for path, level in levels.items():
            assert abs(int((~masks[path]).sum()) / params[path].numel() - level) <= 1 / 64
    assert levels["layers.3.up.weight"] < levels["layers.0.up.weight"]


def test_with_sparsegpt_through_level_rules() -> None:
    levels = {"a.weight": 0.3, "b.weight": 0.7}
    rules = level_rules(levels, fs.SparseGPT())
    assert {path: rule.sparsity for path, rule in rules.items()} == levels  # type: ignore[attr-defined]  # reason: every rule is a SparseGPT, which has .sparsity
    assert all(type(rule) is fs.SparseGPT for rule in rules.values())


# -- errors -----------------------------------------------------------------------------------

PARAMS = {"l0.a": torch.ones(2, 4), "l0.b": torch.ones(3, 4), "l1.a": torch.ones(2, 4)}
NORMS = {path: torch.ones(4) for path in PARAMS}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sparsity": 1.5}, ValueError, "owl: sparsity must be a fraction in [0, 1], got 1.5"),
        ({"sparsity": "0.5"}, TypeError, "owl: sparsity must be a fraction in [0, 1], got str"),
        (
            {"sparsity": 0.5, "outlier_threshold": 0},
            ValueError,
            "owl: outlier_threshold=0 must be positive (the paper's M",
        ),
        (
            {"sparsity": 0.5, "outlier_threshold": math.inf},
            ValueError,
            "owl: outlier_threshold=inf must be finite",
        ),
        (
            {"sparsity": 0.5, "outlier_threshold": None},
            TypeError,
            "owl: outlier_threshold must be a real number, got None",
        ),
        (
            {"sparsity": 0.5, "max_deviation": 0.6},
            ValueError,
            "owl: max_deviation=0.6 must be in [0, 0.5] (the paper's lambda",
        ),
        (
            {"sparsity": 0.5, "max_deviation": -0.01},
            ValueError,
            "owl: max_deviation=-0.01 must be in [0, 0.5]",
        ),
        (
            {"sparsity": 0.5, "blocks": 3},
            TypeError,
            "owl: blocks must be None, a glob pattern (str) or a sequence of module-name "
            "prefixes (str), got int 3",
        ),
        (
            {"sparsity": 0.5, "blocks": ["l0", 1]},
            TypeError,
            "owl: blocks must be None, a glob pattern (str) or a sequence",
        ),
        (
            {"sparsity": 0.5, "blocks": ["l0"]},
            ValueError,
            "owl: 1 leaf(s) with input_norms lie in no block ('l1.a'): they lie under none of "
            "the blocks' prefixes; add a block for them, or give them input_norms of None to "
            "leave them out",
        ),
        (
            {"sparsity": 0.5, "blocks": ["l0", "l1", "l2"]},
            ValueError,
            "owl: the block 'l2' holds no leaf with input_norms (a typo, or norms of None there?)",
        ),
        (
            {"sparsity": 0.5, "blocks": ["l0", "l0.b", "l1"]},
            ValueError,
            "owl: the leaf at 'l0.b' lies in two blocks, 'l0' and 'l0.b'; blocks must not nest",
        ),
        (
            {"sparsity": 0.5, "blocks": ["l0", "l1", "l0"]},
            ValueError,
            "owl: blocks holds the prefix 'l0' twice",
        ),
        ({"sparsity": 0.5, "blocks": ["", "l1"]}, ValueError, "owl: blocks holds an empty prefix"),
        (
            {"sparsity": 0.5, "blocks": "layers.*"},
            ValueError,
            "owl: blocks='layers.*' matches no prefix of a leaf with input_norms (those "
            "leaves: 'l0.a', 'l0.b', 'l1.a')",
        ),
        (
            {"sparsity": 0.5, "blocks": "l0"},
            ValueError,
            "owl: 1 leaf(s) with input_norms lie in no block ('l1.a'): no prefix of their paths "
            "matches blocks='l0'",
        ),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        owl(PARAMS, NORMS, **kwargs)


def test_bad_leaves_and_norms_raise_naming_the_path() -> None:
    with pytest.raises(ValueError, match=r"owl: input_norms at 'l0\.b' has shape \(3,\)"):
        owl(PARAMS, dict(NORMS, **{"l0.b": torch.ones(3)}), sparsity=0.5)
    with pytest.raises(ValueError, match=r"owl: input_norms at 'l1\.a' has entry 0 = -1\.0"):
        owl(PARAMS, dict(NORMS, **{"l1.a": -torch.ones(4)}), sparsity=0.5)
    with pytest.raises(ValueError, match=r"owl: input_norms does not have the structure"):
        owl(PARAMS, {"l0.a": torch.ones(4)}, sparsity=0.5)
    with pytest.raises(TypeError, match=r"owl: input_norms at 'l0\.a' is .*int64"):
        owl(PARAMS, dict(NORMS, **{"l0.a": torch.ones(4, dtype=torch.int64)}), sparsity=0.5)
    with pytest.raises(ValueError, match=r"owl: the leaf at 'l0\.a' is a 1-D"):
        owl({"l0.a": torch.ones(4)}, {"l0.a": torch.ones(())}, sparsity=0.5)
    nan = dict(PARAMS, **{"l1.a": torch.tensor([[1.0, math.nan, 0, 0], [0, 0, 0, 0]])})
    with pytest.raises(ValueError, match=r"owl: the leaf at 'l1\.a' holds a value that is NaN"):
        owl(nan, NORMS, sparsity=0.5)
    meta = {"w": torch.ones(2, 4, device="meta")}
    with pytest.raises(ValueError, match=r"owl: .*'w'.*meta"):
        owl(meta, {"w": torch.ones(4, device="meta")}, sparsity=0.5)


def test_the_function_lives_in_its_own_module() -> None:
    assert owl is fs.distributions.owl
    assert owl_module.owl is owl and owl.__module__ == "funcsparse.distributions.owl"


def test_outliers_are_counted_exactly_against_the_float64_bound() -> None:
    """float32 scores against a float64 bound: the bound is rounded down to float32 first,
    so a score above the rounded bound is above the bound itself, and no other is."""
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        leaf, norms = torch.tensor([[3.0, 1.0]], dtype=dtype), torch.ones(2, dtype=dtype)
        assert owl_module._count_above(leaf, norms, 3.0 - 1e-12) == 1  # 3 > 2.999999999999
        assert owl_module._count_above(leaf, norms, 3.0) == 0
        assert owl_module._count_above(leaf, norms, 3.0 + 1e-12) == 0
        assert owl_module._count_above(leaf, norms, 0.5) == 2


def test_half_precision_weights_give_the_levels_of_their_values() -> None:
    generator = torch.Generator().manual_seed(6)
    params = {
        f"b{i}.w": torch.randint(-4, 5, (6, 8), generator=generator).float() for i in range(3)
    }
    params["b1.w"][0, :3] = 100.0
    norms = {path: torch.full((8,), 0.5) for path in params}
    expected = owl(params, norms, sparsity=0.5)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        cast = {path: leaf.to(dtype) for path, leaf in params.items()}
        assert owl(cast, {p: n.to(dtype) for p, n in norms.items()}, sparsity=0.5) == expected


def test_owl_keeps_params_order() -> None:
    params = {"z.weight": torch.randn(4, 8), "b.bias": torch.ones(4), "a.weight": torch.randn(4, 8)}
    params["10.weight"] = torch.randn(4, 8)
    params["2.weight"] = torch.randn(4, 8)
    norms = {path: (torch.ones(8) if leaf.dim() == 2 else None) for path, leaf in params.items()}
    levels = fs.distributions.owl(params, norms, sparsity=0.5)
    assert list(levels) == ["z.weight", "a.weight", "10.weight", "2.weight"]
    by_glob = fs.distributions.owl(params, norms, sparsity=0.5, blocks="*")
    assert list(by_glob) == list(levels)
    by_prefix = fs.distributions.owl(params, norms, sparsity=0.5, blocks=["2", "a", "z", "10"])
    assert list(by_prefix) == list(levels)
    assert list(fs.distributions.level_rules(levels, fs.Wanda())) == list(levels)
    sorted_params = dict(sorted(params.items()))
    sorted_norms = {path: norms[path] for path in sorted_params}
    same = fs.distributions.owl(sorted_params, sorted_norms, sparsity=0.5)
    assert same == levels and list(same) == sorted(levels)  # the same levels, each dict's order
