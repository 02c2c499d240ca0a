"""fs.SET and fs.RigL as methods: the initial mask, one drop-and-grow update, the schedule of
updates and drop fractions, and the checks (issue 13)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.methods._seeds import leaf_seed
from funcsparse.testing import check_masks
from tests.helpers import tie_free

DYNAMIC = [fs.SET, fs.RigL]


def _update(method: fs.MaskMethod, w: torch.Tensor, m: torch.Tensor, step: int, **data):
    if isinstance(method, fs.RigL) and "grads" not in data:
        data["grads"] = torch.randn(w.shape, generator=torch.Generator().manual_seed(step))
    return method(w, current_mask=m, step=step, **data)


# -- the initial mask ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", DYNAMIC, ids=lambda c: c.__name__)
def test_the_initial_mask_is_random_at_the_exact_count_as_fs_random(cls: type) -> None:
    w = tie_free((16, 24), seed=0)
    for level in ({"sparsity": 0.9}, {"count": 7}):
        method = cls(**level, seed=5)
        mask = method(w)
        assert torch.equal(mask, fs.Random(**level, seed=5)(w))
        zeros = 7 if "count" in level else round(0.9 * 384)
        assert int((~mask).sum()) == zeros
    # through compute_masks every leaf has its own stream, as fs.Random's
    params = {"a": w, "b": w.clone()}
    masks = fs.compute_masks(params, {"*": cls(0.5, seed=3)})
    assert torch.equal(masks["a"], fs.Random(0.5, seed=leaf_seed(3, "a"))(w))
    assert not torch.equal(masks["a"], masks["b"])
    check_masks(params, {"*": cls(0.5, seed=3)})


# -- one update: RigL by hand ----------------------------------------------------------------


def test_rigl_drops_the_smallest_kept_and_grows_the_largest_gradients() -> None:
    method = fs.RigL(count=4, drop_fraction=0.5, every=10)
    m = torch.tensor([True, True, True, True, False, False, False, False])
    w = torch.tensor([0.3, -5.0, 0.1, 2.0, 0.0, 0.0, 0.0, 0.0])
    g = torch.tensor([9.0, 9.0, 9.0, 9.0, 0.5, -3.0, 0.2, 2.5])
    new = method(w, current_mask=m, step=10, grads=g)
    # 4 kept: drop round(0.5 * 4) = 2 smallest |w| (0.1, 0.3); grow |g| 3.0 and 2.5
    assert new.tolist() == [False, True, False, True, False, True, False, True]


def test_rigl_ties_drop_and_grow_the_lower_index_first() -> None:
    method = fs.RigL(count=3, drop_fraction=1 / 3, every=1)
    m = torch.tensor([True, True, True, False, False, False])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    g = torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    new = method(w, current_mask=m, step=1, grads=g)
    assert new.tolist() == [False, True, True, True, False, False]


def test_a_weight_dropped_in_an_update_is_not_regrown_in_it() -> None:
    method = fs.RigL(count=2, drop_fraction=0.5, every=5)
    m = torch.tensor([True, True, False, False])
    w = torch.tensor([0.1, 4.0, 0.0, 0.0])
    g = torch.tensor([100.0, 0.0, 1.0, 0.5])  # the dropped 0.1 has by far the largest |g|
    new = method(w, current_mask=m, step=5, grads=g)
    assert new.tolist() == [False, True, True, False]


def test_rigl_nan_gradients_rank_last_and_nan_weights_are_never_dropped() -> None:
    method = fs.RigL(count=2, drop_fraction=0.5, every=1)
    m = torch.tensor([True, True, False, False])
    w = torch.tensor([math.nan, 3.0, 0.0, 0.0])
    g = torch.tensor([0.0, 0.0, math.nan, 1e-9])
    assert method(w, current_mask=m, step=1, grads=g).tolist() == [True, False, False, True]


# -- SET --------------------------------------------------------------------------------------


def test_set_growth_is_reproducible_from_the_seed_and_step() -> None:
    w = tie_free((32, 32), seed=1)
    method = fs.SET(0.8, every=10, seed=11)
    m = method(w)
    w = w * m
    new = method(w, current_mask=m, step=10)
    assert torch.equal(new, fs.SET(0.8, every=10, seed=11)(w, current_mask=m, step=10))
    assert not torch.equal(new, fs.SET(0.8, every=10, seed=12)(w, current_mask=m, step=10))
    assert not torch.equal(new, method(w, current_mask=m, step=20))
    kept = int(m.sum())
    d = round(0.3 * kept)
    assert int((new & ~m).sum()) == d == int((m & ~new).sum())
    # the drop is by magnitude: every dropped |w| is at most every surviving kept |w|
    dropped, stayed = w[m & ~new].abs(), w[m & new].abs()
    assert float(dropped.max()) <= float(stayed.min())
    # the growth is fs.Random's draw among the candidates, from the step's seed
    seed = leaf_seed(11, "SET growth at step 10")
    not_grown = fs.Random(count=kept + d, seed=seed)(w, prev_mask=~m)
    assert torch.equal(new & ~m, ~m & ~not_grown)


def test_set_growth_covers_the_candidates_over_many_seeds() -> None:
    # uniform at random: every pruned position grows under some seed
    w = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    m = torch.tensor([True, True, False, False, False, False])
    grown = torch.zeros(6, dtype=torch.bool)
    for seed in range(64):
        new = fs.SET(count=4, drop_fraction=0.5, every=1, seed=seed)(w, current_mask=m, step=1)
        assert new.tolist()[:2] == [False, True]  # 1.0 dropped, never regrown
        grown |= new & ~m
    assert grown.tolist() == [False, False, True, True, True, True]


# -- invariants over many updates ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    cls=st.sampled_from(DYNAMIC),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    level=st.floats(0.0, 1.0),
    drop=st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0]),
    every=st.integers(1, 3),
    seed=st.integers(0, 2**64 - 1),
    ties=st.booleans(),
)
def test_counts_are_exact_and_constant_over_many_updates(
    cls: type, shape: tuple[int, int], level: float, drop: float, every: int, seed: int,
    ties: bool,
) -> None:  # fmt: skip
    method = cls(level, drop_fraction=drop, every=every, end_step=20, seed=seed)
    g = torch.Generator().manual_seed(seed % 2**63)
    w = (
        torch.randint(-2, 3, shape, generator=g).float()
        if ties
        else torch.randn(shape, generator=g)
    )
    k = round(level * w.numel())
    m = method(w)
    for step in range(1, 24):
        w = (w + 0.1 * torch.randn(shape, generator=g)) * m
        new = _update(method, w, m, step)
        assert new.dtype == torch.bool and new.shape == w.shape
        assert int((~new).sum()) == k
        kept = int(m.sum())
        d = method.drop_count(kept, w.numel() - kept, step)
        assert int((new & ~m).sum()) == d == int((m & ~new).sum())
        if not method.updates_at(step):
            assert torch.equal(new, m)
        m = new


# -- update steps and drop fractions ---------------------------------------------------------


def test_updates_at_the_interval_and_before_end_step_only() -> None:
    method = fs.RigL(0.9, every=100, end_step=350)
    assert [t for t in range(0, 1000, 50) if method.updates_at(t)] == [100, 200, 300]
    assert [t for t in range(0, 501, 100) if fs.SET(0.5).updates_at(t)] == [100, 200, 300, 400, 500]
    assert not fs.SET(0.5, end_step=100).updates_at(100)
    with pytest.raises(ValueError, match=r"RigL.updates_at: step=-1 must be >= 0"):
        method.updates_at(-1)
    with pytest.raises(TypeError, match=r"RigL.updates_at: step must be an int"):
        method.updates_at(1.0)  # type: ignore[arg-type]  # reason: a float step on purpose: the test checks the TypeError


def test_rigl_drop_fraction_is_the_cosine_decay() -> None:
    method = fs.RigL(0.9, drop_fraction=0.3, every=10, end_step=1000)
    for t in range(10, 1000, 10):
        assert method.drop_fraction_at(t) == pytest.approx(
            0.15 * (1 + math.cos(math.pi * t / 1000))
        )
    assert method.drop_fraction_at(0) == method.drop_fraction_at(1000) == 0.0
    assert method.drop_fraction_at(15) == 0.0  # off the interval
    assert fs.RigL(0.9, drop_fraction=0.25).drop_fraction_at(10**6) == 0.25  # no end_step
    assert fs.SET(0.9, drop_fraction=0.25, every=10).drop_fraction_at(20) == 0.25


def test_drop_count_rounds_half_to_even_and_is_capped_by_the_pruned() -> None:
    method = fs.SET(0.5, drop_fraction=0.5, every=1)
    assert [method.drop_count(kept, 100, 1) for kept in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert method.drop_count(10, 3, 1) == 3
    rigl = fs.RigL(0.9, drop_fraction=0.3, every=100, end_step=1000)
    assert rigl.drop_count(1000, 9000, 100) == round(0.15 * (1 + math.cos(math.pi / 10)) * 1000)


@pytest.mark.parametrize("cls", DYNAMIC, ids=lambda c: c.__name__)
def test_off_interval_and_after_end_step_the_mask_is_unchanged(cls: type) -> None:
    w = tie_free((8, 8), seed=3)
    method = cls(0.5, every=10, end_step=30)
    m = method(w)
    for step in (5, 11, 30, 40, 1000):
        new = method(w * m, current_mask=m, step=step)  # RigL needs no grads there
        assert torch.equal(new, m) and new is not m


# -- ERK levels ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", DYNAMIC, ids=lambda c: c.__name__)
def test_levels_from_a_distribution_feed_the_methods(cls: type) -> None:
    params = {
        "conv.weight": torch.randn(8, 3, 3, 3),
        "fc1.weight": torch.randn(64, 72),
        "fc2.weight": torch.randn(10, 64),
    }
    levels = fs.distributions.erk(params, sparsity=0.9)
    rules = fs.distributions.level_rules(levels, cls(0.5, every=7, seed=2))
    assert all(type(r) is cls and r.every == 7 and r.seed == 2 for r in rules.values())
    assert {p: r.sparsity for p, r in rules.items()} == levels
    masks = fs.compute_masks(params, rules)
    for path, mask in masks.items():
        assert int((~mask).sum()) == round(levels[path] * mask.numel())
    pruner = fs.Pruner(rules)
    state = pruner.init(params)
    first, state = pruner.update(params, state)
    assert all(torch.equal(first[p], masks[p]) for p in params)


# -- checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", DYNAMIC, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"drop_fraction": 1.5}, ValueError, r"drop_fraction=1.5 must be in \[0, 1\]"),
        ({"drop_fraction": "x"}, TypeError, r"drop_fraction"),
        ({"every": 0}, ValueError, r"every=0 must be a positive int"),
        ({"every": 2.0}, TypeError, r"every must be an int"),
        ({"end_step": -1}, ValueError, r"end_step=-1 must be >= 0 or None"),
        ({"seed": -1}, ValueError, r"seed=-1 must be in \[0, 2\*\*64\)"),
        ({"seed": True}, TypeError, r"seed must be an int"),
    ],
)
def test_bad_fields_are_refused_by_name(cls: type, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=rf"^{cls.__name__}: .*{message}"):
        cls(0.5, **kwargs)


@pytest.mark.parametrize("cls", DYNAMIC, ids=lambda c: c.__name__)
def test_bad_call_data_is_refused_by_name(cls: type) -> None:
    w = tie_free((4, 4), seed=0)
    method = cls(0.5, every=1)
    m = method(w)
    grads = {"grads": torch.randn(4, 4)} if cls is fs.RigL else {}
    cases = [
        (ValueError, "current_mask without step", {"current_mask": m}),
        (ValueError, "step without current_mask", {"step": 3}),
        (TypeError, "current_mask must be a bool tensor", {"current_mask": m.float(), "step": 1}),
        (ValueError, "current_mask must have the tensor's shape", {"current_mask": m[:2], "step": 1}),
        (ValueError, "a current_mask with 0 pruned entries; .* 8 pruned of 16",
         {"current_mask": torch.ones(4, 4, dtype=torch.bool), "step": 1}),
        (ValueError, "prev_mask and current_mask together",
         {"current_mask": m, "step": 1, "prev_mask": m}),
        (TypeError, "step must be an int >= 0", {"current_mask": m, "step": 1.0}),
        (ValueError, "step must be an int >= 0", {"current_mask": m, "step": -2}),
    ]  # fmt: skip
    for error, message, data in cases:
        with pytest.raises(error, match=rf"^{cls.__name__}: got .*{message}"):
            method(w, **data, **({} if "current_mask" not in data else grads))
    with pytest.raises(TypeError, match=rf"{cls.__name__} needs a floating-point tensor"):
        method(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"count=17 is more than the 16 entries"):
        cls(count=17)(w)


def test_rigl_needs_dense_grads_at_update_steps() -> None:
    w = tie_free((4, 4), seed=0)
    method = fs.RigL(0.5, every=2)
    m = method(w)
    with pytest.raises(ValueError, match=r"^RigL: got no grads at update step 2; .*grads="):
        method(w * m, current_mask=m, step=2)
    assert torch.equal(method(w * m, current_mask=m, step=3), m)  # no update: no grads needed
    with pytest.raises(ValueError, match=r"grads without current_mask"):
        method(w, grads=torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"grads must have the tensor's shape"):
        method(w * m, current_mask=m, step=2, grads=torch.randn(4))
    with pytest.raises(TypeError, match=r"grads must be a floating tensor"):
        method(w * m, current_mask=m, step=2, grads=torch.ones(4, 4, dtype=torch.int64))
    masked_grads = torch.randn(4, 4) * m  # a masked forward's gradient: 0 where pruned
    with pytest.raises(ValueError, match=r"the gradient of a masked forward.*straight_through"):
        method(w * m, current_mask=m, step=2, grads=masked_grads)
    # a gradient that is 0 everywhere carries no signal but is no masked gradient: ties
    zero = method(w * m, current_mask=m, step=2, grads=torch.zeros(4, 4))
    assert int((~zero).sum()) == 8


def test_methods_are_unchanged_by_a_call_and_scale_like_fs_random() -> None:
    w = tie_free((6, 6), seed=4)
    before = w.clone()
    method = fs.RigL(0.5, every=1)
    m = method(w)
    g = torch.randn(6, 6)
    g_before, m_before = g.clone(), m.clone()
    method(w, current_mask=m, step=1, grads=g)
    assert torch.equal(w, before) and torch.equal(g, g_before) and torch.equal(m, m_before)
    assert method.scaled(0.5) == fs.RigL(0.25, every=1)
    assert fs.SET(count=10).scaled(0.5) == fs.SET(count=5)
    assert re.search(r"SET\(sparsity=0.5, count=None, drop_fraction=0.3", repr(fs.SET(0.5)))
