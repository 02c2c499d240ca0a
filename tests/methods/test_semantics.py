"""The rules every method shares since issue 8: scores rank as given (signed, the lowest is
pruned first), ``prev_masks`` is a total target, and ``scaled`` levels.

Each method's own file pins its details; here the same statement is checked across methods.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.methods import MaskMethod
from funcsparse.testing import check_masks, registered_methods
from tests.helpers import tie_free

W = tie_free((64, 64), seed=0)
HALF = fs.Magnitude(0.5)(W)  # a 50% mask: 2048 zeros


def _scalable() -> list[type[MaskMethod]]:
    """Registered methods with a level that ``scaled`` can lower (NM scales its ``n``) and
    whose masks nest as it rises (not SparseGPT's: its weight updates change the scores)."""
    return [
        cls
        for cls in registered_methods()
        if (cls.level_field is not None or "scaled" in vars(cls)) and cls.nested_levels
    ]


SCALABLE = _scalable()

# --------------------------------------------------------------------------------------
# Scores rank as given: the lowest is pruned first, sign included
# --------------------------------------------------------------------------------------

SCORE_READERS = [
    fs.Magnitude(count=1),
    fs.GlobalMagnitude(count=1),
    fs.NM(n=3, m=4),
    fs.WeightNorm(0.25, sparse_block_shape=(1, 1)),
    fs.LnStructured(count=1, n=2, dim=1),
    fs.Movement(count=1),
]


@pytest.mark.parametrize("method", SCORE_READERS, ids=lambda m: type(m).__name__)
def test_the_lowest_score_is_pruned_first_sign_included(method: MaskMethod) -> None:
    w = torch.ones(1, 4)
    movement = torch.tensor([[-3.0, 1.0, 2.0, 4.0]])
    assert method(w, scores=movement).tolist() == [[False, True, True, True]]
    masks = fs.compute_masks({"w": w}, {"w": method}, scores={"w": movement})
    assert masks["w"].tolist() == [[False, True, True, True]]
    # |scores| (nn.utils.prune's importance_scores order) prunes the 1.0 instead.
    assert method(w, scores=movement.abs()).tolist() == [[True, False, True, True]]


@pytest.mark.parametrize(
    "method",
    [
        fs.Magnitude(count=1),
        fs.GlobalMagnitude(count=1),
        fs.NM(n=3, m=4),
        fs.WeightNorm(0.25, sparse_block_shape=(1, 1), norm=1),
        fs.LnStructured(count=1, n=1, dim=1),
    ],
    ids=lambda m: type(m).__name__,
)
def test_weights_rank_by_their_magnitude(method: MaskMethod) -> None:
    assert method(torch.tensor([[-3.0, 1.0, 2.0, 4.0]])).tolist() == [[True, False, True, True]]


# --------------------------------------------------------------------------------------
# prev_masks: the kept set only shrinks, and the level is the total target
# --------------------------------------------------------------------------------------

AT_HALF = [
    fs.Magnitude(0.5),
    fs.Magnitude(count=2048),
    fs.Random(0.5, seed=1),
    fs.GlobalMagnitude(0.5),
    fs.WeightNorm(0.5),
    fs.WeightNorm(0.5, sparse_block_shape=(2, 2)),
    fs.WeightNorm(0.5, sparse_block_shape=(1, 4), zeros_per_block=2),
    fs.LnStructured(0.5, n=1, dim=0),
    fs.LnStructured(0.5, n=2, dim=1),
    fs.RandomStructured(0.5, dim=0, seed=1),
]


@pytest.mark.parametrize("method", AT_HALF, ids=lambda m: repr(m)[:60])
def test_half_after_a_half_mask_is_half_and_revives_nothing(method: MaskMethod) -> None:
    # 50% zeros before and a level of 50%: the target is met, so the mask is prev_mask.
    # (Until issue 8, WeightNorm and LnStructured intersected their fresh mask with it:
    # 0.703 and 0.727 sparsity here.)
    masks = fs.compute_masks({"w": W}, {"w": method}, prev_masks={"w": HALF})
    assert torch.equal(masks["w"], HALF)
    assert int((~masks["w"]).sum()) == 2048
    check_masks({"w": W}, {"w": method}, masks, prev_masks={"w": HALF})


@pytest.mark.parametrize(
    ("method", "unit"),
    [
        (fs.WeightNorm(0.75), 4),
        (fs.LnStructured(0.75, n=1, dim=0), 64),
        (fs.RandomStructured(0.75, dim=0, seed=5), 64),
    ],
    ids=["WeightNorm", "LnStructured", "RandomStructured"],
)
def test_a_higher_level_after_a_foreign_mask_adds_just_enough(
    method: MaskMethod, unit: int
) -> None:
    # 75% after a 50% Magnitude mask: whole blocks or slices are added in rank order until
    # the zeros reach 3072; the last one taken adds less than a whole unit too many.
    mask = fs.compute_masks({"w": W}, {"w": method}, prev_masks={"w": HALF})["w"]
    zeros = int((~mask).sum())
    assert 3072 <= zeros < 3072 + unit
    assert not bool((mask & ~HALF).any())
    check_masks({"w": W}, {"w": method}, {"w": mask}, prev_masks={"w": HALF})


def test_nearly_diagonal_keeps_its_band_within_prev_mask() -> None:
    prev = torch.ones(4, 4, dtype=torch.bool)
    prev[1, 1] = prev[0, 3] = False
    mask = fs.NearlyDiagonal(nearliness=3)(torch.ones(4, 4), prev_mask=prev)
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]


def test_rounds_through_compute_masks_with_several_methods() -> None:
    params = {"a": tie_free((16, 16), seed=1), "b": tie_free((8, 12), seed=2)}
    rules = {"a": fs.LnStructured(0.25, n=2, dim=0), "b": fs.WeightNorm(0.25)}
    first = fs.compute_masks(params, rules)
    rules = {"a": fs.LnStructured(0.5, n=2, dim=0), "b": fs.WeightNorm(0.5)}
    second = fs.compute_masks(params, rules, prev_masks=first)
    assert [int((~second[k]).sum()) for k in ("a", "b")] == [128, 48]
    assert all(not bool((second[k] & ~first[k]).any()) for k in params)
    assert all(torch.equal(second[k], fs.compute_masks(params, rules)[k]) for k in params)


@pytest.mark.parametrize("cls", SCALABLE, ids=lambda cls: cls.__name__)
@given(data=st.data(), fraction=st.sampled_from([0.0, 0.25, 0.5, 0.9]))
def test_two_steps_equal_one_step(
    cls: type[MaskMethod], data: st.DataObject, fraction: float
) -> None:
    # The same method at a lower level, then at its level with that mask as prev_mask,
    # gives the mask of one step to its level (tie-free weights; blocks that divide).
    method = data.draw(cls.configs(st))
    weight = tie_free((12, 12), seed=data.draw(st.integers(0, 2**31 - 1)))
    leaf_data = data.draw(cls.example_data(st, weight))
    assume(method.check_leaf(weight, **leaf_data) is None)
    lower = method.scaled(fraction)
    prev = lower(weight, **leaf_data)
    mask = method(weight, prev_mask=prev, **leaf_data)
    assert torch.equal(mask, method(weight, **leaf_data))
    assert not bool((mask & ~prev).any())


def test_prev_mask_of_all_true_is_no_prev_mask() -> None:
    ones = torch.ones(64, 64, dtype=torch.bool)
    for method in AT_HALF:
        assert torch.equal(method(W, prev_mask=ones), method(W)), method


# --------------------------------------------------------------------------------------
# scaled: the method at a fraction of its level
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fraction", "expected"),
    [
        (fs.Magnitude(0.6), 0.5, fs.Magnitude(0.3)),
        (fs.Magnitude(count=7), 0.5, fs.Magnitude(count=4)),  # round(3.5) = 4, half to even
        (fs.Magnitude(count=5), 0.5, fs.Magnitude(count=2)),  # round(2.5) = 2
        (fs.Random(0.8, seed=3), 0.25, fs.Random(0.2, seed=3)),
        (fs.GlobalMagnitude(count=10), 0.3, fs.GlobalMagnitude(count=3)),
        (
            fs.WeightNorm(0.5, sparse_block_shape=(2, 2), norm=1),
            0.5,
            fs.WeightNorm(0.25, sparse_block_shape=(2, 2), norm=1),
        ),
        (fs.LnStructured(count=4, n=2, dim=1), 0.5, fs.LnStructured(count=2, n=2, dim=1)),
        (fs.RandomStructured(1.0, dim=0, seed=2), 0.5, fs.RandomStructured(0.5, dim=0, seed=2)),
        (fs.Wanda(0.5), 0.0, fs.Wanda(0.0)),
        (fs.NM(n=2, m=4), 0.5, fs.NM(n=3, m=4)),
        (fs.NM(n=2, m=4), 0.0, fs.NM(n=4, m=4)),
        (fs.NM(n=1, m=8), 0.5, fs.NM(n=4, m=8)),  # round(3.5) = 4 zeros
    ],
    ids=repr,
)
def test_scaled_levels(method: MaskMethod, fraction: float, expected: MaskMethod) -> None:
    assert method.scaled(fraction) == expected
    assert method.scaled(1.0) == method


def test_scaled_refuses_what_it_cannot_scale() -> None:
    with pytest.raises(TypeError, match="NearlyDiagonal has no level that a schedule can scale"):
        fs.NearlyDiagonal(nearliness=3).scaled(0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"scaled: fraction must be in \[0, 1\]"):
            fs.Magnitude(0.5).scaled(bad)
        with pytest.raises(ValueError, match=r"NM.scaled: fraction must be in \[0, 1\]"):
            fs.NM(n=2, m=4).scaled(bad)


@pytest.mark.parametrize("cls", SCALABLE, ids=lambda cls: cls.__name__)
@given(data=st.data(), fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2))
def test_a_higher_fraction_never_unprunes(
    cls: type[MaskMethod], data: st.DataObject, fractions: list[float]
) -> None:
    method = data.draw(cls.configs(st))
    weight = tie_free((8, 12), seed=data.draw(st.integers(0, 2**31 - 1)))
    leaf_data = data.draw(cls.example_data(st, weight))
    assume(method.check_leaf(weight, **leaf_data) is None)
    low, high = sorted(fractions)
    lower = method.scaled(low)(weight, **leaf_data)
    higher = method.scaled(high)(weight, **leaf_data)
    assert not bool((higher & ~lower).any())
