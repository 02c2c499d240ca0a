"""WeightNorm: pinned masks, bit-for-bit agreement with torch.ao, the padded cases, errors."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import funcsparse as fs
from funcsparse.methods import weight_norm
from funcsparse.testing import check_leaf_mask
from funcsparse.testing.oracles import ao_weight_norm_mask

# WeightNorm takes sparsity in [0, 1] only (torch.ao's sparsifier also takes levels outside
# it, clamped; that is the adapter's job and tests/adapter pins it).
LEVELS = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    st.floats(0.0, 1.0, allow_nan=False),
)


@st.composite
def weight_norm_cases(draw: st.DrawFn, *, divisible: bool | None = None) -> dict[str, object]:
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    height, width = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    if divisible:
        height, width = rows * max(1, height // rows), cols * max(1, width // cols)
    size = rows * cols
    return {
        "weight": torch.randn(
            height,
            width,
            generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1))),
            dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        ),
        "sparsity_level": draw(LEVELS),
        "sparse_block_shape": (rows, cols),
        "zeros_per_block": draw(st.one_of(st.none(), st.integers(0, size))),
        "norm": draw(st.sampled_from([1, 2])),
    }


def ours(case: dict[str, object]) -> torch.Tensor:
    """funcsparse's mask of a case (keyed by torch.ao's names: sparsity_level is sparsity)."""
    config = {key: value for key, value in case.items() if key not in ("weight", "sparsity_level")}
    config["sparsity"] = case["sparsity_level"]
    weight = case["weight"]
    assert isinstance(weight, torch.Tensor)
    return fs.WeightNorm(**config)(weight)


def refused(case: dict[str, object]) -> bool:
    """Blocks that do not divide the weight with 0 < zeros_per_block < block size: funcsparse
    refuses the shape (torch.ao crashes or stores a padded-shape mask there)."""
    weight = case["weight"]
    assert isinstance(weight, torch.Tensor)
    rows, cols = case["sparse_block_shape"]
    size = rows * cols
    zeros = size if case["zeros_per_block"] is None else case["zeros_per_block"]
    divides = weight.shape[0] % rows == 0 and weight.shape[1] % cols == 0
    return not divides and 0 < zeros < size


class TestPinned:
    def test_level_selects_blocks_of_lowest_mean_square(self) -> None:
        weight = torch.tensor([[1.0, -4.0, 0.5, 3.0], [2.0, -0.1, 6.0, 0.2]])
        mask = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 2))(weight)
        assert mask.tolist() == [[True, True, False, False], [False, False, True, True]]

    def test_norm_one_ranks_by_mean_absolute_value(self) -> None:
        # Squares rank block (0, 1) below block (1, 0); absolute values the other way.
        weight = torch.tensor([[3.0, 3.0], [0.0, 5.0]])
        by_square = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 2), norm=2)(weight)
        by_abs = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 2), norm=1)(weight)
        assert by_square.tolist() == [[False, False], [True, True]]
        assert by_abs.tolist() == [[True, True], [False, False]]

    def test_two_four(self) -> None:
        weight = torch.tensor([[1.0, -4.0, 0.5, 3.0, 9.0, 8.0, -7.0, 0.0]])
        mask = fs.WeightNorm(sparsity=1.0, zeros_per_block=2)(weight)
        assert mask.tolist() == [[False, True, False, True, True, True, False, False]]

    def test_partial_blocks_average_their_real_entries(self) -> None:
        # 1x3 blocks over width 4: the second block holds one entry (mean 2.5**2 = 6.25),
        # which beats the first block's mean (1+4+9)/3 = 4.67.
        weight = torch.tensor([[1.0, 2.0, 3.0, 2.5]])
        mask = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 3))(weight)
        assert mask.tolist() == [[False, False, False, True]]

    def test_level_just_below_one_keeps_one_block(self) -> None:
        weight = torch.arange(1.0, 9.0).view(2, 4)
        mask = fs.WeightNorm(sparsity=0.99, sparse_block_shape=(1, 2))(weight)
        assert mask.tolist() == [[False] * 4, [False, False, True, True]]

    def test_rounds_half_to_even_like_python(self) -> None:
        # 5 blocks at level 0.5: round(2.5) == 2 blocks, as torch.ao computes it.
        mask = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 1))(torch.arange(1.0, 6.0)[None])
        assert mask.tolist() == [[False, False, True, True, True]]

    @pytest.mark.parametrize(
        ("level", "zeros", "expected"),
        [(0.0, None, 1.0), (0.0, 2, 1.0), (0.7, 0, 1.0), (1.0, None, 0.0), (1.0, 4, 0.0)],
    )
    def test_trivial_levels(self, level: float, zeros: int | None, expected: float) -> None:
        mask = fs.WeightNorm(sparsity=level, zeros_per_block=zeros)(torch.randn(3, 8))
        assert mask.dtype == torch.bool
        assert mask.float().mean().item() == expected


class TestTies:
    @pytest.mark.parametrize("shape", [(1, 4), (2, 2), (1, 1), (3, 5)])
    @pytest.mark.parametrize("level", [0.3, 0.5, 1.0])
    @pytest.mark.parametrize("zeros", [None, 1, 2])
    def test_all_equal_weights_give_torch_aos_count_lowest_index_first(
        self, shape: tuple[int, int], level: float, zeros: int | None
    ) -> None:
        rows, cols = shape
        if zeros is not None and zeros > rows * cols:
            return
        weight = torch.ones(6, 10)
        method = fs.WeightNorm(sparsity=level, sparse_block_shape=shape, zeros_per_block=zeros)
        grid = -(-6 // rows) * -(-10 // cols)
        divides = 6 % rows == 0 and 10 % cols == 0
        if not divides and zeros is not None and zeros < rows * cols:
            with pytest.raises(ValueError, match="to divide the weight's shape"):
                method(weight)
            return
        mask = method(weight)
        if divides:
            # Same number of zeros as torch.ao (with partial blocks the count of selected
            # blocks is the same, but which blocks torch.ao's topk picks is arbitrary).
            reference = ao_weight_norm_mask(
                weight, sparsity_level=level, sparse_block_shape=shape, zeros_per_block=zeros
            )
            assert int((~mask).sum()) == int((~reference).sum())
        # The selected blocks are the first ones in row-major block order.
        selected = grid if level >= 1 else min(grid - 1, round(level * grid))
        first_block_rows = mask[:rows, :cols]
        if selected > 0 and (zeros is None or zeros == rows * cols):
            assert not first_block_rows.any()
        assert torch.equal(
            mask,
            fs.WeightNorm(sparsity=level, sparse_block_shape=shape, zeros_per_block=zeros)(
                weight.clone()
            ),
        )

    def test_within_block_ties_prune_the_lower_index(self) -> None:
        weight = torch.tensor([[2.0, 1.0, 1.0, 1.0]])
        mask = fs.WeightNorm(sparsity=1.0, zeros_per_block=2)(weight)
        assert mask.tolist() == [[True, False, False, True]]


class TestAgainstTorchAO:
    @given(weight_norm_cases())
    def test_bit_for_bit(self, case: dict[str, object]) -> None:
        assume(not refused(case))
        assert torch.equal(ours(case), ao_weight_norm_mask(**case))

    @given(weight_norm_cases(divisible=True))
    def test_bit_for_bit_on_dividing_shapes(self, case: dict[str, object]) -> None:
        assert torch.equal(ours(case), ao_weight_norm_mask(**case))

    @given(weight_norm_cases())
    def test_partial_blocks_that_do_not_divide_are_refused(self, case: dict[str, object]) -> None:
        # Until issue 9 funcsparse returned torch.ao's padded-grid result cropped to the
        # weight: the edge entries were never pruned (padding stood in for real zeros).
        assume(refused(case))
        with pytest.raises(ValueError, match="to divide the weight's shape"):
            ours(case)
        height, width = case["weight"].shape
        if case["sparsity_level"] > 0:
            # Why: torch.ao crashes there, or stores a mask of the padded grid.
            try:
                stored = ao_weight_norm_mask(**case)
            except RuntimeError:  # torch.ao's size mismatch between its two masks
                stored = None
            assert stored is None or stored.shape != (height, width)

    def test_callable_norm(self) -> None:
        weight = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
        cube = lambda t: t.abs() ** 3  # noqa: E731 - torch.ao takes the same callable
        mask = fs.WeightNorm(sparsity=0.4, sparse_block_shape=(2, 2), norm=cube)(weight)
        expected = ao_weight_norm_mask(
            weight, sparsity_level=0.4, sparse_block_shape=(2, 2), zeros_per_block=None, norm=cube
        )
        assert torch.equal(mask, expected)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision(self, dtype: torch.dtype) -> None:
        weight = torch.randn(16, 24, generator=torch.Generator().manual_seed(2)).to(dtype)
        for zeros in (None, 2):
            mask = fs.WeightNorm(sparsity=0.5, zeros_per_block=zeros)(weight)
            expected = ao_weight_norm_mask(
                weight, sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=zeros
            )
            assert torch.equal(mask, expected)


@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(1, 6),
    st.sampled_from([1, 2]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_fused_block_scores_equal_avg_pool2d(
    rows: int, cols: int, grid_rows: int, grid_cols: int, norm: int, dtype: torch.dtype
) -> None:
    weight = torch.randn(rows * grid_rows, cols * grid_cols, dtype=dtype)
    method = fs.WeightNorm(sparse_block_shape=(rows, cols), norm=norm)
    scores = method._scores(weight)
    pooled = F.avg_pool2d(scores[None, None], (rows, cols), ceil_mode=True)[0, 0]
    assert torch.equal(method._block_scores(weight), pooled)


class TestConfig:
    def test_frozen_and_keyword_only(self) -> None:
        method = fs.WeightNorm(sparsity=0.3)
        with pytest.raises(dataclasses.FrozenInstanceError):
            method.sparsity = 0.5
        with pytest.raises(TypeError, match="too many positional arguments"):
            fs.WeightNorm(0.5, (1, 4))
        assert fs.WeightNorm(sparse_block_shape=[2, 2]).sparse_block_shape == (2, 2)
        assert fs.WeightNorm(sparsity=0.3) == method == fs.WeightNorm(0.3)
        assert fs.WeightNorm().sparsity == 0.5

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            (
                {"sparsity_level": 0.5},
                "WeightNorm: got an unexpected keyword argument 'sparsity_level' (funcsparse's "
                "'sparsity_level' is sparsity); call it as WeightNorm(sparsity=0.5, *, "
                "sparse_block_shape=(1, 4), zeros_per_block=None, norm=2)",
            ),
            (
                {"count": 3},
                "WeightNorm: got an unexpected keyword argument 'count'; call it as "
                "WeightNorm(sparsity=0.5, *, sparse_block_shape=(1, 4), zeros_per_block=None, "
                "norm=2)",
            ),
        ],
    )
    def test_a_wrong_call_says_how_to_call_it(
        self, kwargs: dict[str, object], message: str
    ) -> None:
        with pytest.raises(TypeError) as info:
            fs.WeightNorm(**kwargs)
        assert str(info.value) == message

    @pytest.mark.parametrize("level", [-0.5, -3.0, 1.5, 2.0])
    def test_levels_outside_0_1_are_refused(self, level: float) -> None:
        # Until issue 8 these were accepted as torch.ao accepts them (<= 0 keeps all, >= 1
        # selects every block); the adapter's WeightNormSparsifier still clamps them.
        with pytest.raises(ValueError) as info:
            fs.WeightNorm(level)
        assert str(info.value) == (
            f"WeightNorm: sparsity must be a fraction in [0, 1], got {level!r}"
        )

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            (
                {"zeros_per_block": 5},
                ValueError,
                "cannot be more than the total number of elements",
            ),
            ({"zeros_per_block": -1}, ValueError, "should be positive"),
            (
                {"sparsity": float("nan")},
                ValueError,
                r"sparsity must be a fraction in \[0, 1\], got nan",
            ),
            ({"sparsity": "0.5"}, TypeError, r"sparsity must be a fraction in \[0, 1\], got str"),
            ({"sparsity": True}, TypeError, "got bool True"),
            ({"sparsity": None}, TypeError, "got NoneType None"),
            ({"sparse_block_shape": (0, 4)}, ValueError, "must be positive"),
            ({"sparse_block_shape": (1, 2, 3)}, TypeError, "pair of ints"),
            (
                {"sparse_block_shape": (1.0, 4)},
                TypeError,
                r"sparse_block_shape\[0\] must be an int",
            ),
            ({"norm": 3}, ValueError, "L-3 is not implemented"),
            ({"norm": True}, TypeError, "norm must be an int"),
            ({"zeros_per_block": 1.5}, TypeError, "zeros_per_block must be an int"),
        ],
    )
    def test_bad_config_raises_on_construction(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            fs.WeightNorm(**kwargs)

    def test_torch_ao_raises_the_same_zeros_per_block_errors(self) -> None:
        from torch.ao.pruning import WeightNormSparsifier

        for zeros, message in [(5, "cannot be more than"), (-1, "should be positive")]:
            sparsifier = WeightNormSparsifier(zeros_per_block=zeros)
            sparsifier.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4)), None)
            with pytest.raises(ValueError, match=message):
                sparsifier.step()
            with pytest.raises(ValueError, match=message):
                fs.WeightNorm(zeros_per_block=zeros)

    @pytest.mark.parametrize(
        ("leaf", "error", "message"),
        [
            (
                torch.ones(4),
                ValueError,
                re.escape(
                    "WeightNorm: got a 1-D torch.float32 tensor of shape (4,); WeightNorm needs 2-D weights"
                ),
            ),
            (torch.ones(2, 3, 4), ValueError, "needs 2-D weights"),
            (torch.ones(2, 4, dtype=torch.int64), TypeError, "needs floating-point weights"),
            ([[1.0]], TypeError, "got list"),
        ],
    )
    def test_bad_leaf(self, leaf: object, error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            fs.WeightNorm()(leaf)

    def test_callable_norm_must_return_a_matching_tensor(self) -> None:
        with pytest.raises(TypeError, match="norm callable must return a floating tensor of shape"):
            fs.WeightNorm(norm=lambda t: t.sum())(torch.randn(2, 4))


@st.composite
def tie_free_cases(draw: st.DrawFn) -> tuple[torch.Tensor, tuple[int, int], int | None]:
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    grid_rows, grid_cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    size = rows * cols
    n = rows * grid_rows * cols * grid_cols
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # Distinct magnitudes: every entry's score differs from every other's.
    weight = (torch.randperm(n, generator=generator).float() + 1).view(rows * grid_rows, -1)
    return weight, (rows, cols), draw(st.one_of(st.none(), st.integers(0, size)))


class TestProperties:
    @given(tie_free_cases(), st.floats(0.0, 1.0))
    def test_exact_count_determinism_and_untouched_input(
        self, case: tuple[torch.Tensor, tuple[int, int], int | None], level: float
    ) -> None:
        weight, shape, zeros = case
        before = weight.clone()
        method = fs.WeightNorm(sparsity=level, sparse_block_shape=shape, zeros_per_block=zeros)
        mask = method(weight)
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        assert torch.equal(weight, before)
        assert torch.equal(mask, method(weight))
        n_blocks = weight.numel() // method.block_size
        selected = n_blocks if level >= 1 else max(0, min(n_blocks - 1, round(level * n_blocks)))
        expected_zeros = 0 if level <= 0 else selected * method.block_zeros
        assert int((~mask).sum()) == expected_zeros

    @given(tie_free_cases(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
    def test_a_higher_level_never_unprunes(
        self, case: tuple[torch.Tensor, tuple[int, int], int | None], a: float, b: float
    ) -> None:
        weight, shape, zeros = case
        low, high = sorted((a, b))
        lower = fs.WeightNorm(sparsity=low, sparse_block_shape=shape, zeros_per_block=zeros)
        higher = fs.WeightNorm(sparsity=high, sparse_block_shape=shape, zeros_per_block=zeros)
        assert not (higher(weight) & ~lower(weight)).any()

    @given(st.integers(0, 2**31 - 1), st.sampled_from([(1, 4), (2, 2), (1, 1), (2, 3)]))
    def test_ties_keep_counts_and_nesting(self, seed: int, shape: tuple[int, int]) -> None:
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randint(-2, 3, (6, 12), generator=generator).float()  # many ties
        masks = [
            fs.WeightNorm(sparsity=level, sparse_block_shape=shape)(weight)
            for level in (0.2, 0.5, 0.8)
        ]
        n_blocks = 72 // (shape[0] * shape[1])
        for level, mask in zip((0.2, 0.5, 0.8), masks, strict=True):
            assert (
                int((~mask).sum())
                == min(n_blocks - 1, round(level * n_blocks)) * shape[0] * shape[1]
            )
        assert not (masks[2] & ~masks[1]).any() and not (masks[1] & ~masks[0]).any()


def test_many_equal_blocks_and_repruning_a_pruned_weight() -> None:
    # Regression: 65,536 equal block scores used to recurse without end in the eager path.
    mask = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 4))(torch.zeros(512, 512))
    assert int((~mask).sum()) == 512 * 512 // 2 and not mask[:256].any() and mask[256:].all()
    weight = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0))
    method = fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 4))
    first = method(weight)
    assert torch.equal(method(weight * first), first)  # scoring the pruned weight again


@pytest.mark.parametrize("shape", [(0, 5), (0, 4), (3, 0), (0, 0)])
@pytest.mark.parametrize("block", [(1, 4), (2, 3), (5, 5), (10**6, 10**6)])
@pytest.mark.parametrize("zeros", [None, 1])
def test_empty_weights_get_empty_masks(
    shape: tuple[int, int], block: tuple[int, int], zeros: int | None
) -> None:
    method = fs.WeightNorm(sparse_block_shape=block, zeros_per_block=zeros)
    if zeros == 1 and (shape[0] % block[0] or shape[1] % block[1]):  # as for any weight
        with pytest.raises(ValueError, match="to divide the weight's shape"):
            method(torch.randn(shape))
        return
    for dtype in (torch.float32, torch.float16):
        weight = torch.randn(shape).to(dtype)
        mask = method(weight)
        assert mask.shape == shape and mask.dtype == torch.bool
        assert method.expected_zeros(weight) == 0
        assert method.structure_problem(weight, mask) is None


def test_a_callable_norm_cannot_touch_the_weight() -> None:
    weight = torch.randn(4, 8)
    before = weight.clone()
    fs.WeightNorm(norm=lambda t: t.abs_())(weight)
    assert torch.equal(weight, before)


# --------------------------------------------------------------------------------------
# Scores rank as given; prev_mask is a total target (issue 8)
# --------------------------------------------------------------------------------------


class TestSignedScores:
    W = torch.ones(2, 4)

    def test_a_block_scores_the_mean_of_its_given_scores_signed(self) -> None:
        # Block means: -3, 1 in row 0; 0.5, 2.5 in row 1. Ranked by |score| the first
        # block would be kept (|-3| is the largest); ranked as given it goes first.
        scores = torch.tensor([[-4.0, -2.0, 0.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
        mask = fs.WeightNorm(0.5, sparse_block_shape=(1, 2))(self.W, scores=scores)
        assert mask.tolist() == [[False, False, True, True], [False, False, True, True]]
        mask = fs.WeightNorm(0.25, sparse_block_shape=(1, 2), norm=1)(self.W, scores=scores)
        assert mask.tolist() == [[False, False, True, True], [True, True, True, True]]
        # No norm is applied to given scores: norm=1 and norm=2 rank them alike.
        by_abs, by_square = (
            fs.WeightNorm(0.5, sparse_block_shape=(1, 2), norm=norm)(self.W, scores=scores)
            for norm in (1, 2)
        )
        assert torch.equal(by_abs, by_square)
        abs_mask = fs.WeightNorm(0.25, sparse_block_shape=(1, 2))(self.W, scores=scores.abs())
        assert abs_mask.tolist() == [[True, True, True, True], [False, False, True, True]]

    def test_zeros_within_a_block_are_its_lowest_given_scores(self) -> None:
        scores = torch.tensor([[-4.0, 1.0, -2.0, 3.0], [4.0, 3.0, 2.0, -1.0]])
        method = fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
        assert method(self.W, scores=scores).tolist() == [
            [False, True, False, True],
            [True, True, False, False],
        ]
        assert method(self.W, scores=scores.abs()).tolist() == [
            [True, False, False, True],
            [True, True, False, False],
        ]

    def test_weights_rank_by_their_norm(self) -> None:
        weight = torch.tensor([[-4.0, -2.0, 0.0, 2.0]])  # block mean squares 10, 2
        mask = fs.WeightNorm(0.5, sparse_block_shape=(1, 2))(weight)
        assert mask.tolist() == [[True, True, False, False]]


def weight_norm_after(
    weight: torch.Tensor,
    prev: torch.Tensor,
    method: fs.WeightNorm,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """The documented prev_mask rule by brute force, for block shapes that divide the weight:
    the weights as the model sees them (or the given scores) score the entries; blocks are
    taken in rank order of their mean until the zeros reach round(sparsity * n_blocks) *
    zeros_per_block (all blocks at sparsity 1); a taken block zeroes its pruned entries
    first, then its lowest entries, up to zeros_per_block."""
    rows, cols = method.sparse_block_shape
    height, width = weight.shape
    seen = torch.where(prev, weight, torch.zeros(()))
    entry = (seen.abs() if method.norm == 1 else seen * seen) if scores is None else scores
    zeros = method.block_zeros
    blocks = [(i, j) for i in range(height // rows) for j in range(width // cols)]

    def entries(block: tuple[int, int]) -> list[tuple[int, int]]:
        i, j = block
        return [
            (r, c) for r in range(i * rows, (i + 1) * rows) for c in range(j * cols, (j + 1) * cols)
        ]

    mask = prev.clone()
    if method.sparsity <= 0 or zeros == 0:
        return mask
    old = {b: sum(not bool(prev[e]) for e in entries(b)) for b in blocks}
    if method.sparsity >= 1:
        taken = blocks
    else:
        k = max(0, min(len(blocks) - 1, round(method.sparsity * len(blocks))))
        needed = k * zeros - sum(old.values())
        mean = {b: sum(float(entry[e]) for e in entries(b)) / (rows * cols) for b in blocks}
        taken, reached = [], 0
        for _, block in sorted(enumerate(blocks), key=lambda ib: (mean[ib[1]], ib[0])):
            if reached >= needed:
                break
            taken.append(block)
            reached += max(min(rows * cols, zeros) - old[block], 0)
    for block in taken:
        ranked = sorted(entries(block), key=lambda e: (bool(prev[e]), float(entry[e])))
        for e in ranked[:zeros]:
            mask[e] = False
    return mask


class TestPrevMask:
    W = torch.tensor([[1.0, -4.0, 0.5, 3.0], [2.0, -0.1, 6.0, 0.2]])

    def test_pruned_entries_count_as_zeros_of_the_weight_and_of_the_target(self) -> None:
        # Block mean squares: 8.5, 4.625 / 2.005, 18.02: without prev_mask the blocks of
        # 2.005 and 4.625 are pruned. With -4.0 pruned before, the model sees [1, 0] in the
        # first block (mean square 0.5): it is the lowest now, and it needs one zero more.
        method = fs.WeightNorm(0.5, sparse_block_shape=(1, 2))
        assert method(self.W).tolist() == [[True, True, False, False], [False, False, True, True]]
        prev = torch.ones(2, 4, dtype=torch.bool)
        prev[0, 1] = False
        mask = method(self.W, prev_mask=prev)
        assert mask.tolist() == [[False, False, True, True], [False, False, True, True]]
        # The level's target, 2 blocks of 2: 4 zeros in all, not 4 more (until issue 8 the
        # fresh mask was intersected with prev_mask: 5 zeros here).
        assert int((~mask).sum()) == 4
        check_leaf_mask(method, self.W, mask, data={"prev_mask": prev})

    def test_pruned_entries_are_the_first_zeros_of_their_block(self) -> None:
        prev = torch.ones(2, 4, dtype=torch.bool)
        prev[0, 1] = False  # -4.0, the largest of its block
        method = fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
        assert method(self.W).tolist() == [[False, True, False, True], [True, False, True, False]]
        assert method(self.W, prev_mask=prev).tolist() == [
            [True, False, False, True],
            [True, False, True, False],
        ]

    def test_more_old_zeros_than_the_target_keeps_prev_mask(self) -> None:
        prev = torch.tensor([[False, False, False, True], [True, True, True, True]])
        mask = fs.WeightNorm(0.25, sparse_block_shape=(1, 2))(self.W, prev_mask=prev)
        assert torch.equal(mask, prev)
        assert torch.equal(fs.WeightNorm(0.0)(self.W, prev_mask=prev), prev)

    def test_half_then_half_again_is_half(self) -> None:
        weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
        prev = fs.Magnitude(0.5)(weight)
        mask = fs.WeightNorm(0.5)(weight, prev_mask=prev)
        assert int((~mask).sum()) == 2048 and not bool((mask & ~prev).any())

    @given(tie_free_cases(), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans(), st.data())
    def test_equals_the_documented_rule(
        self,
        case: tuple[torch.Tensor, tuple[int, int], int | None],
        level: float,
        density: float,
        with_scores: bool,
        data: st.DataObject,
    ) -> None:
        weight, shape, zeros = case
        generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        prev = torch.rand(weight.shape, generator=generator) >= density
        scores = None
        if with_scores:  # distinct signed scores
            n = weight.numel()
            signs = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
            scores = ((torch.randperm(n, generator=generator).float() + 1) * signs).view_as(weight)
        norm = data.draw(st.sampled_from([1, 2]))
        method = fs.WeightNorm(level, sparse_block_shape=shape, zeros_per_block=zeros, norm=norm)
        kwargs = {"prev_mask": prev} if scores is None else {"prev_mask": prev, "scores": scores}
        mask = method(weight, **kwargs)
        assert torch.equal(mask, weight_norm_after(weight, prev, method, scores))
        check_leaf_mask(method, weight, mask, data=kwargs)

    @given(tie_free_cases(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
    def test_the_same_method_at_a_lower_level_nests_into_the_one_step_mask(
        self, case: tuple[torch.Tensor, tuple[int, int], int | None], a: float, b: float
    ) -> None:
        weight, shape, zeros = case
        low, high = sorted((a, b))
        lower = fs.WeightNorm(low, sparse_block_shape=shape, zeros_per_block=zeros)
        higher = fs.WeightNorm(high, sparse_block_shape=shape, zeros_per_block=zeros)
        prev = lower(weight)
        assert torch.equal(higher(weight, prev_mask=prev), higher(weight))


# --------------------------------------------------------------------------------------
# Blocks that do not divide the weight, blocks larger than it, huge ints (issue 9)
# --------------------------------------------------------------------------------------


class TestNonDividingBlocks:
    def test_partial_blocks_are_refused_naming_rule_path_shape_and_block(self) -> None:
        # Until issue 9: the two edge columns of every row were never pruned, so "every
        # row gets the 2:4 pattern" was false.
        params = {"layer.weight": torch.randn(3, 6)}
        rules = {"layer.*": fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=2)}
        with pytest.raises(ValueError) as info:
            fs.compute_masks(params, rules)
        assert str(info.value) == (
            "compute_masks: rule 'layer.*' (WeightNorm) got a 2-D torch.float32 tensor of shape "
            "(3, 6) at 'layer.weight'; WeightNorm with zeros_per_block=2 of a block of 4 "
            "entries needs sparse_block_shape=(1, 4) to divide the weight's shape; choose a "
            "block shape that divides it, or pad the weight (padding never stands in for real "
            "zeros)"
        )
        for level in (0.0, 0.5, 1.0):  # the shape is refused whatever the level
            with pytest.raises(ValueError, match=r"^WeightNorm: got .* \(3, 6\); WeightNorm with"):
                fs.WeightNorm(level, zeros_per_block=2)(torch.randn(3, 6))
        # Dividing shapes, and whole blocks, are fine.
        assert fs.WeightNorm(1.0, zeros_per_block=2)(torch.randn(3, 8)).sum() == 12
        assert fs.WeightNorm(1.0, zeros_per_block=4)(torch.randn(3, 6)).sum() == 0

    @pytest.mark.parametrize(
        ("row", "expected"),
        [
            ([1.0, 1.0, 1.0, 1.0, 3.0], [False, False, False, False, True]),  # 4 of 5 zeroed
            ([3.0, 3.0, 3.0, 3.0, 1.0], [True, True, True, True, False]),  # 1 of 5 zeroed
        ],
    )
    def test_width_five_level_half_zeroes_one_of_two_blocks(
        self, row: list[float], expected: list[bool]
    ) -> None:
        # (1, 4) blocks on width 5: a block of 4 entries and an edge block of 1. The level
        # is a fraction of blocks (torch.ao's rule): round(0.5 * 2) = 1 block, whole.
        weight = torch.tensor([row])
        method = fs.WeightNorm(0.5, sparse_block_shape=(1, 4))
        mask = method(weight)
        assert mask.tolist() == [expected]
        assert method.expected_zeros(weight) is None  # 4 or 1: it depends on the data
        assert method.structure_problem(weight, mask) is None
        check_leaf_mask(method, weight, mask)  # count, pattern, vmap, nesting, torch.ao
        # Over several rows, the blocks are ranked together: round(0.5 * 6) = 3 of them.
        rows = torch.tensor([row, [2.0] * 5, [0.5] * 5])
        many = method(rows)
        assert int((~many).reshape(3, 5)[:, :4].all(1).sum() + (~many)[:, 4].sum()) >= 3
        check_leaf_mask(method, rows, many)

    @given(weight_norm_cases(), st.booleans())
    def test_check_leaf_mask_agrees_with_the_masks(
        self, case: dict[str, object], whole: bool
    ) -> None:
        # expected_zeros and structure_problem (what check_masks reads) hold on every shape
        # the method accepts, the edge blocks of whole-block configs included.
        if whole:
            case = {**case, "zeros_per_block": None}
        assume(not refused(case))
        weight = case["weight"]
        assert isinstance(weight, torch.Tensor)
        method = fs.WeightNorm(
            case["sparsity_level"],
            sparse_block_shape=case["sparse_block_shape"],
            zeros_per_block=case["zeros_per_block"],
            norm=case["norm"],
        )
        check_leaf_mask(method, weight, method(weight))


class TestLargeBlocks:
    @given(
        weight_norm_cases(),
        st.integers(1, 3),
        st.integers(1, 3),
        st.sampled_from([None, 0, "whole"]),
    )
    def test_sides_longer_than_the_weight_are_clamped_without_changing_the_mask(
        self, case: dict[str, object], taller: int, wider: int, zeros: int | str | None
    ) -> None:
        weight = case["weight"]
        assert isinstance(weight, torch.Tensor)
        height, width = weight.shape
        big = (height * taller + taller - 1, width * wider + wider - 1)
        fit = (min(big[0], height), min(big[1], width))
        whole = zeros == "whole"
        case = {
            **case,
            "sparse_block_shape": big,
            "zeros_per_block": big[0] * big[1] if whole else zeros,
        }
        clamped = {
            **case,
            "sparse_block_shape": fit,
            "zeros_per_block": fit[0] * fit[1] if whole else zeros,
        }
        mask = ours(case)
        assert torch.equal(mask, ours(clamped))
        # torch.ao pads to the large block (small here): the same mask.
        assert torch.equal(mask, ao_weight_norm_mask(**case))

    @pytest.mark.parametrize("block", [(10**6, 10**6), (1, 10**6), (10**400, 3), (10**400,) * 2])
    @pytest.mark.parametrize("level", [0.3, 0.5, 1.0])
    def test_huge_blocks_allocate_nothing_large(self, block: tuple[int, int], level: float) -> None:
        # Until issue 9 these padded the weight to the block: gigabytes to overflow.
        weight = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
        method = fs.WeightNorm(level, sparse_block_shape=block)
        fitted = fs.WeightNorm(level, sparse_block_shape=(min(block[0], 8), min(block[1], 6)))
        prev = fs.Magnitude(0.25)(weight)
        scores = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
        for data in ({}, {"prev_mask": prev}, {"scores": scores}):
            mask = method(weight, **data)
            assert torch.equal(mask, fitted(weight, **data))
            assert method.expected_zeros(weight, **data) == fitted.expected_zeros(weight, **data)
            assert method.structure_problem(weight, mask, **data) is None
            if data:  # (without data, check_leaf_mask asks torch.ao, which pads to the block)
                check_leaf_mask(method, weight, mask, data=data)
        masks = fs.compute_masks({"w": torch.stack([weight, -weight])}, {"w": method}, batch_dims=1)
        assert torch.equal(masks["w"][0], method(weight))
        with pytest.raises(ValueError, match="to divide the weight's shape"):
            fs.WeightNorm(level, sparse_block_shape=block, zeros_per_block=2)(weight)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"sparsity": 10**400}, "sparsity must be a fraction in [0, 1]"),
            ({"sparsity": -(10**400)}, "sparsity must be a fraction in [0, 1]"),
            (
                {"zeros_per_block": 10**400},
                "cannot be more than the total number of elements in that block "
                "(zeros_per_block=an int of about 401 digits, block 1x4 has 4)",
            ),
            (
                {"sparse_block_shape": (-(10**400), 4)},
                "sides must be positive, got (-an int of about 401 digits, 4)",
            ),
            ({"norm": 10**400}, "norm must be 1, 2 or a callable, got an int of about 401 digits"),
        ],
    )
    def test_huge_ints_raise_value_error_with_a_short_message(
        self, kwargs: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ValueError) as info:
            fs.WeightNorm(**kwargs)
        assert message in str(info.value) and len(str(info.value)) < 200


# --------------------------------------------------------------------------------------
# Tiles: a call works a band of whole blocks at a time (bounded memory); same masks
# --------------------------------------------------------------------------------------


@st.composite
def tiled_cases(draw: st.DrawFn) -> tuple[fs.WeightNorm, torch.Tensor, dict[str, torch.Tensor]]:
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    height, width = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    zeros = draw(st.one_of(st.none(), st.integers(0, rows * cols)))
    if (zeros is not None and 0 < zeros < rows * cols) or draw(st.booleans()):
        height, width = rows * max(1, height // rows), cols * max(1, width // cols)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["randn", "ties", "nan"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    if kind == "ties":
        weight = torch.randint(-2, 3, (height, width), generator=generator).to(dtype)
    else:
        weight = torch.randn(height, width, generator=generator).to(dtype)
        if kind == "nan":
            weight[torch.rand(height, width, generator=generator) < 0.1] = float("nan")
    if draw(st.booleans()):  # non-contiguous
        weight = weight.t().contiguous().t()
    data: dict[str, torch.Tensor] = {}
    if draw(st.booleans()):
        data["prev_mask"] = torch.rand(height, width, generator=generator) > draw(
            st.floats(0.0, 1.0)
        )
    if draw(st.booleans()):
        data["scores"] = torch.randn(height, width, generator=generator).round()
    method = fs.WeightNorm(
        draw(LEVELS),
        sparse_block_shape=(rows, cols),
        zeros_per_block=zeros,
        norm=draw(st.sampled_from([1, 2])),
    )
    return method, weight, data


@given(tiled_cases(), st.sampled_from([1, 5, 16, 64]))
def test_tiles_give_the_mask_of_one_tile(
    case: tuple[fs.WeightNorm, torch.Tensor, dict[str, torch.Tensor]],
    tile: int,
) -> None:
    method, weight, data = case
    whole = method(weight, **data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weight_norm, "_TILE_ENTRIES", tile)
        tiled = method(weight, **data)
    assert torch.equal(tiled, whole)
    assert tiled.is_contiguous() and tiled.dtype == torch.bool
    # Members of an ensemble, looped (tiled) and under vmap (one tile): the same masks.
    stacked = torch.stack([weight, weight.flip(0)])
    kwargs = {
        ("prev_masks" if k == "prev_mask" else k): {"w": torch.stack([v, v.flip(0)])}
        for k, v in data.items()
    }
    batched = fs.compute_masks({"w": stacked}, {"w": method}, batch_dims=1, **kwargs)["w"]
    for i in range(2):
        member = {k: v["w"][i] for k, v in kwargs.items()}
        member = {("prev_mask" if k == "prev_masks" else k): v for k, v in member.items()}
        assert torch.equal(batched[i], method(stacked[i], **member))


def test_a_large_weight_is_worked_in_tiles_with_the_same_mask() -> None:
    # Past _TILE_ENTRIES entries the call runs tile by tile (rows, then columns when one
    # row of blocks is wider than a tile): the masks of one tile, pinned by their counts.
    generator = torch.Generator().manual_seed(3)
    for shape, block, zeros in [((1100, 1000), (1, 4), 2), ((3, 400_000), (3, 5), 2)]:
        weight = torch.randn(shape, generator=generator)
        method = fs.WeightNorm(0.5, sparse_block_shape=block, zeros_per_block=zeros)
        assert len(method._tiles(weight, plain=True)) > 1
        mask = method(weight)
        n_blocks = weight.numel() // method.block_size
        assert int((~mask).sum()) == round(0.5 * n_blocks) * zeros
        check_leaf_mask(method, weight, mask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ViaBlocks(fs.WeightNorm):
    """WeightNorm with its own block-score hook: (1, 1) blocks take the block path."""

    def _block_scores(self, tensor: torch.Tensor, *, given: bool = False) -> torch.Tensor:
        return super()._block_scores(tensor, given=given)


@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["randn", "ties", "nan", "tiny"]),
    st.sampled_from([1, 2]),
    st.floats(0.01, 0.99),
    st.sampled_from(["none", "prev_mask", "scores", "both"]),
)
def test_single_entry_blocks_ranked_chunk_by_chunk_equal_the_block_path(
    seed: int, kind: str, norm: int, level: float, data_kind: str
) -> None:
    # (1, 1) blocks go to the selection layer's chunked ranking (no full norm(w) copy);
    # 300 x 300 entries is past its chunking threshold.
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(300, 300, generator=generator)
    if kind == "ties":
        weight = torch.randint(-3, 4, (300, 300), generator=generator).float()
    elif kind == "nan":
        weight[torch.rand(300, 300, generator=generator) < 0.05] = float("nan")
    elif kind == "tiny":  # squares underflow to 0: ties that |w| does not have
        weight = weight * 1e-20
    data: dict[str, torch.Tensor] = {}
    if data_kind in ("prev_mask", "both"):
        data["prev_mask"] = torch.rand(300, 300, generator=generator) > 0.4
    if data_kind in ("scores", "both"):
        data["scores"] = torch.randn(300, 300, generator=generator).round()
    config = {"sparse_block_shape": (1, 1), "norm": norm}
    mask = fs.WeightNorm(level, **config)(weight, **data)
    assert torch.equal(mask, _ViaBlocks(level, **config)(weight, **data))


@given(
    st.lists(
        st.sampled_from([-math.inf, -1.0, 0.0, 1.0, math.inf, math.nan]), min_size=8, max_size=8
    ),
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.integers(1, 3),
    st.booleans(),
)
def test_previous_zeros_rank_before_a_real_minus_inf_within_blocks(
    scores: list[float], kept: list[bool], zeros: int, batched: bool
) -> None:
    # At level 1 every (1, 4) block prunes exactly max(zeros_per_block, its previous zeros).
    method = fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=zeros)
    score = torch.tensor(scores).reshape(1, 8)
    prev = torch.tensor(kept).reshape(1, 8)
    if batched:
        mask = torch.func.vmap(lambda s, p: method(torch.zeros(1, 8), scores=s, prev_mask=p))(
            score[None], prev[None]
        )[0]
    else:
        mask = method(torch.zeros(1, 8), scores=score, prev_mask=prev)
    assert not bool((mask & ~prev).any())
    for block in range(2):
        cols = slice(4 * block, 4 * block + 4)
        previous = int((~prev[0, cols]).sum())
        assert int((~mask[0, cols]).sum()) == max(zeros, previous)


def test_a_real_minus_inf_beside_a_previous_zero_in_a_block() -> None:
    mask = fs.WeightNorm(1.0, sparse_block_shape=(1, 4), zeros_per_block=1)(
        torch.zeros(1, 4),
        scores=torch.tensor([[-math.inf, 0.0, 5.0, 1.0]]),
        prev_mask=torch.tensor([[True, False, True, True]]),
    )
    assert mask.tolist() == [[True, False, True, True]]


def test_a_norm_callable_that_torch_refuses_is_a_value_error() -> None:
    # A module is callable, but not a norm of this weight: torch's RuntimeError is chained.
    method = fs.WeightNorm(0.5, norm=torch.nn.Linear(2, 2))
    with pytest.raises(
        ValueError,
        match=r"^WeightNorm: the norm callable .* raised RuntimeError on a 2-D torch.float32 tensor of shape \(8, 8\)",
    ) as info:
        method(torch.randn(8, 8))
    assert isinstance(info.value.__cause__, RuntimeError)
