"""collect_input_norms: hand-computed norms, batches and shapes, identity matching, purity."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
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
            "collect_input_norms: batch 1 is set {1}; a batch is an input tensor, a "
            "tuple of positional arguments, a mapping of keyword arguments"
        ),
    ):
        collect_input_norms(model, params, [torch.randn(2, 6), {1}])
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
    with pytest.raises(  # a forward that fails midway: batch 0 ran
        ValueError,
        match=re.escape(
            "collect_input_norms: batch 1: torch.nn.functional.linear got an input of shape "
            "(2, 7) for the weight at '0.weight' of shape (5, 6); its input needs 6 features"
        ),
    ):
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


# -- conv, attention, what is not traced (issue 9) -----------------------------------------


def _unfolded_norms(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """The reference: torch.nn.functional.unfold's columns, as SparseGPT unfolds conv inputs."""
    cols = F.unfold(
        x.double(),
        conv.kernel_size,
        dilation=conv.dilation,
        padding=conv.padding,
        stride=conv.stride,
    )  # (N, C * kh * kw, L)
    return cols.square().sum((0, 2)).sqrt().reshape(conv.weight.shape[1:])


@pytest.mark.parametrize(
    "config",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (2, 3), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
        {"kernel_size": 3, "stride": 2, "dilation": 2, "padding": 2},
    ],
)
def test_conv2d_norms_are_the_unfolded_columns(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, **config)
    params = _detached(conv)
    batches = [torch.randn(2, 3, 9, 8), torch.randn(1, 3, 9, 8)]
    norms = collect_input_norms(conv, params, batches)
    assert norms["weight"].shape == conv.weight.shape[1:] and norms["bias"] is None
    expected = torch.cat([_unfolded_norms(x, conv).square()[None] for x in batches]).sum(0).sqrt()
    torch.testing.assert_close(norms["weight"], expected)


@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")  # torch's, odd pad
def test_conv_same_padding_unbatched_input_conv1d_and_conv3d() -> None:
    torch.manual_seed(0)
    same = nn.Conv2d(2, 3, kernel_size=(2, 4), padding="same", dilation=(1, 2))
    x = torch.randn(2, 7, 6)  # unbatched
    norms = collect_input_norms(same, _detached(same), [x])["weight"]
    # torch's 'same' puts the odd pad at the end: pad explicitly, then unfold without padding
    padded = F.pad(x[None], (3, 3, 0, 1))
    cols = F.unfold(padded.double(), (2, 4), dilation=(1, 2))
    torch.testing.assert_close(norms, cols.square().sum((0, 2)).sqrt().reshape(2, 2, 4))

    conv1 = nn.Conv1d(2, 3, kernel_size=3, stride=2, padding=1)
    x1 = torch.randn(4, 2, 11)
    as_2d = F.unfold(x1[:, :, None].double(), (1, 3), padding=(0, 1), stride=(1, 2))
    torch.testing.assert_close(
        collect_input_norms(conv1, _detached(conv1), [x1])["weight"],
        as_2d.square().sum((0, 2)).sqrt().reshape(2, 3),
    )

    conv3 = nn.Conv3d(2, 2, kernel_size=(1, 2, 2), padding=(0, 1, 0))
    x3 = torch.randn(1, 2, 3, 4, 5)
    norms3 = collect_input_norms(conv3, _detached(conv3), [x3])["weight"]
    # each depth slice is a conv2d over (h, w)
    slices = [
        F.unfold(x3[:, :, d].double(), (2, 2), padding=(1, 0)).square().sum((0, 2))
        for d in range(3)
    ]
    torch.testing.assert_close(norms3, torch.stack(slices).sum(0).sqrt().reshape(2, 1, 2, 2))


def test_conv_with_a_padding_mode_sees_the_padded_input() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, kernel_size=3, padding=1, padding_mode="reflect")
    x = torch.randn(1, 1, 5, 5)
    norms = collect_input_norms(conv, _detached(conv), [x])["weight"]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    cols = F.unfold(padded.double(), 3)
    torch.testing.assert_close(norms, cols.square().sum((0, 2)).sqrt().reshape(1, 3, 3))


def test_conv_norms_give_wanda_scores_and_masks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    params = _detached(model)
    norms = collect_input_norms(model, params, [torch.randn(2, 3, 6, 6)])
    scores = fs.wanda_scores(params, norms)
    assert scores["0.weight"].shape == (4, 3, 3, 3)
    torch.testing.assert_close(scores["0.weight"], params["0.weight"].abs() * norms["0.weight"])
    masks = fs.compute_masks(params, {"*.weight": fs.Magnitude(0.5)}, scores=scores)
    assert int((~masks["0.weight"]).sum()) == 54


def test_a_grouped_conv_is_seen_but_refused_by_name() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    params = _detached(model)
    x = torch.randn(1, 4, 5, 5)
    norms = collect_input_norms(model, params, [x])
    assert norms["0.weight"] is None and norms["1.weight"] is not None
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_input_norms: no input norms for the weight at '0.weight': it is used by "
            "a grouped conv (groups=2)"
        ),
    ):
        collect_input_norms(model, params, [x], paths=["0.weight"])
    with pytest.raises(
        ValueError, match=re.escape("compute_masks: rule '*.weight' (Wanda) got no input_norms")
    ):
        fs.compute_masks(params, {"*.weight": fs.Wanda(0.5)}, input_norms=norms)


def _attention_inputs(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The input of self_attn's in- and out-projection, computed by hand (batch_first)."""
    attn = layer.self_attn
    e, h = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k, v = F.linear(x, w, b).chunk(3, dim=-1)

    def heads(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)

    inner = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    return x, inner.transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_transformer_encoder_layer_attention_weights_are_seen(mode: str) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    getattr(layer, mode)()
    params = _detached(layer)
    x = torch.randn(3, 5, 8)
    snapshot = _Snapshot(layer)
    norms = collect_input_norms(layer, params, [x])
    snapshot.assert_unchanged()
    weights = [path for path, leaf in params.items() if leaf.dim() == 2]
    assert all(norms[path] is not None for path in weights), weights
    with torch.no_grad():
        attn_in, out_in = _attention_inputs(layer, x)
    tokens = attn_in.reshape(-1, 8).double()
    torch.testing.assert_close(norms["self_attn.in_proj_weight"], tokens.square().sum(0).sqrt())
    inner = out_in.reshape(-1, 8).double()
    torch.testing.assert_close(
        norms["self_attn.out_proj.weight"], inner.square().sum(0).sqrt(), rtol=1e-5, atol=1e-6
    )
    # The traced forward gives what the layer gives.
    with torch.no_grad():
        expected = layer(x)
        mode_out: list[Tensor] = []

        class Keep(nn.Module):
            def forward(self, y: Tensor) -> Tensor:
                out = layer(y)
                mode_out.append(out)
                return out

        collect_input_norms(Keep(), {}, [x])
    torch.testing.assert_close(mode_out[0], expected)
    # Wanda scores over every weight of the layer: nothing silently falls back.
    scores = fs.wanda_scores(params, norms)
    masks = fs.compute_masks(params, dict.fromkeys(weights, fs.Magnitude(0.5)), scores=scores)
    assert masks["self_attn.out_proj.weight"] is not None


def test_cross_attention_in_projection_is_refused_and_separate_projections_are_seen() -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(4, 2, batch_first=True)

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, q: Tensor, kv: Tensor) -> Tensor:
            return self.attn(q, kv, kv)[0]

    model = Cross()
    params = _detached(model)
    q, kv = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    norms = collect_input_norms(model, params, [(q, kv)])
    assert norms["attn.in_proj_weight"] is None and norms["attn.out_proj.weight"] is not None
    with pytest.raises(ValueError, match="packed in-projection of attention whose query, key"):
        collect_input_norms(model, params, [(q, kv)], paths=["attn.in_proj_weight"])

    separate = nn.MultiheadAttention(4, 2, kdim=3, vdim=6, batch_first=True)
    sparams = _detached(separate)
    key, value = torch.randn(2, 5, 3), torch.randn(2, 5, 6)
    snorms = collect_input_norms(separate, sparams, [(q, key, value)])
    for name, x in (("q_proj_weight", q), ("k_proj_weight", key), ("v_proj_weight", value)):
        expected = x.reshape(-1, x.shape[-1]).double().square().sum(0).sqrt()
        torch.testing.assert_close(snorms[name], expected)


def test_matmul_weights_are_not_traced_and_say_so() -> None:
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3))
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = x @ self.w.T
            h = torch.bmm(h[None], torch.eye(4)[None])[0]
            return self.fc(h)

    model = Raw()
    params = _detached(model)
    x = torch.randn(5, 3)
    norms = collect_input_norms(model, params, [x])
    assert norms["w"] is None and norms["fc.weight"] is not None
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_input_norms: the weights at ['w'] were never used as the weight of a "
            "traced call in the calibration forward; funcsparse traces "
            "torch.nn.functional.linear, conv1d/conv2d/conv3d (groups=1) and "
            "multi_head_attention_forward"
        ),
    ):
        collect_input_norms(model, params, [x], paths=["w", "fc.weight"])
    # The None downstream is an error naming the leaf, never a silent magnitude fallback.
    scores = fs.wanda_scores(params, norms)
    with pytest.raises(ValueError, match=r"compute_masks: scores is None at \['w'\]"):
        fs.compute_masks(params, {"*w*": fs.Magnitude(0.5)}, scores=scores)


def test_batchnorm_in_train_mode_changes_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    params = dict(model.named_parameters())
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    given = {**{k: v.detach() for k, v in params.items()}, **buffers}
    before = {k: v.clone() for k, v in given.items()}
    snapshot = _Snapshot(model)
    batches = [torch.randn(8, 4), torch.randn(8, 4)]
    with_buffers = collect_input_norms(model, given, batches)
    without = collect_input_norms(model, {k: v.detach() for k, v in params.items()}, batches)
    snapshot.assert_unchanged()
    assert all(torch.equal(given[k], before[k]) for k in given)
    # The running statistics advance inside the run as in training, on copies: both calls
    # start from the module's statistics, so they agree.
    torch.testing.assert_close(with_buffers["2.weight"], without["2.weight"])


def test_bad_inputs_are_type_and_value_errors_with_short_messages() -> None:
    model = _mlp()
    params = _detached(model)
    x = torch.randn(2, 6)
    snapshot = _Snapshot(model)
    with pytest.raises(TypeError, match=r"collect_input_norms: module must be a torch.nn.Module"):
        collect_input_norms("model", params, [x])
    with pytest.raises(
        TypeError, match=r"batches must be an iterable of batches .* wrap one batch"
    ):
        collect_input_norms(model, params, x)
    with pytest.raises(TypeError, match=r"batches must be an iterable"):
        collect_input_norms(model, params, None)
    with pytest.raises(TypeError, match=r"paths holds int 3; leaf paths are strings"):
        collect_input_norms(model, params, [x], paths=["0.weight", 3])
    with pytest.raises(ValueError, match=r"batch 0 holds a tensor on the meta device"):
        collect_input_norms(model, params, [x.to("meta")])
    meta = {**params, "0.weight": params["0.weight"].to("meta")}
    with pytest.raises(ValueError, match=r"the leaf at '0.weight' is on the meta device"):
        collect_input_norms(model, meta, [x])
    huge = [x, [torch.randn(100, 100)] * 3 + [list(range(10_000))]]
    with pytest.raises(TypeError) as err:
        collect_input_norms(model, params, [x, {"big": huge}])
    assert len(str(err.value)) < 600 and str(err.value).count("\n") <= 2
    snapshot.assert_unchanged()


@given(
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    channels=st.integers(1, 3),
    size=st.tuples(st.integers(5, 9), st.integers(5, 9)),
    seed=st.integers(0, 2**16),
)
def test_property_conv2d_norms_equal_the_unfolded_columns(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    channels: int,
    size: tuple[int, int],
    seed: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(channels, 2, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, channels, *size, generator=g)
    params = _detached(conv)
    norms = collect_input_norms(conv, params, [x])["weight"]
    torch.testing.assert_close(norms, _unfolded_norms(x, conv))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")  # torch's
def test_zero_size_weights_and_batches() -> None:
    model = nn.Sequential(nn.Linear(0, 3), nn.Linear(3, 2))
    params = _detached(model)
    norms = collect_input_norms(model, params, [torch.randn(4, 0), torch.randn(0, 0)])
    assert norms["0.weight"].shape == (0,)
    assert torch.equal(norms["1.weight"], torch.zeros(3, dtype=torch.float64))  # bias is 0


# -- batches the weights cannot take, leaves that are not weights (issue 9, fuzz) --------------


@pytest.mark.parametrize(
    ("batch", "got"),
    [
        (torch.tensor(0.5), "shape ()"),
        (torch.randn(3, 7), "shape (3, 7)"),
    ],
)
def test_a_batch_the_first_linear_cannot_take_is_a_value_error(batch: Tensor, got: str) -> None:
    model = _mlp()
    params = _detached(model)
    snapshot = _Snapshot(model)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"collect_input_norms: batch 1: torch.nn.functional.linear got an input of {got} "
            "for the weight at '0.weight' of shape (5, 6); its input needs 6 features"
        ),
    ):
        collect_input_norms(model, params, [torch.randn(2, 6), batch])
    snapshot.assert_unchanged()


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        (torch.tensor(1.0), "its input needs shape ([batch,] 2, 2 spatial sizes)"),
        (torch.randn(1, 3, 5, 5), "its input needs shape ([batch,] 2, 2 spatial sizes)"),
        (torch.randn(5, 5), "its input needs shape ([batch,] 2, 2 spatial sizes)"),
        (torch.randn(1, 2, 2, 5), "padded, it is smaller than the kernel"),
    ],
)
def test_a_batch_a_conv_cannot_take_is_a_value_error(batch: Tensor, why: str) -> None:
    conv = nn.Conv2d(2, 4, kernel_size=3)
    params = _detached(conv)
    with pytest.raises(ValueError, match=re.escape(why)) as info:
        collect_input_norms(conv, params, [batch])
    assert str(info.value).startswith(
        f"collect_input_norms: batch 0: conv2d got an input of shape {tuple(batch.shape)} for "
        "the weight at 'weight' of shape (4, 2, 3, 3)"
    )
    # what the checks let through, torch's conv takes (unbatched input; input == kernel)
    for good in (torch.randn(2, 5, 5), torch.randn(1, 2, 3, 3), torch.randn(1, 2, 1, 1)):
        padded = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        if good.shape[-1] == 1:
            norms = collect_input_norms(padded, _detached(padded), [good])["weight"]
        else:
            norms = collect_input_norms(conv, params, [good])["weight"]
        assert norms.shape == (2, 3, 3) and bool(norms.isfinite().all())


def test_an_attention_input_of_the_wrong_width_is_a_value_error() -> None:
    attention = nn.MultiheadAttention(4, 2).eval()
    x = torch.randn(3, 1, 5)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_input_norms: batch 0: multi_head_attention_forward got an input of shape "
            "(3, 1, 5) for the weight at 'in_proj_weight' of shape (12, 4)"
        ),
    ):
        collect_input_norms(attention, _detached(attention), [(x, x, x)])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64])
@pytest.mark.parametrize("path", ["0.weight", "2.bias"])
def test_params_of_an_unsupported_dtype_are_refused_by_path(dtype: torch.dtype, path: str) -> None:
    model = _mlp()
    params = _detached(model)
    params[path] = params[path].to(dtype)
    with pytest.raises(TypeError, match=re.escape(f"the leaf at {path!r} is a")) as info:
        collect_input_norms(model, params, [torch.randn(2, 6)])
    message = str(info.value)
    assert message.startswith("collect_input_norms: ") and f"{dtype} is not supported" in message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("leaf", "shown"),
    [("w", "str 'w'"), (3.0, "float 3.0"), ([torch.ones(5)], None)],
)
def test_params_that_are_not_tensors_are_refused_by_path(leaf: object, shown: str | None) -> None:
    model = _mlp()
    params: dict[str, Any] = {**_detached(model), "0.bias": leaf}
    expected = f"got {shown} at '0.bias'" if shown else "at '0.bias.0'"
    if shown is None:  # a list is a subtree: its tensor leaf has a path no module names
        with pytest.raises(ValueError, match=r"name no parameter or buffer.*'0\.bias\.0'"):
            collect_input_norms(model, params, [torch.randn(2, 6)])
        return
    with pytest.raises(TypeError, match=re.escape(expected)):
        collect_input_norms(model, params, [torch.randn(2, 6)])


def test_a_module_passed_as_params_is_refused() -> None:
    model = _mlp()
    with pytest.raises(TypeError, match=r"pass dict\(model\.named_parameters\(\)\)"):
        collect_input_norms(model, model, [torch.randn(2, 6)])


def test_a_none_leaf_in_params_is_an_empty_entry_as_before() -> None:
    model = _mlp()
    params: dict[str, Any] = {**_detached(model), "0.bias": None, "2.weight": None}
    x = torch.randn(4, 6)
    norms = collect_input_norms(model, params, [x])
    full = collect_input_norms(model, _detached(model), [x])
    assert norms["0.bias"] is None and norms["2.weight"] is None
    for path in ("0.weight", "4.weight"):  # the module's own 2.weight runs in its place
        torch.testing.assert_close(norms[path], full[path], rtol=0, atol=0)


def test_a_batch_torch_refuses_is_a_value_error_naming_the_batch() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    params = {k: v.detach() for k, v in model.named_parameters()}
    batches = [torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long)]
    with pytest.raises(
        ValueError,
        match=r"^collect_input_norms: batch 1: the model raised RuntimeError: .*\(a batch the model cannot take\)$",
    ) as info:
        collect_input_norms(model, params, batches)
    assert isinstance(info.value.__cause__, RuntimeError)


# -- batches as the model is called: keyword mappings and (args, kwargs) pairs ------------


class _Encoder(nn.Module):
    """A model called as a tokenizer's output is passed: input_ids, then keywords."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.words = nn.Embedding(10, 6)
        self.types = nn.Embedding(2, 6)
        self.head = nn.Linear(6, 3)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        h = self.words(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        if token_type_ids is not None:
            h = h + self.types(token_type_ids)
        return self.head(h)


def _encoded(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (2, 5), generator=g)
    # A tokenizer's order: token_type_ids before attention_mask.
    return {
        "input_ids": ids,
        "token_type_ids": torch.randint(0, 2, (2, 5), generator=g),
        "attention_mask": (torch.rand(2, 5, generator=g) > 0.3).long(),
    }


def test_a_mapping_batch_is_keyword_arguments_and_a_pair_is_args_and_kwargs() -> None:
    model = _Encoder()
    params = _detached(model)
    batches = [_encoded(0), _encoded(1)]
    by_keyword = collect_input_norms(model, params, batches, paths=["head.weight"])
    pairs = [((b["input_ids"],), {k: v for k, v in b.items() if k != "input_ids"}) for b in batches]
    by_pair = collect_input_norms(model, params, pairs, paths=["head.weight"])
    in_order = [(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
    by_position = collect_input_norms(model, params, in_order, paths=["head.weight"])
    # The head's inputs, by hand: the masked word embeddings plus the type embeddings.
    with torch.no_grad():
        rows = torch.cat([
            (model.words(b["input_ids"]) * b["attention_mask"][..., None]
             + model.types(b["token_type_ids"])).reshape(-1, 6)
            for b in batches
        ])  # fmt: skip
    want = rows.double().pow(2).sum(0).sqrt()
    for norms in (by_keyword, by_pair, by_position):
        torch.testing.assert_close(norms["head.weight"], want)
    # The values of a tokenizer's dict, in its order, fill the wrong slots: not the same norms.
    shuffled = collect_input_norms(
        model, params, [tuple(b.values()) for b in batches], paths=["head.weight"]
    )
    assert not torch.allclose(shuffled["head.weight"], want)


def test_bad_mapping_batches_are_named() -> None:
    model = _Encoder()
    params = _detached(model)
    with pytest.raises(TypeError, match=re.escape(
        "collect_input_norms: batch 0 is a mapping with the key 3; the keys of a mapping "
        "batch are the model's keyword argument names (str)"
    )):  # fmt: skip
        collect_input_norms(model, params, [{3: torch.zeros(2, 5, dtype=torch.long)}])
    with pytest.raises(TypeError, match=re.escape(
        "collect_input_norms: batch 1: calling the model raised TypeError: "
    )) as err:  # fmt: skip
        batch = _encoded(0)
        collect_input_norms(model, params, [batch, {**batch, "labels": batch["input_ids"]}])
    assert "labels" in str(err.value)


def test_norms_are_summed_a_chunk_of_rows_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Integer-valued inputs: every partial sum is exact, so chunks give the direct sums.
    from funcsparse import calibration

    monkeypatch.setattr(calibration, "_NORM_CHUNK", 3 * 6)  # 3 rows of 6 features a chunk
    model = nn.Linear(6, 2)
    params = {name: p.detach() for name, p in model.named_parameters()}
    x = torch.randint(-5, 6, (4, 5, 6)).float()  # 20 rows: 7 chunks, the last of 2 rows
    norms = fs.collect_input_norms(model, params, [x, x[:1]])
    rows = torch.cat([x.reshape(-1, 6), x[:1].reshape(-1, 6)]).double()
    assert torch.equal(norms["weight"], rows.square().sum(0).sqrt())
    assert norms["bias"] is None


def test_conv_norms_are_summed_a_chunk_of_images_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from funcsparse import calibration

    monkeypatch.setattr(calibration, "_NORM_CHUNK", 2 * 2 * 6 * 6)  # two images a chunk
    conv = nn.Conv2d(2, 3, 3, padding=1)
    params = {name: p.detach() for name, p in conv.named_parameters()}
    x = torch.randint(-4, 5, (5, 2, 6, 6)).float()  # 3 chunks, the last of one image
    norms = fs.collect_input_norms(conv, params, [x])
    columns = F.unfold(x.double(), 3, padding=1)  # (5, 2 * 9, 36)
    assert torch.equal(norms["weight"], columns.square().sum((0, 2)).sqrt().reshape(2, 3, 3))
