"""fs.squash: the masked dense params as a flat dict of detached, contiguous copies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.testing import strategies as fst


def _bits(tensor: Tensor) -> Tensor:
    """The raw bytes of a tensor, to compare values bit for bit (NaN and -0.0 included)."""
    return tensor.contiguous().view(-1).view(torch.uint8)


def _leaf_masks(draw: st.DrawFn, params: dict[str, Tensor]) -> dict[str, Tensor | None]:
    masks: dict[str, Tensor | None] = {}
    for path, leaf in params.items():
        if draw(st.booleans()):
            seed = draw(st.integers(0, 2**31 - 1))
            g = torch.Generator().manual_seed(seed)
            masks[path] = torch.rand(leaf.shape, generator=g) < draw(st.floats(0.0, 1.0))
        else:
            masks[path] = None
    return masks


def test_squash_zeroes_pruned_entries_and_keys_by_named_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    params = dict(model.named_parameters())
    masks = {"0.weight": torch.tensor([[True, False, True], [False, False, True]])}
    flat = fs.squash(params, masks)
    assert list(flat) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert torch.equal(flat["0.weight"], params["0.weight"].detach() * masks["0.weight"])
    assert torch.equal(flat["2.weight"], params["2.weight"].detach())
    fresh = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    result = fresh.load_state_dict(flat, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(fresh[0].weight, flat["0.weight"])


def test_squash_pruned_inf_and_nan_become_positive_zero_kept_ones_stay() -> None:
    w = torch.tensor([math.inf, math.nan, -math.inf, math.nan, -0.0])
    mask = torch.tensor([False, False, False, True, True])
    out = fs.squash({"w": w}, {"w": mask})["w"]
    assert torch.equal(_bits(out[:3]), _bits(torch.zeros(3)))  # +0.0, not -0.0
    assert math.isnan(out[3].item())
    assert torch.equal(_bits(out[4:]), _bits(torch.tensor([-0.0])))


def test_squash_gives_detached_contiguous_copies_and_leaves_inputs_untouched() -> None:
    weight = torch.randn(4, 6).t().requires_grad_()  # not contiguous
    bias = torch.randn(6).requires_grad_()
    params = {"weight": weight, "bias": bias}
    mask = torch.rand(6, 4) < 0.5
    before = {k: v.detach().clone() for k, v in params.items()}
    mask_before = mask.clone()
    flat = fs.squash(params, {"weight": mask, "bias": None})
    for path, out in flat.items():
        assert not out.requires_grad and out.grad_fn is None
        assert out.is_contiguous()
        assert out.untyped_storage().data_ptr() != params[path].untyped_storage().data_ptr()
        assert torch.equal(params[path].detach(), before[path])
    assert torch.equal(mask, mask_before)
    assert torch.equal(flat["bias"], before["bias"])
    flat["bias"].add_(1.0)  # writing the result does not write the params
    assert torch.equal(bias.detach(), before["bias"])


def test_squash_flattens_nested_pytrees_to_dotted_paths() -> None:
    a, b, c = torch.ones(2, 2), torch.ones(3), torch.ones(1)
    params = {"enc": {"w": a}, "layers": [b, c]}
    masks = {"enc": {"w": torch.eye(2, dtype=torch.bool)}, "layers": [None, None]}
    flat = fs.squash(params, masks)
    assert list(flat) == ["enc.w", "layers.0", "layers.1"]
    assert torch.equal(flat["enc.w"], torch.eye(2))


def test_squash_keeps_a_flat_dicts_key_order_past_none_entries() -> None:
    params = {"z.weight": torch.ones(2), "y.bias": None, "a.weight": torch.ones(2, 4)}
    mask = torch.tensor([[True, False] * 2] * 2)
    assert list(fs.squash(params, None)) == ["z.weight", "a.weight"]
    csr = fs.export.to_csr(params, {"z.weight": None, "y.bias": None, "a.weight": mask})
    assert list(csr) == ["z.weight", "a.weight"]
    assert csr["a.weight"].layout == torch.sparse_csr


def test_squash_with_no_masks_copies_every_leaf() -> None:
    params = {"w": torch.arange(4.0)}
    flat = fs.squash(params, None)
    assert torch.equal(flat["w"], params["w"]) and flat["w"] is not params["w"]


def test_squash_keeps_every_dtype_bit_for_bit_as_apply_masks() -> None:
    mask = torch.tensor([True, False, True, False])
    base = torch.tensor([1.5, -2.0, math.nan, 3.0])
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.complex64,
        torch.int32,
        torch.int8,
        torch.bool,
        torch.float8_e4m3fn,
    ):
        leaf = base.nan_to_num(0.0).to(dtype) if not dtype.is_floating_point else base.to(dtype)
        out = fs.squash({"w": leaf}, {"w": mask})["w"]
        expected = fs.apply_masks({"w": leaf}, {"w": mask})["w"]
        assert out.dtype == dtype
        assert torch.equal(_bits(out), _bits(expected)), dtype


def test_squash_handles_zero_size_and_zero_dim_leaves() -> None:
    params = {"empty": torch.ones(0, 3), "scalar": torch.tensor(2.0)}
    masks = {"empty": torch.ones(0, 3, dtype=torch.bool), "scalar": torch.tensor(False)}
    flat = fs.squash(params, masks)
    assert flat["empty"].shape == (0, 3)
    assert flat["scalar"].item() == 0.0 and flat["scalar"].dim() == 0


@pytest.mark.parametrize(
    ("masks", "error", "words"),
    [
        ({"w": torch.ones(2, 2)}, TypeError, "'w' must be a torch.bool"),
        ({"w": torch.ones(3, 2, dtype=torch.bool)}, ValueError, "shape (3, 2)"),
        ({"v": torch.ones(2, 2, dtype=torch.bool)}, ValueError, "'v'"),
        ([torch.ones(2, 2, dtype=torch.bool)], ValueError, "structure"),
    ],
)
def test_squash_refuses_masks_that_do_not_fit(masks: object, error: type, words: str) -> None:
    params = {"w": torch.ones(2, 2)}
    with pytest.raises(error, match=r"^squash: ") as info:
        fs.squash(params, masks)
    assert words in str(info.value)


def test_squash_refuses_a_leaf_that_is_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"^squash: .*'b'"):
        fs.squash({"w": torch.ones(2), "b": 3.0}, None)


@given(fst.params(layout="flat", special=True, allow_empty=True), st.data())
def test_squash_equals_apply_masks_and_mutates_nothing(
    params: dict[str, Tensor], data: st.DataObject
) -> None:
    masks = data.draw(st.composite(lambda draw: _leaf_masks(draw, params))())
    before = {k: v.clone() for k, v in params.items()}
    flat = fs.squash(params, masks)
    masked = fs.apply_masks(params, masks)
    assert list(flat) == list(params)
    for path, out in flat.items():
        assert torch.equal(_bits(out), _bits(masked[path]))
        assert torch.equal(_bits(params[path]), _bits(before[path]))
        mask = masks[path]
        if mask is not None:  # pruned entries are +0.0, whatever they held
            assert bool((_bits(out[~mask]) == 0).all())
