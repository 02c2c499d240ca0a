"""Erdos-Renyi-Kernel (ERK): denser small layers, sparser large ones, the total count exact."""

from __future__ import annotations

import math
from collections.abc import Sequence

from funcsparse._errors import describe
from funcsparse.distributions._leaves import Leaf, choose_leaves, exact_levels, pruned_total
from funcsparse.methods._level import check_sparsity

__all__ = ["erk"]

_FUNCTION = "erk"


def erk(
    params: object,
    *,
    sparsity: float,
    kernel: bool = True,
    paths: str | Sequence[str] | None = None,
    dense: str | Sequence[str] = (),
    dense_first: bool = False,
    dense_last: bool = False,
) -> dict[str, float]:
    """Erdos-Renyi-Kernel levels (Evci et al. 2020): ``{path: level}`` whose total count of
    pruned weights is exact.

    A leaf of shape ``(n_out, n_in, k_h, k_w)`` (a conv weight; ``(n_out, n_in)`` for a
    linear one) keeps a fraction ``eps * sum(shape) / prod(shape)`` of its weights,
    ``(n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w)``; with ``kernel=False``
    (plain Erdos-Renyi), ``eps * (n_out + n_in) / (n_out * n_in)``, the kernel's dims
    ignored. The one scale ``eps`` makes the kept weights of the leaves taking part
    (those kept dense included) total ``N - K``, where ``K = round(sparsity * N)`` of their
    ``N`` weights are pruned (Python's ``round``, half to even: the methods' count rule on
    the ``N`` weights at once). A leaf whose fraction would exceed 1 is made dense and left
    out of the solve, which is repeated for the others (a larger ``eps``) until none
    exceeds 1: the paper's handling. Leaves kept dense by ``dense``, ``dense_first`` or
    ``dense_last`` keep all their weights and count toward the target, so the others are
    pruned more; to spread the target over the other leaves only (as the RigL code does
    with a layer in its ``custom_sparsity_map``), leave the leaf out with ``paths``.

    The pruned counts ``numel * (1 - kept fraction)`` are then rounded down or up
    (largest remainders; equal remainders: the earlier leaf rounds up) to integers summing
    to exactly ``K``, and each leaf's level is ``count / numel``, adjusted to the float
    that every method counting ``round(level * numel)`` (``fs.Magnitude``, ``fs.Random``,
    ``fs.SET``, ``fs.RigL``, ...) turns back into that count. A method that counts per row
    (``fs.Wanda`` floors ``in_features * level`` in every row) prunes at most that count.

    Pass the levels to a method with :func:`funcsparse.distributions.level_rules`, e.g.
    ``fs.Pruner(level_rules(erk(params, sparsity=0.9), fs.RigL(sparsity=0.9)))``.

    Examples:
        >>> import torch, funcsparse as fs
        >>> params = {"conv.weight": torch.empty(64, 3, 3, 3, device="meta"),
        ...           "conv.bias": torch.empty(64, device="meta"),
        ...           "fc1.weight": torch.empty(256, 1024, device="meta"),
        ...           "fc2.weight": torch.empty(10, 256, device="meta")}
        >>> levels = fs.distributions.erk(params, sparsity=0.9)
        >>> {path: round(level, 4) for path, level in levels.items()}  # fc2 would exceed 1
        {'conv.weight': 0.2483, 'fc1.weight': 0.9131, 'fc2.weight': 0.0}
        >>> sum(round(level * params[path].numel()) for path, level in levels.items())
        239789
        >>> round(0.9 * (64 * 3 * 3 * 3 + 256 * 1024 + 10 * 256))  # exactly the target's count
        239789
        >>> rules = fs.distributions.level_rules(levels, fs.Magnitude(0.9))
        >>> rules["fc1.weight"]
        Magnitude(sparsity=0.9130859375, count=None)

    Args:
        params: a pytree of tensors (``dict(model.named_parameters())``); only shapes are
            read, so meta tensors do.
        sparsity: the target level, in [0, 1]: the pruned fraction of the weights of all
            the leaves taking part (the dense ones included). Required.
        kernel: True (the default) for Erdos-Renyi-Kernel, whose fraction counts every
            dim; False for Erdos-Renyi, which counts the first two dims only (every leaf
            taking part then needs 2 dims or more).
        paths: the leaves taking part: a leaf path or glob pattern (as rules' keys: ``*``
            within one dotted component, ``**`` across them), or a sequence of them, each
            matching at least one leaf; the chosen leaves must be floating-point with at
            least 1 dim (a 1-D leaf of ``n`` keeps ``eps * n / n``). Default None: every
            floating tensor of 2 or more dims (biases and norm layers' weights left out).
        dense: paths or patterns of leaves taking part that stay dense (level 0). Default
            none.
        dense_first: keep the first leaf taking part dense, in ``params``' order (a flat
            dict's key order, as ``named_parameters()`` gives it; otherwise optree's
            flatten order, which sorts a nested dict's keys). Default False.
        dense_last: keep the last leaf taking part dense, in the same order. Default False.

    Returns:
        ``{path: level}`` for every leaf taking part, in ``params``' order, each a float in
        [0, 1]; ``sum(round(level * numel))`` over them is exactly ``K``. A leaf with no
        entries gets 0.

    Raises:
        TypeError: ``sparsity`` is not a real number; ``kernel``, ``dense_first`` or
            ``dense_last`` is not a bool; ``paths`` or ``dense`` is not a str or a sequence
            of str; ``params`` is not a pytree of tensors; a leaf chosen by ``paths`` is
            not floating-point (naming it).
        ValueError: ``sparsity`` outside [0, 1] or NaN; a path or pattern that matches no
            leaf; a 0-dim leaf chosen by ``paths`` (or a 1-D one with ``kernel=False``);
            no leaf taking part; a target beyond what the leaves not kept dense hold
            (naming the dense ones).

    References:
        U. Evci, T. Gale, J. Menick, P. S. Castro, E. Elsen. Rigging the Lottery: Making
        All Tickets Winners. ICML 2020. arXiv:1911.11134 (section 3, Sparsity
        Distribution). The Erdos-Renyi form: D. C. Mocanu, E. Mocanu, P. Stone, P. H.
        Nguyen, M. Gibescu, A. Liotta. Scalable training of artificial neural networks
        with adaptive sparse connectivity inspired by network science. Nature
        Communications 9, 2383 (2018).
    """
    target = check_sparsity(_FUNCTION, sparsity)
    if not isinstance(kernel, bool):
        raise TypeError(f"{_FUNCTION}: kernel must be a bool, got {describe(kernel)}")
    leaves = choose_leaves(
        params,
        function=_FUNCTION,
        paths=paths,
        dense=dense,
        dense_first=dense_first,
        dense_last=dense_last,
    )
    total = pruned_total(_FUNCTION, target, leaves)
    fractions = _kept_fractions(leaves, total, kernel=kernel)
    ideal = [leaf.numel * (1.0 - kept) for leaf, kept in zip(leaves, fractions, strict=True)]
    return exact_levels(_FUNCTION, leaves, ideal, total)


def _density(leaf: Leaf, *, kernel: bool) -> float:
    """The leaf's unscaled ERK (or ER) fraction of kept weights."""
    if kernel:
        return sum(leaf.shape) / leaf.numel
    if len(leaf.shape) < 2:
        raise ValueError(
            f"{_FUNCTION}: the leaf at {leaf.path!r} has shape {leaf.shape}; kernel=False "
            "(Erdos-Renyi) reads (n_out, n_in) from the first two dims, so every leaf taking "
            "part needs 2 dims or more (leave it out with paths=, or use kernel=True)"
        )
    n_out, n_in = leaf.shape[0], leaf.shape[1]
    return (n_out + n_in) / (n_out * n_in)


def _kept_fractions(leaves: Sequence[Leaf], total: int, *, kernel: bool) -> list[float]:
    """Every leaf's kept fraction: 1 where dense (given, or by the solve), ``eps`` times
    its ERK fraction elsewhere, ``eps`` solved so the kept weights total ``N - total``."""
    kept = float(sum(leaf.numel for leaf in leaves) - total)
    fixed = sum(leaf.numel for leaf in leaves if leaf.dense)
    raw = {
        i: _density(leaf, kernel=kernel)
        for i, leaf in enumerate(leaves)
        if not leaf.dense and leaf.numel
    }
    full: set[int] = set()  # made dense by the solve
    scale = 0.0
    while True:
        rest = [i for i in raw if i not in full]
        budget = kept - fixed - sum(leaves[i].numel for i in full)
        divisor = math.fsum(raw[i] * leaves[i].numel for i in rest)
        scale = budget / divisor if divisor else 0.0
        over = {i for i in rest if scale * raw[i] > 1.0}
        if not over:
            break
        full |= over  # each pass makes at least one more leaf dense: at most len(raw) passes
    return [
        1.0 if leaf.dense or i in full else (scale * raw[i] if i in raw else 0.0)
        for i, leaf in enumerate(leaves)
    ]
