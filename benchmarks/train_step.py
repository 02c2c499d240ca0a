"""Benchmark: one masked training step, funcsparse vs torch.ao FakeSparsity / nn.utils.prune.

What it measures
----------------
The wall-clock time (``time.perf_counter``) of one training step (forward, backward, SGD
update) of a transformer-like stack, with 50% unstructured masks on every weight, for each of
the sides below, and how much each masked side costs over the dense step.

Model: 12 blocks (``--quick``: 2) of ``Linear(768, 768)`` x 4 (q, k, v, o),
``Linear(768, 3072)`` and ``Linear(3072, 768)``, all with biases: 84.9M weights in 72 tensors,
plus 72 bias vectors. A block runs pre-norm attention and a GELU MLP with residuals:
``x = x + o(attention(q(n(x)), k(n(x)), v(n(x))))``, ``x = x + down(gelu(up(n(x))))``, with
``n`` a layer norm without parameters and 12 heads. Inputs: batches of 128 and 512 tokens
(sequences of 128), fp32, ``torch.set_num_threads(2)`` (``--threads``); the loss is the MSE
against a fixed random target. Masks: a random exact half of every weight is kept (seed 0),
``torch.bool``; biases are not masked.

Sides, all on the same params and masks:

* ``dense``: ``torch.func.grad_and_value`` of the loss through ``torch.func.functional_call``.
* ``fs projected`` (what funcsparse recommends): the same dense step on projected params
  (pruned entries zero), through ``fs.functional_call(model, params, None, ...)``, then
  ``fs.apply_masks_(new_params, masks)`` on the fresh params the update made.
* ``fs exact``: ``torch.func.grad_and_value`` of the loss through
  ``fs.functional_call(model, params, masks, ...)`` (masked forward, exact gradients).
* ``torch.ao FakeSparsity``: ``WeightNormSparsifier().prepare(...)`` on a deep copy of the
  model, with every parametrization's (float) mask set to ours; ``loss.backward()``.
* ``nn.utils.prune``: ``prune.custom_from_mask`` on every weight of a deep copy (a float
  ``weight_mask`` and a forward pre-hook); ``loss.backward()``.

The update is the same on every side: one out-of-place ``torch.add(p, grad, alpha=-lr)`` per
parameter (the functional sides return a new params dict; the module sides rebind
``param.data`` to the new tensor, then set every ``param.grad = None``, as ``zero_grad()``
does), so every side allocates and writes the same new parameters, with every gradient alive
during the update. The module sides' params are reset
to the starting tensors before every timed call, outside the timed region, so every call of
every side starts from the same values.

Before timing, every side's loss is compared with the dense side's on projected params, and
every side's gradient at kept weights (and at biases) with the dense one's, with
``torch.allclose(rtol=1e-5, atol=1e-7)``; the masked sides' gradients must be exactly zero at
pruned weights. The script exits with status 1 if a check fails.

Each side runs once untimed first (allocator warm-up), then ``--repeats`` timed runs
interleaved with the other sides; the order within a repeat alternates (as listed on even
repeats, reversed on odd ones). ``gc.collect()`` runs before every timed call, outside the
timed region. Medians are reported, with each side's ratio to dense, its overhead over dense
(median minus dense median), funcsparse's overheads as a fraction of FakeSparsity's, and the
median count of minor page faults per timed step (``getrusage``): a step that allocates more
than the allocator kept from the last one pays for fresh pages, about as much as for the
arithmetic on them (glibc returns freed heap memory to the OS between steps).

A second table times the masking alone (see ``mask_work``): whole steps vary by more than
the masking costs on a shared machine.

Goals: the recommended step's overhead over dense at most half of FakeSparsity's, and the
exact-gradient ``fs.functional_call`` step no slower than FakeSparsity, at each batch size.

Usage::

    python benchmarks/train_step.py [--repeats N] [--json PATH] [--quick] [--threads N]

Results are printed as a table and written as JSON (default
``benchmarks/results/train_step.json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _harness import base_parser, machine_info, write_payload
from torch import Tensor, nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn import functional as F
from torch.nn.utils import prune

import funcsparse as fs

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "train_step.json"
TOKENS = (128, 512)
SEQUENCE = 128
LR = 1e-3
RTOL, ATOL = 1e-5, 1e-7
SIDES = ("dense", "fs projected", "fs exact", "torch.ao FakeSparsity", "nn.utils.prune")


# --- the model -----------------------------------------------------------------------------


class Block(nn.Module):
    """One transformer block's Linear layers (with biases), run as pre-norm attention + MLP."""

    def __init__(self, width: int = 768, hidden: int = 3072, heads: int = 12) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        h = F.layer_norm(x, (d,))
        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(F.layer_norm(x, (d,)))))


def transformer_stack(layers: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(Block() for _ in range(layers)))


def half_masks(params: dict[str, Tensor]) -> dict[str, Tensor | None]:
    """A random exact half of every weight kept (seed 0); None for biases."""
    generator = torch.Generator().manual_seed(0)
    masks: dict[str, Tensor | None] = {}
    for name, p in params.items():
        if name.endswith("weight"):
            order = torch.randperm(p.numel(), generator=generator)
            masks[name] = (order < p.numel() // 2).view(p.shape)
        else:
            masks[name] = None
    return masks


# --- the sides -----------------------------------------------------------------------------

Grads = tuple[Tensor, dict[str, Tensor]]  # loss, gradients by parameter name


@dataclasses.dataclass
class Side:
    """A way to take one step: ``grads()`` for the checks, ``step()`` to time."""

    name: str
    grads: Callable[[], Grads]
    step: Callable[[], Any]
    reset: Callable[[], None] = lambda: None


def sgd(params: dict[str, Tensor], grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """The update every side makes: one out-of-place ``p - LR * g`` per parameter."""
    return {name: torch.add(p, grads[name], alpha=-LR) for name, p in params.items()}


def functional_sides(
    model: nn.Module, params: dict[str, Tensor], masks: dict[str, Any], x: Tensor, y: Tensor
) -> list[Side]:
    projected = fs.apply_masks(params, masks)

    def dense_loss(p: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    def projected_loss(p: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(fs.functional_call(model, p, None, (x,)), y)

    def exact_loss(p: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(fs.functional_call(model, p, masks, (x,)), y)

    def swap(out: tuple[dict[str, Tensor], Tensor]) -> Grads:
        return out[1], out[0]

    def dense_step() -> Any:
        grads, loss = torch.func.grad_and_value(dense_loss)(projected)
        return sgd(projected, grads), loss

    def projected_step() -> Any:
        grads, loss = torch.func.grad_and_value(projected_loss)(projected)
        return fs.apply_masks_(sgd(projected, grads), masks), loss

    def exact_step() -> Any:
        grads, loss = torch.func.grad_and_value(exact_loss)(params)
        return sgd(params, grads), loss

    return [
        Side("dense", lambda: swap(torch.func.grad_and_value(dense_loss)(projected)), dense_step),
        Side(
            "fs projected",
            lambda: swap(torch.func.grad_and_value(projected_loss)(projected)),
            projected_step,
        ),
        Side("fs exact", lambda: swap(torch.func.grad_and_value(exact_loss)(params)), exact_step),
    ]


def module_side(
    name: str, module: nn.Module, trainable: dict[str, nn.Parameter], x: Tensor, y: Tensor
) -> Side:
    """A side that trains ``module`` by autograd; ``trainable`` maps our names to its params."""
    start = {key: p.data for key, p in trainable.items()}

    def grads() -> Grads:
        for p in trainable.values():
            p.grad = None
        loss = F.mse_loss(module(x), y)
        loss.backward()
        out = {key: p.grad for key, p in trainable.items()}
        for p in trainable.values():
            p.grad = None
        return loss.detach(), out  # type: ignore[return-value]

    def step() -> Any:
        loss = F.mse_loss(module(x), y)
        loss.backward()
        with torch.no_grad():
            for p in trainable.values():
                p.data = torch.add(p, p.grad, alpha=-LR)  # type: ignore[arg-type]
        for p in trainable.values():  # as zero_grad(): every gradient lives through the update
            p.grad = None
        return loss.detach()

    def reset() -> None:
        for key, p in trainable.items():
            p.data = start[key]

    return Side(name, grads, step, reset)


def fake_sparsity_side(
    model: nn.Module, masks: dict[str, Any], x: Tensor, y: Tensor
) -> tuple[Side, nn.Module]:
    ao_model = copy.deepcopy(model)
    names = [name for name, mask in masks.items() if mask is not None]
    sparsifier = WeightNormSparsifier()
    sparsifier.prepare(ao_model, config=[{"tensor_fqn": name} for name in names])
    with torch.no_grad():
        for name in names:
            owner = ao_model.get_submodule(name.rpartition(".")[0])
            owner.parametrizations.weight[0].mask.copy_(masks[name])  # type: ignore[union-attr, index]
    trainable = {}
    for raw, p in ao_model.named_parameters():
        trainable[raw.replace(".parametrizations.weight.original", ".weight")] = p
    return module_side("torch.ao FakeSparsity", ao_model, trainable, x, y), ao_model


def prune_side(
    model: nn.Module, masks: dict[str, Any], x: Tensor, y: Tensor
) -> tuple[Side, nn.Module]:
    pruned = copy.deepcopy(model)
    for name, mask in masks.items():
        if mask is not None:
            prune.custom_from_mask(pruned.get_submodule(name.rpartition(".")[0]), "weight", mask)
    trainable = {raw.removesuffix("_orig"): p for raw, p in pruned.named_parameters()}
    return module_side("nn.utils.prune", pruned, trainable, x, y), pruned


# --- checks and timing ---------------------------------------------------------------------


def check(sides: list[Side], masks: dict[str, Any]) -> list[str]:
    """Every side's loss and gradients at kept weights against the dense side's."""
    failures = []
    results = {side.name: side.grads() for side in sides}
    dense_loss, dense_grads = results["dense"]
    for side in sides:
        loss, grads = results[side.name]
        if not torch.allclose(loss, dense_loss, rtol=RTOL, atol=ATOL):
            failures.append(f"{side.name}: loss {loss.item()} != dense {dense_loss.item()}")
        for name, mask in masks.items():
            got, want = grads[name], dense_grads[name]
            kept = got if mask is None else got[mask]
            if not torch.allclose(kept, want if mask is None else want[mask], RTOL, ATOL):
                failures.append(f"{side.name}: gradient at kept entries of {name} differs")
            masked_side = side.name not in ("dense", "fs projected")
            if mask is not None and masked_side and not bool((got[~mask] == 0).all()):
                failures.append(f"{side.name}: gradient at pruned entries of {name} is not 0")
    return failures


@dataclasses.dataclass
class Result:
    """Timings (seconds) and minor page faults of every side's timed calls at one batch size."""

    tokens: int
    seconds: dict[str, list[float]]
    faults: dict[str, list[int]]

    def median_ms(self, side: str) -> float:
        return statistics.median(self.seconds[side]) * 1e3

    def overhead_ms(self, side: str) -> float:
        return self.median_ms(side) - self.median_ms("dense")

    def of_fake_sparsity(self, side: str) -> float:
        """``side``'s overhead over dense as a fraction of FakeSparsity's."""
        return self.overhead_ms(side) / self.overhead_ms("torch.ao FakeSparsity")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(side: Side) -> tuple[float, int]:
    """Seconds one step took and the minor page faults it made; reset and gc run untimed."""
    side.reset()
    gc.collect()
    faults = minor_faults()
    start = time.perf_counter()
    out = side.step()
    seconds = time.perf_counter() - start
    faults = minor_faults() - faults
    del out
    return seconds, faults


def run(layers: int, tokens: int, repeats: int) -> tuple[Result, list[str]]:
    model = transformer_stack(layers)
    params = {name: p.detach() for name, p in model.named_parameters()}
    masks = half_masks(params)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(tokens // SEQUENCE, SEQUENCE, 768, generator=generator)
    y = torch.randn(tokens // SEQUENCE, SEQUENCE, 768, generator=generator)
    # The module sides start from the projected params, as the functional ones see them.
    base = copy.deepcopy(model)
    fs.apply_masks_(dict(base.named_parameters()), masks)
    ao, ao_model = fake_sparsity_side(base, masks, x, y)
    pr, pruned = prune_side(base, masks, x, y)
    del base
    sides = [*functional_sides(model, params, masks, x, y), ao, pr]
    failures = check(sides, masks)
    for side in sides:  # untimed warm-up
        timed(side)
    seconds: dict[str, list[float]] = {side.name: [] for side in sides}
    faults: dict[str, list[int]] = {side.name: [] for side in sides}
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            took, faulted = timed(side)
            seconds[side.name].append(took)
            faults[side.name].append(faulted)
    del sides, ao_model, pruned
    gc.collect()
    return Result(tokens, seconds, faults), failures


# --- the mask work alone ------------------------------------------------------------------

MASK_WORK = ("fs projection", "fs exact masking", "FakeSparsity masking")


def mask_work(layers: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of the masking each side adds to a step, without the step around it.

    A whole step (0.5 to 1.7 s here) varies by more than the masking costs on a shared
    machine, so the masking is also timed alone, interleaved, on the same 84.9M weights and
    masks: ``fs projection`` is ``fs.apply_masks_`` on every weight (what the recommended
    step adds); ``fs exact masking`` is the forward ``w * mask`` of ``fs.functional_call``
    and its backward ``g * mask`` (the mask cast as there); ``FakeSparsity masking`` is the
    same two products with torch.ao's stored float masks. Gradients ``g`` are stand-ins of
    the weights' shapes.
    """
    model = transformer_stack(layers)
    params = {name: p.detach() for name, p in model.named_parameters()}
    masks = half_masks(params)
    weights = {name: params[name] for name, mask in masks.items() if mask is not None}
    bool_masks = {name: masks[name] for name in weights}
    float_masks = {name: mask.to(torch.float32) for name, mask in bool_masks.items()}
    grads = {name: torch.randn_like(w) for name, w in weights.items()}

    def projection() -> Any:
        return fs.apply_masks_(weights, bool_masks)

    def exact() -> Any:
        out = []
        for name, w in weights.items():
            cast = bool_masks[name].view(torch.uint8).to(w.dtype)
            out.append((w * cast, grads[name] * cast))
        return out

    def fake_sparsity() -> Any:
        return [(w * float_masks[n], grads[n] * float_masks[n]) for n, w in weights.items()]

    work = {"fs projection": projection, "fs exact masking": exact}
    work["FakeSparsity masking"] = fake_sparsity
    seconds: dict[str, list[float]] = {name: [] for name in MASK_WORK}
    for fn in work.values():  # untimed warm-up
        fn()
    for repeat in range(repeats):
        for name in MASK_WORK if repeat % 2 == 0 else MASK_WORK[::-1]:
            gc.collect()
            start = time.perf_counter()
            out = work[name]()
            seconds[name].append(time.perf_counter() - start)
            del out
    return seconds


def print_mask_work(seconds: dict[str, list[float]]) -> None:
    base = statistics.median(seconds["FakeSparsity masking"])
    print(f"{'mask work per step (alone)':<28}{'median ms':>10}{'of FakeSparsity':>17}")
    for name in MASK_WORK:
        median = statistics.median(seconds[name])
        print(f"{name:<28}{median * 1e3:>10.1f}{median / base:>16.2f}x")


# --- report --------------------------------------------------------------------------------


def goals(results: list[Result]) -> dict[str, bool]:
    checks = {}
    for r in results:
        checks[f"{r.tokens} tokens: fs projected overhead <= 0.5x FakeSparsity's"] = (
            r.of_fake_sparsity("fs projected") <= 0.5
        )
        checks[f"{r.tokens} tokens: fs exact no slower than FakeSparsity"] = r.median_ms(
            "fs exact"
        ) <= r.median_ms("torch.ao FakeSparsity")
    return checks


def print_table(results: list[Result]) -> None:
    header = (
        f"{'tokens':>6}  {'side':<22}{'median ms':>10}{'x dense':>9}"
        f"{'overhead ms':>13}{'of FakeSparsity overhead':>26}{'faults/step':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for side in SIDES:
            fraction = "" if side == "dense" else f"{r.of_fake_sparsity(side):.2f}"
            print(
                f"{r.tokens:>6}  {side:<22}{r.median_ms(side):>10.1f}"
                f"{r.median_ms(side) / r.median_ms('dense'):>8.2f}x"
                f"{r.overhead_ms(side):>13.1f}{fraction:>26}"
                f"{statistics.median(r.faults[side]):>13,.0f}"
            )


def write_json(
    path: Path,
    results: list[Result],
    args: argparse.Namespace,
    machine: dict[str, Any],
    work: dict[str, list[float]],
) -> None:
    payload = {
        "benchmark": "train_step",
        "settings": {
            "repeats": args.repeats,
            "quick": args.quick,
            "layers": args.layers,
            "threads": args.threads,
            "lr": LR,
            "check_rtol": RTOL,
            "check_atol": ATOL,
        },
        "machine": machine,
        "goals": goals(results),
        "cases": [
            {
                "tokens": r.tokens,
                "sides": {
                    side: {
                        "median_ms": r.median_ms(side),
                        "ratio_to_dense": r.median_ms(side) / r.median_ms("dense"),
                        "overhead_ms": r.overhead_ms(side),
                        "overhead_of_fake_sparsity": None
                        if side == "dense"
                        else r.of_fake_sparsity(side),
                        "ms": [s * 1e3 for s in r.seconds[side]],
                        "minor_page_faults": r.faults[side],
                    }
                    for side in SIDES
                },
            }
            for r in results
        ],
        "mask_work_alone": {
            name: {"median_ms": statistics.median(times) * 1e3, "ms": [t * 1e3 for t in times]}
            for name, times in work.items()
        },
    }
    write_payload(path, payload)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=5)
    parser.add_argument("--quick", action="store_true", help="2 blocks instead of 12 (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.layers = 2 if args.quick else 12
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}, {info['platform']}; "
        f"{args.layers} blocks, {args.repeats} repeats (load average {info['loadavg_1m']:.2f})"
    )
    results, failures = [], []
    for tokens in TOKENS:
        result, failed = run(args.layers, tokens, args.repeats)
        results.append(result)
        failures += [f"{tokens} tokens: {line}" for line in failed]
        print(f"  done {tokens} tokens", flush=True)
    print()
    print_table(results)
    work = mask_work(args.layers, args.repeats)
    print()
    print_mask_work(work)
    print()
    for goal, met in goals(results).items():
        print(f"  goal {goal}: {'met' if met else 'NOT met'}")
    info["loadavg_1m_after"] = os.getloadavg()[0]
    write_json(args.json, results, args, info, work)
    print(f"\nwrote {args.json}")
    if failures:
        print("ERROR: the sides disagree:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
