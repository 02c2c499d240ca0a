"""SET and RigL: dynamic sparse training (drop and grow at a constant, exact count per leaf).

Both methods keep a leaf at exactly the level's count of zeros for the whole run. A call
without a current mask makes the initial mask (random at the exact count, as ``fs.Random``);
a call with ``current_mask=`` and ``step=`` at one of the method's update steps drops the
smallest-magnitude kept weights and grows as many at pruned positions: at random (SET) or
where the dense gradient is largest (RigL). ``fs.Pruner`` drives them (see its docstring).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse._select import keep_all_but_lowest
from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int, require_real
from funcsparse.methods._level import (
    count_problem,
    count_to_prune,
    level_configs,
    set_level,
    total_zeros,
)
from funcsparse.methods._seeds import SEED_LIMIT, leaf_seed
from funcsparse.methods.random import Random

__all__ = ["SET", "RigL"]


def _check_fields(method: Any) -> None:
    """Validate the fields SET and RigL share (the level, drop_fraction, every, end_step,
    seed) and store them normalised."""
    name = type(method).__name__
    set_level(method)
    fraction = require_real(name, "drop_fraction", method.drop_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"{name}: drop_fraction={short_repr(method.drop_fraction)} must be in [0, 1]"
        )
    object.__setattr__(method, "drop_fraction", float(fraction))
    every = require_int(name, "every", method.every)
    if every <= 0:
        raise ValueError(f"{name}: every={short_repr(every)} must be a positive int (steps)")
    if method.end_step is not None:
        end = require_int(name, "end_step", method.end_step)
        if end < 0:
            raise ValueError(f"{name}: end_step={short_repr(end)} must be >= 0 or None")
    seed = require_int(name, "seed", method.seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name}: seed={short_repr(seed)} must be in [0, 2**64)")


class _Dynamic(MaskMethod):
    """What SET and RigL share: the level, the update steps, the drop, the checks.

    Not registered (the name starts with an underscore); subclasses give the growth.
    """

    sparsity: float | None
    count: int | None
    drop_fraction: float
    every: int
    end_step: int | None
    seed: int

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"current_mask", "step"})
    uses_prev_mask: ClassVar[bool] = True
    vmappable: ClassVar[bool] = False
    regrows: ClassVar[bool] = True

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid configs: fractions and small counts, drop fractions, intervals, seeds."""
        return level_configs(
            st,
            cls,
            drop_fraction=st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0]),
            every=st.integers(1, 1000),
            end_step=st.one_of(st.none(), st.integers(0, 10_000)),
            seed=st.one_of(st.integers(0, 3), st.integers(0, SEED_LIMIT - 1)),
        )

    def for_leaf(self, path: str) -> MaskMethod:
        """This config with the seed of the leaf at ``path``: ``leaf_seed(seed, path)``,
        as ``fs.Random`` derives it (so the initial mask is ``fs.Random``'s)."""
        return dataclasses.replace(self, seed=leaf_seed(self.seed, path))  # type: ignore[type-var]

    def updates_at(self, step: int) -> bool:
        """Whether the mask changes at training ``step``: ``step > 0``, a multiple of
        ``every``, and below ``end_step`` (when one is given).

        Raises:
            TypeError: ``step`` is not an int.
            ValueError: ``step`` is negative.
        """
        name = f"{type(self).__name__}.updates_at"
        step = require_int(name, "step", step)
        if step < 0:
            raise ValueError(f"{name}: step={step} must be >= 0")
        if step == 0 or step % self.every:
            return False
        return self.end_step is None or step < self.end_step

    def drop_fraction_at(self, step: int) -> float:
        """The fraction of the kept weights dropped (and regrown) at an update ``step``."""
        raise NotImplementedError

    def drop_count(self, kept: int, pruned: int, step: int) -> int:
        """How many weights an update at ``step`` drops and grows on a leaf with ``kept``
        kept and ``pruned`` pruned entries: ``round(drop_fraction_at(step) * kept)``
        (Python's round, half to even), at most ``pruned`` (only positions pruned before
        the update can grow); 0 where ``step`` is not an update step.

        Examples:
            >>> import funcsparse as fs
            >>> fs.SET(0.9, drop_fraction=0.3).drop_count(10, 90, step=100)
            3
            >>> fs.SET(0.2, drop_fraction=0.3).drop_count(80, 20, step=100)  # 24 > 20
            20
            >>> fs.SET(0.9).drop_count(10, 90, step=50)  # not an update step
            0
        """
        if not self.updates_at(step):
            return 0
        return min(round(self.drop_fraction_at(step) * kept), pruned)

    # -- checks ---------------------------------------------------------------------------

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        name = type(self).__name__
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(TypeError, describe(tensor), f"{name} needs a floating-point tensor")
        problem = count_problem(name, self.count, tensor)
        if problem is not None:
            return problem
        current, step = data.get("current_mask"), data.get("step")
        if current is None:
            extra = sorted(k for k in ("step", "grads") if data.get(k) is not None)
            if extra:
                return LeafProblem(
                    ValueError,
                    f"{', '.join(extra)} without current_mask",
                    f"{name} reads {' and '.join(extra)} on a drop-and-grow update, with "
                    "current_mask (the mask trained with); without current_mask a call "
                    "makes the initial mask",
                )
            return None
        if not isinstance(current, Tensor) or current.dtype != torch.bool:
            return LeafProblem(
                TypeError, f"current_mask={describe(current)}", "current_mask must be a bool tensor"
            )
        if current.shape != tensor.shape:
            return _shape_problem("current_mask", current, tensor)
        if data.get("prev_mask") is not None:
            return LeafProblem(
                ValueError,
                "prev_mask and current_mask together",
                f"{name} regrows weights, so prev_mask (pruned stays pruned) does not apply "
                "to an update: pass current_mask alone",
            )
        if step is None:
            return LeafProblem(
                ValueError,
                "current_mask without step",
                f"{name} needs step= (the training step) with current_mask",
            )
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            return LeafProblem(
                TypeError, f"step={describe(step)}", "step must be an int >= 0 (the training step)"
            )
        if step < 0:
            return LeafProblem(
                ValueError, f"step={step}", "step must be an int >= 0 (the training step)"
            )
        if tensor.device.type == "meta" or current.device.type == "meta":
            return None  # counts need values: checked on the real tensors
        k = count_to_prune(name, self.sparsity, self.count, tensor.numel())
        zeros = tensor.numel() - int(torch.count_nonzero(current))
        if zeros != k:
            return LeafProblem(
                ValueError,
                f"a current_mask with {zeros} pruned entries",
                f"{name} keeps the level's exact count, {k} pruned of {tensor.numel()}; "
                "start from the mask of a call without current_mask",
            )
        return self._update_problem(tensor, current, int(step), data)

    def _update_problem(
        self, tensor: Tensor, current: Tensor, step: int, data: dict[str, Any]
    ) -> LeafProblem | None:
        """What the growth needs on an update (RigL: the dense gradient)."""
        return None

    # -- masks ----------------------------------------------------------------------------

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        current: Tensor | None = data.get("current_mask")
        if current is None:  # the initial mask: fs.Random's, from the leaf's seed
            return Random(self.sparsity, count=self.count, seed=self.seed)(
                tensor, **({"prev_mask": data["prev_mask"]} if "prev_mask" in data else {})
            )
        step = int(data["step"])
        n = tensor.numel()
        kept = int(torch.count_nonzero(current))
        d = self.drop_count(kept, n - kept, step)
        if d == 0:
            return current.clone()
        # Drop: the pruned entries rank first, then the d lowest |w| among the kept ones.
        after_drop = keep_all_but_lowest(tensor, (n - kept) + d, current, magnitude=True)
        # Grow d among the entries pruned before this update (never the ones just dropped).
        grown = self._grow(tensor, current.logical_not(), d, step, data)
        return after_drop.logical_or_(grown)

    def _grow(
        self, tensor: Tensor, candidates: Tensor, d: int, step: int, data: dict[str, Any]
    ) -> Tensor:
        """A bool tensor with exactly ``d`` True entries, all among ``candidates``."""
        raise NotImplementedError

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The level's count (the previous zeros where ``prev_mask`` has more)."""
        k = count_to_prune(type(self).__name__, self.sparsity, self.count, tensor.numel())
        if data.get("current_mask") is not None:
            return k
        return total_zeros(k, data.get("prev_mask"))


def _lowest_among(ranking: Tensor, candidates: Tensor, d: int) -> Tensor:
    """The ``d`` lowest-ranked entries among ``candidates`` (ties: lower flat index first)."""
    outside = candidates.numel() - int(torch.count_nonzero(candidates))
    # Non-candidates rank first (pruned before), then the d lowest candidates.
    return candidates & ~keep_all_but_lowest(ranking, outside + d, candidates)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SET(_Dynamic):
    """Sparse Evolutionary Training: drop the smallest weights, regrow as many at random.

    A leaf keeps exactly ``k`` zeros (``k = round(sparsity * numel)``, or ``count``) for
    the whole run:

    * **Initial mask** (a call without ``current_mask``): ``k`` zeros at random, the mask of
      ``fs.Random(sparsity, count=count, seed=seed)``. Through ``fs.compute_masks`` or
      ``fs.Pruner`` the seed is the leaf's own, ``leaf_seed(seed, path)``, as for
      ``fs.Random``. ``prev_mask`` means what it means for ``fs.Random``.
    * **Update** (a call with ``current_mask=m`` and ``step=t``, where
      :meth:`updates_at` ``(t)``: ``t > 0``, a multiple of ``every``, below ``end_step``):
      ``d = min(round(drop_fraction * kept), k)`` kept weights of smallest ``|w|`` are
      dropped (equal magnitudes: the lower flat index first; NaN counts as the largest),
      and ``d`` entries that ``m`` pruned grow, chosen uniformly at random. A weight
      dropped in this update is never regrown in it. The draw is reproducible: its seed is
      ``leaf_seed(seed, f"SET growth at step {t}")``, from the (leaf's) seed and the step,
      so no random state needs saving: resuming from a checkpointed ``fs.Pruner`` state
      gives bit-identical masks. At any other step the call returns ``m`` (a copy).

    Grown weights must start at zero: the mask is all the method returns, so the training
    loop zeroes pruned weights after every optimizer step (``fs.apply_masks_(params,
    masks)``); a weight that grows was pruned until then, hence 0. Reset the optimizer's
    moments there (``fs.reset_optimizer_state_``). ``fs.Pruner`` runs the updates at the
    method's steps (see its docstring for the loop).

    Examples:
        >>> import torch, funcsparse as fs
        >>> w = torch.tensor([[0.5, -2.0, 0.1, 3.0], [0.0, 0.0, -1.5, 0.2]])
        >>> method = fs.SET(count=4, drop_fraction=0.5, every=10, seed=0)
        >>> m = method(w)  # the initial mask: 4 zeros at random
        >>> int((~m).sum())
        4
        >>> w = w * m  # the loop keeps pruned weights at 0
        >>> new = method(w, current_mask=m, step=10)  # drop 2 smallest kept, grow 2
        >>> int((~new).sum()), int((new & ~m).sum()), int((m & ~new).sum())
        (4, 2, 2)
        >>> torch.equal(method(w, current_mask=m, step=15), m)  # not an update step
        True

    Args:
        sparsity: the fraction of entries pruned, in ``[0, 1]``; may be given positionally.
            Give it or ``count``.
        count: the number of entries pruned. Give it or ``sparsity``.
        drop_fraction: the fraction of the kept weights dropped and regrown at each update
            (SET's zeta), in ``[0, 1]``. Default 0.3, the paper's.
        every: steps between updates (the paper updates once per epoch: give the steps per
            epoch). Default 100.
        end_step: no updates from this step on; None: updates never stop. Default None.
        seed: an int in ``[0, 2**64)`` seeding the initial mask and every growth. Default 0.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count``, or a field of the wrong
            type; on a call, a tensor that is not floating-point, a ``current_mask`` that
            is not a bool tensor, or a ``step`` that is not an int.
        ValueError: a level, ``drop_fraction``, ``every``, ``end_step`` or ``seed`` out of
            range; on a call, a ``count`` above the tensor's size, a ``current_mask`` of
            another shape or with another number of zeros than the level's, ``step``
            without ``current_mask`` or the reverse, or ``prev_mask`` with ``current_mask``.

    References:
        D. C. Mocanu, E. Mocanu, P. Stone, P. H. Nguyen, M. Gibescu, A. Liotta. Scalable
        training of artificial neural networks with adaptive sparse connectivity inspired
        by network science. Nature Communications 9, 2018. arXiv:1707.04780.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None
    drop_fraction: float = 0.3
    every: int = 100
    end_step: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)

    def drop_fraction_at(self, step: int) -> float:
        """``drop_fraction`` at every update step (SET does not decay it); 0.0 at a step
        that is not an update step.

        Examples:
            >>> import funcsparse as fs
            >>> [fs.SET(0.9, every=100).drop_fraction_at(t) for t in (0, 100, 150)]
            [0.0, 0.3, 0.0]
        """
        return self.drop_fraction if self.updates_at(step) else 0.0

    def _grow(
        self, tensor: Tensor, candidates: Tensor, d: int, step: int, data: dict[str, Any]
    ) -> Tensor:
        seed = leaf_seed(self.seed, f"SET growth at step {step}")
        outside = candidates.numel() - int(torch.count_nonzero(candidates))
        # fs.Random prunes the non-candidates first (prev_mask), then the d candidates of
        # largest random value: those grow.
        not_grown = Random(count=outside + d, seed=seed)(tensor, prev_mask=candidates)
        return candidates & ~not_grown


@dataclasses.dataclass(frozen=True, kw_only=True)
class RigL(_Dynamic):
    """Rigged Lottery: drop the smallest weights, grow where the dense gradient is largest.

    A leaf keeps exactly ``k`` zeros (``k = round(sparsity * numel)``, or ``count``) for
    the whole run:

    * **Initial mask** (a call without ``current_mask``): ``k`` zeros at random, the mask of
      ``fs.Random(sparsity, count=count, seed=seed)`` (the leaf's seed through
      ``fs.compute_masks`` / ``fs.Pruner``). The paper starts from a random sparse mask.
    * **Update** (a call with ``current_mask=m``, ``step=t`` and ``grads=g`` where
      :meth:`updates_at` ``(t)``: ``t > 0``, a multiple of ``every`` (the paper's
      Delta T), below ``end_step`` (T_end)): ``d = min(round(f(t) * kept), k)`` kept
      weights of smallest ``|w|`` are dropped (equal magnitudes: the lower flat index
      first; NaN counts as the largest), and the ``d`` entries that ``m`` pruned with the
      largest ``|g|`` grow (equal ``|g|``: the lower flat index grows first; a NaN
      gradient ranks last). A weight dropped in this update is never regrown in it (the
      paper's rule). ``f(t) = drop_fraction / 2 * (1 + cos(pi * t / end_step))``, the
      paper's cosine decay; with ``end_step=None`` the drop fraction stays
      ``drop_fraction`` and updates never stop (**give end_step for the paper's
      schedule**: it uses 75% of the training steps). At any other step the call returns
      ``m`` (a copy) and needs no ``grads``.

    **The gradient must be dense**: ``g`` is the gradient of the loss with respect to
    every weight, pruned ones included, at the masked weights. Get it with
    ``fs.functional_call(model, params, masks, args, straight_through=True)`` (the forward
    is masked, the gradient passes to every weight), or with ``torch.func.grad`` of a loss
    of ``fs.apply_masks(params, masks)`` taken with respect to the masked params. The
    gradient of a plain masked forward is exactly 0 at every pruned entry, which would
    make growth pick the lowest indices: an update whose ``g`` is 0 at every pruned entry
    but not at every kept one is refused (ValueError).

    Grown weights must start at zero: the loop zeroes pruned weights after every optimizer
    step (``fs.apply_masks_(params, masks)``), so a weight that grows is 0; reset the
    optimizer's moments there (``fs.reset_optimizer_state_``). ``fs.Pruner`` passes the
    ``grads`` of ``update(..., grads=)`` at the method's update steps.

    Examples:
        >>> import torch, funcsparse as fs
        >>> method = fs.RigL(count=2, drop_fraction=0.5, every=10)
        >>> m = torch.tensor([[True, True, False, False]])  # the level's 2 zeros
        >>> w = torch.tensor([[0.5, -2.0, 0.0, 0.0]])  # pruned weights are 0
        >>> g = torch.tensor([[9.0, 0.1, -0.4, 0.3]])  # dense: nonzero where pruned too
        >>> method(w, current_mask=m, step=10, grads=g)  # drop 0.5, grow where |g| is 0.4
        tensor([[False,  True,  True, False]])
        >>> [round(fs.RigL(0.9, end_step=300).drop_fraction_at(t), 4) for t in (100, 200, 300)]
        [0.225, 0.075, 0.0]

    Args:
        sparsity: the fraction of entries pruned, in ``[0, 1]``; may be given positionally.
            Give it or ``count``.
        count: the number of entries pruned. Give it or ``sparsity``.
        drop_fraction: the initial drop fraction (the paper's alpha), in ``[0, 1]``.
            Default 0.3, the paper's.
        every: steps between updates (Delta T). Default 100, the paper's.
        end_step: the step from which the mask no longer changes (T_end), where the cosine
            reaches 0; None: a constant drop fraction, updates never stop. Default None.
        seed: an int in ``[0, 2**64)`` seeding the initial mask. Default 0.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count``, or a field of the wrong
            type; on a call, a tensor that is not floating-point, a ``current_mask`` that
            is not a bool tensor, ``grads`` that are not a floating tensor, or a ``step``
            that is not an int.
        ValueError: a level, ``drop_fraction``, ``every``, ``end_step`` or ``seed`` out of
            range; on a call, a ``count`` above the tensor's size, a ``current_mask`` of
            another shape or with another number of zeros than the level's, ``step`` or
            ``grads`` without ``current_mask`` (or ``current_mask`` without ``step``),
            ``prev_mask`` with ``current_mask``, no ``grads`` (or ``grads`` of another
            shape) at an update step, or the gradient of a masked forward (see above).

    References:
        U. Evci, T. Gale, J. Menick, P. S. Castro, E. Elsen. Rigging the Lottery: Making
        All Tickets Winners. ICML 2020. arXiv:1911.11134.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None
    drop_fraction: float = 0.3
    every: int = 100
    end_step: int | None = None
    seed: int = 0

    leaf_data: ClassVar[frozenset[str]] = frozenset({"current_mask", "step", "grads"})

    def __post_init__(self) -> None:
        _check_fields(self)

    def drop_fraction_at(self, step: int) -> float:
        """``f(t) = drop_fraction / 2 * (1 + cos(pi * t / end_step))`` at an update step
        (``drop_fraction`` without ``end_step``); 0.0 at any other step.

        Examples:
            >>> import funcsparse as fs
            >>> method = fs.RigL(0.9, drop_fraction=0.4, every=100, end_step=400)
            >>> [round(method.drop_fraction_at(t), 4) for t in (0, 100, 200, 300, 400, 450)]
            [0.0, 0.3414, 0.2, 0.0586, 0.0, 0.0]
        """
        if not self.updates_at(step):
            return 0.0
        if self.end_step is None:
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.end_step))

    def _update_problem(
        self, tensor: Tensor, current: Tensor, step: int, data: dict[str, Any]
    ) -> LeafProblem | None:
        grads = data.get("grads")
        if grads is None:
            if not self.updates_at(step):
                return None
            return LeafProblem(
                ValueError,
                f"no grads at update step {step}",
                "RigL grows where the dense gradient is largest: pass grads= (the loss's "
                "gradient at every weight, e.g. through fs.functional_call(..., "
                "straight_through=True))",
            )
        if not isinstance(grads, Tensor) or not grads.is_floating_point():
            return LeafProblem(
                TypeError, f"grads={describe(grads)}", "grads must be a floating tensor"
            )
        if grads.shape != tensor.shape:
            return _shape_problem("grads", grads, tensor)
        if grads.device.type == "meta":
            return None
        kept = int(torch.count_nonzero(current))
        if self.drop_count(kept, tensor.numel() - kept, step) == 0:
            return None
        at_pruned = torch.where(current, 0.0, grads.detach())
        at_kept = torch.where(current, grads.detach(), 0.0)
        if not bool(at_pruned.any()) and bool(at_kept.any()):
            return LeafProblem(
                ValueError,
                "grads that are 0 at every pruned entry and not at the kept ones (the "
                "gradient of a masked forward)",
                "RigL needs the dense gradient: compute it through fs.functional_call(..., "
                "straight_through=True), or with respect to the masked params",
            )
        return None

    def _grow(
        self, tensor: Tensor, candidates: Tensor, d: int, step: int, data: dict[str, Any]
    ) -> Tensor:
        # The d lowest -|g| among the candidates: the largest |g|, lower index first.
        return _lowest_among(data["grads"].abs().neg_(), candidates, d)


def _shape_problem(name: str, value: Tensor, tensor: Tensor) -> LeafProblem:
    """The problem of keyword data ``name`` whose shape is not the tensor's."""
    return LeafProblem(
        ValueError,
        f"{name} of shape {short_repr(tuple(value.shape))} for a tensor of shape "
        f"{short_repr(tuple(tensor.shape))}",
        f"{name} must have the tensor's shape",
    )
