"""funcsparse.testing on hostile inputs (issue 9, found by tests/fuzz): strided one-entry
leaves, meta tensors and masks, leaves that are not tensors."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.testing import check_leaf_mask, check_masks
from funcsparse.testing._checks import _same_bits
from funcsparse.testing.oracles import torch_ao_mask

META_MASK = torch.ones(4, 4, dtype=torch.bool, device="meta")
NO_VALUES = "meta tensors hold no values to check; move it to a real device (cpu, cuda, ...)"


@pytest.mark.parametrize("method", [fs.Magnitude(0.5), fs.WeightNorm(0.5), fs.Random(0.5)])
@pytest.mark.parametrize(
    "leaf",
    [
        torch.zeros(1, 2)[:, ::2],  # one entry, stride 2: .contiguous() keeps the stride
        torch.ones(3, 1)[1:2],
        torch.zeros(0, 4)[:, ::2],
        torch.tensor([[1.5]]).expand(1, 1),
    ],
    ids=["one-entry-stride-2", "one-entry-offset", "empty-strided", "expanded-one"],
)
def test_one_entry_and_empty_strided_leaves_are_checked(
    method: fs.MaskMethod, leaf: Tensor
) -> None:
    check_leaf_mask(method, leaf, method(leaf))
    check_masks({"w": leaf, "other": torch.zeros(1, 2)[:, ::2]}, {"w": method})


@given(
    values=st.lists(st.floats(allow_nan=True, width=32), min_size=1, max_size=24),
    step=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int32]),
)
def test_same_bits_of_a_view_and_its_copy(
    values: list[float], step: int, dtype: torch.dtype
) -> None:
    base = torch.tensor(values).to(dtype)
    view = base[::step].unsqueeze(0)
    assert _same_bits(view, view.clone())
    changed = view.clone()
    changed[0, 0] = 7 if bool(changed[0, 0] != 7) else 3
    assert not _same_bits(view, changed)
    if dtype.is_floating_point:  # -0.0 and 0.0 differ, NaN equals NaN
        assert not _same_bits(
            torch.zeros(1, 2, dtype=dtype)[:, ::2], -torch.zeros(1, 1, dtype=dtype)
        )
        nan = torch.full((1, 2), float("nan"), dtype=dtype)[:, ::2]
        assert _same_bits(nan, nan.clone())


def test_check_leaf_mask_refuses_a_meta_mask() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "check_leaf_mask: the mask is a 2-D torch.bool tensor of shape (4, 4) on meta; "
            + NO_VALUES
        ),
    ):
        check_leaf_mask(fs.Magnitude(0.5), torch.randn(4, 4), META_MASK)
    with pytest.raises(ValueError, match=r"^my check: the mask is"):
        check_leaf_mask(fs.Magnitude(0.5), torch.randn(4, 4), META_MASK, where="my check")


def test_check_leaf_mask_refuses_a_meta_tensor() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "check_leaf_mask: tensor is a 2-D torch.float32 tensor of shape (4, 4) on meta; "
            + NO_VALUES
        ),
    ):
        check_leaf_mask(fs.Magnitude(0.5), torch.randn(4, 4, device="meta"), META_MASK)


@pytest.mark.parametrize("method", [fs.Magnitude(0.5), fs.GlobalMagnitude(0.5)])
def test_check_masks_refuses_a_meta_mask_by_leaf(method: fs.MaskMethod) -> None:
    params = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    name = type(method).__name__
    where = (
        f"check_masks: rule 'w' ({name}) over ['w']"
        if isinstance(method, fs.GlobalMethod)
        else f"check_masks: leaf 'w' (rule 'w', {name})"
    )
    with pytest.raises(ValueError, match=re.escape(f"{where}: the mask is a 2-D torch.bool")):
        check_masks(params, {"w": method}, {"w": META_MASK, "b": None})


@pytest.mark.parametrize("rules", [{}, {"b": fs.Magnitude(0.5)}, {"a": fs.Magnitude(0.5)}])
def test_check_masks_refuses_meta_leaves_matched_or_not(rules: dict[str, fs.MaskMethod]) -> None:
    params = {"a": torch.zeros(3, 3, device="meta"), "b": torch.randn(4)}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "check_masks: the leaf at 'a' is a 2-D torch.float32 tensor of shape (3, 3) on meta; "
            "check_masks compares values before and after"
        ),
    ):
        check_masks(params, rules)
    with pytest.raises(ValueError, match=r"check_masks: the leaf at 'a' is a 0-D"):
        check_masks({"a": torch.zeros((), device="meta")}, {})


@pytest.mark.parametrize(
    ("leaf", "shown"), [("x", "str 'x'"), (2, "int 2"), (torch.nn.Linear(2, 2), "Linear")]
)
def test_check_masks_refuses_leaves_that_are_not_tensors(leaf: object, shown: str) -> None:
    with pytest.raises(
        TypeError, match=rf"^check_masks: expected a pytree of tensors .*got {shown}"
    ):
        check_masks({"w": torch.randn(4, 4), "junk": leaf}, {"w": fs.Magnitude(0.5)})


def test_check_masks_takes_none_entries_as_before() -> None:
    params = {"w": torch.randn(4, 4), "b": None, "nested": [None, torch.randn(2, 2)]}
    check_masks(params, {"w": fs.Magnitude(0.5), "nested.1": fs.Magnitude(0.25)})


@pytest.mark.parametrize("block", [(10**6, 10**6), (1, 10**9), (3, 10**6)])
def test_blocks_far_larger_than_the_weight_are_checked_without_padding(
    block: tuple[int, int],
) -> None:
    # torch.ao would pad the weight to the block (terabytes); the oracle clamps the block,
    # which gives torch.ao's mask, and WeightNorm clamps it the same way.
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    method = fs.WeightNorm(0.5, sparse_block_shape=block)
    expected = torch_ao_mask(method, weight)
    assert expected is not None
    assert torch.equal(expected, method(weight))
    check_masks({"w": weight}, {"w": method})
