"""Optimizer state at regrown weights: zero the per-element moments where a mask grew.

Dynamic sparse training (SET, RigL) moves weights in and out of the mask during training. A
weight that comes back must not inherit the moments the optimizer kept for it (its momentum
from before it was pruned, or one built from dense gradients while it was masked): those
positions get a fresh, zero state, as the RigL reference does for every optimizer slot of a
new connection. Two functions, one per kind of optimizer:

- :func:`reset_optimizer_state_` writes zeros, in place, into a ``torch.optim`` optimizer's
  state (SGD's ``momentum_buffer``; Adam's and AdamW's ``exp_avg``, ``exp_avg_sq``,
  ``max_exp_avg_sq``), as ``fs.apply_masks_`` writes into params.
- :func:`reset_optimizer_state` is the pure twin for a functional optimizer whose state is a
  pytree (``{"m": tree, "v": tree, "step": n}``, optax- or torchopt-like): a new pytree with
  the params-shaped subtrees zeroed at the positions; nothing is mutated.

What a zero state gives the next step is exact for SGD and *not* a fresh optimizer's step for
torch's Adam, which keeps one ``step`` per tensor: see :func:`reset_optimizer_state_` and
``docs/optimizer-state.md``. DTensor (FSDP2) params are out of scope: both functions refuse
them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from funcsparse._apply import checked_masks
from funcsparse._errors import describe, short_repr
from funcsparse._tree import flatten_with_paths, unflatten

__all__ = ["reset_optimizer_state", "reset_optimizer_state_"]

#: Per optimizer class (found along the MRO, so AdamW is Adam): the per-element state keys
#: reset by default, and the keys known to hold something else (a per-tensor step count).
_KNOWN_STATE: dict[type[torch.optim.Optimizer], tuple[tuple[str, ...], tuple[str, ...]]] = {
    torch.optim.SGD: (("momentum_buffer",), ()),
    torch.optim.Adam: (("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ("step",)),
}


def _refuse_dtensor(function: str, path: str, *tensors: Tensor) -> None:
    """DTensor params and positions are out of scope: a TypeError naming the path."""
    module = sys.modules.get("torch.distributed.tensor")  # no DTensor exists before it
    dtensor = getattr(module, "DTensor", None)
    for tensor in tensors:
        if dtensor is not None and isinstance(tensor, dtensor):
            raise TypeError(
                f"{function}: the param or positions at {path!r} is a DTensor; resetting "
                "sharded optimizer state is not supported (out of scope): pass plain tensors"
            )


def _names(function: str, argument: str, value: object) -> tuple[str, ...] | None:
    """``value`` (None, or a sequence of strings) as a tuple of strings; else a TypeError."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise TypeError(
            f"{function}: {argument} must be a tuple of strings or None, got "
            f"{describe(value)} (one name: pass ({short_repr(value)},))"
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{function}: {argument} must hold strings, got {describe(name)}")
    if not names:
        raise ValueError(
            f"{function}: {argument} is empty, so nothing would be reset; pass None for the default"
        )
    return names


def _per_element(value: object, leaf: Tensor) -> bool:
    """Whether a state value looks like one entry per element of ``leaf``."""
    return isinstance(value, Tensor) and (
        value.shape == leaf.shape or (value.dim() > 0 and value.numel() == leaf.numel() > 1)
    )


def _optimizer_keys(
    optimizer: torch.optim.Optimizer, keys: tuple[str, ...] | None, *, function: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys to reset and the keys known not to be per-element, for ``optimizer``."""
    known = next((_KNOWN_STATE[c] for c in type(optimizer).__mro__ if c in _KNOWN_STATE), None)
    if keys is not None:
        return keys, () if known is None else known[1]
    if known is None:
        raise ValueError(
            f"{function}: does not know which state of {type(optimizer).__name__} is per "
            "element (it knows SGD, Adam, AdamW and their subclasses); pass keys=(...) naming "
            "the per-element state keys to zero"
        )
    return known


def reset_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    params: Any,
    positions: Any,
    *,
    keys: Sequence[str] | None = None,
) -> None:
    """Zero, in place, a ``torch.optim`` optimizer's per-element state at ``positions``.

    The step after a mask update in dynamic sparse training: with ``grown = new & ~old``
    (the weights that come back), ``reset_optimizer_state_(optimizer, params, grown)``
    forgets the moments kept for them, so that they restart as new connections. Only the
    optimizer's state tensors are written (under ``torch.no_grad()``); params, positions,
    the ``step`` counts and the param groups are untouched. A param the optimizer holds no
    state for yet (no step taken) needs nothing. Every check runs before anything is written.

    What the next step does at a reset position (``g`` the gradient, weight decay folded in
    as the optimizer folds it):

    - **SGD**: a zero ``momentum_buffer`` gives ``buf = momentum * 0 + (1 - dampening) * g``;
      with ``dampening=0`` (the default) that is ``g``, exactly a fresh SGD's first step
      (plain, ``nesterov=True``, ``weight_decay``, ``maximize``). With ``dampening > 0`` it is
      ``(1 - dampening) * g`` where a fresh SGD takes ``g``.
    - **Adam, AdamW**: torch keeps one ``step`` per tensor, and its bias correction uses the
      tensor's ``t``, not 1. With zero moments the update at a reset position is
      ``lr * ((1 - b1) * g / (1 - b1**t)) / (sqrt((1 - b2) * g**2 / (1 - b2**t)) + eps)``
      (AdamW first scales the weight by ``1 - lr * weight_decay``; ``amsgrad`` changes
      nothing there). A fresh Adam's first step is ``lr * g / (|g| + eps)``: the two agree
      only at ``t = 1``. For ``|g| >> eps`` the first step is
      ``f(t) = (1 - b1) / (1 - b1**t) * sqrt((1 - b2**t) / (1 - b2))`` times a fresh one
      (default betas: 0.48 at ``t = 10``, 0.98 at 100, 2.5 at 1000, 3.16 past about 5000),
      and under a steady gradient the next steps grow to about 6.6 ``lr`` for large ``t``
      (Adam without bias correction), where a fresh Adam moves by ``lr``. No choice of
      stored values fixes this: making the first update equal ``lr * g / (|g| + eps)`` for
      every ``g`` would need ``1 - b1 == 1 - b1**t``. Zero moments are what the RigL
      reference writes for every optimizer slot of a new connection. Only a whole tensor
      can start afresh: ``del optimizer.state[p]``, and torch re-creates it (step 0) at the
      next step. To keep the second moment (a gradient scale estimated while the weight was
      pruned), pass ``keys=("exp_avg",)``.

    Examples:
        >>> import torch
        >>> from funcsparse.optim_state import reset_optimizer_state_
        >>> w = torch.nn.Parameter(torch.ones(2, 2))
        >>> opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
        >>> w.grad = torch.ones(2, 2)
        >>> opt.step()
        >>> grown = torch.tensor([[True, False], [False, False]])
        >>> reset_optimizer_state_(opt, {"w": w}, {"w": grown})
        >>> opt.state[w]["momentum_buffer"]
        tensor([[0., 1.],
                [1., 1.]])
        >>> w.tolist()  # params untouched
        [[0.5, 0.5], [0.5, 0.5]]

    Args:
        optimizer: a ``torch.optim.Optimizer``: SGD, Adam, AdamW or a subclass of one of
            them, or any optimizer with ``keys`` given.
        params: a pytree of the optimizer's params (``dict(model.named_parameters())``): it
            maps the paths of ``positions`` to the tensors the optimizer keeps state for.
        positions: ``params``' structure with, at each leaf, a ``torch.bool`` tensor of the
            param's shape (True: reset there) or None (leave it); for a flat dict of params,
            a dict of some of its keys. Typically ``new_mask & ~old_mask``.
        keys: the per-element state keys to zero. Default None: SGD's ``momentum_buffer``;
            Adam's and AdamW's ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq``; for those,
            a per-element state tensor under any other key is an error. Given, exactly these
            keys are zeroed (missing ones skipped) and other state is left as it is.

    Returns:
        None; the optimizer's state tensors are modified in place.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``; ``keys`` is not a tuple
            of strings; a leaf of ``params`` is not a tensor or a position not a bool tensor;
            a param is a DTensor (out of scope); a state entry under a reset key is not a
            tensor.
        ValueError: the optimizer is not SGD, Adam or AdamW and ``keys`` is None; ``keys``
            is empty; a state
            tensor of a param's shape sits under a key not known for the optimizer (with
            ``keys`` None); a positioned param is not one of the optimizer's params; the
            positions' structure, shape or device is not the params'; a state entry to reset
            has another shape or device than its param; a key named in ``keys`` is in the
            state of none of the positioned params that have state.

    References:
        Evci, Gale, Menick, Castro, Elsen. Rigging the Lottery: Making All Tickets Winners.
        ICML 2020. arXiv:1911.11134.
    """
    function = "reset_optimizer_state_"
    if not isinstance(optimizer, torch.optim.Optimizer):
        hint = (
            "; for a functional optimizer's pytree state use fs.reset_optimizer_state"
            if isinstance(optimizer, Mapping)
            else ""
        )
        raise TypeError(
            f"{function}: optimizer must be a torch.optim.Optimizer, got {describe(optimizer)}"
            f"{hint}"
        )
    given = _names(function, "keys", keys)
    reset_keys, other_keys = _optimizer_keys(optimizer, given, function=function)
    name = type(optimizer).__name__
    paths, leaves, position_leaves, _ = checked_masks(params, positions, function=function)
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    writes: list[tuple[Tensor, Tensor]] = []
    seen_keys: set[str] = set()
    any_state = False
    for path, leaf, where in zip(paths, leaves, position_leaves, strict=True):
        if where is None:
            continue
        _refuse_dtensor(function, path, leaf, where)
        if id(leaf) not in owned:
            raise ValueError(
                f"{function}: the param at {path!r} ({describe(leaf)}) is not one of the "
                f"{name}'s params; pass the tensors it was built with, as "
                "dict(model.named_parameters())"
            )
        state = optimizer.state.get(leaf)
        if not state:
            continue
        any_state = True
        for key, value in state.items():
            if key in reset_keys:
                seen_keys.add(key)
                if value is None:
                    continue
                if not isinstance(value, Tensor):
                    raise TypeError(
                        f"{function}: {name}'s state {key!r} of the param at {path!r} is "
                        f"{describe(value)}; expected a tensor of the param's shape"
                    )
                _refuse_dtensor(function, path, value)
                if value.shape != leaf.shape:
                    raise ValueError(
                        f"{function}: {name}'s state {key!r} of the param at {path!r} is "
                        f"{describe(value)}, not one entry per element of the param "
                        f"({describe(leaf)}); it cannot be reset at positions"
                    )
                if value.device != where.device:
                    raise ValueError(
                        f"{function}: {name}'s state {key!r} of the param at {path!r} is on "
                        f"{value.device} but the positions are on {where.device}"
                    )
                writes.append((value, where))
            elif given is None and key not in other_keys and _per_element(value, leaf):
                raise ValueError(
                    f"{function}: {name}'s state of the param at {path!r} holds "
                    f"{describe(value)} under the unknown key {key!r}; pass keys=(...) "
                    "naming every per-element state key to zero"
                )
    if given is not None and any_state:
        missing = [key for key in given if key not in seen_keys]
        if missing:
            raise ValueError(
                f"{function}: keys {short_repr(missing)} are in the {name}'s state of none "
                "of the positioned params"
            )
    with torch.no_grad():
        for value, where in writes:
            value.masked_fill_(where, 0)


def _strip(path: str, prefix: str) -> str | None:
    """``path`` below ``prefix`` (dotted), or None where it is not below it."""
    if not prefix:
        return path
    if path == prefix:
        return ""
    if path.startswith(prefix + "."):
        return path[len(prefix) + 1 :]
    return None


def _prefixes(path: str) -> list[str]:
    """The dotted prefixes of ``path``, outermost first: ``"a.b"`` -> ``["", "a", "a.b"]``."""
    parts = path.split(".") if path else []
    return ["", *(".".join(parts[: i + 1]) for i in range(len(parts)))]


def _subtree_problem(
    prefix: str,
    indices: Sequence[int],
    state_paths: list[str],
    state_leaves: list[Any],
    shapes: Mapping[str, torch.Size],
) -> tuple[str | None, dict[int, str]]:
    """Why the subtree at ``prefix`` (its leaves' ``indices``) is not params-shaped (None if
    it is), and its leaves as ``{index in the state's leaves: param path}``."""
    members: dict[int, str] = {}
    for index in indices:
        path = state_paths[index]
        below = _strip(path, prefix)
        if below is None or below not in shapes:
            return f"its leaf at {path!r} is not at a param's path", {}
        leaf = state_leaves[index]
        if not isinstance(leaf, Tensor) or leaf.shape != shapes[below]:
            return (
                f"its leaf at {path!r} is {describe(leaf)}, not a tensor of the param's shape "
                f"{tuple(shapes[below])}"
            ), {}
        members[index] = below
    if not members:
        return "no leaf of the state is there", {}
    return None, members


def reset_optimizer_state(
    state: Any,
    params: Any,
    positions: Any,
    *,
    subtrees: Sequence[str] | None = None,
) -> Any:
    """A functional optimizer's pytree state with its per-element entries zeroed at ``positions``.

    The pure twin of :func:`reset_optimizer_state_`, for an optimizer whose state is a pytree
    holding per-element moments as subtrees shaped like ``params`` (``{"m": tree, "v": tree,
    "step": n}``, an optax-like tuple of such states): every such subtree (its leaf paths are
    params' paths, each leaf a tensor of its param's shape) is zeroed at the positions.
    Other leaves (a step count, a scalar, a learning rate) come back as they are, the very
    same objects, as do leaves of params without positions. Nothing is mutated.

    Where the design allows, this is a fresh optimizer's state at those positions: an
    optimizer whose step count is per element (a params-shaped subtree too) restarts its
    bias correction there, and its next step at a reset position is exactly a fresh
    optimizer's. With one step count per tensor or per state, the next step is what a zero
    moment gives at that count (for Adam, the formula in :func:`reset_optimizer_state_`).

    Examples:
        >>> import torch
        >>> from funcsparse.optim_state import reset_optimizer_state
        >>> params = {"w": torch.ones(2, 2)}
        >>> state = {"m": {"w": torch.ones(2, 2)}, "v": {"w": torch.ones(2, 2)}, "step": 7}
        >>> grown = {"w": torch.tensor([[True, False], [False, False]])}
        >>> new = reset_optimizer_state(state, params, grown)
        >>> new["m"]["w"]
        tensor([[0., 1.],
                [1., 1.]])
        >>> new["step"], bool(state["m"]["w"].all())  # the input state is untouched
        (7, True)

    Args:
        state: the optimizer's state, a pytree (dicts, lists, tuples, namedtuples; None an
            empty entry).
        params: a pytree of tensors, the params the state belongs to (their paths and shapes
            identify the per-element subtrees).
        positions: ``params``' structure with a ``torch.bool`` tensor of the param's shape
            (True: reset there) or None at each leaf; for a flat dict of params, a dict of
            some of its keys. Typically ``new_mask & ~old_mask``.
        subtrees: dotted paths into ``state`` of the params-shaped subtrees to reset (``("m",
            "v")``; ``("0.0", "0.1")`` in a tuple of tuples; ``""`` the whole state). Default
            None: every params-shaped subtree, found by the rule above, and a tensor of a
            positioned param's shape anywhere else in the state is an error (ambiguous: name
            the subtrees).

    Returns:
        A new pytree of ``state``'s structure.

    Raises:
        TypeError: ``state`` is a ``torch.optim.Optimizer`` or its ``state_dict()`` (use
            :func:`reset_optimizer_state_`); ``subtrees`` is not a tuple of strings; a leaf
            of ``params`` is not a tensor or a position not a bool tensor; a param is a
            DTensor (out of scope).
        ValueError: ``subtrees`` is empty; the positions' structure, shape or device is not
            the params'; a named
            subtree is not in the state or not params-shaped; (``subtrees`` None) a tensor
            of a positioned param's shape lies outside every params-shaped subtree; a state
            tensor to reset is on another device than its positions.

    References:
        Evci, Gale, Menick, Castro, Elsen. Rigging the Lottery: Making All Tickets Winners.
        ICML 2020. arXiv:1911.11134.
    """
    function = "reset_optimizer_state"
    if isinstance(state, torch.optim.Optimizer):
        raise TypeError(
            f"{function}: state is a {type(state).__name__}; for a torch.optim optimizer use "
            "fs.reset_optimizer_state_(optimizer, params, positions)"
        )
    if isinstance(state, Mapping) and {"state", "param_groups"} <= set(state):
        raise TypeError(
            f"{function}: state looks like a torch.optim state_dict (keys 'state' and "
            "'param_groups'), which holds its moments per param index; load it into the "
            "optimizer and use fs.reset_optimizer_state_(optimizer, params, positions)"
        )
    named = _names(function, "subtrees", subtrees)
    paths, leaves, position_leaves, _ = checked_masks(params, positions, function=function)
    shapes = {path: leaf.shape for path, leaf in zip(paths, leaves, strict=True)}
    where_at: dict[str, Tensor] = {}
    for path, leaf, where in zip(paths, leaves, position_leaves, strict=True):
        if where is not None:
            _refuse_dtensor(function, path, leaf, where)
            where_at[path] = where
    state_paths, state_leaves, state_spec = flatten_with_paths(state, function=function)

    below: dict[str, list[int]] = {}  # a dotted prefix -> the state leaves under it
    for index, path in enumerate(state_paths):
        for prefix in _prefixes(path):
            below.setdefault(prefix, []).append(index)
    members: dict[int, str] = {}  # index of a state leaf -> the param path it belongs to
    if named is not None:
        for prefix in named:
            problem, found = _subtree_problem(
                prefix, below.get(prefix, []), state_paths, state_leaves, shapes
            )
            if problem is not None:
                raise ValueError(
                    f"{function}: the subtree {prefix!r} of the state is not shaped like "
                    f"params: {problem}"
                )
            members.update(found)
    else:
        for prefix in sorted(below, key=len):  # outermost first: ancestors are shorter
            indices = below[prefix]
            if any(index in members for index in indices):
                continue  # inside a subtree already matched
            problem, found = _subtree_problem(prefix, indices, state_paths, state_leaves, shapes)
            if problem is None:
                members.update(found)
        for index, (path, leaf) in enumerate(zip(state_paths, state_leaves, strict=True)):
            if index in members or not isinstance(leaf, Tensor):
                continue
            alike = [p for p in where_at if leaf.shape == shapes[p]]
            if alike:
                raise ValueError(
                    f"{function}: the state's leaf at {path!r} ({describe(leaf)}) has the "
                    f"shape of the param {alike[0]!r} but is in no subtree shaped like "
                    "params; pass subtrees=(...) naming the subtrees to reset"
                )

    new_leaves = list(state_leaves)
    for index, param_path in members.items():
        where = where_at.get(param_path)
        if where is None:
            continue
        leaf = state_leaves[index]
        _refuse_dtensor(function, state_paths[index], leaf)
        if leaf.device != where.device:
            raise ValueError(
                f"{function}: the state's leaf at {state_paths[index]!r} is on {leaf.device} "
                f"but the positions at {param_path!r} are on {where.device}"
            )
        new_leaves[index] = leaf.masked_fill(where, 0)
    return unflatten(state_spec, new_leaves)
