"""fs.prune_blocks: block-by-block calibration equals the loop written by hand."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.calibration import collect_statistics

RULES = {"layers.*.fc*.weight": fs.Wanda(0.5)}


class Block(nn.Module):
    """A residual MLP block that reads an attention mask and returns a tuple."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, int]:
        h = self.fc2(torch.relu(self.fc1(hidden)))
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return hidden + h, 0


class Stack(nn.Module):
    """embed -> blocks -> head, called as a tokenizer's output is: keyword arguments."""

    def __init__(self, blocks: int = 3, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, attention_mask=attention_mask)[0]
        return self.head(h)


def make(seed: int = 0, blocks: int = 3) -> tuple[Stack, list[dict[str, Tensor]]]:
    torch.manual_seed(seed)
    model = Stack(blocks)
    batches = []
    for _ in range(3):
        mask = torch.ones(2, 5)
        mask[1, 3:] = 0.0  # padding
        batches.append({"input_ids": torch.randn(2, 5, 4), "attention_mask": mask})
    return model, batches


def by_hand(
    model: Stack, batches: list[dict[str, Tensor]], method: fs.MaskMethod
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[Any]]:
    """The sequential pipeline written out: calibrate, prune, run the pruned block."""
    hidden = [model.embed(b["input_ids"]).detach() for b in batches]
    masks: dict[str, Tensor] = {}
    params: dict[str, Tensor] = {}
    stats_seen = []
    (stat,) = type(method).leaf_data
    for k, block in enumerate(model.layers):
        own = dict(block.named_parameters())
        calls = [
            ([h], {"attention_mask": b["attention_mask"]})
            for h, b in zip(hidden, batches, strict=True)
        ]
        stats = collect_statistics(
            block, own, calls, statistics=(stat,), paths=["fc1.weight", "fc2.weight"]
        )
        stats_seen.append(stats[stat])
        result = fs.prune(own, {"fc*.weight": method}, **stats)
        block_masks, pruned = result.masks, result.params
        for name, mask in block_masks.items():
            if mask is not None:
                masks[f"layers.{k}.{name}"] = mask
                params[f"layers.{k}.{name}"] = pruned[name]
        with torch.no_grad():
            hidden = [
                torch.func.functional_call(block, pruned, (h,), dict(kw))[0]
                for h, (_, kw) in zip(hidden, calls, strict=True)
            ]
    return masks, params, stats_seen


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "method",
    [fs.Wanda(0.5), fs.SparseGPT(0.5, block_size=4), fs.SparseGPT(n=2, m=4)],
    ids=["wanda", "sparsegpt", "sparsegpt-2:4"],
)
def test_equals_the_loop_by_hand(method: fs.MaskMethod) -> None:
    model, batches = make()
    before = snapshot(model)
    rules = {"layers.*.fc*.weight": method}
    pruned = fs.prune_blocks(model, batches, rules, blocks="layers.*", progress=False)
    masks, params, _ = by_hand(model, batches, method)
    assert set(masks) == {k for k, m in pruned.masks.items() if m is not None}
    assert set(pruned.info) == (set(masks) if type(method).updates_weights else set())
    for name, mask in masks.items():
        assert torch.equal(pruned.masks[name], mask), name
        assert torch.equal(pruned.params[name], params[name]), name
    own = dict(model.named_parameters())
    for name in ("embed.weight", "layers.0.fc1.bias", "head.weight"):
        assert pruned.masks[name] is None
        assert pruned.params[name] is own[name]  # unmatched leaves: the model's own
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing mutated
    assert not model.layers[0]._forward_pre_hooks  # the capture hook is gone


def test_later_blocks_see_pruned_inputs() -> None:
    """Block 0's masks are the one-shot masks; block 1's norms are not the dense ones."""
    model, batches = make()
    dense = fs.collect_input_norms(model, dict(model.named_parameters()), batches)
    _, _, sequential = by_hand(model, batches, fs.Wanda(0.5))
    assert torch.equal(sequential[0]["fc1.weight"], dense["layers.0.fc1.weight"])
    assert not torch.allclose(sequential[1]["fc1.weight"], dense["layers.1.fc1.weight"])
    one_shot = fs.compute_masks(dict(model.named_parameters()), RULES, input_norms=dense)
    pruned = fs.prune_blocks(model, batches, RULES, blocks="layers.*", progress=False)
    assert torch.equal(pruned.masks["layers.0.fc1.weight"], one_shot["layers.0.fc1.weight"])
    differ = [
        name
        for name in ("layers.1.fc1.weight", "layers.2.fc1.weight", "layers.2.fc2.weight")
        if not torch.equal(pruned.masks[name], one_shot[name])
    ]
    assert differ  # calibrated on pruned inputs, some later mask differs


MIXED: dict[str, fs.MaskMethod | None] = {
    "layers.*.fc1.weight": fs.Wanda(0.5),
    "layers.*.fc2.weight": fs.SparseGPT(0.5, block_size=4),
}


@pytest.mark.parametrize("rules", [RULES, MIXED], ids=["wanda", "wanda+sparsegpt"])
def test_in_place_equals_pure(rules: dict[str, fs.MaskMethod | None]) -> None:
    model, batches = make()
    pure = fs.prune_blocks(model, batches, rules, blocks="layers.*", progress=False)
    twin, _ = make()
    own = dict(twin.named_parameters())
    done = fs.prune_blocks(twin, batches, rules, blocks="layers.*", progress=False, in_place=True)
    for name, mask in pure.masks.items():
        other = done.masks[name]
        assert (mask is None) == (other is None)
        if mask is not None and other is not None:
            assert torch.equal(mask, other)
        assert torch.equal(pure.params[name], done.params[name]), name
        assert done.params[name] is own[name]  # in place: the model's own parameters
    assert pure.info == done.info
    assert torch.equal(own["layers.2.fc2.weight"], pure.params["layers.2.fc2.weight"])
    assert bool((own["layers.2.fc2.weight"] == 0).any())


def test_magnitude_needs_no_calibration() -> None:
    model, batches = make()
    rules: dict[str, fs.MaskMethod | None] = {"layers.*.**.weight": fs.Magnitude(0.25)}
    pruned = fs.prune_blocks(model, batches, rules, blocks="layers.*", progress=False)
    expected = fs.compute_masks(dict(model.named_parameters()), rules)
    for name, mask in expected.items():
        got = pruned.masks[name]
        assert (got is None) == (mask is None)
        assert mask is None or torch.equal(got, mask)


def test_batch_forms_and_block_lists() -> None:
    """Keyword dicts, (args, kwargs) pairs, a generator, a list of names: one result."""
    model, batches = make()
    reference = fs.prune_blocks(model, batches, RULES, blocks="layers.*", progress=False)
    pairs = [((b["input_ids"],), {"attention_mask": b["attention_mask"]}) for b in batches]

    def generate() -> Iterator[dict[str, Tensor]]:
        yield from batches

    names = ["layers.0", "layers.1", "layers.2"]
    for given, blocks in ((pairs, "layers.*"), (generate(), names)):
        got = fs.prune_blocks(model, given, RULES, blocks=blocks, progress=False)
        for name, mask in reference.masks.items():
            assert mask is None or torch.equal(got.masks[name], mask)


def test_hidden_state_by_keyword() -> None:
    """A block called as block(hidden=h, ...) gets the previous block's output by keyword."""

    class ByKeyword(Stack):
        def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
            h = self.embed(input_ids)
            for layer in self.layers:
                h = layer(hidden=h, attention_mask=attention_mask)[0]
            return self.head(h)

    model, batches = make()
    twin = ByKeyword()
    twin.load_state_dict(model.state_dict())
    a = fs.prune_blocks(model, batches, RULES, blocks="layers.*", progress=False)
    b = fs.prune_blocks(twin, batches, RULES, blocks="layers.*", progress=False)
    for name, mask in a.masks.items():
        assert mask is None or torch.equal(b.masks[name], mask)


def test_buffers_unchanged_in_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.Linear(8, 8))
    model.train()
    before = snapshot(model)
    batches = [torch.randn(6, 4) for _ in range(2)]
    rules: dict[str, fs.MaskMethod | None] = {"[23].weight": fs.Wanda(0.5)}
    fs.prune_blocks(model, batches, rules, blocks=["2", "3"], progress=False, in_place=True)
    after = snapshot(model)
    assert torch.equal(before["1.running_mean"], after["1.running_mean"])
    assert torch.equal(before["1.num_batches_tracked"], after["1.num_batches_tracked"])
    assert not torch.equal(before["2.weight"], after["2.weight"])  # pruned in place


def test_progress_lines_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, batches = make()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    fs.prune_blocks(model, batches, RULES, blocks="layers.*", progress=True)
    err = capsys.readouterr().err
    assert "block 3/3 'layers.2' pruned" in err
    for quiet in (False, None):  # None: only where stderr is a terminal (not here)
        fs.prune_blocks(model, batches, RULES, blocks="layers.*", progress=quiet)
        assert capsys.readouterr().err == ""


def test_progress_bar_with_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm", reason="the test extra installs tqdm")
    model, batches = make()
    fs.prune_blocks(model, batches, RULES, blocks="layers.*", progress=True)
    err = capsys.readouterr().err
    assert "prune_blocks" in err and "3/3" in err


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"blocks": "blocks.*"}, ValueError, "matches no module"),
        ({"blocks": ["layers.0", "layers.9"]}, ValueError, "'layers.9', which is not a module"),
        ({"blocks": ["layers.0", "layers.0"]}, ValueError, "twice"),
        ({"blocks": ["layers", "layers.0"]}, ValueError, "must not nest"),
        ({"blocks": [""]}, ValueError, "the model itself"),
        ({"blocks": []}, ValueError, "blocks is empty"),
        ({"blocks": 3}, TypeError, "glob pattern over module names"),
        ({"blocks": ["layers.0", 1]}, TypeError, "blocks holds int"),
        ({"rules": {"**.weight": fs.Wanda(0.5)}}, ValueError, "outside the blocks.*'embed"),
        ({"rules": {"layers.9.fc1.weight": fs.Wanda(0.5)}}, ValueError, "matches no leaf"),
        ({"rules": {"layers.*.**.weight": fs.GlobalMagnitude(0.5)}}, ValueError, "global"),
        (
            {"rules": {"layers.*.**.weight": fs.Movement(0.5)}},
            ValueError,
            r"Movement, which reads \['scores'\]",
        ),
        ({"batches": []}, ValueError, "batches is empty"),
        ({"batches": torch.zeros(2, 4)}, TypeError, "wrap one batch"),
        ({"batches": [{1: torch.zeros(2)}]}, TypeError, "batch 0 is a mapping with the key 1"),
        ({"batches": [3]}, TypeError, "batch 0 is int"),
        (
            {"batches": [{"input_ids": torch.zeros(2, 5, 4), "bogus": 1}]},
            TypeError,
            "batch 0: calling the model raised TypeError",
        ),
        ({"progress": 1}, TypeError, "progress must be a bool or None"),
        ({"in_place": None}, TypeError, "in_place must be a bool"),
        ({"model": "model"}, TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    model, batches = make()
    before = snapshot(model)
    call: dict[str, Any] = {
        "model": model,
        "batches": batches,
        "rules": RULES,
        "blocks": "layers.*",
        "progress": False,
        "in_place": True,
        **kwargs,
    }
    with pytest.raises(error, match=f"^prune_blocks: .*{match}"):
        fs.prune_blocks(call.pop("model"), call.pop("batches"), call.pop("rules"), **call)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.layers[0]._forward_pre_hooks


def test_first_block_never_called() -> None:
    model, batches = make()
    model.spare = Block()
    with pytest.raises(ValueError, match=r"^prune_blocks: batch 0: .* never called .*'spare'"):
        fs.prune_blocks(model, batches, {}, blocks=["spare", "layers.0"], progress=False)
    assert not model.spare._forward_pre_hooks


def test_block_returning_a_dict() -> None:
    class DictBlock(Block):
        def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Any:
            return {"hidden": super().forward(hidden, attention_mask)[0]}

    torch.manual_seed(0)
    model = nn.Sequential(DictBlock(4), DictBlock(4))
    model.forward = lambda x: model[1](model[0](x)["hidden"])  # type: ignore[method-assign]  # reason: a forward replaced on purpose: a stack whose blocks return a dict
    with pytest.raises(TypeError, match=r"^prune_blocks: block '0' returned dict"):
        fs.prune_blocks(model, [torch.randn(2, 4)], {}, blocks="*", progress=False)


def test_weight_the_trace_cannot_see() -> None:
    """A pruned weight used through matmul (not traced) is named with its block."""

    class MatmulBlock(Block):
        def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Any:
            return (hidden + torch.relu(hidden @ self.fc1.weight.T) @ self.fc2.weight.T,)

    torch.manual_seed(0)
    model = nn.Sequential(MatmulBlock(4), MatmulBlock(4))
    model.forward = lambda x: model[1](model[0](x)[0])[0]  # type: ignore[method-assign]  # reason: a forward replaced on purpose: blocks returning tuples
    rules: dict[str, fs.MaskMethod | None] = {"*.fc1.weight": fs.Wanda(0.5)}
    with pytest.raises(ValueError, match=r"^prune_blocks: block '0': collect_statistics: .*"):
        fs.prune_blocks(model, [torch.randn(2, 4)], rules, blocks="*", progress=False)


def test_one_mapping_as_batches_is_refused_with_the_way_to_wrap_it() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(
        TypeError,
        match=r"prune_blocks: batches must be an iterable of batches, got dict .*: a mapping is one batch .* wrap one batch as \[batch\]",
    ):
        fs.prune_blocks(
            model, {"input": torch.randn(2, 4)}, {"*.weight": fs.Wanda(0.5)}, blocks="*"
        )
