"""compute_masks over pytrees: structure, paths, errors, nothing computed on bad input."""

from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

import funcsparse as fs

WN = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 4))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            seq=nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), linear1=nn.Linear(8, 4)
        )
    )


def test_flat_dict_from_named_parameters() -> None:
    params = dict(model().named_parameters())
    masks = fs.compute_masks(
        params, {"seq.*.weight": WN, "linear1.weight": fs.NearlyDiagonal(nearliness=3)}
    )
    assert list(masks) == list(params)
    assert masks["seq.0.bias"] is None and masks["linear1.bias"] is None
    for name in ["seq.0.weight", "seq.2.weight", "linear1.weight"]:
        assert masks[name].dtype == torch.bool and masks[name].shape == params[name].shape
    assert torch.equal(masks["seq.0.weight"], WN(params["seq.0.weight"]))
    assert torch.equal(
        masks["linear1.weight"], fs.NearlyDiagonal(nearliness=3)(params["linear1.weight"])
    )


def test_nested_dicts_lists_and_tuples_use_dotted_paths() -> None:
    w = [torch.randn(4, 8) for _ in range(3)]
    params: dict[str, Any] = {
        "layers": [{"weight": w[0]}, {"weight": w[1]}],
        "pair": (w[2], torch.ones(3)),
    }
    masks = fs.compute_masks(params, {"layers.*.weight": WN, "pair.0": WN})
    assert isinstance(masks["layers"], list) and isinstance(masks["pair"], tuple)
    assert torch.equal(masks["layers"][1]["weight"], WN(w[1]))
    assert torch.equal(masks["pair"][0], WN(w[2]))
    assert masks["pair"][1] is None


def test_masks_fit_apply_masks() -> None:
    params = {"a": [torch.randn(4, 8), torch.randn(2)]}
    masks = fs.compute_masks(params, {"a.0": WN})
    masked = fs.apply_masks(params, masks)
    assert masked["a"][1] is params["a"][1]
    assert torch.equal(masked["a"][0], params["a"][0] * masks["a"][0])


def test_bad_leaf_names_function_rule_method_path_and_value() -> None:
    params = dict(model().named_parameters())
    message = "compute_masks: rule 'seq.**' (WeightNorm) got a 1-D torch.float32 tensor of shape (8,) at 'seq.0.bias'; WeightNorm needs 2-D weights"
    with pytest.raises(ValueError, match=re.escape(message)):
        fs.compute_masks(params, {"seq.**": WN})


def test_non_floating_leaf() -> None:
    with pytest.raises(
        TypeError,
        match=r"compute_masks: rule 'w' \(WeightNorm\) got a 2-D torch.int64 tensor .* at 'w'; WeightNorm needs floating-point",
    ):
        fs.compute_masks({"w": torch.ones(2, 4, dtype=torch.int64)}, {"w": WN})


def test_nothing_is_computed_when_any_leaf_is_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = fs.WeightNorm._mask

    def counting(self: fs.WeightNorm, tensor: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(tensor.shape))
        return original(self, tensor, **kwargs)

    monkeypatch.setattr(fs.WeightNorm, "_mask", counting)
    params = {"a": torch.randn(4, 4), "z": torch.randn(4)}
    with pytest.raises(ValueError, match="at 'z'"):
        fs.compute_masks(params, {"*": WN})
    assert calls == []


def test_rules_errors_surface_with_the_function_name() -> None:
    with pytest.raises(
        ValueError, match=r"compute_masks: rule path 'seq\.0\.wieght' matches no leaf"
    ):
        fs.compute_masks(dict(model().named_parameters()), {"seq.0.wieght": WN})


def test_inputs_are_not_mutated() -> None:
    params = dict(model().named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    rules = {"seq.*.weight": WN}
    fs.compute_masks(params, rules)
    assert rules == {"seq.*.weight": WN}
    assert all(torch.equal(params[name], before[name]) for name in params)
    assert all(p.grad is None for p in params.values())


def test_masks_carry_no_autograd_history() -> None:
    params = dict(model().named_parameters())
    masks = fs.compute_masks(params, {"seq.*.weight": WN})
    assert masks["seq.0.weight"].grad_fn is None and not masks["seq.0.weight"].requires_grad


def test_batch_dims_members_own_their_memory() -> None:
    masks = fs.compute_masks(
        {"w": torch.randn(3, 4, 8)}, {"w": fs.NearlyDiagonal(nearliness=1)}, batch_dims=1
    )
    assert masks["w"].is_contiguous()
    masks["w"][0, 0, 0] = False
    assert masks["w"][1, 0, 0] and masks["w"][2, 0, 0]


def test_batch_dims_edge_cases() -> None:
    empty = fs.compute_masks({"w": torch.randn(0, 4, 4)}, {"w": WN}, batch_dims=1)
    assert empty["w"].shape == (0, 4, 4)
    with pytest.raises(ValueError, match=r"at 'w'; batch_dims=3 needs at least 3 dimensions"):
        fs.compute_masks({"w": torch.randn(4, 4)}, {"w": WN}, batch_dims=3)


def test_errors_while_computing_name_the_leaf() -> None:
    with pytest.raises(
        TypeError, match=r"compute_masks: rule 'w' \(WeightNorm\) at 'w': WeightNorm: norm callable"
    ):
        fs.compute_masks({"w": torch.randn(4, 4)}, {"w": fs.WeightNorm(norm=lambda t: t.sum())})


def test_colliding_paths_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"compute_masks: two leaves have the path 'a\.b'"):
        fs.compute_masks({"a.b": torch.randn(4, 4), "a": {"b": torch.randn(4, 4)}}, {"a.b": WN})


def test_ensemble_data_must_have_the_members_of_the_leaf() -> None:
    from funcsparse.methods.random import Random

    leaf = {"a": torch.randn(2, 4, 8)}
    with pytest.raises(
        ValueError,
        match=r"got prev_masks of shape \(3, 4, 8\) at 'a' for a leaf of shape \(2, 4, 8\); with batch_dims=1 both need the leading shape \(2,\)",
    ):
        fs.compute_masks(
            leaf,
            {"a": Random(sparsity=0.5)},
            batch_dims=1,
            prev_masks={"a": torch.rand(3, 4, 8) > 0.5},
        )
    with pytest.raises(ValueError, match=r"got scores of shape \(4, 8\) at 'a'"):
        fs.compute_masks(
            leaf, {"a": fs.Magnitude(sparsity=0.5)}, batch_dims=1, scores={"a": torch.randn(4, 8)}
        )


def test_a_global_group_needs_one_device() -> None:
    # a meta member is refused by path before the group is looked at (no data, issue 9);
    # the group check itself is what compute_masks reports for two real devices
    params = {"a": torch.randn(3, 3), "b": torch.empty(3, 3, device="meta")}
    with pytest.raises(
        ValueError,
        match=r"^compute_masks: rule '\*' \(GlobalMagnitude\) got a 2-D torch.float32 tensor "
        r"of shape \(3, 3\) on meta at 'b'; meta tensors have no data",
    ):
        fs.compute_masks(params, {"*": fs.GlobalMagnitude(sparsity=0.5)})
    problem = fs.GlobalMagnitude(sparsity=0.5).group_problem(list(params.values()))
    assert problem is not None and problem.got == "tensors on devices ['cpu', 'meta']"


# -- a data tree with None where a method reads it (issue 9) --------------------------------


def test_scores_none_at_a_leaf_the_rule_matches_is_an_error() -> None:
    torch.manual_seed(0)
    params = {"a": torch.randn(4, 4), "b": torch.randn(4, 4), "c": torch.randn(4)}
    scores = {"a": torch.randn(4, 4), "b": None, "c": None}
    for method in (fs.Magnitude(0.5), WN, fs.NM(n=2, m=4), fs.GlobalMagnitude(0.5)):
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"compute_masks: scores is None at ['b'], which rule '[ab]' "
                f"({type(method).__name__}) matches; a scores tree must give every leaf the "
                f"rule matches a value (where None, {type(method).__name__} would silently "
                "rank the weights)"
            ),
        ):
            fs.compute_masks(params, {"[ab]": method}, scores=scores)
    # Scores everywhere the rules read them: fine; None where no rule (or rule None) applies.
    full = {**scores, "b": params["b"].abs()}
    masks = fs.compute_masks(params, {"a": fs.Magnitude(0.5), "b": fs.Magnitude(0.5)}, scores=full)
    assert torch.equal(masks["b"], fs.Magnitude(0.5)(params["b"]))
    masks = fs.compute_masks(params, {"a": fs.Magnitude(0.5), "b": None}, scores=scores)
    assert masks["b"] is None and masks["a"] is not None
    # Methods that read no scores ignore the tree: None there is fine.
    fs.compute_masks(params, {"a": fs.Magnitude(0.5), "b": fs.NearlyDiagonal()}, scores=scores)


def test_the_missing_leaves_are_listed_and_bounded() -> None:
    params = {f"w{i:02d}": torch.randn(2, 2) for i in range(20)}
    scores: dict[str, Any] = dict.fromkeys(params)
    with pytest.raises(ValueError) as err:
        fs.compute_masks(params, {"w*": fs.Magnitude(0.5)}, scores=scores)
    message = str(err.value)
    assert "['w00', 'w01', 'w02', 'w03', 'w04', 'w05', 'w06', 'w07', '... (20 in all)']" in message
    assert len(message) < 500


def test_a_generator_tree_must_cover_the_random_leaves() -> None:
    params = {"a": torch.randn(4, 4), "b": torch.randn(4, 4)}
    with pytest.raises(
        ValueError, match=r"generator is None at \['b'\], which rule '\*' \(Random\)"
    ):
        fs.compute_masks(
            params, {"*": fs.Random(0.5)}, generator={"a": torch.Generator(), "b": None}
        )


@pytest.mark.parametrize("batch_dims", [0, 1, 2])
@pytest.mark.parametrize("shape", [(), (0,), (0, 4), (3, 0, 4), (2, 3, 0), (2, 0), (0, 4, 4)])
def test_zero_size_and_zero_d_leaves_with_batch_dims(
    shape: tuple[int, ...], batch_dims: int
) -> None:
    leaf = torch.randn(shape)
    cases: list[tuple[fs.MaskMethod, dict[str, Any]]] = [
        (fs.Magnitude(0.5), {}),
        (WN, {}),
        (fs.Movement(0.5), {"scores": {"w": torch.randn(shape)}}),
    ]
    if len(shape) > batch_dims:
        norms = torch.ones(*shape[:batch_dims], shape[-1])
        cases.append((fs.Wanda(0.5), {"input_norms": {"w": norms}}))
    for method, data in cases:
        try:
            masks = fs.compute_masks({"w": leaf}, {"w": method}, batch_dims=batch_dims, **data)
        except (TypeError, ValueError) as err:
            assert str(err).startswith("compute_masks: rule 'w'"), err
            continue
        assert masks["w"].dtype == torch.bool and masks["w"].shape == leaf.shape


def _plain_signature(obj: Any) -> str:
    """``inspect.signature`` without annotations, as docs/index.md writes it."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def test_the_public_table_in_the_docs_shows_the_real_signatures() -> None:
    import importlib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "index.md").read_text()
    table = text[text.index("| name | what it is |") :].split("\n\n")[0]
    shown = re.findall(r"`((?:fs|funcsparse)\.[\w.]+)(\(.*?\))`", table)
    assert len(shown) >= 25
    for name, signature in shown:
        owner, attr = name.replace("fs.", "funcsparse.", 1).rsplit(".", 1)
        obj = getattr(importlib.import_module(owner), attr)
        assert signature == _plain_signature(obj), name


def test_a_member_problem_does_not_mention_the_meta_stand_in() -> None:
    with pytest.raises(ValueError) as err:
        fs.compute_masks({"w": torch.randn(2, 4)}, {"w": fs.NearlyDiagonal()}, batch_dims=1)
    assert "at 'w'" in str(err.value) and "meta" not in str(err.value)


# -- meta leaves and leaves that are not tensors, refused up front (issue 9, fuzz) ---------


@pytest.mark.parametrize("batch_dims", [0, 1])
@pytest.mark.parametrize("method", [fs.Magnitude(sparsity=0.5), fs.GlobalMagnitude(sparsity=0.5)])
def test_a_meta_leaf_is_refused_before_any_mask(
    monkeypatch: pytest.MonkeyPatch, method: fs.MaskMethod, batch_dims: int
) -> None:
    calls: list[str] = []
    cls = type(method)
    name = "_global_masks" if isinstance(method, fs.GlobalMethod) else "_mask"
    original = getattr(cls, name)

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counting)
    params = {"a": torch.randn(2, 4, 4), "z": torch.zeros(2, 4, 4, device="meta")}
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"compute_masks: rule '*' ({cls.__name__}) got a 3-D torch.float32 tensor of shape "
            "(2, 4, 4) on meta at 'z'; meta tensors have no data; move it to a real device"
        ),
    ):
        fs.compute_masks(params, {"*": method}, batch_dims=batch_dims)
    assert calls == []
    fs.compute_masks({"a": params["a"]}, {"*": method}, batch_dims=batch_dims)
    assert calls  # the spy sees real work


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_meta_data_is_refused_by_name_and_path(batch_dims: int) -> None:
    params = {"w": torch.randn(2, 4, 4)}
    meta = torch.ones(2, 4, 4, device="meta")
    with pytest.raises(ValueError, match=r"got scores on the meta device at 'w'; meta tensors"):
        fs.compute_masks(
            params, {"w": fs.Magnitude(sparsity=0.5)}, batch_dims=batch_dims, scores={"w": meta}
        )
    with pytest.raises(ValueError, match=r"got prev_masks on the meta device at 'w'; meta"):
        fs.compute_masks(
            params,
            {"w": fs.Magnitude(sparsity=0.5)},
            batch_dims=batch_dims,
            prev_masks={"w": meta.bool()},
        )


@pytest.mark.parametrize(
    ("leaf", "shown"), [("x", "str 'x'"), (3, "int 3"), (1.5, "float 1.5"), (object(), "object")]
)
def test_a_leaf_that_is_not_a_tensor_is_refused_matched_or_not(leaf: object, shown: str) -> None:
    params = {"w": torch.randn(4, 4), "step": leaf}
    for rules in ({"w": fs.Magnitude(sparsity=0.5)}, {"*": fs.Magnitude(sparsity=0.5)}):
        with pytest.raises(
            TypeError,
            match=rf"^compute_masks: expected a pytree of tensors .*got {shown}.* at 'step'",
        ):
            fs.compute_masks(params, rules)


def test_a_module_passed_as_params_is_refused_with_a_hint() -> None:
    model = torch.nn.Linear(4, 2)
    with pytest.raises(TypeError, match=r"as the whole tree; pass dict\(model\.named_parameters"):
        fs.compute_masks(model, {"weight": fs.Magnitude(sparsity=0.5)})


def test_none_leaves_are_empty_entries_as_before() -> None:
    params = {"w": torch.randn(4, 4), "b": None, "layers": [None, {"w": torch.randn(4, 4)}]}
    masks = fs.compute_masks(params, {"w": fs.Magnitude(sparsity=0.5), "**.w": None})
    assert masks["b"] is None and masks["layers"][0] is None and masks["layers"][1]["w"] is None
    assert masks["w"].dtype == torch.bool and int((~masks["w"]).sum()) == 8
    with pytest.raises(ValueError, match=r"rule path 'b' matches no leaf"):
        fs.compute_masks(params, {"b": fs.Magnitude(sparsity=0.5)})
