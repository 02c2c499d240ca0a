"""Conformance of funcsparse.adapter with torch.ao.pruning, case by case.

Every case of PyTorch's sparsity tests is rewritten here as a pytest function and runs
twice, once per implementation, through the ``pruning`` fixture (the way PyTorch's
test/test_stateless.py runs its cases on two implementations):

* test/ao/sparsity/test_sparsifier.py: 20 cases (TestBaseSparsifier 9,
  TestWeightNormSparsifier 6, TestNearlyDiagonalSparsifier 5).
* test/ao/sparsity/test_scheduler.py: 6 cases (TestScheduler 4, TestCubicScheduler 2).

Each test is named ``test_<class>_<upstream method>``. Where the upstream check is vacuous
(it cannot fail) a stricter check is added next to it. The tests after the ported ones
pin the known differences between the two implementations; each assertion there states
torch.ao's behaviour on its own line.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import warnings
from collections import defaultdict
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrize import is_parametrized
from torch.testing._internal.common_pruning import MockSparseLinear, SimpleLinear

TORCH_AO = "torch.ao.pruning"
FUNCSPARSE = "funcsparse.adapter"
ALL_LAYERS = {"seq.0", "seq.1", "seq.2", "linear1", "linear2"}
# Upstream randomizes the weights 1000 times to look for a collapsing mask; 200 rounds
# exercise the same path and keep this file fast on CI.
COLLAPSE_ROUNDS = 200


@pytest.fixture(params=[TORCH_AO, FUNCSPARSE])
def pruning(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation under test: torch.ao.pruning or funcsparse.adapter."""
    return importlib.import_module(request.param)


def is_funcsparse(pruning: ModuleType) -> bool:
    return pruning.__name__ == FUNCSPARSE


# -- helpers built per implementation ---------------------------------------------------


def row_zero_sparsifier(pruning: ModuleType) -> type:
    """A minimal sparsifier (upstream's ImplementedSparsifier) on ``pruning.BaseSparsifier``.

    Each step zeroes the first row of every mask and counts the calls in the state of
    ``linear1.weight``.
    """

    class RowZeroSparsifier(pruning.BaseSparsifier):
        def __init__(self, **defaults: Any) -> None:
            super().__init__(defaults=defaults)

        def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
            module.parametrizations.weight[0].mask[0] = 0
            counter = self.state["linear1.weight"]
            counter["step_count"] = counter.get("step_count", 0) + 1

    return RowZeroSparsifier


def halving_scheduler(pruning: ModuleType) -> type:
    """A minimal scheduler (upstream's ImplementedScheduler) on ``pruning.BaseScheduler``.

    Epoch 0 keeps the configured levels; every later epoch halves the current ones.
    """

    class HalvingScheduler(pruning.BaseScheduler):
        def get_sl(self) -> list[float]:
            if self.last_epoch > 0:
                return [group["sparsity_level"] * 0.5 for group in self.sparsifier.groups]
            return list(self.base_sl)

    return HalvingScheduler


def assert_same(left: Any, right: Any, where: str = "") -> None:
    """Recursive equality for dicts, lists and tensors (dtype and values must match).

    ``==`` on dicts holding multi-element tensors raises, so states and module
    ``__dict__``s are compared with this instead.
    """
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        assert isinstance(left, torch.Tensor), where
        assert isinstance(right, torch.Tensor), where
        assert left.dtype == right.dtype, f"{where}: {left.dtype} != {right.dtype}"
        assert torch.equal(left, right), f"{where}: {left} != {right}"
    elif isinstance(left, dict):
        assert isinstance(right, dict), where
        assert set(left) == set(right), f"{where}: keys {set(left)} != {set(right)}"
        for key in left:
            assert_same(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        assert type(left) is type(right), where
        assert len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


def states_equal(left: dict[str, Any], right: dict[str, Any]) -> bool:
    try:
        assert_same(left, right)
    except AssertionError:
        return False
    return True


def mask_of(module: nn.Module) -> torch.Tensor:
    return module.parametrizations["weight"][0].mask


def sparsity_of(module: nn.Module) -> float:
    return 1.0 - mask_of(module).float().mean().item()


def scheduler_module_file(pruning: ModuleType) -> str:
    """The file that defines ``pruning.BaseScheduler`` (where its warnings are raised)."""
    return sys.modules[pruning.BaseScheduler.__module__].__file__


# -- test_sparsifier.py: TestBaseSparsifier ---------------------------------------------


def test_base_sparsifier_constructor(pruning: ModuleType) -> None:
    with pytest.raises(TypeError):
        pruning.BaseSparsifier()  # abstract: update_mask is not implemented
    RowZero = row_zero_sparsifier(pruning)

    model = SimpleLinear()
    sparsifier = RowZero(test=3)
    sparsifier.prepare(model, config=None)
    assert len(sparsifier.groups) == 5
    sparsifier.step()

    sparsifier = RowZero(test=3)
    sparsifier.prepare(model, [{"tensor_fqn": "linear1.weight"}])
    assert len(sparsifier.groups) == 1
    assert sparsifier.groups[0]["tensor_fqn"] == "linear1.weight"
    assert "test" in sparsifier.groups[0]
    assert sparsifier.groups[0]["test"] == 3


def test_base_sparsifier_prepare_config(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = row_zero_sparsifier(pruning)(test=3)
    for layer in (model.seq[0], model.linear1, model.linear2):
        assert not hasattr(layer, "parametrizations")

    # linear1 is left out of the config on purpose: it must stay untouched.
    sparsifier.prepare(
        model, config=[{"tensor_fqn": "seq.0.weight", "test": 42}, {"tensor_fqn": "linear2.weight"}]
    )
    assert len(sparsifier.groups) == 2
    # A value given in the config wins over the default.
    assert sparsifier.groups[0]["tensor_fqn"] == "seq.0.weight"
    assert sparsifier.groups[0]["test"] == 42
    # The fqn and the module refer to the same layer.
    assert sparsifier.groups[1]["tensor_fqn"] == "linear2.weight"
    assert sparsifier.groups[1]["module"] is model.linear2
    assert hasattr(model.seq[0], "parametrizations")
    assert not hasattr(model.linear1, "parametrizations")
    assert hasattr(model.linear2, "parametrizations")


def test_base_sparsifier_step(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = row_zero_sparsifier(pruning)(test=3)
    sparsifier.enable_mask_update = True
    sparsifier.prepare(model, [{"tensor_fqn": "linear1.weight"}])
    sparsifier.step()
    assert torch.all(model.linear1.parametrizations.weight[0].mask[0] == 0)


def test_base_sparsifier_state_dict(pruning: ModuleType) -> None:
    RowZero = row_zero_sparsifier(pruning)
    model0 = SimpleLinear()
    sparsifier0 = RowZero(test=3)
    sparsifier0.prepare(model0, [{"tensor_fqn": "linear1.weight"}])
    mask = model0.linear1.parametrizations["weight"][0].mask
    mask.data = torch.arange(mask.shape[0] * mask.shape[1]).reshape(mask.shape)  # int64 mask
    for _ in range(3):
        sparsifier0.step()
    state_dict = sparsifier0.state_dict()

    assert "state" in state_dict
    assert "step_count" in state_dict["state"]["linear1.weight"]
    assert state_dict["state"]["linear1.weight"]["step_count"] == 3
    assert "groups" in state_dict
    assert "test" in state_dict["groups"][0]
    assert "tensor_fqn" in state_dict["groups"][0]
    assert state_dict["groups"][0]["tensor_fqn"] == "linear1.weight"

    # A fresh sparsifier on a fresh model starts out different...
    model1 = SimpleLinear()
    sparsifier1 = RowZero()
    sparsifier1.prepare(model1, None)
    assert not states_equal(sparsifier0.state, sparsifier1.state)
    assert sparsifier0.state != sparsifier1.state  # upstream's own comparison, as written
    mask0 = next(
        g["module"].parametrizations.weight[0].mask
        for g in sparsifier0.groups
        if g["tensor_fqn"] == "linear1.weight"
    )
    mask1 = next(
        g["module"].parametrizations.weight[0].mask
        for g in sparsifier1.groups
        if g["tensor_fqn"] == "linear1.weight"
    )
    assert not torch.equal(mask0.double(), mask1.double())

    # ...and loading the state_dict makes it equivalent.
    sparsifier1.load_state_dict(state_dict)
    assert states_equal(sparsifier0.state, sparsifier1.state)
    # Upstream's own comparison, as written: plain values on both sides, so == answers
    # (it raised "Boolean value of Tensor ... is ambiguous" while state held masks).
    assert sparsifier0.state == sparsifier1.state
    assert len(sparsifier0.groups) == len(sparsifier1.groups)
    for group0, group1 in zip(sparsifier0.groups, sparsifier1.groups, strict=True):
        for key in group0:
            assert key in group1
            if key == "module":
                # The modules belong to different models: compare their parametrizations.
                fake0 = group0[key].parametrizations.weight[0]
                fake1 = group1[key].parametrizations.weight[0]
                assert hasattr(fake0, "mask")
                assert hasattr(fake1, "mask")
                assert_same(fake0.__dict__, fake1.__dict__, "FakeSparsity.__dict__")
            else:
                assert group0[key] == group1[key], key


def test_base_sparsifier_convert(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = row_zero_sparsifier(pruning)(test=3)
    sparsifier.prepare(model, [{"tensor_fqn": "linear1.weight"}])
    new_model = sparsifier.convert(model, mapping={nn.Linear: MockSparseLinear}, inplace=False)
    assert isinstance(new_model.linear1, MockSparseLinear)
    assert isinstance(new_model.seq[0], nn.Linear)
    assert isinstance(new_model.linear2, nn.Linear)
    # Stricter than upstream (MockSparseLinear is an nn.Linear): only linear1 is swapped.
    assert not isinstance(new_model.seq[0], MockSparseLinear)
    assert not isinstance(new_model.linear2, MockSparseLinear)
    assert not isinstance(model.linear1, MockSparseLinear)  # inplace=False


def test_base_sparsifier_mask_squash(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = row_zero_sparsifier(pruning)(test=3)
    sparsifier.prepare(model, [{"tensor_fqn": "linear1.weight"}])
    assert hasattr(model.linear1.parametrizations.weight[0], "mask")
    assert is_parametrized(model.linear1, "weight")
    assert not is_parametrized(model.seq[0], "weight")

    sparsifier.squash_mask()
    assert not is_parametrized(model.seq[0], "weight")
    assert not is_parametrized(model.linear1, "weight")


def _squashed_pair(pruning: ModuleType, **squash_kwargs: Any) -> tuple[dict, dict]:
    """Prepare linear1 and seq.0 with foo=3, bar=2, baz=1, squash, return sparse_params."""
    model = SimpleLinear()
    sparsifier = row_zero_sparsifier(pruning)(foo=3, bar=2, baz=1)
    sparsifier.prepare(model, [{"tensor_fqn": "linear1.weight"}, {"tensor_fqn": "seq.0.weight"}])
    sparsifier.squash_mask(**squash_kwargs)
    assert not is_parametrized(model.seq[0], "weight")
    assert not is_parametrized(model.linear1, "weight")
    assert hasattr(model.seq[0], "sparse_params")
    assert hasattr(model.linear1, "sparse_params")
    return model.seq[0].sparse_params, model.linear1.sparse_params


def test_base_sparsifier_mask_squash_with_params1(pruning: ModuleType) -> None:
    seq0, linear1 = _squashed_pair(
        pruning, params_to_keep_per_layer={"linear1": ("foo", "bar"), "seq.0": ("baz",)}
    )
    assert seq0.get("foo") is None
    assert seq0.get("bar") is None
    assert seq0.get("baz") == 1
    assert linear1.get("foo") == 3
    assert linear1.get("bar") == 2
    assert linear1.get("baz") is None


def test_base_sparsifier_mask_squash_with_params2(pruning: ModuleType) -> None:
    seq0, linear1 = _squashed_pair(pruning, params_to_keep=("foo", "bar"))
    assert seq0.get("foo") == 3
    assert seq0.get("bar") == 2
    assert seq0.get("baz") is None
    assert linear1.get("foo") == 3
    assert linear1.get("bar") == 2
    assert linear1.get("baz") is None


def test_base_sparsifier_mask_squash_with_params3(pruning: ModuleType) -> None:
    seq0, linear1 = _squashed_pair(
        pruning, params_to_keep=("foo", "bar"), params_to_keep_per_layer={"seq.0": ("baz",)}
    )
    assert seq0.get("foo") == 3
    assert seq0.get("bar") == 2
    assert seq0.get("baz") == 1
    assert linear1.get("foo") == 3
    assert linear1.get("bar") == 2
    assert linear1.get("baz") is None


# -- test_sparsifier.py: TestWeightNormSparsifier ---------------------------------------


def test_weight_norm_sparsifier_constructor(pruning: ModuleType) -> None:
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(SimpleLinear(), config=None)
    for group in sparsifier.groups:
        assert isinstance(group["module"], nn.Linear)
        assert group["module_fqn"] in ALL_LAYERS  # the order of groups is not specified
    # Stricter than upstream (an empty group list passes the loop): every layer is there.
    assert {group["module_fqn"] for group in sparsifier.groups} == ALL_LAYERS


def test_weight_norm_sparsifier_step(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = pruning.WeightNormSparsifier(sparsity_level=0.5)
    sparsifier.prepare(model, config=[{"tensor_fqn": "linear1.weight"}])
    for group in sparsifier.groups:
        assert sparsity_of(group["module"]) == 0
    sparsifier.enable_mask_update = True
    sparsifier.step()
    assert mask_of(model.linear1).mean().item() == pytest.approx(0.5, abs=0.005)
    for group in sparsifier.groups:
        assert sparsity_of(group["module"]) > 0

    # Randomized weights must not make the mask collapse.
    for _ in range(COLLAPSE_ROUNDS):
        model.linear1.weight.data = torch.randn(model.linear1.weight.shape)
        sparsifier.step()
    for group in sparsifier.groups:
        assert sparsity_of(group["module"]) > 0
        # Stricter than upstream (an all-zero mask passes the check above): the level holds.
        assert sparsity_of(group["module"]) == pytest.approx(0.5, abs=0.005)


def test_weight_norm_sparsifier_step_2_of_4(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = pruning.WeightNormSparsifier(
        sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2
    )
    sparsifier.prepare(model, config=[{"tensor_fqn": "linear1.weight"}])
    sparsifier.step()
    assert mask_of(model.linear1).float().mean().item() == pytest.approx(0.5, abs=0.005)
    # Every block of four holds exactly two zeros.
    mask = mask_of(sparsifier.groups[0]["module"])
    for row in mask:
        for start in range(0, len(row), 4):
            block, _ = row[start : start + 4].sort()
            assert (block[:2] == 0).all()
            assert (block[2:] != 0).all()


def test_weight_norm_sparsifier_prepare(pruning: ModuleType) -> None:
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(SimpleLinear(), config=None)
    for group in sparsifier.groups:
        module = group["module"]
        assert hasattr(module.parametrizations["weight"][0], "mask")
        assert is_parametrized(module, "weight")
        assert type(module.parametrizations.weight[0]) is pruning.FakeSparsity


def test_weight_norm_sparsifier_mask_squash(pruning: ModuleType) -> None:
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(SimpleLinear(), config=None)
    sparsifier.squash_mask()
    for group in sparsifier.groups:
        assert not is_parametrized(group["module"], "weight")
        assert not hasattr(group["module"], "mask")


def test_weight_norm_sparsifier_sparsity_levels(pruning: ModuleType) -> None:
    levels = [-1.0, 0.0, 0.5, 1.0, 2.0]
    block_shapes = [(1, 1), (1, 4), (2, 2), (4, 1)]
    zeros = [0, 1, 2, 3, 4]
    # One all-ones 12x12 layer per valid combination, all in one model and one sparsifier.
    cases = [
        (f"layer{i}", level, shape, count)
        for i, (level, shape, count) in enumerate(itertools.product(levels, block_shapes, zeros))
        if count <= shape[0] * shape[1]
    ]
    model = nn.Sequential()
    config = []
    for name, level, shape, count in cases:
        layer = nn.Linear(12, 12, bias=False)
        layer.weight = nn.Parameter(torch.ones(12, 12))
        model.add_module(name, layer)
        config.append(
            {
                "tensor_fqn": f"{name}.weight",
                "sparsity_level": level,
                "sparse_block_shape": shape,
                "zeros_per_block": count,
            }
        )
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(model, config)
    sparsifier.step()
    sparsifier.squash_mask()
    model.eval()

    for name, level, shape, count in cases:
        zero_fraction = (getattr(model, name).weight == 0).float().mean()
        # Levels outside [0, 1] are clipped; a chosen block holds `count` zeros.
        expected = min(max(level, 0.0), 1.0) * count / shape[0] / shape[1]
        assert zero_fraction == expected, (name, level, shape, count)


# -- test_sparsifier.py: TestNearlyDiagonalSparsifier -----------------------------------


def test_nearly_diagonal_sparsifier_constructor(pruning: ModuleType) -> None:
    sparsifier = pruning.NearlyDiagonalSparsifier(nearliness=1)
    sparsifier.prepare(SimpleLinear(), config=None)
    for group in sparsifier.groups:
        assert isinstance(group["module"], nn.Linear)
        assert group["module_fqn"] in ALL_LAYERS  # the order of groups is not specified
    # Stricter than upstream (an empty group list passes the loop): every layer is there.
    assert {group["module_fqn"] for group in sparsifier.groups} == ALL_LAYERS


def test_nearly_diagonal_sparsifier_step(pruning: ModuleType) -> None:
    model = SimpleLinear()
    sparsifier = pruning.NearlyDiagonalSparsifier(nearliness=1)
    sparsifier.prepare(model, config=[{"tensor_fqn": "linear1.weight"}])
    for group in sparsifier.groups:
        assert sparsity_of(group["module"]) == 0

    sparsifier.enable_mask_update = True
    sparsifier.step()
    mask = mask_of(model.linear1)
    assert torch.all(mask == torch.eye(*mask.shape))
    for group in sparsifier.groups:
        assert sparsity_of(group["module"]) > 0

    # Randomized weights must not make the mask collapse.
    for _ in range(COLLAPSE_ROUNDS):
        model.linear1.weight.data = torch.randn(model.linear1.weight.shape)
        sparsifier.step()
    for group in sparsifier.groups:
        assert sparsity_of(group["module"]) > 0
        # Stricter than upstream (an all-zero mask passes the check above): still diagonal.
        assert torch.equal(mask_of(group["module"]), torch.eye(*mask.shape))


def test_nearly_diagonal_sparsifier_prepare(pruning: ModuleType) -> None:
    sparsifier = pruning.NearlyDiagonalSparsifier(nearliness=1)
    sparsifier.prepare(SimpleLinear(), config=None)
    for group in sparsifier.groups:
        module = group["module"]
        assert hasattr(module.parametrizations["weight"][0], "mask")
        assert is_parametrized(module, "weight")
        assert type(module.parametrizations.weight[0]) is pruning.FakeSparsity


def test_nearly_diagonal_sparsifier_mask_squash(pruning: ModuleType) -> None:
    sparsifier = pruning.NearlyDiagonalSparsifier(nearliness=1)
    sparsifier.prepare(SimpleLinear(), config=None)
    sparsifier.step()
    sparsifier.squash_mask()
    for group in sparsifier.groups:
        module = group["module"]
        assert not is_parametrized(module, "weight")
        assert not hasattr(module, "mask")
        weight = module.weight
        # Only the main diagonal survives.
        assert torch.all(weight == torch.eye(*weight.shape) * weight)


def _band(height: int, width: int, nearliness: int) -> torch.Tensor:
    """The expected mask: ones within nearliness // 2 of the diagonal, zeros elsewhere."""
    if nearliness <= 0:
        return torch.zeros(height, width)
    rows = torch.arange(height).unsqueeze(1)
    cols = torch.arange(width).unsqueeze(0)
    return ((rows - cols).abs() <= nearliness // 2).float()


def test_nearly_diagonal_sparsifier_sparsity_levels(pruning: ModuleType) -> None:
    # Every nearliness in -1..99 on 32x32 layers, each layer with its own sparsifier,
    # all layers accumulating in one model.
    model = nn.Sequential()
    for nearliness in range(-1, 100):
        sparsifier = pruning.NearlyDiagonalSparsifier(nearliness=1)
        name = f"near{nearliness}".replace("-", "minus")
        layer = nn.Linear(32, 32, bias=False)
        layer.weight = nn.Parameter(torch.ones(32, 32))
        height, width = layer.weight.shape
        model.add_module(name, layer)
        config = [{"tensor_fqn": f"{name}.weight", "nearliness": nearliness}]
        # An even positive nearliness, or a band wider than the layer, is an error.
        if (nearliness > 0 and nearliness % 2 == 0) or nearliness // 2 >= min(height, width):
            if is_funcsparse(pruning):  # funcsparse: at prepare, and nothing is prepared
                with pytest.raises(ValueError, match=rf"group '{name}\.weight'"):
                    sparsifier.prepare(model, config)
                assert not is_parametrized(layer) and sparsifier.groups == []
                continue
            sparsifier.prepare(model, config)
            with pytest.raises(ValueError):  # torch.ao: at step
                sparsifier.step()
        else:
            sparsifier.prepare(model, config)
            sparsifier.step()
            sparsifier.squash_mask()
            model.eval()
            weight = getattr(model, name).weight  # all ones, so it equals the mask
            assert torch.equal(weight, _band(height, width, nearliness)), nearliness


# -- test_scheduler.py: TestScheduler -----------------------------------------------------


def _one_layer_sparsifier(pruning: ModuleType) -> Any:
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(nn.Sequential(nn.Linear(16, 16)), config=None)
    return sparsifier


def test_scheduler_constructor(pruning: ModuleType) -> None:
    sparsifier = _one_layer_sparsifier(pruning)
    scheduler = halving_scheduler(pruning)(sparsifier)
    assert scheduler.sparsifier is sparsifier
    assert scheduler._step_count == 1
    assert scheduler.base_sl == [sparsifier.groups[0]["sparsity_level"]]


def _step_order_warnings(pruning: ModuleType, caught: list[warnings.WarningMessage]) -> list:
    """The warnings in ``caught`` that come from the scheduler's step-order check.

    Upstream filters by the warning's file only; both implementations attribute the warning
    to the caller (stacklevel=2), so the message is checked too.
    """
    here = scheduler_module_file(pruning)
    return [w for w in caught if w.filename == here or "sparsifier.step()" in str(w.message)]


def test_scheduler_order_of_steps(pruning: ModuleType) -> None:
    Halving = halving_scheduler(pruning)
    sparsifier = _one_layer_sparsifier(pruning)
    scheduler = Halving(sparsifier)

    # scheduler.step() before any sparsifier.step() warns.
    with pytest.warns(UserWarning, match=r"scheduler\.step\(\)"):
        scheduler.step()

    # The right order does not.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsifier.step()
        scheduler.step()
    assert _step_order_warnings(pruning, caught) == []

    # Stricter than upstream (its second scheduler step is past the check): the right
    # order from the first step on, on a fresh pair, does not warn either.
    sparsifier = _one_layer_sparsifier(pruning)
    scheduler = Halving(sparsifier)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsifier.step()
        scheduler.step()
    assert _step_order_warnings(pruning, caught) == []


def test_scheduler_step(pruning: ModuleType) -> None:
    sparsifier = _one_layer_sparsifier(pruning)
    assert sparsifier.groups[0]["sparsity_level"] == 0.5
    scheduler = halving_scheduler(pruning)(sparsifier)
    assert sparsifier.groups[0]["sparsity_level"] == 0.5

    sparsifier.step()
    scheduler.step()
    assert sparsifier.groups[0]["sparsity_level"] == 0.25


def test_scheduler_lambda_scheduler(pruning: ModuleType) -> None:
    sparsifier = _one_layer_sparsifier(pruning)
    assert sparsifier.groups[0]["sparsity_level"] == 0.5
    scheduler = pruning.LambdaSL(sparsifier, lambda epoch: epoch * 10)
    assert sparsifier.groups[0]["sparsity_level"] == 0.0  # epoch 0
    with pytest.warns(UserWarning, match=r"scheduler\.step\(\)"):  # no sparsifier.step()
        scheduler.step()
    assert sparsifier.groups[0]["sparsity_level"] == 5.0  # epoch 1


# -- test_scheduler.py: TestCubicScheduler -------------------------------------------------

CUBIC_CONFIG = [
    {"tensor_fqn": "0.weight", "sparsity_level": 0.8},
    {"tensor_fqn": "2.weight", "sparsity_level": 0.4},
]
CUBIC_TARGETS = [entry["sparsity_level"] for entry in CUBIC_CONFIG]
CUBIC_INIT_SL = 0.1
CUBIC_INIT_T = 3


def _cubic(pruning: ModuleType, **kwargs: Any) -> tuple[Any, Any]:
    model = nn.Sequential(nn.Linear(13, 17), nn.Dropout(0.5), nn.Linear(17, 3))
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(model, config=[dict(entry) for entry in CUBIC_CONFIG])
    scheduler = pruning.CubicSL(
        sparsifier, **{"init_sl": CUBIC_INIT_SL, "init_t": CUBIC_INIT_T, **kwargs}
    )
    return sparsifier, scheduler


def _levels(sparsifier: Any, digits: int | None = None) -> list[float]:
    return [
        group["sparsity_level"] if digits is None else round(group["sparsity_level"], digits)
        for group in sparsifier.groups
    ]


def test_cubic_scheduler_constructor(pruning: ModuleType) -> None:
    sparsifier, scheduler = _cubic(pruning, initially_zero=True)
    assert scheduler.sparsifier is sparsifier, "sparsifier not attached"
    assert scheduler._step_count == 1, "wrong initial step count"
    assert scheduler.base_sl == pytest.approx(CUBIC_TARGETS), "targets not stored"
    # Before t_0 the level is 0 when initially_zero...
    assert _levels(sparsifier) == pytest.approx(scheduler._make_sure_a_list(0.0))

    # ...and s_0 otherwise.
    sparsifier, scheduler = _cubic(pruning, initially_zero=False)
    assert _levels(sparsifier) == pytest.approx(scheduler._make_sure_a_list(CUBIC_INIT_SL))


def test_cubic_scheduler_step(pruning: ModuleType) -> None:
    # n=5 and dt=2: ten steps from s_0 to s_f, starting at t_0=3.
    sparsifier, scheduler = _cubic(pruning, initially_zero=True, init_t=3, delta_t=2, total_t=5)

    with pytest.warns(UserWarning, match=r"scheduler\.step\(\)"):  # no sparsifier.step()
        scheduler.step()
    scheduler.step()
    assert scheduler._step_count == 3, "step count does not increase"
    assert _levels(sparsifier) == pytest.approx(scheduler._make_sure_a_list(0.0)), (
        "moved before t_0"
    )

    scheduler.step()  # t = 3: s_0
    assert _levels(sparsifier) == pytest.approx(scheduler._make_sure_a_list(CUBIC_INIT_SL))

    scheduler.step()  # t = 4: about [0.3, 0.2]
    assert _levels(sparsifier, 1) == pytest.approx([0.3, 0.2])

    done = scheduler._step_count - scheduler.init_t[0] - 1
    for _ in range(scheduler.delta_t[0] * scheduler.total_t[0] - done):
        scheduler.step()
    assert _levels(sparsifier) == pytest.approx(CUBIC_TARGETS), "target not reached"


# -- known differences ------------------------------------------------------------------


def test_difference_load_state_dict_keeps_masks(pruning: ModuleType) -> None:
    """funcsparse.adapter copies masks on load; torch.ao.pruning moves them.

    torch.ao's state_dict() returns its live ``state`` dict and load_state_dict() pops each
    "mask" out of it, so the caller's dict loses its masks and both sparsifiers end up
    sharing one state dict and one mask tensor. Both end with the same in-memory ``state``:
    plain values, the masks living in the parametrizations.
    """
    fs = is_funcsparse(pruning)
    RowZero = row_zero_sparsifier(pruning)
    model0 = SimpleLinear()
    sparsifier0 = RowZero()
    sparsifier0.prepare(model0, [{"tensor_fqn": "linear1.weight"}])
    mask0 = mask_of(model0.linear1)
    assert sparsifier0.state["linear1.weight"]["mask"] is mask0  # both, after prepare
    sparsifier0.step()
    state_dict = sparsifier0.state_dict()
    sparsifier1 = RowZero()
    sparsifier1.prepare(SimpleLinear(), None)
    sparsifier1.load_state_dict(state_dict)

    mask1 = mask_of(sparsifier1.groups[0]["module"])
    assert torch.equal(mask0, mask1)  # both: the loaded mask is in place
    # Both: the masks live in the parametrizations, state holds plain values only.
    assert sparsifier0.state == sparsifier1.state == {"linear1.weight": {"step_count": 1}}
    assert (
        "mask" in state_dict["state"]["linear1.weight"]
    ) == fs  # torch.ao: popped from the caller's dict
    assert (state_dict["state"] is sparsifier0.state) == (not fs)  # torch.ao: state_dict() is live
    assert (sparsifier1.state is sparsifier0.state) == (not fs)  # torch.ao: one shared state dict
    assert (mask1 is mask0) == (not fs)  # torch.ao: one shared mask tensor


def test_difference_state_dict_is_plain_dict(pruning: ModuleType) -> None:
    """Both keep ``state`` a ``defaultdict(dict)``; funcsparse's state_dict() is plain dicts.

    torch.ao.pruning's state_dict() returns the live defaultdict, which
    ``torch.load(weights_only=True)`` refuses.
    """
    sparsifier = pruning.WeightNormSparsifier()
    sparsifier.prepare(SimpleLinear(), [{"tensor_fqn": "linear1.weight"}])
    assert type(sparsifier.state) is defaultdict
    expected = dict if is_funcsparse(pruning) else defaultdict
    assert type(sparsifier.state_dict()["state"]) is expected  # torch.ao: the live defaultdict

    # A subclass may write the state of a tensor it was not prepared for (upstream's
    # ImplementedSparsifier always counts under "linear1.weight"): both create the entry.
    sparsifier = row_zero_sparsifier(pruning)()
    sparsifier.prepare(SimpleLinear(), [{"tensor_fqn": "seq.0.weight"}])
    sparsifier.step()
    assert sparsifier.state["linear1.weight"] == {"step_count": 1}
