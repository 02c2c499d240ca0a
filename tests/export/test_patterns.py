"""detect_pattern against a brute-force oracle; check_nm / check_blocks name the first bad group."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.export import Pattern, detect_pattern
from funcsparse.export import patterns as patterns_module
from funcsparse.export.patterns import block_violation, check_blocks, check_nm, nm_violation

SIDES = [1, 2, 3, 4, 6, 8, 12, 16]
POWERS = [2, 4, 8, 16, 32]


@contextmanager
def tiny_chunks(size: int) -> Iterator[None]:
    """Scan ``size`` entries per step, so that small masks cross chunk boundaries."""
    with mock.patch.object(patterns_module, "_CHUNK", size):
        yield


# --- a brute-force oracle: Python loops over lists, the precedence as documented ---


def _uniform(values: list[bool]) -> bool:
    return len(set(values)) <= 1


def _matrices(mask: Tensor) -> list[list[list[bool]]]:
    if mask.dim() < 2:
        return [[mask.reshape(-1).tolist()]]
    shaped: list[list[list[bool]]] = mask.reshape(-1, *mask.shape[-2:]).tolist()
    return shaped


def _blocks_hold(mask: Tensor, rows: int, cols: int) -> bool:
    for matrix in _matrices(mask):
        height, width = len(matrix), len(matrix[0]) if matrix else 0
        if height % rows or width % cols:
            return False
        for top in range(0, height, rows):
            for left in range(0, width, cols):
                block = [
                    matrix[i][j] for i in range(top, top + rows) for j in range(left, left + cols)
                ]
                if not _uniform(block):
                    return False
    return True


def oracle(mask: Tensor) -> Pattern:
    flat: list[bool] = mask.reshape(-1).tolist()
    if all(flat):
        return Pattern(kind="dense")
    if not any(flat):
        return Pattern(kind="empty")
    for dim in range(mask.dim()):
        if mask.numel() // mask.shape[dim] > 1 and all(
            _uniform(mask.select(dim, i).reshape(-1).tolist()) for i in range(mask.shape[dim])
        ):
            return Pattern(kind="channel", axis=dim)
    for m in POWERS:
        if mask.shape[-1] % m == 0:
            counts = {sum(flat[i : i + m]) for i in range(0, len(flat), m)}
            if len(counts) == 1 and 0 < min(counts) < m:
                return Pattern(kind="n:m", n=min(counts), m=m)
    held = [
        (r, c) for r in [1, *POWERS] for c in [1, *POWERS] if r * c > 1 and _blocks_hold(mask, r, c)
    ]
    if held:
        best = max(held, key=lambda rc: rc[0] * rc[1])
        # the claim that makes "the largest" well defined: it is the componentwise maximum
        assert all(r <= best[0] and c <= best[1] for r, c in held)
        return Pattern(kind="block", block=best)
    return Pattern(kind="unstructured")


def first_bad_group(mask: Tensor, n: int, m: int, exact: bool) -> tuple[int, int] | None:
    """(flat group index, kept) of the first group of m along the last dim that breaks n."""
    flat: list[bool] = mask.reshape(-1).tolist()
    for index, start in enumerate(range(0, len(flat), m)):
        kept = sum(flat[start : start + m])
        if (kept != n) if exact else (kept > n):
            return index, kept
    return None


# --- strategies: masks with and without structure ---


@st.composite
def masks(draw: st.DrawFn) -> Tensor:
    shape = tuple(draw(st.lists(st.sampled_from(SIDES), min_size=1, max_size=3)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["random", "channel", "nm", "block", "dense", "empty"]))
    if kind == "dense":
        return torch.ones(shape, dtype=torch.bool)
    if kind == "empty":
        return torch.zeros(shape, dtype=torch.bool)
    if kind == "channel":
        dim = draw(st.integers(0, len(shape) - 1))
        picks = torch.rand(shape[dim], generator=g) < 0.5
        view = [1] * len(shape)
        view[dim] = shape[dim]
        return picks.view(view).expand(shape).contiguous()
    if kind == "nm":
        m = draw(st.sampled_from([m for m in [1, 2, 4, 8] if shape[-1] % m == 0]))
        n = draw(st.integers(0, m))
        ranks = torch.rand(*shape[:-1], shape[-1] // m, m, generator=g).argsort(-1).argsort(-1)
        return (ranks < n).reshape(shape)
    if kind == "block":
        rows = draw(
            st.sampled_from([d for d in [1, 2, 4] if len(shape) > 1 and shape[-2] % d == 0] or [1])
        )
        cols = draw(st.sampled_from([d for d in [1, 2, 4, 8] if shape[-1] % d == 0]))
        if len(shape) == 1:
            grid = torch.rand(shape[0] // cols, generator=g) < 0.5
            return grid.repeat_interleave(cols, 0)
        grid = torch.rand(*shape[:-2], shape[-2] // rows, shape[-1] // cols, generator=g) < 0.5
        return grid.repeat_interleave(rows, -2).repeat_interleave(cols, -1)
    return torch.rand(shape, generator=g) < draw(st.sampled_from([0.1, 0.5, 0.9]))


# --- Pattern ---


def test_pattern_strings_are_short() -> None:
    assert str(Pattern(kind="n:m", n=2, m=4)) == "2:4"
    assert str(Pattern(kind="block", block=(4, 4))) == "block 4x4"
    assert str(Pattern(kind="channel", axis=1)) == "channel (dim 1)"
    assert [str(Pattern(kind=k)) for k in ("dense", "empty", "unstructured")] == [
        "dense",
        "empty",
        "unstructured",
    ]


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"kind": "sparse"}, ValueError, "kind='sparse'"),
        ({"kind": "n:m", "n": 2}, ValueError, "needs m"),
        ({"kind": "dense", "axis": 0}, ValueError, "does not take axis"),
        ({"kind": "n:m", "n": 4, "m": 4}, ValueError, "0 < n < m"),
        ({"kind": "block", "block": (0, 4)}, ValueError, "sides >= 1"),
        ({"kind": "block", "block": 4}, TypeError, "tuple (rows, cols)"),
        ({"kind": "channel", "axis": 0.5}, TypeError, "axis must be an int"),
        ({"kind": "channel", "axis": -1}, ValueError, "axis=-1 must be at least 0"),
        ({"kind": "n:m", "n": 1, "m": True}, TypeError, "m must be an int, got bool"),
    ],
)
def test_pattern_refuses_fields_that_do_not_fit_the_kind(
    fields: dict[str, object], error: type, words: str
) -> None:
    with pytest.raises(error, match=r"^Pattern: ") as info:
        Pattern(**fields)
    assert words in str(info.value)


def test_pattern_is_frozen_and_hashable() -> None:
    pattern = Pattern(kind="n:m", n=2, m=4)
    assert pattern == Pattern(kind="n:m", n=2, m=4) and len({pattern, pattern}) == 1
    listed = Pattern(kind="block", block=cast(Any, [4, 2]))
    assert listed == Pattern(kind="block", block=(4, 2)) and listed.block == (4, 2)
    assert len({listed, Pattern(kind="block", block=(4, 2))}) == 1
    assert str(Pattern(kind="n:m", n=1, m=10**400)) == "1:100000000000000000...0000000000000000000"
    with pytest.raises(AttributeError):
        pattern.n = 1


# --- detect_pattern ---


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (torch.tensor(True), "dense"),
        (torch.tensor(False), "empty"),
        (torch.ones(0, 4, dtype=torch.bool), "dense"),
        (torch.zeros(3, 5, dtype=torch.bool), "empty"),
        (torch.tensor([[True, True, True], [False, False, False]]), "channel (dim 0)"),
        (torch.tensor([[True, False, True], [True, False, True]]), "channel (dim 1)"),
        (torch.tensor([True, False, True, False]), "1:2"),
        (torch.tensor([[True, True, False, False], [False, True, True, False]]), "2:4"),
        (torch.tensor([[True, True, True, False], [False, True, True, True]]), "3:4"),
        (torch.eye(4, dtype=torch.bool), "1:4"),
        (torch.ones(4, 4, dtype=torch.bool).tril(), "unstructured"),
    ],
)
def test_detect_pattern_on_hand_made_masks(mask: Tensor, expected: str) -> None:
    assert str(detect_pattern(mask)) == expected


def test_detect_pattern_reports_the_smallest_m() -> None:
    two_four = torch.tensor([[True, True, False, False, False, True, True, False]] * 3)
    two_four[1] = two_four[1].roll(1)
    assert str(detect_pattern(two_four)) == "2:4"  # also 4:8, reported as 2:4
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    assert str(detect_pattern(fs.NM(n=1, m=2)(w))) == "1:2"


def test_detect_pattern_prefers_channel_over_nm_and_nm_over_blocks() -> None:
    same_rows = torch.tensor([[True, False, True, False]] * 4)  # 1:2, and columns whole
    assert str(detect_pattern(same_rows)) == "channel (dim 1)"
    nm_blocks = torch.tensor([[True, True, False, False], [False, False, True, True]])
    nm_blocks = nm_blocks.repeat_interleave(2, 0)  # 2x2 blocks, and 2:4
    assert str(detect_pattern(nm_blocks)) == "2:4"


def test_detect_pattern_finds_the_largest_block_of_a_conv_weight() -> None:
    grid = torch.rand(8, 3, 2, 2, generator=torch.Generator().manual_seed(0)) < 0.5
    grid[0, 0] = torch.tensor([[True, False], [False, True]])
    mask = grid.repeat_interleave(4, -2).repeat_interleave(2, -1)  # (8, 3, 8, 4)
    assert detect_pattern(mask) == Pattern(kind="block", block=(4, 2))


def test_detect_pattern_caps_block_sides_at_32() -> None:
    mask = torch.tensor([[True, False], [False, True]]).repeat_interleave(64, 0)
    mask = mask.repeat_interleave(64, 1)
    assert detect_pattern(mask) == Pattern(kind="block", block=(32, 32))


def test_detect_pattern_finds_weight_norm_blocks() -> None:
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    mask = fs.WeightNorm(0.5, sparse_block_shape=(4, 8))(w)
    found = detect_pattern(mask)
    assert found.kind == "block" and found.block is not None
    assert found.block[0] % 4 == 0 and found.block[1] % 8 == 0
    assert block_violation(mask, blocksize=found.block) is None


@pytest.mark.parametrize("mask", [torch.ones(3), torch.ones(2, dtype=torch.uint8), [True]])
def test_detect_pattern_refuses_what_is_not_a_bool_tensor(mask: object) -> None:
    with pytest.raises(TypeError, match=r"^detect_pattern: mask must be a torch.bool tensor"):
        detect_pattern(mask)


def test_detect_pattern_refuses_meta_masks() -> None:
    with pytest.raises(ValueError, match=r"^detect_pattern: .*meta"):
        detect_pattern(torch.ones(2, 2, dtype=torch.bool, device="meta"))


@given(masks(), st.sampled_from([None, 5, 64]))
def test_detect_pattern_equals_the_brute_force_oracle(mask: Tensor, chunk: int | None) -> None:
    before = mask.clone()
    if chunk is None:
        found = detect_pattern(mask)
    else:
        with tiny_chunks(chunk):
            found = detect_pattern(mask)
    assert found == oracle(mask)
    assert torch.equal(mask, before)


@given(masks())
def test_detect_pattern_is_the_same_on_a_non_contiguous_view(mask: Tensor) -> None:
    wide = torch.stack([mask, ~mask], dim=-1).select(-1, 0)  # a strided view of mask
    assert not wide.is_contiguous() or mask.numel() <= 1
    assert detect_pattern(wide) == detect_pattern(mask)


@given(masks(), st.integers(1, 7))
def test_detect_pattern_and_checks_agree_on_a_view_at_an_odd_offset(
    mask: Tensor, skip: int
) -> None:
    storage = torch.cat([torch.zeros(skip, dtype=torch.bool), mask.reshape(-1)])
    shifted = storage[skip:].view(mask.shape)
    assert shifted.storage_offset() == skip and torch.equal(shifted, mask)
    assert detect_pattern(shifted) == detect_pattern(mask)
    if mask.dim() and mask.shape[-1] % 4 == 0:
        assert nm_violation(shifted, n=2, m=4) == nm_violation(mask, n=2, m=4)
    if mask.dim() > 1 and mask.shape[-1] % 8 == 0:
        assert nm_violation(shifted, n=3, m=8, exact=True) == nm_violation(
            mask, n=3, m=8, exact=True
        )


# --- nm_violation / check_nm ---


def test_check_nm_names_the_path_the_group_and_the_counts() -> None:
    mask = torch.zeros(2, 3, 8, dtype=torch.bool)
    mask[1, 2, 4:7] = True
    with pytest.raises(ValueError, match=r"^check_nm: the mask at 'blocks.0.w'") as info:
        check_nm(mask, n=2, m=4, path="blocks.0.w")
    assert "group [1, 2, 4:8] keeps 3 entries; 2:4 allows at most 2" in str(info.value)
    assert mask[1, 2, 4:8].sum() == 3


def test_nm_violation_exact_needs_exactly_n() -> None:
    mask = torch.tensor([[True, False, True, False], [True, False, False, False]])
    assert nm_violation(mask, n=2, m=4) is None
    assert nm_violation(mask, n=2, m=4, exact=True) == (
        "group [1, 0:4] keeps 1 entries; 2:4 allows exactly 2"
    )


def test_nm_violation_names_a_length_that_m_does_not_divide() -> None:
    problem = nm_violation(torch.ones(2, 6, dtype=torch.bool), n=2, m=4)
    assert problem == "the last dim has length 6, not a multiple of m=4"


def test_nm_violation_passes_zero_size_masks() -> None:
    assert nm_violation(torch.ones(0, 8, dtype=torch.bool), n=2, m=4) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"mask": torch.ones(4), "n": 2, "m": 4}, TypeError, "torch.bool"),
        ({"mask": torch.tensor(True), "n": 2, "m": 4}, ValueError, "0-D"),
        ({"mask": torch.ones(4, dtype=torch.bool), "n": 5, "m": 4}, ValueError, "n=5"),
        ({"mask": torch.ones(4, dtype=torch.bool), "n": 0, "m": 0}, ValueError, "m=0"),
        ({"mask": torch.ones(4, dtype=torch.bool), "n": 2.0, "m": 4}, TypeError, "n must be"),
        ({"mask": torch.ones(4, dtype=torch.bool), "n": 2, "m": 4, "exact": 1}, TypeError, "exact"),
    ],
)
def test_nm_violation_refuses_bad_arguments(
    kwargs: dict[str, object], error: type, words: str
) -> None:
    with pytest.raises(error, match=r"^nm_violation: ") as info:
        nm_violation(**kwargs)
    assert words in str(info.value)


@given(masks(), st.sampled_from([1, 2, 4, 8]), st.booleans(), st.sampled_from([None, 6]), st.data())
def test_nm_violation_names_the_first_offending_group(
    mask: Tensor, m: int, exact: bool, chunk: int | None, data: st.DataObject
) -> None:
    n = data.draw(st.integers(0, m))
    if mask.shape[-1] % m:
        assert nm_violation(mask, n=n, m=m, exact=exact) is not None
        return
    if chunk is None:
        problem = nm_violation(mask, n=n, m=m, exact=exact)
    else:
        with tiny_chunks(chunk):
            problem = nm_violation(mask, n=n, m=m, exact=exact)
    expected = first_bad_group(mask, n, m, exact)
    if expected is None:
        assert problem is None
        return
    index, kept = expected
    row, group = divmod(index, mask.shape[-1] // m)
    lead = [str(i) for i in _unravel(row, mask.shape[:-1])]
    where = "[" + ", ".join([*lead, f"{group * m}:{group * m + m}"]) + "]"
    assert problem is not None and problem.startswith(f"group {where} keeps {kept} entries")


def _unravel(flat: int, shape: torch.Size) -> list[int]:
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return index[::-1]


@given(st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2), (3, 4)]), st.integers(0, 2**31 - 1))
def test_nm_masks_pass_check_nm_exactly(nm: tuple[int, int], seed: int) -> None:
    n, m = nm
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(seed))
    mask = fs.NM(n=n, m=m)(w)
    check_nm(mask, n=n, m=m, exact=True)
    assert str(detect_pattern(mask)) in {f"{n // k}:{m // k}" for k in (1, 2, 4) if n % k == 0}


# --- block_violation / check_blocks ---


def test_check_blocks_names_the_path_and_the_first_block() -> None:
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[1, 4:8, 0:4] = True
    mask[1, 5, 2] = False
    with pytest.raises(ValueError, match=r"^check_blocks: the mask at 'conv'") as info:
        check_blocks(mask, blocksize=(4, 4), path="conv")
    assert "block [1, 4:8, 0:4] keeps 15 of its 16 entries" in str(info.value)


def test_block_violation_treats_a_one_dim_mask_as_a_row() -> None:
    mask = torch.tensor([True, True, False, True])
    assert block_violation(mask, blocksize=(1, 2)) == (
        "block [2:4] keeps 1 of its 2 entries; a block must be wholly kept or pruned"
    )
    assert block_violation(mask[:2], blocksize=(1, 2)) is None


def test_block_violation_names_a_shape_the_blocks_do_not_divide() -> None:
    problem = block_violation(torch.ones(6, 8, dtype=torch.bool), blocksize=(4, 4))
    assert problem == "the last two dims (6, 8) are not divisible by blocksize (4, 4)"


@pytest.mark.parametrize(
    ("blocksize", "error"), [((2,), TypeError), ((2, 0), ValueError), ((2.0, 2), TypeError)]
)
def test_block_violation_refuses_bad_blocksizes(blocksize: object, error: type) -> None:
    with pytest.raises(error, match=r"^block_violation: blocksize"):
        block_violation(torch.ones(4, 4, dtype=torch.bool), blocksize=blocksize)


@given(masks(), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4]), st.sampled_from([None, 7]))
def test_block_violation_names_the_first_offending_block(
    mask: Tensor, rows: int, cols: int, chunk: int | None
) -> None:
    rows = rows if mask.dim() > 1 else 1
    if chunk is None:
        problem = block_violation(mask, blocksize=(rows, cols))
    else:
        with tiny_chunks(chunk):
            problem = block_violation(mask, blocksize=(rows, cols))
    matrices = _matrices(mask)
    height, width = mask.shape[-2] if mask.dim() > 1 else 1, mask.shape[-1]
    if height % rows or width % cols:
        assert problem is not None and "not divisible" in problem
        return
    expected = None
    for batch, matrix in enumerate(matrices):
        for top in range(0, height, rows):
            for left in range(0, width, cols):
                block = [
                    matrix[i][j] for i in range(top, top + rows) for j in range(left, left + cols)
                ]
                if expected is None and not _uniform(block):
                    spans = [f"{left}:{left + cols}"]
                    if mask.dim() > 1:
                        spans.insert(0, f"{top}:{top + rows}")
                    lead = [str(i) for i in _unravel(batch, mask.shape[:-2])]
                    expected = f"block [{', '.join([*lead, *spans])}] keeps {sum(block)} "
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected), (problem, expected)


def test_weight_norm_block_masks_pass_check_blocks() -> None:
    for seed, shape in enumerate([(4, 8), (8, 8), (12, 16)]):
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        mask = fs.WeightNorm(0.5, sparse_block_shape=(4, 2))(w)
        check_blocks(mask, blocksize=(4, 2))
        assert int(mask.sum()) * 2 == mask.numel()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: check_nm(None, n=2, m=4), TypeError, "check_nm: mask must be a torch.bool"),
        (lambda: check_nm(torch.ones(4, dtype=torch.bool), n=2, m=0), ValueError, "check_nm: m=0"),
        (lambda: check_blocks([True], blocksize=(1, 1)), TypeError, "check_blocks: mask must be"),
        (
            lambda: check_blocks(torch.ones(4, dtype=torch.bool), blocksize=(1, True)),
            TypeError,
            "check_blocks: blocksize[1] must be an int, got bool True",
        ),
        (
            lambda: check_nm(torch.ones(4, dtype=torch.bool), n=2, m=4, path=3),
            TypeError,
            "check_nm: path must be a str (a leaf path), got int 3",
        ),
        (
            lambda: check_blocks(torch.ones(4, dtype=torch.bool), blocksize=(1, 1), path=None),
            TypeError,
            "check_blocks: path must be a str",
        ),
    ],
)
def test_check_nm_and_check_blocks_name_themselves_in_argument_errors(
    call: Any, error: type, message: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value).startswith(message)


def test_huge_group_and_block_sizes_are_shortened_in_messages() -> None:
    mask = torch.ones(2, 8, dtype=torch.bool)
    for call in (
        lambda: check_nm(mask, n=1, m=10**400),
        lambda: check_nm(mask, n=-1, m=10**400),
        lambda: check_blocks(mask, blocksize=(10**400, 1)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "0" * 50 not in str(info.value) and len(str(info.value)) < 300
