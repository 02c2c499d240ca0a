"""Sharded masks of the group-ranking methods equal the single-process masks bit for bit.

Every case builds the full tensor identically on both ranks (a fixed seed), distributes it
(``Shard(0)``, ``Shard(1)``, ``Replicate()``, uneven pieces, 2-D meshes), computes
``fs.compute_masks`` on the DTensor and compares the gathered mask with the method's mask of
the full tensor. One spawn for the module (a fixture); the cases run in loops inside it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from tests.distributed._spawn import run_ranks


def _ints(*shape: int, low: int = -3, high: int = 4) -> Tensor:
    """Integer-valued floats: many ties in every ranking."""
    return torch.randint(low, high, shape).float()


def _prev(*shape: int, kept: float = 0.7) -> Tensor:
    return torch.rand(*shape) < kept


def _sharded(tensor: Tensor) -> Tensor:
    """``tensor`` as a DTensor split along dim 0 on the 1-D mesh."""
    from torch.distributed.tensor import Shard, distribute_tensor

    return distribute_tensor(tensor, _meshes()["1d"], (Shard(0),))


def _permuted(rows: int, cols: int) -> Tensor:
    """Columns that hold the same values in different orders: norms equal but for rounding."""
    base = torch.randn(rows)
    return torch.stack([base[torch.randperm(rows)] for _ in range(cols)], 1)


def _cube(tensor: Tensor) -> Tensor:
    """An elementwise norm callable for WeightNorm."""
    return tensor.abs() ** 3


_MESHES: dict[str, Any] = {}


def _meshes() -> dict[str, Any]:
    """The meshes of the cases, made once per rank."""
    from torch.distributed.device_mesh import init_device_mesh

    if not _MESHES:
        _MESHES["1d"] = init_device_mesh("cpu", (2,))
        _MESHES["2x1"] = init_device_mesh("cpu", (2, 1), mesh_dim_names=("a", "b"))
        _MESHES["1x2"] = init_device_mesh("cpu", (1, 2), mesh_dim_names=("a", "b"))
    return _MESHES


def _placements(name: str) -> tuple[Any, ...]:
    from torch.distributed.tensor import Replicate, Shard

    table = {
        "S0": (Shard(0),),
        "S1": (Shard(1),),
        "R": (Replicate(),),
        "S0,S1": (Shard(0), Shard(1)),
        "S1,S0": (Shard(1), Shard(0)),
        "S0,R": (Shard(0), Replicate()),
        "R,S1": (Replicate(), Shard(1)),
        "S0,S0": (Shard(0), Shard(0)),
    }
    return table[name]


def _check(
    meshes: dict[str, Any],
    mesh_name: str,
    placement: str,
    full: Tensor,
    method: Any,
    *,
    data: dict[str, Tensor] | None = None,
    prev: Tensor | None = None,
    distributed_data: bool = False,
    local: bool = False,
) -> str | None:
    """None where the sharded mask equals the full tensor's; else what went wrong."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    import funcsparse as fs
    from funcsparse.distributed import counting

    mesh = meshes[mesh_name]
    placements = _placements(placement)
    leaf = distribute_tensor(full, mesh, placements)
    data = data or {}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if distributed_data and value.shape == full.shape:
            value = distribute_tensor(value, mesh, placements)
        kwargs[key] = {"w": value}
    if prev is not None:
        kwargs["prev_masks"] = {
            "w": distribute_tensor(prev, mesh, placements) if distributed_data else prev
        }
    label = f"{method} on {tuple(full.shape)} {mesh_name} {placement}"
    with counting() as traffic:
        mask = fs.compute_masks({"w": leaf}, {"w": method}, **kwargs)["w"]
    if not isinstance(mask, DTensor) or tuple(mask.placements) != placements:
        return f"{label}: the mask is not a DTensor placed as the leaf: {type(mask)}"
    plain = {
        key: value.full_tensor() if isinstance(value, DTensor) else value
        for key, value in data.items()
    }
    if prev is not None:
        plain["prev_mask"] = prev
    want = method.for_leaf("w")(full, **plain)
    got = mask.full_tensor()
    if not torch.equal(got, want):
        return f"{label}: {int((got != want).sum())} entries differ"
    if local and traffic.calls:
        return f"{label}: {traffic.calls} collectives where the mask is local"
    return None


def _run(cases: list[dict[str, Any]]) -> tuple[int, list[str]]:
    meshes = _meshes()
    failures = []
    for index, case in enumerate(cases):
        # the same data on every rank, other data in every case (or the case's own seed)
        torch.manual_seed(case.pop("seed", index))
        build = case.pop("build")
        full, extra = build()
        case.setdefault("data", None)
        if extra:
            case["data"] = {**(case["data"] or {}), **extra.get("data", {})}
            if "prev" in extra:
                case["prev"] = extra["prev"]
        problem = _check(meshes, case.pop("mesh", "1d"), case.pop("place"), full, **case)
        if problem is not None:
            failures.append(problem)
    return len(cases), failures


# -- workers (module-level: spawned ranks import them) ----------------------------------------


def _local_methods(rank: int, world: int) -> tuple[int, list[str]]:
    import funcsparse as fs

    nm24, nm12_0 = fs.NM(n=2, m=4), fs.NM(n=1, m=2, axis=0)
    cases: list[dict[str, Any]] = []
    for place in ("S0", "S1", "R"):
        cases.append(dict(build=lambda: (torch.randn(6, 16), None), method=nm24, place=place))
        cases.append(dict(build=lambda: (_ints(6, 16), None), method=nm24, place=place))
        cases.append(
            dict(build=lambda: (_ints(6, 16), {"prev": _prev(6, 16)}), method=nm24, place=place)
        )
    cases += [
        # uneven rows (4 + 3), groups along the rows
        dict(build=lambda: (_ints(7, 8), {"prev": _prev(7, 8)}), method=nm24, place="S0"),
        # columns split at 12: a multiple of m=4
        dict(build=lambda: (_ints(4, 24), None), method=nm24, place="S1"),
        dict(
            build=lambda: (torch.randn(4, 24), {"data": {"scores": _ints(4, 24)}}),
            method=nm24,
            place="S1",
            distributed_data=True,
        ),
        # groups along dim 0, split at 4 (a multiple of 2), and a split across the groups
        dict(build=lambda: (_ints(8, 5), {"prev": _prev(8, 5)}), method=nm12_0, place="S0"),
        dict(build=lambda: (_ints(8, 5), None), method=nm12_0, place="S1"),
        dict(build=lambda: (torch.randn(3, 8, 4), None), method=fs.NM(n=1, m=4), place="S1"),
        # 2-D meshes
        dict(build=lambda: (_ints(6, 16), None), method=nm24, place="S0,S1", mesh="2x1"),
        dict(build=lambda: (_ints(6, 16), None), method=nm24, place="S0,S1", mesh="1x2"),
        dict(build=lambda: (_ints(8, 8), None), method=nm12_0, place="S0,S0", mesh="1x2"),
    ]

    def norms() -> Tensor:  # drawn after the case's seed: the same on every rank
        return torch.rand(10, dtype=torch.float64) * 3

    tied = torch.tensor([1.0, 0.5, 1.0, 2.0, 0.0, 1.0, 0.5, 1.0, 2.0, 1.0])
    for sparsity in (0.5, 0.3, 1.0):
        wanda = fs.Wanda(sparsity)
        cases += [
            dict(
                build=lambda: (torch.randn(6, 10), {"data": {"input_norms": norms()}}),
                method=wanda,
                place="S0",
            ),
            dict(
                build=lambda: (_ints(7, 10), {"data": {"input_norms": tied}}),
                method=wanda,
                place="S0",
            ),
            dict(
                build=lambda: (_ints(7, 10), {"data": {"input_norms": tied}, "prev": _prev(7, 10)}),
                method=wanda,
                place="S0",
                distributed_data=True,
            ),
            dict(
                build=lambda: (_ints(6, 10), {"data": {"input_norms": tied}}),
                method=wanda,
                place="R",
            ),
        ]
    cases += [
        # input_norms as a DTensor (gathered whole: one value per input feature)
        dict(
            build=lambda: (torch.randn(6, 10), {"data": {"input_norms": _sharded(norms())}}),
            method=fs.Wanda(0.5),
            place="S0",
        ),
        # a conv weight, rows of 3 * 2 * 2 unfolded features
        dict(
            build=lambda: (torch.randn(5, 3, 2, 2), {"data": {"input_norms": torch.rand(3, 2, 2)}}),
            method=fs.Wanda(0.5),
            place="S0",
        ),
        # one row over two ranks: rank 1 holds none
        dict(
            build=lambda: (torch.randn(1, 10), {"data": {"input_norms": norms()}}),
            method=fs.Wanda(0.5),
            place="S0",
        ),
        dict(
            build=lambda: (_ints(6, 10), {"data": {"input_norms": tied}}),
            method=fs.Wanda(0.5),
            place="S0,R",
            mesh="2x1",
        ),
    ]
    # Wanda with an N:M pattern: groups of m inside every row, rows whole on a rank
    tied8 = tied[:8]
    for wanda_nm in (fs.Wanda(n=2, m=4), fs.Wanda(n=1, m=2)):
        cases += [
            dict(
                build=lambda: (_ints(7, 8), {"data": {"input_norms": tied8}}),
                method=wanda_nm,
                place="S0",
            ),
            dict(
                build=lambda: (_ints(7, 8), {"data": {"input_norms": tied8}, "prev": _prev(7, 8)}),
                method=wanda_nm,
                place="S0",
                distributed_data=True,
            ),
            dict(
                build=lambda: (
                    torch.randn(5, 2, 2, 2),
                    {"data": {"input_norms": torch.rand(2, 2, 2)}},
                ),
                method=wanda_nm,
                place="S0",
            ),
            dict(
                build=lambda: (_ints(6, 8), {"data": {"input_norms": tied8}}),
                method=wanda_nm,
                place="R",
            ),
        ]
    for nearliness in (1, 3, 5, 0, -1):
        method = fs.NearlyDiagonal(nearliness=nearliness)
        for place in ("S0", "S1"):
            cases.append(dict(build=lambda: (torch.randn(7, 9), None), method=method, place=place))
        cases.append(
            dict(
                build=lambda: (torch.randn(7, 9), {"prev": _prev(7, 9)}),
                method=method,
                place="S0,S1",
                mesh="1x2",
            )
        )
    cases.append(
        dict(
            build=lambda: (torch.randn(1, 9), {"prev": _prev(1, 9)}),
            method=fs.NearlyDiagonal(nearliness=1),
            place="S0",
        )
    )
    cases.append(
        dict(
            build=lambda: (torch.randn(3, 4, 2), None),
            method=fs.NearlyDiagonal(nearliness=0),
            place="S1",
        )
    )
    for case in cases:
        case["local"] = True  # no collective
    return _run(cases)


def _weight_norm(rank: int, world: int) -> tuple[int, list[str]]:
    import funcsparse as fs

    WN = fs.WeightNorm
    cases: list[dict[str, Any]] = []
    divisible = [
        WN(0.5),
        WN(0.5, norm=1),
        WN(0.3, sparse_block_shape=(1, 4), zeros_per_block=2),
        WN(1.0, sparse_block_shape=(1, 4), zeros_per_block=2),
        WN(0.5, sparse_block_shape=(2, 2), zeros_per_block=3),
        WN(0.6, sparse_block_shape=(2, 2)),
        WN(0.4, sparse_block_shape=(1, 1), norm=1),
        WN(0.4, sparse_block_shape=(1, 1)),
        WN(0.5, norm=_cube),
        WN(0.0),
        WN(1.0),
        WN(0.5, zeros_per_block=0),
        WN(0.5, sparse_block_shape=(1, 32)),  # fitted to (1, 16)
    ]
    for method in divisible:
        # (1, 32) blocks are fitted to (1, 16): whole rows, so columns may not be split
        places = ("S0", "R") if method.sparse_block_shape == (1, 32) else ("S0", "S1")
        for place in places:
            cases += [
                dict(build=lambda: (torch.randn(8, 16), None), method=method, place=place),
                dict(build=lambda: (_ints(8, 16), None), method=method, place=place),
                dict(
                    build=lambda: (_ints(8, 16), {"prev": _prev(8, 16)}), method=method, place=place
                ),
            ]
    edges = [WN(0.3), WN(0.5, sparse_block_shape=(2, 3)), WN(0.7, sparse_block_shape=(1, 4))]
    for method in edges:
        # (7, 10): partial blocks at the bottom and right; rows split 4 + 3
        cases += [
            dict(
                build=lambda: (torch.randn(7, 10), None),
                method=method,
                place="S0" if method.sparse_block_shape[0] == 1 else "R",
            ),
            dict(build=lambda: (_ints(8, 10), None), method=method, place="S0"),
            dict(build=lambda: (_ints(8, 10), {"prev": _prev(8, 10)}), method=method, place="S0"),
            dict(
                build=lambda: (_ints(8, 10), {"prev": _prev(8, 10, kept=0.3)}),
                method=method,
                place="S0",
            ),
        ]
    cases += [
        dict(build=lambda: (_ints(7, 10), {"prev": _prev(7, 10)}), method=WN(0.3), place="S0"),
        dict(
            build=lambda: (_ints(8, 12), {"prev": _prev(8, 12)}),
            method=WN(0.5, sparse_block_shape=(2, 3)),
            place="S1",
        ),
        # given scores (ties), distributed as the leaf
        dict(
            build=lambda: (torch.randn(8, 16), {"data": {"scores": _ints(8, 16)}}),
            method=WN(0.5),
            place="S1",
            distributed_data=True,
        ),
        dict(
            build=lambda: (
                torch.randn(8, 16),
                {"data": {"scores": _ints(8, 16)}, "prev": _prev(8, 16)},
            ),
            method=WN(0.5, zeros_per_block=2),
            place="S0",
        ),
        # given scores as a plain tensor: each rank reads its columns (a strided view)
        dict(
            build=lambda: (torch.randn(8, 12), {"data": {"scores": torch.randn(8, 12)}}),
            method=WN(0.5, sparse_block_shape=(2, 3)),
            place="S1",
        ),
        # NaN and infinite weights: NaN ranks above every number
        dict(
            build=lambda: (
                torch.tensor([[1.0, float("nan"), 2.0, -0.0, 0.0, float("inf"), 1.0, -2.0]] * 4),
                None,
            ),
            method=WN(0.5, sparse_block_shape=(1, 2)),
            place="S1",
        ),
        # 2-D meshes
        dict(build=lambda: (_ints(8, 16), None), method=WN(0.5), place="S0,S1", mesh="2x1"),
        dict(
            build=lambda: (_ints(8, 16), {"prev": _prev(8, 16)}),
            method=WN(0.5),
            place="S1,S0",
            mesh="1x2",
        ),
        dict(
            build=lambda: (_ints(8, 16), None),
            method=WN(0.5, sparse_block_shape=(2, 2)),
            place="R,S1",
            mesh="2x1",
        ),
        # other dtypes: bfloat16 scores tie often; float64
        dict(build=lambda: (torch.randn(8, 16).bfloat16(), None), method=WN(0.5), place="S1"),
        dict(
            build=lambda: (torch.randn(8, 16).bfloat16(), {"prev": _prev(8, 16)}),
            method=WN(0.5, sparse_block_shape=(2, 2)),
            place="S0",
        ),
        dict(
            build=lambda: (torch.randn(8, 16, dtype=torch.float64), {"prev": _prev(8, 16)}),
            method=WN(0.5, norm=1),
            place="S1",
        ),
        # one row over two ranks: rank 1 holds an empty piece
        dict(build=lambda: (torch.randn(1, 16), None), method=WN(0.5), place="S0"),
        dict(
            build=lambda: (torch.randn(1, 16), {"prev": _prev(1, 16)}),
            method=WN(0.5, zeros_per_block=2),
            place="S0",
        ),
        # larger, so the selection sees many blocks
        dict(build=lambda: (torch.randn(64, 96), None), method=WN(0.45), place="S1"),
        dict(
            build=lambda: (torch.randn(64, 96), {"prev": _prev(64, 96)}),
            method=WN(0.45, sparse_block_shape=(4, 4)),
            place="S0",
        ),
    ]
    return _run(cases)


def _slice_methods(rank: int, world: int) -> tuple[int, list[str]]:
    import funcsparse as fs

    cases: list[dict[str, Any]] = []
    configs = [
        fs.LnStructured(0.5, n=2, dim=0),
        fs.LnStructured(count=2, n=1, dim=0),
        fs.LnStructured(0.4, n=float("inf"), dim=0),
        fs.LnStructured(0.5, n="fro", dim=0),
        fs.LnStructured(0.0, n=2, dim=0),
        fs.LnStructured(1.0, n=2, dim=0),
    ]
    for method in configs:
        cases += [
            dict(build=lambda: (torch.randn(7, 6), None), method=method, place="S0"),
            dict(build=lambda: (_ints(7, 6), None), method=method, place="S0"),
            dict(build=lambda: (_ints(7, 6), {"prev": _prev(7, 6)}), method=method, place="S0"),
            dict(
                build=lambda: (_ints(8, 6), {"prev": _prev(8, 6, kept=0.4)}),
                method=method,
                place="S0,S0",
                mesh="1x2",
            ),
            dict(build=lambda: (_ints(6, 6), None), method=method, place="R"),
        ]
    col = fs.LnStructured(0.5, n=1, dim=1)
    cases += [
        dict(build=lambda: (_ints(5, 8), None), method=col, place="S1"),
        dict(build=lambda: (_ints(5, 8), {"prev": _prev(5, 8)}), method=col, place="S1"),
        dict(
            build=lambda: (torch.randn(5, 8), {"data": {"scores": _ints(5, 8)}}),
            method=col,
            place="S1",
            distributed_data=True,
        ),
        dict(
            build=lambda: (torch.randn(6, 2, 3, 3), None),
            method=fs.LnStructured(0.5, n="fro", dim=0),
            place="S0",
        ),
        dict(
            build=lambda: (torch.randn(6, 3, 4), None),
            method=fs.LnStructured(count=3, n="nuc", dim=0),
            place="S0",
        ),
        dict(
            build=lambda: (_ints(8, 6), None),
            method=fs.LnStructured(0.5, n=2, dim=0),
            place="S0,R",
            mesh="2x1",
        ),
    ]
    for method in (
        fs.RandomStructured(0.5, dim=0, seed=3),
        fs.RandomStructured(count=2, dim=1, seed=7),
        fs.RandomStructured(0.0, dim=0),
        fs.RandomStructured(1.0, dim=1),
    ):
        for place in ("S0", "S1"):
            cases += [
                dict(build=lambda: (torch.randn(7, 6), None), method=method, place=place),
                dict(
                    build=lambda: (torch.randn(7, 6), {"prev": _prev(7, 6, kept=0.5)}),
                    method=method,
                    place=place,
                ),
            ]
        cases.append(
            dict(
                build=lambda: (torch.randn(6, 8), {"prev": _prev(6, 8)}),
                method=method,
                place="S0,S1",
                mesh="2x1",
            )
        )
        cases.append(
            dict(
                build=lambda: (torch.randn(6, 8), {"prev": _prev(6, 8)}),
                method=method,
                place="S1,S0",
                mesh="1x2",
            )
        )
    cases += [
        # one slice over two ranks: rank 1 holds an empty piece
        dict(
            build=lambda: (torch.randn(1, 6), {"prev": _prev(1, 6)}),
            method=fs.LnStructured(count=0, n=2, dim=0),
            place="S0",
        ),
        dict(
            build=lambda: (torch.randn(1, 6), {"prev": _prev(1, 6)}),
            method=fs.RandomStructured(count=0, dim=0),
            place="S0",
        ),
        dict(
            build=lambda: (torch.randn(3, 1), {"prev": _prev(3, 1)}),
            method=fs.RandomStructured(count=2, dim=0),
            place="S1",
        ),
    ]
    # A piece of one slice where the full tensor has more: torch norms a lone slice (one
    # output) in another order. Slices holding the same values in other orders have norms
    # that differ in the last bits only, so the order of summation decides the ranking.
    for _ in range(6):  # columns 2 + 1, channels 2 + 1
        cases += [
            dict(
                build=lambda: (_permuted(50, 3), None),
                method=fs.LnStructured(count=1, n=2, dim=1),
                place="S1",
            ),
            dict(
                build=lambda: (torch.randn(50, 3), {"data": {"scores": _permuted(50, 3)}}),
                method=fs.LnStructured(count=1, n=2, dim=1),
                place="S1",
            ),
            dict(
                build=lambda: (
                    _permuted(90, 3).T.reshape(3, 10, 3, 3).transpose(0, 1).contiguous(),
                    None,
                ),
                method=fs.LnStructured(count=1, n="fro", dim=1),
                place="S1",
            ),
        ]
    cases += [
        # prev_mask: the method norms chunks of 4 slices of 2**20 entries; columns 3 + 2 put
        # slice 3 alone here (among others there) and slice 4 alone in both. Seed 0: normed
        # among others, slice 4 would not be the one kept.
        dict(
            build=lambda: (_permuted(1 << 20, 5), {"prev": _prev(1 << 20, 5, kept=2.0)}),
            method=fs.LnStructured(count=4, n=2, dim=1),
            place="S1",
            seed=0,
        ),
        dict(
            build=lambda: (torch.randn(8, 6).bfloat16(), {"prev": _prev(8, 6)}),
            method=fs.LnStructured(0.5, n=1, dim=0),
            place="S0",
        ),
        dict(
            build=lambda: (torch.randn(8, 6).half(), None),
            method=fs.LnStructured(0.5, n=2, dim=0),
            place="S0",
        ),
    ]
    cases.append(
        dict(
            build=lambda: (torch.randn(6, 8), {"data": {"generator": _generator(11)}}),
            method=fs.RandomStructured(count=3, dim=0),
            place="S1",
        )
    )
    return _run(cases)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _covering(rank: int, world: int) -> list[str]:
    """The gain-weighted sharded search equals ``lowest_covering`` on the whole vector."""
    import torch.distributed as dist

    from funcsparse._select import lowest_covering, order_keys
    from funcsparse.distributed.strategies.structured import _lowest_covering_sharded

    failures = []
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    for trial in range(12):
        torch.manual_seed(trial)
        n = [1, 2, 9, 40, 300][trial % 5]
        scores = torch.randint(-2, 3, (n,)).float() if trial % 2 else torch.randn(n)
        if trial % 3 == 0:
            scores[torch.randint(0, n, (n // 3,))] = special[torch.randint(0, 5, (n // 3,))]
        gains = torch.randint(0, 4, (n,))
        order = torch.randperm(n)  # the units' positions, dealt to the ranks in this order
        mine = order[: n // 3] if rank == 0 else order[n // 3 :]
        total = int(gains.sum())
        for needed in (-1, 0, 1, total // 3, total // 2, total - 1, total, total + 1):
            want = lowest_covering(scores, gains, needed)[mine]
            got = _lowest_covering_sharded(
                order_keys(scores[mine]), mine, gains[mine], needed, n, [dist.group.WORLD]
            )
            if not torch.equal(got, want):
                failures.append(f"trial {trial}, n={n}, needed={needed}")
    return failures


def _refusals(rank: int, world: int) -> list[str]:
    from torch.distributed.tensor import distribute_tensor

    import funcsparse as fs

    meshes = _meshes()
    mesh = meshes["1d"]
    cases = [
        (fs.NM(n=2, m=4), (4, 12), "S1", {}),  # columns split at 6
        (fs.NM(n=1, m=2, axis=0), (6, 4), "S0", {}),  # rows split at 3
        (fs.Wanda(0.5), (4, 10), "S1", {"input_norms": torch.rand(10)}),
        (fs.WeightNorm(0.5), (4, 10), "S1", {}),  # (1, 4) blocks, columns split at 5
        (fs.WeightNorm(0.5, sparse_block_shape=(2, 2)), (6, 8), "S0", {}),  # rows split at 3
        (fs.WeightNorm(0.0, sparse_block_shape=(1, 32)), (4, 16), "S1", {}),  # fitted (1, 16)
        (fs.LnStructured(0.5, n=2, dim=0), (6, 8), "S1", {}),
        (fs.LnStructured(0.5, n=1, dim=1), (6, 8), "S0", {"scores": torch.rand(6, 8)}),
        (fs.Wanda(n=2, m=4), (4, 16), "S1", {"input_norms": torch.rand(16)}),  # cut at 8
    ]
    messages = []
    for method, shape, place, data in cases:
        leaf = distribute_tensor(torch.randn(*shape), mesh, _placements(place))
        kwargs = {key: {"w": value} for key, value in data.items()}
        try:
            fs.compute_masks({"w": leaf}, {"w": method}, **kwargs)
        except ValueError as err:
            messages.append(str(err))
        else:
            messages.append(f"no error: {method} on {shape} {place}")
    return messages


def _everything(rank: int, world: int) -> dict[str, Any]:
    """Every part's result (or the traceback that ended it): one spawn for the whole file."""
    import traceback

    parts = {
        "local": _local_methods,
        "weight_norm": _weight_norm,
        "slices": _slice_methods,
        "refusals": _refusals,
        "covering": _covering,
    }
    results: dict[str, Any] = {}
    for name, part in parts.items():
        try:
            results[name] = part(rank, world)
        except Exception:  # reported by the part's test; the other parts still run
            results[name] = traceback.format_exc()
    return results


# -- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    """The results of both ranks (spawning costs seconds: one run for the module)."""
    return run_ranks(_everything)


def _part(ranks: list[dict[str, Any]], name: str) -> list[Any]:
    results = [result[name] for result in ranks]
    for result in results:
        assert not isinstance(result, str), result  # a traceback
    return results


def test_local_methods_match_single_process(ranks: list[dict[str, Any]]) -> None:
    """NM, Wanda and NearlyDiagonal: local pieces, no collective, the full mask bit for bit."""
    for count, failures in _part(ranks, "local"):
        assert count >= 49
        assert failures == []


def test_weight_norm_matches_single_process(ranks: list[dict[str, Any]]) -> None:
    """WeightNorm: blocks inside pieces, the block level selected across ranks."""
    for count, failures in _part(ranks, "weight_norm"):
        assert count > 90
        assert failures == []


def test_slice_methods_match_single_process(ranks: list[dict[str, Any]]) -> None:
    """LnStructured (slices whole on a rank) and RandomStructured (any placement)."""
    for count, failures in _part(ranks, "slices"):
        assert count > 40
        assert failures == []


def test_covering_search_matches_lowest_covering(ranks: list[dict[str, Any]]) -> None:
    """The gain-weighted search (WeightNorm after a prev_mask) equals the core's, on units
    dealt to the ranks out of order, with ties, NaN, infinities and signed zeros."""
    for failures in _part(ranks, "covering"):
        assert failures == []


def test_refusals_name_method_and_placement(ranks: list[dict[str, Any]]) -> None:
    """Placements that would need a gather are refused, naming the method and placement."""
    names = [
        "NM",
        "NM",
        "Wanda",
        "WeightNorm",
        "WeightNorm",
        "WeightNorm",
        "LnStructured",
        "LnStructured",
        "Wanda",
    ]
    places = [
        "Shard(dim=1)",
        "Shard(dim=0)",
        "Shard(dim=1)",
        "Shard(dim=1)",
        "Shard(dim=0)",
        "Shard(dim=1)",
        "Shard(dim=1)",
        "Shard(dim=0)",
        "Shard(dim=1)",
    ]
    for messages in _part(ranks, "refusals"):
        assert len(messages) == len(names)
        for message, name, place in zip(messages, names, places, strict=True):
            assert f"({name})" in message and f"{name} cannot compute" in message, message
            assert place in message, message
            assert "'w'" in message, message
        assert "straddle" in messages[0] and "multiple of m" in messages[0]
        assert "ranked on its own" in messages[2]
        assert "straddle" in messages[3]
        assert "sums of scores" in messages[7]
        assert "ranked on its own" in messages[8]  # a cut at a group boundary is still refused


def test_cuts_follow_nested_chunks() -> None:
    """The piece boundaries every rank computes alike: torch.chunk's split, mesh dim after
    mesh dim (here without processes: the cuts read the shape, placements and mesh sizes)."""
    from types import SimpleNamespace

    from torch.distributed.tensor import Replicate, Shard

    from funcsparse.distributed.strategies.structured import _cuts

    def expected(length: int, counts: list[int]) -> list[int]:
        pieces = [torch.arange(length)]
        for count in counts:
            pieces = [chunk for piece in pieces for chunk in torch.chunk(piece, count)]
        return sorted({int(p[-1]) + 1 for p in pieces if p.numel()} - {length})

    for length in (0, 1, 2, 3, 7, 8, 12, 13, 30):
        for sizes, placements in [
            ((2,), (Shard(0),)),
            ((3,), (Shard(0),)),
            ((4,), (Shard(0),)),
            ((2, 2), (Shard(0), Shard(0))),
            ((2, 3), (Shard(0), Shard(0))),
            ((3, 2), (Shard(0), Replicate())),
            ((2, 4), (Shard(1), Shard(0))),
            ((4, 1), (Replicate(), Shard(0))),
        ]:
            mesh = SimpleNamespace(size=lambda i, sizes=sizes: sizes[i])
            shards = SimpleNamespace(shape=(length, 5), placements=placements, mesh=mesh)
            counts = [n for n, p in zip(sizes, placements, strict=True) if p == Shard(0)]
            assert _cuts(shards, 0) == expected(length, counts), (length, sizes, placements)
