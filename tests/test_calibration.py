"""collect_input_norms: hand-computed norms, batches and shapes, identity matching, purity."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.calibration import collect_input_norms

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2))


class _Snapshot:
    """Everything about a module that a pure function must leave as it found it."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.state = {k: (v, v.clone()) for k, v in module.state_dict(keep_vars=True).items()}
        self.parameters = dict(module.named_parameters())
        self.hooks = {
            (name, attr): dict(getattr(sub, attr))
            for name, sub in module.named_modules()
            for attr in HOOK_DICTS
        }
        self.global_hooks = {
            attr: dict(getattr(nn.modules.module, attr))
            for attr in GLOBAL_HOOKS
            if hasattr(nn.modules.module, attr)
        }
        self.training = [sub.training for sub in module.modules()]
        self.dicts = {name: dict(vars(sub)) for name, sub in module.named_modules()}

    def assert_unchanged(self) -> None:
        module = self.module
        state = module.state_dict(keep_vars=True)
        assert state.keys() == self.state.keys()
        for key, (obj, value) in self.state.items():
            assert state[key] is obj, key
            assert torch.equal(state[key], value), key
        assert dict(module.named_parameters()) == self.parameters
        for (name, attr), hooks in self.hooks.items():
            assert dict(getattr(module.get_submodule(name), attr)) == hooks, (name, attr)
        for attr, hooks in self.global_hooks.items():
            assert dict(getattr(nn.modules.module, attr)) == hooks, attr
        assert [sub.training for sub in module.modules()] == self.training
        for name, sub in module.named_modules():
            assert vars(sub).keys() == self.dicts[name].keys(), name
        assert torch._C._len_torch_function_stack() == 0


def _detached(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


def _hand_norms(model: nn.Sequential, batches: list[Tensor]) -> dict[str, Tensor]:
    """sqrt of x.pow(2) summed over every token, layer by layer, in float64."""
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in batches]).double()
    norms = {}
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            norms[f"{i}.weight"] = x.pow(2).sum(0).sqrt()
            x = x @ layer.weight.detach().double().T + layer.bias.detach().double()
        else:
            x = layer(x)
    return norms


@pytest.mark.parametrize(
    "shapes",
    [[(4, 6)], [(4, 6), (1, 6), (7, 6)], [(2, 3, 6)], [(2, 3, 6), (1, 5, 6), (4, 1, 6)]],
    ids=["one-2d", "three-2d", "one-3d", "three-3d"],
)
def test_norms_equal_a_hand_computation(shapes: list[tuple[int, ...]]) -> None:
    model = _mlp()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(shape, generator=generator) for shape in shapes]
    params = _detached(model)
    snapshot = _Snapshot(model)
    norms = collect_input_norms(model, params, batches)
    snapshot.assert_unchanged()
    assert norms.keys() == params.keys()
    for path in ("0.bias", "2.bias", "4.bias"):
        assert norms[path] is None
    expected = _hand_norms(model, batches)
    for path, value in expected.items():
        assert norms[path].dtype == torch.float64
        assert norms[path].shape == (params[path].shape[1],)
        torch.testing.assert_close(norms[path], value, rtol=1e-6, atol=1e-9)
    # the first layer sees the inputs themselves: exact up to float64 summation order
    tokens = torch.cat([b.reshape(-1, 6) for b in batches]).double()
    torch.testing.assert_close(norms["0.weight"], tokens.pow(2).sum(0).sqrt(), rtol=1e-12, atol=0)


def test_multiple_batches_accumulate_sums_of_squares() -> None:
    model = nn.Linear(2, 1)
    params = _detached(model)
    batches = [torch.tensor([[3.0, 0.0]]), torch.tensor([[[4.0, 1.0], [0.0, 2.0]]])]
    norms = collect_input_norms(model, params, batches)
    assert norms["weight"].tolist() == [5.0, 5.0**0.5]
    # accumulated in float64: (2 ** 70) ** 2 overflows float32, not float64
    big = collect_input_norms(model, params, [torch.tensor([[2.0**70, 1.0]])] * 4)
    assert big["weight"].tolist() == [2.0**71, 2.0]


def test_inputs_are_not_mutated_and_params_are_untouched() -> None:
    model = _mlp()
    params = _detached(model)
    before = {k: v.clone() for k, v in params.items()}
    batches = [torch.randn(3, 6) for _ in range(2)]
    batches_before = [b.clone() for b in batches]
    collect_input_norms(model, params, batches)
    for k, v in params.items():
        assert torch.equal(v, before[k])
    for b, b0 in zip(batches, batches_before, strict=True):
        assert torch.equal(b, b0)


def test_params_that_require_grad_and_module_parameters_themselves() -> None:
    model = _mlp()
    snapshot = _Snapshot(model)
    batches = [torch.randn(3, 6)]
    norms = collect_input_norms(model, dict(model.named_parameters()), batches)
    snapshot.assert_unchanged()
    assert not norms["0.weight"].requires_grad
    torch.testing.assert_close(norms["2.weight"], _hand_norms(model, batches)["2.weight"])
    assert all(p.grad is None for p in model.parameters())


def test_tuples_of_positional_args_and_nested_params() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.out = nn.Linear(2, 1)

        def forward(self, x: Tensor, scale: Tensor) -> Any:
            return self.out(self.fc(x * scale))

    model = Scaled()
    params = {"fc": {"weight": model.fc.weight.detach(), "bias": model.fc.bias.detach()}}
    x, scale = torch.randn(4, 3), torch.tensor([1.0, 2.0, 3.0])
    norms = collect_input_norms(model, params, [(x, scale), [x, scale]])
    # nested params give nested norms; out.weight is not in params, so it is not collected
    assert norms["fc"]["bias"] is None
    torch.testing.assert_close(
        norms["fc"]["weight"], ((x * scale).double().pow(2).sum(0) * 2).sqrt()
    )


def test_weights_are_matched_by_identity() -> None:
    class Copies(nn.Module):
        """Uses fc1's weight through a copy, fc2's twice, and fc3 never."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(3, 3)
            self.fc2 = nn.Linear(3, 3)
            self.fc3 = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Any:
            x = F.linear(x, self.fc1.weight.clone(), self.fc1.bias)
            return self.fc2(self.fc2(x))

    model = Copies()
    params = _detached(model)
    x = torch.randn(5, 3)
    norms = collect_input_norms(model, params, [x])
    assert norms["fc1.weight"] is None  # a copy is not the weight
    assert norms["fc3.weight"] is None  # never reached
    with torch.no_grad():
        h1 = model.fc1(x)
        h2 = model.fc2(h1)
    both = torch.cat([h1, h2]).double()
    torch.testing.assert_close(norms["fc2.weight"], both.pow(2).sum(0).sqrt())
    # named explicitly, a weight that never reaches F.linear is an error
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_input_norms: the weights at ['fc1.weight', 'fc3.weight'] were never used "
            "as the weight of a traced call in the calibration forward; funcsparse traces "
            "torch.nn.functional.linear, conv1d/conv2d/conv3d"
        ),
    ):
        collect_input_norms(model, params, [x], paths=["fc2.weight", "fc1.weight", "fc3.weight"])


def test_the_default_covers_weights_outside_linear_modules() -> None:
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Parameter(torch.randn(2, 4))
            self.head = nn.Linear(2, 1)

        def forward(self, x: Tensor) -> Any:
            return self.head(F.linear(x, self.proj))

    model = Raw()
    params = _detached(model)
    x = torch.randn(3, 2, 4)
    default = collect_input_norms(model, params, [x])
    assert default["proj"] is not None and default["head.weight"] is not None
    assert default["proj.bias" if "proj.bias" in default else "head.bias"] is None
    explicit = collect_input_norms(model, params, [x], paths=["proj"])
    assert explicit["head.weight"] is None
    torch.testing.assert_close(explicit["proj"], x.reshape(-1, 4).double().pow(2).sum(0).sqrt())


def test_masks_apply_during_calibration() -> None:
    model = _mlp()
    params = _detached(model)
    batches = [torch.randn(8, 6)]
    first = torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    masks: dict[str, Any] = dict.fromkeys(params)
    masks["0.weight"] = first
    norms = collect_input_norms(model, params, batches, masks=masks)
    pruned_model = _mlp()
    with torch.no_grad():
        pruned_model.get_parameter("0.weight").mul_(first)
    expected = _hand_norms(pruned_model, batches)
    for path, value in expected.items():
        torch.testing.assert_close(norms[path], value, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(
        norms["2.weight"], collect_input_norms(model, params, batches)["2.weight"]
    )


def test_plugs_into_compute_masks_with_wanda() -> None:
    from funcsparse.methods.wanda import Wanda

    model = _mlp()
    params = _detached(model)
    norms = collect_input_norms(model, params, [torch.randn(2, 4, 6)])
    masks = fs.compute_masks(params, {"*.weight": Wanda(sparsity=0.4)}, input_norms=norms)
    assert [int((~masks[f"{i}.weight"]).sum()) for i in (0, 2, 4)] == [5 * 2, 3 * 2, 2 * 1]


def test_bad_input_raises_and_leaves_nothing_behind() -> None:
    model = _mlp()
    params = _detached(model)
    snapshot = _Snapshot(model)
    with pytest.raises(ValueError, match="collect_input_norms: batches is empty"):
        collect_input_norms(model, params, [])
    with pytest.raises(
        TypeError,
        match=re.escape(
            "collect_input_norms: batch 1 is dict {'x': 1}; a batch is an input tensor or a "
            "tuple of positional arguments"
        ),
    ):
        collect_input_norms(model, params, [torch.randn(2, 6), {"x": 1}])
    with pytest.raises(
        ValueError, match=re.escape("collect_input_norms: 'head.weight' in paths is not a leaf")
    ):
        collect_input_norms(model, params, [torch.randn(2, 6)], paths=["head.weight"])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_input_norms: the leaf at '0.bias' is a 1-D torch.float32 tensor of shape "
            "(5,); input norms are collected for floating weights of shape (out, *rest)"
        ),
    ):
        collect_input_norms(model, params, [torch.randn(2, 6)], paths=["0.bias"])
    with pytest.raises(TypeError, match="paths must be a sequence of leaf paths"):
        collect_input_norms(model, params, [torch.randn(2, 6)], paths="0.weight")
    with pytest.raises(ValueError, match="name no parameter or buffer"):
        collect_input_norms(model, {"nope.weight": torch.ones(2, 2)}, [torch.randn(2, 6)])
    with pytest.raises(RuntimeError):  # a forward that fails midway
        collect_input_norms(model, params, [torch.randn(2, 6), torch.randn(2, 7)])
    snapshot.assert_unchanged()


def test_eval_mode_is_the_callers_choice() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    params = _detached(model)
    x = torch.randn(10, 4)
    norms = collect_input_norms(model, params, [x])
    torch.testing.assert_close(norms["1.weight"], x.double().pow(2).sum(0).sqrt())
    assert not model.training
