"""``torch.ao.pruning.scheduler.base_scheduler``: a re-export of the adapter's."""

from funcsparse.adapter._schedulers import BaseScheduler

__all__ = ["BaseScheduler"]
