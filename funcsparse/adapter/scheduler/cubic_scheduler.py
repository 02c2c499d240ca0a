"""``torch.ao.pruning.scheduler.cubic_scheduler``: a re-export of the adapter's."""

from funcsparse.adapter._schedulers import CubicSL

__all__ = ["CubicSL"]
