"""The demo's comparison with torch.ao.pruning: the same masks, on the same model, timed.

For one level and one set of trained params, the masks of every ``*.weight`` are computed
by ``fs.compute_masks`` with the demo's ``WeightNorm`` and by
``torch.ao.pruning.WeightNormSparsifier`` with the same level and blocks, on a copy of the
model that holds those params. The repetitions interleave the contenders (their order
alternates), and every repetition starts from fresh masks. The masks are compared bit for
bit.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.pruning.sparsifier.weight_norm_sparsifier import WeightNormSparsifier

import funcsparse as fs
from funcsparse.demo_train import BLOCK, method

__all__ = ["compare_with_torch_ao"]

Params = dict[str, Tensor]


def _ao_masks(sparsifier: WeightNormSparsifier, names: list[str]) -> dict[str, Tensor]:
    """The masks torch.ao's FakeSparsity parametrizations hold, as bool tensors."""
    masks = {}
    for name, group in zip(names, sparsifier.groups, strict=True):
        module: Any = group["module"]
        masks[name] = module.parametrizations[group["tensor_name"]][0].mask.bool()
    return masks


def compare_with_torch_ao(
    model: nn.Module, params: Params, *, level: float, repeats: int
) -> dict[str, Any]:
    """Time the masks of every weight at ``level``: funcsparse against torch.ao.pruning.

    Timed, ``repeats`` times each, interleaved: ``fs.compute_masks(params, rules)``;
    torch.ao's ``prepare`` + ``step`` on a fresh copy of the model (copied untimed); and
    torch.ao's ``step`` alone on a prepared copy whose masks are reset to ones before each
    repetition (so it scores the unmasked weights, as a fresh ``prepare`` would).

    Examples:
        >>> from funcsparse.demo_train import make_model
        >>> model = make_model(0)
        >>> params = {k: v.detach() for k, v in model.named_parameters()}
        >>> timing = compare_with_torch_ao(model, params, level=0.5, repeats=1)
        >>> timing["identical"], timing["weights"]
        (True, 3)

    Args:
        model: the architecture (never mutated: torch.ao works on copies).
        params: the trained params, as ``named_parameters()`` names them.
        level: the sparsity of every weight.
        repeats: repetitions of each contender, at least 1.

    Returns:
        A dict: ``level``, ``weights`` (how many masks), ``repeats``, the medians in
        milliseconds ``funcsparse_ms``, ``torch_ao_prepare_step_ms``, ``torch_ao_step_ms``,
        the ratios ``ratio_prepare_step`` and ``ratio_step`` (torch.ao over funcsparse),
        every timing in ``*_all_ms`` lists, ``identical`` (every mask equal bit for bit)
        and ``differing`` (the paths whose masks differ).
    """
    names = [name for name in params if name.endswith(".weight")]
    rules = {"*.weight": method(level)}
    config = [{"tensor_fqn": name} for name in names]
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in params.items():
            trained.get_parameter(name).copy_(value)

    def new_sparsifier() -> Any:  # Any: torch.ao's methods are untyped
        return WeightNormSparsifier(sparsity_level=level, sparse_block_shape=BLOCK)

    prepared = copy.deepcopy(trained)
    stepper = new_sparsifier()
    stepper.prepare(prepared, config=config)
    times: dict[str, list[float]] = {"fs": [], "ao": [], "ao_step": []}
    fs_masks: Any = None
    ao_masks: dict[str, Tensor] = {}
    for repeat in range(repeats):
        order = ("fs", "ao", "ao_step") if repeat % 2 == 0 else ("ao_step", "ao", "fs")
        for side in order:
            if side == "fs":
                start = time.perf_counter()
                fs_masks = fs.compute_masks(params, rules)
                times[side].append(time.perf_counter() - start)
            elif side == "ao":
                fresh, sparsifier = copy.deepcopy(trained), new_sparsifier()
                start = time.perf_counter()
                sparsifier.prepare(fresh, config=config)
                sparsifier.step()
                times[side].append(time.perf_counter() - start)
                ao_masks = _ao_masks(sparsifier, names)
            else:
                with torch.no_grad():
                    for mask in _ao_masks_raw(stepper):
                        mask.fill_(1)
                start = time.perf_counter()
                stepper.step()
                times[side].append(time.perf_counter() - start)
    step_masks = _ao_masks(stepper, names)
    differing = [
        name
        for name in names
        if not (torch.equal(fs_masks[name], ao_masks[name]))
        or not torch.equal(fs_masks[name], step_masks[name])
    ]
    medians = {side: statistics.median(seconds) * 1e3 for side, seconds in times.items()}
    return {
        "level": level,
        "weights": len(names),
        "repeats": repeats,
        "funcsparse_ms": medians["fs"],
        "torch_ao_prepare_step_ms": medians["ao"],
        "torch_ao_step_ms": medians["ao_step"],
        "ratio_prepare_step": medians["ao"] / medians["fs"],
        "ratio_step": medians["ao_step"] / medians["fs"],
        "funcsparse_all_ms": [s * 1e3 for s in times["fs"]],
        "torch_ao_prepare_step_all_ms": [s * 1e3 for s in times["ao"]],
        "torch_ao_step_all_ms": [s * 1e3 for s in times["ao_step"]],
        "identical": not differing,
        "differing": differing,
    }


def _ao_masks_raw(sparsifier: WeightNormSparsifier) -> list[Tensor]:
    """The mask tensors themselves (to reset them in place)."""
    masks = []
    for group in sparsifier.groups:
        module: Any = group["module"]
        masks.append(module.parametrizations[group["tensor_name"]][0].mask)
    return masks
