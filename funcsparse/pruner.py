"""Pruner: gradual pruning inside a training loop, with its state as plain data.

A :class:`Pruner` is a frozen config (rules and a schedule). Everything that persists
between training steps lives in a :class:`PrunerState`, a plain dict of ints, floats and
tensors that the caller carries: ``init`` makes it, ``update`` takes it and returns a new
one. ``torch.save`` and ``torch.load(weights_only=True)`` round-trip it, and resuming from
a saved state gives the masks of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import torch
from torch import Tensor

from funcsparse._apply import local_piece, placed_as, sharding_mismatch
from funcsparse._compute import data_per_leaf, masks_with_data
from funcsparse._errors import describe, require_int, require_real
from funcsparse._rules import Assignment, assign_rules
from funcsparse._tree import describe_structure_mismatch, flatten_with_paths, leaves_like, unflatten
from funcsparse.methods._base import MaskMethod
from funcsparse.schedules import Schedule

__all__ = ["Pruner", "PrunerState"]


class PrunerState(TypedDict):
    """A pruner's state: a plain dict, so that ``torch.load(weights_only=True)`` takes it.

    Keys:
        step: the training step the next ``update`` is (0 after ``init``).
        fraction: the schedule's fraction of each level that ``masks`` were made at
            (None before the first mask update).
        masks: a pytree of the params' structure: the current bool masks, None where no
            rule applies (and everywhere before the first mask update).
        method_state: a pytree of the params' structure: what a method accumulates between
            updates (``fs.Movement``'s scores), None where it keeps nothing.
    """

    step: int
    fraction: float | None
    masks: Any
    method_state: Any


@dataclasses.dataclass(frozen=True)
class Pruner:
    """Gradual pruning in a functional training loop: rules, a schedule, state as data.

    Call :meth:`init` once, then :meth:`update` once per training step. The first ``update``
    after ``init`` is step 0 and every ``update`` advances the step by one. Masks are
    recomputed only on the schedule's update steps, at ``schedule(step)`` times each rule's
    level (``method.scaled(fraction)``); between them ``update`` returns the very same mask
    objects and does next to nothing (methods that accumulate, like ``fs.Movement``, add
    one step's gradients to their state).

    Pruned stays pruned: each update passes the current masks as ``prev_masks`` to
    ``fs.compute_masks``, so the kept set only shrinks and each level is the total target
    (gradual magnitude pruning, Zhu & Gupta 2017). ``regrow=True`` selects afresh at every
    update instead, so weights may come back (use it with gradients that reach pruned
    weights: ``fs.functional_call(..., straight_through=True)``).

    Dynamic sparse training (``fs.SET``, ``fs.RigL``: methods whose ``regrows`` is True)
    keeps each leaf at its level's exact count and moves the kept set: the first update
    (step 0) makes the initial random mask, and at the method's own update steps
    (``method.updates_at(step)``: every ``every`` steps, before ``end_step``) the pruner
    passes the method its current mask and the step (and, for RigL, ``grads``: dense
    gradients, computed through ``fs.functional_call(..., straight_through=True)``), and
    the method drops and regrows. Between those steps the masks are the very same objects.
    The growth's randomness is derived from the seed, the leaf's path and the step, so the
    state needs no random state and resuming from a saved state is bit-identical. The loop
    makes grown weights start at zero by projecting after every optimizer step
    (``fs.apply_masks_(params, masks)``: a weight that grows was pruned, hence 0), and
    resets the optimizer's moments at ``new & ~old`` (``fs.reset_optimizer_state_``).
    With a schedule, a regrowing rule's level ramps as any rule's does (pruned stays
    pruned; its new zeros are drawn as its initial mask is, at random from the seed), and
    it drops and grows only from the schedule's full level (fraction 1) on, at its update
    steps where the level does not change. A regrowing rule's update steps recompute only
    the regrowing rules: other rules keep their masks and need no data there. Regrowing
    rules refuse DTensor leaves split across ranks (replicated ones work).

    Sharded params (DTensors, e.g. an FSDP2 model's ``dict(model.named_parameters())``) get
    DTensor masks placed as the params, the same on every rank as the single-process masks
    of the full tensors; a method's state (``fs.Movement``'s scores) is a DTensor placed as
    its param too, each rank accumulating its own piece (``grads``: the params' ``.grad``,
    DTensors placed as the params). In an FSDP2 loop, project after every optimizer step
    with ``fs.apply_masks_(params, masks)``. The state goes into a
    ``torch.distributed.checkpoint`` beside the model's state dict; to load it, pass
    ``funcsparse.distributed.fsdp.state_template(pruner, params)`` as the place to load
    into (``dcp.load`` fills tensors in place, so the masks need slots there).

    Examples:
        >>> import torch, funcsparse as fs
        >>> params = {"w": torch.arange(1.0, 17.0).reshape(4, 4), "b": torch.zeros(4)}
        >>> pruner = fs.Pruner(
        ...     {"w": fs.Magnitude(0.5)},
        ...     schedule=fs.schedules.linear(begin_step=0, end_step=4, every=2),
        ... )
        >>> state = pruner.init(params)
        >>> for step in range(5):
        ...     masks, state = pruner.update(params, state)
        ...     print(step, state["fraction"], int((~masks["w"]).sum()))
        0 0.0 0
        1 0.0 0
        2 0.5 4
        3 0.5 4
        4 1.0 8
        >>> masks["b"] is None
        True

        Dynamic sparse training: RigL keeps 8 of 16 weights and moves 2 of them at step 2
        (a drop fraction of 0.25 of the 8 kept), growing where the dense gradient is
        largest; the projection keeps pruned weights at zero, so grown ones start there.

        >>> pruner = fs.Pruner({"w": fs.RigL(0.5, drop_fraction=0.25, every=2)})
        >>> state = pruner.init(params)
        >>> masks, state = pruner.update(params, state)  # step 0: the initial random mask
        >>> params = fs.apply_masks(params, masks)
        >>> for step in (1, 2):
        ...     grads = {"w": torch.arange(16.0).reshape(4, 4), "b": None}  # dense
        ...     new, state = pruner.update(params, state, grads=grads)
        ...     print(step, int((~new["w"]).sum()), int((new["w"] & ~masks["w"]).sum()))
        ...     masks, params = new, fs.apply_masks(params, new)
        1 8 0
        2 8 2

    Args:
        rules: leaf paths or glob patterns mapped to methods (or None), as for
            ``fs.compute_masks``.
        schedule: maps the training step to a fraction in [0, 1] of each rule's level, with
            ``is_update_step(step)`` saying when masks change (``fs.schedules``); a plain
            callable ``step -> fraction`` updates the masks whenever its value changes.
            Default None: the full level, masks made once at step 0.
        regrow: select afresh at every update (weights may come back) instead of keeping
            pruned weights pruned. Default False.

    Raises:
        TypeError: ``rules`` is not a mapping of paths to methods; ``schedule`` is not
            callable; a rule's method has no level a schedule can scale.

    References:
        M. Zhu, S. Gupta. To prune, or not to prune: exploring the efficacy of pruning for
        model compression. 2017. arXiv:1710.01878.
    """

    rules: Mapping[str, MaskMethod | None]
    schedule: Schedule | Callable[[int], float] | None = dataclasses.field(
        default=None, kw_only=True
    )
    regrow: bool = dataclasses.field(default=False, kw_only=True)
    #: Each leaf's rule and method for the leaf paths seen last: ``update`` runs at every
    #: training step, and matching the rules and deriving per-leaf methods (``for_leaf``)
    #: each time would cost more than the rest of a step without a mask update.
    _assigned_for: dict[tuple[str, ...], tuple[list[Assignment | None], list[Any]]] = (
        dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rules, Mapping):
            raise TypeError(
                f"Pruner: rules must be a mapping of leaf paths or patterns to methods, "
                f"got {type(self.rules).__name__}"
            )
        object.__setattr__(self, "rules", dict(self.rules))
        for key, method in self.rules.items():
            if method is not None and not isinstance(method, MaskMethod):
                raise TypeError(
                    f"Pruner: rule {key!r} must map to a funcsparse method or None, got "
                    f"{describe(method)}"
                )
        if self.schedule is not None:
            if not callable(self.schedule):
                raise TypeError(
                    f"Pruner: schedule must be an fs.schedules schedule or a callable "
                    f"step -> fraction, got {describe(self.schedule)}"
                )
            for key, method in self.rules.items():
                if method is None:
                    continue
                try:
                    method.scaled(0.5)
                except TypeError as err:
                    raise TypeError(f"Pruner: rule {key!r}: {err}") from None
        if not isinstance(self.regrow, bool):
            raise TypeError(f"Pruner: regrow must be a bool, got {describe(self.regrow)}")

    def init(self, params: Any) -> PrunerState:
        """The state before the first training step: step 0, no masks yet.

        Checks that every rule matches a leaf, every leaf is a tensor, and every matched
        leaf is one its method can mask, before any state exists: a leaf on the meta device
        (no values), or of a dtype or layout the method refuses (float8, complex, sparse),
        is refused here, naming the rule and the path. What depends on the data each
        ``update`` brings (``input_norms``, accumulated scores) is checked there.

        Args:
            params: the params pytree the loop trains (``dict(model.named_parameters())``).

        Returns:
            A :class:`PrunerState`.

        Raises:
            TypeError: a leaf is not a tensor (None is an empty entry; a module passed whole
                is refused too), or a matched leaf has a dtype or layout its method refuses.
            ValueError: a rule matches no leaf, two patterns match one leaf, or a matched
                leaf is on the meta device.
        """
        function = "Pruner.init"
        paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
        assignments, methods = self._assigned(paths, function)
        for path, leaf, assigned, method in zip(paths, leaves, assignments, methods, strict=True):
            if assigned is None or method is None:
                continue
            # the method's own check, as a call makes it; a ValueError that is not about
            # the leaf's device (shapes, data only update brings) is left to update
            problem = method.check_call(leaf)
            meta = leaf.device.type == "meta"
            if problem is not None and (meta or problem.error is TypeError):
                got = describe(leaf) if meta else problem.got
                raise problem.error(
                    f"{function}: rule {assigned.key!r} ({type(method).__name__}) got {got} "
                    f"at {path!r}; {problem.need}"
                )
        method_state = [
            None if method is None else _init_state(method, leaf)
            for method, leaf in zip(methods, leaves, strict=True)
        ]
        return PrunerState(
            step=0,
            fraction=None,
            masks=unflatten(spec, [None] * len(leaves)),
            method_state=unflatten(spec, method_state),
        )

    def update(
        self, params: Any, state: PrunerState, *, grads: Any = None, **leaf_data: Any
    ) -> tuple[Any, PrunerState]:
        """One training step: the masks to train with, and the next state.

        Call it once per training step, with the params of that step (and their gradients
        where a method accumulates them). Nothing passed in is changed.

        Args:
            params: the params pytree, of the structure ``init`` saw.
            state: the state from ``init`` or the previous ``update``.
            grads: gradients of the loss, a pytree of ``params``' structure (None where
                absent); needed at every step by methods that accumulate them
                (``fs.Movement``), and at its update steps by ``fs.RigL`` (dense
                gradients: pruned weights' too). Default None.
            **leaf_data: per-leaf data the methods read on update steps (``input_norms``,
                ``scores``, ...), as for ``fs.compute_masks``.

        Returns:
            ``(masks, state)``: masks of ``params``' structure (bool tensors, None where no
            rule applies or before the first mask update), and the new state.

        Raises:
            TypeError: a leaf of ``params`` is not a tensor (by path; None is an empty
                entry); ``state`` is not a pruner state (its masks not bool tensors or
                None, its method state not floating tensors, its step not an int, its
                fraction not a number), the schedule gives no number, ``current_mask``
                or ``step`` are passed (the pruner's own data for regrowing methods), or
                what ``fs.compute_masks`` raises.
            ValueError: ``state`` does not fit ``params`` (structure, shapes, devices, a
                mask where no rule applies), gradients are missing or on another device
                where a method needs them, a ``scores`` tree you pass is None where a
                score-reading rule without state reads it, or what ``fs.compute_masks``
                raises; ``fs.RigL`` at its update step without ``grads`` there (or with
                the gradient of a masked forward: 0 at every pruned weight). Nothing
                passed in changes when it raises.
        """
        function = "Pruner.update"
        paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
        step, mask_leaves, method_state = self._unpack(state, spec, function)
        for name in ("current_mask", "step"):
            if name in leaf_data:
                raise TypeError(
                    f"{function}: {name} is the pruner's own data (it passes the current masks "
                    "and the step to regrowing methods); do not pass it"
                )
        assignments, methods = self._assigned(paths, function)
        _check_state_leaves(paths, leaves, methods, mask_leaves, method_state, state["fraction"])
        if any(method is not None and method.needs_grads for method in methods):
            method_state = self._accumulate(paths, leaves, spec, methods, method_state, grads)
        fraction = state["fraction"]
        new_fraction = fraction
        static = self._updates_at(step, fraction)
        if static:
            new_fraction = self._fraction(step)
            if not 0.0 <= new_fraction <= 1.0:
                raise ValueError(
                    f"{function}: the schedule gave {new_fraction!r} at step {step}; a "
                    "schedule gives a fraction in [0, 1]"
                )
        level_changes = static and new_fraction != fraction
        # Regrowing methods (fs.SET, fs.RigL) drop and grow at their own steps once the
        # level is whole and not changing at this step.
        dynamic_keys = set()
        if new_fraction == 1.0 and not level_changes:
            dynamic_keys = {
                key
                for key, method in self.rules.items()
                if method is not None and method.regrows and method.updates_at(step)
            }
        new_masks = list(mask_leaves)
        if static:
            level = float(new_fraction or 0.0)  # a float here: the schedule's fraction
            rules = {
                key: None
                if method is None or (method.regrows and not level_changes)
                else method.scaled(level)
                for key, method in self.rules.items()
            }
            if any(method is not None for method in rules.values()):
                data, merged = self._leaf_data(paths, spec, methods, method_state, leaf_data)
                prev = None if self.regrow else state["masks"]
                # A tree merged from the methods' states alone holds None at the other
                # leaves; a tree the caller gave (merged or not) must cover every leaf that
                # reads it.
                computed = masks_with_data(
                    params,
                    rules,
                    prev_masks=prev,
                    leaf_data=data,
                    partial=frozenset(name for name in merged if leaf_data.get(name) is None),
                )
                for i, (entry, assigned) in enumerate(
                    zip(leaves_like(spec, computed), assignments, strict=True)
                ):
                    if assigned is not None and rules[assigned.key] is not None:
                        new_masks[i] = entry
        if dynamic_keys:
            self._regrow(params, paths, spec, assignments, methods, new_masks, step, grads)
        masks_tree = unflatten(spec, new_masks) if static or dynamic_keys else state["masks"]
        new_state = PrunerState(
            step=step + 1,
            fraction=new_fraction,
            masks=masks_tree,
            method_state=unflatten(spec, method_state),
        )
        return masks_tree, new_state

    # -- helpers -------------------------------------------------------------------------

    def _assigned(
        self, paths: list[str], function: str
    ) -> tuple[list[Assignment | None], list[Any]]:
        """Each leaf's rule, and its method (``for_leaf`` applied); None where no rule
        applies. Kept for the last paths seen (methods are frozen and ``for_leaf`` is pure)."""
        key = tuple(paths)
        cached = self._assigned_for.get(key)
        if cached is not None:
            return list(cached[0]), list(cached[1])
        assignments: list[Assignment | None] = assign_rules(paths, self.rules, function=function)
        methods: list[MaskMethod | None] = [
            None if assigned is None else assigned.method.for_leaf(path)
            for path, assigned in zip(paths, assignments, strict=True)
        ]
        self._assigned_for.clear()  # one tree at a time: no growth over differing trees
        self._assigned_for[key] = (assignments, methods)
        return list(assignments), list(methods)

    def _regrow(
        self,
        params: Any,
        paths: list[str],
        spec: Any,
        assignments: list[Assignment | None],
        methods: list[MaskMethod | None],
        new_masks: list[Any],
        step: int,
        grads: Any,
    ) -> None:
        """Drop and grow at ``step``: each regrowing rule that updates there gets its
        current mask and the step (and ``grads``, where it reads them); ``new_masks`` is
        filled in at those leaves (nothing else changes; on error nothing is filled)."""
        function = "Pruner.update"
        rules: dict[str, MaskMethod | None] = {
            key: method
            if method is not None and method.regrows and method.updates_at(step)
            else None
            for key, method in self.rules.items()
        }
        updating = [
            assigned is not None and rules[assigned.key] is not None for assigned in assignments
        ]
        reading = [
            up and method is not None and "grads" in method.leaf_data
            for up, method in zip(updating, methods, strict=True)
        ]
        data: dict[str, Any] = {
            "current_mask": unflatten(
                spec, [m if up else None for m, up in zip(new_masks, updating, strict=True)]
            ),
            "step": unflatten(spec, [step if up else None for up in updating]),
        }
        if any(reading):
            needing = [p for p, r in zip(paths, reading, strict=True) if r]
            if grads is None:
                raise ValueError(
                    f"{function}: the methods at {needing[:8]} grow where the gradient is "
                    f"largest and update at step {step}; pass grads= (dense gradients: "
                    "fs.functional_call(..., straight_through=True)) at their update steps"
                )
            grad_leaves = _grad_leaves(spec, grads, function)
            for path, grad, r in zip(paths, grad_leaves, reading, strict=True):
                if r and grad is None:
                    raise ValueError(
                        f"{function}: grads is None at {path!r}, whose method grows where "
                        f"the gradient is largest and updates at step {step}"
                    )
            data["grads"] = unflatten(
                spec, [g if r else None for g, r in zip(grad_leaves, reading, strict=True)]
            )
        computed = masks_with_data(params, rules, leaf_data=data, function=function)
        for i, entry in enumerate(leaves_like(spec, computed)):
            if updating[i]:
                new_masks[i] = entry

    def _fraction(self, step: int) -> float:
        """``schedule(step)`` as a float (1.0 without a schedule), or a TypeError/ValueError
        naming the schedule."""
        if self.schedule is None:  # the full level
            return 1.0
        return require_real("Pruner.update", f"schedule({step})", self.schedule(step))

    def _updates_at(self, step: int, fraction: float | None) -> bool:
        """Whether the masks are recomputed at ``step`` (``fraction``: the current one)."""
        if self.schedule is None:
            return step == 0
        is_update_step = getattr(self.schedule, "is_update_step", None)
        if callable(is_update_step):
            return bool(is_update_step(step))
        return fraction is None or self._fraction(step) != fraction

    @staticmethod
    def _unpack(state: object, spec: Any, function: str) -> tuple[int, list[Any], list[Any]]:
        """``state``'s step, mask leaves and method-state leaves, checked against ``spec``."""
        keys = set(PrunerState.__annotations__)
        if not isinstance(state, Mapping) or set(state) != keys:
            got = describe(list(state)[:8]) if isinstance(state, Mapping) else describe(state)
            raise TypeError(
                f"{function}: state must be the dict that Pruner.init or Pruner.update "
                f"returned, with keys {sorted(keys)}; got {got}"
            )
        step = require_int(function, "state['step']", state["step"])
        if step < 0:
            raise ValueError(f"{function}: state['step'] must be >= 0, got {step}")
        trees = []
        for key in ("masks", "method_state"):
            try:
                trees.append(leaves_like(spec, state[key]))
            except ValueError:
                raise ValueError(
                    f"{function}: state[{key!r}] does not have the structure of params "
                    f"({describe_structure_mismatch(spec, state[key])}); was the state made "
                    "for other params?"
                ) from None
        return step, trees[0], trees[1]

    @staticmethod
    def _accumulate(
        paths: list[str],
        leaves: list[Any],
        spec: Any,
        methods: list[MaskMethod | None],
        method_state: list[Any],
        grads: Any,
    ) -> list[Any]:
        """Each accumulating method's state after this step's gradients (new tensors)."""
        function = "Pruner.update"
        needing = [
            p for p, m in zip(paths, methods, strict=True) if m is not None and m.needs_grads
        ]
        if grads is None:
            raise ValueError(
                f"{function}: the methods at {needing[:8]} accumulate gradients; pass "
                "grads= (the gradients of this step's loss) at every update"
            )
        grad_leaves = _grad_leaves(spec, grads, function)
        new_state = list(method_state)
        for i, (path, leaf, method, grad) in enumerate(
            zip(paths, leaves, methods, grad_leaves, strict=True)
        ):
            if method is None or not method.needs_grads:
                continue
            if not isinstance(grad, Tensor) or grad.shape != leaf.shape:
                raise ValueError(
                    f"{function}: {type(method).__name__} at {path!r} needs the gradient of "
                    f"a tensor of shape {tuple(leaf.shape)}, got {describe(grad)}"
                )
            if grad.device != leaf.device or not grad.is_floating_point():
                raise ValueError(
                    f"{function}: {type(method).__name__} at {path!r} needs a floating "
                    f"gradient on the leaf's device ({leaf.device}), got a {grad.dtype} "
                    f"gradient on {grad.device}"
                )
            problem = sharding_mismatch(leaf, grad, what="gradient")
            if problem is not None:
                raise ValueError(f"{function}: the gradient at {path!r} {problem}")
            entry = method_state[i]
            new = method.next_state(  # entry by entry: each rank on its own piece
                None if entry is None else local_piece(entry), local_piece(leaf), local_piece(grad)
            )
            new_state[i] = None if new is None else placed_as(leaf, new)
        return new_state

    @staticmethod
    def _leaf_data(
        paths: list[str],
        spec: Any,
        methods: list[MaskMethod | None],
        method_state: list[Any],
        leaf_data: dict[str, Any],
    ) -> tuple[dict[str, Any], set[str]]:
        """The user's per-leaf data, with what the methods' states provide merged in, and
        the names of the merged trees."""
        from_state = [
            {} if method is None else method.state_data(entry)
            for method, entry in zip(methods, method_state, strict=True)
        ]
        names = {name for entry in from_state for name in entry}
        if not names:
            return leaf_data, names
        named = {k: v for k, v in leaf_data.items() if k in names}
        given = data_per_leaf(spec, named, len(methods), function="Pruner.update")
        merged: dict[str, Any] = dict(leaf_data)
        for name in names:
            entries = []
            for path, method, mine, theirs in zip(paths, methods, from_state, given, strict=True):
                if name in mine and name in theirs:
                    raise ValueError(
                        f"Pruner.update: {name} given for {path!r}, whose method "
                        f"({type(method).__name__}) keeps its own"
                    )
                entries.append(mine.get(name, theirs.get(name)))
            merged[name] = unflatten(spec, entries)
        return merged, names


def _grad_leaves(spec: Any, grads: Any, function: str) -> list[Any]:
    """The leaves of ``grads``, a pytree of the params' structure (ValueError otherwise)."""
    try:
        return leaves_like(spec, grads)
    except ValueError:
        raise ValueError(
            f"{function}: grads does not have the structure of params "
            f"({describe_structure_mismatch(spec, grads)})"
        ) from None


def _init_state(method: MaskMethod, leaf: Tensor) -> Tensor | None:
    """``method.init_state(leaf)``; for a DTensor leaf, of its local piece, placed as the leaf.

    A method's state has its leaf's shape and is accumulated entry by entry, so each rank
    keeps the piece of its own entries (no communication).
    """
    state = method.init_state(local_piece(leaf))
    return None if state is None else placed_as(leaf, state)


def _check_state_leaves(
    paths: list[str],
    leaves: list[Any],
    methods: list[MaskMethod | None],
    mask_leaves: list[Any],
    method_state: list[Any],
    fraction: object,
) -> None:
    """Raise if a state's masks, method state or fraction could not have come from ``init``
    or ``update`` for these params (a state edited by hand or loaded from elsewhere)."""
    function = "Pruner.update"
    if fraction is not None:
        value = require_real(function, "state['fraction']", fraction)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{function}: state['fraction'] must be in [0, 1], got {value}")
    for path, leaf, method, mask, entry in zip(
        paths, leaves, methods, mask_leaves, method_state, strict=True
    ):
        if mask is not None:
            if method is None:
                raise ValueError(
                    f"{function}: state['masks'] holds {describe(mask)} at {path!r}, which no "
                    "rule matches (its mask is None)"
                )
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError(
                    f"{function}: state['masks'] at {path!r} must be a torch.bool tensor or "
                    f"None, got {describe(mask)}"
                )
            if mask.shape != leaf.shape or mask.device != leaf.device:
                raise ValueError(
                    f"{function}: state['masks'] at {path!r} has shape {tuple(mask.shape)} on "
                    f"{mask.device}; the leaf has shape {tuple(leaf.shape)} on {leaf.device}"
                )
            problem = sharding_mismatch(leaf, mask)
            if problem is not None:
                raise ValueError(f"{function}: state['masks'] at {path!r} {problem}")
        if entry is None:
            continue
        if method is None or type(method).init_state is MaskMethod.init_state:
            raise ValueError(
                f"{function}: state['method_state'] holds {describe(entry)} at {path!r}, "
                "whose method keeps no state"
            )
        if not isinstance(entry, Tensor) or not entry.is_floating_point():
            raise TypeError(
                f"{function}: state['method_state'] at {path!r} must be a floating tensor, got "
                f"{describe(entry)}"
            )
        if entry.shape != leaf.shape or entry.device != leaf.device:
            raise ValueError(
                f"{function}: state['method_state'] at {path!r} has shape "
                f"{tuple(entry.shape)} on {entry.device}; the leaf has shape "
                f"{tuple(leaf.shape)} on {leaf.device}"
            )
        problem = sharding_mismatch(leaf, entry, what="method state")
        if problem is not None:
            raise ValueError(f"{function}: state['method_state'] at {path!r} {problem}")
