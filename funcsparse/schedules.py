"""Sparsity schedules: pure functions from a step to a sparsity level.

They carry no state: the caller passes the step. ``funcsparse.adapter``'s ``CubicSL`` and
``LambdaSL`` compute their levels with these functions, so functional training loops get the
same numbers without scheduler objects.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["cubic_sparsity", "lambda_sparsity"]


def cubic_sparsity(
    step: int,
    *,
    initial_sparsity: float,
    final_sparsity: float,
    initial_step: int = 0,
    delta_steps: int = 10,
    total_steps: int = 100,
    initially_zero: bool = False,
) -> float:
    """The cubic schedule of Zhu & Gupta (2017), exactly as ``torch.ao.pruning.CubicSL``.

    ``s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (delta * n)) ** 3``, clamped to
    ``[s_0, s_f]``; before ``t_0`` it is ``s_0``, or 0 when ``initially_zero``.

    Examples:
        >>> config = dict(initial_sparsity=0.0, final_sparsity=0.8, delta_steps=1, total_steps=4)
        >>> [round(cubic_sparsity(t, **config), 4) for t in range(6)]
        [0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]

    Args:
        step: the current step ``t``.
        initial_sparsity: ``s_0``, the level at ``t_0``.
        final_sparsity: ``s_f``, the level reached at ``t_0 + delta_steps * total_steps``.
        initial_step: ``t_0``, when pruning starts. Default 0.
        delta_steps: ``delta``, steps between pruning updates. Default 10.
        total_steps: ``n``, the number of pruning updates. Default 100.
        initially_zero: level 0 (instead of ``s_0``) before ``t_0``. Default False.

    Returns:
        The sparsity level at ``step``.

    References:
        Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
        model compression", 2017, arXiv:1710.01878.
    """
    if initially_zero and step < initial_step:
        return 0
    level = (
        final_sparsity
        + (initial_sparsity - final_sparsity)
        * (1.0 - (step - initial_step) / (delta_steps * total_steps)) ** 3
    )
    return max(initial_sparsity, min(final_sparsity, level))


def lambda_sparsity(step: int, *, final_sparsity: float, factor: Callable[[int], float]) -> float:
    """``final_sparsity * factor(step)``, as ``torch.ao.pruning.LambdaSL`` computes it.

    Examples:
        >>> lambda_sparsity(3, final_sparsity=0.5, factor=lambda t: min(1.0, t / 10))
        0.15

    Args:
        step: the current step.
        final_sparsity: the level that ``factor`` scales.
        factor: maps a step to a multiplier.

    Returns:
        The sparsity level at ``step``.
    """
    return final_sparsity * factor(step)
