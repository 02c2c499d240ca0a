"""What a demanding user passes to the sharded entry-wise path, on 2 gloo ranks.

Edge shapes (empty pieces, 0-size and 0-d tensors), narrow and wide dtypes, NaN / inf /
-0.0 / subnormal ties, the level's edges, data given as DTensors or as plain full tensors
(non-contiguous slices beside contiguous pieces), leaves that require grad, a DTensor on a
sub-mesh, generators in different states; every error raised alike on every rank (one rank
raising while the other waits in a collective is a hang). One spawn for the module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from tests.distributed._spawn import run_ranks

_SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40, 5e-324, 1.0, -1.0]


def _values(kind: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if kind == "specials":  # heavy ties of the odd values, subnormals of every width
        table = torch.tensor(_SPECIALS, dtype=torch.float64)
        x = table[torch.randint(0, len(_SPECIALS), (n,), generator=g)]
    elif kind == "nan":
        x = torch.randn(n, generator=g, dtype=torch.float64)
        x = x.masked_fill(torch.rand(n, generator=g) < 0.6, math.nan)
    else:
        x = torch.randn(n, generator=g, dtype=torch.float64)
    return x.reshape(shape).to(dtype)


def _outcome(fn: Callable[[], Any]) -> Any:
    """``fn()``'s value, or ``(error type name, message)``."""
    try:
        return fn()
    except (TypeError, ValueError) as err:
        return (type(err).__name__, str(err))


def _edges(rank: int, world: int) -> list[str]:
    """Empty pieces, 0-size and 0-d tensors, dtypes, specials, level edges, data kinds."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    failures = []
    cases = [
        ((1,), torch.float16, "specials"),  # one entry over two ranks: rank 1's piece is empty
        ((1, 3), torch.bfloat16, "nan"),
        ((0, 4), torch.float64, "randn"),
        ((3, 0), torch.float32, "randn"),
        ((), torch.float32, "specials"),
        ((3, 5), torch.float16, "specials"),
        ((2, 7), torch.float64, "specials"),
    ]
    for i, (shape, dtype, kind) in enumerate(cases):
        n = math.prod(shape)
        full = _values(kind, shape, dtype, i)
        scores = _values("specials", shape, dtype, i + 50)
        prev = torch.rand(shape, generator=torch.Generator().manual_seed(i)) > 0.4
        methods = [
            fs.Magnitude(0.5),
            fs.Magnitude(0.0),
            fs.Magnitude(1.0),
            fs.Magnitude(count=n),
            fs.Random(count=n // 2, seed=3),
            fs.Movement(0.5),
        ]
        for placement in [Replicate()] + [Shard(d) for d in range(len(shape))]:
            leaf = distribute_tensor(full, mesh, [placement])
            for method in methods:
                for prev_kind in ("none", "dtensor", "plain"):
                    kwargs: dict[str, Any] = {}
                    one: dict[str, Any] = {}
                    if prev_kind != "none":
                        given = prev if prev_kind == "plain" else None
                        given = (
                            distribute_tensor(prev, mesh, [placement]) if given is None else given
                        )
                        kwargs["prev_masks"] = {"w": given}
                        one["prev_masks"] = {"w": prev}
                    if isinstance(method, fs.Movement):
                        as_dtensor = distribute_tensor(scores, mesh, [placement])
                        kwargs["scores"] = {"w": as_dtensor if i % 2 else scores}
                        one["scores"] = {"w": scores}
                    got = fs.compute_masks({"w": leaf}, {"w": method}, **kwargs)["w"]
                    want = fs.compute_masks({"w": full}, {"w": method}, **one)["w"]
                    if got.placements != (placement,) or not torch.equal(got.full_tensor(), want):
                        failures.append(f"{method} {shape} {dtype} {placement} prev={prev_kind}")
    # GlobalMagnitude over leaves of mixed dtypes (64-bit keys) and empty pieces.
    fulls = [
        _values("specials", (1, 3), torch.float16, 7),
        _values("specials", (5,), torch.float64, 8),
        _values("nan", (0, 2), torch.float32, 9),
    ]
    prevs = [torch.rand(f.shape, generator=torch.Generator().manual_seed(3)) > 0.3 for f in fulls]
    total = sum(f.numel() for f in fulls)
    for method in (
        fs.GlobalMagnitude(0.5),
        fs.GlobalMagnitude(1.0),
        fs.GlobalMagnitude(count=total),
    ):
        params = {f"w{j}": distribute_tensor(f, mesh, [Shard(0)]) for j, f in enumerate(fulls)}
        got = fs.compute_masks(
            params, {"*": method}, prev_masks={f"w{j}": p for j, p in enumerate(prevs)}
        )
        want = fs.compute_masks(
            {f"w{j}": f for j, f in enumerate(fulls)},
            {"*": method},
            prev_masks={f"w{j}": p for j, p in enumerate(prevs)},
        )
        failures += [
            f"{method} w{j}"
            for j in range(3)
            if not torch.equal(got[f"w{j}"].full_tensor(), want[f"w{j}"])
        ]
    return failures


def _sliced_data(rank: int, world: int) -> list[str]:
    """A plain full prev_mask (sliced: not contiguous) beside a contiguous Shard(1) piece
    whose chunks end inside rows: the mask's chunks must be cut where the piece's are."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcsparse as fs
    from funcsparse.distributed import select

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(0)
    full = torch.randn(30, 20, generator=g)
    prev = torch.rand(30, 20, generator=g) > 0.3
    scores = torch.randn(30, 20, generator=g)
    failures = []
    saved = select._CHUNK
    select._CHUNK = 64  # a 30 x 10 piece: chunks that would end inside rows
    try:
        leaf = distribute_tensor(full, mesh, [Shard(1)])
        for method, data in [
            (fs.Magnitude(0.5), {}),
            (fs.Movement(0.4), {"scores": scores}),
            (fs.Random(0.5, seed=1), {}),
            (fs.GlobalMagnitude(0.6), {}),
        ]:
            kwargs = {k: {"w": v} for k, v in data.items()}
            got = fs.compute_masks({"w": leaf}, {"w": method}, prev_masks={"w": prev}, **kwargs)
            want = fs.compute_masks({"w": full}, {"w": method}, prev_masks={"w": prev}, **kwargs)
            if not torch.equal(got["w"].full_tensor(), want["w"]):
                failures.append(str(method))
    finally:
        select._CHUNK = saved
    return failures


def _untouched(rank: int, world: int) -> dict[str, Any]:
    """A leaf (and scores) that require grad: masks carry no autograd, inputs unchanged."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(1)
    leaf = distribute_tensor(torch.randn(7, 5, generator=g), mesh, [Shard(1)]).requires_grad_()
    scores = distribute_tensor(torch.randn(7, 5, generator=g), mesh, [Shard(1)])
    prev = torch.rand(7, 5, generator=g) > 0.3
    before = [leaf.to_local().detach().clone(), scores.to_local().clone(), prev.clone()]
    grads = []
    for method in (fs.Magnitude(0.5), fs.Random(0.3), fs.Movement(0.4), fs.GlobalMagnitude(0.5)):
        data = {"scores": {"w": scores}} if isinstance(method, fs.Movement) else {}
        mask = fs.compute_masks({"w": leaf}, {"w": method}, prev_masks={"w": prev}, **data)["w"]
        grads.append(mask.requires_grad or mask.to_local().requires_grad)
    after = [leaf.to_local().detach(), scores.to_local(), prev]
    from funcsparse.distributed import shards_of

    grads.append(shards_of(leaf, owner="test").local.requires_grad)  # no autograd node
    return {
        "requires_grad": grads,
        "changed": [not torch.equal(a, b) for a, b in zip(before, after, strict=True)],
    }


def _sub_mesh(rank: int, world: int) -> dict[str, Any]:
    """A DTensor on a mesh of rank 0 only: rank 0 gets the one-process mask, rank 1 (outside
    the mesh) an empty piece, as DTensor's own operations give it; refusals on both."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    sub = DeviceMesh("cpu", [0])
    full = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    prev = torch.rand(6, 4, generator=torch.Generator().manual_seed(3)) > 0.3
    on_sub = distribute_tensor(full, sub, [Shard(0)])
    whole = distribute_tensor(full, mesh, [Shard(0)])
    out: dict[str, Any] = {}
    # The sub-mesh leaves first, then a leaf on the whole mesh: both ranks reach its
    # collectives. Rank 1 runs no method on a stand-in piece that the method would refuse
    # (NearlyDiagonal on 0 rows, Wanda's norms beside 0 columns).
    replicated = distribute_tensor(full, sub, [Replicate()])
    params = {
        "a": on_sub,
        "b": whole,
        "c": replicated,
        "d": replicated,
        "e": distribute_tensor(full, sub, [Shard(1)]),
    }
    rules = {
        "a": fs.Magnitude(0.5),
        "b": fs.Magnitude(0.5),
        "c": fs.Random(0.5),
        "d": fs.NearlyDiagonal(nearliness=3),
        "e": fs.Wanda(0.5),
    }
    norms = {k: torch.ones(4) if k == "e" else None for k in params}
    prev_masks = {k: None for k in params} | {
        "a": prev,
        "c": distribute_tensor(prev, sub, [Replicate()]),
    }
    masks = fs.compute_masks(params, rules, prev_masks=prev_masks, input_norms=norms)
    out["pieces"] = {k: tuple(v.to_local().shape) for k, v in masks.items()}
    out["b"] = torch.equal(masks["b"].full_tensor(), fs.Magnitude(0.5)(full))
    if rank == 0:
        out["a"] = torch.equal(masks["a"].to_local(), fs.Magnitude(0.5)(full, prev_mask=prev))
    global_masks = fs.compute_masks({"a": on_sub, "b": on_sub}, {"*": fs.GlobalMagnitude(0.5)})
    out["global pieces"] = [tuple(m.to_local().shape) for m in global_masks.values()]
    partial = DTensor.from_local(full, sub, [Partial()])
    out["partial"] = _outcome(lambda: fs.compute_masks({"w": partial}, {"w": fs.Magnitude(0.5)}))
    # On a mesh of one rank, Shard and Replicate are one placement: selected together.
    mixed = {"a": on_sub, "b": distribute_tensor(full, sub, [Replicate()])}
    masks = fs.compute_masks(mixed, {"*": fs.GlobalMagnitude(0.5)})
    out["mixed pieces"] = [tuple(m.to_local().shape) for m in masks.values()]
    if rank == 0:
        want = fs.compute_masks({"a": full, "b": full}, {"*": fs.GlobalMagnitude(0.5)})
        out["mixed"] = all(torch.equal(masks[k].to_local(), want[k]) for k in want)
    out["after"] = int(
        (~fs.compute_masks({"b": whole}, {"b": fs.Magnitude(0.25)})["b"].full_tensor()).sum()
    )
    return out


def _generators(rank: int, world: int) -> dict[str, Any]:
    """Random with generator=: the same state everywhere gives the one-process mask;
    states that differ by rank are refused on every rank (Shard and Replicate alike)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    full = torch.randn(9, 4, generator=torch.Generator().manual_seed(4))
    same = torch.Generator().manual_seed(11)
    differs = torch.Generator().manual_seed(11 + rank)
    out: dict[str, Any] = {}
    for placement in (Shard(0), Replicate()):
        leaf = {"w": distribute_tensor(full, mesh, [placement])}
        rules = {"w": fs.Random(0.5)}
        got = fs.compute_masks(leaf, rules, generator={"w": same})["w"].full_tensor()
        want = fs.compute_masks({"w": full}, rules, generator={"w": same})["w"]
        out[f"same {placement!r}"] = torch.equal(got, want)
        out[f"differs {placement!r}"] = _outcome(
            lambda leaf=leaf, rules=rules: fs.compute_masks(leaf, rules, generator={"w": differs})
        )
        some = {"w": same} if rank == 0 else None  # on rank 0 only: refused on both, no hang
        out[f"some {placement!r}"] = _outcome(
            lambda leaf=leaf, rules=rules, some=some: fs.compute_masks(leaf, rules, generator=some)
        )
    return out


def _malformed(rank: int, world: int) -> Any:
    """A prev_mask DTensor made by from_local with pieces of 4 and 2 rows where the leaf's
    are 3 and 3: a ValueError naming it, not an IndexError from inside the selection."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    leaf = distribute_tensor(torch.randn(6, 4), mesh, [Shard(0)])
    piece = torch.ones(4 if rank == 0 else 2, 4, dtype=torch.bool)
    prev = DTensor.from_local(
        piece, mesh, [Shard(0)], run_check=False, shape=torch.Size((6, 4)), stride=(4, 1)
    )
    return _outcome(
        lambda: fs.compute_masks({"w": leaf}, {"w": fs.Magnitude(0.5)}, prev_masks={"w": prev})
    )


def _divergent(rank: int, world: int) -> dict[str, Any]:
    """Ranks that rank pieces of different dtypes (an empty piece's block scores in the
    weight's dtype, the others' in the scores'), and ranks asking for different levels."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    out: dict[str, Any] = {}
    weight = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))  # rank 1: no rows
    scores = torch.randn(1, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rules = {"w": fs.WeightNorm(0.5, sparse_block_shape=(1, 2))}
    got = fs.compute_masks(
        {"w": distribute_tensor(weight, mesh, [Shard(0)])}, rules, scores={"w": scores}
    )["w"].full_tensor()
    out["dtypes"] = torch.equal(
        got, fs.compute_masks({"w": weight}, rules, scores={"w": scores})["w"]
    )
    leaf = {"w": distribute_tensor(torch.randn(6, 4), mesh, [Shard(0)])}
    level = {"w": fs.Magnitude(0.5 if rank == 0 else 0.25)}
    out["levels"] = _outcome(lambda: fs.compute_masks(leaf, level))
    return out


def _all(rank: int, world: int) -> dict[str, Any]:
    return {
        "divergent": _divergent(rank, world),
        "malformed": _malformed(rank, world),
        "edges": _edges(rank, world),
        "sliced": _sliced_data(rank, world),
        "untouched": _untouched(rank, world),
        "sub_mesh": _sub_mesh(rank, world),
        "generators": _generators(rank, world),
    }


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    return run_ranks(_all, timeout=180.0)


def test_edge_shapes_dtypes_and_data_kinds_equal_one_process(ranks: list[dict[str, Any]]) -> None:
    assert [r["edges"] for r in ranks] == [[], []]


def test_plain_prev_mask_beside_a_piece_chunked_inside_rows(ranks: list[dict[str, Any]]) -> None:
    assert [r["sliced"] for r in ranks] == [[], []]


def test_flat_ranges_of_a_non_contiguous_tensor_may_end_inside_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from funcsparse.distributed import select

    sliced = torch.arange(60).reshape(6, 10)[:, 3:8]  # rows of 5, not contiguous
    flat = sliced.reshape(-1)
    for start, stop in [(0, 7), (3, 17), (12, 13), (24, 30), (0, 30)]:
        assert torch.equal(select._flat(sliced, start, stop), flat[start:stop])
    monkeypatch.setattr(select, "_CHUNK", 7)
    assert select.local_chunks(torch.zeros(6, 5))[:2] == [(0, 7), (7, 14)]
    bounds = select.local_chunks(torch.zeros(6, 5), sliced)  # a sliced prev_mask: whole rows
    assert bounds == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30)]


def test_masks_carry_no_autograd_and_inputs_are_untouched(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["untouched"] == {"requires_grad": [False] * 5, "changed": [False] * 3}


def test_a_rank_outside_the_mesh_gets_an_empty_piece_and_the_same_errors(
    ranks: list[dict[str, Any]],
) -> None:
    zero, one = (r["sub_mesh"] for r in ranks)
    assert zero["pieces"] == {"a": (6, 4), "b": (3, 4), "c": (6, 4), "d": (6, 4), "e": (6, 4)}
    assert one["pieces"] == {"a": (0,), "b": (3, 4), "c": (0,), "d": (0,), "e": (0,)}
    assert zero["a"] and zero["b"] and one["b"]
    assert zero["global pieces"] == [(6, 4), (6, 4)] and one["global pieces"] == [(0,), (0,)]
    for r in (zero, one):
        kind, message = r["partial"]
        assert kind == "ValueError" and "compute_masks: rule 'w' (Magnitude) at 'w'" in message
        assert "Partial" in message
        assert r["after"] == 6
    assert zero["mixed"] and zero["mixed pieces"] == [(6, 4), (6, 4)]
    assert one["mixed pieces"] == [(0,), (0,)]


def test_generators_in_different_states_are_refused_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    for r in ranks:
        gens = r["generators"]
        assert gens["same Shard(dim=0)"] and gens["same Replicate()"]
        for placement in ("Shard(dim=0)", "Replicate()"):
            kind, message = gens[f"differs {placement}"]
            assert kind == "ValueError"
            assert "compute_masks: rule 'w' (Random) at 'w'" in message
            assert "generator is in different states across the ranks" in message
            kind, message = gens[f"some {placement}"]
            assert kind == "ValueError" and "generator is given on some ranks only" in message


def test_data_split_otherwise_than_the_leaf_is_a_value_error(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        kind, message = r["malformed"]
        assert kind == "ValueError" and "compute_masks: rule 'w' (Magnitude) at 'w'" in message
        assert "prev_mask's piece on this rank has shape" in message


def _two_sub_meshes(rank: int, world: int) -> dict[str, Any]:
    """4 ranks, sub-meshes of ranks [0, 1] and [2, 3] (which print alike)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcsparse as fs

    first, second = DeviceMesh("cpu", [0, 1]), DeviceMesh("cpu", [2, 3])
    full = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    rules = {"*": fs.GlobalMagnitude(0.5)}
    apart = {
        "a": distribute_tensor(full, first, [Shard(0)]),
        "b": distribute_tensor(full, second, [Shard(0)]),
    }
    out: dict[str, Any] = {"apart": _outcome(lambda: fs.compute_masks(apart, rules))}
    together = {
        "a": distribute_tensor(full, first, [Shard(0)]),
        "b": distribute_tensor(2 * full, first, [Shard(1)]),
        "c": distribute_tensor(full[:1], first, [Shard(0)]),  # rank 1's piece is empty
    }
    masks = fs.compute_masks(together, rules)
    out["pieces"] = [tuple(m.to_local().shape) for m in masks.values()]
    if rank < 2:
        want = fs.compute_masks({"a": full, "b": 2 * full, "c": full[:1]}, rules)
        out["equal"] = all(torch.equal(masks[k].full_tensor(), want[k]) for k in want)
    total = torch.ones(1)
    torch.distributed.all_reduce(total)  # every rank reaches the next collective
    out["after"] = int(total)
    return out


def test_leaves_on_two_sub_meshes_of_one_shape_are_refused_on_every_rank() -> None:
    results = run_ranks(_two_sub_meshes, world=4, timeout=120.0)
    for rank, r in enumerate(results):
        kind, message = r["apart"]
        assert kind == "ValueError" and "compute_masks: rule '*' (GlobalMagnitude)" in message
        assert "ranks [0, 1] (cpu), ranks [2, 3] (cpu)" in message
        assert r["after"] == 4
        if rank < 2:
            assert r["equal"] and r["pieces"] == [(3, 4), (6, 2), [(1, 4), (0, 4)][rank]]
        else:
            assert r["pieces"] == [(0,), (0,), (0,)]


def test_ranks_ranking_other_dtypes_agree_and_other_levels_are_refused(
    ranks: list[dict[str, Any]],
) -> None:
    for r in ranks:
        assert r["divergent"]["dtypes"]  # was a gloo size mismatch (abort) or a hang
        kind, message = r["divergent"]["levels"]
        assert kind == "ValueError" and "compute_masks: rule 'w' (Magnitude) at 'w'" in message
        assert "the ranks disagree on the selection" in message
