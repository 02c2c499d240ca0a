"""NearlyDiagonal: pinned bands, agreement with torch.ao, the same errors, no row loop."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.methods import nearly_diagonal
from funcsparse.testing.oracles import ao_nearly_diagonal_mask


def test_pinned_band() -> None:
    mask = fs.NearlyDiagonal(nearliness=5)(torch.ones(4, 6))
    assert mask.int().tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1],
    ]
    assert mask.dtype == torch.bool


@pytest.mark.parametrize("nearliness", [0, -1, -2])
def test_non_positive_nearliness_prunes_everything(nearliness: int) -> None:
    mask = fs.NearlyDiagonal(nearliness=nearliness)(torch.randn(3, 5))
    assert not mask.any()
    assert torch.equal(mask, ao_nearly_diagonal_mask(torch.randn(3, 5), nearliness=nearliness))


@given(st.integers(1, 12), st.integers(1, 12), st.integers(-3, 12))
def test_equals_torch_ao(height: int, width: int, nearliness: int) -> None:
    weight = torch.randn(height, width)
    if nearliness > 0 and nearliness % 2 == 0:
        with pytest.raises(ValueError, match="nearliness can only be an odd number"):
            ao_nearly_diagonal_mask(weight, nearliness=nearliness)
        with pytest.raises(ValueError, match="nearliness can only be an odd number"):
            fs.NearlyDiagonal(nearliness=nearliness)
        return
    if nearliness > 0 and nearliness // 2 >= min(height, width):
        with pytest.raises(ValueError, match="nearliness cannot be larger than the dimensions"):
            ao_nearly_diagonal_mask(weight, nearliness=nearliness)
        with pytest.raises(ValueError, match="nearliness cannot be larger than the dimensions"):
            fs.NearlyDiagonal(nearliness=nearliness)(weight)
        return
    assert torch.equal(
        fs.NearlyDiagonal(nearliness=nearliness)(weight),
        ao_nearly_diagonal_mask(weight, nearliness=nearliness),
    )


def test_no_python_loop_over_rows() -> None:
    source = inspect.getsource(nearly_diagonal.NearlyDiagonal._mask)
    assert "range(-reach, reach + 1)" in source  # the one loop runs over diagonals
    assert source.count("for ") == 1 and "while " not in source


@pytest.mark.parametrize(
    "nearliness",
    [
        1,
        3,
        2 * nearly_diagonal._FILL_DIAGONALS_MAX - 1,
        2 * nearly_diagonal._FILL_DIAGONALS_MAX + 1,
        201,
    ],
)
def test_narrow_and_wide_bands_agree_with_torch_ao(nearliness: int) -> None:
    weight = torch.randn(150, 230)
    assert torch.equal(
        fs.NearlyDiagonal(nearliness=nearliness)(weight),
        ao_nearly_diagonal_mask(weight, nearliness=nearliness),
    )


@pytest.mark.parametrize(
    ("leaf", "error", "message"),
    [
        (
            torch.ones(5),
            ValueError,
            "NearlyDiagonal: got a 1-D torch.float32 tensor of shape .5,.; NearlyDiagonal needs 2-D weights",
        ),
        (torch.ones(2, 2, 2), ValueError, "needs 2-D weights"),
        ("w", TypeError, "NearlyDiagonal needs a tensor"),
    ],
)
def test_bad_leaf(leaf: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        fs.NearlyDiagonal()(leaf)


def test_config() -> None:
    with pytest.raises(TypeError, match="nearliness must be an int"):
        fs.NearlyDiagonal(nearliness=3.0)
    with pytest.raises(TypeError):
        fs.NearlyDiagonal(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fs.NearlyDiagonal().nearliness = 3


def test_under_vmap_broadcasts_over_the_batch() -> None:
    stacked = torch.randn(3, 5, 5)
    masks = torch.func.vmap(fs.NearlyDiagonal(nearliness=3))(stacked)
    assert masks.shape == (3, 5, 5)
    assert all(torch.equal(mask, fs.NearlyDiagonal(nearliness=3)(stacked[0])) for mask in masks)


def test_non_positive_nearliness_zeroes_any_shape_like_torch_ao() -> None:
    assert not fs.NearlyDiagonal(nearliness=0)(torch.ones(5)).any()
    with pytest.raises(ValueError, match="needs 2-D weights"):
        fs.NearlyDiagonal(nearliness=1)(torch.ones(5))
