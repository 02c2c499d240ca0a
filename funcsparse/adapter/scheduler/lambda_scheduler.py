"""``torch.ao.pruning.scheduler.lambda_scheduler``: a re-export of the adapter's."""

from funcsparse.adapter._schedulers import LambdaSL

__all__ = ["LambdaSL"]
