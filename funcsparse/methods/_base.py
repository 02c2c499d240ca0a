"""What every pruning method is: a frozen config that maps one tensor to a bool mask."""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from funcsparse._errors import describe, require_int, require_real, short_repr

__all__ = [
    "SUPPORTED_DTYPES",
    "GlobalMethod",
    "LeafProblem",
    "LeafResult",
    "MaskMethod",
    "check_fraction",
    "data_problem",
    "describe",
    "ranking",
    "registered_methods",
    "require_int",
    "require_real",
]

_REGISTRY: list[type[MaskMethod]] = []


def registered_methods() -> tuple[type[MaskMethod], ...]:
    """Every concrete method class that funcsparse ships, in definition order.

    ``funcsparse.testing``'s shared invariant suite runs on each of them, so a new method
    is covered (or the suite fails for lack of its ``configs``) as soon as it exists.
    """
    return tuple(cls for cls in _REGISTRY if not inspect.isabstract(cls))


class LeafProblem(NamedTuple):
    """Why a method cannot handle a leaf: the exception to raise, what it got, what it needs."""

    error: type[Exception]
    got: str
    need: str


class LeafResult(NamedTuple):
    """What :meth:`MaskMethod.prune_leaf` returns for one tensor.

    ``mask``: the ``torch.bool`` keep-mask; ``weight``: the pruned tensor (zero where the
    mask is False; a method that updates weights, ``fs.SparseGPT``, changes the kept entries
    too), of the input's shape, dtype and device; ``info``: numbers the method reports
    (``{"damp": ...}`` for SparseGPT; empty for a method that only masks).
    """

    mask: Tensor
    weight: Tensor
    info: dict[str, float]


def ranking(tensor: Tensor, data: dict[str, Any]) -> Tensor:
    """What an entry-wise method ranks: ``scores`` as given (signed), else ``|tensor|``.

    The lowest value is pruned first, so a score of -3 goes before a score of 1.
    """
    scores = data.get("scores")
    return tensor.abs() if scores is None else scores


def check_fraction(owner: str, fraction: object) -> float:
    """``fraction`` as a float in [0, 1] (what ``scaled`` takes), or a TypeError/ValueError.

    Examples:
        >>> check_fraction("NM.scaled", 0.5)
        0.5
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(f"{owner}: fraction must be a real number, got {describe(fraction)}")
    value: Any = fraction
    if not 0.0 <= value <= 1.0:  # NaN and 10**400 fail too
        raise ValueError(f"{owner}: fraction must be in [0, 1], got {short_repr(fraction)}")
    return float(fraction)


#: The dtypes a leaf (or a data tensor) may have; which of them a method takes is its own
#: check (most need floating point).
SUPPORTED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
)
_SUPPORTED_SHOWN = "float16, bfloat16, float32, float64 (bool and int where a method takes them)"


def _tensor_kind_problem(owner: str, what: str, tensor: Tensor) -> LeafProblem | None:
    """A layout or dtype that no method handles (sparse, float8, complex, quantized)."""
    if tensor.layout != torch.strided:
        return LeafProblem(
            TypeError,
            f"{what} with layout {tensor.layout}",
            f"{owner} needs dense (strided) tensors; convert with .to_dense()",
        )
    if tensor.dtype not in SUPPORTED_DTYPES:
        return LeafProblem(
            TypeError,
            f"{what} of dtype {tensor.dtype}",
            f"{tensor.dtype} is not supported; the supported dtypes are {_SUPPORTED_SHOWN}",
        )
    return None


def data_problem(tensor: object, data: Mapping[str, Any]) -> LeafProblem | None:
    """Why ``tensor`` or one of its keyword ``data`` tensors holds no values (meta), or None.

    Meta tensors carry a shape and a dtype but no data, so no mask can be computed from
    them: a call refuses them with a ValueError.

    Examples:
        >>> import torch
        >>> data_problem(torch.zeros(2, device="meta"), {}).need
        'meta tensors have no data; move it to a real device (cpu, cuda, ...)'
        >>> data_problem(torch.zeros(2), {"scores": torch.zeros(2)}) is None
        True
    """
    named: list[tuple[str, object]] = [("the tensor", tensor), *data.items()]
    for what, value in named:
        if isinstance(value, Tensor) and value.device.type == "meta":
            return LeafProblem(
                ValueError,
                f"{what} on the meta device",
                f"meta tensors have no data; move {'it' if what == 'the tensor' else what} "
                "to a real device (cpu, cuda, ...)",
            )
    return None


# Names of other libraries (torch.ao, nn.utils.prune) for the level, and funcsparse's.
_RENAMED = {
    "amount": "sparsity (a fraction in [0, 1]) or count (a number of entries)",
    "sparsity_level": "sparsity",
}


@functools.cache
def _init_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls.__init__`` (``self`` first); computed once per class (every
    construction binds its arguments to it, ``for_leaf`` copies included)."""
    init = next(vars(klass)["__init__"] for klass in cls.__mro__ if "__init__" in vars(klass))
    return inspect.signature(init)


def usage(cls: type) -> str:
    """How to call the method class ``cls``: its name and fields, as its signature shows them."""
    shown = []
    star = False
    for param in list(_init_signature(cls).parameters.values())[1:]:
        if param.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            shown.append("*")
            star = True
        if param.default is inspect.Parameter.empty:
            shown.append(param.name)
        else:
            shown.append(f"{param.name}={param.default!r}")
    return f"{cls.__name__}({', '.join(shown)})"


class _MethodMeta(abc.ABCMeta):
    """Turns a wrong constructor call into a TypeError that says how to call the method."""

    @property
    def __signature__(cls) -> inspect.Signature:
        """The fields, as ``__init__`` takes them (so ``inspect.signature`` and help show
        them, not this metaclass's ``__call__``)."""
        signature = _init_signature(cls)
        return signature.replace(parameters=list(signature.parameters.values())[1:])

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            _init_signature(cls).bind(None, *args, **kwargs)
        except TypeError as err:
            hints = [
                f"funcsparse's {old!r} is {new}" for old, new in _RENAMED.items() if old in kwargs
            ]
            hint = f" ({'; '.join(hints)})" if hints else ""
            raise TypeError(f"{cls.__name__}: {err}{hint}; call it as {usage(cls)}") from None
        return super().__call__(*args, **kwargs)


class MaskMethod(abc.ABC, metaclass=_MethodMeta):
    """Base of every funcsparse method.

    A method is a frozen, keyword-only dataclass that validates itself on construction.
    Calling it on one tensor returns a ``torch.bool`` mask of the tensor's shape (``True``
    keeps a weight, ``False`` prunes it); nothing is mutated. ``fs.compute_masks`` calls
    :meth:`leaf_problem` on every matched leaf before computing any mask, so a bad leaf
    is reported before any work is done.

    ``vmappable`` says whether ``torch.func.vmap`` over a call gives every member's own mask;
    ``compute_masks(..., batch_dims=...)`` loops over the members of methods that say no.
    """

    vmappable: ClassVar[bool] = True
    #: The config field holding the level, a fraction whose increase never un-prunes a
    #: weight (None: the method has no level). A method that also takes ``count`` (a
    #: number to prune) uses that field instead whenever it is given.
    level_field: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("funcsparse.") and not cls.__name__.startswith("_"):
            _REGISTRY.append(cls)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """A hypothesis strategy of valid configs of this method.

        ``st`` is ``hypothesis.strategies``, passed in by ``funcsparse.testing`` so that the
        library never imports hypothesis itself. Every method provides one next to its code.
        """
        raise NotImplementedError(f"{cls.__name__}.configs(st) is not implemented")

    @classmethod
    def example_data(cls, st: Any, tensor: Tensor) -> Any:
        """A hypothesis strategy of the keyword data a call on ``tensor`` needs (a dict).

        Default: no data. A method that reads statistics (``input_norms``) or gradients
        draws them here, so the shared invariant suite can call it.
        """
        return st.just({})

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The exact number of zeros promised for ``tensor``'s mask, or None (no promise)."""
        return None

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """Why ``mask`` breaks this method's pattern (blocks, N:M, band) for ``tensor``."""
        return None

    #: Per-leaf keyword data the method reads besides the tensor (e.g. ``"scores"``).
    leaf_data: ClassVar[frozenset[str]] = frozenset()
    #: Whether a call needs keyword data (statistics, gradients): strategies that draw any
    #: registered method leave such methods out unless asked for them by name.
    needs_data: ClassVar[bool] = False
    #: Whether the method ranks a ``prev_mask``'s pruned entries itself (so that the level
    #: is the total target); when False, its mask is intersected with ``prev_mask``.
    uses_prev_mask: ClassVar[bool] = False
    #: Whether a higher level never keeps an entry that a lower level prunes (on the same
    #: tensor and data). True for every method that ranks fixed scores; False for a method
    #: whose scores depend on what it pruned before (``fs.SparseGPT`` updates the weights
    #: as it goes), so that ``funcsparse.testing`` checks nesting only where it is promised.
    nested_levels: ClassVar[bool] = True
    #: Whether :meth:`prune_leaf` changes the kept weights too (``fs.SparseGPT``); ``fs.prune``
    #: returns such a method's weights, and any other method's tensor with its pruned
    #: entries zeroed.
    updates_weights: ClassVar[bool] = False

    def scaled(self, fraction: float) -> MaskMethod:
        """This method at ``fraction`` of its level, as a schedule asks for it.

        ``sparsity * fraction`` (or ``round(count * fraction)`` where a count is given);
        ``fraction=1`` gives the method itself. A higher fraction never un-prunes a weight.

        Raises:
            TypeError: the method has no level to scale.
            ValueError: ``fraction`` is not in [0, 1].
        """
        name = type(self).__name__
        fraction = check_fraction(f"{name}.scaled", fraction)
        if fraction == 1.0:
            return self
        count = getattr(self, "count", None)
        if count is not None:
            try:
                scaled_count = round(count * fraction)
            except OverflowError:  # a count beyond floats: scale it exactly
                scaled_count = round(Fraction(count) * Fraction(fraction))
            return dataclasses.replace(self, count=scaled_count)  # type: ignore[type-var]
        field = self.level_field
        if field is None:
            raise TypeError(
                f"{name} has no level that a schedule can scale; prune it without a schedule"
            )
        scaled = float(getattr(self, field)) * fraction
        return dataclasses.replace(self, **{field: scaled})  # type: ignore[type-var]

    # -- state carried between pruning steps (fs.Pruner); stateless by default -----------

    #: Whether the method accumulates state from gradients (``fs.Pruner.update(grads=)``).
    needs_grads: ClassVar[bool] = False

    def init_state(self, tensor: Tensor) -> Tensor | None:
        """The method's state for ``tensor`` before the first step (None: stateless)."""
        return None

    def next_state(self, state: Tensor | None, tensor: Tensor, grad: Tensor) -> Tensor | None:
        """The state after one training step with ``tensor``'s gradient ``grad``."""
        return state

    def state_data(self, state: Tensor | None) -> dict[str, Any]:
        """The keyword data a call reads from the state (e.g. ``{"scores": state}``)."""
        return {}

    #: Whether the method drops and regrows weights during training (``fs.SET``,
    #: ``fs.RigL``). ``fs.Pruner`` passes such a method the mask it trains with as keyword
    #: data ``current_mask`` (never as ``prev_mask``: the kept set may change, not only
    #: shrink) together with ``step``, at the steps where :meth:`updates_at` is True.
    regrows: ClassVar[bool] = False

    def updates_at(self, step: int) -> bool:
        """Whether a regrowing method (``regrows``) changes its mask at training ``step``.

        Default False: a method that does not regrow changes its mask only when a
        schedule's level changes.
        """
        return False

    def for_leaf(self, path: str) -> MaskMethod:
        """The method as applied to the leaf at ``path`` (default: itself).

        ``fs.compute_masks`` calls it once per matched leaf; a method with per-leaf state
        (a random stream) derives it here, purely from its config and the path.
        """
        return self

    def __call__(self, tensor: Tensor, /, **data: Any) -> Tensor:
        problem = self.check_call(tensor, **data)
        if problem is not None:
            name = type(self).__name__
            raise problem.error(f"{name}: got {problem.got}; {problem.need}")
        return self._finish(tensor, data, lambda t, d: self._mask(t, **d))

    def prune_leaf(self, tensor: Tensor, /, **data: Any) -> LeafResult:
        """The mask of ``tensor``, the pruned tensor and what the method reports.

        The default (every method that only masks): the call's mask, ``tensor`` with its
        pruned entries set to +0.0 (dtype and device kept), and no info. A method that
        updates the kept weights (``updates_weights``) overrides it; ``fs.prune`` calls it.

        Examples:
            >>> import torch, funcsparse as fs
            >>> fs.Magnitude(0.5).prune_leaf(torch.tensor([[1.0, -3.0], [2.0, -0.5]])).weight
            tensor([[ 0., -3.],
                    [ 2.,  0.]])

        Raises:
            TypeError, ValueError: as a call of the method on ``tensor`` does.
        """
        mask = self(tensor, **data)
        zero = torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        return LeafResult(mask, torch.where(mask, tensor, zero), {})

    def check_call(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        """:meth:`check_leaf`, and that ``tensor`` and its data hold values (not meta).

        A call goes through this; ``fs.compute_masks`` checks shapes on meta stand-ins with
        :meth:`check_leaf` and the real leaves with :func:`data_problem`.
        """
        return data_problem(tensor, data) or self.check_leaf(tensor, **data)

    def check_leaf(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        """Why this method cannot mask ``tensor`` with ``data``, or None when it can.

        The checks every method shares come first: ``tensor`` is a strided torch.Tensor of a
        supported dtype (not float8, complex or quantized), its keyword data is known to the
        method, and every data tensor has a supported dtype and sits on ``tensor``'s device.
        Then ``prev_mask`` and ``scores`` must have the tensor's shape (and be bool /
        floating), and last the method's own :meth:`leaf_problem`. Shapes and dtypes only:
        a meta tensor passes here (:meth:`check_call` refuses it).
        """
        name = type(self).__name__
        if not isinstance(tensor, Tensor):
            try:  # the method's own words where it has them ("needs floating-point weights")
                own = self.leaf_problem(tensor)
            except Exception:
                own = None
            if own is not None and own.error is TypeError:
                return own
            return LeafProblem(TypeError, describe(tensor), f"{name} needs a torch.Tensor")
        problem = _tensor_kind_problem(name, "the tensor", tensor)
        if problem is not None:
            return problem
        unknown = sorted(set(data) - self.leaf_data - {"prev_mask"})
        if unknown:
            takes = sorted(self.leaf_data | {"prev_mask"})
            return LeafProblem(
                TypeError, f"keyword data {short_repr(unknown)}", f"{name} takes {takes}"
            )
        for key, value in data.items():
            if not isinstance(value, Tensor):
                if value is not None and key in ("prev_mask", "scores"):
                    return LeafProblem(
                        TypeError, f"{key}={describe(value)}", f"{key} must be a tensor"
                    )
                continue
            problem = _tensor_kind_problem(name, key, value)
            if problem is not None:
                return problem
            if value.device != tensor.device:
                return LeafProblem(
                    ValueError,
                    f"{key} on {value.device} for a tensor on {tensor.device}",
                    f"{key} must be on the tensor's device",
                )
            if key not in ("prev_mask", "scores"):
                continue
            if value.shape != tensor.shape:
                return LeafProblem(
                    ValueError,
                    f"{key} of shape {short_repr(tuple(value.shape))} for a tensor of shape "
                    f"{short_repr(tuple(tensor.shape))}",
                    f"{key} must have the tensor's shape",
                )
            if key == "prev_mask" and value.dtype != torch.bool:
                return LeafProblem(
                    TypeError, f"prev_mask of dtype {value.dtype}", "masks are torch.bool"
                )
            if key == "scores" and not value.is_floating_point():
                return LeafProblem(
                    TypeError, f"scores of dtype {value.dtype}", f"{name} needs floating scores"
                )
        return self.leaf_problem(tensor, **data)

    def _finish(
        self,
        tensor: Tensor,
        data: dict[str, Any],
        compute: Callable[[Tensor, dict[str, Any]], Tensor],
    ) -> Tensor:
        """Detach everything, run ``compute``, and apply ``prev_mask`` if the method does not."""
        data = {
            k: v.detach() if isinstance(v, Tensor) else v for k, v in data.items() if v is not None
        }
        prev_mask = data.get("prev_mask") if not self.uses_prev_mask else None
        if prev_mask is not None:
            del data["prev_mask"]
        mask = compute(tensor.detach(), data)
        return mask if prev_mask is None else mask & prev_mask

    @abc.abstractmethod
    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        """Why this method cannot mask ``tensor`` (given its keyword data), or None."""

    @abc.abstractmethod
    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        """The mask of a detached tensor that :meth:`check_leaf` accepted."""


class GlobalMethod(MaskMethod):
    """A method that selects across every leaf its rule matches, with one threshold.

    ``fs.compute_masks`` gives such a method all the leaves of its rule at once (in the
    params' flattening order); called on one tensor it selects within that tensor alone.
    """

    vmappable: ClassVar[bool] = False

    def group_problem(self, tensors: Sequence[Tensor]) -> LeafProblem | None:
        """Why this method cannot select across ``tensors`` together, or None.

        The base check: every tensor on one device (one threshold is found over all).
        """
        devices = sorted({str(t.device) for t in tensors})
        if len(devices) > 1:
            return LeafProblem(
                ValueError, f"tensors on devices {devices}", "a global selection needs one device"
            )
        return None

    def global_masks(
        self, tensors: Sequence[Tensor], data: Sequence[dict[str, Any]] | None = None
    ) -> list[Tensor]:
        """The masks of ``tensors`` selected together (``data``: keyword data per tensor)."""
        name = type(self).__name__
        if isinstance(tensors, (str, bytes, Tensor)) or not isinstance(tensors, Sequence):
            raise TypeError(f"{name}.global_masks: tensors must be a list of tensors, got "
                            f"{describe(tensors)}")  # fmt: skip
        for i, tensor in enumerate(tensors):
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"{name}: tensor {i}: got {describe(tensor)}; {name} needs a torch.Tensor"
                )
        if data is None:
            data = [{} for _ in tensors]
        if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
            raise TypeError(
                f"{name}.global_masks: data must be a list of dicts, got {describe(data)}"
            )
        data = list(data)
        if len(data) != len(tensors) or not all(isinstance(d, Mapping) for d in data):
            raise ValueError(
                f"{name}.global_masks: data must be one dict per tensor ({len(tensors)}), got "
                f"{describe(data)}"
            )
        group = self.group_problem(tensors)
        if group is not None:
            raise group.error(f"{name}: got {group.got}; {group.need}")
        for i, (tensor, leaf_data) in enumerate(zip(tensors, data, strict=True)):
            problem = self.check_call(tensor, **leaf_data)
            if problem is not None:
                name = type(self).__name__
                raise problem.error(f"{name}: tensor {i}: got {problem.got}; {problem.need}")
        cleaned: list[dict[str, Any]] = []
        prev_masks: list[Tensor | None] = []
        for leaf_data in data:
            kept = {
                k: v.detach() if isinstance(v, Tensor) else v
                for k, v in leaf_data.items()
                if v is not None
            }
            prev_masks.append(None if self.uses_prev_mask else kept.pop("prev_mask", None))
            cleaned.append(kept)
        masks = self._global_masks([t.detach() for t in tensors], cleaned)
        return [m if p is None else m & p for m, p in zip(masks, prev_masks, strict=True)]

    def __call__(self, tensor: Tensor, /, **data: Any) -> Tensor:
        problem = self.check_call(tensor, **data)
        if problem is not None:
            raise problem.error(f"{type(self).__name__}: got {problem.got}; {problem.need}")
        return self.global_masks([tensor], [data])[0]

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        return self._global_masks([tensor], [data])[0]

    def expected_global_zeros(
        self, tensors: Sequence[Tensor], data: Sequence[dict[str, Any]]
    ) -> int | None:
        """The exact number of zeros promised across ``tensors`` (None: no promise)."""
        return None

    @abc.abstractmethod
    def _global_masks(self, tensors: list[Tensor], data: list[dict[str, Any]]) -> list[Tensor]:
        """Masks of detached tensors that :meth:`check_leaf` accepted, selected together."""
