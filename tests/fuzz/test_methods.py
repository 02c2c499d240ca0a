"""Fuzz every registered method: constructors, calls, global selection, scaled levels.

Properties (see ``hostile.guarded``): only TypeError/ValueError escape, with short messages;
nothing passed in changes; a returned mask is bool, leaf-shaped and on the leaf's device; the
same call gives the same mask; a method that promises a number of zeros gives exactly that.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from funcsparse.methods import GlobalMethod, MaskMethod
from funcsparse.testing import registered_methods
from tests.fuzz.hostile import (
    Raised,
    anything_like,
    assert_mask,
    data_for,
    fuzz,
    guarded,
    junk,
    levels,
    same_output,
    shapes,
    tensors,
)

METHODS = registered_methods()
GLOBAL = [cls for cls in METHODS if issubclass(cls, GlobalMethod)]


def _fields(method: MaskMethod) -> dict[str, Any]:
    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.init}


def _check_call(where: str, method: MaskMethod, leaf: Any, data: dict[str, Any]) -> None:
    """Call ``method`` on ``leaf`` under guard; a mask must keep every promise."""
    mask = guarded(where, method, leaf, **data)
    if isinstance(mask, Raised):
        return
    assert_mask(where, mask, leaf)
    again = guarded(where, method, leaf, **data)
    assert same_output(mask, again), f"{where}: two calls gave different masks"
    expected = method.expected_zeros(leaf.detach(), **data)
    if expected is not None:
        zeros = int((~mask).sum())
        assert zeros == expected, f"{where}: {zeros} zeros where {expected} are promised"
    prev_mask = data.get("prev_mask")
    if isinstance(prev_mask, Tensor):
        assert not bool((mask & ~prev_mask).any()), f"{where}: un-pruned a prev_mask zero"


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
@fuzz
@given(data=st.data())
def test_constructors_raise_only_documented_errors(cls: type[MaskMethod], data: Any) -> None:
    fields = _fields(data.draw(cls.configs(st), label="valid"))
    bad = data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True))
    for name in bad:
        fields[name] = data.draw(st.one_of(junk, levels), label=name)
    where = f"{cls.__name__}(**{fields!r})"[:300]
    method = guarded(where, cls, **fields)
    if isinstance(method, Raised):
        return
    # Accepted: it must then behave on a small leaf (refusing, or a valid mask, never
    # a huge allocation for a block or a level far beyond the weight).
    leaf = data.draw(tensors(data.draw(shapes(max_dims=3)), odd=False), label="leaf")
    _check_call(f"{method!r}(leaf)", method, leaf, {})


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
@fuzz
@given(data=st.data())
def test_calls_keep_every_promise(cls: type[MaskMethod], data: Any) -> None:
    method = data.draw(cls.configs(st), label="method")
    leaf = data.draw(anything_like(tensors()), label="leaf")
    kwargs = data.draw(data_for(method, leaf), label="data")
    _check_call(f"{method!r}(leaf, **{sorted(kwargs)})", method, leaf, kwargs)


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.__name__)
@fuzz
@given(data=st.data())
def test_scaled_and_for_leaf_raise_only_documented_errors(cls: type[MaskMethod], data: Any) -> None:
    method = data.draw(cls.configs(st), label="method")
    fraction = data.draw(st.one_of(junk, levels), label="fraction")
    scaled = guarded(f"{method!r}.scaled({fraction!r})", method.scaled, fraction)
    if not isinstance(scaled, Raised):
        assert isinstance(scaled, cls)
    path = data.draw(st.one_of(st.text(max_size=5), junk), label="path")
    guarded(f"{method!r}.for_leaf({path!r})", method.for_leaf, path)


@pytest.mark.parametrize("cls", GLOBAL, ids=lambda cls: cls.__name__)
@fuzz
@given(data=st.data())
def test_global_masks_keep_every_promise(cls: type[GlobalMethod], data: Any) -> None:
    method = data.draw(cls.configs(st), label="method")
    leaves = data.draw(st.lists(anything_like(tensors()), min_size=0, max_size=3), label="leaves")
    per_leaf = [data.draw(data_for(method, leaf), label="data") for leaf in leaves]
    where = f"{method!r}.global_masks"
    masks = guarded(where, method.global_masks, leaves, per_leaf)
    if isinstance(masks, Raised):
        return
    assert len(masks) == len(leaves)
    for mask, leaf in zip(masks, leaves, strict=True):
        assert_mask(where, mask, leaf)
    assert same_output(masks, guarded(where, method.global_masks, leaves, per_leaf))
    expected = method.expected_global_zeros(leaves, per_leaf)
    if expected is not None:
        zeros = sum(int((~m).sum()) for m in masks)
        assert zeros == expected, f"{where}: {zeros} zeros where {expected} are promised"


@fuzz
@given(data=st.data(), leaf=tensors(odd=False))
def test_global_masks_refuse_malformed_groups(data: Any, leaf: Tensor) -> None:
    method = data.draw(st.sampled_from(GLOBAL)).configs(st)
    method = data.draw(method)
    bad = data.draw(st.sampled_from(["not a list", None, [leaf, "x"], [leaf, None]]))
    per_leaf = data.draw(st.sampled_from([None, [], [{}], "x", [{}, {}, {}]]))
    result = guarded("global_masks", method.global_masks, bad, per_leaf)
    if not isinstance(result, Raised):
        assert isinstance(bad, list) and all(isinstance(t, torch.Tensor) for t in bad)
