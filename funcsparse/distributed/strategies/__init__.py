"""The sharded strategies, one module per kind of method; importing registers them."""

from funcsparse.distributed.strategies import (  # noqa: F401
    dynamic,
    entrywise,
    sparsegpt,
    structured,
)
