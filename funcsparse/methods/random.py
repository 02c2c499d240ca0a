"""Random: prune entries at random, reproducibly (nn.utils.prune's RandomUnstructured)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from funcsparse._errors import short_repr
from funcsparse._select import keep_all_but_lowest, keep_all_but_lowest_drawn
from funcsparse.methods._base import LeafProblem, MaskMethod, describe, require_int
from funcsparse.methods._level import (
    count_problem,
    count_to_prune,
    level_configs,
    set_level,
    total_zeros,
)
from funcsparse.methods._seeds import SEED_LIMIT, leaf_seed

__all__ = ["Random"]

_SEED_LIMIT = SEED_LIMIT  # torch.Generator.manual_seed takes seeds below 2**64


@dataclasses.dataclass(frozen=True, kw_only=True)
class Random(MaskMethod):
    """Zero entries of a tensor of any shape, chosen at random from a seed.

    The random values are ``torch.rand(tensor.shape, dtype=tensor.dtype, generator=g)`` with
    ``g = torch.Generator(device=tensor.device).manual_seed(seed)``, and the entries with the
    ``k`` *largest* values are pruned (``k = round(sparsity * numel)``, or ``count``, as
    ``torch.nn.utils.prune`` counts a fraction or an int ``amount``). That is what
    ``prune.random_unstructured`` does with ``torch.rand_like`` and ``topk``, so after
    ``torch.manual_seed(s)``, ``prune.random_unstructured(module, "weight", amount=a)``
    gives the mask of ``Random(a, seed=s)(module.weight)`` (where the random values do not
    tie; equal values are pruned lowest flat index first). The global RNG is never read or
    advanced: the same config gives the same mask every time, on a given device.

    Raising the level (same seed) never un-prunes an entry: the random values are the same,
    and the larger ``k`` takes a superset.

    Through ``fs.compute_masks`` every leaf gets its own stream: :meth:`for_leaf` derives the
    leaf's seed as ``funcsparse.methods._seeds.leaf_seed(seed, path)``, a hash (deterministic across
    runs and processes, unlike Python's ``hash``). Call ``method.for_leaf(path)`` to get the
    config that ``compute_masks`` applied to ``path``. Members of an ensemble
    (``batch_dims=1``) each get the mask they would get alone, that is, the same draw.

    Keyword data of a call (or ``fs.compute_masks`` pytrees of the same name):

    * ``generator``: a ``torch.Generator`` on the tensor's device whose current state is used
      in place of ``seed``. It is not advanced (the draw uses a copy of its state), so the
      same generator state gives the same mask; advance it, or change ``seed``, for a new one.
    * ``prev_mask``: the mask of an earlier round. A weight pruned before stays pruned and
      the level is the *total* target: previously pruned entries rank before every other,
      then the ``k`` are taken; where more were pruned before, the mask is ``prev_mask``.

    A random method: ``vmappable`` is False (``compute_masks`` loops over ensemble members).
    On CPU the values are drawn chunk by chunk inside the selection (a CPU generator draws
    the same values in pieces as in one go), never held whole: the peak extra memory stays
    below the tensor's size. On other devices they are drawn in one go.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torch.nn.utils import prune
        >>> from funcsparse.methods.random import Random
        >>> w = torch.randn(4, 6)
        >>> mask = Random(0.5, seed=7)(w)
        >>> int((~mask).sum())
        12
        >>> torch.equal(mask, Random(0.5, seed=7)(w))
        True
        >>> layer = nn.Linear(6, 4)
        >>> _ = torch.manual_seed(7)
        >>> _ = prune.random_unstructured(layer, "weight", amount=0.5)
        >>> torch.equal(layer.weight_mask.bool(), mask)
        True

    Args:
        sparsity: the fraction of entries to prune, in ``[0, 1]``; may be given
            positionally. Give it or ``count``.
        count: the number of entries to prune, an int ``>= 0``. Give it or ``sparsity``.
        seed: an int in ``[0, 2**64)`` seeding the draw. Default 0.

    Raises:
        TypeError: neither or both of ``sparsity`` and ``count``, one of the wrong type, or
            ``seed`` not an int; on a call, a tensor that is not floating-point, or a
            ``generator`` that is not a ``torch.Generator``.
        ValueError: ``sparsity`` outside ``[0, 1]`` (or NaN), a negative ``count``, or a seed
            outside ``[0, 2**64)``; on a call, a ``count`` above the tensor's number of
            entries, or a ``generator`` on another device than the tensor.

    References:
        ``torch.nn.utils.prune.RandomUnstructured``, whose semantics this reproduces.
    """

    sparsity: float | None = dataclasses.field(default=None, kw_only=False)
    count: int | None = None
    seed: int = 0

    level_field: ClassVar[str | None] = "sparsity"
    leaf_data: ClassVar[frozenset[str]] = frozenset({"generator"})
    uses_prev_mask: ClassVar[bool] = True
    vmappable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        set_level(self)
        seed = require_int("Random", "seed", self.seed)
        if not 0 <= seed < _SEED_LIMIT:
            raise ValueError(f"Random: seed={short_repr(seed)} must be in [0, 2**64)")

    @classmethod
    def configs(cls, st: Any) -> Any:
        """Valid Random configs: fractions (edges included), small counts, a few seeds."""
        seeds = st.one_of(st.integers(0, 3), st.integers(0, _SEED_LIMIT - 1))
        return level_configs(st, cls, seed=seeds)

    def for_leaf(self, path: str) -> Random:
        """This config with the seed of the leaf at ``path``: ``leaf_seed(seed, path)``."""
        return dataclasses.replace(self, seed=leaf_seed(self.seed, path))

    def leaf_problem(self, tensor: object, /, **data: Any) -> LeafProblem | None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return LeafProblem(TypeError, describe(tensor), "Random needs a floating-point tensor")
        generator = data.get("generator")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                return LeafProblem(
                    TypeError,
                    f"generator={describe(generator)}",
                    "generator must be a torch.Generator",
                )
            if tensor.device.type != "meta" and not _same_device(generator.device, tensor.device):
                return LeafProblem(
                    ValueError,
                    f"a generator on {generator.device} for a tensor on {tensor.device}",
                    "the generator must be on the tensor's device",
                )
        return count_problem("Random", self.count, tensor)

    def _mask(self, tensor: Tensor, **data: Any) -> Tensor:
        k = count_to_prune("Random", self.sparsity, self.count, tensor.numel())
        generator, prev_mask = data.get("generator"), data.get("prev_mask")
        # The k largest values are the k smallest negated ones (negation is exact).
        if tensor.device.type == "cpu":
            # A CPU generator draws the same values in pieces as in one go, so the values
            # are drawn (and redrawn, if the selection needs a second look) chunk by chunk,
            # never held whole: the mask is the only full-size buffer.
            def draws() -> Callable[[int], Tensor]:
                g = self._generator(tensor, generator)
                return lambda size: torch.rand(size, dtype=tensor.dtype, generator=g).neg_()

            return keep_all_but_lowest_drawn(draws, tensor, k, prev_mask)
        values = self.random_values(tensor, generator=generator)
        return keep_all_but_lowest(values.neg_(), k, prev_mask)

    def random_values(self, tensor: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The random values that rank ``tensor``'s entries (the largest are pruned first).

        Args:
            tensor: the tensor whose shape, dtype and device the values take.
            generator: a generator whose state replaces ``seed`` (copied, not advanced).

        Returns:
            ``torch.rand`` values of ``tensor``'s shape, dtype and device.
        """
        g = self._generator(tensor, generator)
        return torch.rand(tensor.shape, dtype=tensor.dtype, device=tensor.device, generator=g)

    def _generator(self, tensor: Tensor, generator: torch.Generator | None) -> torch.Generator:
        """A fresh generator on ``tensor``'s device: seeded, or a copy of ``generator``."""
        g = torch.Generator(device=tensor.device)
        if generator is None:
            g.manual_seed(self.seed)
        else:
            g.set_state(generator.get_state())
        return g

    def expected_zeros(self, tensor: Tensor, **data: Any) -> int | None:
        """The level's count of entries, or the previous zeros where there are more."""
        k = count_to_prune("Random", self.sparsity, self.count, tensor.numel())
        return total_zeros(k, data.get("prev_mask"))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one (an index-less device is its type's current one)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)
