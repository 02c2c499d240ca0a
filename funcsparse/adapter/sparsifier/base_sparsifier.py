"""``torch.ao.pruning.sparsifier.base_sparsifier``: re-exports of :mod:`funcsparse.adapter`."""

from funcsparse.adapter._base import KEYS_NOT_IN_STATE_DICT, SUPPORTED_MODULES, BaseSparsifier

__all__ = ["KEYS_NOT_IN_STATE_DICT", "SUPPORTED_MODULES", "BaseSparsifier"]
