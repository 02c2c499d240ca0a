"""Hypothesis strategies for pruning tests: tensors, params pytrees, method configs, rules.

Compose them in your own tests::

    from hypothesis import given
    from funcsparse.testing import check_masks, strategies as fst

    @given(fst.params_and_rules())
    def test_my_masks(case):
        params, rules = case
        check_masks(params, rules)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from funcsparse.methods._base import MaskMethod, registered_methods

__all__ = [
    "DTYPES",
    "leaf_data_for",
    "method_configs",
    "params",
    "params_and_rules",
    "rules_for",
    "shapes",
    "tensors",
]

#: Floating dtypes the strategies draw from by default.
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@st.composite
def shapes(
    draw: st.DrawFn,
    /,
    *,
    ndim: int = 2,
    min_side: int = 1,
    max_side: int = 12,
    allow_empty: bool = False,
) -> tuple[int, ...]:
    """Tensor shapes: 1x1, wide, tall, sides that blocks do not divide.

    Every side is in ``[min_side, max_side]``; with ``allow_empty`` a side may also be 0.
    """
    side = st.integers(min_side, max_side)
    if allow_empty:
        side = st.one_of(st.just(0), side)
    return tuple(draw(side) for _ in range(ndim))


@st.composite
def tensors(
    draw: st.DrawFn,
    /,
    shape: Sequence[int] | None = None,
    *,
    dtypes: Sequence[torch.dtype] = DTYPES,
    ties: bool | None = None,
    special: bool = False,
) -> Tensor:
    """Floating tensors, from a seed that hypothesis draws (so they shrink and replay).

    Args:
        shape: the shape. Default: drawn by :func:`shapes`.
        dtypes: dtypes to draw from. Default :data:`DTYPES`.
        ties: True: values from a 5-value alphabet, so ties are everywhere; False: distinct
            magnitudes (exact in every dtype of :data:`DTYPES` up to 256 entries; scores
            computed from them in low precision may still tie); None: either.
        special: sprinkle NaN, +inf and -inf in. Default False.
    """
    size = tuple(shape) if shape is not None else draw(shapes())
    dtype = draw(st.sampled_from(list(dtypes)))
    with_ties = draw(st.booleans()) if ties is None else ties
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = math.prod(size)
    if with_ties:
        values = torch.randint(-2, 3, (n,), generator=generator).double() / 2
    else:
        magnitudes = torch.randperm(n, generator=generator).double() + 1
        signs = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1
        values = magnitudes * signs / 2 ** max(0, math.ceil(math.log2(n + 1)) - 3)
    if special and n:
        count = draw(st.integers(1, max(1, n // 4)))
        where = torch.randperm(n, generator=generator)[:count]
        picks = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
        values[where] = picks[torch.randint(0, 3, (count,), generator=generator)]
    return values.to(dtype).reshape(size)


def method_configs(
    methods: Sequence[type[MaskMethod]] | None = None,
) -> st.SearchStrategy[MaskMethod]:
    """Valid configs of the given method classes.

    Default: every registered method that needs no keyword data (see ``needs_data``).
    """
    if methods is None:
        classes = [cls for cls in registered_methods() if not cls.needs_data]
    else:
        classes = list(methods)
    return st.one_of([cls.configs(st) for cls in classes])


@st.composite
def params(
    draw: st.DrawFn,
    /,
    *,
    layout: str | None = None,
    max_layers: int = 4,
    biases: bool = True,
    allow_empty: bool = False,
    dtypes: Sequence[torch.dtype] = DTYPES,
    ties: bool | None = None,
    special: bool = False,
) -> Any:
    """Params pytrees with 2-D weights (and 1-D biases), in one of three layouts.

    ``"flat"``: ``{"layers.0.weight": ..., "layers.0.bias": ...}`` as from
    ``named_parameters()``; ``"nested"``: ``{"layers": {"0": {"weight": ...}}}``;
    ``"sequence"``: ``{"layers": [{"weight": ..., "bias": ...}, ...]}`` (tuples too).
    Default: any of them.
    """
    kind = layout or draw(st.sampled_from(["flat", "nested", "sequence"]))
    n_layers = draw(st.integers(1, max_layers))
    one = {"dtypes": dtypes, "ties": ties, "special": special}
    layers = []
    for _ in range(n_layers):
        weight = draw(tensors(draw(shapes(allow_empty=allow_empty)), **one))  # type: ignore[arg-type]
        layer = {"weight": weight}
        if biases and draw(st.booleans()):
            layer["bias"] = draw(tensors((weight.shape[0],), **one))  # type: ignore[arg-type]
        layers.append(layer)
    if kind == "flat":
        return {
            f"layers.{i}.{name}": t for i, layer in enumerate(layers) for name, t in layer.items()
        }
    if kind == "nested":
        return {"layers": {str(i): layer for i, layer in enumerate(layers)}}
    container = tuple if draw(st.booleans()) else list
    return {"layers": container(layers)}


@st.composite
def rules_for(
    draw: st.DrawFn, tree: Any, *, methods: Sequence[type[MaskMethod]] | None = None
) -> dict[str, MaskMethod | None]:
    """A rules mapping for ``tree``: exact paths to methods that accept their leaf.

    Leaves no drawn method accepts are left out; some leaves are exempted with None.
    """
    from funcsparse._tree import flatten_with_paths

    paths, leaves, _ = flatten_with_paths(tree)
    configs = method_configs(methods)
    rules: dict[str, MaskMethod | None] = {}
    for path, leaf in zip(paths, leaves, strict=True):
        if not isinstance(leaf, Tensor) or not draw(st.integers(0, 3)):
            continue
        method = draw(configs)
        data = draw(type(method).example_data(st, leaf)) if method.needs_data else {}
        if method.check_leaf(leaf, **data) is None:
            rules[path] = method
        elif draw(st.booleans()):
            rules[path] = None
    return rules


@st.composite
def leaf_data_for(
    draw: st.DrawFn, /, tree: Any, rules: dict[str, MaskMethod | None]
) -> dict[str, Any]:
    """The keyword data (``scores``, ``input_norms``, ...) that ``rules``' methods need on
    ``tree``, as ``compute_masks`` keyword pytrees of ``tree``'s structure."""
    from funcsparse._rules import assign_rules
    from funcsparse._tree import flatten_with_paths, unflatten

    paths, leaves, spec = flatten_with_paths(tree)
    per_leaf: list[dict[str, Any]] = []
    for path, leaf, assigned in zip(
        paths, leaves, assign_rules(paths, rules, function="leaf_data_for"), strict=True
    ):
        method = None if assigned is None else assigned.method.for_leaf(path)
        per_leaf.append({} if method is None else draw(type(method).example_data(st, leaf)))
    names = {name for entry in per_leaf for name in entry}
    return {
        ("prev_masks" if name == "prev_mask" else name): unflatten(
            spec, [entry.get(name) for entry in per_leaf]
        )
        for name in names
    }


@st.composite
def params_and_rules(
    draw: st.DrawFn, /, **params_kwargs: Any
) -> tuple[Any, dict[str, MaskMethod | None]]:
    """A params pytree (see :func:`params`) and a rules mapping for it."""
    tree = draw(params(**params_kwargs))
    return tree, draw(rules_for(tree))
