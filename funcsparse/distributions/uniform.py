"""The uniform distribution: every leaf at the target level, the total count exact."""

from __future__ import annotations

from collections.abc import Sequence

from funcsparse.distributions._leaves import choose_leaves, exact_levels, pruned_total
from funcsparse.methods._level import check_sparsity

__all__ = ["uniform"]

_FUNCTION = "uniform"


def uniform(
    params: object,
    *,
    sparsity: float,
    paths: str | Sequence[str] | None = None,
    dense: str | Sequence[str] = (),
    dense_first: bool = False,
    dense_last: bool = False,
) -> dict[str, float]:
    """The same level for every leaf, rounded so that the total count of pruned weights is
    exact: ``{path: level}``.

    The leaves taking part hold ``N`` weights in all; ``K = round(sparsity * N)`` of them
    are pruned (Python's ``round``, half to even: the methods' count rule applied to the
    ``N`` weights at once). Each leaf not kept dense prunes ``K * numel / (N - dense
    weights)`` weights, rounded down or up (largest remainders; equal remainders: the
    earlier leaf rounds up), so the counts sum to exactly ``K``; its level is
    ``count / numel``, adjusted to the float that every method counting
    ``round(level * numel)`` (``fs.Magnitude``, ``fs.Random``, ``fs.SET``, ``fs.RigL``,
    ...) turns back into that count. Kept-dense leaves get 0 and the others make up for
    them. A method that counts per row (``fs.Wanda`` floors ``in_features * level`` in
    every row) prunes at most that count.

    Pass the levels to a method with :func:`funcsparse.distributions.level_rules`.

    Examples:
        >>> import torch, funcsparse as fs
        >>> params = {"fc1.weight": torch.randn(3, 5), "fc1.bias": torch.randn(3),
        ...           "fc2.weight": torch.randn(2, 3)}
        >>> levels = fs.distributions.uniform(params, sparsity=0.5)
        >>> levels  # round(0.5 * 21) = 10 of the 21 weights: 7 and 3
        {'fc1.weight': 0.4666666666666667, 'fc2.weight': 0.5}
        >>> rules = fs.distributions.level_rules(levels, fs.Magnitude(0.5))
        >>> masks = fs.compute_masks(params, rules)
        >>> sum(int((~mask).sum()) for mask in masks.values() if mask is not None)
        10
        >>> fs.distributions.uniform(params, sparsity=0.5, dense_last=True)  # 10 of fc1's 15
        {'fc1.weight': 0.6666666666666666, 'fc2.weight': 0.0}

    Args:
        params: a pytree of tensors (``dict(model.named_parameters())``); only shapes are
            read, so meta tensors do.
        sparsity: the target level, in [0, 1]: the pruned fraction of the weights of all
            the leaves taking part (the dense ones included). Required.
        paths: the leaves taking part: a leaf path or glob pattern (as rules' keys: ``*``
            within one dotted component, ``**`` across them), or a sequence of them, each
            matching at least one leaf; the chosen leaves must be floating-point with at
            least 1 dim. Default None: every floating tensor of 2 or more dims (biases and
            norm layers' weights left out).
        dense: paths or patterns of leaves taking part that stay dense (level 0). Default
            none.
        dense_first: keep the first leaf taking part dense, in ``params``' order (a flat
            dict's key order, as ``named_parameters()`` gives it; otherwise optree's
            flatten order, which sorts a nested dict's keys). Default False.
        dense_last: keep the last leaf taking part dense, in the same order. Default False.

    Returns:
        ``{path: level}`` for every leaf taking part, in ``params``' order, each a float in
        [0, 1]; ``sum(round(level * numel))`` over them is exactly ``K``.

    Raises:
        TypeError: ``sparsity`` is not a real number; ``paths`` or ``dense`` is not a str
            or a sequence of str; ``dense_first``/``dense_last`` is not a bool; ``params``
            is not a pytree of tensors; a leaf chosen by ``paths`` is not floating-point
            (naming it).
        ValueError: ``sparsity`` outside [0, 1] or NaN; a path or pattern that matches no
            leaf; a 0-dim leaf chosen by ``paths``; no leaf taking part; a target beyond
            what the leaves not kept dense hold (naming the dense ones).
    """
    target = check_sparsity(_FUNCTION, sparsity)
    leaves = choose_leaves(
        params,
        function=_FUNCTION,
        paths=paths,
        dense=dense,
        dense_first=dense_first,
        dense_last=dense_last,
    )
    total = pruned_total(_FUNCTION, target, leaves)
    room = sum(leaf.numel for leaf in leaves if not leaf.dense)
    ideal = [0.0 if leaf.dense or not room else total * leaf.numel / room for leaf in leaves]
    return exact_levels(_FUNCTION, leaves, ideal, total)
