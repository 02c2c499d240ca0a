"""funcsparse.testing leaves the global torch RNG where it found it (issue 9)."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.testing import check_leaf_mask, check_masks
from funcsparse.testing import strategies as fst
from funcsparse.testing.oracles import torch_ao_mask


def test_check_masks_and_the_oracles_do_not_advance_the_global_rng() -> None:
    weight = torch.arange(1.0, 33.0).reshape(4, 8) * torch.tensor([1.0, -1.0] * 4)
    params = {"w": weight, "b": torch.ones(4)}
    methods = (
        fs.WeightNorm(0.5),
        fs.WeightNorm(0.5, sparse_block_shape=(1, 4), zeros_per_block=2),
        fs.NearlyDiagonal(nearliness=3),
        fs.NM(n=2, m=4),
        fs.Magnitude(0.5),
        fs.Random(0.5),
        fs.GlobalMagnitude(0.5),
    )
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    for method in methods:
        check_masks(params, {"w": method})
        check_leaf_mask(method, weight, method(weight))
        torch_ao_mask(method, weight)
        assert torch.equal(torch.random.get_rng_state(), state), type(method).__name__
    assert torch.equal(torch.rand(3), torch.random.manual_seed(1234) and torch.rand(3))


def test_bad_arguments_are_type_and_value_errors() -> None:
    weight = torch.randn(4, 8)
    mask = fs.Magnitude(0.5)(weight)
    state = torch.random.get_rng_state()
    cases = [
        (
            TypeError,
            "check_leaf_mask: method must be a funcsparse method, got str 'x'",
            lambda: check_leaf_mask("x", weight, mask),
        ),
        (
            TypeError,
            "check_leaf_mask: tensor must be a tensor, got NoneType None",
            lambda: check_leaf_mask(fs.Magnitude(0.5), None, mask),
        ),
        (
            TypeError,
            "check_leaf_mask: data must be a dict of keyword data, got list",
            lambda: check_leaf_mask(fs.Magnitude(0.5), weight, mask, data=[1]),
        ),
        (
            TypeError,
            "check_masks: rules must be a mapping",
            lambda: check_masks({"w": weight}, ["w"]),
        ),
        (
            ValueError,
            "compute_masks: rule path 'v' matches no leaf",
            lambda: check_masks({"w": weight}, {"v": fs.Magnitude(0.5)}),
        ),
        (
            ValueError,
            "compute_masks: scores is None at ['w']",
            lambda: check_masks({"w": weight}, {"w": fs.Magnitude(0.5)}, scores={"w": None}),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=re.escape(message)):
            call()
    assert torch.equal(torch.random.get_rng_state(), state)


@given(st.data())
@settings(max_examples=20)
def test_the_strategies_do_not_advance_the_global_rng(data: st.DataObject) -> None:
    state = torch.random.get_rng_state()
    tree, rules = data.draw(fst.params_and_rules())
    data.draw(fst.tensors())
    data.draw(fst.leaf_data_for(tree, rules))
    assert torch.equal(torch.random.get_rng_state(), state)
