"""level_rules: {path: level} to one method per leaf at its level."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import funcsparse as fs
from funcsparse.distributions import level_rules


def test_every_path_gets_the_method_at_its_level() -> None:
    levels = {"a.weight": 0.25, "b.weight": 0.75, "c.weight": 0.0}
    for method in (fs.Wanda(), fs.Wanda(0.9), fs.Magnitude(0.5), fs.Random(0.5, seed=3)):
        rules = level_rules(levels, method)
        assert list(rules) == list(levels)
        for path, rule in rules.items():
            assert type(rule) is type(method)
            assert getattr(rule, method.level_field or "") == levels[path]
    # the other fields stay: only the level changes
    assert level_rules({"w": 0.3}, fs.Random(0.5, seed=3))["w"] == fs.Random(0.3, seed=3)
    assert level_rules({}, fs.Wanda()) == {}


def test_the_rules_drive_compute_masks() -> None:
    generator = torch.Generator().manual_seed(0)
    params = {
        "a": torch.randn(4, 8, generator=generator),
        "b": torch.randn(4, 8, generator=generator),
    }
    norms = {"a": torch.ones(8), "b": torch.ones(8)}
    masks = fs.compute_masks(
        params, level_rules({"a": 0.25, "b": 0.75}, fs.Wanda()), input_norms=norms
    )
    assert [int((~masks[p]).sum()) for p in ("a", "b")] == [8, 24]
    masks = fs.compute_masks(params, level_rules({"a": 0.5}, fs.Magnitude(0.1)))
    assert int((~masks["a"]).sum()) == 16 and masks["b"] is None


@pytest.mark.parametrize(
    ("levels", "method", "error", "message"),
    [
        (
            {"w": 0.5},
            fs.NM(n=2, m=4),
            TypeError,
            "level_rules: NM has no level to set per leaf (its level_field is None)",
        ),
        (
            {"w": 0.5},
            fs.Magnitude(count=3),
            TypeError,
            "level_rules: Magnitude(sparsity=None, count=3) prunes a count",
        ),
        ({"w": 0.5}, "Wanda", TypeError, "level_rules: method must be a funcsparse method"),
        ([("w", 0.5)], fs.Wanda(), TypeError, "level_rules: levels must be a mapping"),
        ({1: 0.5}, fs.Wanda(), TypeError, "level_rules: levels has a key int 1"),
        (
            {"w": "0.5"},
            fs.Wanda(),
            TypeError,
            "level_rules: the level at 'w' is str '0.5'; expected a fraction in [0, 1]",
        ),
        ({"w": True}, fs.Wanda(), TypeError, "level_rules: the level at 'w' is bool True"),
        (
            {"w": 1.5},
            fs.Wanda(),
            ValueError,
            "level_rules: the level at 'w' is 1.5; expected a fraction in [0, 1]",
        ),
        ({"w": float("nan")}, fs.Wanda(), ValueError, "level_rules: the level at 'w' is nan"),
        (
            {"w": 0.3},
            fs.Wanda(n=2, m=4),
            ValueError,
            "level_rules: Wanda refuses the level 0.3 at 'w': Wanda: sparsity=0.3 does not "
            "match n:m = 2:4",
        ),
    ],
)
def test_bad_inputs_raise(levels: Any, method: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        level_rules(levels, method)
