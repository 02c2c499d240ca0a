"""Per-leaf random streams: a seed and a leaf path hashed into the leaf's own seed."""

from __future__ import annotations

import hashlib

__all__ = ["SEED_LIMIT", "leaf_seed"]

#: Seeds are ints in ``[0, 2**64)``, as ``torch.Generator.manual_seed`` takes them.
SEED_LIMIT = 1 << 64


def leaf_seed(seed: int, path: str) -> int:
    """The seed a random method uses on the leaf at ``path``: a hash of ``(seed, path)``.

    BLAKE2b over the seed's decimal digits and the UTF-8 path, read as 64 bits: the same in
    every process (never Python's salted ``hash()``), different for different seeds or paths
    (but for a 2**-64 chance), so two leaves, or two seeds, never share a stream by design.

    Examples:
        >>> leaf_seed(0, "0.weight") == leaf_seed(0, "0.weight")
        True
        >>> len({leaf_seed(0, "w"), leaf_seed(2**32, "w"), leaf_seed(0, "v")})
        3
    """
    digest = hashlib.blake2b(f"{seed}\x00{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_LIMIT
