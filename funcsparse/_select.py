"""Scores to boolean selections: exact counts and one deterministic tie rule.

Every selector here ranks entries by score, ascending, and selects the ``k`` lowest-ranked
ones. The ranking is a total order, the one ``torch.sort(..., stable=True)`` produces:

* a smaller score ranks lower;
* equal scores rank by position: the lower flat (row-major) index ranks lower;
* NaN ranks above every number, ``+inf`` included; NaNs among themselves rank by position.

So a selector that promises ``k`` entries selects exactly ``k``, whatever the ties, on any
device, every time. On plain eager tensors the selectors take data-dependent fast paths
(a sampled bracket around the threshold, a tie check); under ``torch.func`` transforms and
``torch.compile`` they run a branch-free formulation. Both give the same selection.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["keep_all_but_lowest", "lowest_covering", "smallest_k", "smallest_k_per_group"]

# Below this many scores a plain ``kthvalue`` beats the sampled bracket.
_BRACKET_MIN = 1 << 16
# Entries drawn (by stride) to bracket the threshold, and the bracket's half-width in them
# (about 3.5 standard deviations of a sample quantile's position). Sorting the sample must
# stay cheap: torch's CPU sort slows down tenfold past 8192 entries.
_SAMPLE_SIZE = 1 << 12
_SAMPLE_MARGIN = 112
# Groups up to this size are ranked by pairwise comparisons; larger ones by a stable sort.
_PAIRWISE_MAX = 8


def is_plain(tensor: Tensor) -> bool:
    """Whether data-dependent Python control flow on ``tensor`` is allowed.

    False under ``torch.func`` transforms (vmap, grad) and while ``torch.compile`` traces.
    """
    if torch.compiler.is_compiling():
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return is_wrapped is not None and not is_wrapped(tensor)


def smallest_k(scores: Tensor, k: int) -> Tensor:
    """Select the ``k`` lowest-ranked entries along the last dimension.

    Args:
        scores: real tensor; every slice along the last dimension is ranked on its own.
        k: how many entries each slice selects; clipped to ``[0, scores.shape[-1]]``.

    Returns:
        A ``torch.bool`` tensor of ``scores``' shape, ``True`` at the selected entries.

    Examples:
        >>> smallest_k(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2)
        tensor([False,  True, False,  True])
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if scores.dim() == 1 and n >= _BRACKET_MIN and is_plain(scores):
        return _smallest_k_eager(scores, k)
    return _smallest_k_pure(scores, k)


def keep_all_but_lowest(ranking: Tensor, k: int, prev_mask: Tensor | None = None) -> Tensor:
    """A keep-mask of ``ranking``'s shape that prunes its ``k`` lowest-ranked entries (flat).

    With ``prev_mask``, entries it prunes rank below every other and stay pruned, so ``k``
    is the total: the mask prunes ``max(k, previously pruned)`` entries. Branch-free in the
    data (``k`` depends on shapes only), so it runs under vmap.

    Examples:
        >>> keep_all_but_lowest(torch.tensor([3.0, -1.0, 2.0, 0.5]), 2)
        tensor([ True, False,  True, False])
        >>> prev = torch.tensor([False, True, True])
        >>> keep_all_but_lowest(torch.tensor([3.0, -1.0, 2.0]), 1, prev)
        tensor([False,  True,  True])
    """
    if prev_mask is not None:
        ranking = torch.where(prev_mask, ranking, torch.full_like(ranking, -torch.inf))
    pruned = smallest_k(ranking.reshape(-1), k).reshape(ranking.shape)
    if prev_mask is not None:
        pruned = pruned | ~prev_mask
    return pruned.logical_not_()  # fresh from smallest_k: negate in place, no new buffer


def lowest_covering(scores: Tensor, gains: Tensor, needed: int | Tensor) -> Tensor:
    """Select units in rank order (lowest score first) until their ``gains`` reach ``needed``.

    The shortest prefix of the ranking (funcsparse's total order: ties by position, NaN
    last) whose gains sum to at least ``needed``: a unit is selected when the gains of the
    units ranked before it sum to less than ``needed``. Everything is selected when the
    gains never reach it, nothing when ``needed <= 0``. Structured methods use it with a
    ``prev_mask``: a unit's gain is the zeros that pruning it adds, so the total zeros reach
    the level's target. Branch-free (``needed`` may be a tensor), so it runs under vmap.

    Args:
        scores: 1-D real tensor, one score per unit.
        gains: 1-D non-negative integer tensor of ``scores``' shape.
        needed: the sum of gains to reach (an int or a 0-d tensor).

    Returns:
        A 1-D ``torch.bool`` tensor, True at the selected units.

    Examples:
        >>> lowest_covering(torch.tensor([0.5, 0.1, 0.9, 0.3]), torch.tensor([2, 0, 2, 1]), 3)
        tensor([ True,  True, False,  True])
    """
    order = torch.sort(scores, stable=True).indices
    ranked_gains = gains.gather(-1, order)
    before = torch.cumsum(ranked_gains, -1) - ranked_gains
    selected = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return selected.scatter(-1, order, before < needed)


def _smallest_k_pure(scores: Tensor, k: int) -> Tensor:
    """Branch-free ``smallest_k``: a k-th value threshold, then ties by a running count."""
    threshold = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    threshold_nan = threshold.isnan()
    scores_nan = scores.isnan()
    below = (scores < threshold) | (threshold_nan & ~scores_nan)
    tied = (scores == threshold) | (threshold_nan & scores_nan)
    still_needed = k - below.sum(dim=-1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=-1) <= still_needed))


def _kth_smallest_value(scores: Tensor, k: int) -> float:
    """The k-th smallest entry of a 1-D tensor (NaN largest), bracketed from a strided sample."""
    n = scores.numel()
    sample = scores[:: max(1, n // _SAMPLE_SIZE)].sort().values
    m = sample.numel()
    at = k * m / n
    lo_at = math.floor(at) - _SAMPLE_MARGIN
    hi_at = math.ceil(at) + _SAMPLE_MARGIN
    lo = sample[lo_at].item() if lo_at > 0 else -math.inf
    hi = sample[hi_at].item() if hi_at < m - 1 else math.inf
    if not (math.isnan(lo) or math.isnan(hi)):
        # Two comparisons over the scores: everything up to ``hi``, and of that, from ``lo``.
        up_to_hi = scores <= hi
        n_up_to_hi = int(torch.count_nonzero(up_to_hi))
        candidates = scores[up_to_hi.logical_and_(scores >= lo)]
        n_below = n_up_to_hi - candidates.numel()
        if n_below < k <= n_below + candidates.numel():
            if lo == hi:  # the bracket is one value (ties): that value is the k-th
                return lo
            if _BRACKET_MIN <= candidates.numel() < n:
                return _kth_smallest_value(candidates, k - n_below)
            return candidates.kthvalue(k - n_below).values.item()
    return scores.kthvalue(k).values.item()


def _smallest_k_eager(scores: Tensor, k: int) -> Tensor:
    """``smallest_k`` for one large 1-D slice, with data-dependent shortcuts."""
    threshold = _kth_smallest_value(scores, k)
    if math.isnan(threshold):
        selected = ~scores.isnan()
        nan_positions = torch.nonzero(scores.isnan()).flatten()
        selected[nan_positions[: k - int(torch.count_nonzero(selected))]] = True
        return selected
    selected = scores <= threshold
    surplus = int(torch.count_nonzero(selected)) - k
    if surplus > 0:
        tied = torch.nonzero(scores == threshold).flatten()
        selected[tied[tied.numel() - surplus :]] = False
    return selected


def smallest_k_per_group(groups: Tensor, k: int, *, valid: Tensor | None = None) -> Tensor:
    """Select the ``k`` lowest-ranked entries of every group along the last dimension.

    Args:
        groups: real tensor ``(..., group_size)``; may be a strided view.
        k: entries to select per group.
        valid: optional bool tensor broadcastable to ``groups``. Invalid entries (padding)
            are never selected and do not take a rank, so a group with fewer than ``k``
            valid entries selects all of them. Default: every entry is valid.

    Returns:
        A contiguous ``torch.bool`` tensor of ``groups``' shape.

    Examples:
        >>> smallest_k_per_group(torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]]), 2)
        tensor([[False,  True, False,  True],
                [ True,  True, False, False]])
    """
    size = groups.shape[-1]
    if k <= 0:
        return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    if k >= size:
        everything = torch.ones(groups.shape, dtype=torch.bool, device=groups.device)
        return everything if valid is None else everything & valid
    if valid is None and size <= _PAIRWISE_MAX:
        if is_plain(groups) and groups.is_floating_point():
            selected = _per_group_by_threshold(groups, k)
            if selected is not None:
                return selected
        return _per_group_pairwise(groups, k)
    return _per_group_sorted(groups, k, valid)


def _sorting_network(size: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort comparators for ``size`` inputs (``i < j`` pairs)."""

    def merge(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
        double = step * 2
        if double >= hi - lo:
            return [(lo, lo + step)]
        pairs = merge(lo, hi, double) + merge(lo + step, hi, double)
        return pairs + [(i, i + step) for i in range(lo + step, hi - step, double)]

    def sort(lo: int, hi: int) -> list[tuple[int, int]]:
        if hi <= lo:
            return []
        mid = lo + (hi - lo) // 2
        return sort(lo, mid) + sort(mid + 1, hi) + merge(lo, hi, 1)

    padded = 1 << max(0, (size - 1).bit_length())
    # Inputs past ``size`` act as +inf: their comparators never swap and are dropped.
    return [(i, j) for i, j in sort(0, padded - 1) if j < size]


def _selection_network(size: int, outputs: frozenset[int]) -> list[tuple[int, int, bool, bool]]:
    """The comparators of the sorting network that the sorted ``outputs`` depend on.

    Each entry is ``(i, j, min_needed, max_needed)``: after it, wire ``i`` holds the minimum
    (if needed later) and wire ``j`` the maximum (if needed later).
    """
    needed = set(outputs)
    plan: list[tuple[int, int, bool, bool]] = []
    for i, j in reversed(_sorting_network(size)):
        if i in needed or j in needed:
            plan.append((i, j, i in needed, j in needed))
            needed.update((i, j))
    return plan[::-1]


def _per_group_by_threshold(groups: Tensor, k: int) -> Tensor | None:
    """Eager shortcut: each group's k-th and (k+1)-th smallest by a sorting network.

    Where the k-th smallest is strictly below the (k+1)-th in every group, ``<=`` the k-th
    selects exactly the k lowest-ranked entries. Otherwise (a tie across the threshold, or a
    NaN) it returns None and the caller ranks exactly.
    """
    wires: list[Tensor | None] = list(groups.unbind(-1))
    for i, j, min_needed, max_needed in _selection_network(len(wires), frozenset((k - 1, k))):
        a, b = wires[i], wires[j]
        if a is None or b is None:  # unreachable: the plan only reads wires it computed
            return None
        if min_needed:
            wires[i] = torch.minimum(a, b)
        if max_needed:
            wires[j] = torch.maximum(a, b)
    kth, next_one = wires[k - 1], wires[k]
    if kth is None or next_one is None or not bool((kth < next_one).all()):
        return None
    return groups <= kth.unsqueeze(-1)


def _per_group_pairwise(groups: Tensor, k: int) -> Tensor:
    """Rank each entry by counting the group members that rank below it (small groups)."""
    columns = groups.unbind(-1)
    check_nan = groups.is_floating_point() and (not is_plain(groups) or bool(groups.isnan().any()))
    nans = [column.isnan() for column in columns] if check_nan else []
    ranks: list[Tensor | None] = [None] * len(columns)

    def add(index: int, vote: Tensor) -> None:
        current = ranks[index]
        ranks[index] = vote.to(torch.uint8) if current is None else current + vote

    for i in range(1, len(columns)):
        for j in range(i):
            # j (the lower index) ranks below i unless its score is larger, NaN largest.
            j_below_i = columns[j] <= columns[i]
            if check_nan:
                j_below_i = j_below_i | nans[i]
            add(i, j_below_i)
            add(j, ~j_below_i)
    return torch.stack([rank < k for rank in ranks if rank is not None], dim=-1)


def _per_group_sorted(groups: Tensor, k: int, valid: Tensor | None) -> Tensor:
    """Rank by a stable sort; with padding, ranks count valid entries only."""
    order = torch.sort(groups, dim=-1, stable=True).indices
    if valid is None:
        rank = torch.arange(groups.shape[-1], device=groups.device).expand(order.shape)
        selected_sorted = rank < k
    else:
        valid_sorted = valid.expand(groups.shape).gather(-1, order)
        selected_sorted = valid_sorted & (valid_sorted.cumsum(dim=-1) <= k)
    return torch.zeros(groups.shape, dtype=torch.bool, device=groups.device).scatter(
        -1, order, selected_sorted
    )
