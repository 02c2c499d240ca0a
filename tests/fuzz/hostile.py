"""Hostile inputs for the fuzz suite, and the checks every public entry must pass on them.

The strategies draw what a careless or adversarial caller passes: wrong types anywhere,
meta tensors, float8 / complex / integer dtypes, tensors on another device (the meta device
stands in for "another device" on a CPU-only machine), 0-size and 0-d leaves, huge levels
and counts (``10**400``), huge block shapes, non-contiguous and stride-0 expanded tensors,
``requires_grad`` leaves, nested pytrees with tuples, lists and None.

:func:`guarded` runs one call and states the properties that hold for every entry: only
TypeError/ValueError escape (with a short message), nothing passed in changes (tensor values,
``_version`` counters, containers, modules' state, the global RNG), whether it raised or not,
and no call allocates far beyond its inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import resource
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor, nn

#: Examples per fuzz property under each profile: CI stays fast (the whole suite adds well
#: under a minute on 2 cores), ``HYPOTHESIS_PROFILE=fuzz`` runs at least 500 (the long
#: profile, a run of the whole suite, 200);
#: ``FUZZ_EXAMPLES=N`` sets another number.
_EXAMPLES = {"ci": 12, "fuzz": 500, "long": 200}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", _EXAMPLES.get(PROFILE, 12)))

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

HUGE = 10**400
#: The longest message an error may carry (the issue: a bad batch printed 9,316 characters).
MAX_MESSAGE = 1500
#: How much a call on these small inputs may raise the process's peak memory.
MAX_GROWTH_KB = 768 * 1024

FLOAT8 = tuple(
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
)
FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
ODD_DTYPES = (*FLOAT8, torch.complex64, torch.complex128, torch.int64, torch.int8, torch.bool)


# -- values ----------------------------------------------------------------------------------

#: Wrong values for any argument: types, huge and non-finite numbers, containers.
junk = st.sampled_from(
    [
        None,
        "x",
        "",
        b"0",
        -1,
        0,
        1,
        2,
        True,
        1.5,
        -0.5,
        math.nan,
        math.inf,
        -math.inf,
        HUGE,
        -HUGE,
        2**63,
        2**64 + 1,
        1e308,
        (),
        (HUGE, 1),
        (1, 0),
        (10**6, 10**6),
        (2**40, 2**40),
        [1, 2],
        {"a": 1},
        {1, 2},
        object(),
        torch.tensor(0.5),
        torch.zeros(2, 2),
        nn.Linear(2, 2),
        complex(1, 1),
    ]
)

#: Levels and counts a caller might pass: valid, edge and hostile.
levels = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 0, 1, 3, -1, 1.5, math.nan, math.inf, HUGE, 2**63, "0.5"]),
    st.floats(0, 1),
)


# -- tensors ---------------------------------------------------------------------------------


def _values(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    n = math.prod(shape)
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["normal", "ties", "special"]))
    values = torch.randn(n, generator=generator, dtype=torch.float64)
    if kind == "ties":
        values = torch.randint(-2, 3, (n,), generator=generator).double() / 2
    elif kind == "special" and n:
        where = torch.randint(0, n, (max(1, n // 4),), generator=generator)
        values[where] = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0]).double()[
            torch.randint(0, 5, where.shape, generator=generator)
        ]
    if dtype.is_complex:
        return torch.complex(values, values.flip(0)).to(dtype).reshape(shape)
    if dtype == torch.bool:
        return (values > 0).reshape(shape)
    if not dtype.is_floating_point:
        return values.nan_to_num(0.0, 3.0, -3.0).round().to(dtype).reshape(shape)
    return values.to(dtype).reshape(shape)


@st.composite
def shapes(draw: st.DrawFn, /, *, min_dims: int = 0, max_dims: int = 4) -> tuple[int, ...]:
    """Small shapes, 0-d to 4-D, with 0-size sides now and then."""
    ndim = draw(st.integers(min_dims, max_dims))
    side = st.one_of(st.integers(1, 6), st.just(0), st.integers(7, 16))
    return tuple(draw(side) for _ in range(ndim))


@st.composite
def tensors(
    draw: st.DrawFn,
    /,
    shape: tuple[int, ...] | None = None,
    *,
    dtypes: tuple[torch.dtype, ...] = FLOATS,
    odd: bool = True,
) -> Tensor:
    """Tensors of ``shape`` (drawn when None): plain, or hostile in layout, dtype or device.

    Hostile: non-contiguous (transposed, strided views), stride-0 expanded, requires_grad,
    a Parameter, and with ``odd``: float8 / complex / int / bool dtypes and meta tensors.
    """
    size = draw(shapes()) if shape is None else tuple(shape)
    kinds = ["plain", "plain", "transposed", "strided", "expanded", "grad", "parameter"]
    if odd:
        kinds += ["dtype", "meta"]
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(dtypes))
    if kind == "dtype":
        dtype = draw(st.sampled_from(ODD_DTYPES))
    if kind == "meta":
        return torch.empty(size, dtype=dtype, device="meta")
    if kind == "transposed" and len(size) >= 2:
        flipped = (*size[:-2], size[-1], size[-2])
        return _values(draw, flipped, dtype).transpose(-1, -2)
    if kind == "strided" and len(size) >= 1:
        wide = (*size[:-1], size[-1] * 2)
        return _values(draw, wide, dtype)[..., ::2]
    if kind == "expanded":
        one = tuple(1 if i == 0 else s for i, s in enumerate(size)) if size else ()
        return _values(draw, one, dtype).expand(size)
    if kind in ("grad", "parameter") and dtype.is_floating_point:
        leaf = _values(draw, size, dtype).requires_grad_(True)
        return nn.Parameter(leaf) if kind == "parameter" else leaf
    return _values(draw, size, dtype)


def anything_like(tensor_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``tensor_strategy``, sometimes junk in its place."""
    return st.one_of(tensor_strategy, tensor_strategy, tensor_strategy, junk)


@st.composite
def data_for(draw: st.DrawFn, /, method: Any, leaf: Any) -> dict[str, Any]:
    """Keyword data for ``method`` on ``leaf``: its own example data, or hostile data."""
    data: dict[str, Any] = {}
    if isinstance(leaf, Tensor) and leaf.device.type != "meta" and draw(st.booleans()):
        try:
            data = dict(draw(type(method).example_data(st, leaf.detach())))
        except Exception:  # example_data needs a leaf the method takes
            data = {}
    keys = sorted(type(method).leaf_data | {"prev_mask"})
    for key in draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)):
        data[key] = draw(_datum(key, leaf))
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.sampled_from(["grads", "bogus", "input_norms"]))] = torch.zeros(1)
    return data


@st.composite
def _datum(draw: st.DrawFn, /, key: str, leaf: Any) -> Any:
    shape = tuple(leaf.shape) if isinstance(leaf, Tensor) else (2, 2)
    if key == "input_norms" and len(shape) >= 2:
        shape = (shape[1],)
    kind = draw(st.sampled_from(["ok", "ok", "meta", "shape", "dtype", "junk"]))
    if key == "generator":
        return torch.Generator().manual_seed(3) if kind == "ok" else draw(junk)
    dtype = torch.bool if key == "prev_mask" else torch.float32
    if kind == "junk":
        return draw(junk)
    if kind == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if kind == "shape":
        shape = (*shape, 2)
    if kind == "dtype":
        dtype = draw(st.sampled_from((*ODD_DTYPES, torch.float16)))
    value = draw(tensors(shape, dtypes=(dtype,), odd=False)).detach()
    if key == "input_norms" and value.dtype in FLOATS:
        value = value.abs().nan_to_num(1.0, 1.0, 1.0)
    return value


# -- pytrees and rules -----------------------------------------------------------------------


@st.composite
def pytrees(
    draw: st.DrawFn, /, leaves: st.SearchStrategy[Any] | None = None, *, max_leaves: int = 4
) -> Any:
    """Nested dicts, lists and tuples with None entries, of (mostly) tensors."""
    leaf = leaves if leaves is not None else anything_like(tensors())
    children = st.recursive(
        st.one_of(leaf, st.none()),
        lambda inner: st.one_of(
            st.dictionaries(st.sampled_from(["a", "b", "w", "0", "x.y"]), inner, max_size=3),
            st.lists(inner, max_size=3),
            st.lists(inner, max_size=3).map(tuple),
        ),
        max_leaves=max_leaves,
    )
    return draw(
        st.dictionaries(st.sampled_from(["a", "b", "c", "w"]), children, min_size=1, max_size=3)
    )


#: Rule keys: exact paths, globs that overlap or match nothing, broken patterns, non-str.
rule_keys = st.one_of(
    st.sampled_from(["a", "b", "a.0", "a.w", "*", "**", "a.*", "*.w", "**.w", "[", "[!a]", "?"]),
    st.sampled_from([1, None, ("a",)]),
)


# -- snapshots: nothing passed in may change ------------------------------------------------


@dataclasses.dataclass
class _Tensor:
    version: int | None
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    bits: Tensor | None


def _bits(tensor: Tensor) -> Tensor | None:
    if tensor.device.type == "meta":
        return None
    flat = tensor.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    if flat.numel() == 0:
        return flat
    if flat.dtype in FLOAT8 or flat.dtype.is_complex or flat.dtype == torch.bool:
        return flat.clone()
    return flat.view(torch.uint8).clone()


def snapshot(value: Any, _depth: int = 0) -> Any:
    """A deep record of ``value``: tensors' bytes and version counters, containers' contents."""
    if _depth > 40:
        return ("deep", id(value))
    if isinstance(value, Tensor):
        try:
            version: int | None = value._version
        except Exception:
            version = None
        stride = tuple(value.stride()) if value.layout == torch.strided else ()
        return _Tensor(
            version,
            tuple(value.shape),
            stride,
            value.dtype,
            value.device,
            value.requires_grad,
            _bits(value),
        )
    if isinstance(value, nn.Module):
        return (
            "module",
            type(value),
            value.training,
            [(k, snapshot(v, _depth + 1)) for k, v in value.state_dict(keep_vars=True).items()],
            [name for name, _ in value.named_modules()],
        )
    if isinstance(value, Mapping):
        return (type(value), [(k, snapshot(v, _depth + 1)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [snapshot(v, _depth + 1) for v in value])
    if isinstance(value, set):
        return (type(value), sorted(map(repr, value)))
    if isinstance(value, torch.Generator):
        return ("generator", value.get_state().clone())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ("dataclass", type(value), repr(value))
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if type(value).__eq__ is object.__eq__:
        return ("opaque", id(value))
    try:
        return ("value", copy.deepcopy(value))
    except Exception:
        return ("opaque", id(value))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, _Tensor) and isinstance(b, _Tensor):
        head = (a.version, a.shape, a.stride, a.dtype, a.device, a.requires_grad)
        if head != (b.version, b.shape, b.stride, b.dtype, b.device, b.requires_grad):
            return False
        if a.bits is None or b.bits is None:
            return a.bits is None and b.bits is None
        if a.bits.dtype in FLOAT8:
            return torch.equal(a.bits.view(torch.uint8), b.bits.view(torch.uint8))
        if a.bits.dtype.is_complex:
            return torch.equal(torch.view_as_real(a.bits).view(-1).view(torch.uint8),
                               torch.view_as_real(b.bits).view(-1).view(torch.uint8))  # fmt: skip
        return torch.equal(a.bits, b.bits)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return a is b


@dataclasses.dataclass
class Raised:
    """What a guarded call raised (a TypeError or ValueError)."""

    error: Exception


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def guarded(
    where: str, call: Callable[..., Any], *args: Any, mutates: bool = False, **kwargs: Any
) -> Any:
    """``call(*args, **kwargs)``, checking the properties every public entry promises.

    Returns the result, or a :class:`Raised` when the call raised TypeError/ValueError.
    ``mutates``: the call changes its arguments by contract when it returns (a stateful
    adapter method, ``apply_masks_``); they must still be unchanged when it raises.

    Raises:
        AssertionError: another exception escaped, the message is long, an input (or the
            global RNG) changed, or the call raised the process's peak memory by more than
            :data:`MAX_GROWTH_KB`.
    """
    before = snapshot((args, kwargs))
    rng = torch.get_rng_state()
    py_rng = random.getstate()
    peak = _peak_kb()
    try:
        result: Any = call(*args, **kwargs)
    except (TypeError, ValueError) as err:
        message = str(err)
        assert message, f"{where}: {type(err).__name__} without a message"
        assert len(message) <= MAX_MESSAGE, (
            f"{where}: a {len(message)}-character message: {message[:300]}..."
        )
        result = Raised(err)
    except Exception as err:  # the property: nothing else escapes
        raise AssertionError(
            f"{where} raised {type(err).__name__}: {str(err)[:500]}; only TypeError/ValueError "
            "may escape"
        ) from err
    growth = _peak_kb() - peak
    assert growth <= MAX_GROWTH_KB, f"{where} raised the peak memory by {growth // 1024} MiB"
    outcome = "raised" if isinstance(result, Raised) else "returned"
    if isinstance(result, Raised) or not mutates:
        assert _same(before, snapshot((args, kwargs))), f"{where} changed its inputs (it {outcome})"
    assert torch.equal(rng, torch.get_rng_state()), f"{where} advanced the global torch RNG"
    assert py_rng == random.getstate(), f"{where} advanced Python's global RNG"
    return result


def assert_mask(where: str, mask: Any, leaf: Tensor) -> None:
    """A bool tensor of the leaf's shape on the leaf's device."""
    assert isinstance(mask, Tensor), f"{where}: a {type(mask).__name__}, not a mask"
    assert mask.dtype == torch.bool, f"{where}: a mask of dtype {mask.dtype}"
    assert mask.shape == leaf.shape, f"{where}: mask shape {mask.shape} for leaf {leaf.shape}"
    assert mask.device == leaf.device, f"{where}: mask on {mask.device}, leaf on {leaf.device}"


def same_output(a: Any, b: Any) -> bool:
    """Two results of the same call are equal (tensors bit for bit, pytrees entry by entry)."""
    if isinstance(a, Raised) and isinstance(b, Raised):
        return type(a.error) is type(b.error) and str(a.error) == str(b.error)
    return _same(snapshot(a), snapshot(b))
