"""NM: pinned N:M masks, agreement with torch.ao's 2:4 WeightNorm, any axis, prev_mask, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import funcsparse as fs
from funcsparse.methods import nm as nm_module
from funcsparse.methods.nm import NM
from funcsparse.testing import check_leaf_mask, check_masks
from funcsparse.testing.oracles import ao_weight_norm_mask
from tests.helpers import tie_free

NM_PAIRS = st.one_of(
    st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2), (3, 4), (0, 4), (4, 4)]),
    st.integers(1, 8).flatmap(lambda m: st.tuples(st.integers(0, m), st.just(m))),
)


@st.composite
def nm_cases(draw: st.DrawFn, *, ties: bool = False) -> tuple[NM, Tensor]:
    """A config and a tensor (1-D to 3-D) whose length along the config's axis divides by m."""
    n, m = draw(NM_PAIRS)
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
    shape[axis] = m * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    if ties:
        g = torch.Generator().manual_seed(seed)
        tensor = torch.randint(-2, 3, tuple(shape), generator=g).float()
    else:
        tensor = tie_free(tuple(shape), seed, draw(st.sampled_from([torch.float32, torch.float64])))
    return NM(n=n, m=m, axis=axis), tensor


class TestPinned:
    W = torch.tensor([[0.5, -2.0, 0.1, 3.0, 1.0, -0.2, 0.3, 4.0]])

    def test_two_four(self) -> None:
        assert NM(n=2, m=4)(self.W).tolist() == [
            [False, True, False, True, True, False, False, True]
        ]

    def test_one_four_and_four_eight(self) -> None:
        assert NM(n=1, m=4)(self.W).tolist() == [
            [False, False, False, True, False, False, False, True]
        ]
        assert NM(n=4, m=8)(self.W).tolist() == [
            [False, True, False, True, True, False, False, True]
        ]
        assert NM(n=3, m=8)(self.W).tolist() == [
            [False, True, False, True, False, False, False, True]
        ]

    def test_n_zero_prunes_all_and_n_equal_m_keeps_all(self) -> None:
        assert not bool(NM(n=0, m=4)(self.W).any())
        assert bool(NM(n=4, m=4)(self.W).all())
        assert bool(NM(n=1, m=1)(self.W).all())

    def test_axis_zero(self) -> None:
        w = torch.tensor([[1.0, -5.0], [-3.0, 2.0]])
        assert NM(n=1, m=2, axis=0)(w).tolist() == [[False, True], [True, False]]
        assert NM(n=1, m=2, axis=-2)(w).tolist() == [[False, True], [True, False]]
        assert NM(n=1, m=2)(w).tolist() == [[False, True], [True, False]]

    def test_conv_weight_along_input_channels(self) -> None:
        w = torch.arange(1.0, 17.0).reshape(1, 4, 2, 2)  # larger index, larger magnitude
        mask = NM(n=2, m=4, axis=1)(w)
        assert (mask.sum(1) == 2).all()
        assert mask[0, :, 0, 0].tolist() == [False, False, True, True]

    def test_ties_prune_the_lower_position_first_and_nan_is_kept(self) -> None:
        w = torch.tensor([1.0, -1.0, 1.0, 1.0, math.nan, 2.0, 2.0, 0.0])
        assert NM(n=2, m=4)(w).tolist() == [False, False, True, True, True, False, True, False]

    def test_scores_rank_as_given_signed(self) -> None:
        # Per group the lowest given scores go first, sign included: -9 before 0.1, and -3
        # before 0.0 (ranked by |score| the groups would keep -9 and -3 instead).
        scores = torch.tensor([[-9.0, 0.1, 5.0, 0.2, 0.0, 1.0, -3.0, 2.0]])
        assert NM(n=2, m=4)(self.W, scores=scores).tolist() == [
            [False, False, True, True, False, True, False, True]
        ]
        assert NM(n=2, m=4)(self.W, scores=scores.abs()).tolist() == [
            [True, False, True, False, False, False, True, True]
        ]
        movement = torch.tensor([[-3.0, 1.0, 2.0, 4.0]])
        assert NM(n=3, m=4)(torch.ones(1, 4), scores=movement).tolist() == [
            [False, True, True, True]
        ]

    def test_prev_mask_is_ranked_first_in_its_group(self) -> None:
        prev = torch.tensor([[True, False, True, True, True, True, True, True]])  # -2.0 pruned
        mask = NM(n=2, m=4)(self.W, prev_mask=prev)
        # First group: -2.0 stays pruned and takes one of the two zeros; 0.1 takes the other.
        assert mask.tolist() == [[True, False, False, True, True, False, False, True]]
        assert NM(n=2, m=4).expected_zeros(self.W, prev_mask=prev) == 4

    def test_group_with_fewer_than_n_left_keeps_what_it_had(self) -> None:
        prev = torch.tensor([[False, False, False, True, True, True, True, True]])
        mask = NM(n=2, m=4)(self.W, prev_mask=prev)
        assert mask.tolist() == [[False, False, False, True, True, False, False, True]]
        assert NM(n=2, m=4).expected_zeros(self.W, prev_mask=prev) == 5
        check_leaf_mask(NM(n=2, m=4), self.W, mask, data={"prev_mask": prev})

    def test_empty(self) -> None:
        assert NM(n=2, m=4)(torch.empty(0, 8)).shape == (0, 8)
        assert NM(n=2, m=4)(torch.empty(3, 0)).shape == (3, 0)

    def test_inputs_untouched(self) -> None:
        w = self.W.clone()
        NM(n=2, m=4)(w, scores=w, prev_mask=torch.ones(1, 8, dtype=torch.bool))
        assert torch.equal(w, self.W)


class TestAgainstTorchAo:
    @given(
        rows=st.integers(1, 6),
        groups=st.integers(1, 4),
        seed=st.integers(0, 2**31 - 1),
        dtype=st.sampled_from([torch.float32, torch.float64]),
    )
    def test_two_four_equals_weight_norm_sparsifier(
        self, rows: int, groups: int, seed: int, dtype: torch.dtype
    ) -> None:
        w = tie_free((rows, 4 * groups), seed, dtype)
        expected = ao_weight_norm_mask(
            w, sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2, norm=1
        )
        assert torch.equal(NM(n=2, m=4)(w), expected)

    @given(
        pair=NM_PAIRS, rows=st.integers(1, 4), groups=st.integers(1, 3), seed=st.integers(0, 999)
    )
    def test_any_n_m_equals_weight_norm_sparsifier_with_blocks_of_m(
        self, pair: tuple[int, int], rows: int, groups: int, seed: int
    ) -> None:
        n, m = pair
        w = tie_free((rows, m * groups), seed)
        expected = ao_weight_norm_mask(
            w, sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n, norm=1
        )
        assert torch.equal(NM(n=n, m=m)(w), expected)


class TestInvariants:
    @given(case=nm_cases(), ties=st.booleans(), data=st.data())
    def test_exact_n_per_group_with_and_without_data(
        self, case: tuple[NM, Tensor], ties: bool, data: st.DataObject
    ) -> None:
        method, w = case
        if ties:
            w = w.round()
        kwargs: dict[str, Tensor] = {}
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
        if data.draw(st.booleans()):
            kwargs["prev_mask"] = torch.rand(w.shape, generator=g) < 0.8
        if data.draw(st.booleans()):
            kwargs["scores"] = torch.randn(w.shape, generator=g)
        mask = method(w, **kwargs)
        check_leaf_mask(method, w, mask, data=kwargs)  # counts, pattern, vmap, determinism
        kept = mask.movedim(method.axis, -1).reshape(-1, method.m).sum(-1)
        if "prev_mask" not in kwargs:
            assert bool((kept == method.n).all())

    @given(case=nm_cases())
    def test_any_axis_equals_axis_last(self, case: tuple[NM, Tensor]) -> None:
        method, w = case
        moved = NM(n=method.n, m=method.m)(w.movedim(method.axis, -1))
        assert torch.equal(method(w), moved.movedim(-1, method.axis))

    @given(data=st.data())
    def test_check_masks_through_compute_masks(self, data: st.DataObject) -> None:
        method = data.draw(NM.configs(st))
        params = {"a.weight": torch.randn(4, 8), "a.bias": torch.randn(4), "b": torch.randn(6, 3)}
        rules = {name: method for name, p in params.items() if method.check_leaf(p) is None}
        if rules:
            check_masks(params, rules)

    def test_vmap_equals_each_member(self) -> None:
        ws = torch.stack([tie_free((3, 8), seed) for seed in range(4)])
        prev = torch.rand(4, 3, 8, generator=torch.Generator().manual_seed(1)) < 0.7
        method = NM(n=2, m=4)
        for kwargs in ({}, {"prev_mask": prev}, {"scores": ws.flip(0)}):
            batched = torch.func.vmap(lambda t, d: method(t, **d))(ws, kwargs)
            for i in range(4):
                alone = method(ws[i], **{k: v[i] for k, v in kwargs.items()})
                assert torch.equal(batched[i], alone)

    def test_ensemble_through_compute_masks(self) -> None:
        ws = torch.stack([tie_free((4, 8), seed) for seed in range(3)])
        masks = fs.compute_masks({"w": ws}, {"w": NM(n=1, m=4, axis=0)}, batch_dims=1)
        for i in range(3):
            assert torch.equal(masks["w"][i], NM(n=1, m=4, axis=0)(ws[i]))


class TestErrors:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"n": 3, "m": 2}, ValueError, "NM: n=3 must be in [0, m] = [0, 2]"),
            ({"n": -1, "m": 4}, ValueError, "NM: n=-1 must be in [0, m] = [0, 4]"),
            ({"n": 0, "m": 0}, ValueError, "NM: m=0 must be at least 1"),
            ({"n": 2.0, "m": 4}, TypeError, "NM: n must be an int, got float 2.0"),
            ({"n": 2, "m": True}, TypeError, "NM: m must be an int, got bool True"),
            ({"n": 2, "m": 4, "axis": "rows"}, TypeError, "NM: axis must be an int, got str"),
        ],
    )
    def test_bad_configs(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=re.escape(message)):
            NM(**kwargs)

    def test_n_and_m_are_required_and_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            NM(2, 4)
        with pytest.raises(TypeError):
            NM(n=2)

    def test_length_not_divisible(self) -> None:
        with pytest.raises(
            ValueError,
            match=re.escape("NM needs the length along axis=-1 (6) to be divisible by m=4"),
        ):
            NM(n=2, m=4)(torch.randn(3, 6))

    def test_axis_out_of_range(self) -> None:
        with pytest.raises(ValueError, match=re.escape("NM axis=2 is out of range for a 2-D")):
            NM(n=2, m=4, axis=2)(torch.randn(4, 4))
        with pytest.raises(ValueError, match=re.escape("NM axis=-1 is out of range for a 0-D")):
            NM(n=1, m=1)(torch.tensor(1.0))

    def test_through_compute_masks_names_the_leaf(self) -> None:
        params = {"fc.weight": torch.randn(4, 8), "fc.bias": torch.randn(6)}
        with pytest.raises(ValueError) as info:
            fs.compute_masks(params, {"fc.*": NM(n=2, m=4)})
        message = str(info.value)
        assert message.startswith("compute_masks: rule 'fc.*' (NM) got a 1-D torch.float32")
        assert "at 'fc.bias'" in message
        assert "length along axis=-1 (6) to be divisible by m=4" in message
        with pytest.raises(ValueError, match=re.escape("at 'fc.bias'; NM axis=1 is out of range")):
            fs.compute_masks(params, {"fc.*": NM(n=1, m=2, axis=1)})

    def test_bad_data(self) -> None:
        w = torch.randn(2, 4)
        with pytest.raises(TypeError, match="NM needs floating scores"):
            NM(n=2, m=4)(w, scores=torch.ones(2, 4, dtype=torch.int32))
        with pytest.raises(TypeError, match="NM needs a floating-point tensor"):
            NM(n=2, m=4)(torch.ones(2, 4, dtype=torch.int64))


class TestChunks:
    """Eager calls on large tensors rank a chunk of groups at a time: the same masks."""

    @staticmethod
    def one_piece(method: NM, w: Tensor, **data: Tensor) -> Tensor:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nm_module, "_CHUNK_MIN", 1 << 62)
            return method(w, **data)

    @pytest.fixture
    def small_chunks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(nm_module, "_CHUNK_MIN", 3)
        monkeypatch.setattr(nm_module, "_CHUNKS", 5)

    @pytest.mark.usefixtures("small_chunks")
    @given(case=nm_cases(), ties=st.booleans(), data=st.data())
    def test_chunks_give_the_mask_of_one_piece(
        self, case: tuple[NM, Tensor], ties: bool, data: st.DataObject
    ) -> None:
        method, w = case
        if ties:
            w = w.round()
        if data.draw(st.booleans()):
            w = w.clone()
            w.view(-1)[data.draw(st.integers(0, w.numel() - 1))] = math.nan
        kwargs: dict[str, Tensor] = {}
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
        if data.draw(st.booleans()):
            kwargs["prev_mask"] = torch.rand(w.shape, generator=g) < 0.7
        if data.draw(st.booleans()):
            kwargs["scores"] = torch.randn(w.shape, generator=g).round()
        mask = method(w, **kwargs)
        assert torch.equal(mask, self.one_piece(method, w, **kwargs))
        check_leaf_mask(method, w, mask, data=kwargs)

    @pytest.mark.usefixtures("small_chunks")
    @pytest.mark.parametrize("axis", [0, 1, -1])
    def test_chunks_under_batch_dims_equal_each_member(self, axis: int) -> None:
        ws = torch.stack([tie_free((8, 12), seed) for seed in range(3)]).round(decimals=1)
        method = NM(n=1, m=4, axis=axis)
        masks = fs.compute_masks({"w": ws}, {"w": method}, batch_dims=1)["w"]
        for i in range(3):
            assert torch.equal(masks[i], method(ws[i]))
            assert torch.equal(masks[i], self.one_piece(method, ws[i]))

    def test_where_the_cut_runs(self) -> None:
        chunking, least = nm_module._chunking, nm_module._CHUNK_MIN  # 2**20 entries
        assert chunking(torch.empty(least // 64, 64), -1, 4) is None  # small: one piece
        # the outermost dim whose slices fit; along axis 0 in steps of m
        assert chunking(torch.empty(4 * least // 1024, 1024), -1, 4) == (0, least // 1024)
        assert chunking(torch.empty(4 * least // 1024, 1024), 0, 8) == (0, least // 1024)
        # the axis has one group: cut along the other dim
        assert chunking(torch.empty(2, least), 0, 2) == (1, least // 2)
        # a 1-D tensor: along the axis, whole groups per chunk
        assert chunking(torch.empty(2 * least), 0, 4) == (0, least)
        # no dim has slices that fit: the dim of thinnest slices, one slice at a time
        assert chunking(torch.empty(2, 2 * least), 1, 2 * least) == (0, 1)
        # a larger tensor: _CHUNKS chunks (meta: shapes only, nothing allocated)
        huge = torch.empty(least, 64, device="meta")
        assert chunking(huge, -1, 4) == (0, least // nm_module._CHUNKS)

    def test_a_large_tensor_is_cut_and_keeps_exactly_n(self) -> None:
        w = torch.randn(768, 4096, generator=torch.Generator().manual_seed(3))  # 3 chunks
        assert nm_module._chunking(w, 0, 4) == (0, 256)
        mask = NM(n=2, m=4, axis=0)(w)
        assert torch.equal(mask, self.one_piece(NM(n=2, m=4, axis=0), w))
        assert bool((mask.reshape(192, 4, 4096).sum(1) == 2).all())


class TestHostile:
    @pytest.mark.parametrize("m", [10**12, 10**400])
    def test_m_far_larger_than_the_axis_is_refused_before_any_work(self, m: int) -> None:
        method = NM(n=2, m=m)
        with pytest.raises(ValueError) as info:
            method(torch.randn(4, 8))
        message = str(info.value)
        assert message.startswith("NM: got a 2-D torch.float32 tensor of shape (4, 8); NM m=")
        assert "is larger than the length along axis=-1 (8)" in message
        assert len(message) < 250
        with pytest.raises(ValueError, match=r"at 'w'; NM m=\d+.* is larger than the length"):
            fs.compute_masks({"w": torch.randn(3, 4, 8)}, {"w": method}, batch_dims=1)

    @pytest.mark.parametrize("m", [4, 10**12, 10**400])
    def test_an_empty_tensor_has_no_groups_whatever_m(self, m: int) -> None:
        for shape in [(4, 0), (0, 0), (2, 0, 3)]:
            w = torch.randn(shape)
            method = NM(n=1, m=m, axis=1)
            mask = method(w)
            assert mask.shape == shape and mask.dtype == torch.bool
            prev = torch.ones(shape, dtype=torch.bool)
            assert method(w, prev_mask=prev).shape == shape
            assert method.expected_zeros(w, prev_mask=prev) == 0
            assert method.structure_problem(w, mask, prev_mask=prev) is None

    def test_huge_and_non_int_fields(self) -> None:
        with pytest.raises(
            ValueError, match=r"NM: n=1000.*\.\.\..* must be in \[0, m\] = \[0, 4\]"
        ):
            NM(n=10**400, m=4)
        with pytest.raises(ValueError, match=r"NM: m=.* must be at least 1") as info:
            NM(n=0, m=-(10**5000))
        assert len(str(info.value)) < 200
        for bad in (2.0, "2", None, 1e400):
            with pytest.raises(TypeError, match="NM: n must be an int"):
                NM(n=bad, m=4)
            with pytest.raises(TypeError, match="NM: m must be an int"):
                NM(n=2, m=bad)
        with pytest.raises(ValueError, match=r"NM axis=1000.*\.\.\..* is out of range for a 2-D"):
            NM(n=2, m=4, axis=10**400)(torch.randn(4, 8))

    def test_scaled_with_a_huge_m(self) -> None:
        method = NM(n=2, m=10**400)
        assert method.scaled(0.0).n == 10**400  # nothing pruned yet
        assert method.scaled(1.0) == method
        assert method.scaled(0.5).n == 10**400 - (10**400 - 2) // 2
        # small m: the float product, as before (0.1 * 5 is 0.5 in floats, rounded to 0;
        # the exact product of the float 0.1 and 5 is a little above 0.5)
        assert NM(n=0, m=5).scaled(0.1).n == 5

    def test_zero_dim_leaves(self) -> None:
        with pytest.raises(ValueError, match="NM axis=-1 is out of range for a 0-D tensor"):
            NM(n=1, m=1)(torch.tensor(2.0))
        with pytest.raises(ValueError, match="at 'w'; NM axis=-1 is out of range for a 0-D"):
            fs.compute_masks({"w": torch.ones(3)}, {"w": NM(n=1, m=1)}, batch_dims=1)


_SPECIAL = st.sampled_from([-math.inf, -1.0, 0.0, 1.0, math.inf, math.nan])


@given(
    st.lists(_SPECIAL, min_size=8, max_size=8),
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.sampled_from([(1, 4), (2, 4), (3, 4), (2, 8)]),
    st.booleans(),
)
def test_previous_zeros_rank_before_a_real_minus_inf(
    scores: list[float], kept: list[bool], nm: tuple[int, int], batched: bool
) -> None:
    # A group prunes exactly max(m - n, its previous zeros), whatever the scores (-inf too),
    # and never brings a previous zero back.
    n, m = nm
    method = fs.NM(n=n, m=m)
    score = torch.tensor(scores).reshape(1, 8)
    prev = torch.tensor(kept).reshape(1, 8)
    if batched:
        mask = torch.func.vmap(lambda s, p: method(torch.zeros(1, 8), scores=s, prev_mask=p))(
            score[None], prev[None]
        )[0]
    else:
        mask = method(torch.zeros(1, 8), scores=score, prev_mask=prev)
    assert not bool((mask & ~prev).any())
    for group in range(8 // m):
        cols = slice(group * m, (group + 1) * m)
        previous = int((~prev[0, cols]).sum())
        assert int((~mask[0, cols]).sum()) == max(m - n, previous)


def test_a_real_minus_inf_beside_a_previous_zero() -> None:
    inf = math.inf
    mask = fs.NM(n=2, m=4)(
        torch.zeros(1, 4),
        scores=torch.tensor([[-inf, -inf, 0.0, 5.0]]),
        prev_mask=torch.tensor([[True, False, True, True]]),
    )
    assert mask.tolist() == [[False, False, True, True]]
