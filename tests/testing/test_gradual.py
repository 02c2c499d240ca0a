"""Gradual pruning invariants for every registered method: prev_masks means one thing.

A method at a lower level, then at a higher one with the lower mask as ``prev_mask``: the
kept set only shrinks, and ``check_masks`` (counts, patterns, determinism) holds for the
second mask. Through ``fs.Pruner`` with a schedule, every update's mask is checked the same
way against the one before it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.methods import MaskMethod
from funcsparse.testing import check_masks, registered_methods
from funcsparse.testing import strategies as fst

METHODS = registered_methods()


def _scaled(method: MaskMethod, fraction: float) -> MaskMethod | None:
    try:
        return method.scaled(fraction)
    except TypeError:  # a method without a level (NearlyDiagonal): nothing to grow
        return None


def _as_trees(leaf_data: dict[str, object]) -> dict[str, dict[str, object]]:
    return {k: {"w": v} for k, v in leaf_data.items()}


@pytest.mark.parametrize("method_cls", METHODS, ids=lambda cls: cls.__name__)
class TestGradual:
    @given(data=st.data(), low=st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    def test_a_higher_level_after_a_lower_one_nests_and_keeps_its_promises(
        self, method_cls: type[MaskMethod], data: st.DataObject, low: float
    ) -> None:
        method = data.draw(method_cls.configs(st))
        tensor = data.draw(fst.tensors(data.draw(fst.shapes(allow_empty=True))))
        leaf_data = data.draw(method_cls.example_data(st, tensor))
        assume(method.check_leaf(tensor, **leaf_data) is None)
        lower = _scaled(method, low)
        if lower is None:  # no level: prev_mask is intersected with the method's pattern
            lower = method
        prev = lower.for_leaf("w")(tensor, **leaf_data)
        mask = fs.compute_masks(
            {"w": tensor}, {"w": method}, prev_masks={"w": prev}, **_as_trees(leaf_data)
        )["w"]
        assert not bool((mask & ~prev).any()), "a weight pruned before came back"
        check_masks(
            {"w": tensor},
            {"w": method},
            {"w": mask},
            prev_masks={"w": prev},
            **_as_trees(leaf_data),
        )

    @given(data=st.data())
    def test_an_all_true_prev_mask_changes_nothing(
        self, method_cls: type[MaskMethod], data: st.DataObject
    ) -> None:
        method = data.draw(method_cls.configs(st)).for_leaf("w")
        tensor = data.draw(fst.tensors(data.draw(fst.shapes(allow_empty=True))))
        leaf_data = data.draw(method_cls.example_data(st, tensor))
        assume(method.check_leaf(tensor, **leaf_data) is None)
        everything = torch.ones(tensor.shape, dtype=torch.bool)
        assert torch.equal(
            method(tensor, prev_mask=everything, **leaf_data), method(tensor, **leaf_data)
        )

    @given(data=st.data(), end=st.integers(1, 6), every=st.integers(1, 3))
    def test_every_pruner_update_nests_and_passes_check_masks(
        self, method_cls: type[MaskMethod], data: st.DataObject, end: int, every: int
    ) -> None:
        method = data.draw(method_cls.configs(st))
        scalable = _scaled(method, 0.5) is not None
        tensor = data.draw(fst.tensors(data.draw(fst.shapes())))
        leaf_data = data.draw(method_cls.example_data(st, tensor))
        assume(method.check_leaf(tensor, **leaf_data) is None)
        grads = {"w": data.draw(fst.tensors(tensor.shape, dtypes=[tensor.dtype]))}
        if method.needs_grads:  # Movement accumulates its own scores from the grads
            leaf_data = {}
        # A method without a level (NearlyDiagonal) is pruned once, at step 0, unscheduled.
        schedule = fs.schedules.linear(begin_step=0, end_step=end, every=every)
        pruner = fs.Pruner({"w": method}, schedule=schedule if scalable else None)
        state = pruner.init({"w": tensor})
        previous = torch.ones(tensor.shape, dtype=torch.bool)
        for step in range(end + 1):
            masks, state = pruner.update({"w": tensor}, state, grads=grads, **_as_trees(leaf_data))
            mask = masks["w"]
            scores = state["method_state"]["w"]
            checked = leaf_data if scores is None else {"scores": scores}
            assert not bool((mask & ~previous).any()), f"step {step} revived a weight"
            if step == 0 or (scalable and schedule.is_update_step(step)):
                check_masks(
                    {"w": tensor},
                    {"w": method.scaled(schedule(step)) if scalable else method},
                    masks,
                    prev_masks={"w": previous},
                    **_as_trees(checked),
                )
            previous = mask
