"""Importance scores: hand computations, gradients from torch.func.grad, errors, compute_masks."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse._tree import flatten_with_paths
from funcsparse.methods.wanda import Wanda
from funcsparse.scores import magnitude_scores, saliency_scores, wanda_scores
from funcsparse.testing import strategies as fst


def _leaves(tree: Any) -> dict[str, Any]:
    paths, leaves, _ = flatten_with_paths(tree)
    return dict(zip(paths, leaves, strict=True))


def _assert_same(a: object, b: object) -> None:
    """Equal dtype, shape and values, NaN equal to NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _same_structure(a: Any, b: Any) -> bool:
    import optree

    return optree.tree_structure(a, none_is_leaf=True) == optree.tree_structure(
        b, none_is_leaf=True
    )


# ----------------------------------------------------------------------------- magnitude


def test_magnitude_by_hand() -> None:
    params = {
        "enc": {"weight": torch.tensor([[1.0, -3.0], [-0.5, 0.0]]), "bias": torch.tensor([-2.0])},
        "layers": [torch.tensor([-1.5, 2.5], dtype=torch.float64), (torch.tensor(-4.0),)],
        "bn.num_batches_tracked": torch.tensor(7),
        "flags": torch.tensor([True, False]),
        "z": torch.tensor([3.0 + 4.0j]),
    }
    scores = magnitude_scores(params)
    assert _same_structure(scores, params)
    assert scores["enc"]["weight"].tolist() == [[1.0, 3.0], [0.5, 0.0]]
    assert scores["enc"]["bias"].tolist() == [2.0]
    assert scores["layers"][0].tolist() == [1.5, 2.5]
    assert scores["layers"][0].dtype == torch.float64
    assert scores["layers"][1][0].item() == 4.0
    assert scores["bn.num_batches_tracked"] is None and scores["flags"] is None
    assert scores["z"].tolist() == [5.0] and not scores["z"].is_complex()


@settings(max_examples=30)
@given(fst.params(special=True))
def test_magnitude_is_abs_on_every_leaf(params: Any) -> None:
    before = {k: v.clone() for k, v in _leaves(params).items()}
    scores = _leaves(magnitude_scores(params))
    for path, leaf in _leaves(params).items():
        assert isinstance(leaf, Tensor)
        _assert_same(scores[path], leaf.abs())
        _assert_same(leaf, before[path])


def test_magnitude_scores_plug_into_compute_masks() -> None:
    w = torch.tensor([[1.0, -3.0, 0.5, 2.0]])
    params = {"w": w, "b": torch.ones(1)}
    rule = {"w": fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 1), norm=1)}
    with_scores = fs.compute_masks(params, rule, scores=magnitude_scores(params))
    assert with_scores["w"].tolist() == [[False, True, False, True]]
    assert torch.equal(with_scores["w"], fs.compute_masks(params, rule)["w"])


# ----------------------------------------------------------------------------- saliency


def test_saliency_with_grads_of_a_real_loss() -> None:
    """Least squares ``sum((x W^T + b - y)^2)``: the gradient is ``2 r^T x`` (r the residual)."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 3)
    params = {name: p.detach() for name, p in model.named_parameters()}
    x, y = torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)

    def loss_fn(p: dict[str, Tensor]) -> Any:
        return (fs.functional_call(model, p, {"weight": None, "bias": None}, (x,)) - y).pow(2).sum()

    grads = torch.func.grad(loss_fn)(params)
    scores = saliency_scores(params, grads)
    residual = x @ params["weight"].T + params["bias"] - y
    torch.testing.assert_close(scores["weight"], (params["weight"] * (2 * residual.T @ x)).abs())
    torch.testing.assert_close(scores["bias"], (params["bias"] * 2 * residual.sum(0)).abs())
    assert (scores["weight"] >= 0).all()


def test_saliency_prunes_by_weight_times_gradient() -> None:
    """Unlike magnitude: a large weight with no effect on the loss is pruned first."""
    params = {"w": torch.tensor([[10.0, 1.0, 2.0, 3.0]])}
    x = torch.tensor([[0.0, 1.0, 1.0, 1.0]])  # the first input is dead

    def loss_fn(p: dict[str, Tensor]) -> Tensor:
        return (x @ p["w"].T).pow(2).sum()

    scores = saliency_scores(params, torch.func.grad(loss_fn)(params))
    rule = {"w": fs.WeightNorm(sparsity=0.25, sparse_block_shape=(1, 1))}
    assert fs.compute_masks(params, rule, scores=scores)["w"].tolist() == [
        [False, True, True, True]
    ]
    assert fs.compute_masks(params, rule)["w"].tolist() == [[True, False, True, True]]


def test_saliency_of_a_missing_gradient_is_none() -> None:
    params = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([3.0]), "n": torch.tensor(2)}
    grads = {"a": torch.tensor([-0.5, 0.25]), "b": None, "n": torch.tensor(1)}
    scores = saliency_scores(params, grads)
    assert scores["a"].tolist() == [0.5, 0.5]
    assert scores["b"] is None and scores["n"] is None


def test_saliency_errors_name_the_path() -> None:
    params = {"enc": {"w": torch.ones(2, 3)}, "b": torch.ones(2)}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "saliency_scores: the gradient at 'enc.w' has shape (3, 2) but the leaf has shape "
            "(2, 3)"
        ),
    ):
        saliency_scores(params, {"enc": {"w": torch.ones(3, 2)}, "b": torch.ones(2)})
    with pytest.raises(
        TypeError,
        match=re.escape("saliency_scores: the gradient at 'b' is float 1.0, not a tensor"),
    ):
        saliency_scores(params, {"enc": {"w": torch.ones(2, 3)}, "b": 1.0})
    with pytest.raises(
        ValueError, match=r"saliency_scores: grads does not have the structure of params"
    ):
        saliency_scores(params, {"w": torch.ones(2, 3), "b": torch.ones(2)})


@given(fst.params(), st.integers(0, 2**31 - 1))
def test_saliency_is_abs_of_weight_times_grad(params: Any, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    grads = {
        path: torch.randn(leaf.shape, generator=generator).to(leaf.dtype)
        for path, leaf in _leaves(params).items()
    }
    paths, _, spec = flatten_with_paths(params)
    grad_tree = spec.unflatten([grads[p] for p in paths])
    scores = _leaves(saliency_scores(params, grad_tree))
    for path, leaf in _leaves(params).items():
        _assert_same(scores[path], (leaf * grads[path]).abs())


# ----------------------------------------------------------------------------- wanda


def test_wanda_scores_by_hand() -> None:
    params = {"fc.weight": torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -1.0]]), "fc.bias": None}
    params["fc.bias"] = torch.ones(2)
    norms = {"fc.weight": torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64), "fc.bias": None}
    scores = wanda_scores(params, norms)
    assert scores["fc.weight"].tolist() == [[2.0, 1.0, 0.0], [6.0, 0.25, 4.0]]
    assert scores["fc.weight"].dtype == torch.float64
    assert scores["fc.bias"] is None
    # without norms at a leaf: None there
    assert wanda_scores(params, {"fc.weight": None, "fc.bias": None}) == {
        "fc.weight": None,
        "fc.bias": None,
    }


@given(st.integers(1, 8), st.integers(1, 8), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_wanda_scores_ranked_per_row_are_the_wanda_mask(
    rows: int, cols: int, seed: int, sparsity: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(rows, cols, generator=generator)}
    norms = {"w": torch.rand(cols, generator=generator, dtype=torch.float64)}
    scores = wanda_scores(params, norms)["w"]
    k = int(cols * sparsity)
    ranked = torch.sort(scores, dim=-1, stable=True).indices[:, :k]
    expected = torch.ones(rows, cols, dtype=torch.bool).scatter_(1, ranked, False)
    assert torch.equal(Wanda(sparsity=sparsity)(params["w"], input_norms=norms["w"]), expected)


@pytest.mark.parametrize(
    ("leaf", "norms", "error", "message"),
    [
        (
            torch.ones(2, 3),
            torch.ones(2),
            ValueError,
            "wanda_scores: input_norms at 'm.w' has shape (2,) for a weight of shape (2, 3); "
            "expected (3,)",
        ),
        (
            torch.ones(3),
            torch.ones(3),
            ValueError,
            "wanda_scores: the leaf at 'm.w' is a 1-D torch.float32 tensor of shape (3,); Wanda "
            "scores need a weight of shape (out, *rest): (out_features, in_features), or a conv's",
        ),
        (
            torch.ones(2, 3),
            torch.tensor([1.0, float("inf"), 1.0]),
            ValueError,
            "wanda_scores: input_norms at 'm.w' has entry 1 = inf; norms must be finite and "
            "non-negative",
        ),
        (
            torch.ones(2, 3),
            [1.0, 1.0, 1.0],
            TypeError,
            "wanda_scores: input_norms at 'm.w' is list [1.0, 1.0, 1.0]; expected a floating "
            "tensor of shape (3,)",
        ),
        (
            torch.ones(2, 3, dtype=torch.long),
            torch.ones(3),
            TypeError,
            "wanda_scores: the leaf at 'm.w' is a 2-D torch.int64 tensor of shape (2, 3); Wanda "
            "scores need a floating-point weight",
        ),
    ],
)
def test_wanda_scores_errors_name_the_path(
    leaf: Tensor, norms: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        wanda_scores({"m": {"w": leaf}}, {"m": {"w": norms}})


def test_wanda_scores_need_params_structure() -> None:
    with pytest.raises(ValueError, match="wanda_scores: input_norms does not have the structure"):
        wanda_scores({"a": torch.ones(2, 2)}, {"b": torch.ones(2)})


def test_scores_from_wanda_plug_into_compute_masks() -> None:
    """Wanda's scores with a score-reading method: one threshold over the whole tensor."""
    params = {"w": torch.tensor([[1.0, 1.0], [1.0, 1.0]])}
    norms = {"w": torch.tensor([1.0, 3.0])}
    rule = {"w": fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 1))}
    masks = fs.compute_masks(params, rule, scores=wanda_scores(params, norms))
    assert masks["w"].tolist() == [[False, True], [False, True]]


# -- conv weights, devices, hostile inputs (issue 9) ----------------------------------------


def test_wanda_scores_broadcast_conv_norms_over_the_rows() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 2, 3, 3)
    norms = torch.rand(2, 3, 3).double()
    scores = wanda_scores({"c": w}, {"c": norms})["c"]
    assert scores.shape == w.shape and scores.dtype == torch.float64
    for row in range(4):
        assert torch.equal(scores[row], w[row].abs() * norms)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "wanda_scores: input_norms at 'c' has shape (2, 9) for a weight of shape "
            "(4, 2, 3, 3); expected (2, 3, 3)"
        ),
    ):
        wanda_scores({"c": w}, {"c": norms.reshape(2, 9)})
    bad = norms.clone()
    bad[1, 2, 0] = -1.0
    with pytest.raises(ValueError, match=re.escape("has entry (1, 2, 0) = -1.0; norms must be")):
        wanda_scores({"c": w}, {"c": bad})


def test_data_on_another_device_than_its_leaf_is_an_error() -> None:
    w = torch.randn(3, 4)
    with pytest.raises(
        ValueError,
        match=re.escape("wanda_scores: input_norms at 'w' is on meta but the leaf is on cpu"),
    ):
        wanda_scores({"w": w}, {"w": torch.ones(4, device="meta")})
    with pytest.raises(
        ValueError,
        match=re.escape("saliency_scores: the gradient at 'w' is on meta but the leaf is on cpu"),
    ):
        saliency_scores({"w": w}, {"w": torch.ones(3, 4, device="meta")})
    meta = torch.empty(3, 4, device="meta")  # shape-only leaves give shape-only scores
    assert wanda_scores({"w": meta}, {"w": torch.ones(4, device="meta")})["w"].device.type == "meta"
    assert magnitude_scores({"w": meta})["w"].shape == (3, 4)


def test_hostile_inputs_are_type_and_value_errors() -> None:
    w = torch.randn(3, 4)
    cases = [
        (
            ValueError,
            "wanda_scores: input_norms does not have the structure of params",
            lambda: wanda_scores({"w": w}, "norms"),
        ),
        (
            TypeError,
            "wanda_scores: input_norms at 'w' is str 'n'",
            lambda: wanda_scores({"w": w}, {"w": "n"}),
        ),
        (
            ValueError,
            "wanda_scores: the leaf at 'w' is a 0-D",
            lambda: wanda_scores({"w": torch.tensor(1.0)}, {"w": torch.ones(1)}),
        ),
        (
            TypeError,
            "saliency_scores: the gradient at 'w' is str 'g', not a tensor",
            lambda: saliency_scores({"w": w}, {"w": "g"}),
        ),
        (
            ValueError,
            "saliency_scores: grads does not have the structure of params",
            lambda: saliency_scores({"w": w}, [w]),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=re.escape(message)):
            call()
    out = magnitude_scores({"w": w, "n": None})  # None is an empty entry
    assert out["n"] is None and torch.equal(out["w"], w.abs())
    with pytest.raises(TypeError, match=r"^magnitude_scores: expected a pytree of tensors"):
        magnitude_scores({"w": w, "s": "text", "n": None})  # a str leaf is a mistake


# -- leaves that are not tensors, float8 and complex (issue 9, fuzz) -----------------------


def _call(function: str, params: Any, other: Any = None) -> Any:
    if function == "magnitude_scores":
        return magnitude_scores(params)
    if function == "saliency_scores":
        return saliency_scores(params, other)
    return wanda_scores(params, other)


@pytest.mark.parametrize("function", ["magnitude_scores", "saliency_scores", "wanda_scores"])
@pytest.mark.parametrize(
    ("leaf", "shown"), [("x", "str 'x'"), (3, "int 3"), (torch.nn.Linear(2, 2), "Linear")]
)
def test_a_leaf_that_is_not_a_tensor_is_refused_by_path(
    function: str, leaf: object, shown: str
) -> None:
    params = {"w": torch.randn(2, 3), "junk": leaf}
    other = {"w": torch.ones(3) if function == "wanda_scores" else torch.ones(2, 3), "junk": None}
    with pytest.raises(
        TypeError, match=rf"^{function}: expected a pytree of tensors .*got {shown}.* at 'junk'"
    ):
        _call(function, params, other)
    with pytest.raises(TypeError, match=r"as the whole tree; pass dict\(model\.named_parameters"):
        _call(function, torch.nn.Linear(3, 2), other)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_leaves_are_refused_naming_dtype_path_and_supported(dtype: torch.dtype) -> None:
    w = torch.randn(2, 3).to(dtype)
    supported = "the supported dtypes are float16, bfloat16, float32, float64"
    cases: list[tuple[str, Any, Any]] = [
        ("magnitude_scores", {"m": {"w": w}}, None),
        ("saliency_scores", {"m": {"w": w}}, {"m": {"w": torch.ones(2, 3)}}),
        ("wanda_scores", {"m": {"w": w}}, {"m": {"w": torch.ones(3)}}),
    ]
    for function, params, other in cases:
        with pytest.raises(TypeError, match=re.escape(supported)) as info:
            _call(function, params, other)
        assert str(info.value).startswith(f"{function}: the leaf at 'm.w' is a 2-D {dtype}")
    with pytest.raises(TypeError, match=rf"saliency_scores: the gradient at 'w' is a 2-D {dtype}"):
        saliency_scores({"w": torch.ones(2, 3)}, {"w": w})
    with pytest.raises(TypeError, match=rf"wanda_scores: input_norms at 'w' is a 1-D {dtype}"):
        wanda_scores({"w": torch.ones(2, 3)}, {"w": torch.ones(3).to(dtype)})
    # no gradient or no norms: nothing to score, as before
    assert saliency_scores({"w": w}, {"w": None})["w"] is None
    assert wanda_scores({"w": w}, {"w": None})["w"] is None


def test_saliency_refuses_complex_leaves_and_grads() -> None:
    real, cplx = torch.randn(2, 3), torch.randn(2, 3, dtype=torch.complex64)
    with pytest.raises(
        TypeError, match=r"saliency_scores: the gradient at 'w' is a 2-D torch.complex64"
    ):
        saliency_scores({"w": real}, {"w": cplx})
    with pytest.raises(
        TypeError, match=r"saliency_scores: the leaf at 'w' is a 2-D torch.complex64"
    ):
        saliency_scores({"w": cplx}, {"w": cplx})
    assert saliency_scores({"w": cplx}, {"w": None})["w"] is None
    # magnitude keeps complex leaves (|w| is real), as documented
    assert magnitude_scores({"w": cplx})["w"].dtype == torch.float32


@pytest.mark.parametrize("sparse", ["leaf", "norms"])
def test_wanda_scores_refuses_sparse_layouts_by_path(sparse: str) -> None:
    weight, norms = torch.randn(4, 4), torch.rand(4)
    if sparse == "leaf":
        weight = weight.to_sparse()
    else:
        norms = norms.to_sparse()
    what = "the leaf" if sparse == "leaf" else "input_norms"
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"wanda_scores: {what} at 'w' is a torch.sparse_coo tensor; Wanda scores need dense (strided) tensors"
        ),
    ):
        fs.wanda_scores({"w": weight}, {"w": norms})
