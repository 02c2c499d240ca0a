"""Wanda: the paper's per-row formula, exact row counts, prev_mask, vmap, errors, end to end;
Wanda with an N:M pattern in one step (the reference's structured option)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse._select import smallest_k
from funcsparse.calibration import collect_input_norms
from funcsparse.methods import wanda as wanda_module
from funcsparse.methods.wanda import Wanda
from funcsparse.testing import check_leaf_mask, check_masks, registered_methods
from funcsparse.testing import strategies as fst


def paper_mask(weight: Tensor, norms: Tensor, sparsity: float) -> Tensor:
    """The reference code's unstructured Wanda (prune_wanda in locuslab/wanda), as a keep-mask.

    ``W_metric = |W| * norms``; per row, the ``k`` entries first in a stable ascending sort
    are pruned. The reference takes ``k = int(in * sparsity)``; funcsparse rounds, so ``k`` is
    passed in rounded here (the two agree wherever ``sparsity * in`` is an integer).
    """
    metric = weight.double().abs() * norms.double().reshape(1, -1)
    k = int(weight.shape[1] * sparsity)
    indices = torch.sort(metric, dim=-1, stable=True)[1][:, :k]
    pruned = torch.zeros(weight.shape, dtype=torch.bool)
    pruned.scatter_(1, indices, True)
    return ~pruned


def per_row_configs() -> st.SearchStrategy[Wanda]:
    """Wanda configs without an N:M pattern: the paper's per-row selection."""
    return Wanda.configs(st).filter(lambda method: method.n is None)


@st.composite
def cases(
    draw: st.DrawFn, *, ties: bool | None = None, special: bool = False
) -> tuple[Wanda, Tensor, Tensor]:
    method = draw(per_row_configs())
    weight = draw(fst.tensors(draw(fst.shapes(allow_empty=True)), ties=ties, special=special))
    norms = draw(Wanda.example_data(st, weight))["input_norms"]
    return method, weight, norms


def test_pinned_mask() -> None:
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]])
    norms = torch.tensor([4.0, 1.0, 1.0, 0.5])
    # scores [[4, 2, 3, 2], [16, 3, 2, 0.5]]; ties (row 0: 2 and 2) prune the lower column first
    assert Wanda(sparsity=0.25)(w, input_norms=norms).tolist() == [
        [True, False, True, True],
        [True, True, True, False],
    ]
    assert Wanda(sparsity=0.75)(w, input_norms=norms).tolist() == [
        [True, False, False, False],
        [True, False, False, False],
    ]
    # the norms change the ranking: magnitude alone would prune column 0 of row 0 first
    assert Wanda(sparsity=0.25)(w, input_norms=torch.ones(4))[0].tolist() == [
        False,
        True,
        True,
        True,
    ]


@given(cases(special=True))
def test_equals_the_papers_formula_bit_for_bit(case: tuple[Wanda, Tensor, Tensor]) -> None:
    method, weight, norms = case
    mask = method(weight, input_norms=norms)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, paper_mask(weight, norms, method.sparsity))


def test_equals_the_reference_pipeline_with_its_own_statistics() -> None:
    """The reference accumulates ``scaler_row`` (a mean of squared norms over samples) in
    float32 and takes ``k = int(in * sparsity)``; its masks equal ours on the same batches."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    batches = [torch.randn(2, 5, 16) for _ in range(3)]
    scaler_row, nsamples = torch.zeros(16), 0
    for inp in batches:  # WrappedGPT.add_batch, verbatim in substance
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().float()
        scaler_row *= nsamples / (nsamples + tmp)
        nsamples += tmp
        scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / nsamples
    params = {"weight": layer.weight.detach(), "bias": layer.bias.detach()}
    norms = collect_input_norms(layer, params, batches)["weight"]
    for sparsity in (0.25, 0.5, 0.75):
        metric = layer.weight.detach().abs() * torch.sqrt(scaler_row.reshape(1, -1))
        indices = torch.sort(metric, dim=-1, stable=True)[1][:, : int(16 * sparsity)]
        reference = torch.ones(8, 16, dtype=torch.bool).scatter_(1, indices, False)
        assert torch.equal(Wanda(sparsity=sparsity)(params["weight"], input_norms=norms), reference)


@given(cases())
def test_every_invariant_holds(case: tuple[Wanda, Tensor, Tensor]) -> None:
    method, weight, norms = case
    mask = method(weight, input_norms=norms)
    check_leaf_mask(method, weight, mask, data={"input_norms": norms})


@given(cases(ties=True, special=True))
def test_every_invariant_holds_on_ties_nan_and_inf(case: tuple[Wanda, Tensor, Tensor]) -> None:
    method, weight, norms = case
    mask = method(weight, input_norms=norms)
    check_leaf_mask(method, weight, mask, data={"input_norms": norms})


@given(cases(ties=True))
def test_every_row_prunes_exactly_in_times_sparsity_floored(
    case: tuple[Wanda, Tensor, Tensor],
) -> None:
    method, weight, norms = case
    mask = method(weight, input_norms=norms)
    k = int(weight.shape[1] * method.sparsity)
    assert ((~mask).sum(-1) == k).all()
    assert method.expected_zeros(weight, input_norms=norms) == weight.shape[0] * k


def test_structure_problem_catches_a_row_with_the_wrong_count() -> None:
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    norms = torch.rand(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    method = Wanda(sparsity=0.5)
    mask = method(weight, input_norms=norms)
    # move one zero from row 1 to row 2: the total count is right, the rows are not
    corrupt = mask.clone()
    corrupt[1, int((~mask[1]).nonzero()[0])] = True
    corrupt[2, int(mask[2].nonzero()[0])] = False
    assert int((~corrupt).sum()) == int((~mask).sum())
    assert method.structure_problem(weight, corrupt) == (
        "row 1 has 3 zeros; every row has 4 (int(in_features * sparsity) with sparsity=0.5, "
        "in_features=8)"
    )
    with pytest.raises(AssertionError, match="another mask"):
        check_leaf_mask(method, weight, corrupt, data={"input_norms": norms})


@dataclasses.dataclass(frozen=True, kw_only=True)
class _WandaOverTheWholeTensor(Wanda):
    """The usual mistake: one threshold over the whole weight instead of per output row."""

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        scores = (tensor.abs() * data["input_norms"]).reshape(-1)
        k = tensor.shape[0] * self.rows_to_prune(tensor)
        return ~smallest_k(scores, k).reshape(tensor.shape)


def test_a_whole_tensor_threshold_breaks_the_row_structure() -> None:
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    norms = torch.logspace(-1, 1, 8, dtype=torch.float64)
    method = _WandaOverTheWholeTensor(sparsity=0.5)
    mask = method(weight, input_norms=norms)
    assert method.expected_zeros(weight, input_norms=norms) == int((~mask).sum())  # right total
    with pytest.raises(
        AssertionError, match=r"the pattern is broken: row \d has \d zeros; every row has 4"
    ):
        check_leaf_mask(method, weight, mask, data={"input_norms": norms})


@given(cases(ties=True), st.data())
def test_prev_mask_stays_pruned_and_counts_toward_the_row(
    case: tuple[Wanda, Tensor, Tensor], data: st.DataObject
) -> None:
    method, weight, norms = case
    seed = data.draw(st.integers(0, 2**31 - 1))
    prev = torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask = method(weight, input_norms=norms, prev_mask=prev)
    assert not (mask & ~prev).any()
    k = int(weight.shape[1] * method.sparsity)
    expected_rows = (~prev).sum(-1).clamp(min=k)
    assert torch.equal((~mask).sum(-1), expected_rows)
    check_leaf_mask(method, weight, mask, data={"input_norms": norms, "prev_mask": prev})
    # through compute_masks: the same, and the level is the total target per row
    masks = fs.compute_masks(
        {"w": weight}, {"w": method}, prev_masks={"w": prev}, input_norms={"w": norms}
    )
    assert torch.equal(masks["w"], mask)


def test_vmap_over_weights_and_norms() -> None:
    generator = torch.Generator().manual_seed(3)
    weights = torch.randn(5, 6, 10, generator=generator)
    norms = torch.rand(5, 10, generator=generator, dtype=torch.float64)
    norms[2, :4] = 0.5  # ties in one member
    method = Wanda(sparsity=0.3)
    batched = torch.func.vmap(lambda w, n: method(w, input_norms=n))(weights, norms)
    for i in range(5):
        assert torch.equal(batched[i], method(weights[i], input_norms=norms[i]))
    # one weight, several norms (e.g. statistics from several calibration sets)
    per_norms = torch.func.vmap(lambda n: method(weights[0], input_norms=n))(norms)
    for i in range(5):
        assert torch.equal(per_norms[i], method(weights[0], input_norms=norms[i]))
    # an ensemble through compute_masks(batch_dims=1)
    stacked = fs.compute_masks(
        {"w": weights}, {"w": method}, batch_dims=1, input_norms={"w": norms}
    )["w"]
    assert torch.equal(stacked, batched)


def test_pytrees_through_check_masks() -> None:
    generator = torch.Generator().manual_seed(4)
    params = {
        "layers": [
            {"weight": torch.randn(6, 4, generator=generator), "bias": torch.randn(6)},
            {"weight": torch.randn(3, 6, generator=generator, dtype=torch.float64)},
        ]
    }
    norms = {
        "layers": [
            {"weight": torch.rand(4, dtype=torch.float64), "bias": None},
            {"weight": torch.rand(6)},
        ]
    }
    rules = {"layers.*.weight": Wanda(sparsity=0.5)}
    check_masks(params, rules, input_norms=norms)
    masks = fs.compute_masks(params, rules, input_norms=norms)
    assert masks["layers"][0]["bias"] is None
    assert ((~masks["layers"][1]["weight"]).sum(-1) == 3).all()


def _message(err: pytest.ExceptionInfo[BaseException]) -> str:
    return str(err.value)


def test_compute_masks_names_the_leaf_without_statistics() -> None:
    params = {"fc1.weight": torch.randn(4, 3), "fc2.weight": torch.randn(2, 4)}
    norms = {"fc1.weight": torch.ones(3), "fc2.weight": None}
    with pytest.raises(ValueError) as err:
        fs.compute_masks(params, {"*.weight": Wanda(sparsity=0.5)}, input_norms=norms)
    assert _message(err) == (
        "compute_masks: rule '*.weight' (Wanda) got no input_norms at 'fc2.weight'; Wanda needs "
        "input_norms, the L2 norm of every input feature over the calibration tokens, a tensor "
        "of shape (in_features,) (funcsparse.calibration.collect_input_norms; for a conv "
        "weight, of the weight's shape without its first dim)"
    )
    with pytest.raises(ValueError, match=re.escape("got no input_norms at 'fc1.weight'")):
        fs.compute_masks(params, {"*.weight": Wanda(sparsity=0.5)})


@pytest.mark.parametrize(
    ("weight", "norms", "error", "message"),
    [
        (
            torch.randn(4, 3),
            torch.ones(4),
            ValueError,
            "got input_norms of shape (4,) for a weight of shape (4, 3) at 'w'; Wanda needs "
            "input_norms of shape (3,), one per input feature",
        ),
        (
            torch.randn(4, 3),
            torch.ones(1, 3),
            ValueError,
            "got input_norms of shape (1, 3) for a weight of shape (4, 3) at 'w'",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([1.0, -1.0, 1.0]),
            ValueError,
            "got input_norms[1] = -1.0 at 'w'; norms must be finite and non-negative",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([1.0, 1.0, float("nan")]),
            ValueError,
            "got input_norms[2] = nan at 'w'; norms must be finite and non-negative",
        ),
        (
            torch.randn(4, 3),
            torch.ones(3, dtype=torch.long),
            TypeError,
            "got input_norms=a 1-D torch.int64 tensor of shape (3,) at 'w'; Wanda needs",
        ),
        (
            torch.randn(4),
            torch.ones(4),
            ValueError,
            "got a 1-D torch.float32 tensor of shape (4,) at 'w'; Wanda needs weights of 2 or "
            "more dims, (out_features, in_features) or a conv weight (out_channels, "
            "in_channels / groups, *kernel)",
        ),
        (
            torch.ones(4, 3, dtype=torch.long),
            torch.ones(3),
            TypeError,
            "at 'w'; Wanda needs floating-point weights",
        ),
    ],
)
def test_bad_leaves_raise_naming_the_path(
    weight: Tensor, norms: Tensor, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        fs.compute_masks({"w": weight}, {"w": Wanda(sparsity=0.5)}, input_norms={"w": norms})
    with pytest.raises(error):  # the single-tensor call too
        Wanda(sparsity=0.5)(weight, input_norms=norms)


def test_unknown_keyword_data_is_refused() -> None:
    with pytest.raises(TypeError, match=r"keyword data \['scores'\]; Wanda takes"):
        Wanda(sparsity=0.5)(torch.ones(2, 2), input_norms=torch.ones(2), scores=torch.ones(2, 2))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (1.5, ValueError, "Wanda: sparsity must be a fraction in [0, 1], got 1.5"),
        (-0.1, ValueError, "Wanda: sparsity must be a fraction in [0, 1], got -0.1"),
        (float("nan"), ValueError, "Wanda: sparsity must be a fraction in [0, 1], got nan"),
        ("0.5", TypeError, "Wanda: sparsity must be a fraction in [0, 1], got str '0.5'"),
        (True, TypeError, "Wanda: sparsity must be a fraction in [0, 1], got bool True"),
    ],
)
def test_bad_configs_raise(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        Wanda(sparsity=value)


def test_config_is_a_frozen_dataclass_with_a_positional_level() -> None:
    method = Wanda(sparsity=1)
    assert method.sparsity == 1.0 and isinstance(method.sparsity, float)
    assert method == Wanda(sparsity=1.0) and hash(method) == hash(Wanda(sparsity=1.0))
    with pytest.raises(AttributeError):
        method.sparsity = 0.5
    assert Wanda(0.5) == Wanda(sparsity=0.5)  # the level may be positional
    with pytest.raises(TypeError, match=r"Wanda: too many positional arguments"):
        Wanda(0.5, 0.5)
    with pytest.raises(TypeError, match=r"Wanda: got an unexpected keyword argument 'count'"):
        Wanda(count=3)
    assert Wanda in registered_methods()
    assert Wanda.needs_data and Wanda.vmappable and Wanda.level_field == "sparsity"


def test_sparsity_ends_and_empty_weights() -> None:
    weight, norms = torch.randn(3, 5), torch.ones(5)
    assert Wanda(sparsity=0.0)(weight, input_norms=norms).all()
    assert not Wanda(sparsity=1.0)(weight, input_norms=norms).any()
    assert Wanda(sparsity=0.5)(torch.ones(0, 5), input_norms=norms).shape == (0, 5)
    assert Wanda(sparsity=0.5)(torch.ones(3, 0), input_norms=torch.ones(0)).shape == (3, 0)


def test_end_to_end_mlp() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {name: p.detach() for name, p in model.named_parameters()}
    batches = [torch.randn(3, 7, 12) for _ in range(4)]
    norms = collect_input_norms(model, params, batches)
    rules = {"*.weight": Wanda(sparsity=0.5)}
    masks = fs.compute_masks(params, rules, input_norms=norms)
    check_masks(params, rules, masks, input_norms=norms)
    assert masks["0.bias"] is None and masks["2.bias"] is None
    assert ((~masks["0.weight"]).sum(-1) == 6).all() and ((~masks["2.weight"]).sum(-1) == 8).all()

    # the Wanda mask from the hand-computed statistics
    tokens = torch.cat([b.reshape(-1, 12) for b in batches]).double()
    hidden = torch.relu(tokens @ params["0.weight"].double().T + params["0.bias"].double())
    assert torch.equal(
        masks["0.weight"], paper_mask(params["0.weight"], tokens.pow(2).sum(0).sqrt(), 0.5)
    )
    assert torch.equal(
        masks["2.weight"], paper_mask(params["2.weight"], hidden.pow(2).sum(0).sqrt(), 0.5)
    )

    # a masked forward equals the forward with pruned weights zeroed by hand
    x = torch.randn(5, 12)
    out = fs.functional_call(model, params, masks, (x,))
    w0 = params["0.weight"] * masks["0.weight"]
    w2 = params["2.weight"] * masks["2.weight"]
    expected = torch.relu(x @ w0.T + params["0.bias"]) @ w2.T + params["2.bias"]
    torch.testing.assert_close(out, expected)
    # inputs whose features differ in scale: Wanda's mask keeps the layer's outputs on the
    # calibration data closer to the dense ones than pruning by magnitude per row does
    scaled = [b * torch.logspace(-2, 2, 12) for b in batches]
    scaled_norms = collect_input_norms(model, params, scaled)["0.weight"]
    tokens = torch.cat([b.reshape(-1, 12) for b in scaled])
    w = params["0.weight"]

    def output_error(mask: Tensor) -> float:
        return float((tokens @ (w * ~mask).T).norm())

    wanda = Wanda(sparsity=0.5)(w, input_norms=scaled_norms)
    by_magnitude = Wanda(sparsity=0.5)(w, input_norms=torch.ones(12))
    assert output_error(wanda) < 0.5 * output_error(by_magnitude)

    assert model.state_dict().keys() == state_before.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key])
    for name, p in model.named_parameters():
        assert p is dict(model.named_parameters())[name] and torch.equal(p, params[name])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- weights of more dims: conv ------------------------------------------------------------


def conv_restated(weight: Tensor, norms: Tensor, sparsity: float) -> Tensor:
    """Wanda on a conv weight ``(out, *rest)`` restated from the formula, as the reference
    code unfolds a convolution: ``|W[o, f]| * norms[f]`` over the unfolded input features
    ``f`` (``rest`` flattened), the ``int(prod(rest) * sparsity)`` lowest per output ``o``
    pruned, ties to the lower ``f`` (a stable sort)."""
    out = weight.shape[0]
    metric = weight.double().abs().reshape(out, -1) * norms.double().reshape(1, -1)
    k = int(metric.shape[1] * sparsity)
    indices = torch.sort(metric, dim=-1, stable=True)[1][:, :k]
    pruned = torch.zeros(metric.shape, dtype=torch.bool).scatter_(1, indices, True)
    return (~pruned).reshape(weight.shape)


def test_conv2d_weight_equals_the_formula_restated() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel_size=3)
    weight = conv.weight.detach()
    norms = torch.rand(3, 3, 3, dtype=torch.float64)
    for sparsity in (0.0, 0.25, 0.5, 0.9, 1.0):
        mask = Wanda(sparsity=sparsity)(weight, input_norms=norms)
        assert mask.shape == weight.shape and mask.dtype == torch.bool
        assert torch.equal(mask, conv_restated(weight, norms, sparsity))
        # every output channel prunes int(27 * sparsity), counted over (in, kh, kw)
        assert ((~mask).flatten(1).sum(1) == int(27 * sparsity)).all()
    # the same as the 2-D method on the unfolded weight (in_features = 3 * 3 * 3)
    flat = Wanda(sparsity=0.5)(weight.reshape(8, 27), input_norms=norms.reshape(27))
    assert torch.equal(Wanda(sparsity=0.5)(weight, input_norms=norms), flat.reshape(8, 3, 3, 3))


def test_grouped_conv_and_conv1d_and_conv3d_weights() -> None:
    torch.manual_seed(1)
    grouped = nn.Conv2d(4, 6, kernel_size=(1, 3), groups=2).weight.detach()  # (6, 2, 1, 3)
    norms = torch.rand(2, 1, 3)
    assert torch.equal(
        Wanda(sparsity=0.5)(grouped, input_norms=norms), conv_restated(grouped, norms, 0.5)
    )
    for weight in (nn.Conv1d(5, 4, 3).weight.detach(), nn.Conv3d(2, 3, 2).weight.detach()):
        norms = torch.rand(weight.shape[1:], dtype=torch.float64)
        assert torch.equal(
            Wanda(sparsity=0.4)(weight, input_norms=norms), conv_restated(weight, norms, 0.4)
        )


@st.composite
def conv_cases(draw: st.DrawFn) -> tuple[Wanda, Tensor, Tensor, Tensor | None]:
    method = draw(per_row_configs())
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=3, max_size=4)))
    weight = draw(fst.tensors(shape, ties=draw(st.booleans())))
    norms = draw(Wanda.example_data(st, weight))["input_norms"]
    prev = None
    if draw(st.booleans()):
        seed = draw(st.integers(0, 2**31 - 1))
        prev = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.3
    return method, weight, norms, prev


@given(conv_cases())
def test_conv_weights_equal_the_unfolded_linear_weight(
    case: tuple[Wanda, Tensor, Tensor, Tensor | None],
) -> None:
    method, weight, norms, prev = case
    data: dict[str, Tensor] = {"input_norms": norms}
    flat: dict[str, Tensor] = {"input_norms": norms.reshape(-1)}
    if prev is not None:
        data["prev_mask"], flat["prev_mask"] = prev, prev.reshape(weight.shape[0], -1)
    mask = method(weight, **data)
    expected = method(weight.reshape(weight.shape[0], -1), **flat).reshape(weight.shape)
    assert torch.equal(mask, expected)
    if prev is None:
        assert torch.equal(mask, conv_restated(weight, norms, method.sparsity))
    check_leaf_mask(method, weight, mask, data=data)  # counts per row, vmap, determinism


def test_conv_through_compute_masks_and_check_masks() -> None:
    torch.manual_seed(2)
    params = {
        "conv.weight": nn.Conv2d(2, 4, 3).weight.detach(),
        "fc.weight": torch.randn(3, 5),
    }
    norms = {"conv.weight": torch.rand(2, 3, 3), "fc.weight": torch.rand(5)}
    rules = {"*.weight": Wanda(sparsity=0.5)}
    masks = fs.compute_masks(params, rules, input_norms=norms)
    check_masks(params, rules, masks, input_norms=norms)
    assert ((~masks["conv.weight"]).flatten(1).sum(1) == 9).all()
    assert Wanda(sparsity=0.5).expected_zeros(params["conv.weight"]) == 4 * 9


@pytest.mark.parametrize(
    ("norms", "message"),
    [
        (
            torch.ones(2),
            "got input_norms of shape (2,) for a weight of shape (4, 2, 3, 3) at 'w'; Wanda needs "
            "input_norms of shape (2, 3, 3), one per unfolded input feature (the weight's shape "
            "without its first dim)",
        ),
        (torch.ones(18), "got input_norms of shape (18,) for a weight of shape (4, 2, 3, 3)"),
        (torch.ones(4, 2, 3, 3), "got input_norms of shape (4, 2, 3, 3) for a weight of shape"),
        (
            torch.ones(2, 3, 3).index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(-1.0)),
            "got input_norms[1, 2, 0] = -1.0 at 'w'; norms must be finite and non-negative",
        ),
    ],
)
def test_conv_norms_of_another_shape_raise(norms: Tensor, message: str) -> None:
    weight = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match=re.escape(message)):
        fs.compute_masks({"w": weight}, {"w": Wanda(sparsity=0.5)}, input_norms={"w": norms})
    with pytest.raises(ValueError):
        Wanda(sparsity=0.5)(weight, input_norms=norms)


# -- chunked work: the same masks as in one piece -------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few entries, so that small tensors are cut into many chunks."""
    monkeypatch.setattr(wanda_module, "_CHUNK_MIN", 5)
    monkeypatch.setattr(wanda_module, "_CHUNKS", 7)


def one_piece(method: Wanda, weight: Tensor, **data: Tensor) -> Tensor:
    """The mask computed in one piece (no chunks), as before chunking existed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wanda_module, "_CHUNK_MIN", 1 << 62)
        return method(weight, **data)


@st.composite
def chunk_cases(draw: st.DrawFn) -> tuple[Wanda, Tensor, dict[str, Tensor]]:
    method = draw(per_row_configs())
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=2, max_size=4)))
    weight = draw(fst.tensors(shape, ties=draw(st.booleans()), special=draw(st.booleans())))
    data = dict(draw(Wanda.example_data(st, weight)))
    if draw(st.booleans()):
        data["input_norms"] = data["input_norms"].float()
    if draw(st.booleans()):
        seed = draw(st.integers(0, 2**31 - 1))
        data["prev_mask"] = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.4
    return method, weight, data


@pytest.mark.usefixtures("small_chunks")
@given(chunk_cases())
def test_chunks_give_the_mask_of_one_piece(case: tuple[Wanda, Tensor, dict[str, Tensor]]) -> None:
    method, weight, data = case
    mask = method(weight, **data)
    assert torch.equal(mask, one_piece(method, weight, **data))
    if "prev_mask" not in data and weight.dim() == 2:
        assert torch.equal(mask, paper_mask(weight, data["input_norms"], method.sparsity))


@pytest.mark.usefixtures("small_chunks")
def test_chunks_under_vmap_and_batch_dims() -> None:
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(3, 12, 10, generator=generator).round()  # ties
    norms = torch.rand(3, 10, generator=generator, dtype=torch.float64)
    method = Wanda(sparsity=0.6)
    stacked = fs.compute_masks(
        {"w": weights}, {"w": method}, batch_dims=1, input_norms={"w": norms}
    )["w"]
    for i in range(3):  # each member chunked eagerly, the ensemble vmapped in one piece
        assert torch.equal(stacked[i], method(weights[i], input_norms=norms[i]))
        assert torch.equal(stacked[i], one_piece(method, weights[i], input_norms=norms[i]))


def test_a_large_weight_is_cut_into_chunks_of_rows() -> None:
    """The default sizes: a weight of more than _CHUNK_MIN (2**20) entries is cut (at most
    _CHUNKS chunks), the mask is the paper's, and a smaller one stays in one piece."""
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(3072, 1024, generator=generator)
    norms = torch.rand(1024, generator=generator, dtype=torch.float64)
    assert wanda_module._rows_per_chunk(weight) == 1024  # 3 chunks of 2**20 entries
    assert wanda_module._rows_per_chunk(torch.empty(1024, 1024)) == 1024  # one piece
    assert wanda_module._rows_per_chunk(torch.empty(2, 2**21)) == 1  # at least a row
    huge = torch.empty(2**16, 2**12, device="meta")  # 2**28 entries: shapes only
    assert -(-(2**16) // wanda_module._rows_per_chunk(huge)) == wanda_module._CHUNKS
    mask = Wanda(sparsity=0.5)(weight, input_norms=norms)
    assert torch.equal(mask, paper_mask(weight, norms, 0.5))


# -- hostile inputs: only TypeError / ValueError -------------------------------------------


@pytest.mark.parametrize(
    ("weight", "norms"),
    [
        (torch.ones(0, 5), torch.ones(5)),
        (torch.ones(3, 0), torch.ones(0)),
        (torch.ones(0, 0), torch.ones(0)),
        (torch.ones(4, 0, 3, 3), torch.ones(0, 3, 3)),
        (torch.ones(0, 2, 3, 3), torch.ones(2, 3, 3)),
    ],
)
def test_empty_weights_give_empty_masks(weight: Tensor, norms: Tensor) -> None:
    for sparsity in (0.0, 0.5, 1.0):
        mask = Wanda(sparsity=sparsity)(weight, input_norms=norms)
        assert mask.shape == weight.shape and mask.dtype == torch.bool
    masks = fs.compute_masks({"w": weight}, {"w": Wanda(0.5)}, input_norms={"w": norms})
    assert masks["w"].shape == weight.shape


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (10**400, ValueError),
        (-(10**400), ValueError),
        (float("inf"), ValueError),
        (2, ValueError),
        (torch.tensor(0.5), TypeError),
        ([0.5], TypeError),
    ],
)
def test_hostile_levels_raise_type_or_value_errors(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="Wanda: sparsity must be a fraction in") as info:
        Wanda(sparsity=value)
    assert len(str(info.value)) < 200


def test_zero_dim_leaves_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="Wanda needs weights of 2 or more dims"):
        Wanda(0.5)(torch.tensor(1.0), input_norms=torch.ones(()))
    with pytest.raises(ValueError, match=r"at 'w'; Wanda needs weights of 2 or more dims"):
        fs.compute_masks(
            {"w": torch.ones(3)}, {"w": Wanda(0.5)}, batch_dims=1, input_norms={"w": torch.ones(3)}
        )


# -- N:M in one step: Wanda(n=, m=) ---------------------------------------------------------


def reference_nm_mask(weight: Tensor, norms: Tensor, n: int, m: int) -> Tensor:
    """The reference code's structured option (prune_wanda with prune_n:prune_m), as a
    keep-mask: per output row, every group of ``m`` consecutive columns prunes the
    ``prune_n = m - n`` lowest ``|W| * norms`` (a stable sort: ties prune the lower column)."""
    rows = weight.shape[0]
    metric = (weight.double().abs() * norms.double()).reshape(rows, norms.numel())
    pruned = torch.zeros(metric.shape, dtype=torch.bool)
    for start in range(0, metric.shape[1], m):  # the reference loops over the groups
        group = metric[:, start : start + m]
        order = torch.sort(group, dim=1, stable=True)[1][:, : m - n]
        pruned[:, start : start + m].scatter_(1, order, True)
    return (~pruned).reshape(weight.shape)


@st.composite
def nm_cases(
    draw: st.DrawFn, *, ties: bool | None = None, special: bool = False
) -> tuple[Wanda, Tensor, Tensor]:
    n, m = draw(
        st.one_of(
            st.sampled_from([(2, 4), (1, 4), (3, 4), (1, 2), (4, 8), (0, 3), (3, 3), (1, 1)]),
            st.integers(1, 6).flatmap(lambda m: st.tuples(st.integers(0, m), st.just(m))),
        )
    )
    rows = draw(st.integers(0, 5))
    rest = [m * draw(st.integers(0, 3))]
    if draw(st.booleans()):  # a conv weight (out, in, kh, kw): rows flattened over the rest
        rest = [draw(st.integers(1, 3)), m * draw(st.integers(0, 2)), draw(st.integers(1, 2))]
    weight = draw(fst.tensors((rows, *rest), ties=ties, special=special))
    norms = draw(Wanda.example_data(st, weight))["input_norms"]
    return Wanda(n=n, m=m), weight, norms


def test_nm_pinned_mask() -> None:
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0, 0.5, 0.5, 0.5, 0.5]])
    norms = torch.tensor([4.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    # scores [4, 2, 3, 2 | 0.5, 0.5, 0.5, 0.5]: the first group keeps 4 and 3 (of 2 and 2,
    # the lower column goes first); the tied second group prunes its lower columns
    assert Wanda(n=2, m=4)(w, input_norms=norms).tolist() == [
        [True, False, True, False, False, False, True, True]
    ]
    # per row instead, the second group would keep nothing: 4, 3 and both 2s rank higher
    assert Wanda(0.5)(w, input_norms=norms).tolist() == [
        [True, True, True, True, False, False, False, False]
    ]
    assert Wanda(n=3, m=4)(w, input_norms=norms).tolist() == [  # the reference's 1:4
        [True, False, True, True, False, True, True, True]
    ]


@given(nm_cases(special=True))
def test_nm_equals_the_reference_structured_option(case: tuple[Wanda, Tensor, Tensor]) -> None:
    method, weight, norms = case
    assert method.n is not None and method.m is not None
    mask = method(weight, input_norms=norms)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert torch.equal(mask, reference_nm_mask(weight, norms, method.n, method.m))


@given(nm_cases(ties=True))
def test_nm_equals_fs_nm_on_wanda_scores(case: tuple[Wanda, Tensor, Tensor]) -> None:
    method, weight, norms = case
    assert method.n is not None and method.m is not None
    flat = weight.reshape(weight.shape[0], norms.numel())
    scores = fs.wanda_scores({"w": flat}, {"w": norms.reshape(-1)})["w"]
    expected = fs.NM(n=method.n, m=method.m)(flat, scores=scores).reshape(weight.shape)
    assert torch.equal(method(weight, input_norms=norms), expected)


@given(nm_cases(ties=True, special=True))
def test_nm_every_invariant_holds(case: tuple[Wanda, Tensor, Tensor]) -> None:
    method, weight, norms = case
    mask = method(weight, input_norms=norms)
    check_leaf_mask(method, weight, mask, data={"input_norms": norms})
    assert method.n is not None and method.m is not None
    groups = (weight.shape[0], norms.numel() // method.m, method.m)
    kept = mask.reshape(groups).sum(-1) if weight.numel() else None
    assert kept is None or bool((kept == method.n).all())
    zeros = weight.numel() // method.m * (method.m - method.n)
    assert method.expected_zeros(weight, input_norms=norms) == zeros == int((~mask).sum())


@given(nm_cases(ties=True), st.data())
def test_nm_prev_mask_stays_pruned_and_goes_first(
    case: tuple[Wanda, Tensor, Tensor], data: st.DataObject
) -> None:
    method, weight, norms = case
    assert method.n is not None and method.m is not None
    seed = data.draw(st.integers(0, 2**31 - 1))
    prev = torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask = method(weight, input_norms=norms, prev_mask=prev)
    assert not bool((mask & ~prev).any())
    if weight.numel():
        shape = (weight.shape[0], norms.numel() // method.m, method.m)
        kept_before = prev.reshape(shape).sum(-1)
        assert torch.equal(mask.reshape(shape).sum(-1), kept_before.clamp(max=method.n))
    check_leaf_mask(method, weight, mask, data={"input_norms": norms, "prev_mask": prev})
    masks = fs.compute_masks(
        {"w": weight}, {"w": method}, prev_masks={"w": prev}, input_norms={"w": norms}
    )
    assert torch.equal(masks["w"], mask)


def test_nm_two_steps_equal_one_step_and_scaled_keeps_the_pattern() -> None:
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(6, 16, generator=generator)
    norms = torch.rand(16, generator=generator, dtype=torch.float64)
    method = Wanda(n=2, m=8)
    assert method.scaled(0.5) == Wanda(n=5, m=8)  # round(0.5 * 6) = 3 zeros per group
    assert method.scaled(0.0) == Wanda(n=8, m=8) and method.scaled(1.0) == method
    assert Wanda(n=1, m=8).scaled(0.5) == Wanda(n=4, m=8)  # round(3.5) = 4 zeros
    first = method.scaled(0.5)(weight, input_norms=norms)
    second = method(weight, input_norms=norms, prev_mask=first)
    assert torch.equal(second, method(weight, input_norms=norms))
    assert not bool((second & ~first).any())
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"Wanda.scaled: fraction must be in \[0, 1\]"):
            method.scaled(bad)
    assert Wanda(0.6).scaled(0.5) == Wanda(0.3) and Wanda().scaled(1.0) == Wanda()


def test_nm_level_and_config_equality() -> None:
    assert Wanda() == Wanda(0.5) == Wanda(sparsity=0.5) == Wanda(sparsity=None)
    assert Wanda().sparsity == 0.5 and Wanda().n is None and Wanda().m is None
    assert Wanda(n=2, m=4).sparsity == 0.5
    assert Wanda(n=1, m=4).sparsity == 0.75 and Wanda(n=4, m=4).sparsity == 0.0
    assert Wanda(0.5, n=2, m=4) == Wanda(n=2, m=4) == Wanda(sparsity=0.5, n=2, m=4)
    assert Wanda(2 / 3, n=1, m=3) == Wanda(1 - 1 / 3, n=1, m=3) == Wanda(n=1, m=3)
    assert Wanda(n=1, m=3).sparsity == 2 / 3
    assert Wanda(n=2, m=4) != Wanda(0.5)  # the same level, another pattern
    assert hash(Wanda(n=2, m=4)) == hash(Wanda(0.5, n=2, m=4))
    assert dataclasses.replace(Wanda(n=2, m=4), sparsity=None, n=3) == Wanda(n=3, m=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"sparsity": 0.3, "n": 2, "m": 4},
            ValueError,
            "Wanda: sparsity=0.3 does not match n:m = 2:4, which prunes (m - n) / m = 0.5 of "
            "every row; leave sparsity out beside n and m",
        ),
        (
            {"n": 2},
            TypeError,
            "Wanda: n=2 was given without m; an N:M pattern needs both",
        ),
        ({"m": 4}, TypeError, "Wanda: m=4 was given without n; an N:M pattern needs both"),
        ({"n": 5, "m": 4}, ValueError, "Wanda: n=5 must be in [0, m] = [0, 4]"),
        ({"n": -1, "m": 4}, ValueError, "Wanda: n=-1 must be in [0, m] = [0, 4]"),
        ({"n": 0, "m": 0}, ValueError, "Wanda: m=0 must be at least 1"),
        ({"n": 2.0, "m": 4}, TypeError, "Wanda: n must be an int, got float 2.0"),
        ({"n": 2, "m": True}, TypeError, "Wanda: m must be an int, got bool True"),
        (
            {"sparsity": 1.5, "n": 2, "m": 4},
            ValueError,
            "Wanda: sparsity must be a fraction in [0, 1], got 1.5",
        ),
    ],
)
def test_nm_bad_configs_raise(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        Wanda(**kwargs)


def test_nm_rows_that_m_does_not_divide_are_refused_naming_the_path() -> None:
    params = {"fc.weight": torch.randn(4, 6), "conv.weight": torch.randn(4, 2, 3, 3)}
    norms = {"fc.weight": torch.ones(6), "conv.weight": torch.ones(2, 3, 3)}
    with pytest.raises(ValueError) as err:
        fs.compute_masks(params, {"*.weight": Wanda(n=2, m=4)}, input_norms=norms)
    assert _message(err) == (
        "compute_masks: rule '*.weight' (Wanda) got a 4-D torch.float32 tensor of shape "
        "(4, 2, 3, 3) at 'conv.weight'; Wanda n:m = 2:4 needs rows (the weight's dims but the "
        "first, flattened: 18 entries) whose length is a multiple of m=4"
    )
    with pytest.raises(ValueError, match=r"flattened: 6 entries\) whose length is a multiple"):
        Wanda(n=1, m=4)(params["fc.weight"], input_norms=norms["fc.weight"])
    masks = fs.compute_masks(params, {"*.weight": Wanda(n=1, m=3)}, input_norms=norms)
    zeros = {path: int((~mask).sum()) for path, mask in masks.items()}
    assert zeros == {"fc.weight": 16, "conv.weight": 48}  # 2 of every 3 pruned


def test_nm_structure_problem_catches_a_broken_group() -> None:
    weight = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    norms = torch.rand(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    method = Wanda(n=2, m=4)
    mask = method(weight, input_norms=norms)
    assert method.structure_problem(weight, mask) is None
    corrupt = mask.clone()  # move a zero from group 0 of row 1 to its group 1: same count
    corrupt[1, int((~mask[1, :4]).nonzero()[0])] = True
    corrupt[1, 4 + int(mask[1, 4:].nonzero()[0])] = False
    assert method.structure_problem(weight, corrupt) == (
        "row 1, group 0 (entries 0 to 3 of the flattened row) keeps 3 entries; expected 2 (2:4)"
    )
    revived = mask.clone()
    revived[0] = True
    prev = mask.clone()
    assert method.structure_problem(weight, revived, prev_mask=prev) is not None


def test_nm_vmap_batch_dims_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(8)
    weights = torch.randn(3, 10, 12, generator=generator).round()  # ties
    norms = torch.rand(3, 12, generator=generator, dtype=torch.float64)
    method = Wanda(n=1, m=4)
    batched = torch.func.vmap(lambda w, x: method(w, input_norms=x))(weights, norms)
    stacked = fs.compute_masks(
        {"w": weights}, {"w": method}, batch_dims=1, input_norms={"w": norms}
    )["w"]
    prev = torch.rand(3, 10, 12, generator=generator) > 0.4
    batched_prev = torch.func.vmap(lambda w, x, p: method(w, input_norms=x, prev_mask=p))(
        weights, norms, prev
    )
    one = [method(weights[i], input_norms=norms[i]) for i in range(3)]
    one_prev = [method(weights[i], input_norms=norms[i], prev_mask=prev[i]) for i in range(3)]
    monkeypatch.setattr(wanda_module, "_CHUNK_MIN", 5)  # many chunks of whole rows
    monkeypatch.setattr(wanda_module, "_CHUNKS", 7)
    for i in range(3):
        assert torch.equal(batched[i], one[i]) and torch.equal(stacked[i], one[i])
        assert torch.equal(batched_prev[i], one_prev[i])
        assert torch.equal(method(weights[i], input_norms=norms[i]), one[i])
        chunked = method(weights[i], input_norms=norms[i], prev_mask=prev[i])
        assert torch.equal(chunked, one_prev[i])


def test_nm_through_compute_masks_and_check_masks() -> None:
    torch.manual_seed(9)
    params = {
        "conv.weight": nn.Conv2d(2, 4, 2).weight.detach(),  # rows of 8
        "fc.weight": torch.randn(3, 8),
        "fc.bias": torch.randn(3),
    }
    norms = {"conv.weight": torch.rand(2, 2, 2), "fc.weight": torch.rand(8), "fc.bias": None}
    rules = {"*.weight": Wanda(n=2, m=4)}
    masks = fs.compute_masks(params, rules, input_norms=norms)
    check_masks(params, rules, masks, input_norms=norms)
    assert masks["fc.bias"] is None
    assert int((~masks["conv.weight"]).sum()) == 16 and int((~masks["fc.weight"]).sum()) == 12
