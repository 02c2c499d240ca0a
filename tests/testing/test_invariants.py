"""The shared invariant suite: every registered method through the same checks.

Like optax's shared optimizer tests, the suite enumerates ``registered_methods()``; a new
method in funcsparse is run through every check here as soon as it exists, and fails them
until it provides ``configs(st)`` (and its promises).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.methods import MaskMethod
from funcsparse.testing import check_masks, registered_methods
from funcsparse.testing import strategies as fst
from funcsparse.testing.oracles import torch_ao_mask

METHODS = registered_methods()


def _as_trees(path: str, leaf_data: dict[str, object]) -> dict[str, dict[str, object]]:
    """One leaf's keyword data as compute_masks' pytrees (prev_mask -> prev_masks)."""
    return {("prev_masks" if k == "prev_mask" else k): {path: v} for k, v in leaf_data.items()}


def test_every_exported_method_is_registered() -> None:
    exported = {
        obj
        for obj in vars(fs).values()
        if inspect.isclass(obj) and issubclass(obj, MaskMethod) and not inspect.isabstract(obj)
    }
    assert exported and exported <= set(METHODS)


@pytest.mark.parametrize("method_cls", METHODS, ids=lambda cls: cls.__name__)
class TestEveryMethod:
    @given(data=st.data())
    def test_single_tensor_invariants(
        self, method_cls: type[MaskMethod], data: st.DataObject
    ) -> None:
        method = data.draw(method_cls.configs(st))
        assert isinstance(method, method_cls)
        tensor = data.draw(fst.tensors(data.draw(fst.shapes(allow_empty=True))))
        leaf_data = data.draw(method_cls.example_data(st, tensor))
        assume(method.check_leaf(tensor, **leaf_data) is None)
        check_masks({"w": tensor}, {"w": method}, **_as_trees("w", leaf_data))

    @given(data=st.data())
    def test_invariants_hold_on_ties_nan_and_inf(
        self, method_cls: type[MaskMethod], data: st.DataObject
    ) -> None:
        method = data.draw(method_cls.configs(st))
        tensor = data.draw(fst.tensors(ties=True, special=data.draw(st.booleans())))
        leaf_data = data.draw(method_cls.example_data(st, tensor))
        assume(method.check_leaf(tensor, **leaf_data) is None)
        check_masks({"w": tensor}, {"w": method}, **_as_trees("w", leaf_data))

    @given(data=st.data())
    def test_tie_free_masks_equal_torch_ao_where_claimed(
        self, method_cls: type[MaskMethod], data: st.DataObject
    ) -> None:
        method = data.draw(method_cls.configs(st))
        tensor = data.draw(fst.tensors(ties=False, dtypes=[torch.float32, torch.float64]))
        leaf_data = data.draw(method_cls.example_data(st, tensor))
        assume(method.check_leaf(tensor, **leaf_data) is None)
        expected = None if leaf_data else torch_ao_mask(method, tensor)
        if expected is not None:
            assert torch.equal(method(tensor), expected)
        check_masks({"w": tensor}, {"w": method}, **_as_trees("w", leaf_data))

    @given(data=st.data())
    def test_pytrees_of_every_layout(
        self, method_cls: type[MaskMethod], data: st.DataObject
    ) -> None:
        tree = data.draw(fst.params())
        rules = data.draw(fst.rules_for(tree, methods=[method_cls]))
        leaf_data = data.draw(fst.leaf_data_for(tree, rules))
        check_masks(tree, rules, **leaf_data)

    @given(data=st.data())
    def test_ensembles_equal_their_members(
        self, method_cls: type[MaskMethod], data: st.DataObject
    ) -> None:
        method = data.draw(method_cls.configs(st))
        shape = data.draw(fst.shapes())
        members = [data.draw(fst.tensors(shape, dtypes=[torch.float32])) for _ in range(3)]
        member_data = [data.draw(method_cls.example_data(st, m)) for m in members]
        assume(
            all(
                method.check_leaf(m, **d) is None for m, d in zip(members, member_data, strict=True)
            )
        )
        keys = set(member_data[0])
        assume(
            all(
                set(d) == keys and all(isinstance(v, torch.Tensor) for v in d.values())
                for d in member_data
            )
        )
        stacked_data = {k: {"w": torch.stack([d[k] for d in member_data])} for k in keys}
        stacked = fs.compute_masks(
            {"w": torch.stack(members)}, {"w": method}, batch_dims=1, **stacked_data
        )["w"]
        as_applied = method.for_leaf("w")  # compute_masks specialises per leaf path
        for i, member in enumerate(members):
            assert torch.equal(stacked[i], as_applied(member, **member_data[i]))
