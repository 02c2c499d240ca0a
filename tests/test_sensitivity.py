"""fs.sensitivity: the vmapped table equals the plain K x L loop, level 0 is dense, the most
important layer hurts most, bad input is refused loudly, and nothing is mutated.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import funcsparse as fs

LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
LossFn = Callable[[Any], Tensor]


def mlp_case() -> tuple[LossFn, dict[str, Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    x = torch.randn(32, 6)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: pruning raises the loss

    def loss_fn(p: Any) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    return loss_fn, dict(model.named_parameters())


def conv_case() -> tuple[LossFn, dict[str, Tensor]]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    ).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))

    def loss_fn(p: Any) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    return loss_fn, dict(model.named_parameters())


def plain_loop(
    loss_fn: LossFn,
    params: Any,
    rules: Mapping[str, fs.MaskMethod],
    levels: tuple[float, ...],
    **leaf_data: Any,
) -> Tensor:
    """The reference: every (rule, leaf) pruned alone by compute_masks, one loss per level."""
    rows = []
    for path, method in rules.items():
        row = []
        for s in levels:
            changes: dict[str, Any] = {"sparsity": s}
            if "count" in {f.name for f in dataclasses.fields(method)}:
                changes["count"] = None
            at_level = dataclasses.replace(method, **changes)
            masks = fs.compute_masks(params, {path: at_level}, **leaf_data)
            with torch.no_grad():
                row.append(loss_fn(fs.apply_masks(params, masks)))
        rows.append(torch.stack(row))
    return torch.stack(rows)


# --- agreement with the plain loop -----------------------------------------------------------


def test_mlp_vmapped_table_equals_plain_loop() -> None:
    loss_fn, params = mlp_case()
    rules: dict[str, fs.MaskMethod | None] = {"*.weight": fs.Magnitude(0.5), "4.weight": None}
    table = fs.sensitivity(loss_fn, params, rules, levels=LEVELS)
    assert table.paths == ("0.weight", "2.weight")
    assert table.levels == LEVELS
    expected = plain_loop(loss_fn, params, {p: fs.Magnitude(0.5) for p in table.paths}, LEVELS)
    torch.testing.assert_close(table.losses, expected, rtol=1e-5, atol=1e-6)
    assert table.losses.shape == (2, len(LEVELS))
    assert table.dense_loss == pytest.approx(loss_fn(params).item(), abs=0)


def test_conv_net_vmapped_table_equals_plain_loop() -> None:
    loss_fn, params = conv_case()
    rules: dict[str, fs.MaskMethod] = {
        "0.weight": fs.LnStructured(0.5, n=1, dim=0),
        "2.weight": fs.Magnitude(count=3),  # the count is cleared: the levels replace it
        "5.weight": fs.WeightNorm(0.5, sparse_block_shape=(1, 4)),
    }
    table = fs.sensitivity(loss_fn, params, rules, levels=LEVELS)
    assert table.paths == ("0.weight", "2.weight", "5.weight")
    torch.testing.assert_close(
        table.losses, plain_loop(loss_fn, params, rules, LEVELS), rtol=1e-5, atol=1e-6
    )


def test_vmap_false_and_chunk_size_give_the_same_table() -> None:
    loss_fn, params = mlp_case()
    rules = {"**.weight": fs.Magnitude(0.5)}
    vmapped = fs.sensitivity(loss_fn, params, rules, levels=LEVELS)
    looped = fs.sensitivity(loss_fn, params, rules, levels=LEVELS, vmap=False)
    chunked = fs.sensitivity(loss_fn, params, rules, levels=LEVELS, chunk_size=3)
    torch.testing.assert_close(vmapped.losses, looped.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vmapped.losses, chunked.losses, rtol=1e-5, atol=1e-6)
    # The loop runs exactly the reference's computation.
    assert torch.equal(
        looped.losses,
        plain_loop(loss_fn, params, dict.fromkeys(looped.paths, fs.Magnitude(0.5)), LEVELS),
    )


def test_leaf_data_random_seeds_and_nested_params_match_compute_masks() -> None:
    torch.manual_seed(2)
    params = {"enc": {"w": torch.randn(5, 8)}, "dec": {"w": torch.randn(3, 5)}}
    x = torch.randn(16, 8)
    target = torch.randn(16, 3)

    def loss_fn(p: Any) -> Tensor:
        return F.mse_loss(torch.tanh(x @ p["enc"]["w"].T) @ p["dec"]["w"].T, target)

    norms = {"enc": {"w": x.norm(dim=0)}, "dec": {"w": torch.rand(5) + 0.5}}
    for rules in (
        {"enc.w": fs.Wanda(0.5), "dec.w": fs.Wanda(0.5)},
        {"enc.w": fs.Random(0.5, seed=3), "dec.w": fs.Random(0.5, seed=3)},
    ):
        data = {"input_norms": norms} if "Wanda" in repr(rules) else {}
        table = fs.sensitivity(loss_fn, params, rules, levels=LEVELS, **data)
        assert table.paths == ("enc.w", "dec.w")  # params' order, not optree's sorted one
        expected = plain_loop(loss_fn, params, rules, LEVELS, **data)
        torch.testing.assert_close(table.losses, expected, rtol=1e-5, atol=1e-6)


def test_rows_follow_the_models_order() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])
    x = torch.randn(8, 4)

    def loss_fn(p: Any) -> Tensor:
        return torch.func.functional_call(model, p, (x,)).square().mean()

    params = dict(model.named_parameters())
    table = fs.sensitivity(loss_fn, params, {"*.weight": fs.Magnitude(0.5)}, levels=[0.0, 0.5])
    assert table.paths == tuple(f"{i}.weight" for i in range(12))  # 2 before 10
    rules = dict.fromkeys(table.paths, fs.Magnitude(0.5))
    expected = plain_loop(loss_fn, params, rules, (0.0, 0.5))
    torch.testing.assert_close(table.losses, expected, rtol=1e-5, atol=1e-6)


def test_a_global_rule_prunes_each_layer_alone() -> None:
    loss_fn, params = mlp_case()
    table = fs.sensitivity(loss_fn, params, {"*.weight": fs.GlobalMagnitude(0.5)}, levels=LEVELS)
    per_layer = fs.sensitivity(loss_fn, params, {"*.weight": fs.Magnitude(0.5)}, levels=LEVELS)
    assert torch.equal(table.losses, per_layer.losses)


# --- what the numbers say --------------------------------------------------------------------


def test_level_zero_is_the_dense_loss() -> None:
    for loss_fn, params in (mlp_case(), conv_case()):
        for vmap in (True, False):
            table = fs.sensitivity(
                loss_fn, params, {"*.weight": fs.Magnitude(0.5)}, levels=LEVELS, vmap=vmap
            )
            dense = torch.full((len(table.paths),), table.dense_loss)
            torch.testing.assert_close(table.losses[:, 0], dense, rtol=1e-6, atol=1e-6)


def test_pruning_the_most_important_layer_hurts_most() -> None:
    torch.manual_seed(3)
    x = torch.randn(64, 8)
    params = {
        "big": 10 * torch.randn(4, 8),
        "small": 0.1 * torch.randn(4, 8),
        "bias": torch.zeros(4),
    }
    target = x @ (params["big"] + params["small"]).T

    def loss_fn(p: Any) -> Tensor:
        return F.mse_loss(x @ (p["big"] + p["small"]).T + p["bias"], target)

    table = fs.sensitivity(
        loss_fn, params, {"big": fs.Magnitude(0.5), "small": fs.Magnitude(0.5)}, levels=LEVELS
    )
    big, small = table.increase
    assert table.dense_loss == pytest.approx(0.0, abs=1e-6)
    assert bool((big[1:] > 100 * small[1:]).all())  # every level above 0
    assert bool((big.diff() >= 0).all())  # magnitude pruning of one layer: loss rises


# --- the table as data -----------------------------------------------------------------------


def test_table_renders_and_round_trips_through_json() -> None:
    table = fs.Sensitivity(
        paths=("enc.weight", "head.weight"),
        levels=(0.0, 0.5, 0.9),
        losses=torch.tensor([[1.0, 1.25, 2.0], [1.0, 1.0 - 1e-9, 3.5]]),
        dense_loss=1.0,
    )
    assert str(table) == (
        "loss with one layer pruned (dense loss 1.0000)\n"
        "layer             0     0.5     0.9\n"
        "enc.weight   1.0000  1.2500  2.0000\n"
        "head.weight  1.0000  1.0000  3.5000"
    )
    assert table.table(increase=True, digits=2) == (
        "loss increase with one layer pruned (dense loss 1.00)\n"
        "layer            0    0.5    0.9\n"
        "enc.weight   +0.00  +0.25  +1.00\n"
        "head.weight  +0.00  +0.00  +2.50"
    )
    back = fs.Sensitivity.from_dict(json.loads(json.dumps(table.to_dict())))
    assert (back.paths, back.levels, back.dense_loss) == (table.paths, table.levels, 1.0)
    torch.testing.assert_close(back.losses, table.losses.double())


# --- purity ----------------------------------------------------------------------------------


def test_params_are_not_mutated_and_no_graph_is_built() -> None:
    loss_fn, params = mlp_case()
    before = {k: v.detach().clone() for k, v in params.items()}
    seen: list[Any] = []

    def spy(p: Any) -> Tensor:
        seen.append(p)
        return loss_fn(p)

    table = fs.sensitivity(spy, params, {"*.weight": fs.Magnitude(0.5)}, levels=LEVELS)
    for name, value in params.items():
        assert torch.equal(value, before[name]) and value.requires_grad and value.grad is None
    assert not table.losses.requires_grad
    assert seen[0] is params  # the dense loss sees params themselves
    pruned_call = seen[1]
    assert pruned_call["2.weight"] is params["2.weight"]  # other leaves: the same objects
    assert pruned_call["0.bias"] is params["0.bias"]


# --- a forward that vmap cannot batch --------------------------------------------------------


def test_data_dependent_forward_needs_vmap_false() -> None:
    loss_fn, params = mlp_case()

    def branching(p: Any) -> Tensor:
        loss = loss_fn(p)
        return loss * 2 if loss > 0.5 else loss  # data-dependent control flow

    with pytest.raises(
        RuntimeError,
        match=r"sensitivity: loss_fn failed under torch\.func\.vmap over the 7 levels of '0\.weight': .*pass vmap=False",
    ):
        fs.sensitivity(branching, params, {"*.weight": fs.Magnitude(0.5)}, levels=LEVELS)
    table = fs.sensitivity(
        branching, params, {"*.weight": fs.Magnitude(0.5)}, levels=LEVELS, vmap=False
    )
    expected = plain_loop(branching, params, dict.fromkeys(table.paths, fs.Magnitude(0.5)), LEVELS)
    assert torch.equal(table.losses, expected)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"levels": []},
            ValueError,
            "sensitivity: levels is empty; give at least one fraction in [0, 1]",
        ),
        (
            {"levels": [0.0, 1.5]},
            ValueError,
            "sensitivity: levels must be fractions in [0, 1], got 1.5 in [0.0, 1.5]",
        ),
        (
            {"levels": [-0.1]},
            ValueError,
            "sensitivity: levels must be fractions in [0, 1], got -0.1 in [-0.1]",
        ),
        (
            {"levels": [float("nan")]},
            ValueError,
            "sensitivity: levels must be fractions in [0, 1], got nan in [nan]",
        ),
        (
            {"levels": [0.5, 0.5]},
            ValueError,
            "sensitivity: levels must be strictly ascending, got 0.5 before 0.5 in [0.5, 0.5]",
        ),
        (
            {"levels": [0.9, 0.1]},
            ValueError,
            "sensitivity: levels must be strictly ascending, got 0.9 before 0.1 in [0.9, 0.1]",
        ),
        (
            {"levels": [True]},
            TypeError,
            "sensitivity: levels must be fractions in [0, 1], got bool True in [True]",
        ),
        (
            {"levels": ["0.5"]},
            TypeError,
            "sensitivity: levels must be fractions in [0, 1], got str '0.5' in ['0.5']",
        ),
        (
            {"levels": 0.5},
            TypeError,
            "sensitivity: levels must be a sequence of fractions in [0, 1], got float 0.5",
        ),
        (
            {"levels": [0.5], "chunk_size": 0},
            ValueError,
            "sensitivity: chunk_size must be >= 1, got 0",
        ),
        (
            {"levels": [0.5], "chunk_size": 2.0},
            TypeError,
            "sensitivity: chunk_size must be an int or None, got float 2.0",
        ),
        (
            {"levels": [0.5], "vmap": "no"},
            TypeError,
            "sensitivity: vmap must be a bool, got str 'no'",
        ),
        ({"levels": [0.5], "batch_dims": 1}, TypeError, "sensitivity: batch_dims is not supported"),
        (
            {"levels": torch.zeros(2, 2)},
            ValueError,
            "sensitivity: levels must be 1-D, got a 2-D torch.float32 tensor of shape (2, 2)",
        ),
        (
            {"levels": [0.5], "input_norms": {"w": None}},
            ValueError,
            "sensitivity: input_norms does not have the structure of params (missing ['0.bias', '0.weight'",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    loss_fn, params = mlp_case()
    with pytest.raises(error, match=re.escape(message)):
        fs.sensitivity(loss_fn, params, {"*.weight": fs.Magnitude(0.5)}, **kwargs)


def test_a_level_is_accepted_as_a_tensor() -> None:
    loss_fn, params = mlp_case()
    table = fs.sensitivity(
        loss_fn, params, {"0.weight": fs.Magnitude(0.5)}, levels=torch.tensor([0.0, 0.5])
    )
    assert table.levels == (0.0, 0.5)


@pytest.mark.parametrize(
    ("method", "name"),
    [(fs.NM(n=2, m=4), "NM"), (fs.NearlyDiagonal(nearliness=3), "NearlyDiagonal")],
)
def test_a_method_without_sparsity_is_refused(method: fs.MaskMethod, name: str) -> None:
    loss_fn, params = mlp_case()
    message = f"sensitivity: rule '*.weight' ({name}) has no sparsity field to set to the levels"
    with pytest.raises(TypeError, match=re.escape(message)):
        fs.sensitivity(loss_fn, params, {"*.weight": method}, levels=[0.5])


def test_a_method_that_cannot_take_the_level_is_refused() -> None:
    loss_fn, params = mlp_case()
    method = fs.Movement(select=fs.NM(n=2, m=4))
    message = "sensitivity: rule '0.weight' (Movement) cannot be set to sparsity=0.5: Movement: give a level"
    with pytest.raises(TypeError, match=re.escape(message)):
        fs.sensitivity(loss_fn, params, {"0.weight": method}, levels=[0.5])


def test_a_leaf_the_method_cannot_mask_is_refused_before_any_loss() -> None:
    loss_fn, params = mlp_case()
    calls: list[Any] = []

    def counted(p: Any) -> Tensor:
        calls.append(p)
        return loss_fn(p)

    message = (
        "sensitivity: rule '*.bias' (WeightNorm) got a 1-D torch.float32 tensor of shape (16,) "
        "at '0.bias'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        fs.sensitivity(counted, params, {"*.bias": fs.WeightNorm(0.5)}, levels=[0.5])
    with pytest.raises(
        ValueError, match=r"sensitivity: rule '0\.weight' \(Wanda\) got .*input_norms"
    ):
        fs.sensitivity(counted, params, {"0.weight": fs.Wanda(0.5)}, levels=[0.5])
    assert calls == []


def test_rules_that_select_nothing_are_refused() -> None:
    loss_fn, params = mlp_case()
    with pytest.raises(
        ValueError,
        match=re.escape(
            "sensitivity: rule pattern 'enc.*.weight' matches no leaf; the leaves are ['0.bias', '0.weight'"
        ),
    ):
        fs.sensitivity(loss_fn, params, {"enc.*.weight": fs.Magnitude(0.5)}, levels=[0.5])
    with pytest.raises(
        ValueError,
        match=re.escape("sensitivity: the rules select no leaf to prune (every rule maps to None)"),
    ):
        fs.sensitivity(loss_fn, params, {"*.weight": None}, levels=[0.5])


@pytest.mark.parametrize(
    ("returns", "error", "message"),
    [
        (
            lambda loss: loss.reshape(1).expand(3),
            ValueError,
            "sensitivity: loss_fn must return a 0-D tensor, got a 1-D torch.float32 tensor of shape (3,); reduce it, e.g. with .mean()",
        ),
        (
            lambda loss: float(loss),
            TypeError,
            "sensitivity: loss_fn must return a 0-D tensor, got float",
        ),
    ],
)
def test_a_loss_that_is_not_a_scalar_is_refused(
    returns: Callable[[Tensor], Any], error: type[Exception], message: str
) -> None:
    loss_fn, params = mlp_case()
    with pytest.raises(error, match=re.escape(message)):
        fs.sensitivity(
            lambda p: returns(loss_fn(p)), params, {"*.weight": fs.Magnitude(0.5)}, levels=[0.5]
        )


def test_loss_fn_must_be_callable() -> None:
    _, params = mlp_case()
    with pytest.raises(
        TypeError, match=re.escape("sensitivity: loss_fn must be callable, got dict")
    ):
        fs.sensitivity(params, params, {"*.weight": fs.Magnitude(0.5)}, levels=[0.5])


def test_hostile_levels_leaves_and_chunks() -> None:
    loss_fn, params = mlp_case()
    rules = {"0.weight": fs.Magnitude(0.5)}
    for levels, pattern in (
        ([0.0, 10**400], r"got 1000.*\.\.\..* in \["),
        ([0.1, float("nan")], r"levels must be fractions in \[0, 1\], got nan"),
        (list(range(10_000)), r"levels must be fractions"),
    ):
        with pytest.raises(ValueError, match=pattern) as info:
            fs.sensitivity(loss_fn, params, rules, levels=levels)
        assert len(str(info.value)) < 400
    meta = {**params, "0.weight": params["0.weight"].to("meta")}
    with pytest.raises(ValueError, match=r"at '0.weight'; meta tensors have no data"):
        fs.sensitivity(loss_fn, meta, rules, levels=[0.5])
    huge = fs.sensitivity(loss_fn, params, rules, levels=[0.0, 0.5], chunk_size=10**400)
    assert torch.equal(
        huge.losses, fs.sensitivity(loss_fn, params, rules, levels=[0.0, 0.5]).losses
    )


def test_a_scores_tree_with_none_at_a_matched_leaf_is_refused() -> None:
    # Magnitude reads scores where given: a None entry would silently rank that leaf by |w|.
    params = {"a": torch.randn(4, 4), "b": torch.randn(4, 4)}
    with pytest.raises(
        ValueError,
        match=r"^sensitivity: scores is None at \['b'\], which rule '\*' \(Magnitude\) matches",
    ):
        fs.sensitivity(
            lambda p: sum(v.sum() for v in p.values()),
            params,
            {"*": fs.Magnitude(0.5)},
            levels=[0.5],
            scores={"a": torch.randn(4, 4), "b": None},
        )
