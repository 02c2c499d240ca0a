"""fs.prune: compute_masks' masks plus new params (SparseGPT's updated weights, zeroed
leaves elsewhere), info per updated leaf, the same errors, nothing mutated."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse._tree import flatten_with_paths, leaves_like
from funcsparse.testing import strategies as fst


def _hessian(cols: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * cols, cols, generator=g) + torch.randn(3 * cols, 1, generator=g)
    return x.T @ x


def _model() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "attn.q.weight": torch.randn(8, 16, generator=g),
        "attn.q.bias": torch.randn(8, generator=g),
        "mlp.up.weight": torch.randn(16, 8, generator=g),
        "mlp.down.weight": torch.randn(8, 16, generator=g),
        "norm.weight": torch.ones(8),
    }


def _hessians(params: dict[str, Any], *keys: str) -> dict[str, Tensor | None]:
    """A hessian tree: a hessian at ``keys``, None elsewhere."""
    return {
        k: _hessian(v.shape[1], seed=i) if k in keys else None
        for i, (k, v) in enumerate(params.items())
    }


def _snapshot(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: None if v is None else v.clone() for k, v in tree.items()}


def test_mixed_rules_give_masks_updated_and_zeroed_leaves() -> None:
    params = _model()
    hessians = _hessians(params, "attn.q.weight", "mlp.down.weight")
    rules = {
        "attn.*.weight": fs.SparseGPT(0.5, block_size=8),
        "mlp.up.weight": fs.Magnitude(0.25),
        "mlp.down.weight": fs.SparseGPT(n=2, m=4),
    }
    before, hessians_before = _snapshot(params), _snapshot(hessians)
    result = fs.prune(params, rules, hessian=hessians)
    assert isinstance(result, fs.Pruned) and result == (result.masks, result.params, result.info)
    # the masks are compute_masks'
    expected = fs.compute_masks(params, rules, hessian=hessians)
    assert result.masks.keys() == expected.keys() == params.keys()
    for key, mask in expected.items():
        assert (mask is None and result.masks[key] is None) or torch.equal(result.masks[key], mask)
    # updated leaves: prune_leaf's weight; zeroed leaves: apply_masks'; unmatched: the same objects
    for key in ("attn.q.weight", "mlp.down.weight"):
        method = (
            fs.SparseGPT(0.5, block_size=8) if key.startswith("attn") else fs.SparseGPT(n=2, m=4)
        )
        leaf = method.prune_leaf(params[key], hessian=hessians[key])
        assert torch.equal(result.params[key], leaf.weight)
        assert result.info[key] == leaf.info and result.info[key]["damp"] == 0.01
        assert not torch.equal(result.params[key], params[key] * leaf.mask)  # kept ones moved
    zeroed = fs.apply_masks(params, expected)["mlp.up.weight"]
    assert torch.equal(result.params["mlp.up.weight"], zeroed)
    assert result.params["mlp.up.weight"] is not params["mlp.up.weight"]
    assert result.params["attn.q.bias"] is params["attn.q.bias"]
    assert result.params["norm.weight"] is params["norm.weight"]
    assert set(result.info) == {"attn.q.weight", "mlp.down.weight"}
    # nothing passed in changed
    for key, value in before.items():
        assert torch.equal(params[key], value)
    for key, value in hessians_before.items():
        now = hessians[key]
        assert (value is None and now is None) or (now is not None and torch.equal(now, value))
    assert rules["attn.*.weight"] == fs.SparseGPT(0.5, block_size=8)


def test_nested_pytrees_keep_their_structure() -> None:
    w = torch.randn(4, 8)
    params = {"layers": [{"weight": w, "bias": torch.zeros(4)}, {"weight": w.clone()}]}
    hessian = {"layers": [{"weight": _hessian(8, 1), "bias": None}, {"weight": None}]}
    result = fs.prune(
        params,
        {"layers.0.weight": fs.SparseGPT(0.5), "layers.1.weight": fs.Magnitude(0.5)},
        hessian=hessian,
    )
    assert isinstance(result.params["layers"], list) and len(result.params["layers"]) == 2
    assert result.params["layers"][0]["bias"] is params["layers"][0]["bias"]
    assert bool(
        (result.params["layers"][0]["weight"][~result.masks["layers"][0]["weight"]] == 0).all()
    )
    assert torch.equal(
        result.params["layers"][1]["weight"], w * result.masks["layers"][1]["weight"]
    )
    assert list(result.info) == ["layers.0.weight"]


def test_global_methods_select_across_their_leaves() -> None:
    params = _model()
    rules = {"**.weight": fs.GlobalMagnitude(0.5), "norm.weight": None}
    result = fs.prune(params, rules)
    expected = fs.compute_masks(params, rules)
    for key in ("attn.q.weight", "mlp.up.weight", "mlp.down.weight"):
        assert torch.equal(result.masks[key], expected[key])
        assert torch.equal(result.params[key], params[key] * expected[key])
    assert result.info == {}
    assert result.params["norm.weight"] is params["norm.weight"]


def test_prev_masks_are_kept_pruned() -> None:
    params = _model()
    hessians = _hessians(params, "attn.q.weight")
    rules = {"attn.q.weight": fs.SparseGPT(0.5), "mlp.up.weight": fs.Magnitude(0.5)}
    first = fs.prune(params, {k: v.scaled(0.5) for k, v in rules.items()}, hessian=hessians)
    second = fs.prune(first.params, rules, prev_masks=first.masks, hessian=hessians)
    for key in rules:
        assert not bool((second.masks[key] & ~first.masks[key]).any())
        assert int((~second.masks[key]).sum()) == params[key].numel() // 2
        assert bool((second.params[key][~second.masks[key]] == 0).all())


def _same_error(call: Any, compute: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as pruned:
        call()
    with pytest.raises((TypeError, ValueError)) as computed:
        compute()
    assert pruned.type is computed.type
    assert str(pruned.value) == str(computed.value).replace("compute_masks", "prune")
    assert str(pruned.value).startswith("prune")


@pytest.mark.parametrize(
    ("rules", "data"),
    [
        ({"nothing.here": fs.Magnitude(0.5)}, {}),  # a rule matching no leaf
        ({"attn.q.bias": fs.SparseGPT(0.5)}, {}),  # a 1-D leaf
        ({"attn.q.weight": fs.SparseGPT(0.5)}, {}),  # no hessian
        ({"attn.q.weight": fs.SparseGPT(0.5)}, {"hessian": {"attn.q.weight": torch.eye(16)}}),
        ({"attn.q.weight": fs.SparseGPT(0.5)}, {"hessian": "eye"}),
        ({"attn.q.weight": fs.SparseGPT(n=2, m=3, block_size=3)}, {}),
        ({"attn.q.weight": "magnitude"}, {}),
        ({"attn.q.weight": fs.Wanda(0.5)}, {"input_norms": None}),
    ],
    ids=["no-leaf", "1-d", "no-hessian", "partial-tree", "not-a-tree", "n-m", "not-a-method",
         "wanda-no-norms"],
)  # fmt: skip
def test_errors_are_compute_masks_errors_named_prune(
    rules: dict[str, Any], data: dict[str, Any]
) -> None:
    params = _model()
    _same_error(
        lambda: fs.prune(params, rules, **data), lambda: fs.compute_masks(params, rules, **data)
    )


def test_bad_hessian_values_and_a_failed_factorisation_name_the_leaf() -> None:
    params = _model()
    hessians = _hessians(params, "attn.q.weight")
    bad = _hessian(16, seed=0)
    bad[2, 3] = float("nan")
    hessians["attn.q.weight"] = bad
    rules = {"attn.q.weight": fs.SparseGPT(0.5)}
    _same_error(
        lambda: fs.prune(params, rules, hessian=hessians),
        lambda: fs.compute_masks(params, rules, hessian=hessians),
    )
    hessians["attn.q.weight"] = torch.ones(16, 16)
    rules = {"attn.q.weight": fs.SparseGPT(0.5, damp=0.0)}
    message = "prune: rule 'attn.q.weight' (SparseGPT) at 'attn.q.weight': SparseGPT: the damped"
    with pytest.raises(ValueError, match=re.escape(message)):
        fs.prune(params, rules, hessian=hessians)


def test_prune_takes_no_batch_dims() -> None:
    with pytest.raises(TypeError, match=r"^prune: batch_dims is not supported; prune each"):
        fs.prune(_model(), {}, batch_dims=1)


def test_a_weight_updating_method_refuses_dtensor_leaves_before_computing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in backend that calls every leaf sharded: prune refuses a SparseGPT leaf
    # before any mask is computed (no collective starts), and compute_masks still asks the
    # backend for its masks.
    from funcsparse import _compute

    calls: list[str] = []

    class Backend:
        def is_sharded(self, leaf: object) -> bool:
            return isinstance(leaf, Tensor) and leaf.dim() == 2

        def check(self, method: Any, leaf: Tensor, data: Any, *, where: str) -> None:
            calls.append("check")

        def mask(self, method: Any, leaf: Tensor, data: Any, *, where: str) -> Tensor:
            calls.append("mask")
            mask: Tensor = method(leaf, **data)
            return mask

        def global_masks(self, method: Any, leaves: Any, data: Any, *, where: str) -> Any:
            raise AssertionError("not reached")

    monkeypatch.setattr(_compute, "_SHARDED", [Backend()])
    params = _model()
    hessians = _hessians(params, "attn.q.weight")
    rules = {"attn.q.weight": fs.SparseGPT(0.5), "mlp.up.weight": fs.Magnitude(0.5)}
    with pytest.raises(ValueError, match=r"^prune: rule 'attn.q.weight' \(SparseGPT\) at "
                       r"'attn.q.weight': SparseGPT updates the weights it prunes, which prune "
                       r"does not do on a DTensor leaf"):  # fmt: skip
        fs.prune(params, rules, hessian=hessians)
    assert "mask" not in calls
    calls.clear()
    result = fs.prune(params, {"mlp.up.weight": fs.Magnitude(0.5)})
    assert calls == ["check", "mask"]
    assert torch.equal(
        result.params["mlp.up.weight"], params["mlp.up.weight"] * result.masks["mlp.up.weight"]
    )


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_prune_agrees_with_compute_masks_and_apply_masks_on_any_tree(data: st.DataObject) -> None:
    tree = data.draw(fst.params())
    rules = data.draw(fst.rules_for(tree))
    result = fs.prune(tree, rules)
    masks = fs.compute_masks(tree, rules)
    zeroed = fs.apply_masks(tree, masks)
    paths, original, spec = flatten_with_paths(tree)
    got = leaves_like(spec, result.params)
    want = leaves_like(spec, zeroed)
    for path, new, expected, old, mask, fresh in zip(
        paths,
        got,
        want,
        original,
        leaves_like(spec, result.masks),
        leaves_like(spec, masks),
        strict=True,
    ):
        if mask is None:
            assert fresh is None and new is old, path
        else:
            assert torch.equal(mask, fresh) and torch.equal(new, expected), path
    assert result.info == {}


def test_end_to_end_with_collected_hessians_on_digits() -> None:
    # collect_hessians on a small MLP, fs.prune at 50%: on held-out digits the pruned
    # model's outputs stay far closer to the dense model's than Magnitude's do.
    from torch import nn

    from funcsparse.calibration import collect_hessians
    from funcsparse.demo_data import load_digits

    x, _ = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    params = {name: p.detach() for name, p in model.named_parameters()}
    hessians = collect_hessians(model, params, [x[:500]])
    ours = fs.prune(params, {"*.weight": fs.SparseGPT(0.5)}, hessian=hessians)
    magnitude = fs.prune(params, {"*.weight": fs.Magnitude(0.5)})
    held_out = x[500:]
    with torch.no_grad():
        dense = model(held_out)

        def error(pruned: dict[str, Tensor]) -> float:
            out = torch.func.functional_call(model, pruned, (held_out,))
            return float((out - dense).norm() / dense.norm())

        assert error(ours.params) < 0.5 * error(magnitude.params)
    assert set(ours.info) == {"0.weight", "2.weight"}
    assert all(int((~m).sum()) == m.numel() // 2 for m in (ours.masks["0.weight"],))
