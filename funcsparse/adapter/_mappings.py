"""The sparse quantized module mappings that torch.ao.pruning exports."""

from __future__ import annotations

from torch import nn

__all__ = ["get_dynamic_sparse_quantized_mapping", "get_static_sparse_quantized_mapping"]


def get_static_sparse_quantized_mapping() -> dict[type[nn.Module], type[nn.Module]]:
    """``{nn.Linear: torch.ao.nn.sparse.quantized.Linear}``, as torch.ao.pruning returns it.

    For ``torch.ao.quantization.convert(..., mapping=...)`` after ``squash_mask``.

    Examples:
        >>> from torch import nn
        >>> from funcsparse.adapter import get_static_sparse_quantized_mapping
        >>> get_static_sparse_quantized_mapping()[nn.Linear].__name__
        'Linear'

    Returns:
        A new dict on every call.
    """
    import torch.ao.nn.sparse  # imported on use, as torch.ao does

    return {nn.Linear: torch.ao.nn.sparse.quantized.Linear}


def get_dynamic_sparse_quantized_mapping() -> dict[type[nn.Module], type[nn.Module]]:
    """``{nn.Linear: torch.ao.nn.sparse.quantized.dynamic.Linear}``, as torch.ao.pruning.

    Examples:
        >>> from torch import nn
        >>> from funcsparse.adapter import get_dynamic_sparse_quantized_mapping
        >>> get_dynamic_sparse_quantized_mapping()[nn.Linear].__module__
        'torch.ao.nn.sparse.quantized.dynamic.linear'

    Returns:
        A new dict on every call.
    """
    import torch.ao.nn.sparse  # imported on use, as torch.ao does

    return {nn.Linear: torch.ao.nn.sparse.quantized.dynamic.Linear}
