"""collect_hessians and collect_statistics: (2 / T) X^T X against direct computations, batch
forms, masks, paths, convs and attention, chunking, one pass for several statistics, errors."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse import calibration
from funcsparse.calibration import collect_hessians, collect_input_norms, collect_statistics


def _detached(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


def _integer(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` with small integer weights: every sum of products below is exact."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-2, 3, p.shape, generator=generator).float())
    return module


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2))


def _hessian(rows: list[Tensor]) -> Tensor:
    """The direct computation: X^T X * 2 / T of the concatenated input rows, in float64."""
    x = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]).double()
    return x.T @ x * 2 / x.shape[0]


def _layer_inputs(model: nn.Sequential, batches: list[Tensor]) -> dict[str, list[Tensor]]:
    """The input of every Linear of ``model``, batch by batch, as the model computes it."""
    inputs: dict[str, list[Tensor]] = {}
    for batch in batches:
        x = batch
        for i, layer in enumerate(model):
            if isinstance(layer, nn.Linear):
                inputs.setdefault(f"{i}.weight", []).append(x)
            x = layer(x)
    return inputs


@pytest.mark.parametrize(
    "shapes",
    [[(4, 6)], [(4, 6), (1, 6), (7, 6)], [(2, 3, 6), (1, 5, 6), (4, 1, 6)]],
    ids=["one-2d", "three-2d", "three-3d"],
)
def test_hessians_equal_the_direct_computation(shapes: list[tuple[int, ...]]) -> None:
    generator = torch.Generator().manual_seed(1)
    # Integer-valued: the sums are exact, the chunked accumulation agrees bit for bit.
    model = _integer(_mlp())
    batches = [torch.randint(-3, 4, shape, generator=generator).float() for shape in shapes]
    params = _detached(model)
    before = {k: v.clone() for k, v in params.items()}
    hessians = collect_hessians(model, params, batches)
    assert hessians.keys() == params.keys()
    assert all(hessians[p] is None for p in ("0.bias", "2.bias", "4.bias"))
    with torch.no_grad():
        inputs = _layer_inputs(model, batches)
    for path, rows in inputs.items():
        got = hessians[path]
        assert got.dtype == torch.float64 and got.shape == (params[path].shape[1],) * 2
        assert torch.equal(got, _hessian(rows)), path
    assert all(torch.equal(params[k], before[k]) for k in params)
    assert torch._C._len_torch_function_stack() == 0
    # Real-valued: equal up to the order of the float64 additions.
    model = _mlp(3)
    batches = [torch.randn(shape, generator=generator) for shape in shapes]
    hessians = collect_hessians(model, _detached(model), batches)
    with torch.no_grad():
        inputs = _layer_inputs(model, batches)
    for path, rows in inputs.items():
        torch.testing.assert_close(hessians[path], _hessian(rows), rtol=1e-12, atol=1e-12)


def test_diagonal_is_twice_the_mean_square_and_plugs_into_fs() -> None:
    model = _mlp()
    batches = [torch.randn(3, 6), torch.randn(2, 4, 6)]
    stats = collect_statistics(model, _detached(model), batches)
    assert list(stats) == ["input_norms", "hessian"]
    tokens = 3 + 8
    for path in ("0.weight", "2.weight", "4.weight"):
        torch.testing.assert_close(
            stats["hessian"][path].diagonal() * tokens / 2,
            stats["input_norms"][path].square(),
            rtol=1e-12,
            atol=1e-12,
        )
    assert fs.collect_hessians is collect_hessians


def test_statistics_equal_their_own_functions_bit_for_bit() -> None:
    model = _mlp(2)
    params = _detached(model)
    batches = [torch.randn(4, 6), torch.randn(3, 2, 6)]
    both = collect_statistics(model, params, batches)
    norms = collect_input_norms(model, params, batches)
    hessians = collect_hessians(model, params, batches)
    for path in params:
        for got, want in (
            (both["input_norms"][path], norms[path]),
            (both["hessian"][path], hessians[path]),
        ):
            assert (got is None) == (want is None), path
            assert got is None or torch.equal(got, want), path
    only = collect_statistics(model, params, batches, statistics=["hessian"])
    assert list(only) == ["hessian"]
    assert torch.equal(only["hessian"]["2.weight"], hessians["2.weight"])
    reordered = collect_statistics(model, params, batches, statistics=("hessian", "input_norms"))
    assert list(reordered) == ["hessian", "input_norms"]


class _Block(nn.Module):
    """A transformer-ish block called as ``block(hidden, attention_mask=mask)``."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, hidden: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        scores = self.q(hidden) @ self.k(hidden).transpose(-1, -2)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, -1e9)
        hidden = hidden + self.o(scores.softmax(-1) @ self.v(hidden))
        return hidden + self.down(F.relu(self.up(hidden)))

    def inputs(self, hidden: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        """The input of every linear, computed as the forward does."""
        scores = self.q(hidden) @ self.k(hidden).transpose(-1, -2)
        mixed = scores.masked_fill(~attention_mask, -1e9).softmax(-1) @ self.v(hidden)
        after = hidden + self.o(mixed)
        seen = {name: hidden for name in ("q", "k", "v")}
        return {**seen, "o": mixed, "up": after, "down": F.relu(self.up(after))}


def test_a_block_called_with_args_and_kwargs_pairs() -> None:
    """What block-by-block pruning does: the block, its params, (args, kwargs) batches."""
    torch.manual_seed(0)
    block = _Block()
    params = _detached(block)
    generator = torch.Generator().manual_seed(4)
    batches = []
    for seq in (3, 5):
        hidden = torch.randn(2, seq, 4, generator=generator)
        mask = torch.ones(seq, seq, dtype=torch.bool).tril()
        batches.append(((hidden,), {"attention_mask": mask}))
    stats = collect_statistics(block, params, batches)
    with torch.no_grad():
        seen = [block.inputs(args[0], kwargs["attention_mask"]) for args, kwargs in batches]
    for name in ("q", "k", "v", "o", "up", "down"):
        rows = [inputs[name] for inputs in seen]
        torch.testing.assert_close(
            stats["hessian"][f"{name}.weight"], _hessian(rows), rtol=1e-12, atol=1e-12
        )
        assert stats["input_norms"][f"{name}.weight"] is not None
    # Keyword batches alone (a mapping) give the same statistics.
    as_mappings = [{"hidden": args[0], **kwargs} for args, kwargs in batches]
    again = collect_hessians(block, params, as_mappings)
    for path, value in again.items():
        want = stats["hessian"][path]
        assert (value is None and want is None) or torch.equal(value, want), path


def test_masks_change_the_inputs_of_later_layers() -> None:
    model = _integer(_mlp(), seed=5)
    params = _detached(model)
    generator = torch.Generator().manual_seed(6)
    batches = [torch.randint(-3, 4, (5, 6), generator=generator).float() for _ in range(2)]
    masks: dict[str, Tensor | None] = {name: None for name in params}
    masks["0.weight"] = torch.rand(5, 6, generator=generator) > 0.5
    masks["2.weight"] = torch.rand(3, 5, generator=generator) > 0.5
    hessians = collect_hessians(model, params, batches, masks=masks)
    masked = _integer(_mlp(), seed=5)
    with torch.no_grad():
        masked[0].weight.mul_(masks["0.weight"])
        masked[2].weight.mul_(masks["2.weight"])
        inputs = _layer_inputs(masked, batches)
    dense = collect_hessians(model, params, batches)
    assert torch.equal(hessians["0.weight"], dense["0.weight"])  # the first input is the data
    for path in ("2.weight", "4.weight"):
        assert torch.equal(hessians[path], _hessian(inputs[path])), path
        assert not torch.equal(hessians[path], dense[path]), path


class _Matmul(nn.Module):
    """``proj`` is used by ``@``, which is not traced."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.proj = nn.Parameter(torch.randn(3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) @ self.proj


def test_paths_select_a_subset_and_unused_or_refused_paths_are_errors() -> None:
    model = _mlp()
    params = _detached(model)
    batches = [torch.randn(3, 6)]
    some = collect_hessians(model, params, batches, paths=["2.weight"])
    full = collect_hessians(model, params, batches)
    assert [k for k, v in some.items() if v is not None] == ["2.weight"]
    assert torch.equal(some["2.weight"], full["2.weight"])
    raw = _Matmul()
    raw_params = _detached(raw)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_hessians: the weights at ['proj'] were never used as the weight of a "
            "traced call in the calibration forward; funcsparse traces torch.nn.functional.linear"
        ),
    ):
        collect_hessians(raw, raw_params, batches, paths=["proj"])
    got = collect_hessians(raw, raw_params, batches)
    assert got["proj"] is None and got["lin.weight"].shape == (6, 6)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    conv_params = _detached(grouped)
    x = [torch.randn(1, 4, 5, 5)]
    hessians = collect_hessians(grouped, conv_params, x)
    assert hessians["0.weight"] is None and hessians["1.weight"].shape == (4, 4)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_hessians: no Hessian for the weight at '0.weight': it is used by a grouped "
            "conv (groups=2): each group of output channels sees other input channels, which "
            "one Hessian of the input features (in_channels / groups, *kernel) cannot hold"
        ),
    ):
        collect_hessians(grouped, conv_params, x, paths=["0.weight"])
    with pytest.raises(ValueError, match=r"^collect_statistics: no input norms for the weight"):
        collect_statistics(grouped, conv_params, x, paths=["0.weight"])


def test_errors_name_the_function() -> None:
    model = _mlp()
    params = _detached(model)
    with pytest.raises(ValueError, match=r"^collect_hessians: batches is empty; give at least"):
        collect_hessians(model, params, [])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_hessians: batch 1: torch.nn.functional.linear got an input of shape "
            "(2, 7) for the weight at '0.weight' of shape (5, 6); its input needs 6 features"
        ),
    ):
        collect_hessians(model, params, [torch.randn(2, 6), torch.randn(2, 7)])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_hessians: the leaf at '0.bias' is a 1-D torch.float32 tensor of shape "
            "(5,); Hessians are collected for floating weights of shape (out, *rest)"
        ),
    ):
        collect_hessians(model, params, [torch.randn(2, 6)], paths=["0.bias"])
    with pytest.raises(ValueError, match=r"input norms and Hessians are collected for floating"):
        collect_statistics(model, params, [torch.randn(2, 6)], paths=["0.bias"])
    with pytest.raises(TypeError, match=r"^collect_hessians: batch 0 is int 3; a batch is"):
        collect_hessians(model, params, [3])
    with pytest.raises(TypeError, match=r"^collect_hessians: module must be a torch.nn.Module"):
        collect_hessians(params, params, [torch.randn(2, 6)])  # type: ignore[arg-type]  # reason: a dict as the module on purpose: the test checks the TypeError
    with pytest.raises(TypeError, match=r"^collect_statistics: batch 0: calling the model raised"):
        collect_statistics(model, params, [{"nope": torch.randn(2, 6)}])
    with pytest.raises(ValueError, match=r"^collect_hessians: group='world' asks to sum"):
        collect_hessians(model, params, [torch.randn(2, 6)], group="world")
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize(
    ("statistics", "kind", "message"),
    [
        (
            "hessian",
            TypeError,
            "statistics must be a sequence of names from ('input_norms', "
            "'hessian'), got str 'hessian'; wrap one name as (name,)",
        ),
        (3, TypeError, "statistics must be a sequence of names from"),
        (
            ["hessian", 2],
            TypeError,
            "statistics holds int 2; the known statistics are ('input_norms', 'hessian')",
        ),
        (
            ["norms"],
            ValueError,
            "unknown statistic 'norms'; the known statistics are ('input_norms', 'hessian')",
        ),
        (("hessian", "hessian"), ValueError, "statistics names 'hessian' twice"),
        ((), ValueError, "statistics is empty; name at least one of ('input_norms', 'hessian')"),
    ],
)
def test_bad_statistics_are_named(statistics: Any, kind: type[Exception], message: str) -> None:
    model = _mlp()
    with pytest.raises(kind, match="^" + re.escape(f"collect_statistics: {message}")):
        collect_statistics(model, _detached(model), [torch.randn(1, 6)], statistics=statistics)


# -- convs and attention ---------------------------------------------------------------------


def _unfolded_rows(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """torch.nn.functional.unfold's columns as rows (one per image and output position)."""
    cols = F.unfold(
        x.double(),
        conv.kernel_size,
        dilation=conv.dilation,
        padding=conv.padding,
        stride=conv.stride,
    )  # (N, C * kh * kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@pytest.mark.parametrize(
    "config",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (2, 3), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
    ],
)
def test_conv2d_hessian_is_that_of_the_unfolded_input(config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, **config)
    batches = [torch.randn(2, 3, 7, 6), torch.randn(1, 3, 7, 6)]
    hessian = collect_hessians(conv, _detached(conv), batches)["weight"]
    rows = torch.cat([_unfolded_rows(x, conv) for x in batches])
    assert hessian.shape == (3 * conv.weight[0, 0].numel(),) * 2
    torch.testing.assert_close(hessian, _hessian([rows]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial", [1, 3])
def test_conv1d_and_conv3d_hessians_through_an_identity_conv(spatial: int) -> None:
    """A conv whose flattened weight is the identity outputs the unfolded rows themselves."""
    kernel = (3, 2, 2)[:spatial] if spatial == 3 else (3,)
    features = 2 * int(torch.tensor(kernel).prod())
    conv_type = {1: nn.Conv1d, 3: nn.Conv3d}[spatial]
    conv = conv_type(2, features, kernel, stride=2, padding=1, dilation=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.eye(features, dtype=torch.float64).reshape(conv.weight.shape))
    sizes = (9,) if spatial == 1 else (5, 4, 6)
    x = torch.randn(3, 2, *sizes, dtype=torch.float64)
    hessian = collect_hessians(conv, _detached(conv), [x, x[:1]])["weight"]
    with torch.no_grad():
        rows = [conv(b).movedim(1, -1) for b in (x, x[:1])]
    torch.testing.assert_close(hessian, _hessian(rows), rtol=1e-12, atol=1e-12)


def test_attention_projections() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    layer.eval()
    params = _detached(layer)
    src = torch.randint(-3, 4, (2, 5, 8)).float()  # integer-valued: exact sums
    stats = collect_statistics(layer, params, [src])
    hessians = stats["hessian"]
    assert torch.equal(hessians["self_attn.in_proj_weight"], _hessian([src]))
    for path, norms in stats["input_norms"].items():
        if norms is not None:
            torch.testing.assert_close(
                hessians[path].diagonal() * 10 / 2, norms.square(), rtol=1e-12, atol=1e-12
            )
    assert hessians["self_attn.out_proj.weight"].shape == (8, 8)
    # Cross-attention's packed in-projection: refused; separate projections: seen.
    cross = nn.MultiheadAttention(4, 2, batch_first=True)
    q, kv = torch.randint(-3, 4, (1, 3, 4)).float(), torch.randn(1, 2, 4)
    got = collect_hessians(cross, _detached(cross), [(q, kv, kv)])
    assert got["in_proj_weight"] is None and got["out_proj.weight"] is not None
    with pytest.raises(ValueError, match="which one Hessian of the input features cannot hold"):
        collect_hessians(cross, _detached(cross), [(q, kv, kv)], paths=["in_proj_weight"])
    separate = nn.MultiheadAttention(4, 2, kdim=3, vdim=5, batch_first=True)
    k, v = torch.randint(-3, 4, (1, 2, 3)).float(), torch.randint(-3, 4, (1, 2, 5)).float()
    got = collect_hessians(separate, _detached(separate), [(q, k, v)])
    assert torch.equal(got["q_proj_weight"], _hessian([q]))
    assert torch.equal(got["k_proj_weight"], _hessian([k]))
    assert torch.equal(got["v_proj_weight"], _hessian([v]))


# -- memory: chunked accumulation ------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    features=st.integers(0, 5),
    budget=st.integers(1, 40),
    transpose=st.booleans(),
)
def test_row_chunks_cover_the_rows_in_order_within_the_budget(
    shape: list[int], features: int, budget: int, transpose: bool
) -> None:
    x = torch.arange(float(torch.tensor([*shape, features]).prod())).reshape(*shape, features)
    if transpose and len(shape) >= 2:
        x = x.transpose(0, 1)
    chunks = list(calibration._row_chunks(x, len(shape), budget))
    assert all(c.dim() == 2 and c.shape[1] == features for c in chunks)
    assert all(c.numel() <= max(budget, features) for c in chunks)
    rows = torch.cat(chunks) if chunks else torch.zeros(0, features)
    assert rows.shape[0] == math.prod(shape)
    assert torch.equal(rows, x.reshape(math.prod(shape), features))


def test_small_chunks_give_the_same_hessians(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(2)
    model = nn.Sequential(_integer(nn.Conv2d(2, 3, 3, padding=1)), nn.Flatten(), nn.Linear(48, 2))
    _integer(model[2])
    batches = [torch.randint(-2, 3, (3, 2, 4, 4), generator=generator).float() for _ in range(2)]
    whole = collect_hessians(model, _detached(model), batches)
    monkeypatch.setattr(calibration, "_CHUNK", 20)  # fewer entries than one image's rows
    chunked = collect_hessians(model, _detached(model), batches)
    for path in ("0.weight", "2.weight"):
        assert torch.equal(chunked[path], whole[path]), path


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")  # torch's
def test_empty_batches_and_zero_features() -> None:
    model = nn.Sequential(nn.Linear(3, 0), nn.Linear(0, 2))
    hessians = collect_hessians(model, _detached(model), [torch.randn(4, 3)])
    assert hessians["1.weight"].shape == (0, 0) and hessians["0.weight"].shape == (3, 3)
    # A weight that saw only empty batches: zeros (no tokens), not NaN.
    mlp = _mlp()
    hessians = collect_hessians(mlp, _detached(mlp), [torch.zeros(0, 6)])
    assert torch.equal(hessians["0.weight"], torch.zeros(6, 6, dtype=torch.float64))


def test_paths_per_statistic(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp()
    params = _detached(model)
    batches = [torch.randn(3, 6), torch.randn(2, 6)]
    full = collect_statistics(model, params, batches)
    grams: list[int] = []
    gram = calibration._Inputs._gram

    def spy(self: calibration._Inputs, weight: Tensor, x: Tensor, *, lead: int) -> None:
        grams.append(weight.shape[1])
        gram(self, weight, x, lead=lead)

    monkeypatch.setattr(calibration._Inputs, "_gram", spy)
    chosen = {"hessian": ["2.weight"], "input_norms": ["0.weight", "2.weight"]}
    some = collect_statistics(model, params, batches, paths=chosen)
    assert grams == [5, 5]  # the one weight asked for, once per batch
    for name, paths in chosen.items():
        for path in params:
            got, want = some[name][path], full[name][path]
            assert (got is not None) == (path in paths), (name, path)
            assert got is None or torch.equal(got, want), (name, path)
    only_norms = collect_statistics(
        model, params, batches, paths={"input_norms": ["4.weight"], "hessian": []}
    )
    assert all(v is None for v in only_norms["hessian"].values())
    with pytest.raises(
        ValueError,
        match=re.escape(
            "collect_statistics: paths has the key 'norms', which is not one of the statistics "
            "collected ('input_norms', 'hessian')"
        ),
    ):
        collect_statistics(model, params, batches, paths={"norms": [], **chosen})
    with pytest.raises(
        ValueError,
        match=re.escape("collect_statistics: paths has no entry for 'input_norms'; as a mapping"),
    ):
        collect_statistics(model, params, batches, paths={"hessian": ["2.weight"]})
    with pytest.raises(ValueError, match=r"^collect_statistics: '2\.bias' in paths is not a leaf"):
        collect_statistics(
            model,
            {"0.weight": params["0.weight"]},
            batches,
            paths={"hessian": ["2.bias"], "input_norms": []},
        )
    with pytest.raises(
        TypeError, match=r"^collect_hessians: paths must be a sequence of leaf paths"
    ):
        collect_hessians(model, params, batches, paths={"hessian": ["2.weight"]})  # type: ignore[arg-type]  # reason: a per-statistic mapping, which only collect_statistics takes: the test checks the error
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    x = [torch.randn(1, 4, 5, 5)]
    with pytest.raises(
        ValueError, match=r"^collect_statistics: no Hessian for the weight at '0\.weight'"
    ):
        collect_statistics(
            grouped,
            _detached(grouped),
            x,
            paths={"input_norms": ["1.weight"], "hessian": ["0.weight"]},
        )
