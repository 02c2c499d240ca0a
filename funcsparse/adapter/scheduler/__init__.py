"""``torch.ao.pruning.scheduler``'s path in the adapter: change the prefix, keep the rest.

``from funcsparse.adapter.scheduler.cubic_scheduler import CubicSL`` imports what
``from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL`` did. The modules here
only re-export: the objects live in ``funcsparse.adapter``.
"""

from funcsparse.adapter.scheduler import base_scheduler, cubic_scheduler, lambda_scheduler

__all__ = ["base_scheduler", "cubic_scheduler", "lambda_scheduler"]
