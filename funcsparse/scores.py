"""Importance scores: pure functions from a params pytree (and its data) to a scores pytree.

Every function returns a pytree of ``params``' structure with a score tensor of the leaf's
shape where a score applies and None elsewhere, so the result plugs straight into
``fs.compute_masks(params, rules, scores=scores)``: a score-reading method (``fs.WeightNorm``
and others) then ranks the scores instead of the weights. A lower score is pruned first.
Nothing is detached here; ``compute_masks`` detaches what it reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from funcsparse._errors import describe
from funcsparse._select import is_plain
from funcsparse._tree import describe_structure_mismatch, flatten_with_paths, leaves_like, unflatten

__all__ = ["magnitude_scores", "saliency_scores", "wanda_scores"]


#: The floating dtypes scores are computed in (float8 has too few bits to rank, and no
#: method takes float8 scores).
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOATS_SHOWN = "float16, bfloat16, float32, float64"


def _scorable(leaf: object) -> bool:
    """A tensor whose magnitude means something: floating point or complex."""
    return isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex())


def _check_dtype(
    function: str, what: str, path: str, tensor: Tensor, *, complex_ok: bool = False
) -> None:
    """Raise a TypeError naming ``what``, ``path`` and the dtype unless ``tensor``'s dtype
    is one scores are computed in (``_FLOATS``; complex too where ``complex_ok``)."""
    if tensor.dtype in _FLOATS or (complex_ok and tensor.is_complex()):
        return
    shown = _FLOATS_SHOWN + (", complex64, complex128" if complex_ok else "")
    raise TypeError(
        f"{function}: {what} at {path!r} is {describe(tensor)}; {tensor.dtype} is not "
        f"supported: the supported dtypes are {shown}"
    )


def _entries(function: str, name: str, spec: Any, tree: Any) -> list[Any]:
    """``tree``'s entries at ``params``' leaf positions, or a ValueError naming ``name``."""
    try:
        return leaves_like(spec, tree)
    except ValueError:
        raise ValueError(
            f"{function}: {name} does not have the structure of params "
            f"({describe_structure_mismatch(spec, tree)})"
        ) from None


def magnitude_scores(params: Any) -> Any:
    """``|w|`` for every floating (or complex) tensor leaf of ``params``.

    Examples:
        >>> import torch
        >>> from funcsparse.scores import magnitude_scores
        >>> params = {"w": torch.tensor([[1.0, -3.0], [-0.5, 2.0]]), "step": torch.tensor(3)}
        >>> magnitude_scores(params)
        {'w': tensor([[1.0000, 3.0000],
                [0.5000, 2.0000]]), 'step': None}

    Args:
        params: a pytree of tensors, e.g. ``dict(model.named_parameters())``.

    Returns:
        A pytree of ``params``' structure: ``w.abs()`` at floating and complex tensor leaves
        (real for complex ones), None at integer and bool tensor leaves.

    Raises:
        TypeError: a leaf is not a tensor (None is an empty entry; a module passed whole is
            refused too), or a floating leaf is float8 (no method ranks float8 scores); the
            message names the leaf path.
    """
    function = "magnitude_scores"
    paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
    for path, leaf in zip(paths, leaves, strict=True):
        if _scorable(leaf):
            _check_dtype(function, "the leaf", path, leaf, complex_ok=True)
    return unflatten(spec, [leaf.abs() if _scorable(leaf) else None for leaf in leaves])


def saliency_scores(params: Any, grads: Any) -> Any:
    """``|w * g|``, the first-order (Taylor) estimate of the loss change from zeroing ``w``.

    ``grads`` is the gradient of a loss with respect to ``params``, e.g.
    ``torch.func.grad(loss_fn)(params)``, or gradients accumulated over several batches.

    Examples:
        >>> import torch
        >>> from funcsparse.scores import saliency_scores
        >>> params = {"w": torch.tensor([1.0, -2.0, 3.0]), "b": torch.tensor([0.5])}
        >>> def loss_fn(p):
        ...     return (p["w"] * torch.tensor([3.0, 1.0, -0.1])).sum() + p["b"].sum()
        >>> grads = torch.func.grad(loss_fn)(params)
        >>> saliency_scores(params, grads)["w"]
        tensor([3.0000, 2.0000, 0.3000])
        >>> saliency_scores(params, {"w": grads["w"], "b": None})["b"] is None
        True

    Args:
        params: a pytree of tensors.
        grads: a pytree of ``params``' structure: a tensor of the leaf's shape, or None
            where there is no gradient.

    Returns:
        A pytree of ``params``' structure: ``(w * g).abs()`` where ``w`` is a floating
        tensor with a gradient, None elsewhere (integer and bool leaves, None gradients).

    Raises:
        ValueError: ``grads`` does not have ``params``' structure, or a gradient's shape
            or device differs from its leaf's (the message names the leaf path).
        TypeError: a leaf is not a tensor (None is an empty entry); or, where a gradient
            is given, the leaf or the gradient is complex (``|w * g|`` is the first-order
            estimate for real weights only), float8, or the gradient not a floating tensor
            (the message names the leaf path and the dtype).
    """
    function = "saliency_scores"
    paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
    grad_leaves = _entries(function, "grads", spec, grads)
    pairs: list[tuple[Tensor, Tensor] | None] = []
    for path, leaf, grad in zip(paths, leaves, grad_leaves, strict=True):
        if grad is None or not _scorable(leaf):
            pairs.append(None)
            continue
        if not isinstance(grad, Tensor):
            raise TypeError(
                f"{function}: the gradient at {path!r} is {describe(grad)}, not a tensor"
            )
        _check_dtype(function, "the leaf", path, leaf)
        _check_dtype(function, "the gradient", path, grad)
        if grad.shape != leaf.shape:
            raise ValueError(
                f"{function}: the gradient at {path!r} has shape {tuple(grad.shape)} but the "
                f"leaf has shape {tuple(leaf.shape)}"
            )
        if grad.device != leaf.device:
            raise ValueError(
                f"{function}: the gradient at {path!r} is on {grad.device} but the leaf is on "
                f"{leaf.device}"
            )
        pairs.append((leaf, grad))
    # Everything is checked: compute.
    return unflatten(spec, [None if pair is None else (pair[0] * pair[1]).abs() for pair in pairs])


def wanda_scores(params: Any, input_norms: Any) -> Any:
    """Wanda's scores ``|W_ij| * ||X_j||_2`` for every weight with input norms.

    A weight ``W`` has shape ``(out, *rest)``: ``(out_features, in_features)`` for an
    ``nn.Linear`` weight, ``(out_channels, in_channels, *kernel)`` for a conv's. Its
    ``input_norms`` have shape ``rest``: the L2 norm of each input feature (for a conv, each
    column of the unfolded input) over the calibration tokens, as
    :func:`funcsparse.calibration.collect_input_norms` returns them, and broadcast over the
    rows. The paper compares these scores within each output row; ``fs.Wanda`` does exactly
    that, while a score-reading method given ``scores=wanda_scores(...)`` ranks them its own
    way (over the whole tensor, or per block).

    Examples:
        >>> import torch
        >>> from funcsparse.scores import wanda_scores
        >>> w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
        >>> params = {"fc.weight": w, "fc.bias": torch.ones(2)}
        >>> norms = {"fc.weight": torch.tensor([2.0, 0.5]), "fc.bias": None}
        >>> wanda_scores(params, norms)
        {'fc.weight': tensor([[2.0000, 1.0000],
                [6.0000, 0.2500]]), 'fc.bias': None}
        >>> conv = {"w": torch.ones(4, 2, 3, 3)}
        >>> wanda_scores(conv, {"w": torch.full((2, 3, 3), 2.0)})["w"].shape
        torch.Size([4, 2, 3, 3])

    Args:
        params: a pytree of tensors.
        input_norms: a pytree of ``params``' structure: a real tensor of shape ``rest``, on
            the leaf's device, for a weight of shape ``(out, *rest)``; or None.

    Returns:
        A pytree of ``params``' structure: ``W.abs() * input_norms`` (in the promoted dtype)
        where the norms are given, None elsewhere.

    Raises:
        ValueError: ``input_norms`` does not have ``params``' structure; or, at a leaf with
            norms (the message names its path), the leaf has fewer than 2 dimensions, the
            norms' shape is not ``rest``, the norms are on another device than the leaf, or
            a norm is negative or not finite.
        TypeError: a leaf is not a tensor (None is an empty entry); or, at a leaf with
            norms, the leaf or the norms are not a floating tensor of a supported dtype
            (float16, bfloat16, float32, float64: not float8), naming the path.

    References:
        M. Sun, Z. Liu, A. Bair, J. Z. Kolter. A Simple and Effective Pruning Approach for
        Large Language Models. ICLR 2024. arXiv:2306.11695.
    """
    _, checked, spec = wanda_inputs(params, input_norms, function="wanda_scores")
    return unflatten(spec, [None if pair is None else pair[0].abs() * pair[1] for pair in checked])


def wanda_inputs(
    params: Any, input_norms: Any, *, function: str
) -> tuple[list[str], list[tuple[Tensor, Tensor] | None], Any]:
    """``params``' leaves paired with their ``input_norms``, checked as :func:`wanda_scores`
    checks them (its Raises), with messages naming ``function``.

    Returns:
        The leaf paths, a ``(leaf, norms)`` pair per leaf (None where the norms are None),
        and the tree spec.
    """
    paths, leaves, spec = flatten_with_paths(params, function=function, tensors=True)
    norm_leaves = _entries(function, "input_norms", spec, input_norms)
    checked: list[tuple[Tensor, Tensor] | None] = []
    for path, leaf, norms in zip(paths, leaves, norm_leaves, strict=True):
        if norms is None:
            checked.append(None)
            continue
        if not isinstance(leaf, Tensor) or not leaf.is_floating_point():
            raise TypeError(
                f"{function}: the leaf at {path!r} is {describe(leaf)}; Wanda scores need a "
                "floating-point weight"
            )
        if leaf.dim() < 2:
            raise ValueError(
                f"{function}: the leaf at {path!r} is {describe(leaf)}; Wanda scores need a "
                "weight of shape (out, *rest): (out_features, in_features), or a conv's"
            )
        rest = tuple(leaf.shape[1:])
        if not isinstance(norms, Tensor) or not norms.is_floating_point():
            raise TypeError(
                f"{function}: input_norms at {path!r} is {describe(norms)}; expected a floating "
                f"tensor of shape {rest}"
            )
        _check_dtype(function, "the leaf", path, leaf)
        _check_dtype(function, "input_norms", path, norms)
        for what, tensor in (("the leaf", leaf), ("input_norms", norms)):
            if tensor.layout != torch.strided:
                raise TypeError(
                    f"{function}: {what} at {path!r} is a {tensor.layout} tensor; Wanda "
                    "scores need dense (strided) tensors: pass tensor.to_dense()"
                )
        if tuple(norms.shape) != rest:
            raise ValueError(
                f"{function}: input_norms at {path!r} has shape {tuple(norms.shape)} for a "
                f"weight of shape {tuple(leaf.shape)}; expected {rest}"
            )
        if norms.device != leaf.device:
            raise ValueError(
                f"{function}: input_norms at {path!r} is on {norms.device} but the leaf is on "
                f"{leaf.device}; put them on the leaf's device"
            )
        if norms.device.type != "meta" and is_plain(norms) and norms.numel():
            bad = ~(norms.isfinite() & (norms >= 0))
            if bool(bad.any()):
                where = tuple(int(i) for i in bad.nonzero()[0])
                index = where[0] if len(where) == 1 else where
                raise ValueError(
                    f"{function}: input_norms at {path!r} has entry {index} = "
                    f"{norms[where].item()}; norms must be finite and non-negative"
                )
        checked.append((leaf, norms))
    return paths, checked, spec
