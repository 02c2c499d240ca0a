"""Calibration statistics as data: input norms and Hessians of linear, conv and attention
weights, from one traced pass, no hooks."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from funcsparse._apply import apply_masks, checked_masks, fsdp_managed, functional_call
from funcsparse._errors import describe, short_repr
from funcsparse._tree import flatten_with_paths, unflatten
from funcsparse.methods._base import SUPPORTED_DTYPES

__all__ = ["STATISTICS", "collect_hessians", "collect_input_norms", "collect_statistics"]

_FUNCTION = "collect_input_norms"


_TRACED = (
    "torch.nn.functional.linear, conv1d/conv2d/conv3d (groups=1) and "
    "multi_head_attention_forward (in_proj_weight on self-attention, q/k/v_proj_weight, "
    "out_proj.weight)"
)
_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_UNSHARDED = (
    "the same architecture loaded with {k: v.full_tensor() for k, v in "
    "model.state_dict().items()}, with group= to sum over the data-parallel ranks; the "
    "norms are plain tensors, which fs.compute_masks takes beside DTensor params"
)
_MHA = inspect.signature(F.multi_head_attention_forward)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return (int(value),) * n


def _tokens(x: Tensor) -> Tensor:
    """``x`` as rows of features: every dimension but the last flattened (0 rows allowed)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


#: The statistics :func:`collect_statistics` knows, by their keyword-data names.
STATISTICS = ("input_norms", "hessian")
_NOUN = {"input_norms": "input norms", "hessian": "Hessian"}  # "no input norms for ..."
_PLURAL = {"input_norms": "input norms", "hessian": "Hessians"}
_HOLDS = {
    "input_norms": "one norm per input feature",
    "hessian": "one Hessian of the input features",
}
#: The most float64 entries of one chunk of input rows converted for a Hessian (32 MiB).
_CHUNK = 1 << 22
#: The same for input norms (8 MiB): a batch's float64 copy never exists whole.
_NORM_CHUNK = 1 << 20


def _row_chunks(x: Tensor, lead: int, budget: int) -> Iterator[Tensor]:
    """``x`` of shape ``(*lead dims, *feature dims)`` as 2-D pieces ``(rows, features)`` in
    row order, each of at most ``budget`` entries (at least one row): views where ``x``'s
    strides allow, else copies of one piece at a time."""
    features = math.prod(x.shape[lead:])
    if lead == 0:
        yield x.reshape(1, features)
        return
    if lead > 1 and x.is_contiguous():  # the rows as one view: fewer, larger pieces
        x, lead = x.view(math.prod(x.shape[:lead]), features), 1
    per_index = math.prod(x.shape[1:lead]) * features  # the entries under one index of dim 0
    if per_index <= budget or lead == 1:
        step = max(1, budget // max(per_index, 1))
        for start in range(0, x.shape[0], step):
            piece = x[start : start + step]
            yield piece.reshape(math.prod(piece.shape[:lead]), features)
    else:
        for i in range(x.shape[0]):
            yield from _row_chunks(x[i], lead - 1, budget)


class _Inputs(TorchFunctionMode):
    """Accumulates the statistics of the inputs of the watched weights, in float64.

    For ``"input_norms"``, each input feature's sum of squares; for ``"hessian"``, the sum of
    ``x x^T`` over the input rows ``x`` (an ``(in, in)`` matrix) and the number of rows.
    A weight is matched by identity (``is``) with the tensors handed to the forward, so a
    copy, a view or a weight computed inside the module is never mistaken for it. A watched
    weight used in a way one statistic over its input features cannot describe (a grouped
    conv, an attention in-projection whose rows see different inputs) is marked unsupported,
    with the reason (a template: ``{holds}`` names what the statistic holds).
    """

    def __init__(
        self,
        watched: dict[int, Tensor],
        names: dict[int, str],
        *,
        function: str = _FUNCTION,
        statistics: Sequence[str] = ("input_norms",),
        only: Mapping[str, set[int]] | None = None,
    ) -> None:
        super().__init__()
        self.watched = watched
        self.names = names
        self.function = function
        # The ids of the weights each statistic is collected for (default: every watched).
        self.ids = {
            name: set(watched) if only is None else only.get(name, set())
            for name in STATISTICS
            if name in statistics
        }
        self.batch = 0  # the index of the batch being run, for messages
        self.sums: dict[int, Tensor] = {}
        self.grams: dict[int, Tensor] = {}
        self.tokens: dict[int, int] = {}
        self.unsupported: dict[int, str] = {}

    def _check_features(self, weight: Tensor, x: Tensor, call: str) -> None:
        """Raise unless ``x`` has ``weight``'s input features as its last dimension."""
        if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"{self.function}: batch {self.batch}: {call} got an input of shape "
                f"{tuple(x.shape)} for the weight at {self.names[id(weight)]!r} of shape "
                f"{tuple(weight.shape)}; its input needs {weight.shape[1]} features in its "
                "last dimension (a batch the model cannot take)"
            )

    def _is_watched(self, weight: object) -> bool:
        return isinstance(weight, Tensor) and self.watched.get(id(weight)) is weight

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
            if isinstance(weight, Tensor) and self._is_watched(weight) and isinstance(x, Tensor):
                self._check_features(weight, x, "torch.nn.functional.linear")
                self._record(weight, x)
        elif func in _CONVS:
            self._conv(_CONVS[func], args, kwargs)
        elif func is F.multi_head_attention_forward:
            return self._attention(func, args, kwargs)
        return func(*args, **kwargs)

    def _record(self, weight: Tensor, x: Tensor) -> None:
        """Add the statistics of ``x``'s rows (its last dimension: the input features)."""
        if not x.is_floating_point():  # torch's call refuses it (complex, int) just after
            return
        if self._wants("input_norms", weight):
            self._add(weight, _tokens(x))
        if self._wants("hessian", weight):
            self._gram(weight, x, lead=x.dim() - 1)

    def _wants(self, statistic: str, weight: Tensor) -> bool:
        return id(weight) in self.ids.get(statistic, ())

    def _add(self, weight: Tensor, squares_of: Tensor, *, summed: bool = False) -> None:
        """Add the squares of ``squares_of``'s rows (or ``squares_of`` itself if summed)."""
        x = squares_of.detach()
        device = torch.device("cpu") if x.device.type == "mps" else x.device  # no float64
        if summed:
            squares = x.to(device=device, dtype=torch.float64)
        else:  # a chunk of rows at a time: float64 temporaries of _NORM_CHUNK entries at most
            squares = torch.zeros(x.shape[-1], dtype=torch.float64, device=device)
            for rows in _row_chunks(x, 1, _NORM_CHUNK):
                part = rows.to(device=device, dtype=torch.float64, copy=True)
                squares += part.square_().sum(0)
        key = id(weight)
        total = self.sums.get(key)
        self.sums[key] = squares if total is None else total + squares

    def _gram(self, weight: Tensor, x: Tensor, *, lead: int) -> None:
        """Add ``rows^T rows`` for the rows of ``x`` (``lead`` dims of rows, then features),
        converted to float64 one chunk of at most ``_CHUNK`` entries at a time."""
        key = id(weight)
        total = self.grams.get(key)
        if total is None:
            device = torch.device("cpu") if x.device.type == "mps" else x.device  # no float64
            features = math.prod(x.shape[lead:])
            total = torch.zeros(features, features, dtype=torch.float64, device=device)
            self.grams[key] = total
            self.tokens[key] = 0
        for rows in _row_chunks(x.detach(), lead, _CHUNK):
            rows = rows.to(device=total.device, dtype=torch.float64)
            total.addmm_(rows.T, rows)
        self.tokens[key] += math.prod(x.shape[:lead])

    def _conv(self, spatial: int, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        x, weight = given.get("input"), given.get("weight")
        if not isinstance(weight, Tensor) or not self._is_watched(weight):
            return
        if not isinstance(x, Tensor):
            return
        groups = int(given.get("groups", 1))
        if groups != 1:
            self.unsupported[id(weight)] = (
                f"it is used by a grouped conv (groups={groups}): each group of output "
                "channels sees other input channels, which {holds} "
                "(in_channels / groups, *kernel) cannot hold"
            )
            return
        kernel = tuple(weight.shape[2:])
        if x.dim() not in (spatial + 1, spatial + 2) or x.shape[-spatial - 1] != weight.shape[1]:
            raise ValueError(
                f"{self.function}: batch {self.batch}: conv{spatial}d got an input of shape "
                f"{tuple(x.shape)} for the weight at {self.names[id(weight)]!r} of shape "
                f"{tuple(weight.shape)}; its input needs shape ([batch,] {weight.shape[1]}, "
                f"{spatial} spatial sizes) (a batch the model cannot take)"
            )
        stride = _tuple(given.get("stride", 1), spatial)
        dilation = _tuple(given.get("dilation", 1), spatial)
        padding = given.get("padding", 0)
        if padding == "valid":
            pads = [(0, 0)] * spatial
        elif padding == "same":  # as torch: the odd pad goes to the end
            totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            pads = [(t // 2, t - t // 2) for t in totals]
        else:
            pads = [(p, p) for p in _tuple(padding, spatial)]
        batched = x if x.dim() == spatial + 2 else x.unsqueeze(0)
        flat_pads = [p for pair in reversed(pads) for p in pair]
        padded = [n + lo + hi for n, (lo, hi) in zip(batched.shape[2:], pads, strict=True)]
        spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
        if any(size < span for size, span in zip(padded, spans, strict=True)):
            raise ValueError(
                f"{self.function}: batch {self.batch}: conv{spatial}d got an input of shape "
                f"{tuple(x.shape)} for the weight at {self.names[id(weight)]!r} of shape "
                f"{tuple(weight.shape)}: padded, it is smaller than the kernel (a batch the "
                "model cannot take)"
            )
        if self._wants("input_norms", weight):
            device = torch.device("cpu") if x.device.type == "mps" else x.device
            per_image = max(1, math.prod(batched.shape[1:]))
            step = max(1, _NORM_CHUNK // per_image)  # images a float64 chunk holds
            squares = torch.zeros(batched.shape[1:], dtype=torch.float64, device=device)
            for start in range(0, batched.shape[0], step):
                part = batched[start : start + step].detach()
                squares += part.to(device=device, dtype=torch.float64, copy=True).square_().sum(0)
            squares = F.pad(squares, flat_pads)  # (in_channels, *padded spatial)
            for i in range(spatial):  # the columns of torch.nn.functional.unfold, as views
                squares = squares.unfold(1 + i, spans[i], stride[i])[..., :: dilation[i]]
            self._add(weight, squares.sum(dim=tuple(range(1, 1 + spatial))), summed=True)
        if self._wants("hessian", weight):
            columns = batched.detach()
            if any(flat_pads):
                columns = F.pad(columns, flat_pads)  # a copy of the input, in its dtype
            for i in range(spatial):  # (batch, in_channels, *out positions, *kernel), views
                columns = columns.unfold(2 + i, spans[i], stride[i])[..., :: dilation[i]]
            # One row per (image, output position), its features ordered as the weight's
            # (in_channels, *kernel): torch.nn.functional.unfold's columns, as rows.
            order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
            self._gram(weight, columns.permute(order), lead=1 + spatial)

    def _attention(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Any:
        """``F.multi_head_attention_forward``, watching its projection weights."""
        bound = _MHA.bind(*args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        query, key, value = given["query"], given["key"], given["value"]
        if not given["use_separate_proj_weight"]:
            weight = given["in_proj_weight"]
            if self._is_watched(weight):
                if query is key and key is value:
                    self._check_features(weight, query, "multi_head_attention_forward")
                    self._record(weight, query)
                else:
                    self.unsupported[id(weight)] = (
                        "it is the packed in-projection of attention whose query, key and value "
                        "differ: its rows see different inputs, which {holds} cannot hold"
                    )
        else:
            for name, x in (
                ("q_proj_weight", query),
                ("k_proj_weight", key),
                ("v_proj_weight", value),
            ):
                if self._is_watched(given[name]):
                    self._check_features(given[name], x, "multi_head_attention_forward")
                    self._record(given[name], x)
        out_weight = given["out_proj_weight"]
        if not self._is_watched(out_weight):
            return func(**given)
        # The input of the out-projection: the call with an identity out-projection, then
        # the real out-projection applied to it (one call, one draw of dropout).
        identity = torch.eye(out_weight.shape[1], dtype=out_weight.dtype, device=out_weight.device)
        inner, weights = func(**{**given, "out_proj_weight": identity, "out_proj_bias": None})
        self._record(out_weight, inner)
        return F.linear(inner, out_weight, given["out_proj_bias"]), weights


def check_batches(batches: object, *, function: str) -> None:
    """Raise a TypeError naming ``function`` unless ``batches`` is an iterable of batches
    (one tensor or one mapping, a single batch, is refused with the way to wrap it)."""
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(
            f"{function}: batches must be an iterable of batches (a list, a DataLoader, a "
            f"generator), got {describe(batches)}; wrap one batch as [x]"
        )
    if isinstance(batches, Mapping):
        raise TypeError(
            f"{function}: batches must be an iterable of batches, got {describe(batches)}: a "
            "mapping is one batch of keyword arguments (a tokenizer's output); wrap one batch "
            "as [batch]"
        )


def as_call(
    index: int, batch: object, *, function: str = _FUNCTION
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A batch as the model's positional and keyword arguments, with its tensors checked
    (the batch forms of every calibration function, ``fs.prune_blocks`` included).

    A tensor is one positional argument; a mapping (a dict, a tokenizer's ``BatchEncoding``)
    is keyword arguments; a pair ``(args, kwargs)`` whose first item is a tuple or list and
    whose second is a mapping is both; any other tuple or list is positional arguments.
    """
    kwargs: dict[str, Any] = {}
    if isinstance(batch, Tensor):
        args: tuple[Any, ...] = (batch,)
    elif isinstance(batch, Mapping):
        args, kwargs = (), _keywords(index, batch, function=function)
    elif (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and isinstance(batch[0], (tuple, list))
        and isinstance(batch[1], Mapping)
    ):
        args, kwargs = tuple(batch[0]), _keywords(index, batch[1], function=function)
    elif isinstance(batch, (tuple, list)):
        args = tuple(batch)
    else:
        raise TypeError(
            f"{function}: batch {index} is {describe(batch)}; a batch is an input tensor, a "
            "tuple of positional arguments, a mapping of keyword arguments (a tokenizer's "
            "output), or an (args, kwargs) pair"
        )
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, Tensor) and arg.device.type == "meta":
            raise ValueError(
                f"{function}: batch {index} holds a tensor on the meta device; "
                "calibration runs the model on real values"
            )
    return args, kwargs


def _keywords(index: int, batch: Mapping[Any, Any], *, function: str = _FUNCTION) -> dict[str, Any]:
    """A mapping batch as keyword arguments (every key a str)."""
    bad = [key for key in batch if not isinstance(key, str)]
    if bad:
        raise TypeError(
            f"{function}: batch {index} is a mapping with the key {short_repr(bad[0])}; the "
            "keys of a mapping batch are the model's keyword argument names (str)"
        )
    return dict(batch)


def collect_input_norms(
    module: nn.Module,
    params: Any,
    batches: Iterable[Any],
    *,
    paths: Sequence[str] | None = None,
    masks: Any = None,
    group: dist.ProcessGroup | str | None = None,
) -> Any:
    """The L2 norm of every input feature of the weights over calibration batches.

    Runs every batch through ``fs.functional_call(module, params, masks, batch)`` under
    ``torch.no_grad()`` and watches the calls that use a tensor of ``params`` (matched by
    identity) as their weight, summing the squares of each input feature over every token
    and every batch, in float64. The result is ``sqrt`` of those sums: ``||X_j||_2`` in
    Wanda's score ``|W_ij| * ||X_j||_2`` (``fs.Wanda``, :func:`funcsparse.scores.wanda_scores`).
    A weight used by several calls accumulates the inputs of all of them. For a weight of
    shape ``(out, *rest)`` the norms have shape ``rest``:

    * ``torch.nn.functional.linear``: ``(in_features,)``, the input's last dimension over
      every other dimension.
    * ``conv1d`` / ``conv2d`` / ``conv3d`` with ``groups=1``: ``(in_channels, *kernel)``,
      one norm per column of the unfolded input (``torch.nn.functional.unfold`` with the
      call's stride, padding and dilation; zero padding adds nothing), as the SparseGPT
      reference code unfolds conv inputs, so that a conv is pruned as the linear layer it
      computes.
    * ``multi_head_attention_forward`` (``nn.MultiheadAttention``, also inside
      ``nn.TransformerEncoderLayer`` in train and eval mode: the traced run never takes the
      fused fast path): ``in_proj_weight`` where query, key and value are one tensor
      (self-attention), ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` on their
      own inputs, and ``out_proj.weight`` on the attention's output.

    Anything else is not traced: ``matmul``, ``bmm``, ``@``, ``einsum``, transposed convs,
    embeddings, a weight copied, viewed or computed inside the forward. A weight used by a
    grouped conv (``groups > 1``) or as the packed in-projection of cross-attention is seen
    but cannot be described by one norm per input feature.

    Memory: one float64 vector per collected weight; the input rows are converted to
    float64 and squared in chunks of at most 2^20 entries (8 MiB), never a whole batch at
    once (a conv's input: a chunk of whole images at a time).

    Nothing is registered on or changed in ``module`` or ``params``: no hooks, and the
    module's buffers run as copies, so BatchNorm in train mode updates copies (its running
    statistics advance over the batches as in training, and are dropped). The module runs in
    the mode it is in: call ``module.eval()`` yourself for statistics without dropout (in
    train mode dropout draws from the global torch RNG, as any forward does).

    Under data parallelism, pass ``group``: each rank runs its own batches, and the sums of
    squares, the batch counts and which weights were seen are summed over the ranks of
    ``group`` by ``torch.distributed.all_reduce`` before the square root, so that every rank
    gets the norms of the union of all ranks' batches: those of one process running them
    all, up to the rounding of the order of the additions (bit for bit where the sums are
    exact, e.g. integer-valued inputs). A rank may have no batches where another has some.
    Every rank of ``group`` must make the call, with the same module, params and paths; a
    rank whose batches fail raises its error and the others a ValueError naming it, rather
    than waiting for it. Each rank sends two all_reduce calls of ``8 * (11 + world size)``
    and ``8 * (input features + 2 * weights)`` bytes (the second is skipped when a rank
    failed), straight through ``torch.distributed``: ``funcsparse.distributed.counting``
    does not count them.

    Sharded weights (DTensor leaves) and modules managed by FSDP2 (``fully_shard``) are
    refused: a forward never hands a sharded weight to its calls as it is. Calibrate an
    unsharded copy of the model on each rank (loaded with
    ``{k: v.full_tensor() for k, v in model.state_dict().items()}``) with ``group``; the
    norms are plain tensors, which ``fs.compute_masks`` takes beside DTensor params.

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
        >>> conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        >>> conv_params = {name: p.detach() for name, p in conv.named_parameters()}
        >>> collect_input_norms(conv, conv_params, [torch.randn(1, 2, 5, 5)])["weight"].shape
        torch.Size([2, 3, 3])

        ``group`` (default None: no reduction) sums over the ranks of a process group; asked
        for where no process group is initialized, it says so:

        >>> collect_input_norms(model, params, batches, group=None)["0.weight"]
        tensor([5.0000, 1.7321], dtype=torch.float64)
        >>> collect_input_norms(model, params, batches, group="world")
        Traceback (most recent call last):
        ...
        ValueError: collect_input_norms: group='world' asks to sum the statistics over ranks, but
        this process has no torch.distributed process group (...)

    Args:
        module: the model.
        params: a pytree of tensors whose dotted leaf paths name parameters or buffers of
            ``module`` (``dict(module.named_parameters())`` or a part of it).
        batches: an iterable (not a tensor) of calibration batches, each as ``module`` is
            called: an input tensor; a tuple (or list) of positional arguments; a mapping of
            keyword arguments (a dict, a tokenizer's ``BatchEncoding``: pass it whole, not
            ``tuple(batch.values())``, which would put each tensor in whichever positional
            slot comes next); or a pair ``(args, kwargs)`` of a tuple (or list) and a
            mapping (to pass such a pair positionally, wrap it: ``((a, b), {})``).
        paths: the leaf paths to collect norms for, each a floating tensor of ``params``
            with at least 2 dimensions; every one must be used as a weight by a traced call.
            Default None: every such leaf of ``params`` that a traced call uses; the others
            (never used by a traced call, or used in a way norms cannot describe) get None,
            which ``fs.Wanda`` and ``fs.compute_masks(..., scores=fs.wanda_scores(...))``
            refuse by name.
        masks: masks applied to ``params`` during calibration (e.g. the layers pruned so
            far, as in the paper's layer-by-layer procedure). Default None: the dense model.
        group: the ranks to sum the statistics over (data parallelism): a
            ``torch.distributed.ProcessGroup`` (e.g. ``DeviceMesh.get_group("dp")``) or
            ``"world"`` (the default process group). The statistics travel on the first
            collected weight's device (CUDA weights take a NCCL group, CPU weights a gloo
            one). Default None: this process's batches alone, no communication.

    Returns:
        A pytree of ``params``' structure: a float64 tensor (float32 on MPS) on the weight's
        device, of shape ``rest`` for a weight of shape ``(out, *rest)``, at every collected
        weight; None elsewhere. Plug it into ``fs.compute_masks(params, rules,
        input_norms=...)`` or :func:`funcsparse.scores.wanda_scores`.

    Raises:
        ValueError: no batches; a path in ``paths`` is not a leaf of ``params``, is not a
            floating tensor of at least 2 dimensions, is never used as a weight by a traced
            call (the message lists such paths and the traced calls), or is used in a way
            norms cannot describe; a collected leaf or a batch is on the meta device; a
            traced call gets an input a collected weight cannot take (a 0-D batch, the
            wrong number of features; the message names the batch index and the weight's
            path); ``module`` or a submodule is managed by FSDP2; the model raises a
            RuntimeError on a batch (a dtype or shape torch refuses; the message names the
            batch index, the error is chained); or, as ``fs.functional_call``, a leaf path
            names nothing in ``module``. With ``group``:
            no process group is initialized, this rank is not a member of ``group``, the
            ranks collect different weights, another rank's batches failed, or the batches
            are empty on every rank.
        TypeError: ``module`` is not a module; a leaf of ``params`` is not a tensor (a
            module passed whole as ``params`` too) or has a dtype no method supports
            (float8, complex; the message names its path); ``batches`` is a tensor, a
            mapping (one batch: wrap it as ``[batch]``) or not iterable; a batch is none of
            a tensor, a tuple or list and a mapping; ``paths`` is not a sequence of strings;
            ``group`` is not None, ``"world"`` or a ProcessGroup; a
            collected leaf is a DTensor; a mask of ``masks`` is not a bool tensor (a
            ``masks`` without ``params``' structure is a ValueError).

    References:
        M. Sun, Z. Liu, A. Bair, J. Z. Kolter. A Simple and Effective Pruning Approach for
        Large Language Models. ICLR 2024. arXiv:2306.11695.

        E. Frantar, D. Alistarh. SparseGPT: Massive Language Models Can Be Accurately
        Pruned in One-Shot. ICML 2023. arXiv:2301.00774.
    """
    return _collect(
        _FUNCTION,
        module,
        params,
        batches,
        statistics=("input_norms",),
        paths=paths,
        masks=masks,
        group=group,
    )["input_norms"]


def collect_hessians(
    module: nn.Module,
    params: Any,
    batches: Iterable[Any],
    *,
    paths: Sequence[str] | None = None,
    masks: Any = None,
    group: dist.ProcessGroup | str | None = None,
) -> Any:
    """The input Hessian ``H = (2 / T) * sum_t x_t x_t^T`` of every weight over calibration batches.

    SparseGPT's layer-wise problem ``min ||W X - W' X||^2`` has the Hessian ``2 X X^T`` in
    the weights of each row; this is that matrix averaged over the ``T`` calibration tokens
    (every row ``x_t`` of a weight's input, its last dimension flattened over all the
    others, over every batch), in float64. It is the keyword data ``hessian`` of
    ``fs.SparseGPT``. The scale ``2 / T`` (the reference code divides by the number of
    sequences instead) does not change SparseGPT's masks or updates: its dampening is
    relative to the mean of the diagonal.

    The batches run as for :func:`collect_input_norms`, with the same calls traced (matched
    by identity), the same batch forms, ``paths``, ``masks`` and ``group``, and the same
    errors. For a weight of shape ``(out, *rest)``, ``H`` has shape ``(in, in)`` with
    ``in = prod(rest)``, in the order of ``weight.reshape(out, in)``'s columns:

    * ``torch.nn.functional.linear`` and the projections of ``multi_head_attention_forward``
      (``in_proj_weight`` of self-attention, whose rows all see one input and share one
      Hessian; ``q/k/v_proj_weight``; ``out_proj.weight``): ``in = in_features``.
    * ``conv1d`` / ``conv2d`` / ``conv3d`` with ``groups=1``: the Hessian of the unfolded
      input (``torch.nn.functional.unfold``'s columns with the call's stride, padding and
      dilation, one token per image and output position), ``in = in_channels * prod(kernel)``,
      as SparseGPT's reference code prunes a conv as the linear layer it computes.

    A grouped conv or the packed in-projection of cross-attention is seen but refused (None,
    or a ValueError naming it under ``paths``), as are the calls that are not traced.

    Memory: one ``(in, in)`` float64 accumulator per collected weight, ``8 * in^2`` bytes
    (a 4096-feature projection: 128 MiB; an 11008-feature one: 924 MiB), held for the whole
    run, on the weight's device (CPU for MPS). The input rows are converted to float64 and
    added with ``addmm`` in chunks of at most 2^22 entries (32 MiB), never the whole batch
    at once; a padded conv input is copied once in its dtype. For a large model collect one
    block at a time (``paths``, or the block module and its inputs, as ``fs.prune_blocks``
    does). With ``group``, each collected Hessian is summed by one in-place all_reduce of
    ``8 * in^2`` bytes, after the sums of the token counts (float64, exact below 2^53).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from funcsparse.calibration import collect_hessians
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> params = {name: p.detach() for name, p in model.named_parameters()}
        >>> batches = [torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[0.0, 1.0], [1, 1]])]
        >>> hessians = collect_hessians(model, params, batches)
        >>> hessians["0.weight"]  # X^T X = [[11, 3], [3, 6]] over T = 4 tokens, times 2 / 4
        tensor([[5.5000, 1.5000],
                [1.5000, 3.0000]], dtype=torch.float64)
        >>> hessians["0.bias"] is None, hessians["2.weight"].shape
        (True, torch.Size([3, 3]))
        >>> conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        >>> conv_params = {name: p.detach() for name, p in conv.named_parameters()}
        >>> collect_hessians(conv, conv_params, [torch.randn(1, 2, 5, 5)])["weight"].shape
        torch.Size([18, 18])

    Args:
        module: the model.
        params: a pytree of tensors whose dotted leaf paths name parameters or buffers of
            ``module`` (``dict(module.named_parameters())`` or a part of it).
        batches: an iterable (not a tensor) of calibration batches, each as ``module`` is
            called: an input tensor, a tuple (or list) of positional arguments, a mapping
            of keyword arguments, or a pair ``(args, kwargs)`` (as
            :func:`collect_input_norms`).
        paths: the leaf paths to collect Hessians for, each a floating tensor of ``params``
            with at least 2 dimensions that a traced call uses. Default None: every such
            leaf that a traced call uses; the others get None.
        masks: masks applied to ``params`` during calibration (the layers pruned so far:
            the inputs of later layers are those of the masked model). Default None.
        group: the ranks to sum the statistics over (data parallelism): a
            ``torch.distributed.ProcessGroup`` or ``"world"``; every rank gets the Hessians
            of the union of all ranks' batches (bit for bit where the sums are exact, e.g.
            integer-valued inputs). Default None: this process's batches alone.

    Returns:
        A pytree of ``params``' structure: a float64 tensor (float32 on MPS) of shape
        ``(in, in)`` on the weight's device at every collected weight (zeros for a weight
        that saw only empty batches); None elsewhere. Plug it into
        ``fs.prune(params, rules, hessian=...)``.

    Raises:
        ValueError: as :func:`collect_input_norms` (no batches, a bad or unused path, a
            weight used in a way one Hessian cannot describe under ``paths``, a batch the
            model cannot take, FSDP2, the ``group`` failures), each message naming
            ``collect_hessians``.
        TypeError: as :func:`collect_input_norms`.

    References:
        E. Frantar, D. Alistarh. SparseGPT: Massive Language Models Can Be Accurately
        Pruned in One-Shot. ICML 2023. arXiv:2301.00774.
    """
    return _collect(
        "collect_hessians",
        module,
        params,
        batches,
        statistics=("hessian",),
        paths=paths,
        masks=masks,
        group=group,
    )["hessian"]


def collect_statistics(
    module: nn.Module,
    params: Any,
    batches: Iterable[Any],
    *,
    statistics: Sequence[str] = STATISTICS,
    paths: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    masks: Any = None,
    group: dist.ProcessGroup | str | None = None,
) -> dict[str, Any]:
    """Several calibration statistics from one traced pass over the batches.

    Runs the batches once, as :func:`collect_input_norms` does, and returns each statistic
    named in ``statistics`` under its name, which is the keyword data of the method that
    reads it, so that the result unpacks into ``fs.prune`` / ``fs.compute_masks``:

    * ``"input_norms"``: :func:`collect_input_norms`' result (``fs.Wanda``).
    * ``"hessian"``: :func:`collect_hessians`' result (``fs.SparseGPT``).

    Where rules mix methods (SparseGPT on some weights, Wanda on others), map each statistic
    to the weights whose method reads it with ``paths={"hessian": [...], "input_norms":
    [...]}``: no Hessian is built where none is read, and each tree is None where its method
    does not read it, as ``fs.prune`` wants. Each statistic equals the one its own function
    returns on the same arguments (bit for bit: the same sums in the same order). The
    memory is the sum of theirs (see :func:`collect_hessians` for the ``8 * in^2`` bytes of
    each Hessian).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from funcsparse.calibration import collect_statistics
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> params = {name: p.detach() for name, p in model.named_parameters()}
        >>> stats = collect_statistics(model, params, [torch.tensor([[3.0, 1.0], [4.0, -1.0]])])
        >>> sorted(stats)
        ['hessian', 'input_norms']
        >>> stats["input_norms"]["0.weight"]  # sqrt(9 + 16), sqrt(1 + 1)
        tensor([5.0000, 1.4142], dtype=torch.float64)
        >>> stats["hessian"]["0.weight"]  # [[25, -1], [-1, 2]] * 2 / 2 tokens
        tensor([[25., -1.],
                [-1.,  2.]], dtype=torch.float64)
        >>> collect_statistics(model, params, [torch.ones(1, 2)], statistics=("norms",))
        Traceback (most recent call last):
        ...
        ValueError: collect_statistics: unknown statistic 'norms'; the known statistics are
        ('input_norms', 'hessian') (...)

        ``paths`` may name the weights of each statistic (one pass still):

        >>> chosen = {"input_norms": ["0.weight"], "hessian": ["2.weight"]}
        >>> some = collect_statistics(model, params, [torch.ones(2, 2)], paths=chosen)
        >>> some["input_norms"]["2.weight"] is None, some["hessian"]["2.weight"].shape
        (True, torch.Size([3, 3]))

    Args:
        module: the model.
        params: a pytree of tensors naming parameters or buffers of ``module``.
        batches: an iterable (not a tensor) of calibration batches (see
            :func:`collect_input_norms`).
        statistics: the names of the statistics to collect, a non-empty sequence of
            distinct names from ``("input_norms", "hessian")``. Default: both.
        paths: the leaf paths to collect every statistic for (see
            :func:`collect_input_norms`), or a mapping from each name in ``statistics`` to
            the leaf paths to collect that statistic for (e.g. Hessians only where
            SparseGPT prunes: each costs ``8 * in^2`` bytes); a statistic gets None at the
            others. Default None: every floating leaf of at least 2 dimensions that a
            traced call uses.
        masks: masks applied to ``params`` during calibration. Default None.
        group: the ranks to sum the statistics over (see :func:`collect_input_norms`).
            Default None.

    Returns:
        A dict from each name in ``statistics`` (in its order) to a pytree of ``params``'
        structure, as :func:`collect_input_norms` and :func:`collect_hessians` return.

    Raises:
        TypeError: ``statistics`` is not a sequence of strings (a bare string included:
            wrap one name as ``("hessian",)``); as :func:`collect_input_norms`.
        ValueError: ``statistics`` is empty, names an unknown statistic or one twice;
            ``paths`` is a mapping whose keys are not the names in ``statistics``; as
            :func:`collect_input_norms` (a weight used in a way a statistic cannot
            describe, under ``paths``, is named with the first statistic requested).

    References:
        M. Sun, Z. Liu, A. Bair, J. Z. Kolter. A Simple and Effective Pruning Approach for
        Large Language Models. ICLR 2024. arXiv:2306.11695.

        E. Frantar, D. Alistarh. SparseGPT: Massive Language Models Can Be Accurately
        Pruned in One-Shot. ICML 2023. arXiv:2301.00774.
    """
    function = "collect_statistics"
    names = _check_statistics(function, statistics)
    return _collect(
        function,
        module,
        params,
        batches,
        statistics=names,
        paths=paths,
        masks=masks,
        group=group,
        per_statistic=True,
    )


class _Collected:
    """What the traced run gathered per collected leaf path (local, then summed over ranks)."""

    def __init__(self, mode: _Inputs, leaves: dict[str, Tensor]) -> None:
        self.sums = {path: mode.sums.get(id(leaf)) for path, leaf in leaves.items()}
        self.grams = {path: mode.grams.get(id(leaf)) for path, leaf in leaves.items()}
        self.tokens = {path: mode.tokens.get(id(leaf), 0) for path, leaf in leaves.items()}
        self.reasons = {path: mode.unsupported.get(id(leaf)) for path, leaf in leaves.items()}

    def seen(self, path: str) -> bool:
        return self.sums[path] is not None or self.grams[path] is not None


def _check_statistics(function: str, statistics: object) -> tuple[str, ...]:
    """``statistics`` checked: a non-empty sequence of distinct known names."""
    if isinstance(statistics, (str, bytes)) or not isinstance(statistics, Sequence):
        raise TypeError(
            f"{function}: statistics must be a sequence of names from {STATISTICS}, got "
            f"{describe(statistics)}"
            + ("; wrap one name as (name,)" if isinstance(statistics, str) else "")
        )
    names: list[str] = []
    for name in statistics:
        if not isinstance(name, str):
            raise TypeError(
                f"{function}: statistics holds {describe(name)}; the known statistics are "
                f"{STATISTICS}"
            )
        if name not in STATISTICS:
            raise ValueError(
                f"{function}: unknown statistic {short_repr(name)}; the known statistics are "
                f"{STATISTICS} (the keyword data of fs.Wanda and fs.SparseGPT)"
            )
        if name in names:
            raise ValueError(f"{function}: statistics names {name!r} twice; name it once")
        names.append(name)
    if not names:
        raise ValueError(f"{function}: statistics is empty; name at least one of {STATISTICS}")
    return tuple(names)


def _collect(
    function: str,
    module: nn.Module,
    params: Any,
    batches: Iterable[Any],
    *,
    statistics: tuple[str, ...],
    paths: Sequence[str] | Mapping[str, Sequence[str]] | None,
    masks: Any,
    group: object,
    per_statistic: bool = False,
) -> dict[str, Any]:
    """One traced pass over ``batches`` collecting ``statistics``; ``function`` names the
    caller in messages. The checks and errors of :func:`collect_input_norms`. With
    ``per_statistic``, ``paths`` may map each statistic to its own leaf paths."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"{function}: module must be a torch.nn.Module, got {describe(module)}")
    check_batches(batches, function=function)
    managed = fsdp_managed(module)
    if managed is not None:
        raise ValueError(
            f"{function}: {managed} is managed "
            "by FSDP2 (fully_shard), whose forward all-gathers its own parameters and swaps "
            "them in, so no tensor of params is the weight its calls see. Calibrate an "
            f"unsharded copy on each rank instead, {_unsharded(function)}"
        )
    leaf_paths, leaves, _ = flatten_with_paths(params, function=function, tensors=True)
    for path, leaf in zip(leaf_paths, leaves, strict=True):
        if leaf.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{function}: the leaf at {path!r} is {describe(leaf)}; {leaf.dtype} is not "
                "supported: calibration runs float16, bfloat16, float32 and float64 weights "
                "(bool and integer buffers pass through)"
            )
    known = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    known.update(name for name, _ in module.named_buffers(remove_duplicate=False))
    unknown = [path for path in leaf_paths if path not in known]
    if unknown:
        raise ValueError(
            f"{function}: params has leaves that name no parameter or buffer of the "
            f"{type(module).__name__}: {unknown[:8]}{' ...' if len(unknown) > 8 else ''} "
            "(params' leaf paths are the module's named_parameters() names)"
        )
    ranks = _reduction_group(group, function=function)
    if masks is not None:
        checked_masks(params, masks, function=function)
    run_params = params if masks is None else apply_masks(params, masks)
    leaf_paths, leaves, spec = flatten_with_paths(run_params, function=function)
    index = {path: i for i, path in enumerate(leaf_paths)}
    if per_statistic and isinstance(paths, Mapping):
        plan = _plan(paths, leaf_paths, leaves, index, function=function, statistics=statistics)
    else:
        common = _wanted(paths, leaf_paths, leaves, index, function=function, statistics=statistics)
        plan = dict.fromkeys(statistics, common)
    # Every weight some statistic wants, in leaf order (the order of the sums over ranks).
    wanted = sorted({path for chosen in plan.values() for path in chosen}, key=index.__getitem__)
    for path in wanted:
        _check_collectable(path, leaves[index[path]], function=function)
    watched = {id(leaves[index[path]]): leaves[index[path]] for path in wanted}
    call_params = _with_buffer_copies(module, leaf_paths, leaves, watched)
    names = {id(leaves[index[path]]): path for path in wanted}
    only = {name: {id(leaves[index[path]]) for path in chosen} for name, chosen in plan.items()}
    mode = _Inputs(watched, names, function=function, statistics=statistics, only=only)
    seen_batches = 0
    failure: Exception | None = None
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                args, kwargs = as_call(i, batch, function=function)
                mode.batch = i
                try:
                    with mode:
                        functional_call(module, call_params, None, args, kwargs)
                except TypeError as err:  # the call itself (a keyword the model lacks, ...)
                    raise TypeError(
                        f"{function}: batch {i}: calling the model raised TypeError: "
                        f"{short_repr(str(err))} (do the batch's arguments match the model's "
                        "forward?)"
                    ) from err
                except RuntimeError as err:  # torch refused the batch (a dtype, a shape, ...)
                    raise ValueError(
                        f"{function}: batch {i}: the model raised RuntimeError: "
                        f"{short_repr(str(err))} (a batch the model cannot take)"
                    ) from err
                seen_batches += 1
    except Exception as err:
        if ranks is None:
            raise
        failure = err  # raised after telling the other ranks, so that none waits for it
    wanted_leaves = {path: leaves[index[path]] for path in wanted}
    collected = _Collected(mode, wanted_leaves)
    if ranks is not None:
        seen_batches = _all_reduce(
            ranks,
            wanted_leaves,
            seen_batches,
            collected,
            failure,
            function=function,
            plan=plan,
        )
    if seen_batches == 0:
        where = "" if ranks is None else " on every rank of the group"
        raise ValueError(
            f"{function}: batches is empty{where}; give at least one calibration batch"
        )
    results: dict[str, list[Tensor | None]] = {name: [None] * len(leaves) for name in statistics}
    for name in statistics:
        missing: list[str] = []
        for path in plan[name]:
            leaf = leaves[index[path]]
            why = collected.reasons[path]
            if why is not None and paths is not None:
                raise ValueError(
                    f"{function}: no {_NOUN[name]} for the weight at {path!r}: "
                    + why.format(holds=_HOLDS[name])
                )
            if why is not None or not collected.seen(path):
                missing.append(path)
                continue
            dtype = torch.float32 if leaf.device.type == "mps" else torch.float64
            total = collected.sums[path] if name == "input_norms" else collected.grams[path]
            if total is None:  # not collected for this statistic (another one's path)
                continue
            if name == "input_norms":
                total = total.sqrt()
            elif collected.tokens[path] > 0:  # 2/T sum x x^T, as (X^T X * 2) / T; in place
                total.mul_(2).div_(collected.tokens[path])
            results[name][index[path]] = total.to(device=leaf.device, dtype=dtype)
        if missing and paths is not None:
            shown = missing if len(missing) <= 8 else [*missing[:8], f"... ({len(missing)} in all)"]
            raise ValueError(
                f"{function}: the weights at {shown} were never used as the weight of a traced "
                f"call in the calibration forward; funcsparse traces {_TRACED}"
            )
    return {name: unflatten(spec, values) for name, values in results.items()}


def _unsharded(function: str) -> str:
    """What to calibrate instead of sharded weights (the end of a message)."""
    if function == _FUNCTION:
        return _UNSHARDED
    return _UNSHARDED.replace("the norms are plain tensors", "the statistics are plain tensors")


def _reduction_group(group: object, *, function: str = _FUNCTION) -> dist.ProcessGroup | None:
    """``group`` checked: the process group to sum the statistics over, or None for none."""
    if group is None:
        return None
    world = isinstance(group, str) and group == "world"
    if world or (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                f"{function}: group={short_repr(group)} asks to sum the statistics over ranks, "
                "but this process has no torch.distributed process group (call "
                "torch.distributed.init_process_group first, or pass group=None for the "
                "statistics of this process's batches alone)"
            )
        ranks = dist.group.WORLD if world else group
        if not isinstance(ranks, dist.ProcessGroup):  # WORLD is None once destroyed
            raise ValueError(f"{function}: group='world' has no default process group")
        if dist.get_rank(ranks) < 0:
            raise ValueError(
                f"{function}: this rank is not a member of group {short_repr(ranks)}; call "
                f"{function} with a group only on its member ranks"
            )
        return ranks
    outside = dist.GroupMember.NON_GROUP_MEMBER if dist.is_available() else None
    if type(group) is int and group == outside:
        raise ValueError(
            f"{function}: group is torch.distributed.GroupMember.NON_GROUP_MEMBER, what "
            "torch.distributed.new_group returns on a rank outside the new group; call "
            f"{function} with that group only on its member ranks"
        )
    raise TypeError(
        f"{function}: group must be None (this process's batches only), 'world' (the "
        "default process group) or a torch.distributed.ProcessGroup (e.g. "
        f"DeviceMesh.get_group()), got {describe(group)}"
    )


def _check_collectable(path: str, leaf: Tensor, *, function: str = _FUNCTION) -> None:
    """Raise unless ``leaf`` is a weight whose inputs a forward can be watched for."""
    if leaf.device.type == "meta":
        raise ValueError(
            f"{function}: the leaf at {path!r} is on the meta device; calibration runs "
            "the model on real values"
        )
    if not dist.is_available():
        return
    from torch.distributed.tensor import DTensor

    if isinstance(leaf, DTensor):
        raise TypeError(
            f"{function}: the leaf at {path!r} is a DTensor of shape {tuple(leaf.shape)} "
            f"placed {tuple(leaf.placements)}: a forward never hands a sharded parameter "
            "itself to its calls (FSDP2 all-gathers it into a new unsharded tensor first), "
            "so its inputs cannot be matched to it. Calibrate plain tensors that the forward "
            "uses as they are: the full weights of an unsharded copy on each rank, "
            f"{_unsharded(function)}"
        )


def _all_reduce(
    ranks: dist.ProcessGroup,
    leaves: dict[str, Tensor],
    batches: int,
    collected: _Collected,
    failure: Exception | None,
    *,
    function: str,
    plan: dict[str, list[str]],
) -> int:
    """Sum ``batches`` and ``collected`` over ``ranks``; the batch total.

    A ``torch.distributed.all_reduce`` of ``8 * (11 + world)`` bytes from each rank, then
    (unless a rank failed or the ranks disagree on the weights or the statistics) one of
    ``8 * (features + 2 * weights)`` bytes with input norms, ``8 * 3 * weights`` with
    Hessians, ``8 * (features + 3 * weights)`` with both, and with Hessians one per weight
    seen and supported, of ``8 * in^2`` bytes (in place). ``collected`` is updated in place
    (a weight seen on any rank has statistics; one unsupported on any rank is unsupported).
    A rank whose batches failed raises its error; the others raise a ValueError naming it.
    """
    world, rank = dist.get_world_size(ranks), dist.get_rank(ranks)
    sizes = [math.prod(leaf.shape[1:]) for leaf in leaves.values()]
    n, features = len(sizes), sum(sizes)
    norms, hessians = "input_norms" in plan, "hessian" in plan
    with_hessian = set(plan.get("hessian", ()))
    # What each rank collects: which statistics, at how many weights, how many Hessian entries.
    code = sum(1 << STATISTICS.index(name) for name in plan)
    counted = len(plan.get("input_norms", ()))
    entries = sum(
        size * size for path, size in zip(leaves, sizes, strict=True) if path in with_hessian
    )
    first = next(iter(leaves.values()), None)
    device = torch.device("cpu") if first is None else first.device
    device = torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS
    # The batch count, the layout and the statistics (equal on every rank iff
    # sum x == world * x and sum x^2 == world * x^2) and which ranks failed.
    mine = [n, features, code, counted, entries]
    header = torch.zeros(1 + 2 * len(mine) + world, dtype=torch.int64, device=device)
    header[0] = batches
    header[1 : 1 + 2 * len(mine)] = torch.tensor([v for x in mine for v in (x, x * x)])
    header[1 + 2 * len(mine) + rank] = int(failure is not None)
    dist.all_reduce(header, op=dist.ReduceOp.SUM, group=ranks)
    total, *layout = header[: 1 + 2 * len(mine)].tolist()
    failed = [r for r, bad in enumerate(header[1 + 2 * len(mine) :].tolist()) if bad]
    if failure is not None:
        raise failure
    if failed:
        raise ValueError(
            f"{function}: rank(s) {failed} of the group failed on their calibration batches "
            "(their own error says why); nothing was summed"
        )
    agree = [
        got == world * want
        for got, want in zip(layout, [v for x in mine for v in (x, x * x)], strict=True)
    ]
    if not all(agree[:4]):
        raise ValueError(
            f"{function}: the ranks of the group collect different weights (this rank: "
            f"{n} weights with {features} input features in all); call it with the same "
            "module, params and paths on every rank"
        )
    if not all(agree[4:]):
        asked = ", ".join(
            f"{_PLURAL[name]} at {len(chosen)} weights" for name, chosen in plan.items()
        )
        raise ValueError(
            f"{function}: the ranks of the group collect different statistics (this rank: "
            f"{asked}); call it with the same statistics and paths on every rank"
        )
    # [sums of squares (with input norms) | seen | unsupported | token counts (Hessians)]
    width = features if norms else 0
    body = torch.zeros(width + (3 if hessians else 2) * n, dtype=torch.float64, device=device)
    start = 0
    for i, (path, size) in enumerate(zip(leaves, sizes, strict=True)):
        local = collected.sums[path]
        if norms and local is not None:
            body[start : start + size] = local.reshape(-1).to(device)
        body[width + i] = float(collected.seen(path))
        body[width + n + i] = float(collected.reasons[path] is not None)
        if hessians:
            body[width + 2 * n + i] = float(collected.tokens[path])
        start += size if norms else 0
    dist.all_reduce(body, op=dist.ReduceOp.SUM, group=ranks)
    flags = body[width:].tolist()  # one host sync
    start = 0
    for i, (path, leaf) in enumerate(leaves.items()):
        size = sizes[i]
        if flags[n + i] > 0 and collected.reasons[path] is None:
            collected.reasons[path] = (
                "on another rank of the group it is used in a way {holds} cannot describe "
                "(a grouped conv, or the packed in-projection of cross-attention)"
            )
        seen = flags[i] > 0
        if norms:
            wanted = seen and path in plan["input_norms"]
            collected.sums[path] = (
                body[start : start + size].reshape(leaf.shape[1:]) if wanted else None
            )
            start += size
        if hessians:
            gram = collected.grams[path]
            # Every rank takes this branch for the same weights: the flags are summed.
            if seen and flags[n + i] == 0 and path in with_hessian:
                if gram is None:
                    gram = torch.zeros(size, size, dtype=torch.float64, device=device)
                gram = gram.to(device)
                dist.all_reduce(gram, op=dist.ReduceOp.SUM, group=ranks)
            collected.grams[path] = gram if seen and path in with_hessian else None
            collected.tokens[path] = int(flags[2 * n + i])
    return int(total)


def _plan(
    paths: Mapping[str, Sequence[str]],
    leaf_paths: list[str],
    leaves: list[Any],
    index: dict[str, int],
    *,
    function: str,
    statistics: tuple[str, ...],
) -> dict[str, list[str]]:
    """``paths`` given per statistic, checked: each statistic's leaf paths."""
    for key in paths:
        if key not in statistics:
            raise ValueError(
                f"{function}: paths has the key {short_repr(key)}, which is not one of the "
                f"statistics collected {statistics}; its keys are statistic names, each "
                "mapped to the leaf paths to collect it for"
            )
    absent = [name for name in statistics if name not in paths]
    if absent:
        raise ValueError(
            f"{function}: paths has no entry for {absent[0]!r}; as a mapping, it gives every "
            f"statistic collected {statistics} its leaf paths"
        )
    return {
        name: _wanted(paths[name], leaf_paths, leaves, index, function=function, statistics=(name,))
        for name in statistics
    }


def _wanted(
    paths: object,
    leaf_paths: list[str],
    leaves: list[Any],
    index: dict[str, int],
    *,
    function: str = _FUNCTION,
    statistics: Sequence[str] = ("input_norms",),
) -> list[str]:
    """The leaf paths to collect: ``paths`` checked, or every floating leaf of rank >= 2."""
    if paths is None:
        return [
            path
            for path, leaf in zip(leaf_paths, leaves, strict=True)
            if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.dim() >= 2
        ]
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence):
        raise TypeError(
            f"{function}: paths must be a sequence of leaf paths (strings), got {describe(paths)}"
        )
    wanted: list[str] = []
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(f"{function}: paths holds {describe(path)}; leaf paths are strings")
        if path not in index:
            raise ValueError(
                f"{function}: {path[:200]!r} in paths is not a leaf of params "
                f"(leaves: {leaf_paths[:8]})"
            )
        leaf = leaves[index[path]]
        if not isinstance(leaf, Tensor) or not leaf.is_floating_point() or leaf.dim() < 2:
            kinds = " and ".join(_PLURAL[name] for name in statistics)
            raise ValueError(
                f"{function}: the leaf at {path!r} is {describe(leaf)}; {kinds} are "
                "collected for floating weights of shape (out, *rest): (out_features, "
                "in_features) or a conv's (out_channels, in_channels, *kernel)"
            )
        if path not in wanted:
            wanted.append(path)
    return wanted


def _with_buffer_copies(
    module: nn.Module, paths: list[str], leaves: list[Any], watched: dict[int, Tensor]
) -> dict[str, Any]:
    """``params`` as a flat dict, with a copy of every buffer of ``module`` (given or not).

    A forward may update buffers in place (BatchNorm's running statistics in train mode);
    calibration updates the copies, so neither the module nor ``params`` changes. A buffer
    watched as a weight runs as itself (it is matched by identity).
    """
    flat = dict(zip(paths, leaves, strict=True))
    for name, buffer in module.named_buffers(remove_duplicate=False):
        source = flat.get(name, buffer)
        if isinstance(source, Tensor) and watched.get(id(source)) is not source:
            flat[name] = source.clone()
    return flat
