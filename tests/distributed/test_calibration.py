"""collect_input_norms / collect_hessians / collect_statistics (group=...): statistics summed
over gloo ranks equal one process's on the union of the batches; uneven and empty batch lists;
failures on one rank; DTensor weights."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from funcsparse.calibration import collect_hessians, collect_input_norms, collect_statistics
from tests.distributed._spawn import run_ranks

WORLD = 2


def _integer_model() -> nn.Module:
    """Conv2d then Linear layers with small integer weights: every sum of squares is exact."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape, generator=generator).float())
    return model


def _integer_batches(seed: int, sizes: list[int]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(-3, 4, (n, 2, 4, 4), generator=generator).float() for n in sizes]


def _float_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _float_batches(seed: int, sizes: list[int]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 6, generator=generator) for n in sizes]


def _float_batches_4(seed: int, sizes: list[int]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 4, generator=generator) for n in sizes]


class _Branch(nn.Module):
    """``extra`` is used only by batches of more than 2 rows; ``grouped`` only by 1-row ones."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.first = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)
        self.grouped = nn.Parameter(torch.randn(4, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.first(x)
        if x.shape[0] > 2:
            y = self.extra(y)
        if x.shape[0] == 1:
            y = y + F.conv1d(y.unsqueeze(-1), self.grouped, groups=2).squeeze(-1)
        return y


# The batches of every case: all of them in one process, and rank r's share.
INT_SIZES = [[2, 1, 3], [1]]  # uneven counts: 3 batches on rank 0, 1 on rank 1
FLOAT_SIZES = [[3, 2], [4, 1, 2]]
BRANCH_SIZES = [[3, 2], [1, 2]]  # extra runs on rank 0 only; grouped on rank 1 only
CHOSEN = {"input_norms": ["0.weight", "5.weight"], "hessian": ["3.weight", "5.weight"]}


def _shares(make: Any, sizes: list[list[int]]) -> list[list[Tensor]]:
    return [make(10 + r, s) for r, s in enumerate(sizes)]


def _union(make: Any, sizes: list[list[int]]) -> list[Tensor]:
    return [b for share in _shares(make, sizes) for b in share]


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def _error(fn: Any) -> tuple[str, str]:
    try:
        fn()
    except Exception as err:  # the test compares the type and message
        return type(err).__name__, str(err)
    return "no error", ""


def _on_ranks(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    out: dict[str, Any] = {}
    model = _integer_model()
    mine = _shares(_integer_batches, INT_SIZES)[rank]
    out["int"] = collect_input_norms(model, _params(model), mine, group="world")
    out["int_pg"] = collect_input_norms(model, _params(model), mine, group=dist.group.WORLD)
    pair = dist.new_group(ranks=[0, 1])
    out["int_new_group"] = collect_input_norms(model, _params(model), mine, group=pair)
    out["int_local"] = collect_input_norms(model, _params(model), mine)  # group=None
    model = _float_model()
    mine = _shares(_float_batches, FLOAT_SIZES)[rank]
    out["float"] = collect_input_norms(model, _params(model), mine, group="world")
    # A rank without batches: the norms are the other rank's.
    out["one_empty"] = collect_input_norms(
        model, _params(model), mine if rank == 0 else [], group="world"
    )
    out["all_empty"] = _error(lambda: collect_input_norms(model, _params(model), [], group="world"))
    model = _Branch()
    mine = _shares(_float_batches_4, BRANCH_SIZES)[rank]
    out["branch"] = collect_input_norms(model, _params(model), mine, group="world")
    out["branch_paths"] = _error(
        lambda: collect_input_norms(model, _params(model), mine, paths=["grouped"], group="world")
    )
    # A batch that fails on rank 1 only: rank 1 raises its own error, rank 0 names rank 1.
    model = _float_model()
    bad = [torch.randn(2, 6)] if rank == 0 else [torch.randn(2, 7)]
    out["failed"] = _error(lambda: collect_input_norms(model, _params(model), bad, group="world"))
    # Ranks collecting different weights.
    paths = None if rank == 0 else ["0.weight"]
    out["layout"] = _error(
        lambda: collect_input_norms(
            model, _params(model), [torch.randn(1, 6)], paths=paths, group="world"
        )
    )
    # A group this rank is not in; a one-rank group on rank 0.
    solo = dist.new_group(ranks=[0])
    if rank == 0:
        out["solo"] = collect_input_norms(model, _params(model), [torch.ones(2, 6)], group=solo)
    else:
        out["solo"] = _error(lambda: collect_input_norms(model, _params(model), [], group=solo))
    # Hessians (and both statistics from one pass), summed with the token counts.
    model = _integer_model()
    mine = _shares(_integer_batches, INT_SIZES)[rank]
    out["hess_int"] = collect_hessians(model, _params(model), mine, group="world")
    out["stats_int"] = collect_statistics(model, _params(model), mine, group="world")
    out["hess_int_local"] = collect_hessians(model, _params(model), mine)
    model = _float_model()
    mine = _shares(_float_batches, FLOAT_SIZES)[rank]
    out["hess_float"] = collect_hessians(model, _params(model), mine, group="world")
    out["hess_one_empty"] = collect_hessians(
        model, _params(model), mine if rank == 0 else [], group="world"
    )
    out["hess_failed"] = _error(lambda: collect_hessians(model, _params(model), bad, group="world"))
    statistics = ("input_norms",) if rank == 0 else ("hessian",)
    out["stats_differ"] = _error(
        lambda: collect_statistics(
            model, _params(model), [torch.ones(1, 6)], statistics=statistics, group="world"
        )
    )
    chosen = {"hessian": ["0.weight"] if rank == 0 else ["0.weight", "2.weight"]}
    out["paths_differ"] = _error(
        lambda: collect_statistics(
            model,
            _params(model),
            [torch.ones(1, 6)],
            paths={"input_norms": ["0.weight", "2.weight"], **chosen},
            group="world",
        )
    )
    model = _integer_model()
    mine = _shares(_integer_batches, INT_SIZES)[rank]
    out["chosen"] = collect_statistics(model, _params(model), mine, paths=CHOSEN, group="world")
    model = _Branch()
    mine = _shares(_float_batches_4, BRANCH_SIZES)[rank]
    out["hess_branch"] = collect_statistics(model, _params(model), mine, group="world")
    out["hess_branch_paths"] = _error(
        lambda: collect_hessians(model, _params(model), mine, paths=["grouped"], group="world")
    )
    # FSDP2: refused with what to do instead, which then works.
    from torch.distributed.tensor import DTensor, Shard

    sharded = _float_model()
    fully_shard(sharded)
    out["fsdp"] = _error(
        lambda: collect_input_norms(
            sharded, dict(sharded.named_parameters()), [torch.ones(1, 6)], group="world"
        )
    )
    copy = _float_model()
    copy.load_state_dict({k: v.full_tensor() for k, v in sharded.state_dict().items()})
    mine = _shares(_float_batches, FLOAT_SIZES)[rank]
    out["fsdp_copy"] = collect_input_norms(copy, _params(copy), mine, group="world")
    # A DTensor leaf (Shard(0)) on a plain module.
    model = _float_model()
    params = _params(model)
    piece = params["0.weight"].chunk(world)[rank]
    mesh = dict(sharded.named_parameters())["0.weight"].device_mesh
    params["0.weight"] = DTensor.from_local(
        piece, mesh, [Shard(0)], run_check=False, shape=(5, 6), stride=(6, 1)
    )
    out["dtensor"] = _error(
        lambda: collect_input_norms(model, params, [torch.ones(1, 6)], group="world")
    )
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    return run_ranks(_on_ranks, world=WORLD, timeout=120.0)


def _assert_same(got: dict[str, Any], want: dict[str, Any], *, exact: bool) -> None:
    assert got.keys() == want.keys()
    for path, expected in want.items():
        if expected is None:
            assert got[path] is None, path
        elif exact:
            assert torch.equal(got[path], expected), path
        else:
            torch.testing.assert_close(got[path], expected, rtol=1e-12, atol=0.0)


def test_union_of_batches_bit_for_bit(ranks: list[dict[str, Any]]) -> None:
    model = _integer_model()
    want = collect_input_norms(model, _params(model), _union(_integer_batches, INT_SIZES))
    assert want["0.weight"].shape == (2, 3, 3) and want["3.weight"].shape == (12,)
    for out in ranks:
        for key in ("int", "int_pg", "int_new_group"):
            _assert_same(out[key], want, exact=True)
    # Unreduced, a rank has its own batches' norms, which differ from the union's.
    mine = collect_input_norms(model, _params(model), _integer_batches(11, INT_SIZES[1]))
    _assert_same(ranks[1]["int_local"], mine, exact=True)
    assert not torch.equal(mine["3.weight"], want["3.weight"])


def test_union_of_float_batches(ranks: list[dict[str, Any]]) -> None:
    model = _float_model()
    want = collect_input_norms(model, _params(model), _union(_float_batches, FLOAT_SIZES))
    for out in ranks:
        _assert_same(out["float"], want, exact=False)


def test_rank_without_batches(ranks: list[dict[str, Any]]) -> None:
    model = _float_model()
    want = collect_input_norms(model, _params(model), _float_batches(10, FLOAT_SIZES[0]))
    for out in ranks:
        _assert_same(out["one_empty"], want, exact=True)
        assert out["all_empty"] == (
            "ValueError",
            "collect_input_norms: batches is empty on every rank of the group; give at least "
            "one calibration batch",
        )


def test_weights_seen_or_unsupported_on_one_rank(ranks: list[dict[str, Any]]) -> None:
    model = _Branch()
    want = collect_input_norms(model, _params(model), _union(_float_batches_4, BRANCH_SIZES))
    assert want["extra.weight"] is not None and want["grouped"] is None
    for out in ranks:
        _assert_same(out["branch"], want, exact=False)
    kind, message = ranks[0]["branch_paths"]  # rank 0 never ran the grouped conv itself
    assert kind == "ValueError"
    assert message.startswith(
        "collect_input_norms: no input norms for the weight at 'grouped': on another rank"
    )
    kind, message = ranks[1]["branch_paths"]
    assert kind == "ValueError" and "grouped conv (groups=2)" in message


def test_failure_on_one_rank_fails_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["failed"] == (
        "ValueError",
        "collect_input_norms: rank(s) [1] of the group failed on their calibration batches "
        "(their own error says why); nothing was summed",
    )
    kind, message = ranks[1]["failed"]
    assert kind == "ValueError" and message.startswith("collect_input_norms: batch 0: ")
    assert "needs 6 features" in message


def test_ranks_collecting_different_weights(ranks: list[dict[str, Any]]) -> None:
    for rank, out in enumerate(ranks):
        kind, message = out["layout"]
        assert kind == "ValueError"
        n = 2 if rank == 0 else 1
        assert message.startswith(
            f"collect_input_norms: the ranks of the group collect different weights (this "
            f"rank: {n} weights"
        )


def test_group_of_one_rank_and_non_member(ranks: list[dict[str, Any]]) -> None:
    model = _float_model()
    want = collect_input_norms(model, _params(model), [torch.ones(2, 6)])
    _assert_same(ranks[0]["solo"], want, exact=True)
    kind, message = ranks[1]["solo"]
    assert kind == "ValueError" and "NON_GROUP_MEMBER" in message


def test_fsdp2_module_refused_and_the_unsharded_copy_it_asks_for(
    ranks: list[dict[str, Any]],
) -> None:
    for out in ranks:
        kind, message = out["fsdp"]
        assert kind == "ValueError"
        assert message.startswith(
            "collect_input_norms: the module (FSDPSequential) is managed by FSDP2 (fully_shard)"
        )
        assert "{k: v.full_tensor() for k, v in model.state_dict().items()}" in message
        assert "group=" in message
        _assert_same(out["fsdp_copy"], out["float"], exact=True)


def test_dtensor_weights_refused(ranks: list[dict[str, Any]]) -> None:
    for out in ranks:
        kind, message = out["dtensor"]
        assert kind == "TypeError"
        assert message.startswith(
            "collect_input_norms: the leaf at '0.weight' is a DTensor of shape (5, 6) placed "
            "(Shard(dim=0),): a forward never hands a sharded parameter itself to its calls"
        )
        assert "unsharded copy" in message and "group=" in message


def test_hessians_of_the_union_bit_for_bit(ranks: list[dict[str, Any]]) -> None:
    model = _integer_model()
    union = _union(_integer_batches, INT_SIZES)
    want = collect_hessians(model, _params(model), union)
    norms = collect_input_norms(model, _params(model), union)
    assert want["0.weight"].shape == (18, 18) and want["3.weight"].shape == (12, 12)
    for out in ranks:
        _assert_same(out["hess_int"], want, exact=True)
        _assert_same(out["stats_int"]["hessian"], want, exact=True)
        _assert_same(out["stats_int"]["input_norms"], norms, exact=True)
    mine = collect_hessians(model, _params(model), _integer_batches(11, INT_SIZES[1]))
    _assert_same(ranks[1]["hess_int_local"], mine, exact=True)
    assert not torch.equal(mine["3.weight"], want["3.weight"])


def test_hessians_of_float_batches_and_a_rank_without_batches(
    ranks: list[dict[str, Any]],
) -> None:
    model = _float_model()
    want = collect_hessians(model, _params(model), _union(_float_batches, FLOAT_SIZES))
    alone = collect_hessians(model, _params(model), _float_batches(10, FLOAT_SIZES[0]))
    for out in ranks:
        _assert_same(out["hess_float"], want, exact=False)
        _assert_same(out["hess_one_empty"], alone, exact=True)


def test_hessians_of_weights_seen_or_unsupported_on_one_rank(ranks: list[dict[str, Any]]) -> None:
    model = _Branch()
    union = _union(_float_batches_4, BRANCH_SIZES)
    want = collect_statistics(model, _params(model), union)
    assert want["hessian"]["extra.weight"] is not None and want["hessian"]["grouped"] is None
    for out in ranks:
        for name in ("input_norms", "hessian"):
            _assert_same(out["hess_branch"][name], want[name], exact=False)
    assert ranks[0]["hess_branch_paths"] == (
        "ValueError",
        "collect_hessians: no Hessian for the weight at 'grouped': on another rank of the group "
        "it is used in a way one Hessian of the input features cannot describe (a grouped "
        "conv, or the packed in-projection of cross-attention)",
    )
    kind, message = ranks[1]["hess_branch_paths"]
    assert kind == "ValueError" and "grouped conv (groups=2)" in message


def test_hessian_failures_and_different_statistics_fail_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    assert ranks[0]["hess_failed"] == (
        "ValueError",
        "collect_hessians: rank(s) [1] of the group failed on their calibration batches "
        "(their own error says why); nothing was summed",
    )
    kind, message = ranks[1]["hess_failed"]
    assert kind == "ValueError" and message.startswith("collect_hessians: batch 0: ")
    asked = [
        ["input norms at 2 weights", "Hessians at 2 weights"],
        [
            "input norms at 2 weights, Hessians at 1 weights",
            "input norms at 2 weights, Hessians at 2 weights",
        ],
    ]
    for key, mine in zip(["stats_differ", "paths_differ"], asked, strict=True):
        for rank, out in enumerate(ranks):
            assert out[key] == (
                "ValueError",
                "collect_statistics: the ranks of the group collect different statistics (this "
                f"rank: {mine[rank]}); call it with the same statistics and paths on every rank",
            )


def test_statistics_at_their_own_paths(ranks: list[dict[str, Any]]) -> None:
    model = _integer_model()
    want = collect_statistics(
        model, _params(model), _union(_integer_batches, INT_SIZES), paths=CHOSEN
    )
    assert want["hessian"]["0.weight"] is None and want["input_norms"]["0.weight"] is not None
    for out in ranks:
        for name in ("input_norms", "hessian"):
            _assert_same(out["chosen"][name], want[name], exact=True)


# One process, no process group.


def test_group_none_is_the_default() -> None:
    model = _float_model()
    batches = _float_batches(3, [2, 3])
    want = collect_input_norms(model, _params(model), batches)
    _assert_same(collect_input_norms(model, _params(model), batches, group=None), want, exact=True)
    by_hand = torch.cat(batches).double().square().sum(0).sqrt()
    assert torch.equal(want["0.weight"], by_hand)


@pytest.mark.parametrize("group", ["wrold", 0, 1.5, True, torch.zeros(2), ["world"]])
def test_bad_group_value(group: object) -> None:
    model = _float_model()
    with pytest.raises(TypeError, match=r"^collect_input_norms: group must be None \(") as info:
        collect_input_norms(model, _params(model), [torch.ones(1, 6)], group=group)
    assert re.search(r"got .*(wrold|int 0|float 1.5|bool True|tensor|list)", str(info.value))


def test_reduction_without_a_process_group() -> None:
    assert not dist.is_initialized()
    model = _float_model()
    with pytest.raises(
        ValueError,
        match=r"^collect_input_norms: group='world' asks to sum the statistics over ranks, but "
        r"this process has no torch.distributed process group \(call "
        r"torch.distributed.init_process_group first, or pass group=None",
    ):
        collect_input_norms(model, _params(model), [torch.ones(1, 6)], group="world")


def test_non_group_member_without_a_process_group() -> None:
    model = _float_model()
    with pytest.raises(ValueError, match=r"NON_GROUP_MEMBER, what torch\.distributed\.new_group"):
        collect_input_norms(
            model, _params(model), [torch.ones(1, 6)], group=dist.GroupMember.NON_GROUP_MEMBER
        )
