"""Benchmark: mask computation, torch.ao.pruning sparsifiers vs ``funcsparse.compute_masks``.

What it measures
----------------
For each case below, the wall-clock time (``time.perf_counter``) to compute every pruning
mask of a model once:

* torch.ao: ``sparsifier.step()`` on a deep copy of the model that was ``prepare()``-d once
  (config ``[{"tensor_fqn": name} for every weight]``). torch.ao scores
  ``getattr(module, "weight")``, which after the first step is the *already masked* weight,
  so every parametrization mask is reset to ones before each step, outside the timed region.
* funcsparse: ``fs.compute_masks(params, rules)`` with ``params = dict(model.named_parameters())``.

Cases:

* ``weightnorm-1x4``: ``fs.WeightNorm(0.5, sparse_block_shape=(1, 4))`` vs torch.ao's
  ``WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))``.
* ``weightnorm-1x1``: the same with ``sparse_block_shape=(1, 1)``.
* ``weightnorm-2:4``: level 1.0, ``sparse_block_shape=(1, 4), zeros_per_block=2``.
* ``nearlydiagonal-4096``: ``NearlyDiagonal(nearliness=3)`` on one ``nn.Linear(4096, 4096)``.

The WeightNorm cases run on a transformer-like stack of bias-free ``nn.Linear`` layers:
12 blocks of 4 x ``Linear(768, 768)`` (q, k, v, o), ``Linear(768, 3072)`` and
``Linear(3072, 768)``, 84.9M fp32 weights in 72 tensors (``--quick``: 2 blocks). The weights
are tie-free (see ``make_tie_free``) so that the masks can be compared bit for bit.

Each side runs once untimed first (allocator warm-up: the first run of large elementwise ops
is several times slower), then ``--repeats`` timed runs interleaved with the other side; the
order within a repeat alternates (ao first on even repeats, funcsparse first on odd ones).
``gc.collect()`` runs before every timed call, outside the timed region. Medians are reported.

After timing, every torch.ao mask (``.parametrizations.weight[0].mask``, cast with
``.bool()``) is compared with funcsparse's mask using ``torch.equal``; the script exits with
status 1 if any case differs (the count of differing entries is reported too).

Usage::

    python benchmarks/masks.py [--repeats N] [--json PATH] [--quick]

Results are printed as a table and written as JSON (default ``benchmarks/results/masks.json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _harness import base_parser, machine_info, timed, write_payload
from torch import nn
from torch.ao.pruning import BaseSparsifier, NearlyDiagonalSparsifier, WeightNormSparsifier

import funcsparse as fs

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "masks.json"


class Block(nn.Module):
    """The Linear layers of one transformer block (attention projections and MLP), no bias."""

    def __init__(self, width: int = 768, hidden: int = 3072) -> None:
        super().__init__()
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)


def transformer_stack(layers: int) -> nn.Module:
    """``layers`` blocks of bias-free Linear layers with tie-free weights (seed 0)."""
    torch.manual_seed(0)
    return make_tie_free(nn.Sequential(*(Block() for _ in range(layers))))


def make_tie_free(model: nn.Module) -> nn.Module:
    """Give every weight distinct magnitudes (so distinct squares), with random signs.

    torch.ao breaks ties by whatever ``topk`` returns and funcsparse by a documented rule,
    so masks are comparable bit for bit only on tie-free scores. Plain ``randn`` weights
    are not: among millions of float32 values, ``|w|`` repeats (``w == -w'``), and such a
    pair at the threshold makes the two libraries pick different (equally valid) entries.
    Magnitudes ``(n + perm) / 2n / 32`` are distinct in float32 for ``n < 2**22``, and so are
    their squares; the scale 1/32 is a power of two, so it rounds nothing.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            n = param.numel()
            perm = torch.randperm(n, generator=generator, dtype=torch.float64)
            signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
            values = (perm + n) / (2 * n) / 32 * signs
            param.copy_(values.view(param.shape))
    return model


def square_linear(size: int = 4096) -> nn.Module:
    """One bias-free ``nn.Linear(size, size)`` (path ``"0.weight"``), seeded with 0."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(size, size, bias=False))


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: a model, a torch.ao sparsifier factory and funcsparse rules."""

    name: str
    model: nn.Module
    make_sparsifier: Callable[[], BaseSparsifier]
    rules: dict[str, fs.MaskMethod]


@dataclasses.dataclass
class Result:
    """Timings (seconds) and the mask comparison of one case."""

    name: str
    n_weights: int
    n_params: int
    ao_s: list[float]
    fs_s: list[float]
    identical: bool
    n_diff_entries: int

    @property
    def ao_median_ms(self) -> float:
        return statistics.median(self.ao_s) * 1e3

    @property
    def fs_median_ms(self) -> float:
        return statistics.median(self.fs_s) * 1e3

    @property
    def ratio(self) -> float:
        return self.ao_median_ms / self.fs_median_ms


def weight_names(model: nn.Module) -> list[str]:
    """Dotted names of every ``weight`` parameter of ``model``."""
    return [name for name, _ in model.named_parameters() if name.endswith(".weight")]


def mask_modules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The module owning each weight in ``names`` (``"0.q.weight"`` -> ``model[0].q``)."""
    return {name: model.get_submodule(name.rpartition(".")[0]) for name in names}


def ao_mask(module: nn.Module) -> torch.Tensor:
    """The mask torch.ao's FakeSparsity parametrization holds for ``module.weight``."""
    mask: torch.Tensor = module.parametrizations.weight[0].mask  # type: ignore[union-attr, index]
    return mask


def reset_ao_masks(modules: dict[str, nn.Module]) -> None:
    """Set every mask to ones, so the next ``step()`` scores the unmasked weights."""
    with torch.no_grad():
        for module in modules.values():
            ao_mask(module).fill_(1)


def mismatches(expected: torch.Tensor, actual: torch.Tensor) -> int:
    """Entries where two masks differ (every entry of ``expected`` if the shapes differ)."""
    if expected.shape != actual.shape:
        return expected.numel()
    return int((expected != actual).sum())


def run_case(case: Case, repeats: int) -> Result:
    """Time both sides of ``case`` interleaved, then compare their masks."""
    names = weight_names(case.model)
    params = dict(case.model.named_parameters())

    ao_model = copy.deepcopy(case.model)
    sparsifier = case.make_sparsifier()
    sparsifier.prepare(ao_model, config=[{"tensor_fqn": name} for name in names])
    modules = mask_modules(ao_model, names)

    def fs_step() -> Any:
        return fs.compute_masks(params, case.rules)

    # Untimed warm-up of each side.
    reset_ao_masks(modules)
    sparsifier.step()
    fs_masks: Any = fs_step()

    ao_s: list[float] = []
    fs_s: list[float] = []
    for repeat in range(repeats):
        fs_masks = None  # free the previous masks before either side allocates
        order = ("ao", "fs") if repeat % 2 == 0 else ("fs", "ao")
        for side in order:
            if side == "ao":
                reset_ao_masks(modules)
                seconds, _ = timed(sparsifier.step)
                ao_s.append(seconds)
            else:
                seconds, fs_masks = timed(fs_step)
                fs_s.append(seconds)

    differing = [
        name for name in names if not torch.equal(ao_mask(modules[name]).bool(), fs_masks[name])
    ]
    n_diff = sum(mismatches(ao_mask(modules[name]).bool(), fs_masks[name]) for name in differing)
    result = Result(
        name=case.name,
        n_weights=len(names),
        n_params=sum(params[name].numel() for name in names),
        ao_s=ao_s,
        fs_s=fs_s,
        identical=not differing,
        n_diff_entries=n_diff,
    )
    del ao_model, sparsifier, modules, fs_masks
    gc.collect()
    return result


def build_cases(layers: int) -> list[Case]:
    """The four benchmark cases; the WeightNorm ones share one transformer stack."""
    stack = transformer_stack(layers)
    # (level, block config): torch.ao names the level sparsity_level, funcsparse sparsity.
    weightnorm: dict[str, tuple[float, dict[str, Any]]] = {
        "weightnorm-1x4": (0.5, {"sparse_block_shape": (1, 4)}),
        "weightnorm-1x1": (0.5, {"sparse_block_shape": (1, 1)}),
        "weightnorm-2:4": (1.0, {"sparse_block_shape": (1, 4), "zeros_per_block": 2}),
    }
    cases = [
        Case(
            name=name,
            model=stack,
            make_sparsifier=lambda level=level, kw=kwargs: WeightNormSparsifier(
                sparsity_level=level, **kw
            ),
            rules={"**.weight": fs.WeightNorm(level, **kwargs)},
        )
        for name, (level, kwargs) in weightnorm.items()
    ]
    cases.append(
        Case(
            name="nearlydiagonal-4096",
            model=square_linear(4096),
            make_sparsifier=lambda: NearlyDiagonalSparsifier(nearliness=3),
            rules={"0.weight": fs.NearlyDiagonal(nearliness=3)},
        )
    )
    return cases


def print_table(results: list[Result]) -> None:
    header = (
        f"{'case':<22}{'weights':>8}{'params':>12}{'torch.ao ms':>13}"
        f"{'funcsparse ms':>15}{'ao/fs':>8}  identical"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<22}{r.n_weights:>8}{r.n_params:>12,}{r.ao_median_ms:>13.1f}"
            f"{r.fs_median_ms:>15.1f}{r.ratio:>7.2f}x  {r.identical}"
        )


def write_json(
    path: Path, results: list[Result], args: argparse.Namespace, machine: dict[str, Any]
) -> None:
    payload = {
        "benchmark": "masks",
        "settings": {"repeats": args.repeats, "quick": args.quick, "layers": args.layers},
        "machine": machine,
        "cases": [
            {
                "name": r.name,
                "n_weights": r.n_weights,
                "n_params": r.n_params,
                "torch_ao_median_ms": r.ao_median_ms,
                "funcsparse_median_ms": r.fs_median_ms,
                "ratio_ao_over_fs": r.ratio,
                "identical": r.identical,
                "n_diff_entries": r.n_diff_entries,
                "torch_ao_ms": [s * 1e3 for s in r.ao_s],
                "funcsparse_ms": [s * 1e3 for s in r.fs_s],
            }
            for r in results
        ],
    }
    write_payload(path, payload)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, DEFAULT_JSON, repeats=5)
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12 (smoke test)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.layers = 2 if args.quick else 12
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(
        f"torch {info['torch']}, threads {info['torch_num_threads']}, {info['platform']}; "
        f"{args.layers} layers, {args.repeats} repeats (load average {info['loadavg_1m']:.2f})"
    )
    results = []
    for case in build_cases(args.layers):
        results.append(run_case(case, args.repeats))
        print(f"  done {case.name}", flush=True)
    print()
    print_table(results)
    info["loadavg_1m_after"] = os.getloadavg()[0]
    write_json(args.json, results, args, info)
    print(f"\nwrote {args.json}")
    if not all(r.identical for r in results):
        differ = ", ".join(
            f"{r.name} ({r.n_diff_entries} entries)" for r in results if not r.identical
        )
        print(f"ERROR: torch.ao and funcsparse masks differ in: {differ}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
