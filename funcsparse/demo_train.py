"""The demo's training run: an MLP trained in a pure ``torch.func`` loop, pruned as it trains.

Parameters live in a dict of tensors, gradients come from ``torch.func.grad_and_value`` of a
loss that runs the model through ``torch.func.functional_call``, the Adam updates are plain
tensor arithmetic, and the pruner's state is a dict the loop carries. The ``nn.Module`` only
supplies the architecture and is never mutated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import funcsparse as fs
from funcsparse.demo_data import N_CLASSES, N_PIXELS

__all__ = [
    "BATCH",
    "BLOCK",
    "HIDDEN",
    "LEARNING_RATE",
    "Run",
    "accuracy",
    "make_model",
    "method",
    "schedule",
    "train",
]

HIDDEN = 256
"""Width of the MLP's two hidden layers."""

BATCH = 64
"""Examples per training step."""

LEARNING_RATE = 3e-3
"""Adam's step size."""

BLOCK = (1, 1)
"""``WeightNorm``'s block shape: unstructured, one weight per block."""

Params = dict[str, Tensor]
Masks = dict[str, Tensor | None]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run at one final sparsity.

    Attributes:
        sparsity: the final ``WeightNorm`` level of every weight.
        params: the trained params (pruned entries exactly zero).
        masks: the final masks (None for the biases).
        dense_accuracy: held-out accuracy when pruning began (still dense).
        accuracy: held-out accuracy at the end (pruned).
        updates: one dict per mask update: ``step``, ``fraction`` of the level and
            ``sparsity`` reached over the weights.
    """

    sparsity: float
    params: Params
    masks: Masks
    dense_accuracy: float
    accuracy: float
    updates: list[dict[str, Any]]


def make_model(seed: int) -> nn.Sequential:
    """The MLP 64-256-256-10, initialised from ``seed`` without touching the global RNG.

    Examples:
        >>> [tuple(p.shape) for p in make_model(0).parameters()][::2]
        [(256, 64), (256, 256), (10, 256)]
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(N_PIXELS, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, N_CLASSES),
        )


def method(level: float) -> fs.WeightNorm:
    """The demo's pruning method: unstructured ``WeightNorm`` (L2 magnitude) at ``level``.

    Examples:
        >>> method(0.9)
        WeightNorm(sparsity=0.9, sparse_block_shape=(1, 1), zeros_per_block=None, norm=2)
    """
    return fs.WeightNorm(level, sparse_block_shape=BLOCK)


def schedule(steps: int) -> fs.schedules.polynomial | None:
    """Dense warm-up for a fifth of the run, a cubic ramp to 70%, then fine-tuning.

    The masks change ten times on the ramp. Runs of fewer than 5 steps prune at step 0, at
    the full level (None).

    Examples:
        >>> schedule(100)
        polynomial(begin_step=20, end_step=70, every=5, power=3, initial=0.0, final=1.0)
    """
    if steps < 5:
        return None
    begin = steps // 5
    end = max(begin + 1, (7 * steps) // 10)
    return fs.schedules.polynomial(
        begin_step=begin, end_step=end, every=max(1, (end - begin) // 10)
    )


def accuracy(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> float:
    """The share of ``x`` that the model with ``params`` classifies as ``y``.

    Examples:
        >>> import torch
        >>> model = make_model(0)
        >>> params = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
        >>> accuracy(model, params, torch.ones(4, 64), torch.tensor([0, 0, 1, 2]))  # all 0
        0.5
    """
    with torch.no_grad():
        logits = torch.func.functional_call(model, params, (x,))
    return float((logits.argmax(dim=1) == y).float().mean().item())


def _adam(
    params: Params, grads: Params, moments: tuple[Params, Params], step: int
) -> tuple[Params, tuple[Params, Params]]:
    """One functional Adam step: new params and new moments (nothing mutated)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    first = {k: beta1 * moments[0][k] + (1 - beta1) * grads[k] for k in params}
    second = {k: beta2 * moments[1][k] + (1 - beta2) * grads[k] * grads[k] for k in params}
    scale1, scale2 = 1 - beta1**step, 1 - beta2**step
    new = {
        k: params[k] - LEARNING_RATE * (first[k] / scale1) / ((second[k] / scale2).sqrt() + eps)
        for k in params
    }
    return new, (first, second)


def train(
    model: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    level: float,
    steps: int,
    seed: int,
    tick: Callable[[], None] = lambda: None,
) -> Run:
    """Train ``model``'s architecture from its initial params, pruning every weight gradually.

    ``fs.Pruner`` raises ``method(level)`` on every ``*.weight`` along :func:`schedule`; the
    loop takes a dense gradient on params kept pruned, the Adam step, and ``fs.apply_masks``
    after it (docs/training.md), so pruned weights stay exactly zero.

    Examples:
        >>> from funcsparse.demo_data import load_digits, split
        >>> data = split(*load_digits(), seed=0)
        >>> run = train(make_model(0), data, level=0.9, steps=20, seed=0)
        >>> [u["step"] for u in run.updates][:3], run.updates[-1]["sparsity"]
        ([4, 5, 6], 0.9)
        >>> int((run.params["2.weight"] == 0).sum()) == round(0.9 * 256 * 256)
        True

    Args:
        model: supplies the architecture and the initial params; never mutated.
        data: ``(x_train, y_train, x_test, y_test)``.
        level: the final sparsity of every weight, in [0, 1].
        steps: training steps, at least 1.
        seed: seeds the minibatches.
        tick: called after every step (a progress bar's update).

    Returns:
        The :class:`Run`.
    """
    x_train, y_train, x_test, y_test = data
    generator = torch.Generator().manual_seed(seed)
    params: Params = {k: v.detach().clone() for k, v in model.named_parameters()}
    plan = schedule(steps)
    pruner = fs.Pruner({"*.weight": method(level)}, schedule=plan)
    state = pruner.init(params)
    moments = ({k: torch.zeros_like(v) for k, v in params.items()},) * 2

    def loss(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
        # Dense: the params are kept pruned (projected after every step), so this is the
        # masked model's loss, and its gradient at kept weights is the masked one.
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (xb,)), yb)

    grad_fn: Callable[[Params, Tensor, Tensor], tuple[Params, Tensor]]
    grad_fn = torch.func.grad_and_value(loss)
    dense_acc: float | None = None
    updates: list[dict[str, Any]] = []
    masks: Masks = dict.fromkeys(params)
    for step in range(steps):
        batch = torch.randint(0, x_train.shape[0], (BATCH,), generator=generator)
        grads, _ = grad_fn(params, x_train[batch], y_train[batch])
        is_update = plan is None or plan.is_update_step(step)
        if dense_acc is None and is_update:
            dense_acc = accuracy(model, params, x_test, y_test)
        masks, state = pruner.update(params, state)
        params, moments = _adam(params, grads, moments, step + 1)
        params = fs.apply_masks(params, masks)  # pruned weights stay exactly zero
        if is_update:
            updates.append({"step": step, "fraction": state["fraction"], "sparsity": _share(masks)})
        tick()
    if dense_acc is None:  # unreachable: every schedule() has an update step before `steps`
        raise RuntimeError("train: pruning never began")
    return Run(level, params, masks, dense_acc, accuracy(model, params, x_test, y_test), updates)


def _share(masks: Masks) -> float:
    """The fraction of pruned entries over the masked leaves."""
    present = [m for m in masks.values() if m is not None]
    total = sum(m.numel() for m in present)
    return 0.0 if not total else 1.0 - sum(int(m.sum()) for m in present) / total
