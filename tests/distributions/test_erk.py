"""fs.distributions.erk: the ERK formula of Evci et al. 2020, exact total counts, options."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.distributions import erk, level_rules
from funcsparse.methods._level import count_to_prune


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def reference_erk(
    shapes: list[tuple[int, ...]],
    sparsity: float,
    *,
    kernel: bool = True,
    dense: frozenset[int] = frozenset(),
) -> list[float]:
    """The paper's ERK densities, restated: layer l keeps eps * sum(dims) / prod(dims) of
    its weights (ER: (n_out + n_in) / (n_out * n_in)); eps makes the kept weights total
    (1 - sparsity) * N over all layers; while the largest density exceeds 1, the layers of
    the largest raw density are made dense and eps is solved again (one step at a time,
    as the RigL code does). ``dense``: layers kept dense from the start."""
    numels = [math.prod(shape) for shape in shapes]
    raw = [
        sum(shape) / math.prod(shape) if kernel else (s[0] + s[1]) / (s[0] * s[1])
        for shape in shapes
        for s in [shape]
    ]
    kept_total = (1 - sparsity) * sum(numels)
    made_dense = set(dense)
    while True:
        free = [i for i in range(len(shapes)) if i not in made_dense]
        budget = kept_total - sum(numels[i] for i in made_dense)
        eps = budget / sum(raw[i] * numels[i] for i in free) if free else 0.0
        if not free or max(eps * raw[i] for i in free) <= 1:
            break
        top = max(raw[i] for i in free)
        made_dense |= {i for i in free if raw[i] == top}
    return [1.0 if i in made_dense else eps * raw[i] for i in range(len(shapes))]


def pruned_counts(levels: dict[str, float], params: dict[str, torch.Tensor]) -> dict[str, int]:
    """What a method counting round(level * numel) prunes at every leaf."""
    return {
        path: count_to_prune("test", level, None, params[path].numel())
        for path, level in levels.items()
    }


linear = st.tuples(st.integers(1, 64), st.integers(1, 64))
conv = st.tuples(
    st.integers(1, 32), st.integers(1, 32), st.sampled_from([1, 3, 5, 7]), st.sampled_from([1, 3])
)
layer_shapes = st.lists(st.one_of(linear, conv), min_size=1, max_size=6)
targets = st.one_of(st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0]), st.floats(0, 1))


def test_a_hand_computed_case() -> None:
    # raw densities 20/100 = 0.2 and 200/10000 = 0.02; eps = 5050 / 220 = 22.95 puts the
    # small layer at 4.59 > 1: it is made dense, and 4950 = eps * 200 gives eps = 24.75,
    # density 0.495 for the large one, which prunes 5050 of its 10000 weights.
    params = {"small": meta(10, 10), "large": meta(100, 100)}
    assert erk(params, sparsity=0.5) == {"small": 0.0, "large": 0.505}
    # a conv weight: (n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w)
    params = {"conv": meta(4, 2, 3, 3), "fc": meta(8, 18)}  # raw 12/72 = 1/6 and 26/144
    levels = erk(params, sparsity=0.75)  # kept 54 of 216 = eps * (12 + 26): eps = 54/38
    assert levels["conv"] == pytest.approx(1 - 54 / 38 / 6, abs=1 / 72)
    assert levels["fc"] == pytest.approx(1 - 54 / 38 * 26 / 144, abs=1 / 144)
    assert sum(pruned_counts(levels, params).values()) == 162


def test_several_passes_of_the_dense_solve() -> None:
    # raw densities 4001/4000, 1/8 and 1/256: the first solve (eps ~ 18.6) puts only the
    # 1x4000 leaf above 1; without it eps ~ 21.9 puts the 16x16 one above 1 as well
    shapes = [(1, 4000), (16, 16), (512, 512)]
    params = {f"l{i}": meta(*shape) for i, shape in enumerate(shapes)}
    kept = 0.1 * 266400
    first = kept / (4001 + 32 + 1024)
    assert 4001 / 4000 * first > 1 > first / 8
    second = (kept - 4000) / (32 + 1024)
    assert second / 8 > 1
    assert reference_erk(shapes, 0.9) == pytest.approx([1.0, 1.0, (kept - 4256) / 262144])
    assert erk(params, sparsity=0.9) == {"l0": 0.0, "l1": 0.0, "l2": 239760 / 262144}


@given(layer_shapes, targets, st.booleans())
def test_against_the_formula(shapes: list[tuple[int, ...]], target: float, kernel: bool) -> None:
    params = {f"layers.{i}.weight": meta(*shape) for i, shape in enumerate(shapes)}
    levels = erk(params, sparsity=target, kernel=kernel)
    assert list(levels) == list(params)
    counts = pruned_counts(levels, params)
    numels = [math.prod(shape) for shape in shapes]
    assert sum(counts.values()) == round(target * sum(numels))
    expected = reference_erk(shapes, target, kernel=kernel)
    for (path, count), numel, density in zip(counts.items(), numels, expected, strict=True):
        # one count of rounding, half a weight of the total's rounding, float noise
        assert abs(count - numel * (1 - density)) < 1.5 + 1e-9 * numel, path
        assert 0.0 <= levels[path] <= 1.0


@given(layer_shapes, targets, st.booleans(), st.booleans())
def test_first_and_last_dense(
    shapes: list[tuple[int, ...]], target: float, first: bool, last: bool
) -> None:
    params = {f"layers.{i}.weight": meta(*shape) for i, shape in enumerate(shapes)}
    forced = frozenset(([0] if first else []) + ([len(shapes) - 1] if last else []))
    numels = [math.prod(shape) for shape in shapes]
    total = round(target * sum(numels))
    if total > sum(n for i, n in enumerate(numels) if i not in forced):
        with pytest.raises(ValueError, match=r"erk: sparsity=.* kept dense \('layers\.0"):
            erk(params, sparsity=target, dense_first=first, dense_last=last)
        assert forced
        return
    levels = erk(params, sparsity=target, dense_first=first, dense_last=last)
    counts = list(pruned_counts(levels, params).values())
    assert sum(counts) == total
    assert all(counts[i] == 0 for i in forced)
    expected = reference_erk(shapes, target, dense=forced)
    for count, numel, density in zip(counts, numels, expected, strict=True):
        assert abs(count - numel * (1 - density)) < 1.5 + 1e-9 * numel


def test_first_and_last_follow_the_dicts_order() -> None:
    # named_parameters order, not sorted: "layers.10" is last, "layers.2" is not first
    params = {
        "layers.2.weight": meta(16, 16),
        "layers.2.bias": meta(16),
        "layers.10.weight": meta(16, 16),
        "head.weight": meta(4, 16),
    }
    levels = erk(params, sparsity=0.25, dense_first=True, dense_last=True)
    assert list(levels) == ["layers.2.weight", "layers.10.weight", "head.weight"]
    assert levels["layers.2.weight"] == 0.0 and levels["head.weight"] == 0.0
    assert levels["layers.10.weight"] == 144 / 256  # round(0.25 * 576), all from the middle
    by_name = erk(params, sparsity=0.25, dense=["layers.2.weight", "head.*"])
    assert by_name == levels


def test_paths_choose_the_leaves() -> None:
    params = {"a.weight": meta(8, 8), "a.bias": meta(8), "b.weight": meta(8, 8)}
    assert list(erk(params, sparsity=0.5)) == ["a.weight", "b.weight"]  # 1-D left out
    levels = erk(params, sparsity=0.5, paths="a.*")
    assert list(levels) == ["a.weight", "a.bias"]
    assert sum(pruned_counts(levels, params).values()) == 36
    # a 1-D leaf of n keeps eps * n / n = eps: denser than the 8x8 weight (16/64)
    assert levels["a.bias"] < levels["a.weight"]
    assert list(erk(params, sparsity=0.5, paths=["b.weight", "a.weight"])) == [
        "a.weight",
        "b.weight",
    ]


def test_targets_zero_and_one() -> None:
    params = {"a": meta(3, 5), "b": meta(7, 2, 3, 3), "empty": meta(0, 4)}
    assert erk(params, sparsity=0.0) == {"a": 0.0, "b": 0.0, "empty": 0.0}
    assert erk(params, sparsity=1.0) == {"a": 1.0, "b": 1.0, "empty": 0.0}
    assert erk(params, sparsity=0, dense_first=True) == {"a": 0.0, "b": 0.0, "empty": 0.0}
    with pytest.raises(ValueError, match=r"erk: sparsity=1.0 prunes 141 .* \('a'\) hold 15"):
        erk(params, sparsity=1.0, dense_first=True)


def test_unreachable_target_names_the_dense_leaves() -> None:
    params = {"first": meta(100, 100), "mid": meta(10, 10), "last": meta(100, 100)}
    message = (
        "erk: sparsity=0.9 prunes 18090 of the 20100 weights taking part, but the 2 leaf(s) "
        "kept dense ('first', 'last') hold 20000 of them: at most 100 can be pruned "
        "(sparsity <= 0.00497512)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        erk(params, sparsity=0.9, dense_first=True, dense_last=True)
    # just reachable: everything else pruned
    levels = erk(params, sparsity=100 / 20100, dense_first=True, dense_last=True)
    assert levels == {"first": 0.0, "mid": 1.0, "last": 0.0}


@given(
    st.lists(st.tuples(st.integers(1, 40_000), st.integers(1, 40_000)), min_size=1, max_size=5),
    targets,
)
def test_exact_totals_for_huge_leaves(shapes: list[tuple[int, int]], target: float) -> None:
    # up to 1.6e9 entries per leaf, shapes only (meta tensors)
    params = {f"l{i}": meta(*shape) for i, shape in enumerate(shapes)}
    levels = erk(params, sparsity=target)
    counts = pruned_counts(levels, params)
    assert sum(counts.values()) == round(target * sum(math.prod(s) for s in shapes))
    for path, count in counts.items():
        assert 0 <= count <= params[path].numel()
    uniform = fs.distributions.uniform(params, sparsity=target)
    assert sum(pruned_counts(uniform, params).values()) == sum(counts.values())


@given(st.lists(st.one_of(linear, conv), min_size=1, max_size=4), targets, st.integers(0, 3))
def test_masks_of_magnitude_and_random_hit_the_total(
    shapes: list[tuple[int, ...]], target: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = {f"m.{i}.weight": torch.randn(*s, generator=generator) for i, s in enumerate(shapes)}
    params["m.bias"] = torch.randn(3, generator=generator)
    levels = erk(params, sparsity=target)
    total = round(target * sum(math.prod(s) for s in shapes))
    for method in (fs.Magnitude(0.5), fs.Random(0.5, seed=seed)):
        masks = fs.compute_masks(params, level_rules(levels, method))
        assert masks["m.bias"] is None
        assert sum(int((~masks[path]).sum()) for path in levels) == total


def test_the_levels_feed_a_pruner() -> None:
    params = {"fc1.weight": torch.randn(32, 16), "fc2.weight": torch.randn(4, 32)}
    levels = erk(params, sparsity=0.9)
    pruner = fs.Pruner(level_rules(levels, fs.Magnitude(0.9)))
    masks, _ = pruner.update(params, pruner.init(params))
    assert sum(int((~masks[path]).sum()) for path in levels) == round(0.9 * (512 + 128))


@pytest.mark.parametrize("method", [fs.SET(0.9, every=2, seed=3), fs.RigL(0.9, every=2, seed=3)])
def test_the_levels_feed_set_and_rigl(method: fs.SET | fs.RigL) -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = {"conv.weight": (8, 3, 3, 3), "fc1.weight": (32, 72), "fc2.weight": (4, 32)}
    params = {path: torch.randn(*s, generator=generator) for path, s in shapes.items()}
    levels = erk(params, sparsity=0.9, dense_last=True)
    total = round(0.9 * sum(math.prod(s) for s in shapes.values()))
    pruner = fs.Pruner(level_rules(levels, method))
    state = pruner.init(params)
    for _ in range(5):  # the count per leaf stays, so the total does, across updates
        grads = {path: torch.randn(*s, generator=generator) for path, s in shapes.items()}
        masks, state = pruner.update(params, state, grads=grads)
        counts = {path: int((~masks[path]).sum()) for path in levels}
        assert sum(counts.values()) == total and counts["fc2.weight"] == 0
        params = fs.apply_masks(params, masks)


def test_erdos_renyi_ignores_the_kernel() -> None:
    # ER: (n_out + n_in) / (n_out * n_in) for both; the kernel dims change only the numel
    params = {"conv": meta(8, 4, 3, 3), "fc": meta(8, 4)}
    levels = erk(params, sparsity=0.5, kernel=False)
    kept = 0.5 * (288 + 32)
    eps = kept / (12 / 32 * 320)
    assert levels["conv"] == pytest.approx(1 - eps * 12 / 32, abs=1 / 288)
    assert levels["conv"] == pytest.approx(levels["fc"], abs=1 / 32)
    with pytest.raises(ValueError, match=r"erk: the leaf at 'b' has shape \(4,\); kernel=False"):
        erk({"a": meta(4, 4), "b": meta(4)}, sparsity=0.5, kernel=False, paths=["a", "b"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sparsity": "0.9"}, TypeError, r"erk: sparsity must be a fraction in \[0, 1\], got str"),
        ({"sparsity": True}, TypeError, "erk: sparsity must be a fraction"),
        ({"sparsity": 1.5}, ValueError, r"erk: sparsity must be a fraction in \[0, 1\], got 1.5"),
        ({"sparsity": math.nan}, ValueError, "erk: sparsity must be a fraction"),
        ({"sparsity": 0.5, "kernel": 1}, TypeError, "erk: kernel must be a bool, got int 1"),
        ({"sparsity": 0.5, "dense_first": "yes"}, TypeError, "erk: dense_first must be a bool"),
        ({"sparsity": 0.5, "paths": 3}, TypeError, "erk: paths must be a leaf path or glob"),
        ({"sparsity": 0.5, "dense": [None]}, TypeError, "erk: dense must be a leaf path"),
        ({"sparsity": 0.5, "paths": "c.*"}, ValueError, r"erk: paths holds 'c.\*', which matches"),
        ({"sparsity": 0.5, "dense": "a.bias"}, ValueError, "erk: dense holds 'a.bias', which"),
        ({"sparsity": 0.5, "paths": "a.scale"}, ValueError, "erk: paths chose the leaf at 'a.s"),
        ({"sparsity": 0.5, "paths": "a.steps"}, TypeError, "erk: paths chose the leaf at 'a.st"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    params = {
        "a.weight": torch.zeros(4, 4),
        "a.bias": torch.zeros(4),
        "a.scale": torch.tensor(1.0),
        "a.steps": torch.zeros(4, 4, dtype=torch.int64),
    }
    with pytest.raises(error, match=message):
        erk(params, **kwargs)  # type: ignore[arg-type]  # reason: bad arguments on purpose: the test checks their errors


def test_bad_params() -> None:
    with pytest.raises(
        TypeError, match=r"erk: expected a pytree of tensors.*got float 1.0 at 'a.0'"
    ):
        erk({"a": [1.0, 2.0], "b": "x"}, sparsity=0.5)
    with pytest.raises(ValueError, match="erk: params holds no floating tensor of 2 or more"):
        erk({"bias": torch.zeros(3)}, sparsity=0.5)


def test_nothing_is_mutated_and_nested_trees_work() -> None:
    weight = torch.randn(6, 5)
    params = {"block": {"fc": {"weight": weight}, "norm": torch.ones(5)}, "head": [meta(2, 6)]}
    before = weight.clone()
    levels = erk(params, sparsity=0.5)
    assert list(levels) == ["block.fc.weight", "head.0"]
    assert torch.equal(weight, before)
    assert (
        sum(pruned_counts(levels, {"block.fc.weight": weight, "head.0": meta(2, 6)}).values()) == 21
    )
