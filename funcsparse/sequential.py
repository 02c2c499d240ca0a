"""Block-by-block calibration and pruning of models too large to hold twice in memory.

The SparseGPT and Wanda reference pipelines prune a transformer one block at a time: the
inputs of the first block are captured for every calibration batch, then each block is
calibrated on its current inputs, pruned, and run (pruned) to give the next block its
inputs. Only one block's statistics and one set of activations (one hidden state per
calibration batch) exist at a time. :func:`prune_blocks` is that loop over any stack of
modules whose blocks chain: each block's first output is the next block's first input.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from funcsparse._errors import describe, short_repr
from funcsparse._prune import Pruned, prune
from funcsparse._rules import Assignment, assign_rules, glob_to_regex, is_pattern
from funcsparse.calibration import STATISTICS, as_call, check_batches, collect_statistics
from funcsparse.methods._base import GlobalMethod, MaskMethod

__all__ = ["prune_blocks"]

_FUNCTION = "prune_blocks"
#: The keyword data a block's calibration can collect (the names methods read them by).
_COLLECTABLE = frozenset(STATISTICS)

# One block's inputs for one calibration batch: positional and keyword arguments.
_Call = tuple[tuple[Any, ...], dict[str, Any]]


class _Captured(Exception):
    """Raised by the capture hook to stop the model's forward at the first block."""


def prune_blocks(
    model: nn.Module,
    batches: Iterable[Any],
    rules: Mapping[str, MaskMethod | None],
    *,
    blocks: str | Sequence[str],
    progress: bool | None = None,
    in_place: bool = False,
) -> Pruned:
    """Prune ``model`` one block at a time, each block calibrated on the pruned blocks' outputs.

    The sequential one-shot pipeline of SparseGPT and Wanda, for models that do not fit in
    memory twice:

    1. The model runs on every batch until its first block is called; the block's inputs
       (positional and keyword arguments) are kept and the rest of the forward is skipped.
    2. For each block in turn: the statistics its rules' methods read (``input_norms`` for
       ``fs.Wanda``, ``hessian`` for ``fs.SparseGPT``: the names in ``type(method).
       leaf_data``) are collected on the block's current inputs; the block's leaves are
       pruned with :func:`funcsparse.prune` (masks, and for SparseGPT the updated kept
       weights); the pruned block runs on every input, and its outputs replace the inputs
       one by one, so that one set of activations is held at a time. The block's
       statistics are dropped before the next block.

    Block ``k`` is therefore calibrated on what the pruned blocks ``0..k-1`` give it, not on
    the dense model's activations: later blocks correct for the earlier blocks' pruning,
    which is what the papers do.

    What a block may be: any module of ``model`` called once per forward with its hidden
    state as its first argument (positional, or the first parameter of its ``forward``
    given by keyword). It returns a tensor, or a tuple or list whose first element is the
    next hidden state (as Hugging Face decoder layers do); that value is the next block's
    input. The blocks chain: nothing runs between two blocks (a norm between them would be
    skipped; make it part of a block). The keyword arguments captured at the first block
    (an attention mask, position ids, rotary embeddings) are passed unchanged to every
    block: the blocks of a stack share them. Pass what turns caches off in the batches
    (``use_cache=False`` for Hugging Face models), so that no block writes to a cache.

    Rules name leaves by the model's full parameter paths (``"layers.3.mlp.fc1.weight"``,
    ``"layers.*.**.weight"``, ``"**.weight"``), as in :func:`funcsparse.compute_masks`, and
    each block is pruned with the rules of its own leaves. A rule that matches a leaf
    outside every block (an embedding, the head) is a ValueError naming it: those leaves
    are never calibrated here; exclude them with None (``{"lm_head.weight": None}``) or
    narrow the pattern. A global method (``fs.GlobalMagnitude``) is refused: it would rank
    within one block at a time.

    Memory: besides the model, one block's statistics (Wanda: one float64 norm per input
    feature; SparseGPT: an ``in x in`` float64 Hessian per weight), the inputs of one block
    for every batch, and one block's pruning work. With ``in_place=True`` the pruned (and
    updated) weights are written into the model's own parameters block by block, so the
    model never exists twice: the mode for large models. With ``in_place=False`` (default)
    nothing is mutated and the pruned leaves are new tensors (as many bytes as the pruned
    weights). ``benchmarks/sequential.py`` measures the peak against the weights' size.

    Nothing else of the model changes: its buffers run as copies (BatchNorm in train mode
    updates copies), and the hook that captures the first block's inputs is removed
    before the call returns. The model runs in the mode it is in: call ``model.eval()``
    for calibration without dropout. Every forward runs under ``torch.no_grad()``.

    Examples:
        >>> import torch, funcsparse as fs
        >>> from torch import nn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at 0x...>
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        ...     def forward(self, x):
        ...         return x + self.fc2(torch.relu(self.fc1(x)))
        >>> model = nn.Sequential(nn.Linear(4, 8), *[Block() for _ in range(3)])
        >>> batches = [torch.randn(2, 5, 4) for _ in range(4)]
        >>> pruned = fs.prune_blocks(
        ...     model, batches, {"*.fc*.weight": fs.Wanda(0.5)}, blocks="[1-3]", progress=False
        ... )
        >>> [(name, mask.float().mean().item()) for name, mask in pruned.masks.items()
        ...  if mask is not None][:2]
        [('1.fc1.weight', 0.5), ('1.fc2.weight', 0.5)]
        >>> bool((model[1].fc1.weight == 0).any())  # in_place=False: the model is untouched
        False
        >>> out = torch.func.functional_call(model, pruned.params, (batches[0],))

    Args:
        model: the model; its forward is called as ``model(*args, **kwargs)`` for every
            batch.
        batches: calibration batches, any iterable (a list, a DataLoader, a generator),
            consumed once. Each batch is what the model is called with: a tensor (one
            positional argument), a mapping (keyword arguments: a tokenizer's output with
            ``input_ids`` and ``attention_mask``), an ``(args, kwargs)`` pair, or a tuple or
            list of positional arguments, as :func:`funcsparse.collect_input_norms` takes.
        rules: full leaf paths or glob patterns mapped to methods (or None to exclude),
            matching leaves inside the blocks only.
        blocks: the blocks in execution order: a glob pattern over module names
            (``"layers.*"``, ``"model.layers.*"``, ``"encoder.layer.*"``; ``*`` stays within
            one name component), taken in the order of ``model.named_modules()``, or a
            sequence of module names in the order they run.
        progress: a progress bar over the blocks on stderr (tqdm where installed, else one
            line per block). None (default): shown when stderr is a terminal; True: always;
            False: never.
        in_place: write each block's pruned weights into the model's own parameters (under
            ``torch.no_grad()``) before the next block; the returned params are then the
            model's own parameters. Default False: nothing is mutated.

    Returns:
        ``fs.Pruned(masks, params, info)`` over ``dict(model.named_parameters())``: a bool
        mask for every leaf a rule prunes and None elsewhere; the params with every pruned
        leaf replaced (zeroed where pruned; SparseGPT's kept weights updated) and every
        other leaf the model's own tensor; ``info`` as :func:`funcsparse.prune` reports it,
        keyed by full leaf paths.

    Raises:
        TypeError: ``model`` is not a module; ``batches`` is a tensor or not iterable, or a
            batch is none of the forms above; ``rules`` is not a mapping of str to methods;
            ``blocks`` is neither a str nor a sequence of str; ``progress`` or ``in_place``
            is not a bool (progress: or None); a block returns something other than a
            tensor, tuple or list.
        ValueError: ``blocks`` matches no module, names a module that does not exist, names
            the model itself, names one block twice or a block inside another; a rule key
            matches no leaf, or matches a leaf outside the blocks; a rule's method is global
            or reads data that cannot be collected (``scores``); ``batches`` is empty; the
            first block is never called by the model's forward; a block's hidden state
            cannot be found among its inputs; statistics cannot be collected for a pruned
            weight (as :func:`funcsparse.collect_input_norms` raises).

    References:
        E. Frantar, D. Alistarh. SparseGPT: Massive Language Models Can Be Accurately
        Pruned in One-Shot. ICML 2023. arXiv:2301.00774.

        M. Sun, Z. Liu, A. Bair, J. Z. Kolter. A Simple and Effective Pruning Approach for
        Large Language Models. ICLR 2024. arXiv:2306.11695.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_FUNCTION}: model must be a torch.nn.Module, got {describe(model)}")
    check_batches(batches, function=_FUNCTION)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"{_FUNCTION}: progress must be a bool or None, got {describe(progress)}")
    if not isinstance(in_place, bool):
        raise TypeError(f"{_FUNCTION}: in_place must be a bool, got {describe(in_place)}")
    names = _block_names(model, blocks)
    params = dict(model.named_parameters())
    paths = list(params)
    assignments = dict(zip(paths, assign_rules(paths, rules, function=_FUNCTION), strict=True))
    per_block = _rules_per_block(names, assignments)

    inputs = _capture_inputs(model, names[0], batches)
    masks: dict[str, Tensor | None] = dict.fromkeys(paths)
    new_params: dict[str, Tensor] = dict(params)
    info: dict[str, dict[str, float]] = {}
    bar = _Progress(names, progress)
    try:
        for k, name in enumerate(names):
            block = model.get_submodule(name)
            block_rules = per_block[name]
            pruned_params = _prune_block(name, block, block_rules, inputs)
            prefix = name + "."
            if in_place and block_rules:
                with torch.no_grad():
                    for local, value in pruned_params.params.items():
                        own = params.get(prefix + local)
                        if own is not None and value is not own:
                            own.copy_(value)
                run_params: dict[str, Tensor] = {}
            else:
                run_params = dict(pruned_params.params)
            for local, mask in pruned_params.masks.items():
                full = prefix + local
                if full in masks and mask is not None:
                    masks[full] = mask
                    if not in_place:
                        new_params[full] = pruned_params.params[local]
            for local, leaf_info in pruned_params.info.items():
                info[prefix + local] = leaf_info
            del pruned_params  # one block's new weights and statistics at a time
            if k + 1 < len(names):
                _advance(name, block, run_params, inputs)
            bar.update(name)
    finally:
        bar.close()
    return Pruned(masks, new_params, info)


def _block_names(model: nn.Module, blocks: object) -> list[str]:
    """The names of the blocks, checked: existing, distinct, not nested, not the model."""
    modules = dict(model.named_modules())
    shown = [short_repr(name) for name in list(modules)[1:9]]
    if isinstance(blocks, str):
        if blocks in modules:
            names = [blocks]
        else:
            regex = glob_to_regex(blocks) if is_pattern(blocks) else None
            names = [n for n in modules if n and regex is not None and regex.fullmatch(n)]
        if not names:
            raise ValueError(
                f"{_FUNCTION}: blocks={short_repr(blocks)} matches no module of the model; "
                f"its modules are [{', '.join(shown)}, ...] (``*`` matches within one "
                "name component: 'layers.*' matches 'layers.0', not 'layers.0.mlp')"
            )
    elif isinstance(blocks, Sequence) and not isinstance(blocks, (bytes, bytearray)):
        names = []
        for name in blocks:
            if not isinstance(name, str):
                raise TypeError(
                    f"{_FUNCTION}: blocks holds {describe(name)}; block names are str module "
                    "names (model.named_modules())"
                )
            if name not in modules:
                raise ValueError(
                    f"{_FUNCTION}: blocks names {short_repr(name)}, which is not a module of "
                    f"the model (modules: [{', '.join(shown)}, ...])"
                )
            names.append(name)
        if not names:
            raise ValueError(f"{_FUNCTION}: blocks is empty; name at least one block")
    else:
        raise TypeError(
            f"{_FUNCTION}: blocks must be a glob pattern over module names (e.g. 'layers.*') "
            f"or a sequence of module names, got {describe(blocks)}"
        )
    if "" in names:
        raise ValueError(
            f"{_FUNCTION}: blocks names the model itself (''); the blocks are submodules "
            "that the model's forward calls in turn"
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{_FUNCTION}: blocks names {short_repr(name)} twice")
        seen.add(name)
    for name in names:
        for other in names:
            if other.startswith(name + "."):
                raise ValueError(
                    f"{_FUNCTION}: block {short_repr(other)} is inside block "
                    f"{short_repr(name)}; blocks must not nest"
                )
    return names


def _rules_per_block(
    names: list[str], assignments: dict[str, Assignment | None]
) -> dict[str, dict[str, MaskMethod]]:
    """Each block's rules as exact local paths; errors for leaves outside and bad methods."""
    per_block: dict[str, dict[str, MaskMethod]] = {name: {} for name in names}
    outside: dict[str, list[str]] = {}
    for path, assignment in assignments.items():
        if assignment is None:
            continue
        method = assignment.method
        if isinstance(method, GlobalMethod):
            raise ValueError(
                f"{_FUNCTION}: rule {short_repr(assignment.key)} maps to "
                f"{type(method).__name__}, a global method that ranks all its leaves at "
                "once; prune_blocks prunes one block at a time. Use a per-leaf method "
                "(per-block levels: fs.distributions) or fs.compute_masks on the whole model"
            )
        unknown = sorted(method.leaf_data - _COLLECTABLE)
        if method.needs_data and not method.leaf_data & _COLLECTABLE:
            raise ValueError(
                f"{_FUNCTION}: rule {short_repr(assignment.key)} maps to "
                f"{type(method).__name__}, which reads {unknown}; prune_blocks collects "
                f"only {sorted(_COLLECTABLE)} on each block's inputs"
            )
        owner = next((name for name in names if path.startswith(name + ".")), None)
        if owner is None:
            outside.setdefault(assignment.key, []).append(path)
        else:
            per_block[owner][path[len(owner) + 1 :]] = method
    if outside:
        key, leaves = next(iter(outside.items()))
        more = "" if len(leaves) <= 4 else f", ... ({len(leaves)} in all)"
        raise ValueError(
            f"{_FUNCTION}: rule {short_repr(key)} matches leaves outside the blocks "
            f"({', '.join(short_repr(p) for p in leaves[:4])}{more}); prune_blocks prunes "
            "inside the blocks only: exclude them with None (e.g. {'lm_head.weight': None}) "
            "or narrow the pattern to the blocks"
        )
    return per_block


def _buffer_copies(module: nn.Module) -> dict[str, Tensor]:
    """A copy of every buffer, so that a forward updating them (BatchNorm) changes nothing."""
    return {name: b.clone() for name, b in module.named_buffers(remove_duplicate=False)}


def _capture_inputs(model: nn.Module, first: str, batches: Iterable[Any]) -> list[_Call]:
    """The first block's ``(args, kwargs)`` for every batch; the rest of each forward skipped."""
    block = model.get_submodule(first)
    captured: list[_Call] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((tuple(args), dict(kwargs)))
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                args, kwargs = as_call(i, batch, function=_FUNCTION)
                before = len(captured)
                try:
                    torch.func.functional_call(model, _buffer_copies(model), args, kwargs)
                except _Captured:
                    pass  # the first block's inputs are kept; the rest is not run
                except TypeError as err:  # the call itself (a keyword the model lacks, ...)
                    raise TypeError(
                        f"{_FUNCTION}: batch {i}: calling the model raised TypeError: "
                        f"{short_repr(str(err))} (do the batch's arguments match the "
                        "model's forward?)"
                    ) from err
                if len(captured) == before:
                    raise ValueError(
                        f"{_FUNCTION}: batch {i}: the model's forward never called the first "
                        f"block {short_repr(first)} (is it a module the forward uses?)"
                    )
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"{_FUNCTION}: batches is empty; give at least one calibration batch")
    return captured


def _collect(
    name: str, block: nn.Module, rules: dict[str, MaskMethod], inputs: list[_Call]
) -> dict[str, Any]:
    """The statistics the block's methods read, as keyword data trees for the block."""
    wanted: dict[str, list[str]] = {}
    for path, method in rules.items():
        for stat in sorted(method.leaf_data & _COLLECTABLE):
            wanted.setdefault(stat, []).append(path)
    if not wanted:
        return {}
    pairs = [(list(args), kwargs) for args, kwargs in inputs]
    lists = list(wanted.values())
    # Each statistic only where a method reads it (a Hessian costs 8 * in^2 bytes).
    paths: Any = (  # a mapping: one list of paths per statistic
        lists[0] if all(p == lists[0] for p in lists) else wanted
    )
    try:
        return collect_statistics(
            block, dict(block.named_parameters()), pairs, statistics=tuple(wanted), paths=paths
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"{_FUNCTION}: block {short_repr(name)}: {err}") from err


def _prune_block(
    name: str, block: nn.Module, rules: dict[str, MaskMethod], inputs: list[_Call]
) -> Pruned:
    """The block's masks and pruned params (block-local paths); the statistics dropped."""
    params = dict(block.named_parameters())
    if not rules:
        return Pruned(dict.fromkeys(params), params, {})
    data = _collect(name, block, rules, inputs)
    try:
        with torch.no_grad():  # new values, not a graph hanging from the model's parameters
            return prune(params, rules, **data)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{_FUNCTION}: block {short_repr(name)}: {err}") from err


def _advance(name: str, block: nn.Module, params: dict[str, Tensor], inputs: list[_Call]) -> None:
    """Replace every input of ``block`` by the next block's input (its first output)."""
    where = _hidden_position(name, block, inputs[0])
    with torch.no_grad():
        for i, (args, kwargs) in enumerate(inputs):
            call = {**_buffer_copies(block), **params}
            out = torch.func.functional_call(block, call, args, kwargs)
            hidden = _first_output(name, i, out)
            if isinstance(where, int):
                inputs[i] = ((hidden, *args[1:]), kwargs)
            else:
                inputs[i] = (args, {**kwargs, where: hidden})


def _hidden_position(name: str, block: nn.Module, call: _Call) -> int | str:
    """Where a block's hidden state is among its inputs: 0 (positional) or a keyword."""
    args, kwargs = call
    if args:
        return 0
    try:
        parameters = list(inspect.signature(block.forward).parameters)
    except (TypeError, ValueError):
        parameters = []
    if parameters and parameters[0] in kwargs:
        return parameters[0]
    raise ValueError(
        f"{_FUNCTION}: block {short_repr(name)} is called with keyword arguments only "
        f"({sorted(kwargs)[:6]}) and none is the first parameter of its forward "
        f"({parameters[:1]}); the hidden state must be its first argument"
    )


def _first_output(name: str, index: int, out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(
        f"{_FUNCTION}: block {short_repr(name)} returned {describe(out)} on batch {index}; a "
        "block returns its hidden state: a tensor, or a tuple or list whose first element "
        "is it"
    )


class _Progress:
    """A progress bar over the blocks: tqdm where installed, else one line per block."""

    def __init__(self, names: list[str], progress: bool | None) -> None:
        show = sys.stderr.isatty() if progress is None else progress
        self.total = len(names)
        self.done = 0
        self.start = time.perf_counter()
        self.bar: Any = None
        self.lines = False
        if not show:
            return
        try:
            tqdm: Any = importlib.import_module("tqdm")
        except ImportError:
            self.lines = True
            return
        self.bar = tqdm.tqdm(total=self.total, desc=_FUNCTION, unit="block", file=sys.stderr)

    def update(self, name: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update(1)
        elif self.lines:
            elapsed = time.perf_counter() - self.start
            print(
                f"{_FUNCTION}: block {self.done}/{self.total} {name!r} pruned ({elapsed:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
