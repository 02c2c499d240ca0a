"""Sensitivity: the loss with each layer alone pruned at each of K levels, vmapped over K."""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from funcsparse._compute import check_data_coverage, compute_masks, data_per_leaf
from funcsparse._errors import short_repr
from funcsparse._rules import assign_rules
from funcsparse._tree import (
    flatten_with_paths,
    unflatten,
)
from funcsparse.methods._base import MaskMethod, describe

__all__ = ["Sensitivity", "sensitivity"]


@dataclasses.dataclass(frozen=True, eq=False)
class Sensitivity:
    """The table that :func:`sensitivity` returns: one row per layer, one column per level.

    Printing it shows the losses; :meth:`table` renders the increase over the dense loss
    too, and :meth:`to_dict` gives plain lists and floats for JSON.

    Attributes:
        paths: the leaf path of every layer (a leaf a rule matched), in ``params``' own
            order (a dict's insertion order: ``named_parameters()``' order is the model's).
        levels: the levels, ascending.
        losses: a ``(len(paths), len(levels))`` tensor: ``losses[i, k]`` is the loss with
            layer ``paths[i]`` alone pruned at ``levels[k]`` and every other leaf dense.
        dense_loss: the loss of the unpruned params.
    """

    paths: tuple[str, ...]
    levels: tuple[float, ...]
    losses: Tensor
    dense_loss: float

    @property
    def increase(self) -> Tensor:
        """``losses - dense_loss``: how much pruning each layer alone costs, per level."""
        return self.losses - self.dense_loss

    def table(self, *, increase: bool = False, digits: int = 4) -> str:
        """The table as text: a row per layer, a column per level.

        Args:
            increase: show ``loss - dense_loss`` (signed) instead of the loss. Default False.
            digits: digits after the decimal point. Default 4.
        """
        # Rounded first, plus 0.0, so that a rounding-level -1e-8 prints as 0, not -0.
        values = [
            [round(v, digits) + 0.0 for v in row]
            for row in (self.increase if increase else self.losses).tolist()
        ]
        what = "loss increase" if increase else "loss"
        cells = [
            [f"{v:+.{digits}f}" if increase else f"{v:.{digits}f}" for v in row] for row in values
        ]
        heads = [f"{level:g}" for level in self.levels]
        width = max([len(h) for h in heads] + [len(c) for row in cells for c in row], default=1)
        first = max([len(p) for p in self.paths] + [len("layer")])
        lines = [
            f"{what} with one layer pruned (dense loss {self.dense_loss:.{digits}f})",
            "  ".join(["layer".ljust(first), *(h.rjust(width) for h in heads)]).rstrip(),
        ]
        for path, row in zip(self.paths, cells, strict=True):
            lines.append("  ".join([path.ljust(first), *(c.rjust(width) for c in row)]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """The table as plain data: lists of str and float, ready for ``json.dumps``."""
        return {
            "paths": list(self.paths),
            "levels": list(self.levels),
            "losses": self.losses.tolist(),
            "dense_loss": self.dense_loss,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        """The table back from :meth:`to_dict`'s plain data (float64 losses)."""
        losses = torch.tensor(data["losses"], dtype=torch.float64)
        return cls(
            paths=tuple(data["paths"]),
            levels=tuple(float(s) for s in data["levels"]),
            losses=losses.reshape(len(data["paths"]), len(data["levels"])),
            dense_loss=float(data["dense_loss"]),
        )


def sensitivity(
    loss_fn: Callable[[Any], Tensor],
    params: Any,
    rules: Mapping[str, MaskMethod | None],
    *,
    levels: Sequence[float] | Tensor,
    vmap: bool = True,
    chunk_size: int | None = None,
    **leaf_data: Any,
) -> Sensitivity:
    """The loss with each layer alone pruned at each level: one vmapped call per layer.

    Every leaf a rule matches is a layer. For each layer and each ``s`` in ``levels`` the
    mask is the rule's method at level ``s`` (the method's own level is replaced, ``count``
    included), computed as ``fs.compute_masks`` computes it; every other leaf stays dense.
    The K masked copies of the layer go through ``loss_fn`` in one ``torch.func.vmap``
    call, so L layers take L calls instead of K x L, and the part of the forward before the
    layer runs once per layer instead of K times. A global method (``fs.GlobalMagnitude``)
    selects within the one layer pruned, as its rule would over that leaf alone.

    Memory: the K masks and K masked copies of ONE layer at a time, plus K copies of the
    activations from that layer on (vmap batches the rest of the forward); ``chunk_size``
    bounds both. Losses are computed under ``torch.no_grad()``.

    A forward that cannot run under vmap (data-dependent control flow, ``.item()``,
    dropout in train mode: call ``model.eval()``) raises a RuntimeError that says so; pass
    ``vmap=False`` to loop over the levels instead. Both give the same table, up to the
    rounding of a batched matmul.

    Examples:
        >>> import torch, funcsparse as fs
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 4))
        >>> x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        >>> def loss_fn(p):
        ...     return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)
        >>> params = dict(model.named_parameters())
        >>> table = fs.sensitivity(loss_fn, params, {"*.weight": fs.Magnitude(0.5)},
        ...                        levels=[0.0, 0.5, 0.9])
        >>> table.paths, table.levels, tuple(table.losses.shape)
        (('0.weight', '2.weight'), (0.0, 0.5, 0.9), (2, 3))
        >>> torch.allclose(table.losses[:, 0], torch.tensor(table.dense_loss))
        True

    Args:
        loss_fn: the loss of a params pytree, a 0-D tensor: ``loss_fn(params)`` closes over
            the model and a batch, e.g. ``lambda p: F.cross_entropy(
            torch.func.functional_call(model, p, (x,)), y)``. It gets a pytree of
            ``params``' structure whose leaves are ``params``' own, but for the pruned one.
        params: a pytree of tensors, e.g. ``dict(model.named_parameters())``; not mutated.
        rules: leaf paths or glob patterns mapped to methods (or None to exclude), as
            ``fs.compute_masks`` takes them. Every method needs a ``sparsity`` field.
        levels: the levels to try, fractions in ``[0, 1]`` in strictly ascending order (a
            sequence of numbers or a 1-D tensor). Sorted and distinct, so that a column is
            one level and a row reads left to right as pruning rises.
        vmap: run the K levels of a layer in one ``torch.func.vmap`` call (True, default)
            or loop over them (False: for a forward that vmap cannot batch).
        chunk_size: with ``vmap=True``, how many levels run per batched call (vmap's
            ``chunk_size``), to bound memory. Default None: all K at once.
        **leaf_data: per-leaf data for the methods, as ``fs.compute_masks`` takes it
            (``input_norms`` for ``fs.Wanda``, ``scores``, ``prev_masks``).

    Returns:
        A :class:`Sensitivity`: ``paths``, ``levels``, ``losses`` of shape ``(L, K)`` and
        ``dense_loss``; ``print`` it for the table.

    Raises:
        TypeError: ``loss_fn`` is not callable or returns no tensor; ``levels`` holds a
            non-number; ``vmap`` is not a bool or ``chunk_size`` not an int; a rule's method
            has no ``sparsity`` field (``fs.NM``, ``fs.NearlyDiagonal``) or cannot take the
            level; a matched leaf has a type or dtype its method cannot handle.
        ValueError: ``levels`` is empty, not ascending, or has a level outside ``[0, 1]``;
            ``loss_fn`` returns a tensor that is not 0-D; the rules select no leaf, or a
            rule matches no leaf; leaf data does not have ``params``' structure; a matched
            leaf has a shape its method cannot handle. Messages name the rule, the method,
            the leaf and the value.
        RuntimeError: ``loss_fn`` fails under ``torch.func.vmap`` (the message suggests
            ``vmap=False``).
    """
    if not callable(loss_fn):
        raise TypeError(f"sensitivity: loss_fn must be callable, got {describe(loss_fn)}")
    level_values = _check_levels(levels)
    if not isinstance(vmap, bool):
        raise TypeError(f"sensitivity: vmap must be a bool, got {describe(vmap)}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(
                f"sensitivity: chunk_size must be an int or None, got {describe(chunk_size)}"
            )
        if chunk_size < 1:
            raise ValueError(f"sensitivity: chunk_size must be >= 1, got {chunk_size}")
        chunk_size = min(chunk_size, len(level_values))  # more than the levels is all at once
    if "batch_dims" in leaf_data:
        raise TypeError("sensitivity: batch_dims is not supported; run it on one member's params")
    paths, leaves, spec = flatten_with_paths(params, function="sensitivity")
    data = data_per_leaf(spec, leaf_data, len(leaves), function="sensitivity")
    assignments = assign_rules(paths, rules, function="sensitivity")
    matched = [None if a is None else a.method for a in assignments]
    check_data_coverage(paths, assignments, matched, data, leaf_data, function="sensitivity")

    # Every layer's methods at every level, checked before any loss is computed.
    layers: list[tuple[int, list[MaskMethod]]] = []
    for i in _insertion_order(spec, len(leaves)):
        path, leaf, assigned = paths[i], leaves[i], assignments[i]
        if assigned is None:
            continue
        where = f"sensitivity: rule {assigned.key!r} ({type(assigned.method).__name__})"
        methods = [_at_level(where, assigned.method, s) for s in level_values]
        check_data = {("prev_mask" if k == "prev_masks" else k): v for k, v in data[i].items()}
        for method in methods:
            problem = method.for_leaf(path).check_call(leaf, **check_data)
            if problem is not None:
                raise problem.error(f"{where} got {problem.got} at {path!r}; {problem.need}")
        layers.append((i, methods))
    if not layers:
        raise ValueError(
            "sensitivity: the rules select no leaf to prune (every rule maps to None); "
            "map the layers to try to a method, e.g. {'**.weight': fs.Magnitude(0.5)}"
        )

    with torch.no_grad():
        dense = loss_fn(params)
        _check_loss(dense)
        rows = []
        for i, methods in layers:
            single = {paths[i]: leaves[i]}
            single_data: dict[str, Any] = {k: {paths[i]: v} for k, v in data[i].items()}
            masks = torch.stack(
                [compute_masks(single, {paths[i]: m}, **single_data)[paths[i]] for m in methods]
            )
            rows.append(_layer_losses(loss_fn, leaves, spec, i, paths[i], masks, vmap, chunk_size))
    return Sensitivity(
        paths=tuple(paths[i] for i, _ in layers),
        levels=level_values,
        losses=torch.stack(rows),
        dense_loss=float(dense.item()),
    )


def _layer_losses(
    loss_fn: Callable[[Any], Tensor],
    leaves: list[Any],
    spec: Any,
    index: int,
    path: str,
    masks: Tensor,
    vmap: bool,
    chunk_size: int | None,
) -> Tensor:
    """The loss with leaf ``index`` masked by each of ``masks`` (K, *shape), shape (K,)."""
    weight: Tensor = leaves[index]

    def masked_loss(mask: Tensor) -> Tensor:
        new = list(leaves)
        new[index] = torch.where(mask, weight, 0)
        loss = loss_fn(unflatten(spec, new))
        _check_loss(loss)
        return loss

    if not vmap:
        return torch.stack([masked_loss(mask).detach() for mask in masks])
    try:
        return torch.func.vmap(masked_loss, chunk_size=chunk_size)(masks).detach()
    except RuntimeError as err:
        raise RuntimeError(
            f"sensitivity: loss_fn failed under torch.func.vmap over the {masks.shape[0]} "
            f"levels of {path!r}: {err}. If the forward cannot be batched (data-dependent "
            "control flow, .item(), dropout in train mode: call model.eval()), pass "
            "vmap=False to loop over the levels"
        ) from err


def _check_loss(loss: object) -> None:
    """Raise unless ``loss`` is a 0-D tensor (checked per level inside vmap)."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"sensitivity: loss_fn must return a 0-D tensor, got {describe(loss)}")
    if loss.dim() != 0:
        raise ValueError(
            f"sensitivity: loss_fn must return a 0-D tensor, got {describe(loss)}; "
            "reduce it, e.g. with .mean()"
        )


def _check_levels(levels: object) -> tuple[float, ...]:
    """``levels`` as a non-empty, strictly ascending tuple of floats in [0, 1]."""
    if isinstance(levels, Tensor):
        if levels.dim() != 1:
            raise ValueError(f"sensitivity: levels must be 1-D, got {describe(levels)}")
        values: list[Any] = levels.tolist()
    elif isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(
            f"sensitivity: levels must be a sequence of fractions in [0, 1], got {describe(levels)}"
        )
    else:
        values = list(levels)
    if not values:
        raise ValueError("sensitivity: levels is empty; give at least one fraction in [0, 1]")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"sensitivity: levels must be fractions in [0, 1], got {describe(value)} "
                f"in {short_repr(values)}"
            )
        number: Any = value
        if not 0.0 <= number <= 1.0:  # NaN and 10**400 fail too, without float()
            raise ValueError(
                f"sensitivity: levels must be fractions in [0, 1], got {short_repr(value)} "
                f"in {short_repr(values)}"
            )
    for low, high in itertools.pairwise(values):
        if not low < high:
            raise ValueError(
                f"sensitivity: levels must be strictly ascending, got {short_repr(low)} before "
                f"{short_repr(high)} in {short_repr(values)}"
            )
    return tuple(float(value) for value in values)


def _at_level(where: str, method: MaskMethod, level: float) -> MaskMethod:
    """``method`` with its level set to ``level`` (``count`` cleared), or a TypeError."""
    fields = {field.name for field in dataclasses.fields(method)}  # type: ignore[arg-type]
    if "sparsity" not in fields:
        raise TypeError(
            f"{where} has no sparsity field to set to the levels; sensitivity needs a "
            f"method with a level, e.g. fs.Magnitude or fs.WeightNorm, got {short_repr(method)}"
        )
    changes: dict[str, Any] = {"sparsity": level}
    if "count" in fields:
        changes["count"] = None
    try:
        return dataclasses.replace(method, **changes)  # type: ignore[type-var]
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where} cannot be set to sparsity={level!r}: {err}") from None


def _insertion_order(spec: Any, n_leaves: int) -> list[int]:
    """Leaf indices in the params' own order: a dict's insertion order, not optree's sorted one.

    So that a table of ``dict(model.named_parameters())`` lists ``layers.2`` before
    ``layers.10``, as the model does. Falls back to the flattening order for custom nodes.
    """
    order: list[int] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif isinstance(node, int):
            order.append(node)

    walk(unflatten(spec, list(range(n_leaves))))
    return order if sorted(order) == list(range(n_leaves)) else list(range(n_leaves))
