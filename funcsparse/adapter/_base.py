"""BaseSparsifier: torch.ao.pruning's object API, with state that loads with weights_only."""

from __future__ import annotations

import abc
import copy
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from funcsparse.adapter._parametrize import make_picklable
from funcsparse.adapter._utils import (
    FakeSparsity,
    get_arg_info_from_tensor_fqn,
    module_contains_param,
    module_to_fqn,
    swap_module,
)

__all__ = ["SUPPORTED_MODULES", "BaseSparsifier"]

SUPPORTED_MODULES: set[type[nn.Module]] = {nn.Linear}
# Group entries that point into the live model; state_dict() leaves them out.
_MODEL_KEYS = ("module", "module_fqn", "tensor_name")


class BaseSparsifier(abc.ABC):
    """Base of every sparsifier, with torch.ao.pruning.BaseSparsifier's API and state_dict.

    Subclasses implement ``update_mask(module, tensor_name, **config)``, as in torch.ao, or
    ``compute_mask(module, tensor_name, **config) -> Tensor`` (the built-in sparsifiers
    do): ``step()`` then computes every group's mask before writing any, so an error leaves
    every mask as it was.

    Differences from torch.ao, all compatible with code written for it:

    * ``state`` is a ``defaultdict(dict)`` as in torch.ao, but ``state_dict()`` returns
      plain dicts (copies of the entries, sharing the mask tensors), so it survives
      ``torch.save`` and ``torch.load(weights_only=True)``; it still loads into torch.ao.
    * ``load_state_dict`` copies what it needs and never mutates the caller's dict.
    * Bad input (a ``tensor_fqn`` that names nothing, a config that is not a dict,
      conflicting keys, a state_dict of another model) raises a ``TypeError``/``ValueError``
      naming the fqn, before anything changes.
    * ``mask_dtype=torch.bool`` keeps masks at one byte per weight (torch.ao: the weight's
      dtype, four bytes for float32). Default None: torch.ao's behaviour.
    * A prepared model deep-copies and pickles, and so does the sparsifier.
    """

    def __init__(
        self, defaults: dict[str, Any] | None = None, *, mask_dtype: torch.dtype | None = None
    ) -> None:
        if defaults is not None and not isinstance(defaults, dict):
            raise TypeError(
                f"{type(self).__name__}: defaults must be a dict, got {type(defaults).__name__}"
            )
        self.defaults: dict[str, Any] = dict(defaults or {})
        self.state: defaultdict[str, dict[str, Any]] = defaultdict(dict)
        self.groups: list[dict[str, Any]] = []
        self.enable_mask_update = True
        self.mask_dtype = mask_dtype

    def __getstate__(self) -> dict[str, Any]:
        state = {
            "defaults": self.defaults,
            "state": self.state,
            "groups": self.groups,
            "enable_mask_update": self.enable_mask_update,
            "mask_dtype": self.mask_dtype,
        }
        for key in ("model", "config"):
            if key in self.__dict__:
                state[key] = self.__dict__[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        text = type(self).__name__ + " ("
        for i, group in enumerate(self.groups):
            text += f"\n\tGroup {i}\n\t    module: {group['module']}\n"
            for key in sorted(group):
                if key != "module":
                    text += f"\t    {key}: {group[key]}\n"
        return text + ")"

    # -- configuration -------------------------------------------------------------------

    def make_config_from_model(
        self, model: nn.Module, SUPPORTED_MODULES: set[type[nn.Module]] = SUPPORTED_MODULES
    ) -> None:
        """``self.config``: one ``{"tensor_fqn": ...weight}`` entry per supported layer.

        The traversal order is torch.ao's, so groups come out in the same order.
        """
        self.config = []
        stack = [model]
        while stack:
            module = stack.pop()
            for _, child in module.named_children():
                if type(child) in SUPPORTED_MODULES:
                    self.config.append({"tensor_fqn": f"{module_to_fqn(model, child)}.weight"})
                else:
                    stack.append(child)

    def prepare(self, model: nn.Module, config: list[dict[str, Any]] | None) -> None:
        """Attach a ``FakeSparsity`` parametrization to every configured tensor.

        Args:
            model: the model; it is modified in place (deep-copy it to keep the original).
            config: dicts with a ``tensor_fqn`` and per-tensor overrides of the defaults, or
                None for the weight of every ``nn.Linear``.

        Raises:
            TypeError: an entry is not a dict.
            ValueError: an entry has no ``tensor_fqn``, names no tensor of ``model``, names a
                tensor twice, or gives ``module``/``module_fqn``/``tensor_name`` values that
                disagree with its ``tensor_fqn``. Nothing is changed then.
        """
        name = f"{type(self).__name__}.prepare"
        if config is None:
            self.make_config_from_model(model)
            entries = list(self.config)
        elif isinstance(config, dict) or not isinstance(config, Iterable):
            raise TypeError(
                f"{name}: config must be a list of dicts like "
                f"[{{'tensor_fqn': 'linear1.weight'}}], got {type(config).__name__}"
            )
        else:
            entries = list(config)
        groups = [self._make_group(model, entry, name) for entry in entries]
        fqns = [group["tensor_fqn"] for group in self.groups + groups]
        repeated = sorted({fqn for fqn in fqns if fqns.count(fqn) > 1})
        if repeated:
            raise ValueError(f"{name}: tensor_fqn {repeated[0]!r} is configured twice")
        self.model = model
        self.config = config if config is not None else self.config
        self.groups.extend(groups)
        self._prepare(groups)

    def _make_group(self, model: nn.Module, entry: object, name: str) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise TypeError(
                f"{name}: config elements should be dicts like {{'tensor_fqn': "
                f"'linear1.weight'}}, not {type(entry).__name__} {entry!r}"
            )
        group = copy.deepcopy(self.defaults)
        group.update(entry)
        fqn = group.get("tensor_fqn")
        if not isinstance(fqn, str):
            raise ValueError(f"{name}: every config entry needs a 'tensor_fqn' string: {entry!r}")
        info = get_arg_info_from_tensor_fqn(model, fqn)
        target = getattr(info["module"], info["tensor_name"], None)
        if not isinstance(info["module"], nn.Module) or not isinstance(target, Tensor):
            raise ValueError(
                f"{name}: tensor_fqn {fqn!r} names no tensor of the {type(model).__name__}"
            )
        for key, value in info.items():
            given = group.get(key, value)
            leading_dot = key == "tensor_fqn" and given == "." + value
            if given is not value and given != value and not leading_dot:
                raise ValueError(
                    f"{name}: config for {fqn!r} gives {key}={given!r}, which disagrees with "
                    f"its tensor_fqn ({key}={value!r})"
                )
        group.update(info)
        return group

    def _prepare(self, groups: list[dict[str, Any]] | None = None) -> None:
        """Register the parametrizations of ``groups`` (default: all groups)."""
        for group in self.groups if groups is None else groups:
            module, tensor_name = group["module"], group["tensor_name"]
            parametrization = group.get("parametrization", FakeSparsity)
            mask = group.get("mask")
            if mask is None:
                tensor = getattr(module, tensor_name)
                mask = torch.ones_like(tensor, dtype=self.mask_dtype or tensor.dtype)
            self.state.setdefault(group["tensor_fqn"], {})["mask"] = mask
            parametrize.register_parametrization(module, tensor_name, parametrization(mask))
            make_picklable(module)

    # -- masks ---------------------------------------------------------------------------

    def step(self, use_path: bool = True) -> None:
        """Update every group's mask (a no-op while ``enable_mask_update`` is False)."""
        if not self.enable_mask_update:
            return
        with torch.no_grad():
            if type(self).compute_mask is BaseSparsifier.compute_mask:
                for group in self.groups:
                    self.update_mask(**group)
                return
            masks = [self._checked_mask(group) for group in self.groups]
            for group, mask in zip(self.groups, masks, strict=True):
                self._write_mask(group["module"], group["tensor_name"], mask)

    def _checked_mask(self, group: dict[str, Any]) -> Tensor:
        try:
            return self.compute_mask(**group)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"{type(self).__name__}.step: group {group['tensor_fqn']!r}: {err}"
            ) from err

    @staticmethod
    def _write_mask(module: nn.Module, tensor_name: str, mask: Tensor) -> None:
        """Replace the parametrization's mask data, keeping the tensor object and its dtype."""
        current = module.parametrizations[tensor_name][0].mask  # type: ignore[union-attr, index]
        current.data = mask.to(current.dtype)

    def compute_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> Tensor:
        """The new mask of ``module.<tensor_name>`` (subclasses override this or update_mask)."""
        raise NotImplementedError

    @abc.abstractmethod
    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs: Any) -> None:
        """Write the new mask of ``module.<tensor_name>`` into its parametrization."""

    def squash_mask(
        self,
        params_to_keep: tuple[str, ...] | None = None,
        params_to_keep_per_layer: dict[str, tuple[str, ...]] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Remove the parametrizations, leaving the masked tensors in place.

        ``params_to_keep`` (config keys kept for every layer) and
        ``params_to_keep_per_layer`` (module fqn to keys) end up in ``module.sparse_params``.
        """
        for group in self.groups:
            module = group["module"]
            parametrize.remove_parametrizations(
                module, group["tensor_name"], leave_parametrized=True
            )
            sparse_params: dict[str, Any] = {}
            if params_to_keep is not None:
                sparse_params.update({key: group[key] for key in params_to_keep})
            if params_to_keep_per_layer is not None:
                per_layer = params_to_keep_per_layer.get(group["module_fqn"])
                if per_layer is not None:
                    sparse_params.update({key: group[key] for key in per_layer})
            if sparse_params:
                module.sparse_params = sparse_params

    def convert(
        self,
        module: nn.Module,
        mapping: dict[type[nn.Module], type[nn.Module]] | None = None,
        inplace: bool = False,
        parameterization: type[nn.Module] = FakeSparsity,
    ) -> nn.Module:
        """Swap parametrized submodules for ``mapping[type].from_dense(submodule)``."""
        if mapping is None:
            raise NotImplementedError("Need to auto generate mapping ")
        if not inplace:
            module = copy.deepcopy(module)
        reassign: dict[str, nn.Module] = {}
        for name, child in module.named_children():
            if (
                module_contains_param(child, parameterization)
                and type_before_parametrizations(child) in mapping
            ):
                reassign[name] = swap_module(child, mapping)
            else:
                reassign[name] = self.convert(
                    child, mapping=mapping, inplace=True, parameterization=parameterization
                )
        for name, child in reassign.items():
            module._modules[name] = child
        return module

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {fqn: {"mask": ...}}, "groups": [config without model references]}``.

        Plain dicts, lists, strings, numbers and tensors only: it survives ``torch.save``
        and ``torch.load(weights_only=True)``, and loads into torch.ao's sparsifiers.
        """
        groups = [
            {key: value for key, value in group.items() if key not in _MODEL_KEYS}
            for group in self.groups
        ]
        return {"state": {fqn: dict(entry) for fqn, entry in self.state.items()}, "groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load groups and masks saved by ``state_dict()`` (this adapter's or torch.ao's).

        The caller's dict is not mutated; masks are copied. With ``strict``, every fqn must
        name a tensor of ``self.model`` with the mask's shape; otherwise unknown fqns are
        skipped.

        Raises:
            ValueError: with ``strict``, an fqn names no tensor of the model, or a mask's
                shape differs from its tensor's. Nothing is changed then.
        """
        name = f"{type(self).__name__}.load_state_dict"
        model = getattr(self, "model", None)
        if model is None:
            raise ValueError(f"{name}: prepare(model, config) must come first")
        groups = copy.deepcopy(list(state_dict["groups"]))
        states: dict[str, dict[str, Any]] = {}
        masks: dict[str, Tensor] = {}
        infos: dict[str, dict[str, Any]] = {}
        for fqn, entry in state_dict["state"].items():
            info = get_arg_info_from_tensor_fqn(model, fqn)
            tensor = (
                getattr(info["module"], info["tensor_name"], None)
                if info["module"] is not None
                else None
            )
            if not isinstance(tensor, Tensor):
                if strict:
                    raise ValueError(
                        f"{name}: tensor_fqn {fqn!r} names no tensor of the {type(model).__name__}"
                    )
                continue
            mask = entry.get("mask")
            if mask is not None and tuple(mask.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{name}: the mask for {fqn!r} has shape {tuple(mask.shape)}, the tensor "
                    f"{tuple(tensor.shape)}: is this state_dict from another model?"
                )
            infos[fqn] = info
            states[fqn] = {
                key: copy.deepcopy(value) for key, value in entry.items() if key != "mask"
            }
            if mask is not None:
                masks[fqn] = mask.detach().to(dtype=self.mask_dtype or mask.dtype, copy=True)
        # Everything is checked: now change the model and the sparsifier.
        for fqn, info in infos.items():
            module, tensor_name = info["module"], info["tensor_name"]
            fake = self._find_fake_sparsity(module, tensor_name)
            if fake is None:
                fake = FakeSparsity(
                    torch.ones_like(getattr(module, tensor_name), dtype=self.mask_dtype)
                )
                parametrize.register_parametrization(module, tensor_name, fake)
                make_picklable(module)
            if fqn in masks:
                fake.mask = masks[fqn]
            states[fqn]["mask"] = fake.mask
            for group in groups:
                if group["tensor_fqn"] == fqn:
                    group.update(info)
        self.state = defaultdict(dict, states)
        self.groups = groups

    @staticmethod
    def _find_fake_sparsity(module: nn.Module, tensor_name: str) -> FakeSparsity | None:
        if not parametrize.is_parametrized(module, tensor_name):
            return None
        for p in module.parametrizations[tensor_name]:  # type: ignore[index]
            if isinstance(p, FakeSparsity):
                return p
        return None
