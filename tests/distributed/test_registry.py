"""Every registered method can mask a DTensor leaf: each has a sharded strategy."""

from __future__ import annotations

import inspect

import torch

import funcsparse as fs
from funcsparse.distributed import masks
from funcsparse.methods._base import GlobalMethod, registered_methods


def test_every_registered_method_has_a_sharded_strategy() -> None:
    methods = [cls for cls in registered_methods() if not inspect.isabstract(cls)]
    assert {cls.__name__ for cls in methods} >= {
        "GlobalMagnitude", "LnStructured", "Magnitude", "Movement", "NM", "NearlyDiagonal",
        "Random", "RandomStructured", "Wanda", "WeightNorm",
    }  # fmt: skip
    for cls in methods:
        table = masks._GLOBAL_STRATEGIES if issubclass(cls, GlobalMethod) else masks._STRATEGIES
        assert cls in table, f"{cls.__name__} has no sharded strategy"


def test_compute_masks_hands_dtensors_to_the_registered_backend() -> None:
    from funcsparse._compute import _SHARDED

    assert len(_SHARDED) == 1 and type(_SHARDED[0]).__module__ == "funcsparse.distributed"
    assert fs.distributed.is_sharded(torch.zeros(2)) is False
