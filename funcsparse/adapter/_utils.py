"""FakeSparsity and the fqn helpers that torch.ao.pruning code imports."""

from __future__ import annotations

from itertools import chain
from typing import Any

from torch import Tensor, nn
from torch.nn.utils.parametrize import is_parametrized, type_before_parametrizations

from funcsparse._errors import describe

__all__ = [
    "FakeSparsity",
    "UnsupportedOptionError",
    "fqn_to_module",
    "get_arg_info_from_tensor_fqn",
    "module_contains_param",
    "module_to_fqn",
    "swap_module",
]


class UnsupportedOptionError(ValueError, NotImplementedError):
    """An option torch.ao.pruning refuses with NotImplementedError (``norm=3``, no mapping).

    It is a ValueError, as every bad argument to funcsparse is, and still a
    NotImplementedError, so legacy ``except NotImplementedError`` clauses keep working.
    """


class FakeSparsity(nn.Module):
    """The parametrization that multiplies a tensor by its mask.

    ``module.parametrizations.<name>[0].mask`` is this module's buffer: code may read and
    write it (``mask.mean()``, ``mask[0] = 0``, ``mask.data = ...``), and the sparsifier's
    ``state[tensor_fqn]["mask"]`` is the same tensor. Its ``state_dict`` is empty, so a
    model's ``state_dict`` never carries masks (as in torch.ao). The mask may be a float
    tensor (torch.ao's default) or ``torch.bool`` (one byte per weight instead of four).
    """

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"FakeSparsity: mask must be a torch.Tensor, got {describe(mask)}")
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        if self.mask.shape != x.shape:
            raise ValueError(
                f"FakeSparsity: mask shape {tuple(self.mask.shape)} must match the tensor's "
                f"shape {tuple(x.shape)}"
            )
        return self.mask * x

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {}


def module_to_fqn(model: nn.Module, module: nn.Module, prefix: str = "") -> str | None:
    """The dotted path of ``module`` inside ``model``, or None if it is not a descendant.

    Raises:
        TypeError: ``model`` or ``module`` is not an ``nn.Module``.
    """
    for what, value in (("model", model), ("module", module)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"module_to_fqn: {what} must be an nn.Module, got {describe(value)}")
    return _module_to_fqn(model, module, prefix)


def _module_to_fqn(model: nn.Module, module: nn.Module, prefix: str) -> str | None:
    if module is model:
        return ""
    for name, child in model.named_children():
        fqn = _module_to_fqn(child, module, ".")
        if isinstance(fqn, str):
            return prefix + name + fqn
    return None


def fqn_to_module(model: nn.Module | None, path: str) -> Any:
    """The module or tensor at dotted ``path`` under ``model``, or None if nothing is there.

    Raises:
        TypeError: ``path`` is not a str.
    """
    if not isinstance(path, str):
        raise TypeError(f"fqn_to_module: path must be a str, got {describe(path)}")
    found: Any = model
    if path != "":
        for name in path.split("."):
            found = getattr(found, name, None)
    return found


def get_arg_info_from_tensor_fqn(model: nn.Module, tensor_fqn: str) -> dict[str, Any]:
    """Split ``tensor_fqn`` into ``module_fqn``, ``module`` and ``tensor_name``.

    Raises:
        TypeError: ``tensor_fqn`` is not a str.
    """
    if not isinstance(tensor_fqn, str):
        raise TypeError(
            f"get_arg_info_from_tensor_fqn: tensor_fqn must be a str, got {describe(tensor_fqn)}"
        )
    tensor_name = tensor_fqn.rsplit(".", maxsplit=1)[-1]
    module_fqn = tensor_fqn[: -len(tensor_name) - ("." in tensor_fqn)]
    return {
        "module_fqn": module_fqn,
        "module": fqn_to_module(model, module_fqn),
        "tensor_name": tensor_name,
        "tensor_fqn": tensor_fqn,
    }


def module_contains_param(module: nn.Module, parametrization: type[nn.Module]) -> bool:
    """Whether any tensor of ``module`` carries a ``parametrization`` instance."""
    if not is_parametrized(module):
        return False
    lists = module.parametrizations.values()  # type: ignore[operator]
    return any(isinstance(p, parametrization) for plist in lists for p in plist)


def swap_module(mod: nn.Module, mapping: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    """``mapping[type(mod)].from_dense(mod)``, keeping hooks and device; ``mod`` if unmapped."""
    original_type = type_before_parametrizations(mod)
    if original_type not in mapping:
        return mod
    new_mod: nn.Module = mapping[original_type].from_dense(mod)  # type: ignore[attr-defined]
    for hook in mod._forward_pre_hooks.values():
        new_mod.register_forward_pre_hook(hook)
    for hook in mod._forward_hooks.values():
        new_mod.register_forward_hook(hook)
    devices = {t.device for t in chain(mod.parameters(), mod.buffers())}
    if len(devices) > 1:
        raise ValueError(
            f"swap_module: only single-device modules can be swapped, got devices {devices}"
        )
    if devices:
        new_mod.to(next(iter(devices)))
    return new_mod
