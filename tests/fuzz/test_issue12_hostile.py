"""Hostile inputs for issue 12's entries: fs.SparseGPT (config and call), fs.prune,
collect_hessians / collect_statistics, fs.distributions.owl / level_rules and
fs.Wanda(n=, m=).

Properties (see ``hostile.guarded``): only TypeError/ValueError escape, with short messages
that name the function, the leaf path where there is one, and the bad value; nothing passed
in changes; what comes back keeps every promise (exact counts, zeros where pruned, finite
updated weights, levels in [0, 1] in params' order), never a silently wrong mask.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.calibration import collect_hessians, collect_input_norms, collect_statistics
from funcsparse.distributions import level_rules, owl
from funcsparse.methods.sparsegpt import SparseGPT
from funcsparse.testing import check_leaf_mask
from tests.fuzz.hostile import (
    HUGE,
    Raised,
    assert_mask,
    fuzz,
    guarded,
    junk,
    levels,
    tensors,
)

W = torch.tensor([[4.0, -1.0, 2.0, 0.5], [1.0, 3.0, -0.25, 2.0]])
X = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.9, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
H = X.T @ X
PARAMS = {"fc.weight": W, "fc.bias": torch.ones(2)}
HESSIANS = {"fc.weight": H, "fc.bias": None}
OWL_PARAMS = {"b.weight": torch.randn(4, 8), "a.weight": torch.randn(4, 8)}
OWL_NORMS = {"b.weight": torch.ones(8), "a.weight": torch.ones(8)}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


MODEL = _model()
MODEL_PARAMS = {name: p.detach() for name, p in MODEL.named_parameters()}
BATCHES = [torch.randn(3, 8)]


def _raises(where: str, call: Callable[[], Any], error: type, *parts: str) -> None:
    result = guarded(where, call)
    assert isinstance(result, Raised), f"{where}: returned {type(result).__name__}, not an error"
    assert type(result.error) is error, f"{where}: {type(result.error).__name__}: {result.error}"
    for part in parts:
        assert part in str(result.error), f"{where}: {part!r} not in {str(result.error)!r}"


# -- hand cases: each was an escape or a silent result before ---------------------------------

BAD_CALLS: list[tuple[str, Callable[[], Any], type, tuple[str, ...]]] = [
    # SparseGPT on values that overflow its dtype: inf weights or a garbage mask before.
    (
        "float16 update overflows",
        lambda: SparseGPT(0.5).prune_leaf(
            torch.tensor([[65000.0, 60000, 60000, 60000]] * 2, dtype=torch.float16),
            hessian=torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1.01], [1, 1, 0.99, 1]]).T
            @ torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1.01], [1, 1, 0.99, 1]]),
        ),
        ValueError,
        ("SparseGPT:", "[0, 2] does not fit torch.float16", "float32 copy"),
    ),
    (
        "float32 scores overflow",
        lambda: SparseGPT(0.5).prune_leaf(
            torch.tensor([[3e30, -1e30], [2e30, 4e30]]), hessian=torch.eye(2) * 1e30
        ),
        ValueError,
        ("SparseGPT:", "overflow"),
    ),
    (
        "SparseGPT 1-D",
        lambda: SparseGPT(0.5)(torch.ones(4), hessian=torch.eye(4)),
        ValueError,
        ("SparseGPT:", "shape (4,)", "at least 2 dims"),
    ),
    (
        "SparseGPT conv hessian of the kernel only",
        lambda: SparseGPT(0.5)(torch.ones(2, 3, 2, 2), hessian=torch.eye(4)),
        ValueError,
        ("SparseGPT:", "shape (4, 4)", "(2, 3, 2, 2)", "(12, 12)"),
    ),
    (
        "SparseGPT bool hessian",
        lambda: SparseGPT(0.5)(W, hessian=torch.eye(4, dtype=torch.bool)),
        TypeError,
        ("SparseGPT:", "torch.bool", "floating-point hessian"),
    ),
    (
        "SparseGPT sparse hessian",
        lambda: SparseGPT(0.5)(W, hessian=torch.eye(4).to_sparse()),
        TypeError,
        ("SparseGPT:", "sparse_coo", "dense"),
    ),
    (
        "SparseGPT meta hessian",
        lambda: SparseGPT(0.5)(W, hessian=torch.eye(4, device="meta")),
        ValueError,
        ("SparseGPT:", "hessian", "meta"),
    ),
    (
        "SparseGPT transposed view, not symmetric",
        lambda: SparseGPT(0.5)(W, hessian=(H + torch.triu(torch.ones(4, 4), 1)).T),
        ValueError,
        ("SparseGPT:", "hessian[1, 0]", "symmetric"),
    ),
    (
        "SparseGPT indefinite",
        lambda: SparseGPT(0.5, damp=0.0)(W[:, :2], hessian=torch.tensor([[1.0, 2], [2, 1]])),
        ValueError,
        ("SparseGPT:", "not positive definite", "damp=0"),
    ),
    (
        "SparseGPT N:M block_size below m",
        lambda: SparseGPT(n=1, m=3, block_size=2),
        ValueError,
        ("SparseGPT:", "block_size=2", "m=3"),
    ),
    (
        "SparseGPT bool n",
        lambda: SparseGPT(n=True, m=2),
        TypeError,
        ("SparseGPT:", "n must be an int", "True"),
    ),
    (
        "SparseGPT huge sparsity",
        lambda: SparseGPT(HUGE),
        ValueError,
        ("SparseGPT:", "sparsity", "1000"),
    ),
    # prune
    (
        "prune hessian of another leaf's shape",
        lambda: fs.prune(
            PARAMS, {"fc.weight": SparseGPT(0.5)}, hessian={**HESSIANS, "fc.weight": torch.eye(3)}
        ),
        ValueError,
        ("prune:", "'fc.weight'", "(3, 3)", "(4, 4)"),
    ),
    (
        "prune NaN hessian",
        lambda: fs.prune(
            PARAMS, {"fc.weight": SparseGPT(0.5)}, hessian={**HESSIANS, "fc.weight": H * math.nan}
        ),
        ValueError,
        ("prune:", "'fc.weight'", "nan"),
    ),
    (
        "prune hessian as a bare tensor",
        lambda: fs.prune(PARAMS, {"fc.weight": SparseGPT(0.5)}, hessian=H),
        ValueError,
        ("prune:", "hessian", "structure of params"),
    ),
    (
        "prune junk rule",
        lambda: fs.prune(PARAMS, {"fc.weight": 3}),
        TypeError,
        ("prune:", "'fc.weight'", "int 3"),
    ),
    # calibration: these named apply_masks / functional_call before
    (
        "collect_hessians masks junk",
        lambda: collect_hessians(MODEL, MODEL_PARAMS, BATCHES, masks=3),
        ValueError,
        ("collect_hessians:", "masks", "structure of params"),
    ),
    (
        "collect_statistics float masks",
        lambda: collect_statistics(
            MODEL,
            MODEL_PARAMS,
            BATCHES,
            masks={k: torch.ones_like(v) for k, v in MODEL_PARAMS.items()},
        ),
        TypeError,
        ("collect_statistics:", "'0.bias'", "torch.bool"),
    ),
    (
        "collect_hessians params naming nothing",
        lambda: collect_hessians(MODEL, {"foo.weight": torch.ones(4, 8)}, BATCHES),
        ValueError,
        ("collect_hessians:", "'foo.weight'", "no parameter or buffer"),
    ),
    (
        "collect_input_norms params naming nothing",
        lambda: collect_input_norms(MODEL, {"foo.weight": torch.ones(4, 8)}, BATCHES),
        ValueError,
        ("collect_input_norms:", "'foo.weight'"),
    ),
    (
        "collect_statistics statistics a str",
        lambda: collect_statistics(MODEL, MODEL_PARAMS, BATCHES, statistics="hessian"),
        TypeError,
        ("collect_statistics:", "'hessian'", "(name,)"),
    ),
    (
        "collect_statistics paths junk",
        lambda: collect_statistics(
            MODEL, MODEL_PARAMS, BATCHES, statistics=("hessian",), paths={"hessian": 3}
        ),
        TypeError,
        ("collect_statistics:", "paths", "int 3"),
    ),
    (
        "collect_hessians paths of a bias",
        lambda: collect_hessians(MODEL, MODEL_PARAMS, BATCHES, paths=["0.bias"]),
        ValueError,
        ("collect_hessians:", "'0.bias'"),
    ),
    (
        "collect_hessians batches a tensor",
        lambda: collect_hessians(MODEL, MODEL_PARAMS, BATCHES[0]),
        TypeError,
        ("collect_hessians:", "batches", "[x]"),
    ),
    (
        "collect_hessians batches one mapping",
        lambda: collect_hessians(MODEL, MODEL_PARAMS, {"input": BATCHES[0]}),
        TypeError,
        ("collect_hessians:", "mapping", "[batch]"),
    ),
    # owl / level_rules
    (
        "owl sparse norms",
        lambda: owl(OWL_PARAMS, {**OWL_NORMS, "b.weight": torch.ones(8).to_sparse()}, sparsity=0.5),
        TypeError,
        ("owl:", "'b.weight'", "sparse_coo"),
    ),
    (
        "owl sparse weight",
        lambda: owl(
            {**OWL_PARAMS, "a.weight": torch.ones(4, 8).to_sparse()}, OWL_NORMS, sparsity=0.5
        ),
        TypeError,
        ("owl:", "'a.weight'", "sparse_coo"),
    ),
    (
        "owl NaN norms",
        lambda: owl(
            OWL_PARAMS, {**OWL_NORMS, "a.weight": torch.full((8,), math.nan)}, sparsity=0.5
        ),
        ValueError,
        ("owl:", "'a.weight'", "nan"),
    ),
    (
        "owl norms of another shape",
        lambda: owl(OWL_PARAMS, {**OWL_NORMS, "b.weight": torch.ones(7)}, sparsity=0.5),
        ValueError,
        ("owl:", "'b.weight'", "(7,)", "(8,)"),
    ),
    (
        "owl norms missing a leaf",
        lambda: owl(OWL_PARAMS, {"a.weight": torch.ones(8)}, sparsity=0.5),
        ValueError,
        ("owl:", "'b.weight'", "structure"),
    ),
    (
        "owl huge threshold",
        lambda: owl(OWL_PARAMS, OWL_NORMS, sparsity=0.5, outlier_threshold=HUGE),
        ValueError,
        ("owl:", "outlier_threshold", "too large"),
    ),
    (
        "owl blocks of ints",
        lambda: owl(OWL_PARAMS, OWL_NORMS, sparsity=0.5, blocks=[3]),
        TypeError,
        ("owl:", "blocks", "[3]"),
    ),
    (
        "owl blocks leaving a leaf out",
        lambda: owl(OWL_PARAMS, OWL_NORMS, sparsity=0.5, blocks=["a"]),
        ValueError,
        ("owl:", "'b.weight'", "no block"),
    ),
    (
        "level_rules huge level",
        lambda: level_rules({"w": HUGE}, fs.Wanda()),
        ValueError,
        ("level_rules:", "'w'", "1000"),
    ),
    (
        "level_rules huge negative level",
        lambda: level_rules({"w": -HUGE}, fs.Wanda()),
        ValueError,
        ("level_rules:", "'w'", "-1000"),
    ),
    (
        "level_rules Wanda n:m at another level",
        lambda: level_rules({"w": 0.25}, fs.Wanda(n=2, m=4)),
        ValueError,
        ("level_rules:", "'w'", "0.25"),
    ),
    # Wanda(n=, m=)
    (
        "Wanda bool m",
        lambda: fs.Wanda(n=1, m=True),
        TypeError,
        ("Wanda:", "m must be an int", "True"),
    ),
    ("Wanda float n", lambda: fs.Wanda(n=2.0, m=4), TypeError, ("Wanda:", "n", "2.0")),
    ("Wanda n > m", lambda: fs.Wanda(n=5, m=4), ValueError, ("Wanda:", "n=5", "[0, 4]")),
    ("Wanda negative m", lambda: fs.Wanda(n=0, m=-4), ValueError, ("Wanda:", "m=-4")),
    (
        "Wanda huge m on a call",
        lambda: fs.Wanda(n=2, m=HUGE)(torch.ones(2, 8), input_norms=torch.ones(8)),
        ValueError,
        ("Wanda:", "multiple of m"),
    ),
]


@pytest.mark.parametrize(
    ("where", "call", "error", "parts"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_is_refused_by_name(
    where: str, call: Callable[[], Any], error: type, parts: tuple[str, ...]
) -> None:
    _raises(where, call, error, *parts)


def test_sparsegpt_a_tiny_or_huge_hessian_gives_the_unit_hessian_result() -> None:
    """The hessian's scale does not matter, down to float64 subnormals (a failed
    factorisation before) and up to 1e300."""
    w = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.5, -1.0]], dtype=torch.float64)
    h = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
    expected = SparseGPT(0.5).prune_leaf(w, hessian=h)
    for scale in (1e-310, 1e-200, 2.0**-600, 1e300):
        got = SparseGPT(0.5).prune_leaf(w, hessian=h * scale)
        assert torch.equal(got.mask, expected.mask), scale
        torch.testing.assert_close(got.weight, expected.weight, rtol=1e-12, atol=0)
        assert got.info["error"] == pytest.approx(expected.info["error"] * scale, rel=1e-9)


def test_sparsegpt_float16_overflow_refuses_the_weight_not_the_mask() -> None:
    """The float16 weights the updates overflow: prune_leaf refuses them (inf before), a call
    still gives the mask, which is the float32 copy's."""
    x = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1.01], [1, 1, 0.99, 1]])
    w = torch.tensor([[65000.0, 60000, 60000, 60000]] * 2, dtype=torch.float16)
    mask = guarded("SparseGPT float16", SparseGPT(0.5), w, hessian=x.T @ x)
    assert torch.equal(mask, SparseGPT(0.5)(w.float(), hessian=x.T @ x))
    assert int((~mask).sum()) == 4
    updated = SparseGPT(0.5).prune_leaf(w.float(), hessian=x.T @ x).weight
    assert float(updated.abs().max()) > 65504  # why float16 cannot hold it


def test_sparsegpt_hessian_requiring_grad_is_checked_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = SparseGPT(0.5)(W, hessian=H.clone().requires_grad_())
    assert int((~mask).sum()) == 4


# -- hypothesis ----------------------------------------------------------------------------------


def _check_sparsegpt_result(
    where: str, method: SparseGPT, leaf: Tensor, data: dict[str, Any], result: Any
) -> None:
    """What a SparseGPT call that returned must hold: the mask's promises, a finite weight of
    the leaf's shape and dtype, zero where pruned."""
    mask, weight, info = result
    assert_mask(where, mask, leaf)
    assert weight.shape == leaf.shape and weight.dtype == leaf.dtype, where
    assert bool(weight.isfinite().all()), f"{where}: a non-finite updated weight"
    assert bool((weight[~mask] == 0).all()), f"{where}: a pruned entry is not 0"
    assert math.isfinite(info["error"]) and info["error"] >= 0, where
    plain = {k: v.detach() if isinstance(v, Tensor) else v for k, v in data.items()}
    check_leaf_mask(method, leaf.detach(), mask, data=plain)


hessian_kinds = st.sampled_from(["valid", "valid", "tensor", "junk", "scaled"])


@st.composite
def sparsegpt_calls(draw: st.DrawFn) -> tuple[SparseGPT, Any, dict[str, Any]]:
    method = draw(SparseGPT.configs(st))
    leaf = draw(
        tensors(draw(st.sampled_from([(3, 4), (2, 6), (0, 4), (3, 0), (2, 1, 2, 3), (4,), ()])))
    )
    size = math.prod(leaf.shape[1:]) if leaf.dim() >= 2 else 4
    kind = draw(hessian_kinds)
    data: dict[str, Any] = {}
    if kind in ("valid", "scaled") and leaf.dim() >= 2 and leaf.device.type != "meta":
        data = dict(draw(SparseGPT.example_data(st, leaf.detach())))
        if kind == "scaled" and "hessian" in data:
            data["hessian"] = data["hessian"] * draw(st.sampled_from([1e-30, 1e30, 0.0, -1.0]))
    elif kind == "tensor":
        data["hessian"] = draw(tensors((size, size)))
    elif kind == "junk":
        data["hessian"] = draw(junk)
    if draw(st.integers(0, 4)) == 0:
        data["prev_mask"] = draw(tensors(tuple(leaf.shape), dtypes=(torch.bool,), odd=False))
    return method, leaf, data


@fuzz
@given(call=sparsegpt_calls())
def test_sparsegpt_calls(call: tuple[SparseGPT, Any, dict[str, Any]]) -> None:
    method, leaf, data = call
    result = guarded("SparseGPT.prune_leaf", method.prune_leaf, leaf, **data)
    if isinstance(result, Raised):
        assert str(result.error).startswith("SparseGPT"), str(result.error)
        return
    _check_sparsegpt_result("SparseGPT.prune_leaf", method, leaf, data, result)
    mask = guarded("SparseGPT", method, leaf, **data)
    assert torch.equal(mask, result.mask), "the call and prune_leaf disagree"


config_values = st.one_of(junk, levels, st.integers(-3, 10), st.just(HUGE), st.just(-HUGE))


@fuzz
@given(
    fields=st.dictionaries(
        st.sampled_from(["sparsity", "n", "m", "block_size", "damp", "retries"]),
        config_values,
        max_size=4,
    )
)
def test_sparsegpt_configs(fields: dict[str, Any]) -> None:
    result = guarded("SparseGPT()", lambda: SparseGPT(**fields))
    if isinstance(result, Raised):
        assert str(result.error).startswith("SparseGPT"), str(result.error)
        return
    assert result.block_size >= (result.m or 1) and result._width % (result.m or 1) == 0
    assert (result.sparsity is None) == (result.m is not None)


@fuzz
@given(fields=st.dictionaries(st.sampled_from(["sparsity", "n", "m"]), config_values, max_size=3))
def test_wanda_nm_configs(fields: dict[str, Any]) -> None:
    result = guarded("Wanda()", lambda: fs.Wanda(**fields))
    if isinstance(result, Raised):
        assert str(result.error).startswith("Wanda"), str(result.error)
        return
    if result.m is not None:
        assert type(result.n) is int and type(result.m) is int and 0 <= result.n <= result.m
        assert result.m >= 1


@fuzz
@given(
    rule=st.one_of(SparseGPT.configs(st), st.just(fs.Magnitude(0.5)), junk),
    hessian=st.one_of(
        st.just(HESSIANS),
        st.builds(lambda t: {"fc.weight": t, "fc.bias": None}, tensors((4, 4))),
        junk,
    ),
    weight=tensors((2, 4)),
)
def test_prune(rule: Any, hessian: Any, weight: Tensor) -> None:
    params = {"fc.weight": weight, "fc.bias": torch.ones(2)}
    result = guarded("prune", fs.prune, params, {"fc.weight": rule}, hessian=hessian)
    if isinstance(result, Raised):
        assert str(result.error).startswith("prune:"), str(result.error)
        return
    mask = result.masks["fc.weight"]
    if rule is None:  # excluded: no mask, the leaf itself
        assert mask is None and result.params["fc.weight"] is weight
        return
    assert_mask("prune", mask, weight)
    new = result.params["fc.weight"]
    assert new.shape == weight.shape and new.dtype == weight.dtype
    assert bool((new[~mask] == 0).all())
    assert result.params["fc.bias"] is params["fc.bias"]
    if isinstance(rule, SparseGPT):
        data = {"hessian": hessian["fc.weight"]}
        _check_sparsegpt_result("prune", rule, weight, data, (mask, new, result.info["fc.weight"]))


statistics_values = st.one_of(
    junk,
    st.just(("hessian",)),
    st.just(["input_norms", "hessian"]),
    st.lists(st.sampled_from(["hessian", "input_norms", "norms", ""]), max_size=3),
)
paths_values = st.one_of(
    st.none(),
    junk,
    st.lists(st.sampled_from(["0.weight", "2.weight", "0.bias", "nope", ""]), max_size=3),
    st.dictionaries(
        st.sampled_from(["hessian", "input_norms", "x"]),
        st.one_of(junk, st.lists(st.sampled_from(["0.weight", "2.weight", "0.bias"]), max_size=2)),
        max_size=2,
    ),
)
batch_values = st.one_of(
    junk,
    st.just(BATCHES),
    st.lists(
        st.one_of(junk, tensors((3, 8), dtypes=(torch.float32,)), tensors()), min_size=0, max_size=2
    ),
)


@fuzz
@given(statistics=statistics_values, paths=paths_values, batches=batch_values)
def test_collect_statistics(statistics: Any, paths: Any, batches: Any) -> None:
    result = guarded(
        "collect_statistics",
        collect_statistics,
        MODEL,
        MODEL_PARAMS,
        batches,
        statistics=statistics,
        paths=paths,
    )
    if isinstance(result, Raised):
        assert str(result.error).startswith("collect_statistics:"), str(result.error)
        return
    assert list(result) == list(statistics)
    for name, tree in result.items():
        assert set(tree) == set(MODEL_PARAMS)
        for path, value in tree.items():
            if value is None:
                continue
            leaf = MODEL_PARAMS[path]
            size = math.prod(leaf.shape[1:])
            want = (size, size) if name == "hessian" else tuple(leaf.shape[1:])
            assert tuple(value.shape) == want, (name, path, value.shape)


@fuzz
@given(paths=paths_values, batches=batch_values)
def test_collect_hessians(paths: Any, batches: Any) -> None:
    result = guarded(
        "collect_hessians", collect_hessians, MODEL, MODEL_PARAMS, batches, paths=paths
    )
    if isinstance(result, Raised):
        assert str(result.error).startswith("collect_hessians:"), str(result.error)
        return
    for path, value in result.items():
        if value is not None:
            size = MODEL_PARAMS[path].shape[1]
            assert value.shape == (size, size) and value.dtype == torch.float64
            assert torch.equal(value, value.T)


@fuzz
@given(
    weights=st.lists(tensors((4, 8)), min_size=1, max_size=3),
    norms=st.lists(st.one_of(tensors((8,)), st.none(), junk), min_size=3, max_size=3),
    sparsity=levels,
    blocks=st.one_of(
        st.none(), junk, st.just("*"), st.lists(st.sampled_from(["l0", "l1", "l2", "l", ""]))
    ),
)
def test_owl(weights: list[Tensor], norms: list[Any], sparsity: Any, blocks: Any) -> None:
    params = {f"l{len(weights) - i}.weight": w for i, w in enumerate(weights)}
    input_norms = {path: n for path, n in zip(params, norms, strict=False)}
    result = guarded("owl", owl, params, input_norms, sparsity=sparsity, blocks=blocks)
    if isinstance(result, Raised):
        assert str(result.error).startswith("owl:"), str(result.error)
        return
    assert list(result) == [p for p in params if input_norms[p] is not None]
    for level in result.values():
        assert isinstance(level, float) and 0.0 <= level <= 1.0
    sizes = {path: params[path].numel() for path in result}
    total = sum(sizes.values())
    if total:
        mean = sum(result[p] * sizes[p] for p in result) / total
        assert mean == pytest.approx(float(sparsity), abs=1e-9)


@fuzz
@given(
    levels_=st.one_of(
        junk,
        st.dictionaries(
            st.one_of(st.sampled_from(["a", "b.w"]), st.sampled_from([None, 1, b"0", 1.5])),
            st.one_of(levels, junk),
        ),
    ),
    method=st.one_of(
        st.sampled_from(
            [fs.Wanda(), fs.Magnitude(0.5), SparseGPT(), fs.Wanda(n=2, m=4), fs.NM(n=2, m=4)]
        ),
        junk,
    ),
)
def test_level_rules(levels_: Any, method: Any) -> None:
    result = guarded("level_rules", level_rules, levels_, method)
    if isinstance(result, Raised):
        assert str(result.error).startswith("level_rules:"), str(result.error)
        return
    assert list(result) == list(levels_)
    for path, rule in result.items():
        assert type(rule) is type(method)
        assert getattr(rule, rule.level_field) == pytest.approx(float(levels_[path]))


def test_sparsegpt_views_of_a_valid_hessian_give_the_contiguous_result() -> None:
    big = torch.zeros(8, 8)
    big[::2, ::2] = H
    w = torch.tensor([[4.0, -1.0, 2.0, 0.5], [1.0, 3.0, -0.25, 2.0]])
    expected = SparseGPT(0.5).prune_leaf(w, hessian=H)
    wide = torch.zeros(2, 8)
    wide[:, ::2] = w
    for weight, hessian in (
        (w, big[::2, ::2]),  # a strided view
        (w, H.T),  # a transposed view (H is symmetric)
        (wide[:, ::2], H),  # a strided weight
        (w.T.contiguous().T, H),
    ):
        got = guarded("SparseGPT view", SparseGPT(0.5).prune_leaf, weight, hessian=hessian)
        assert torch.equal(got.mask, expected.mask)
        assert torch.equal(got.weight, expected.weight)
    ones = torch.ones(1, 1).expand(4, 4)  # stride 0: one input seen four times (rank 1)
    result = guarded("SparseGPT expanded", SparseGPT(0.5).prune_leaf, w, hessian=ones)
    assert int((~result.mask).sum()) == 4 and bool(result.weight.isfinite().all())


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0), (2, 0, 3), (0, 2, 3, 3)])
def test_sparsegpt_empty_weights(shape: tuple[int, ...]) -> None:
    size = math.prod(shape[1:])
    weight = torch.ones(shape)
    for method in (SparseGPT(0.5), SparseGPT(n=0, m=1)):
        mask, new, info = guarded(
            "SparseGPT empty", method.prune_leaf, weight, hessian=torch.eye(size)
        )
        assert mask.shape == new.shape == weight.shape and mask.dtype == torch.bool
        assert info["error"] == 0.0 and method.expected_zeros(weight) == 0
    pruned = guarded(
        "prune empty", fs.prune, {"w": weight}, {"w": SparseGPT()}, hessian={"w": torch.eye(size)}
    )
    assert pruned.params["w"].shape == weight.shape and pruned.info["w"]["error"] == 0.0
