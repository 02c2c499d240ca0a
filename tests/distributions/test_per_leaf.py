"""fs.distributions.per_leaf: levels by path or pattern, resolved to {path: level}."""

from __future__ import annotations

import pytest
import torch

import funcsparse as fs
from funcsparse.distributions import erk, level_rules, per_leaf


def params() -> dict[str, torch.Tensor]:
    return {
        "blocks.0.weight": torch.randn(4, 4),
        "blocks.1.weight": torch.randn(4, 4),
        "head.weight": torch.randn(2, 4),
        "head.bias": torch.randn(2),
    }


def test_patterns_exact_paths_and_none() -> None:
    levels = per_leaf(params(), {"**.weight": 0.5, "head.weight": 0.25, "blocks.1.weight": None})
    assert levels == {"blocks.0.weight": 0.5, "head.weight": 0.25}
    assert list(per_leaf(params(), {"head.*": 1, "blocks.*.weight": 0})) == list(params())
    assert per_leaf(params(), {}) == {}


def test_merges_with_a_distribution_and_drives_masks() -> None:
    tree = params()
    levels = erk(tree, sparsity=0.5, paths="blocks.**") | per_leaf(tree, {"head.weight": 0.5})
    masks = fs.compute_masks(tree, level_rules(levels, fs.Magnitude(0.5)))
    assert [int((~masks[p]).sum()) for p in levels] == [8, 8, 4]


@pytest.mark.parametrize(
    ("levels", "error", "message"),
    [
        ([0.5], TypeError, "per_leaf: levels must be a mapping"),
        ({1: 0.5}, TypeError, "per_leaf: levels has a key int 1"),
        ({"head.weight": "0.5"}, TypeError, "per_leaf: the level at 'head.weight' is str"),
        ({"head.weight": True}, TypeError, "per_leaf: the level at 'head.weight' is bool"),
        ({"head.*": 1.5}, ValueError, r"per_leaf: the level at 'head.\*' is 1.5"),
        ({"head.weight": float("nan")}, ValueError, "per_leaf: the level at 'head.weight' is nan"),
        ({"tail.*": 0.5}, ValueError, r"per_leaf: rule pattern 'tail.\*' matches no leaf"),
        ({"*.0.*": 0.5, "blocks.*.weight": 0.5}, ValueError, "per_leaf: patterns '.*' and"),
    ],
)
def test_bad_levels(levels: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        per_leaf(params(), levels)  # type: ignore[arg-type]  # reason: bad levels on purpose: the test checks their errors
