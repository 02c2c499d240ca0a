"""to_csr / to_bsr / to_semi_structured: pattern checks of every leaf first, then torch's layouts."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.export import layouts, to_bsr, to_csr, to_semi_structured
from funcsparse.export.patterns import block_violation, nm_violation
from funcsparse.testing import strategies as fst

SEMI = torch.sparse.SparseSemiStructuredTensor


def _bits(tensor: Tensor) -> Tensor:
    return tensor.contiguous().view(-1).view(torch.uint8)


def _canonical(tensor: Tensor) -> Tensor:
    """Bits with NaN payloads and -0.0 normalised, as torch's sparse ``to_dense`` (which adds
    the stored values into zeros) gives them."""
    if not tensor.is_floating_point():
        return _bits(tensor)
    return _bits(torch.where(tensor.isnan(), torch.nan, tensor) + 0)


def _ones_where(mask: Tensor) -> Tensor:
    """A tensor whose kept entries are all nonzero: torch's own converters store exactly them."""
    return torch.where(mask, 1.0, 0.0)


@st.composite
def weights_and_masks(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    shape = draw(fst.shapes(allow_empty=True))
    weight = draw(fst.tensors(shape, special=True))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    return weight, mask


@st.composite
def block_masked(draw: st.DrawFn) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """A 2-D weight and a mask of whole ``blocksize`` blocks (by construction or WeightNorm)."""
    rows, cols = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 2, 4]))
    grid = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    weight = draw(fst.tensors((grid[0] * rows, grid[1] * cols), ties=True))
    if draw(st.booleans()) and weight.numel():
        level = draw(st.sampled_from([0.0, 0.5, 1.0]))
        mask = fs.WeightNorm(level, sparse_block_shape=(rows, cols))(weight)
    else:
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        picks = torch.rand(grid, generator=g) < 0.5
        mask = picks.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    return weight, mask, (rows, cols)


# --- to_csr ---


def test_to_csr_stores_exactly_the_kept_positions_kept_zeros_included() -> None:
    params = {"w": torch.tensor([[0.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), "b": torch.ones(2)}
    mask = torch.tensor([[True, False, True], [False, True, False]])
    out = to_csr(params, {"w": mask, "b": None})
    csr = out["w"]
    assert csr.layout == torch.sparse_csr
    assert csr.crow_indices().tolist() == [0, 2, 3]
    assert csr.col_indices().tolist() == [0, 2, 1]
    assert csr.values().tolist() == [0.0, 3.0, 0.0]  # two kept zeros stay stored
    assert out["b"].layout == torch.strided and torch.equal(out["b"], params["b"])
    assert list(out) == ["w", "b"]


def test_to_csr_refuses_masked_leaves_that_are_not_two_dim() -> None:
    params = {"conv": torch.ones(2, 3, 2, 2), "b": torch.ones(2)}
    with pytest.raises(ValueError, match=r"^to_csr: the masked leaf at 'conv' is a 4-D") as info:
        to_csr(params, {"conv": torch.ones(2, 3, 2, 2, dtype=torch.bool)})
    assert "flatten(1)" in str(info.value)
    assert to_csr(params, {"b": None})["conv"].layout == torch.strided  # unmasked: fine


@pytest.mark.parametrize("name", ["to_csr", "to_bsr", "to_semi_structured"])
def test_layouts_refuse_masked_meta_leaves_by_name(name: str) -> None:
    params = {"fc.weight": torch.empty(16, 16, dtype=torch.float16, device="meta")}
    masks = {"fc.weight": torch.empty(16, 16, dtype=torch.bool, device="meta")}
    kwargs = {"blocksize": (2, 2)} if name == "to_bsr" else {}
    with pytest.raises(
        ValueError, match=rf"^{name}: the masked leaf at 'fc.weight' is on the meta"
    ):
        getattr(layouts, name)(params, masks, **kwargs)
    unmasked = getattr(layouts, name)(params, None, **kwargs)["fc.weight"]
    assert unmasked.device.type == "meta" and unmasked.shape == (16, 16)


def test_to_csr_renames_the_structure_checks() -> None:
    with pytest.raises(ValueError, match=r"^to_csr: the mask at 'w' has shape \(2, 2\)"):
        to_csr({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"^to_csr: the mask at 'w' must be a torch.bool"):
        to_csr({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)})


def test_to_csr_keeps_dtypes_and_detaches() -> None:
    mask = torch.tensor([[True, False], [True, True]])
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.int32):
        leaf = torch.tensor([[1, 2], [3, 4]]).to(dtype)
        csr = to_csr({"w": leaf}, {"w": mask})["w"]
        assert csr.dtype == dtype
        assert torch.equal(_bits(csr.to_dense()), _bits(fs.squash({"w": leaf}, {"w": mask})["w"]))
    weight = torch.ones(2, 2, requires_grad=True)
    assert not to_csr({"w": weight}, {"w": mask})["w"].requires_grad


@given(weights_and_masks(), st.sampled_from(["flat", "nested"]))
def test_to_csr_round_trips_to_squash_and_matches_torch_indices(
    case: tuple[Tensor, Tensor], layout: str
) -> None:
    weight, mask = case
    params = {"w": weight} if layout == "flat" else {"layer": {"w": weight}}
    masks = {"w": mask} if layout == "flat" else {"layer": {"w": mask}}
    before = weight.clone()
    path = "w" if layout == "flat" else "layer.w"
    csr = to_csr(params, masks)[path]
    assert torch.equal(_canonical(csr.to_dense()), _canonical(fs.squash(params, masks)[path]))
    expected = _ones_where(mask).to_sparse_csr()
    assert torch.equal(csr.crow_indices(), expected.crow_indices())
    assert torch.equal(csr.col_indices(), expected.col_indices())
    assert torch.equal(_bits(csr.values()), _bits(weight[mask]))
    assert torch.equal(_bits(weight), _bits(before))


# --- to_bsr ---


def test_to_bsr_stores_whole_kept_blocks() -> None:
    weight = torch.arange(32.0).view(4, 8)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0:2, 4:8] = True
    mask[2:4, 0:4] = True
    bsr = to_bsr({"w": weight}, {"w": mask}, blocksize=(2, 4))["w"]
    assert bsr.layout == torch.sparse_bsr
    assert bsr.crow_indices().tolist() == [0, 1, 2]
    assert bsr.col_indices().tolist() == [1, 0]
    assert torch.equal(bsr.values(), torch.stack([weight[0:2, 4:8], weight[2:4, 0:4]]))


def test_to_bsr_names_the_leaf_and_the_first_partly_kept_block() -> None:
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[2, 5] = False
    mask[3, 1] = False
    params = {"a": torch.ones(4, 8), "b": torch.ones(4, 8)}
    masks = {"a": torch.ones(4, 8, dtype=torch.bool), "b": mask}
    bad = r"^to_bsr: the mask at 'b' is not made of whole"
    with (
        mock.patch.object(layouts, "_bsr", wraps=layouts._bsr) as convert,
        pytest.raises(ValueError, match=bad) as e,
    ):
        to_bsr(params, masks, blocksize=(2, 4))
    assert "block [2:4, 0:4] keeps 7 of its 8 entries" in str(e.value)
    assert convert.call_count == 0  # nothing converted, not even the good leaf 'a'


def test_to_bsr_names_a_shape_the_blocks_do_not_divide() -> None:
    with pytest.raises(ValueError, match=r"^to_bsr: the mask at 'w' .*\(6, 8\) are not divisible"):
        to_bsr({"w": torch.ones(6, 8)}, {"w": torch.ones(6, 8, dtype=torch.bool)}, blocksize=(4, 4))


@pytest.mark.parametrize(("blocksize", "error"), [((4,), TypeError), ((0, 4), ValueError)])
def test_to_bsr_refuses_bad_blocksizes(blocksize: object, error: type) -> None:
    with pytest.raises(error, match=r"^to_bsr: blocksize"):
        to_bsr({"w": torch.ones(4, 4)}, None, blocksize=blocksize)


def test_to_bsr_refuses_masked_leaves_that_are_not_two_dim() -> None:
    with pytest.raises(ValueError, match=r"^to_bsr: the masked leaf at 'b' is a 1-D"):
        to_bsr({"b": torch.ones(4)}, {"b": torch.ones(4, dtype=torch.bool)}, blocksize=(1, 2))


@given(block_masked())
def test_to_bsr_round_trips_to_squash_and_matches_torch_indices(
    case: tuple[Tensor, Tensor, tuple[int, int]],
) -> None:
    weight, mask, blocksize = case
    bsr = to_bsr({"w": weight}, {"w": mask}, blocksize=blocksize)["w"]
    squashed = fs.squash({"w": weight}, {"w": mask})["w"]
    assert torch.equal(_canonical(bsr.to_dense()), _canonical(squashed))
    rows, cols = blocksize
    grid = (mask.shape[0] // rows, mask.shape[1] // cols)
    kept_blocks = squashed.view(grid[0], rows, grid[1], cols)
    kept_blocks = kept_blocks.transpose(1, 2)[mask[::rows, ::cols]]
    assert torch.equal(_bits(bsr.values()), _bits(kept_blocks))
    expected = _ones_where(mask).to_sparse_bsr(blocksize)
    assert torch.equal(bsr.crow_indices(), expected.crow_indices())
    assert torch.equal(bsr.col_indices(), expected.col_indices())
    assert bsr.values().shape == (int(mask.sum()) // (blocksize[0] * blocksize[1]), *blocksize)


@given(weights_and_masks(), st.sampled_from([(1, 2), (2, 2), (2, 1), (1, 1)]))
def test_to_bsr_refuses_exactly_the_masks_that_are_not_whole_blocks(
    case: tuple[Tensor, Tensor], blocksize: tuple[int, int]
) -> None:
    weight, mask = case
    problem = block_violation(mask, blocksize=blocksize)
    if problem is None:
        assert (
            to_bsr({"w": weight}, {"w": mask}, blocksize=blocksize)["w"].layout == torch.sparse_bsr
        )
        return
    with pytest.raises(ValueError) as info:
        to_bsr({"w": weight}, {"w": mask}, blocksize=blocksize)
    assert str(info.value) == (
        f"to_bsr: the mask at 'w' is not made of whole {blocksize} blocks: {problem}"
    )


# --- to_semi_structured ---


def _two_four(rows: int, cols: int, seed: int = 0) -> Tensor:
    return fs.NM(n=2, m=4)(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))


def test_to_semi_structured_on_cpu_checks_the_pattern_then_says_cuda_only() -> None:
    params = {"w": torch.ones(32, 64, dtype=torch.float16), "b": torch.ones(32)}
    with pytest.raises(ValueError, match=r"^to_semi_structured: the leaf at 'w' is on cpu") as e:
        to_semi_structured(params, {"w": _two_four(32, 64)})
    assert "runs only on CUDA" in str(e.value)


def test_to_semi_structured_names_the_first_group_before_any_device_error() -> None:
    good, bad = _two_four(32, 64, seed=1), _two_four(32, 64, seed=2)
    bad[5, 8:12] = True
    params = {"a": torch.ones(32, 64, dtype=torch.float16), "z": torch.ones(32, 64).half()}
    with pytest.raises(ValueError, match=r"^to_semi_structured: the mask at 'z' is not 2:4") as e:
        to_semi_structured(params, {"a": good, "z": bad})
    assert "group [5, 8:12] keeps 4 entries; 2:4 allows at most 2" in str(e.value)


def test_to_semi_structured_accepts_groups_with_fewer_than_two_kept() -> None:
    mask = _two_four(16, 16)
    mask[0] = False  # groups with none kept are still 2:4 for the kernels
    with pytest.raises(ValueError, match=r"runs only on CUDA"):
        to_semi_structured({"w": torch.ones(16, 16, dtype=torch.bfloat16)}, {"w": mask})


@pytest.mark.parametrize(
    ("leaf", "error", "words"),
    [
        (torch.ones(32, 64), TypeError, "is a 2-D torch.float32"),
        (torch.ones(24, 64, dtype=torch.float16), ValueError, "shape (24, 64)"),
        (torch.ones(32, 8, dtype=torch.float16), ValueError, "positive multiple of (16, 16)"),
        (torch.ones(4, 16, 16, dtype=torch.float16), ValueError, "masked leaf at 'w' is a 3-D"),
        (torch.ones(32, 48, dtype=torch.int8), ValueError, "positive multiple of (32, 32)"),
    ],
)
def test_to_semi_structured_states_torch_s_dtype_and_shape_constraints(
    leaf: Tensor, error: type, words: str
) -> None:
    mask = torch.zeros(leaf.shape, dtype=torch.bool)
    with pytest.raises(error, match=r"^to_semi_structured: ") as info:
        to_semi_structured({"w": leaf}, {"w": mask})
    assert words in str(info.value)


def test_to_semi_structured_with_cutlass_takes_float32_as_one_of_two() -> None:
    params = {"w": torch.ones(32, 32)}
    with mock.patch.object(SEMI, "_FORCE_CUTLASS", True):
        with pytest.raises(ValueError, match=r"is not 1:2 along its rows: group \[0, 0:2\]"):
            to_semi_structured(
                params, {"w": torch.tensor([[True, True, False, False]] * 32).repeat(1, 8)}
            )
        with pytest.raises(ValueError, match=r"runs only on CUDA"):
            to_semi_structured(params, {"w": fs.NM(n=1, m=2)(torch.randn(32, 32))})


def test_to_semi_structured_without_masked_leaves_returns_dense_copies_on_cpu() -> None:
    params = {"w": torch.ones(3, 5)}
    out = to_semi_structured(params, {"w": None})
    assert torch.equal(out["w"], params["w"]) and out["w"] is not params["w"]


@given(st.integers(0, 2**31 - 1), st.sampled_from(["2:4", "2:4 and one more", "random"]))
def test_to_semi_structured_refuses_exactly_what_nm_violation_names(seed: int, kind: str) -> None:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        mask = torch.rand(32, 64, generator=g) < 0.3
    else:
        ranks = torch.rand(32, 16, 4, generator=g).argsort(-1).argsort(-1)
        mask = (ranks < torch.randint(0, 3, (32, 16, 1), generator=g)).reshape(32, 64)
        if kind == "2:4 and one more":
            mask.view(-1)[int(torch.randint(0, 32 * 64, (1,), generator=g))] = True
    problem = nm_violation(mask, n=2, m=4)
    with pytest.raises(ValueError) as info:
        to_semi_structured({"w": torch.ones(32, 64, dtype=torch.float16)}, {"w": mask})
    if problem is None:
        assert "runs only on CUDA" in str(info.value)
    else:
        assert str(info.value) == (
            f"to_semi_structured: the mask at 'w' is not 2:4 along its rows: {problem}"
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's 2:4 layout needs a CUDA GPU")
def test_to_semi_structured_on_cuda_round_trips_and_multiplies() -> None:
    weight = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    mask = fs.NM(n=2, m=4)(weight)
    params, masks = {"w": weight}, {"w": mask}
    sparse = to_semi_structured(params, masks)["w"]
    squashed = fs.squash(params, masks)["w"]
    assert isinstance(sparse, SEMI)
    assert torch.equal(sparse.to_dense(), squashed)
    x = torch.randn(128, 32, dtype=torch.float16, device="cuda")
    torch.testing.assert_close(torch.mm(sparse, x), torch.mm(squashed, x))


@pytest.mark.parametrize("blocksize", [(2**40, 2**40), (10**400, 1), (2**62, 2)])
def test_to_bsr_refuses_blocks_torch_cannot_index_even_on_zero_size_leaves(
    blocksize: tuple[int, int],
) -> None:
    params = {"w": torch.ones(0, 2), "v": torch.ones(0, 0)}
    masks = {"w": torch.ones(0, 2, dtype=torch.bool), "v": torch.ones(0, 0, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"^to_bsr: blocksize=.* than torch can index") as info:
        to_bsr(params, masks, blocksize=blocksize)
    assert len(str(info.value)) < 200
    empty = to_bsr(params, masks, blocksize=(1, 2))
    assert empty["w"].layout == torch.sparse_bsr and empty["w"].shape == (0, 2)
