"""Sharded Magnitude, Movement, Random and GlobalMagnitude equal the one-process masks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.distributed._spawn import run_ranks


def _cases() -> list[tuple[str, Any, tuple[int, ...], str]]:
    import funcsparse as fs

    methods = [
        ("Magnitude(0.5)", fs.Magnitude(0.5)),
        ("Magnitude(count=7)", fs.Magnitude(count=7)),
        ("Magnitude(0.0)", fs.Magnitude(0.0)),
        ("Magnitude(1.0)", fs.Magnitude(1.0)),
        ("Random(0.3, seed=5)", fs.Random(0.3, seed=5)),
        ("Movement(0.4)", fs.Movement(0.4)),
    ]
    shapes = [(8, 6), (7, 5), (3, 4, 5), (9,), (1, 3)]
    values = ["randn", "ties", "zeros", "nan"]
    return [
        (n, m, s, v)
        for n, m in methods
        for s in shapes
        for v in values
        if m.count is None or m.count <= torch.Size(s).numel()
    ]


def _tensor(shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "ties":
        x = torch.randint(-2, 3, shape, generator=g).float()
    elif kind == "zeros":
        x = torch.zeros(shape)
    elif kind == "nan":
        x = x.masked_fill(torch.rand(shape, generator=g) < 0.2, float("nan"))
    return x


def _worker_single(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    failures = []
    for i, (name, method, shape, kind) in enumerate(_cases()):
        full = _tensor(shape, kind, i)
        scores = _tensor(shape, "ties" if i % 2 else "randn", i + 1000)
        prev = torch.rand(shape, generator=torch.Generator().manual_seed(i)) > 0.3
        for dim in range(len(shape)):
            for placement in (Shard(dim), Replicate()):
                dt = distribute_tensor(full, mesh, [placement])
                data: dict[str, Any] = {}
                if isinstance(method, fs.Movement):
                    data["scores"] = {"w": distribute_tensor(scores, mesh, [placement])}
                for use_prev in (False, True):
                    kwargs = dict(data)
                    if use_prev:
                        kwargs["prev_masks"] = {"w": distribute_tensor(prev, mesh, [placement])}
                    got = fs.compute_masks({"w": dt}, {"w": method}, **kwargs)["w"]
                    one = {k: v["w"].full_tensor() for k, v in data.items()}
                    if use_prev:
                        one["prev_mask"] = prev
                    want = fs.compute_masks(
                        {"w": full},
                        {"w": method},
                        **{k: {"w": v} for k, v in one.items() if k != "prev_mask"},
                        prev_masks={"w": prev} if use_prev else None,
                    )["w"]
                    if type(got).__name__ != "DTensor" or got.placements != dt.placements:
                        failures.append(
                            f"{name} {shape} {placement}: not a DTensor placed as the leaf"
                        )
                    elif not torch.equal(got.full_tensor(), want):
                        failures.append(f"{name} {shape} {kind} {placement} prev={use_prev}")
    return failures


def _worker_two_ranks(rank: int, world: int) -> dict[str, list[str]]:
    """Every 2-rank check of this file, on one spawn."""
    return {
        "single": _worker_single(rank, world),
        "global": _worker_global(rank, world),
        "large": _worker_large(rank, world),
        "refusals": _worker_refusals(rank, world),
    }


@pytest.fixture(scope="module")
def two_ranks() -> list[dict[str, list[str]]]:
    return run_ranks(_worker_two_ranks)


def test_entrywise_methods_equal_one_process_masks(two_ranks: list[dict[str, list[str]]]) -> None:
    assert [r["single"] for r in two_ranks] == [[], []]


def _worker_global(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    failures = []
    for i, kind in enumerate(["randn", "ties", "zeros", "nan"] * 3):
        shapes = [(8, 6), (5,), (7, 3)]
        fulls = [
            _tensor(s, kind, 10 * i + j).to(dtype)
            for j, (s, dtype) in enumerate(
                zip(shapes, [torch.float32, torch.float64, torch.float16], strict=True)
            )
        ]
        prevs = [
            torch.rand(s, generator=torch.Generator().manual_seed(i + j)) > 0.2
            for j, s in enumerate(shapes)
        ]
        for method in (
            fs.GlobalMagnitude(0.5),
            fs.GlobalMagnitude(count=11),
            fs.GlobalMagnitude(0.9),
        ):
            for use_prev in (False, True):
                params = {
                    f"w{j}": distribute_tensor(f, mesh, [Shard(0)]) for j, f in enumerate(fulls)
                }
                prev = {
                    f"w{j}": distribute_tensor(p, mesh, [Shard(0)]) for j, p in enumerate(prevs)
                }
                got = fs.compute_masks(params, {"*": method}, prev_masks=prev if use_prev else None)
                want = fs.compute_masks(
                    {f"w{j}": f for j, f in enumerate(fulls)},
                    {"*": method},
                    prev_masks={f"w{j}": p for j, p in enumerate(prevs)} if use_prev else None,
                )
                for key in want:
                    if not torch.equal(got[key].full_tensor(), want[key]):
                        failures.append(f"{method} {kind} prev={use_prev} {key}")
    return failures


def test_global_magnitude_equals_one_process_masks(
    two_ranks: list[dict[str, list[str]]],
) -> None:
    assert [r["global"] for r in two_ranks] == [[], []]


def _worker_large(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    failures = []
    g = torch.Generator().manual_seed(7)
    fulls = {
        "randn": torch.randn(1500, 1400, generator=g),
        "ties": torch.randint(-3, 4, (1500, 1400), generator=g).float(),
    }
    for kind, full in fulls.items():
        for placement in (Shard(0), Shard(1)):
            dt = distribute_tensor(full, mesh, [placement])
            for method in (fs.Magnitude(0.5), fs.Random(0.7, seed=3)):
                got = fs.compute_masks({"w": dt}, {"w": method})["w"].full_tensor()
                if not torch.equal(got, fs.compute_masks({"w": full}, {"w": method})["w"]):
                    failures.append(f"{method} {kind} {placement}")
        other = torch.randn(900, 700, generator=g)
        params = {
            "a": distribute_tensor(full, mesh, [Shard(0)]),
            "b": distribute_tensor(other, mesh, [Shard(0)]),
        }
        got = fs.compute_masks(params, {"*": fs.GlobalMagnitude(0.6)})
        want = fs.compute_masks({"a": full, "b": other}, {"*": fs.GlobalMagnitude(0.6)})
        for key in want:
            if not torch.equal(got[key].full_tensor(), want[key]):
                failures.append(f"GlobalMagnitude {kind} {key}")
    return failures


def test_large_leaves_with_many_chunks_and_heavy_ties(
    two_ranks: list[dict[str, list[str]]],
) -> None:
    assert [r["large"] for r in two_ranks] == [[], []]


def _worker_mesh_2d(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (2, 2))
    failures = []
    placements = [
        (Shard(0), Shard(1)),
        (Replicate(), Shard(0)),
        (Shard(1), Replicate()),
        (Shard(0), Shard(0)),
    ]
    for i, kind in enumerate(["randn", "ties"]):
        full = _tensor((9, 7), kind, i)
        prev = torch.rand(9, 7, generator=torch.Generator().manual_seed(i)) > 0.3
        for placement in placements:
            for method in (fs.Magnitude(0.5), fs.Random(0.4, seed=2), fs.Magnitude(count=30)):
                dt = distribute_tensor(full, mesh, list(placement))
                dprev = distribute_tensor(prev, mesh, list(placement))
                got = fs.compute_masks({"w": dt}, {"w": method}, prev_masks={"w": dprev})["w"]
                want = fs.compute_masks({"w": full}, {"w": method}, prev_masks={"w": prev})["w"]
                if got.placements != tuple(placement) or not torch.equal(got.full_tensor(), want):
                    failures.append(f"{method} {kind} {placement}")
            params = {
                "a": distribute_tensor(full, mesh, list(placement)),
                "b": distribute_tensor(full.T.contiguous(), mesh, list(placement)),
            }
            got_g = fs.compute_masks(params, {"*": fs.GlobalMagnitude(0.5)})
            want_g = fs.compute_masks(
                {"a": full, "b": full.T.contiguous()}, {"*": fs.GlobalMagnitude(0.5)}
            )
            for key in want_g:
                if not torch.equal(got_g[key].full_tensor(), want_g[key]):
                    failures.append(f"GlobalMagnitude {kind} {placement} {key}")
    return failures


def test_four_ranks_on_a_2d_mesh() -> None:
    assert run_ranks(_worker_mesh_2d, world=4) == [[], [], [], []]


def _worker_refusals(rank: int, world: int) -> list[str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    import funcsparse as fs

    mesh = init_device_mesh("cpu", (world,))
    full = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    messages = []
    partial = DTensor.from_local(full / world, mesh, [Partial()])
    sharded = distribute_tensor(full, mesh, [Shard(0)])
    cases = [
        lambda: fs.compute_masks({"w": partial}, {"w": fs.Magnitude(0.5)}),
        lambda: fs.compute_masks({"w": sharded}, {"w": fs.Magnitude(0.5)}, batch_dims=1),
        lambda: fs.compute_masks({"a": sharded, "b": full}, {"*": fs.GlobalMagnitude(0.5)}),
        lambda: fs.compute_masks(
            {"a": sharded, "b": distribute_tensor(full, mesh, [Replicate()])},
            {"*": fs.GlobalMagnitude(0.5)},
        ),
        lambda: fs.compute_masks(
            {"w": sharded},
            {"w": fs.Magnitude(0.5)},
            prev_masks={"w": distribute_tensor(full > 0, mesh, [Shard(1)])},
        ),
    ]
    cases += [
        lambda: fs.compute_masks(
            {"w": full},
            {"w": fs.Magnitude(0.5)},
            prev_masks={"w": distribute_tensor(full > 0, mesh, [Shard(0)])},
        ),
        lambda: fs.compute_masks({"a": sharded, "b": partial}, {"*": fs.Magnitude(0.5)}),
    ]
    for case in cases:
        try:
            with fs.distributed.counting() as traffic:
                case()
        except ValueError as err:
            messages.append(f"{err!s} [sent {traffic.calls}]")
        else:
            messages.append("no error")
    return messages


def test_refusals_name_the_function_the_method_and_the_placement(
    two_ranks: list[dict[str, list[str]]],
) -> None:
    messages = two_ranks[0]["refusals"]
    assert "compute_masks: rule 'w' (Magnitude)" in messages[0] and "Partial" in messages[0]
    assert "batch_dims=1 with DTensor leaves" in messages[1]
    assert "plain tensors beside DTensors" in messages[2]
    assert "GlobalMagnitude" in messages[3] and "replicated" in messages[3]
    assert "prev_mask is a DTensor placed (Shard(dim=1),)" in messages[4]
    assert (
        "at 'w': prev_masks is a DTensor placed (Shard(dim=0),) for a plain tensor leaf"
        in messages[5]
    )
    # Refused in the check phase: leaf 'a' is fine, but nothing is sent before 'b' is refused.
    assert "at 'b'" in messages[6] and "Partial" in messages[6] and messages[6].endswith("[sent 0]")
