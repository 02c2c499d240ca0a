"""Calibration statistics as data: input activation norms of linear layers, without hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from funcsparse._apply import apply_masks, functional_call
from funcsparse._tree import flatten_with_paths, unflatten
from funcsparse.methods._base import describe

__all__ = ["collect_input_norms"]

_FUNCTION = "collect_input_norms"


class _LinearInputs(TorchFunctionMode):
    """Adds each input feature's sum of squares (float64) for the watched linear weights.

    A weight is matched by identity (``is``) with the tensors handed to the forward, so a
    copy, a view or a weight computed inside the module is never mistaken for it.
    """

    def __init__(self, watched: dict[int, Tensor]) -> None:
        super().__init__()
        self.watched = watched
        self.sums: dict[int, Tensor] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs.get("input")
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            key = id(weight)
            if isinstance(x, Tensor) and self.watched.get(key) is weight:
                self._add(key, x)
        return func(*args, **kwargs)

    def _add(self, key: int, x: Tensor) -> None:
        device = torch.device("cpu") if x.device.type == "mps" else x.device  # no float64 on MPS
        tokens = x.detach().reshape(-1, x.shape[-1]).to(device=device, dtype=torch.float64)
        squares = tokens.square().sum(0)
        total = self.sums.get(key)
        self.sums[key] = squares if total is None else total + squares


def _as_args(index: int, batch: object) -> tuple[Any, ...]:
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    raise TypeError(
        f"{_FUNCTION}: batch {index} is {describe(batch)}; a batch is an input tensor or a "
        "tuple of positional arguments"
    )


def _linear_weight_paths(module: nn.Module) -> list[str]:
    return [
        f"{name}.weight" if name else "weight"
        for name, sub in module.named_modules(remove_duplicate=False)
        if isinstance(sub, nn.Linear)
    ]


def collect_input_norms(
    module: nn.Module,
    params: Any,
    batches: Iterable[Any],
    *,
    paths: Sequence[str] | None = None,
    masks: Any = None,
) -> Any:
    """The L2 norm of every input feature of the linear layers over calibration batches.

    Runs every batch through ``fs.functional_call(module, params, masks, batch)`` under
    ``torch.no_grad()`` and watches ``torch.nn.functional.linear``: where its weight is one of
    the tensors of ``params`` (by identity), the input's features are summed as squares over
    every token (all leading dimensions flattened) and every batch, in float64. The result
    is ``sqrt`` of those sums: ``||X_j||_2`` in Wanda's score ``|W_ij| * ||X_j||_2``
    (``fs.Wanda``, :func:`funcsparse.scores.wanda_scores`). A weight used by several calls
    accumulates the inputs of all of them.

    Nothing is registered on or changed in ``module`` (no hooks; ``torch.func.functional_call``
    swaps the parameters in for the call and back). The module runs in the mode it is in:
    call ``module.eval()`` yourself for statistics without dropout.

    Only ``F.linear`` calls made directly by the forward are seen: a weight used inside
    another overridable function (``nn.MultiheadAttention``'s ``out_proj`` inside
    ``F.multi_head_attention_forward``) is not.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from funcsparse.calibration import collect_input_norms
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> params = {name: p.detach() for name, p in model.named_parameters()}
        >>> batches = [torch.tensor([[3.0, 1.0]]), torch.tensor([[4.0, -1.0], [0.0, 1.0]])]
        >>> norms = collect_input_norms(model, params, batches)
        >>> norms["0.weight"]  # sqrt(9 + 16 + 0), sqrt(1 + 1 + 1)
        tensor([5.0000, 1.7321], dtype=torch.float64)
        >>> norms["0.bias"] is None, norms["2.weight"].shape
        (True, torch.Size([3]))

    Args:
        module: the model.
        params: a pytree of tensors whose dotted leaf paths name parameters or buffers of
            ``module`` (``dict(module.named_parameters())`` or a part of it).
        batches: an iterable of calibration batches, each an input tensor or a tuple (or list)
            of positional arguments for ``module``.
        paths: the leaf paths to collect norms for, each a 2-D weight in ``params`` that
            reaches ``F.linear``. Default None: the weight of every ``nn.Linear`` submodule
            that is in ``params`` (one that the batches never reach gets None).
        masks: masks applied to ``params`` during calibration (e.g. the layers pruned so
            far, as in the paper's layer-by-layer procedure). Default None: the dense model.

    Returns:
        A pytree of ``params``' structure: a float64 tensor of shape ``(in_features,)`` at
        every collected weight, None elsewhere. Plug it into
        ``fs.compute_masks(params, rules, input_norms=...)``.

    Raises:
        ValueError: no batches; a path in ``paths`` is not a leaf of ``params``, is not a 2-D
            tensor, or never reached ``F.linear`` in the calibration forward; or, as
            ``fs.functional_call``, a leaf path names nothing in ``module``.
        TypeError: a batch is neither a tensor nor a tuple or list; ``paths`` is a string.

    References:
        M. Sun, Z. Liu, A. Bair, J. Z. Kolter. A Simple and Effective Pruning Approach for
        Large Language Models. ICLR 2024. arXiv:2306.11695.
    """
    run_params = params if masks is None else apply_masks(params, masks)
    leaf_paths, leaves, spec = flatten_with_paths(run_params, function=_FUNCTION)
    index = {path: i for i, path in enumerate(leaf_paths)}
    if paths is None:
        wanted = [path for path in _linear_weight_paths(module) if path in index]
        required = False
    else:
        if isinstance(paths, str):
            raise TypeError(f"{_FUNCTION}: paths must be a sequence of leaf paths, got {paths!r}")
        wanted = list(dict.fromkeys(paths))
        required = True
        for path in wanted:
            if path not in index:
                raise ValueError(
                    f"{_FUNCTION}: {path!r} in paths is not a leaf of params "
                    f"(leaves: {leaf_paths[:8]})"
                )
    for path in wanted:
        leaf = leaves[index[path]]
        if not isinstance(leaf, Tensor) or leaf.dim() != 2:
            raise ValueError(
                f"{_FUNCTION}: the leaf at {path!r} is {describe(leaf)}; input norms are "
                "collected for 2-D weights (out_features, in_features)"
            )
    watched = {id(leaves[index[path]]): leaves[index[path]] for path in wanted}
    no_masks = unflatten(spec, [None] * len(leaves))
    mode = _LinearInputs(watched)
    seen_batches = 0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            args = _as_args(i, batch)
            with mode:
                functional_call(module, run_params, no_masks, args)
            seen_batches += 1
    if seen_batches == 0:
        raise ValueError(f"{_FUNCTION}: batches is empty; give at least one calibration batch")
    norms: list[Tensor | None] = [None] * len(leaves)
    for path in wanted:
        total = mode.sums.get(id(leaves[index[path]]))
        if total is None:
            if required:
                raise ValueError(
                    f"{_FUNCTION}: the weight at {path!r} never reached "
                    "torch.nn.functional.linear in the calibration forward"
                )
            continue
        norms[index[path]] = total.sqrt()
    return unflatten(spec, norms)
