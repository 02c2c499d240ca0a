"""Movement: prune the weights that move towards zero during training (Sanh et al. 2020)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse.methods._base import (
    SUPPORTED_DTYPES,
    GlobalMethod,
    LeafProblem,
    MaskMethod,
    check_fraction,
    describe,
)
from funcsparse.methods._level import level_configs, set_level
from funcsparse.methods.magnitude import Magnitude

__all__ = ["Movement"]

_FLOATING = tuple(dtype for dtype in SUPPORTED_DTYPES if dtype.is_floating_point)


def _check_weight(owner: str, tensor: object, *, what: str = "the weight") -> None:
    """A TypeError unless ``tensor`` is a floating tensor of a supported dtype."""
    if not isinstance(tensor, Tensor) or tensor.dtype not in _FLOATING:
        raise TypeError(
            f"{owner}: {what} must be a float16, bfloat16, float32 or float64 tensor, got "
            f"{describe(tensor)}"
        )


_NEEDS_SCORES = (
    "Movement ranks movement scores, -sum_t w_t * g_t: use it in fs.Pruner, which "
    "accumulates them from the grads passed to update(), or pass scores= yourself"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Movement(MaskMethod):
    """Prune the weights whose movement score ``S = -sum_t w_t * g_t`` is lowest.

    ``g_t`` is the gradient of the loss at training step ``t``. A weight that moves away from
    zero (``w`` and ``-g`` of one sign) gains score and is kept; one that moves towards zero
    loses score and is pruned, whatever its size: the first-order criterion of movement
    pruning, made for fine-tuning pretrained models. ``fs.Pruner`` keeps ``S`` per leaf in
    its state and adds ``-w * g`` on every ``update(params, state, grads=grads)``; the mask
    is recomputed on the schedule's update steps. (The paper scales ``S`` by the learning
    rate; a constant factor does not change the ranking.)

    The selection is any score-reading method: per tensor by default (``Movement(0.8)``:
    the ``round(0.8 * numel)`` lowest scores of each tensor, as ``fs.Magnitude`` ranks
    them), or N:M, blocks or slices with ``select=fs.NM(n=2, m=4)``,
    ``select=fs.WeightNorm(0.5, sparse_block_shape=(1, 4))`` or
    ``select=fs.LnStructured(0.5, n=1, dim=0)``, which then rank ``S`` instead of the
    weights (scores rank as given: the lowest is pruned first). Called directly, the method
    reads ``S`` as keyword data ``scores``.

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[0.5, -2.0, 0.1, 3.0]])
        >>> g = torch.tensor([[-1.0, -1.0, 2.0, 0.5]])  # the loss wants 0.5 up, -2.0 and 3.0 down
        >>> -(w * g)  # one step's movement score
        tensor([[ 0.5000, -2.0000, -0.2000, -1.5000]])
        >>> fs.Movement(0.5)(w, scores=-(w * g))  # prune -2.0 and 3.0: they move towards 0
        tensor([[ True, False,  True, False]])
        >>> fs.Movement(select=fs.NM(n=1, m=2))(w, scores=-(w * g))
        tensor([[ True, False,  True, False]])

    Args:
        sparsity: the fraction of each tensor's entries pruned, in ``[0, 1]``; may be given
            positionally. Give it, ``count`` or ``select``.
        count: the number of entries pruned per tensor. Give it, ``sparsity`` or ``select``.
        select: a method that reads ``scores`` and sets the pattern and the level (N:M,
            blocks, slices). Default None: per tensor, as ``fs.Magnitude``.

    Raises:
        TypeError: none, or more than one, of ``sparsity``, ``count`` and ``select``; a
            ``select`` that is not a funcsparse method reading ``scores``, or a global one;
            on a call, what ``select`` raises, or no ``scores``.
        ValueError: a bad level (see ``fs.Magnitude``); on a call, what ``select`` raises.

    References:
        V. Sanh, T. Wolf, A. M. Rush. Movement Pruning: Adaptive Sparsity by Fine-Tuning.
        NeurIPS 2020. arXiv:2005.07683.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None
    select: MaskMethod | None = None

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"scores"})
    needs_data: ClassVar[bool] = True
    needs_grads: ClassVar[bool] = True
    uses_prev_mask: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.select is None:
            set_level(self)
            return
        if self.sparsity is not None or self.count is not None:
            raise TypeError(
                "Movement: give a level (sparsity or count) or a select method, not both: "
                "select sets the level, e.g. Movement(select=fs.NM(n=2, m=4))"
            )
        select = self.select
        if not isinstance(select, MaskMethod) or "scores" not in select.leaf_data:
            raise TypeError(
                f"Movement: select must be a funcsparse method that reads scores (Magnitude, "
                f"NM, WeightNorm, LnStructured), got {describe(select)}"
            )
        if isinstance(select, GlobalMethod):
            raise TypeError(
                f"Movement: select={type(select).__name__} selects across tensors; Movement "
                "selects within each tensor"
            )

    @property
    def selection(self) -> MaskMethod:
        """The method that ranks the scores: ``select``, or ``Magnitude`` at the level."""
        if self.select is not None:
            return self.select
        return Magnitude(self.sparsity, count=self.count)

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Per-tensor levels, and N:M / block / slice selections."""
        from funcsparse.methods.nm import NM
        from funcsparse.methods.structured import LnStructured
        from funcsparse.methods.weight_norm import WeightNorm

        selections = st.one_of(
            NM.configs(st), WeightNorm.configs(st), LnStructured.configs(st)
        ).map(lambda select: cls(select=select))
        return st.one_of(level_configs(st, cls), selections)

    @classmethod
    def example_data(cls, st: Any, tensor: Tensor) -> Any:
        """Signed movement scores of ``tensor``'s shape (often tied)."""
        if not isinstance(tensor, Tensor):
            return st.just({})
        values = st.lists(
            st.one_of(st.sampled_from([-1.0, 0.0, 1.0]), st.floats(-1e3, 1e3)),
            min_size=tensor.numel(),
            max_size=tensor.numel(),
        )
        return values.map(
            lambda v: {"scores": torch.tensor(v, dtype=tensor.dtype).reshape(tensor.shape)}
        )

    def scaled(self, fraction: float) -> MaskMethod:
        """The level scaled: ``select.scaled(fraction)``, or the per-tensor level."""
        if self.select is None:
            return super().scaled(fraction)
        fraction = check_fraction("Movement.scaled", fraction)
        return dataclasses.replace(self, select=self.select.scaled(fraction))

    def init_state(self, tensor: Tensor) -> Tensor:
        """``S = 0``, in at least float32 (low-precision weights accumulate in float32).

        Raises:
            TypeError: ``tensor`` is not a floating tensor of a supported dtype.
        """
        _check_weight("Movement.init_state", tensor)
        dtype = torch.promote_types(tensor.dtype, torch.float32)
        return torch.zeros(tensor.shape, dtype=dtype, device=tensor.device)

    def next_state(self, state: Tensor | None, tensor: Tensor, grad: Tensor) -> Tensor:
        """``S - w * g``: a new tensor (the state passed in is not changed).

        Raises:
            TypeError: ``tensor`` or ``grad`` is not a floating tensor of a supported dtype.
        """
        _check_weight("Movement.next_state", tensor)
        _check_weight("Movement.next_state", grad, what="grad")
        if state is None:
            state = self.init_state(tensor)
        return torch.addcmul(state, tensor.detach(), grad.detach(), value=-1)

    def state_data(self, state: Tensor | None) -> dict[str, Any]:
        """The accumulated ``S`` as the ``scores`` the selection ranks."""
        return {} if state is None else {"scores": state}

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if data.get("scores") is None:
            return LeafProblem(ValueError, "no scores", _NEEDS_SCORES)
        return self.selection.check_leaf(tensor, **data)

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        return self.selection(tensor, **data)

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The selection's promise."""
        return self.selection.expected_zeros(tensor, **data)

    def structure_problem(self, tensor: Tensor, mask: Tensor, **data: Any) -> str | None:
        """The selection's pattern."""
        return self.selection.structure_problem(tensor, mask, **data)
