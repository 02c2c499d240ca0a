"""The sharded strategies, one module per kind of method; importing registers them."""

from funcsparse.distributed.strategies import entrywise, sparsegpt, structured  # noqa: F401
