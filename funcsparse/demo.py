"""End-to-end demo: train a small MLP functionally and prune it gradually while it trains.

Everything is stateless: parameters live in a dict of tensors, gradients come from
``torch.func.grad_and_value`` of a loss that runs the model through
``torch.func.functional_call``, the Adam updates are plain tensor arithmetic, and the
pruner's state is a dict the loop carries. The ``nn.Module`` only supplies the
architecture and is never mutated.

Run it with ``python -m funcsparse demo`` (see :mod:`funcsparse.__main__`).
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Callable
from typing import Any, TextIO

import torch
from torch import Tensor, nn

import funcsparse as fs

__all__ = ["DEFAULT_STEPS", "run_demo"]

DEFAULT_STEPS = 200
"""Training steps of ``python -m funcsparse demo``."""

_N_CLASSES = 4
_N_FEATURES = 32
_HIDDEN = 128
_CLUSTERS_PER_CLASS = 3
_N_TRAIN = 3072
_N_TEST = 1024
_BATCH = 256
_BLOCK = (1, 4)

Params = dict[str, Tensor]
Masks = dict[str, Tensor | None]


def _make_data(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A Gaussian mixture: each class is a few clusters in 32-D, so the classes are not linear."""
    n_centers = _N_CLASSES * _CLUSTERS_PER_CLASS
    centers = torch.randn(n_centers, _N_FEATURES, generator=generator) * 1.2
    center_class = torch.arange(n_centers) % _N_CLASSES
    n = _N_TRAIN + _N_TEST
    which = torch.randint(0, n_centers, (n,), generator=generator)
    x = centers[which] + torch.randn(n, _N_FEATURES, generator=generator) * 1.5
    y = center_class[which]
    return x[:_N_TRAIN], y[:_N_TRAIN], x[_N_TRAIN:], y[_N_TRAIN:]


def _make_model(seed: int) -> nn.Sequential:
    """The MLP, initialised from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(_N_FEATURES, _HIDDEN),
            nn.ReLU(),
            nn.Linear(_HIDDEN, _HIDDEN),
            nn.ReLU(),
            nn.Linear(_HIDDEN, _N_CLASSES),
        )


def _loss(model: nn.Module, params: Params, masks: Masks, x: Tensor, y: Tensor) -> Tensor:
    logits = fs.functional_call(model, params, masks, (x,))
    return nn.functional.cross_entropy(logits, y)


def _accuracy(model: nn.Module, params: Params, masks: Masks, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        logits = fs.functional_call(model, params, masks, (x,))
    return float((logits.argmax(dim=1) == y).float().mean().item())


def _adam(
    params: Params, grads: Params, moments: tuple[Params, Params], step: int, lr: float
) -> tuple[Params, tuple[Params, Params]]:
    """One functional Adam step: new params and new moments (nothing mutated)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    first = {k: beta1 * moments[0][k] + (1 - beta1) * grads[k] for k in params}
    second = {k: beta2 * moments[1][k] + (1 - beta2) * grads[k] * grads[k] for k in params}
    scale1, scale2 = 1 - beta1**step, 1 - beta2**step
    new = {
        k: params[k] - lr * (first[k] / scale1) / ((second[k] / scale2).sqrt() + eps)
        for k in params
    }
    return new, (first, second)


def _schedule(steps: int) -> fs.schedules.Schedule | None:
    """Gradual pruning over the middle of the run: dense warm-up, cubic ramp, fine-tuning.

    Runs of fewer than 5 steps prune at step 0, at the full level.
    """
    if steps < 5:
        return None
    begin = steps // 5
    end = max(begin + 1, (7 * steps) // 10)
    return fs.schedules.polynomial(begin_step=begin, end_step=end, every=max(1, (end - begin) // 5))


def _require_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"run_demo: {name} must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"run_demo: {name} must be at least {minimum}, got {value!r}")
    return int(value)


def _require_level(value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"run_demo: sparsity must be a real number, got {type(value).__name__}")
    level = float(value)
    if not 0.0 <= level <= 1.0:  # also rejects NaN
        raise ValueError(f"run_demo: sparsity must be in [0, 1], got {value!r}")
    return level


def run_demo(
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    sparsity: float = 0.5,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Train an MLP and prune it gradually with :class:`funcsparse.Pruner`, and report.

    One run of ``steps`` Adam steps in a pure ``torch.func`` loop: dense for the first
    fifth, then ``fs.WeightNorm`` (1x4 blocks) on every weight, raised to ``sparsity`` by a
    cubic schedule (``fs.schedules.polynomial``) until 70% of the run, then fine-tuning at
    the final masks. The loop is the one docs/training.md recommends: a dense gradient on
    params kept pruned, the optimizer step, and ``fs.apply_masks`` after it. The schedule's
    levels are printed as the masks change. Results are deterministic for a given ``seed``:
    the demo runs on one intra-op thread (the caller's thread count is restored).

    Args:
        seed: seeds the dataset, the model's initialisation and the minibatches.
        steps: training steps, at least 1 (fewer than 5: pruned at step 0, full level).
        sparsity: ``WeightNorm``'s level for every ``*.weight``, in [0, 1].
        out: where the report is printed.

    Returns:
        A dict with ``seed``, ``steps``, ``sparsity``, ``dense_accuracy`` (held-out, when
        pruning begins), ``final_accuracy`` (held-out, at the end), ``updates`` (one dict per
        mask update: ``step``, ``fraction`` of the level, ``sparsity`` reached over the
        pruned weights), ``overall_sparsity`` and ``layers``: one dict per pruned weight
        with ``path``, ``shape``, ``kept``, ``total`` and ``sparsity``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``sparsity`` is outside [0, 1], ``steps < 1`` or ``seed < 0``.
    """
    seed = _require_int("seed", seed, 0)
    steps = _require_int("steps", steps, 1)
    level = _require_level(sparsity)
    if not callable(getattr(out, "write", None)):
        raise TypeError(f"run_demo: out must be a text stream, got {type(out).__name__}")
    # One intra-op thread: the tensors are small, so this is fastest, immune to oversubscribed
    # cores (a busy 2-core machine slows 2 spinning threads tenfold), and thread-count
    # independent. The caller's setting is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(seed, steps, level, out)
    finally:
        torch.set_num_threads(threads)


def _run(seed: int, steps: int, level: float, out: TextIO) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = _make_data(generator)
    model = _make_model(seed)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params: Params = {k: v.detach().clone() for k, v in model.named_parameters()}

    schedule = _schedule(steps)
    method = fs.WeightNorm(level, sparse_block_shape=_BLOCK)
    pruner = fs.Pruner({"*.weight": method}, schedule=schedule)
    state = pruner.init(params)
    moments = ({k: torch.zeros_like(v) for k, v in params.items()},) * 2

    def loss(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
        # Dense: the params are kept pruned (projected after every step), so this is the
        # masked model's loss, and its gradient at kept weights is the masked one.
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (xb,)), yb)

    grad_fn: Callable[[Params, Tensor, Tensor], tuple[Params, Tensor]]
    grad_fn = torch.func.grad_and_value(loss)
    chance = 1.0 / _N_CLASSES
    print(
        f"funcsparse demo: seed={seed}, {_N_TRAIN} train / {_N_TEST} test points, "
        f"{_N_CLASSES} classes (chance {chance:.1%}), MLP {_N_FEATURES}-{_HIDDEN}-{_HIDDEN}-"
        f"{_N_CLASSES}, {steps} Adam steps",
        file=out,
    )
    print(
        f"pruning every weight with WeightNorm({level:g}, blocks {_BLOCK[0]}x{_BLOCK[1]}), "
        f"schedule {schedule if schedule is not None else 'none: full level at step 0'}",
        file=out,
    )
    dense_acc = None
    updates: list[dict[str, Any]] = []
    masks: Masks = dict.fromkeys(params)
    for step in range(steps):
        batch = torch.randint(0, x_train.shape[0], (_BATCH,), generator=generator)
        grads, value = grad_fn(params, x_train[batch], y_train[batch])
        if dense_acc is None and (schedule is None or schedule.is_update_step(step)):
            dense_acc = _accuracy(model, params, masks, x_test, y_test)
        previous = state["fraction"]
        masks, state = pruner.update(params, state)
        params, moments = _adam(params, grads, moments, step + 1, lr=3e-3)
        params = fs.apply_masks(params, masks)  # pruned weights stay exactly zero
        if state["fraction"] != previous or (schedule and schedule.is_update_step(step)):
            reached = _overall(masks)
            updates.append({"step": step, "fraction": state["fraction"], "sparsity": reached})
            print(
                f"  step {step:>4}: schedule {state['fraction']:.3f} x sparsity {level:g} -> "
                f"{reached:6.2%} of the weights pruned, train loss {value.item():.3f}",
                file=out,
            )
    final_acc = _accuracy(model, params, masks, x_test, y_test)

    after = model.state_dict()
    if before.keys() != after.keys() or any(not torch.equal(before[k], after[k]) for k in before):
        raise RuntimeError("run_demo: the model module was mutated")

    layers: list[dict[str, Any]] = []
    for path, mask in masks.items():
        if mask is None:
            continue
        total = mask.numel()
        kept = int(mask.sum().item())
        if int(torch.count_nonzero(params[path]).item()) > kept:
            raise RuntimeError(f"run_demo: pruned entries of {path!r} are nonzero")
        layers.append(
            {
                "path": path,
                "shape": tuple(mask.shape),
                "kept": kept,
                "total": total,
                "sparsity": 1.0 - kept / total,
            }
        )
    all_kept = sum(layer["kept"] for layer in layers)
    all_total = sum(layer["total"] for layer in layers)
    overall = 1.0 - all_kept / all_total

    print(f"accuracy when pruning began: {dense_acc:.2%}", file=out)
    print(f"final accuracy (pruned):     {final_acc:.2%}", file=out)
    print("", file=out)
    header = f"{'layer':<10} {'shape':<12} {'kept':>7} {'total':>7} {'sparsity':>9}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for layer in [*layers, {"path": "all", "shape": "", "kept": all_kept, "total": all_total}]:
        shape = "x".join(str(side) for side in layer["shape"])
        share = 1.0 - layer["kept"] / layer["total"]
        print(
            f"{layer['path']:<10} {shape:<12} {layer['kept']:>7} {layer['total']:>7} {share:>8.2%}",
            file=out,
        )

    return {
        "seed": seed,
        "steps": steps,
        "sparsity": level,
        "dense_accuracy": dense_acc,
        "final_accuracy": final_acc,
        "updates": updates,
        "overall_sparsity": overall,
        "layers": layers,
    }


def _overall(masks: Masks) -> float:
    """The fraction of pruned entries over the masked leaves."""
    present = [m for m in masks.values() if m is not None]
    total = sum(m.numel() for m in present)
    return 0.0 if not total else 1.0 - sum(int(m.sum()) for m in present) / total
