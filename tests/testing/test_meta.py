"""Meta-tests of funcsparse.testing: the strategies deliver what they claim, the checks can fail.

A property test is only as good as its generators and its assertions. Here every strategy's
documented promise is checked per example (or found with ``hypothesis.find`` where it is a
promise about the distribution), and every invariant of ``check_masks`` / ``check_leaf_mask``
is shown to catch a deliberately corrupted mask, or a deliberately broken method, with a
message that names what was expected and found.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import assume, find, given
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from torch import Tensor, nn

import funcsparse as fs
from funcsparse._tree import flatten_with_paths
from funcsparse.methods import LeafProblem, MaskMethod, NearlyDiagonal, WeightNorm
from funcsparse.testing import check_leaf_mask, check_masks, registered_methods
from funcsparse.testing import strategies as fst

FLOATS = (torch.float32, torch.float64)


def _weight(height: int = 8, width: int = 8, seed: int = 0) -> Tensor:
    """A tie-free float32 weight (random normal, fixed seed)."""
    return torch.randn(height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# Deliberately broken methods. Leading underscores (and this module's name) keep them out
# of registered_methods().
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _AnyLeaf(MaskMethod):
    """Accepts every tensor; keeps everything. The base of the broken methods below."""

    def leaf_problem(self, tensor: object) -> LeafProblem | None:
        if not isinstance(tensor, Tensor):
            return LeafProblem(TypeError, type(tensor).__name__, "a tensor")
        return None

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        return torch.ones(tensor.shape, dtype=torch.bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Mutating(_AnyLeaf):
    """Doubles its input in place; the mask does not depend on the values."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        tensor.mul_(2)
        return torch.ones(tensor.shape, dtype=torch.bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MutatingOnce(_AnyLeaf):
    """Takes the absolute value in place: a second call changes nothing more."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        tensor.abs_()
        return torch.ones(tensor.shape, dtype=torch.bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MutatingThenPrunes(_AnyLeaf):
    """Shifts its input in place, then prunes by magnitude: the usual way to mutate by mistake."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        tensor.add_(1.0)
        return WeightNorm(sparsity=0.5)(tensor)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _VmapDiffers(_AnyLeaf):
    """Keeps everything when called directly, prunes everything under torch.func.vmap."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        if torch._C._functorch.is_functorch_wrapped_tensor(tensor):
            return torch.zeros(tensor.shape, dtype=torch.bool)
        return torch.ones(tensor.shape, dtype=torch.bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _VmapDiffersUndeclared(_VmapDiffers):
    """The same, but it says it is not vmappable: the kit must not hold vmap against it."""

    vmappable: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Picky(_AnyLeaf):
    """Its own structure check rejects every mask."""

    def structure_problem(self, tensor: Tensor, mask: Tensor) -> str | None:
        return "no mask is ever right"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Unnested(_AnyLeaf):
    """Prunes the first entries below level 0.5 and the last ones above: not nested."""

    level: float = 0.25
    level_field: ClassVar[str | None] = "level"

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        n = tensor.numel()
        k = round(self.level * n)
        index = torch.arange(n)
        pruned = index < k if self.level < 0.5 else index >= n - k
        return (~pruned).reshape(tensor.shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FlipOne(WeightNorm):
    """WeightNorm with entry (0, 0) of every mask flipped: one zero too many or too few."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        mask = super()._mask(tensor, **kwargs).clone()
        mask[0, 0] = ~mask[0, 0]
        return mask


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MoveOne(WeightNorm):
    """WeightNorm with one zero moved from a pruned block to a kept one: the count holds."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        flat = super()._mask(tensor, **kwargs).flatten().clone()
        pruned, kept = int((~flat).nonzero()[0]), int(flat.nonzero()[0])
        flat[pruned], flat[kept] = True, False
        return flat.reshape(tensor.shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MoveOneOffBand(NearlyDiagonal):
    """NearlyDiagonal with (0, 0) pruned and (0, last) kept: the count holds, the band breaks."""

    def _mask(self, tensor: Tensor, **kwargs: Any) -> Tensor:
        mask = super()._mask(tensor, **kwargs).clone()
        mask[0, 0], mask[0, -1] = False, True
        return mask


@dataclasses.dataclass(frozen=True, kw_only=True)
class _PrunesLargest(WeightNorm):
    """WeightNorm ranking blocks by negated score: right count and pattern, wrong blocks."""

    def _block_scores(self, tensor: Tensor, *, given: bool = False) -> Tensor:
        return -super()._block_scores(tensor, given=given)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _NoConfigs(_AnyLeaf):
    """A method that forgot its configs(st)."""


BROKEN = (
    _AnyLeaf,
    _Mutating,
    _MutatingOnce,
    _MutatingThenPrunes,
    _VmapDiffers,
    _VmapDiffersUndeclared,
    _Picky,
    _Unnested,
    _FlipOne,
    _MoveOne,
    _MoveOneOffBand,
    _PrunesLargest,
    _NoConfigs,
)


def test_private_methods_are_not_registered() -> None:
    assert set(registered_methods()) >= {WeightNorm, NearlyDiagonal}
    assert not set(registered_methods()) & set(BROKEN)
    assert all(cls.__module__.startswith("funcsparse.") for cls in registered_methods())


# --------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------


@given(st.data())
def test_shapes_respect_bounds_and_ndim(data: st.DataObject) -> None:
    ndim = data.draw(st.integers(0, 4), label="ndim")
    min_side = data.draw(st.integers(1, 5), label="min_side")
    max_side = data.draw(st.integers(min_side, 8), label="max_side")
    shape = data.draw(fst.shapes(ndim=ndim, min_side=min_side, max_side=max_side))
    assert isinstance(shape, tuple) and len(shape) == ndim
    assert all(isinstance(side, int) and min_side <= side <= max_side for side in shape)


@given(fst.shapes(ndim=3))
def test_shapes_are_never_empty_by_default(shape: tuple[int, ...]) -> None:
    assert 0 not in shape and all(1 <= side <= 12 for side in shape)


@given(fst.shapes(allow_empty=True))
def test_shapes_with_allow_empty_stay_in_bounds(shape: tuple[int, ...]) -> None:
    assert len(shape) == 2 and all(0 <= side <= 12 for side in shape)


@given(fst.shapes(min_side=3, max_side=6, allow_empty=True))
def test_shapes_allow_empty_adds_zero_and_keeps_min_side(shape: tuple[int, ...]) -> None:
    # allow_empty adds the side 0; it must not lower min_side (1 and 2 are not allowed here).
    assert all(side == 0 or 3 <= side <= 6 for side in shape), shape


def test_shapes_reach_empty_tall_wide_and_unit() -> None:
    assert 0 in find(fst.shapes(allow_empty=True), lambda s: 0 in s)
    assert find(fst.shapes(), lambda s: s == (1, 1)) == (1, 1)
    tall = find(fst.shapes(), lambda s: s[0] > s[1])
    wide = find(fst.shapes(), lambda s: s[0] < s[1])
    assert tall[0] > tall[1] and wide[0] < wide[1]
    # sides that a 4-wide block does not divide
    assert find(fst.shapes(), lambda s: s[1] % 4 != 0)[1] % 4


# --------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------


@given(st.data())
def test_tensors_have_requested_dtype_and_shape(data: st.DataObject) -> None:
    shape = data.draw(fst.shapes(ndim=data.draw(st.integers(0, 3)), allow_empty=True))
    dtype = data.draw(st.sampled_from(fst.DTYPES), label="dtype")
    ties = data.draw(st.none() | st.booleans(), label="ties")
    special = data.draw(st.booleans(), label="special")
    t = data.draw(fst.tensors(shape, dtypes=[dtype], ties=ties, special=special))
    assert isinstance(t, Tensor)
    assert t.dtype == dtype and tuple(t.shape) == shape


@given(fst.tensors())
def test_tensors_default_is_a_floating_2d_tensor(t: Tensor) -> None:
    assert t.dtype in fst.DTYPES and t.dim() == 2 and t.numel() > 0
    assert bool(torch.isfinite(t).all())


def test_tensors_draw_every_default_dtype() -> None:
    for dtype in fst.DTYPES:
        assert find(fst.tensors((2, 2)), lambda t, dtype=dtype: t.dtype == dtype).dtype == dtype


@given(st.data())
def test_tensors_with_ties_repeat_values(data: st.DataObject) -> None:
    shape = data.draw(fst.shapes(min_side=3, max_side=8))  # at least 9 entries, 5 values
    t = data.draw(fst.tensors(shape, ties=True))
    values = t.double().flatten()
    assert torch.unique(values).numel() < values.numel()
    assert set(values.tolist()) <= {-1.0, -0.5, 0.0, 0.5, 1.0}


def test_tensors_with_ties_tie_even_on_small_tensors() -> None:
    t = find(fst.tensors((3,), ties=True), lambda t: torch.unique(t).numel() < 3)
    assert torch.unique(t).numel() < 3


@given(st.data())
def test_tensors_without_ties_are_distinct(data: st.DataObject) -> None:
    # "exact in every dtype of DTYPES up to 256 entries": 16 x 16 is the largest here.
    shape = data.draw(fst.shapes(ndim=data.draw(st.integers(1, 2)), max_side=16))
    dtype = data.draw(st.sampled_from(fst.DTYPES), label="dtype")
    t = data.draw(fst.tensors(shape, dtypes=[dtype], ties=False))
    magnitudes = t.abs().double().flatten()
    assert torch.unique(magnitudes).numel() == t.numel()
    assert bool(torch.isfinite(t).all()) and bool((magnitudes > 0).all())


@given(st.data())
def test_tensors_without_ties_are_distinct_in_float32_and_float64(data: st.DataObject) -> None:
    shape = data.draw(fst.shapes())
    t = data.draw(fst.tensors(shape, dtypes=FLOATS, ties=False))
    assert torch.unique(t).numel() == t.numel()


@given(fst.tensors(special=True))
def test_tensors_with_special_hold_a_non_finite_value(t: Tensor) -> None:
    assert not bool(torch.isfinite(t).all())


@given(fst.tensors(special=False, ties=False))
def test_tensors_without_special_are_finite(t: Tensor) -> None:
    assert bool(torch.isfinite(t).all())


@pytest.mark.parametrize(
    ("what", "has"),
    [
        ("nan", lambda t: bool(t.isnan().any())),
        ("+inf", lambda t: bool(t.isposinf().any())),
        ("-inf", lambda t: bool(t.isneginf().any())),
    ],
)
def test_tensors_with_special_reach_nan_and_both_infinities(
    what: str, has: Callable[[Tensor], bool]
) -> None:
    assert has(find(fst.tensors(special=True), has)), what


# --------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------


def _assert_layer(layer: dict[str, Tensor], *, biases: bool = True) -> None:
    assert set(layer) in ({"weight"}, {"weight", "bias"})
    weight = layer["weight"]
    assert isinstance(weight, Tensor) and weight.dim() == 2 and weight.is_floating_point()
    if "bias" in layer:
        assert biases
        bias = layer["bias"]
        assert bias.dim() == 1 and bias.shape[0] == weight.shape[0]
        assert bias.dtype in fst.DTYPES


@given(fst.params(layout="flat", max_layers=3))
def test_params_flat_layout_has_dotted_keys(tree: dict[str, Tensor]) -> None:
    assert isinstance(tree, dict)
    pattern = re.compile(r"layers\.(\d+)\.(weight|bias)")
    layers: dict[int, dict[str, Tensor]] = {}
    for key, leaf in tree.items():
        match = pattern.fullmatch(key)
        assert match is not None, key
        layers.setdefault(int(match[1]), {})[match[2]] = leaf
    assert 0 < len(layers) <= 3 and sorted(layers) == list(range(len(layers)))
    for layer in layers.values():
        _assert_layer(layer)


@given(fst.params(layout="nested"))
def test_params_nested_layout_is_dicts_of_dicts(tree: dict[str, Any]) -> None:
    assert set(tree) == {"layers"} and isinstance(tree["layers"], dict)
    layers = tree["layers"]
    assert 0 < len(layers) <= 4 and list(layers) == [str(i) for i in range(len(layers))]
    for layer in layers.values():
        assert isinstance(layer, dict)
        _assert_layer(layer)


@given(fst.params(layout="sequence"))
def test_params_sequence_layout_is_a_list_or_tuple_of_dicts(tree: dict[str, Any]) -> None:
    assert set(tree) == {"layers"} and type(tree["layers"]) in (list, tuple)
    assert 0 < len(tree["layers"]) <= 4
    for layer in tree["layers"]:
        assert isinstance(layer, dict)
        _assert_layer(layer)


def test_params_sequence_layout_reaches_lists_and_tuples() -> None:
    for container in (list, tuple):
        tree = find(
            fst.params(layout="sequence"),
            lambda t, container=container: type(t["layers"]) is container,
        )
        assert type(tree["layers"]) is container


def test_params_default_layout_reaches_every_layout() -> None:
    assert "layers.0.weight" in find(fst.params(), lambda t: "layers.0.weight" in t)
    assert isinstance(
        find(fst.params(), lambda t: isinstance(t.get("layers"), dict))["layers"], dict
    )
    seq = find(fst.params(), lambda t: isinstance(t.get("layers"), (list, tuple)))
    assert isinstance(seq["layers"], (list, tuple))


@given(st.data())
def test_params_paths_are_named_parameters_paths_in_every_layout(data: st.DataObject) -> None:
    tree = data.draw(fst.params())
    paths, leaves, _ = flatten_with_paths(tree)
    assert all(re.fullmatch(r"layers\.\d+\.(weight|bias)", path) for path in paths), paths
    for path, leaf in zip(paths, leaves, strict=True):
        assert leaf.dim() == (2 if path.endswith("weight") else 1)


@given(fst.params(biases=False, max_layers=2, dtypes=[torch.float64], ties=False))
def test_params_options_are_honoured(tree: Any) -> None:
    paths, leaves, _ = flatten_with_paths(tree)
    assert all(path.endswith(".weight") for path in paths) and 1 <= len(paths) <= 2
    assert all(leaf.dtype == torch.float64 and leaf.numel() > 0 for leaf in leaves)
    for leaf in leaves:
        assert torch.unique(leaf).numel() == leaf.numel()


def test_params_allow_empty_reaches_an_empty_weight() -> None:
    def has_empty(tree: Any) -> bool:
        return any(leaf.numel() == 0 for leaf in flatten_with_paths(tree)[1])

    assert has_empty(find(fst.params(allow_empty=True), has_empty))


def test_params_biases_are_drawn() -> None:
    tree = find(fst.params(layout="flat"), lambda t: any(key.endswith("bias") for key in t))
    assert any(key.endswith(".bias") for key in tree)


# --------------------------------------------------------------------------------------
# method_configs, rules_for
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", registered_methods(), ids=lambda cls: cls.__name__)
def test_method_configs_draw_every_registered_method(cls: type[MaskMethod]) -> None:
    if cls.needs_data:  # drawn only when asked for by name: they need keyword data
        assert find(fst.method_configs([cls]), lambda method: True).__class__ is cls
        with pytest.raises(NoSuchExample):
            find(fst.method_configs(), lambda method, cls=cls: type(method) is cls)
        return
    found = find(fst.method_configs(), lambda method, cls=cls: type(method) is cls)
    assert type(found) is cls


@pytest.mark.parametrize("cls", registered_methods(), ids=lambda cls: cls.__name__)
def test_method_configs_of_one_class_are_valid_instances(cls: type[MaskMethod]) -> None:
    @given(fst.method_configs([cls]))
    def check(method: MaskMethod) -> None:
        assert type(method) is cls
        assert dataclasses.replace(method) == method  # revalidates in __post_init__

    check()


def test_method_configs_fail_loudly_without_configs() -> None:
    with pytest.raises(NotImplementedError, match=r"_NoConfigs.configs\(st\) is not implemented"):
        fst.method_configs([WeightNorm, _NoConfigs])


def test_method_configs_reach_the_edges_of_the_level() -> None:
    # Levels outside [0, 1] are refused since issue 8 (torch.ao's clamping lives in the
    # adapter), so the edges are 0 and 1 themselves, and counts where a method takes them.
    wn = [WeightNorm]
    assert find(fst.method_configs(wn), lambda m: m.sparsity >= 1).sparsity == 1.0
    assert find(fst.method_configs(wn), lambda m: m.sparsity <= 0).sparsity == 0.0
    magnitude = [fs.Magnitude]
    assert find(fst.method_configs(magnitude), lambda m: m.count is not None).sparsity is None
    assert find(fst.method_configs(magnitude), lambda m: m.sparsity == 1.0).count is None
    nd = find(fst.method_configs([NearlyDiagonal]), lambda m: m.nearliness <= 0)
    assert nd.nearliness <= 0


@given(st.data())
def test_rules_for_gives_paths_and_methods_that_accept_their_leaf(data: st.DataObject) -> None:
    tree = data.draw(fst.params(allow_empty=data.draw(st.booleans())))
    rules = data.draw(fst.rules_for(tree))
    paths, leaves, _ = flatten_with_paths(tree)
    by_path = dict(zip(paths, leaves, strict=True))
    assert set(rules) <= set(paths)
    for path, method in rules.items():
        assert method is None or isinstance(method, MaskMethod)
        if method is not None:
            assert method.leaf_problem(by_path[path]) is None, (path, method)
    masks = fs.compute_masks(tree, rules)  # so compute_masks accepts every drawn rules mapping
    mask_paths, mask_leaves, _ = flatten_with_paths(masks)
    assert set(mask_paths) == {path for path, method in rules.items() if method is not None}
    assert all(mask.dtype == torch.bool for mask in mask_leaves)


@given(st.data())
def test_rules_for_honours_methods(data: st.DataObject) -> None:
    tree = data.draw(fst.params())
    rules = data.draw(fst.rules_for(tree, methods=[NearlyDiagonal]))
    assert all(method is None or type(method) is NearlyDiagonal for method in rules.values())


def test_rules_for_reaches_exemptions_and_several_rules() -> None:
    tree = {"a": _weight(4, 4), "b": _weight(4, 4), "c": _weight(4, 4)}
    rules = find(fst.rules_for(tree), lambda rules: None in rules.values())
    assert None in rules.values()
    rules = find(fst.rules_for(tree), lambda rules: sum(m is not None for m in rules.values()) >= 2)
    assert sum(m is not None for m in rules.values()) >= 2 and set(rules) <= set(tree)


# --------------------------------------------------------------------------------------
# check_masks passes on correct masks
# --------------------------------------------------------------------------------------


def _model_params() -> dict[str, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    return {name: p.detach() for name, p in model.named_parameters()}


PASSING = {
    "sequential": (
        _model_params,
        {
            "*.weight": fs.WeightNorm(sparsity=0.5, sparse_block_shape=(1, 4)),
            "2.weight": fs.NearlyDiagonal(nearliness=3),
            "4.weight": fs.WeightNorm(sparsity=1.0, sparse_block_shape=(1, 3), zeros_per_block=2),
        },
    ),
    "whole blocks that do not divide": (
        lambda: {"w": _weight(7, 10), "b": torch.randn(7)},
        {"w": fs.WeightNorm(sparsity=0.6, sparse_block_shape=(2, 3))},
    ),
    "partial blocks": (
        lambda: {"w": _weight(6, 9), "b": torch.randn(6)},
        {"w": fs.WeightNorm(sparsity=0.6, sparse_block_shape=(2, 3), zeros_per_block=4)},
    ),
    "nested and exempt": (
        lambda: {"enc": {"w": _weight(6, 6), "b": torch.randn(6)}, "head": {"w": _weight(6, 2)}},
        {"**.w": fs.WeightNorm(sparsity=0.25, norm=1), "head.w": None},
    ),
    "sequence": (
        lambda: {"layers": [{"weight": _weight(5, 5, seed=i)} for i in range(3)]},
        {"layers.*.weight": fs.NearlyDiagonal(nearliness=5)},
    ),
    "float64 and no rules": (lambda: {"w": _weight(4, 4).double()}, {}),
}


@pytest.mark.parametrize("name", PASSING)
def test_check_masks_passes_on_compute_masks(name: str) -> None:
    make, rules = PASSING[name]
    params = make()
    before = {
        path: leaf.clone() for path, leaf in zip(*flatten_with_paths(params)[:2], strict=True)
    }
    check_masks(params, rules)
    check_masks(params, rules, fs.compute_masks(params, rules))
    for path, leaf in zip(*flatten_with_paths(params)[:2], strict=True):
        assert torch.equal(leaf, before[path])


def test_check_masks_passes_on_well_behaved_custom_methods() -> None:
    params = {"w": _weight(), "b": torch.randn(8)}
    check_masks(params, {"w": _AnyLeaf(), "b": _VmapDiffersUndeclared()})


# --------------------------------------------------------------------------------------
# check_masks / check_leaf_mask catch corrupted masks
# --------------------------------------------------------------------------------------

WN = fs.WeightNorm(sparsity=0.5)  # 8x8 in (1, 4) blocks: 8 of 16 blocks, 32 zeros
ND = fs.NearlyDiagonal(nearliness=3)


def _flip(mask: Tensor, index: tuple[int, int] = (0, 0)) -> Tensor:
    mask = mask.clone()
    mask[index] = ~mask[index]
    return mask


# name: (method, corrupt(mask of the method on _weight()), pattern of the message tail)
CORRUPTED: dict[str, tuple[MaskMethod, Callable[[Tensor], Any], str]] = {
    "float mask": (WN, lambda m: m.float(), "expected dtype torch.bool, found torch.float32"),
    "uint8 mask": (ND, lambda m: m.to(torch.uint8), "expected dtype torch.bool, found torch.uint8"),
    "not a tensor": (WN, lambda m: m.tolist(), "expected a torch.bool mask, found list [["),
    "missing mask": (WN, lambda m: None, "expected a torch.bool mask, found NoneType None"),
    "narrower": (WN, lambda m: m[:, :7], "expected shape (8, 8), found (8, 7)"),
    "flattened": (ND, lambda m: m.flatten(), "expected shape (8, 8), found (64,)"),
    "WeightNorm, one bit flipped": (
        WN,
        _flip,
        "calling the method again gives another mask (1 entries differ)",
    ),
    "NearlyDiagonal, one bit flipped": (
        ND,
        lambda m: _flip(m, (3, 6)),
        "calling the method again gives another mask (1 entries differ)",
    ),
    "mask of a lower level": (
        WN,
        lambda m: fs.WeightNorm(sparsity=0.25)(_weight()),
        "calling the method again gives another mask (16 entries differ)",
    ),
    "mask of a higher level": (
        WN,
        lambda m: fs.WeightNorm(sparsity=0.75)(_weight()),
        "calling the method again gives another mask (16 entries differ)",
    ),
    "mask of another band": (
        ND,
        lambda m: fs.NearlyDiagonal(nearliness=5)(_weight()),
        "calling the method again gives another mask (12 entries differ)",
    ),
}

# name: (broken method, pattern of the message tail); the method's own mask is checked.
BROKEN_CASES: dict[str, tuple[MaskMethod, str]] = {
    "one zero too many or too few": (
        _FlipOne(sparsity=0.5),
        r"expected exactly 32 zeros, found 3[13]",
    ),
    "a zero moved between blocks": (
        _MoveOne(sparsity=0.5),
        r"the pattern is broken: block \(\d+, \d+\) has [13] zeros; a block has 0 or 4",
    ),
    "a zero moved off the band": (
        _MoveOneOffBand(nearliness=3),
        re.escape(
            "the pattern is broken: entry (0, 0) is pruned, against the band of nearliness 3"
        ),
    ),
    "structure_problem says no": (
        _Picky(),
        re.escape("the pattern is broken: no mask is ever right"),
    ),
    "vmap gives another mask": (
        _VmapDiffers(),
        re.escape("torch.func.vmap over the method gives another mask"),
    ),
    "a higher level un-prunes": (
        _Unnested(level=0.25),
        re.escape("level=0.5 keeps 16 entries that level=0.25 prunes"),
    ),
    "torch.ao disagrees": (
        _PrunesLargest(sparsity=0.5),
        r"torch.ao.pruning's mask differs in 64 entries",
    ),
    "mutates its input": (_Mutating(), "the method mutated the tensor it was given"),
}


@pytest.mark.parametrize("name", CORRUPTED)
def test_check_masks_catches_a_corrupted_mask(name: str) -> None:
    method, corrupt, message = CORRUPTED[name]
    params = {"w": _weight(), "b": torch.randn(8)}
    rules = {"w": method}
    masks = fs.compute_masks(params, rules)
    masks["w"] = corrupt(masks["w"])
    where = f"check_masks: leaf 'w' (rule 'w', {type(method).__name__}): "
    with pytest.raises(AssertionError, match="^" + re.escape(where + message)):
        check_masks(params, rules, masks)


@pytest.mark.parametrize("name", CORRUPTED)
def test_check_leaf_mask_catches_a_corrupted_mask(name: str) -> None:
    method, corrupt, message = CORRUPTED[name]
    weight = _weight()
    mask = corrupt(method(weight))
    with pytest.raises(AssertionError, match="^" + re.escape("check_leaf_mask: " + message)):
        check_leaf_mask(method, weight, mask)
    with pytest.raises(AssertionError, match="^" + re.escape("layer 3: " + message)):
        check_leaf_mask(method, weight, mask, where="layer 3")


@pytest.mark.parametrize("name", BROKEN_CASES)
def test_check_masks_catches_a_broken_method(name: str) -> None:
    method, message = BROKEN_CASES[name]
    params = {"w": _weight(), "b": torch.randn(8)}
    where = re.escape(f"check_masks: leaf 'w' (rule 'w', {type(method).__name__}): ")
    with pytest.raises(AssertionError, match="^" + where + message):
        check_masks(params, {"w": method})


@pytest.mark.parametrize("name", BROKEN_CASES)
def test_check_leaf_mask_catches_a_broken_method(name: str) -> None:
    method, message = BROKEN_CASES[name]
    weight = _weight()
    mask = method(weight.clone())
    with pytest.raises(AssertionError, match="^check_leaf_mask: " + message):
        check_leaf_mask(method, weight, mask)


def test_the_broken_methods_pass_every_check_but_their_own() -> None:
    # _PrunesLargest is caught by the oracle alone: its count, pattern, nesting and vmap hold.
    method, weight = _PrunesLargest(sparsity=0.5), _weight()
    mask = method(weight)
    assert int((~mask).sum()) == method.expected_zeros(weight) == 32
    assert method.structure_problem(weight, mask) is None
    assert torch.equal(torch.func.vmap(method)(weight[None])[0], mask)
    # _Unnested is caught by the nesting check alone: WeightNorm-like counts, deterministic.
    unnested = _Unnested(level=0.25)
    assert torch.equal(unnested(weight), unnested(weight))
    check_leaf_mask(
        dataclasses.replace(unnested, level=0.75), weight, _Unnested(level=0.75)(weight)
    )


def test_check_masks_reports_a_method_that_mutates_only_once() -> None:
    # abs_ is idempotent: after compute_masks' call the leaf-level check sees nothing new,
    # so check_masks' own before/after comparison of params must catch it, naming the rule.
    params = {"w": _weight(), "b": torch.randn(8)}
    expected = "check_masks: leaf 'w' (rule 'w', _MutatingOnce): the method mutated the tensor"
    with pytest.raises(AssertionError, match=re.escape(expected)):
        check_masks(params, {"w": _MutatingOnce()})
    weight = _weight()
    with pytest.raises(AssertionError, match="mutated the tensor it was given"):
        check_leaf_mask(_MutatingOnce(), weight, torch.ones(8, 8, dtype=torch.bool))


def test_check_masks_reports_mutation_before_its_consequences() -> None:
    # The mask of _MutatingThenPrunes depends on the values it mutated. The root cause is the
    # mutation, and the first failure is the first call's: the kit must say "mutated", not
    # blame determinism ("calling the method again gives another mask").
    params = {"w": _weight(), "b": torch.randn(8)}
    with pytest.raises(AssertionError, match="mutated"):
        check_masks(params, {"w": _MutatingThenPrunes()})
    weight = _weight()
    with pytest.raises(AssertionError, match="mutated"):
        check_leaf_mask(_MutatingThenPrunes(), weight, _MutatingThenPrunes()(weight.clone()))


def test_check_masks_honours_vmappable_false() -> None:
    weight = _weight()
    check_leaf_mask(_VmapDiffersUndeclared(), weight, torch.ones(8, 8, dtype=torch.bool))


def test_check_masks_catches_a_mask_where_no_rule_applies() -> None:
    params = {"w": _weight(), "b": torch.randn(8)}
    masks = {"w": WN(params["w"]), "b": torch.ones(8, dtype=torch.bool)}
    message = (
        "check_masks: leaf 'b' has no rule, so its mask must be None; "
        "found a 1-D torch.bool tensor of shape (8,)"
    )
    with pytest.raises(AssertionError, match="^" + re.escape(message) + "$"):
        check_masks(params, {"w": WN}, masks)
    with pytest.raises(AssertionError, match="^" + re.escape(message) + "$"):
        check_masks(params, {"w": WN, "b": None}, masks)  # an exemption is no rule either


@pytest.mark.parametrize(
    ("params", "masks", "message"),
    [
        pytest.param(
            {"w": _weight(), "b": torch.randn(8)},
            {"w": WN(_weight())},
            "missing ['b'], unexpected []",
            id="missing key",
        ),
        pytest.param(
            {"w": _weight()},
            {"w": WN(_weight()), "extra": None},
            "missing [], unexpected ['extra']",
            id="extra key",
        ),
        pytest.param(
            {"w": _weight()},
            {"weight": WN(_weight())},
            "missing ['w'], unexpected ['weight']",
            id="renamed key",
        ),
        pytest.param(
            {"layers": [_weight(), _weight(seed=1)]},
            {"layers": (WN(_weight()), WN(_weight(seed=1)))},
            "the same paths in different containers",
            id="tuple for list",
        ),
        pytest.param(
            {"layers": [_weight()]},
            {"layers": [WN(_weight()), None]},
            "missing [], unexpected ['layers.1']",
            id="longer list",
        ),
    ],
)
def test_check_masks_catches_masks_of_another_structure(
    params: Any, masks: Any, message: str
) -> None:
    rules = {path: WN for path in flatten_with_paths(params)[0] if path != "b"}
    expected = f"check_masks: masks do not have the structure of params ({message})"
    with pytest.raises(AssertionError, match="^" + re.escape(expected) + "$"):
        check_masks(params, rules, masks)


def test_check_masks_names_the_leaf_and_the_glob_rule() -> None:
    params = _model_params()
    rules = {"*.weight": WN, "2.weight": ND}
    masks = fs.compute_masks(params, rules)
    masks["2.weight"] = _flip(masks["2.weight"])
    with pytest.raises(
        AssertionError, match=re.escape("leaf '2.weight' (rule '2.weight', NearlyDiagonal)")
    ):
        check_masks(params, rules, masks)
    masks = fs.compute_masks(params, rules)
    masks["4.weight"] = masks["4.weight"].float()
    with pytest.raises(
        AssertionError, match=re.escape("leaf '4.weight' (rule '*.weight', WeightNorm)")
    ):
        check_masks(params, rules, masks)


# --------------------------------------------------------------------------------------
# One flipped bit is caught by the method's own count or pattern check, not only by
# determinism: the promises are strong enough to pin the mask.
# --------------------------------------------------------------------------------------

WEIGHT_NORM_IN_RANGE = WeightNorm.configs(st).filter(lambda m: 0 < m.sparsity < 1)


@given(st.data())
def test_one_flipped_bit_breaks_weight_norm_count_or_pattern(data: st.DataObject) -> None:
    method = data.draw(WEIGHT_NORM_IN_RANGE, label="method")
    weight = data.draw(fst.tensors(dtypes=FLOATS, ties=False), label="weight")
    assume(method.check_leaf(weight) is None)  # e.g. partial blocks that do not divide
    mask = method(weight)
    check_leaf_mask(method, weight, mask)  # the real mask passes every check
    row = data.draw(st.integers(0, weight.shape[0] - 1), label="row")
    col = data.draw(st.integers(0, weight.shape[1] - 1), label="col")
    flipped = _flip(mask, (row, col))
    expected = method.expected_zeros(weight)
    caught_by_count = expected is not None and int((~flipped).sum()) != expected
    assert caught_by_count or method.structure_problem(weight, flipped) is not None
    with pytest.raises(AssertionError, match=r"^check_leaf_mask: "):
        check_leaf_mask(method, weight, flipped)


@given(st.data())
def test_one_flipped_bit_breaks_the_band(data: st.DataObject) -> None:
    method = data.draw(NearlyDiagonal.configs(st), label="method")
    weight = data.draw(fst.tensors(dtypes=FLOATS), label="weight")
    assume(method.leaf_problem(weight) is None)
    mask = method(weight)
    check_leaf_mask(method, weight, mask)
    row = data.draw(st.integers(0, weight.shape[0] - 1), label="row")
    col = data.draw(st.integers(0, weight.shape[1] - 1), label="col")
    problem = method.structure_problem(weight, _flip(mask, (row, col)))
    assert problem == (
        f"entry ({row}, {col}) is {'pruned' if mask[row, col] else 'kept'}, "
        f"against the band of nearliness {method.nearliness}"
    )
