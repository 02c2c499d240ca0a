"""fs.distributions.uniform: one level for every leaf, the total count exact."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.distributions import level_rules, uniform
from funcsparse.methods._level import count_to_prune


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def pruned(levels: dict[str, float], params: dict[str, torch.Tensor]) -> list[int]:
    """What a method counting round(level * numel) prunes at every leaf."""
    return [count_to_prune("test", lv, None, params[p].numel()) for p, lv in levels.items()]


shapes = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 64), st.integers(1, 64)),
        st.tuples(st.integers(1, 16), st.integers(1, 16), st.sampled_from([1, 3]), st.just(3)),
    ),
    min_size=1,
    max_size=6,
)
targets = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 1.0]), st.floats(0, 1))


def test_a_hand_computed_case() -> None:
    params = {"a": meta(3, 5), "a.bias": meta(3), "b": meta(2, 3)}
    # round(0.5 * 21) = 10 (half to even): 10 * 15/21 = 7.14 and 10 * 6/21 = 2.86 -> 7 + 3
    assert uniform(params, sparsity=0.5) == {"a": 7 / 15, "b": 0.5}
    assert uniform(params, sparsity=0.0) == {"a": 0.0, "b": 0.0}
    assert uniform(params, sparsity=1.0) == {"a": 1.0, "b": 1.0}
    # equal remainders: the earlier leaf rounds up
    assert uniform({"x": meta(1, 3), "y": meta(1, 3)}, sparsity=0.5) == {"x": 2 / 3, "y": 1 / 3}


@given(shapes, targets)
def test_every_leaf_at_the_target_and_the_total_exact(
    layer_shapes: list[tuple[int, ...]], target: float
) -> None:
    params = {f"layers.{i}.weight": meta(*s) for i, s in enumerate(layer_shapes)}
    levels = uniform(params, sparsity=target)
    assert list(levels) == list(params)
    numels = [math.prod(s) for s in layer_shapes]
    counts = pruned(levels, params)
    total = round(target * sum(numels))
    assert sum(counts) == total
    for count, numel in zip(counts, numels, strict=True):
        share = total * numel / sum(numels)  # each leaf its share, rounded down or up
        assert math.floor(share) - 1e-9 <= count <= math.ceil(share) + 1e-9
        assert abs(count - target * numel) < 1 + 1e-9 * numel


@given(st.integers(1, 10**9), targets)
def test_one_leaf_counts_as_the_method_does(numel: int, target: float) -> None:
    params = {"w": meta(numel, 1)}
    (count,) = pruned(uniform(params, sparsity=target), params)
    assert count == count_to_prune("Magnitude", target, None, numel)


@given(st.lists(st.integers(1, 2**31), min_size=1, max_size=5), targets)
def test_exact_totals_for_huge_leaves(numels: list[int], target: float) -> None:
    params = {f"l{i}": meta(n, 2) for i, n in enumerate(numels)}  # up to 4.3e9 entries
    assert sum(pruned(uniform(params, sparsity=target), params)) == round(target * 2 * sum(numels))


@given(shapes, targets, st.integers(0, 3))
def test_masks_of_magnitude_and_random_hit_the_total(
    layer_shapes: list[tuple[int, ...]], target: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = {f"m.{i}": torch.randn(*s, generator=generator) for i, s in enumerate(layer_shapes)}
    levels = uniform(params, sparsity=target)
    total = round(target * sum(math.prod(s) for s in layer_shapes))
    for method in (fs.Magnitude(0.5), fs.Random(0.5, seed=seed)):
        masks = fs.compute_masks(params, level_rules(levels, method))
        assert sum(int((~masks[path]).sum()) for path in levels) == total


def test_dense_leaves_and_the_others_make_up() -> None:
    params = {"first": meta(10, 10), "mid": meta(10, 30), "last": meta(10, 10)}
    levels = uniform(params, sparsity=0.5, dense_first=True, dense_last=True)
    assert levels == {"first": 0.0, "mid": 250 / 300, "last": 0.0}
    assert uniform(params, sparsity=0.5, dense=["first", "l*"]) == levels
    assert uniform(params, sparsity=0.5, paths=["mid", "last"], dense="last") == {
        "mid": 200 / 300,
        "last": 0.0,
    }
    message = (
        "uniform: sparsity=0.9 prunes 450 of the 500 weights taking part, but the 2 leaf(s) "
        "kept dense ('first', 'last') hold 200 of them: at most 300 can be pruned (sparsity "
        "<= 0.6)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        uniform(params, sparsity=0.9, dense_first=True, dense_last=True)


def test_default_leaves_and_order() -> None:
    params = {
        "layers.2.weight": meta(4, 4),
        "layers.2.bias": meta(4),
        "layers.10.weight": meta(4, 4),
        "steps": torch.zeros(4, 4, dtype=torch.int64),
    }
    assert list(uniform(params, sparsity=0.5)) == ["layers.2.weight", "layers.10.weight"]
    levels = uniform(params, sparsity=0.5, dense_last=True)
    assert levels == {"layers.2.weight": 1.0, "layers.10.weight": 0.0}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sparsity": None}, TypeError, "uniform: sparsity must be a fraction in"),
        ({"sparsity": -0.1}, ValueError, r"uniform: sparsity must be a fraction in \[0, 1\]"),
        ({"sparsity": 0.5, "dense_last": 1}, TypeError, "uniform: dense_last must be a bool"),
        ({"sparsity": 0.5, "paths": "b"}, ValueError, "uniform: paths holds 'b', which matches"),
        ({"sparsity": 0.5, "dense": "a.bias"}, ValueError, "uniform: dense holds 'a.bias'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    params = {"a.weight": torch.zeros(4, 4), "a.bias": torch.zeros(4)}
    with pytest.raises(error, match=message):
        uniform(params, **kwargs)  # type: ignore[arg-type]  # reason: bad arguments on purpose: the test checks their errors
