"""BaseSparsifier: torch.ao.pruning's object API, with state that loads with weights_only."""

from __future__ import annotations

import abc
import copy
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from funcsparse._errors import describe, short_repr
from funcsparse.adapter._parametrize import make_picklable
from funcsparse.adapter._utils import (
    FakeSparsity,
    UnsupportedOptionError,
    get_arg_info_from_tensor_fqn,
    module_contains_param,
    module_to_fqn,
    swap_module,
)

__all__ = ["KEYS_NOT_IN_STATE_DICT", "SUPPORTED_MODULES", "BaseSparsifier"]

SUPPORTED_MODULES: set[type[nn.Module]] = {nn.Linear}
#: Group entries that point into the live model; state_dict() leaves them out (torch.ao's name).
KEYS_NOT_IN_STATE_DICT = ["module", "module_fqn", "tensor_name"]
_STATE_DICT_KEYS = ("state", "groups")


def group_error(owner: str, fqn: object, err: Exception) -> Exception:
    """``err`` again (same type), its message prefixed with ``owner`` and the group's fqn."""
    text = str(err)
    return type(err)(f"{owner}: group {fqn!r}: {text}")


def check_mask_dtype(owner: str, mask_dtype: object) -> torch.dtype | None:
    """``mask_dtype`` if it is None, ``torch.bool`` or a floating dtype of 2+ bytes."""
    if mask_dtype is None:
        return None
    if not isinstance(mask_dtype, torch.dtype):
        raise TypeError(
            f"{owner}: mask_dtype must be None or a torch.dtype such as torch.bool, got "
            f"{describe(mask_dtype)}"
        )
    if mask_dtype != torch.bool and not (mask_dtype.is_floating_point and mask_dtype.itemsize >= 2):
        raise ValueError(
            f"{owner}: mask_dtype={mask_dtype} is not supported; masks are torch.bool or a "
            "floating dtype of 2 bytes or more (torch.float16, torch.bfloat16, torch.float32, "
            "torch.float64)"
        )
    return mask_dtype


def mask_problem(
    owner: str, fqn: str, mask: object, tensor: Tensor, hint: str = ""
) -> Exception | None:
    """Why ``mask`` cannot be the mask of ``tensor`` (at ``fqn``), or None when it can.

    A mask is a strided tensor of ``tensor``'s shape whose dtype is bool, an integer or a
    floating dtype of 2+ bytes (torch.ao's masks have the weight's dtype), with values (not on
    the meta device).
    """
    where = f"{owner}: the mask for {fqn!r}"
    if not isinstance(mask, Tensor):
        return TypeError(f"{where} must be a torch.Tensor, got {describe(mask)}")
    dtype = mask.dtype
    is_float = dtype.is_floating_point and dtype.itemsize >= 2
    is_int = not dtype.is_floating_point and not dtype.is_complex and dtype.itemsize > 0
    if mask.layout != torch.strided or mask.is_quantized or not (is_float or is_int):
        return TypeError(
            f"{where} is {describe(mask)} with layout {mask.layout}; masks are dense "
            "bool, integer or floating (2+ bytes) tensors"
        )
    if mask.is_meta:
        return ValueError(f"{where} is {describe(mask)} on the meta device, which holds no values")
    if tuple(mask.shape) != tuple(tensor.shape):
        return ValueError(
            f"{where} has shape {short_repr(tuple(mask.shape))}, the tensor "
            f"{short_repr(tuple(tensor.shape))}{hint}"
        )
    return None


class BaseSparsifier(abc.ABC):
    """Base of every sparsifier, with torch.ao.pruning.BaseSparsifier's API and state_dict.

    Subclasses implement ``update_mask(module, tensor_name, **config)``, as in torch.ao, or
    ``compute_mask(module, tensor_name, **config) -> Tensor`` (the built-in sparsifiers
    do): ``step()`` then computes every group's mask before writing any, so an error leaves
    every mask as it was.

    ``state`` is a ``defaultdict(dict)`` that holds what torch.ao's holds: right after
    ``prepare``, ``state[tensor_fqn]["mask"]`` is the parametrization's mask (the same
    tensor); once the masks have gone into a state_dict, or come from one, they live only in
    the parametrizations (``module.parametrizations.weight[0].mask``) and ``state`` holds
    plain values, so two sparsifiers' states compare with ``==`` after a save and a load, as
    in torch.ao.

    Differences from torch.ao, all compatible with code written for it:

    * ``state_dict()`` returns plain dicts (copies of the entries, sharing the mask
      tensors), so it survives ``torch.save`` and ``torch.load(weights_only=True)``; it
      still loads into torch.ao. It takes each mask from the live parametrization.
    * ``load_state_dict`` copies what it needs and never mutates the caller's dict (torch.ao
      pops the masks out of it, and so out of the sparsifier that made it).
    * Bad input (a model that is not an ``nn.Module``, a ``tensor_fqn`` that names nothing,
      a config that is not a dict or that the sparsifier cannot use, a malformed or foreign
      state_dict) raises a ``TypeError``/``ValueError`` naming the method, the fqn and the
      value, before anything changes: a call that raises changes nothing.
    * ``mask_dtype=torch.bool`` keeps masks at one byte per weight (torch.ao: the weight's
      dtype, four bytes for float32). Default None: torch.ao's behaviour.
    * A prepared model deep-copies and pickles, and so does the sparsifier.

    Args:
        defaults: config values every group starts from (a dict). Default None: ``{}``.
        mask_dtype: dtype of new masks: None (the weight's dtype, as torch.ao),
            ``torch.bool`` or a floating dtype. Keyword only.

    Raises:
        TypeError: ``defaults`` is not a dict, ``mask_dtype`` is not a ``torch.dtype``.
        ValueError: ``mask_dtype`` is a dtype masks cannot have (complex, float8, ...).
    """

    def __init__(
        self, defaults: dict[str, Any] | None = None, *, mask_dtype: torch.dtype | None = None
    ) -> None:
        owner = type(self).__name__
        if defaults is not None and not isinstance(defaults, dict):
            raise TypeError(f"{owner}: defaults must be a dict, got {describe(defaults)}")
        self.mask_dtype = check_mask_dtype(owner, mask_dtype)
        self.defaults: dict[str, Any] = dict(defaults or {})
        self.state: defaultdict[str, dict[str, Any]] = defaultdict(dict)
        self.groups: list[dict[str, Any]] = []
        self.enable_mask_update = True

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

        Raises:
            TypeError: ``model`` is not an ``nn.Module``.
        """
        self.config = self._config_from_model(
            model, SUPPORTED_MODULES, f"{type(self).__name__}.make_config_from_model"
        )

    @staticmethod
    def _config_from_model(
        model: nn.Module, supported: set[type[nn.Module]], owner: str
    ) -> list[dict[str, Any]]:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{owner}: model must be an nn.Module, got {describe(model)}")
        config = []
        stack = [model]
        while stack:
            module = stack.pop()
            for _, child in module.named_children():
                if type(child) in supported:
                    config.append({"tensor_fqn": f"{module_to_fqn(model, child)}.weight"})
                else:
                    stack.append(child)
        return config

    def prepare(self, model: nn.Module, config: list[dict[str, Any]] | None) -> None:
        """Attach a ``FakeSparsity`` parametrization to every configured tensor.

        Every entry is checked (its ``tensor_fqn``, and its values against the sparsifier and
        the tensor) before the model or the sparsifier changes.

        Args:
            model: the model; it is modified in place (deep-copy it to keep the original).
            config: dicts with a ``tensor_fqn`` and per-tensor overrides of the defaults, or
                None for the weight of every ``nn.Linear``.

        Raises:
            TypeError: ``model`` is not an ``nn.Module``, ``config`` is not a list of dicts,
                a ``tensor_fqn`` is not a str, a config value has the wrong type.
            ValueError: an entry has no ``tensor_fqn``, names no tensor of ``model``, names a
                tensor twice, gives ``module``/``module_fqn``/``tensor_name`` values that
                disagree with its ``tensor_fqn``, or gives values the sparsifier cannot use
                on that tensor. Nothing is changed then.
        """
        name = f"{type(self).__name__}.prepare"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name}: model must be an nn.Module, got {describe(model)}")
        if config is None:
            entries = self._config_from_model(model, SUPPORTED_MODULES, name)
        elif isinstance(config, (dict, str, bytes)) or not isinstance(config, Iterable):
            raise TypeError(
                f"{name}: config must be None or a list of dicts like "
                f"[{{'tensor_fqn': 'linear1.weight'}}], got {describe(config)}"
            )
        else:
            entries = list(config)
        groups = [self._make_group(model, entry, name) for entry in entries]
        fqns = [group["tensor_fqn"] for group in self.groups + groups]
        repeated = sorted({fqn for fqn in fqns if fqns.count(fqn) > 1})
        if repeated:
            raise ValueError(f"{name}: tensor_fqn {repeated[0]!r} is configured twice")
        for group in groups:
            self._check_group(group, name)
        # Everything is checked: now change the sparsifier and the model.
        self.model = model
        self.config = config if config is not None else entries
        self.groups.extend(groups)
        self._prepare(groups)

    def _make_group(self, model: nn.Module, entry: object, name: str) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise TypeError(
                f"{name}: config elements should be dicts like {{'tensor_fqn': "
                f"'linear1.weight'}}, not {describe(entry)}"
            )
        group = copy.deepcopy(self.defaults)
        group.update(entry)
        if "tensor_fqn" not in group:
            raise ValueError(
                f"{name}: every config entry needs a 'tensor_fqn' string: {short_repr(entry)}"
            )
        fqn = group["tensor_fqn"]
        if not isinstance(fqn, str):
            raise TypeError(f"{name}: tensor_fqn must be a str, got {describe(fqn)}")
        info = get_arg_info_from_tensor_fqn(model, fqn)
        target = getattr(info["module"], info["tensor_name"], None)
        if not isinstance(info["module"], nn.Module) or not isinstance(target, Tensor):
            raise ValueError(
                f"{name}: tensor_fqn {fqn!r} names no tensor of the {type(model).__name__}"
            )
        if not _maskable(info["module"], info["tensor_name"]):
            raise ValueError(
                f"{name}: tensor_fqn {fqn!r} names a plain tensor attribute; only parameters "
                "and buffers can carry a mask (register it with register_buffer)"
            )
        for key, value in info.items():
            given = group.get(key, value)
            leading_dot = key == "tensor_fqn" and given == "." + value
            if given is not value and not leading_dot and not _same(given, value):
                raise ValueError(
                    f"{name}: config for {fqn!r} gives {key}={short_repr(given)}, which "
                    f"disagrees with its tensor_fqn ({key}={short_repr(value)})"
                )
        group.update(info)
        return group

    def _check_group(self, group: dict[str, Any], owner: str) -> None:
        """Raise if ``group`` cannot be prepared: a bad ``mask``, or a bad config value."""
        tensor = getattr(group["module"], group["tensor_name"])
        if group.get("mask") is not None:
            problem = mask_problem(owner, group["tensor_fqn"], group["mask"], tensor)
            if problem is not None:
                raise problem
        self._check_config(group, tensor, owner)

    def _check_config(self, group: dict[str, Any], tensor: Tensor, owner: str) -> None:
        """Raise a TypeError/ValueError naming ``owner`` and the group's fqn if the group's
        config cannot mask ``tensor`` (subclasses check their keys; default: nothing)."""
        return None

    def _prepare(self, groups: list[dict[str, Any]] | None = None) -> None:
        """Register the parametrizations of ``groups`` (default: all groups)."""
        for group in self.groups if groups is None else groups:
            module, tensor_name = group["module"], group["tensor_name"]
            parametrization = group.get("parametrization", FakeSparsity)
            mask = group.get("mask")
            if mask is None:
                tensor = getattr(module, tensor_name)
                mask = torch.ones_like(tensor, dtype=self.mask_dtype or tensor.dtype)
            else:  # the caller's tensor stays the caller's: steps write into a copy
                mask = mask.detach().to(dtype=self.mask_dtype or mask.dtype, copy=True)
            self.state[group["tensor_fqn"]]["mask"] = mask
            parametrize.register_parametrization(module, tensor_name, parametrization(mask))
            make_picklable(module)

    # -- masks ---------------------------------------------------------------------------

    def step(self, use_path: bool = True) -> None:
        """Update every group's mask (a no-op while ``enable_mask_update`` is False).

        Raises:
            TypeError, ValueError: a group's config cannot mask its tensor (the message names
                the group's fqn), or a group has no mask (``squash_mask`` removed it). No
                mask is changed then (with the built-in sparsifiers).
        """
        if not self.enable_mask_update:
            return
        with torch.no_grad():
            if type(self).compute_mask is BaseSparsifier.compute_mask:
                for group in self.groups:
                    self.update_mask(**group)
                return
            name = f"{type(self).__name__}.step"
            for group in self.groups:
                if self._find_fake_sparsity(group["module"], group["tensor_name"]) is None:
                    raise ValueError(
                        f"{name}: group {group['tensor_fqn']!r} has no mask to update (was "
                        "squash_mask called? prepare the model again)"
                    )
            masks = [self._checked_mask(group, name) for group in self.groups]
            for group, mask in zip(self.groups, masks, strict=True):
                self._write_mask(group["module"], group["tensor_name"], mask)

    def _checked_mask(self, group: dict[str, Any], name: str) -> Tensor:
        try:
            return self.compute_mask(**group)
        except (TypeError, ValueError) as err:
            raise group_error(name, group["tensor_fqn"], err) from err

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
        ``state`` is left as it is, as in torch.ao.

        Raises:
            TypeError: ``params_to_keep`` is not a sequence of str, or
                ``params_to_keep_per_layer`` not a dict of such sequences.
            ValueError: a kept key is not in a group's config, or a group has no
                parametrization left (squash_mask was called already). Nothing is changed
                then.
        """
        name = f"{type(self).__name__}.squash_mask"
        keep = _key_tuple(name, "params_to_keep", params_to_keep)
        per_layer: dict[str, tuple[str, ...] | None] = {}
        if params_to_keep_per_layer is not None:
            if not isinstance(params_to_keep_per_layer, Mapping):
                raise TypeError(
                    f"{name}: params_to_keep_per_layer must be a dict of module fqn to keys, "
                    f"got {describe(params_to_keep_per_layer)}"
                )
            for fqn, layer_keys in params_to_keep_per_layer.items():
                what = f"params_to_keep_per_layer[{fqn!r}]"
                per_layer[fqn] = _key_tuple(name, what, layer_keys)
        plans = []
        for group in self.groups:
            if not parametrize.is_parametrized(group["module"], group["tensor_name"]):
                raise ValueError(
                    f"{name}: group {group['tensor_fqn']!r} has no parametrization to remove "
                    "(was squash_mask called already?)"
                )
            sparse_params: dict[str, Any] = {}
            key_sets: list[tuple[str, ...] | None] = [keep, per_layer.get(group["module_fqn"])]
            for keys in key_sets:
                for key in keys or ():
                    if key not in group:
                        raise ValueError(
                            f"{name}: key {key!r} is not in the config of group "
                            f"{group['tensor_fqn']!r} (its keys: {sorted(map(str, group))})"
                        )
                    sparse_params[key] = group[key]
            plans.append((group, sparse_params))
        for group, sparse_params in plans:
            module = group["module"]
            parametrize.remove_parametrizations(
                module, group["tensor_name"], leave_parametrized=True
            )
            if sparse_params:
                module.sparse_params = sparse_params

    def convert(
        self,
        module: nn.Module,
        mapping: dict[type[nn.Module], type[nn.Module]] | None = None,
        inplace: bool = False,
        parameterization: type[nn.Module] = FakeSparsity,
    ) -> nn.Module:
        """Swap parametrized submodules for ``mapping[type].from_dense(submodule)``.

        Raises:
            TypeError: ``module`` is not an ``nn.Module`` or ``mapping`` not a dict of
                module classes.
            UnsupportedOptionError: ``mapping`` is None (a ValueError that is also torch.ao's
                NotImplementedError).
        """
        name = f"{type(self).__name__}.convert"
        if mapping is None:
            raise UnsupportedOptionError(f"{name}: Need to auto generate mapping (give mapping)")
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}: module must be an nn.Module, got {describe(module)}")
        if not isinstance(mapping, Mapping) or not all(
            isinstance(key, type) and isinstance(value, type) for key, value in mapping.items()
        ):
            raise TypeError(
                f"{name}: mapping must be a dict of module classes to module classes, got "
                f"{describe(mapping)}"
            )
        if not inplace:
            module = copy.deepcopy(module)
        reassign: dict[str, nn.Module] = {}
        for child_name, child in module.named_children():
            if (
                module_contains_param(child, parameterization)
                and type_before_parametrizations(child) in mapping
            ):
                reassign[child_name] = swap_module(child, mapping)
            else:
                reassign[child_name] = self.convert(
                    child,
                    mapping=mapping,
                    inplace=True,
                    parameterization=parameterization,
                )
        for child_name, child in reassign.items():
            module._modules[child_name] = child
        return module

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {fqn: {"mask": ..., ...}}, "groups": [configs without the model]}``.

        Plain dicts, lists, strings, numbers and tensors only: it survives ``torch.save``
        and ``torch.load(weights_only=True)``, and loads into torch.ao's sparsifiers. Each
        mask is the live parametrization's (shared, not copied). From here on the masks live
        only in the parametrizations: ``state`` keeps its plain values, as torch.ao's does
        once its state_dict has been loaded.
        """
        groups = [
            {key: value for key, value in group.items() if key not in KEYS_NOT_IN_STATE_DICT}
            for group in self.groups
        ]
        states = {fqn: dict(entry) for fqn, entry in self.state.items()}
        for group in self.groups:
            fake = self._find_fake_sparsity(group["module"], group["tensor_name"])
            if fake is None:
                continue
            fqn = group["tensor_fqn"]
            states.setdefault(fqn, {})["mask"] = fake.mask
            entry = self.state.get(fqn)
            if entry is not None:
                entry.pop("mask", None)
        return {"state": states, "groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load groups and masks saved by ``state_dict()`` (this adapter's or torch.ao's).

        The caller's dict is not mutated; masks are copied (to the mask dtype, and to their
        tensor's device). Afterwards, as in torch.ao, the masks live in the parametrizations
        and ``state`` holds the other, plain values. With ``strict``, every fqn must name a
        tensor of ``self.model``; otherwise entries and groups of unknown fqns are skipped.

        Raises:
            TypeError: ``state_dict`` is not a dict of ``"state"`` (a dict of dicts) and
                ``"groups"`` (a list of dicts), an fqn is not a str, a mask is not a tensor
                of a mask dtype, or a group's config value has the wrong type.
            ValueError: ``prepare`` has not been called, a key is missing or unknown, with
                ``strict`` an fqn names no tensor of the model, a mask's shape differs from
                its tensor's, a group names a tensor twice or names one that has neither a
                state entry nor a mask in the model, or a group's config cannot mask its
                tensor. Nothing is changed then.
        """
        name = f"{type(self).__name__}.load_state_dict"
        model = getattr(self, "model", None)
        if model is None:
            raise ValueError(f"{name}: prepare(model, config) must come first")
        if not isinstance(strict, bool):
            raise TypeError(f"{name}: strict must be a bool, got {describe(strict)}")
        given_states, given_groups = _split_state_dict(name, state_dict)
        states: dict[str, dict[str, Any]] = {}
        masks: dict[str, Tensor] = {}
        infos: dict[str, dict[str, Any]] = {}
        for fqn, entry in given_states.items():
            if not isinstance(fqn, str):
                raise TypeError(f"{name}: the keys of 'state' are tensor fqns, got {describe(fqn)}")
            if not isinstance(entry, Mapping):
                raise TypeError(
                    f"{name}: state[{fqn!r}] must be a dict like {{'mask': tensor}}, got "
                    f"{describe(entry)}"
                )
            info, tensor = _tensor_at(model, fqn)
            if tensor is None:
                if strict:
                    raise ValueError(
                        f"{name}: tensor_fqn {fqn!r} names no tensor of the {type(model).__name__}"
                    )
                continue
            if not _maskable(info["module"], info["tensor_name"]):
                raise ValueError(
                    f"{name}: tensor_fqn {fqn!r} names a plain tensor attribute; only "
                    "parameters and buffers can carry a mask"
                )
            mask = entry.get("mask")
            if mask is not None:
                hint = ": is this state_dict from another model?"
                problem = mask_problem(name, fqn, mask, tensor, hint)
                if problem is not None:
                    raise problem
                masks[fqn] = mask.detach().to(
                    device=tensor.device, dtype=self.mask_dtype or mask.dtype, copy=True
                )
            infos[fqn] = info
            states[fqn] = {
                key: copy.deepcopy(value) for key, value in entry.items() if key != "mask"
            }
        groups: list[dict[str, Any]] = []
        for i, given in enumerate(given_groups):
            if not isinstance(given, Mapping):
                raise TypeError(f"{name}: groups[{i}] must be a dict, got {describe(given)}")
            fqn = given.get("tensor_fqn")
            if not isinstance(fqn, str):
                raise TypeError(
                    f"{name}: groups[{i}] needs a 'tensor_fqn' str, got {describe(fqn)}"
                )
            info, tensor = _tensor_at(model, fqn)
            if tensor is None:
                if strict:
                    raise ValueError(
                        f"{name}: groups[{i}]: tensor_fqn {fqn!r} names no tensor of the "
                        f"{type(model).__name__}"
                    )
                continue
            if fqn in (group["tensor_fqn"] for group in groups):
                raise ValueError(f"{name}: groups name tensor_fqn {fqn!r} twice")
            fake = self._find_fake_sparsity(info["module"], info["tensor_name"])
            if fqn not in states and fake is None:
                raise ValueError(
                    f"{name}: groups[{i}] names {fqn!r}, which has no entry in 'state' and no "
                    "mask in the model"
                )
            group = {
                key: copy.deepcopy(value)
                for key, value in given.items()
                if key not in KEYS_NOT_IN_STATE_DICT
            }
            group.update(info)
            self._check_config(group, tensor, name)
            groups.append(group)
        # Everything is checked: now change the model and the sparsifier.
        for fqn, info in infos.items():
            module, tensor_name = info["module"], info["tensor_name"]
            fake = self._find_fake_sparsity(module, tensor_name)
            if fake is None:
                tensor = getattr(module, tensor_name)
                fake = FakeSparsity(torch.ones_like(tensor, dtype=self.mask_dtype or tensor.dtype))
                parametrize.register_parametrization(module, tensor_name, fake)
                make_picklable(module)
            if fqn in masks:
                fake.mask = masks[fqn]
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


def _maskable(module: nn.Module, tensor_name: str) -> bool:
    """Whether a parametrization can be registered on ``module.<tensor_name>``."""
    return (
        tensor_name in module._parameters
        or tensor_name in module._buffers
        or parametrize.is_parametrized(module, tensor_name)
    )


def _same(given: object, value: object) -> bool:
    """``given == value`` for the plain values of an fqn, False when ``==`` cannot say."""
    try:
        return bool(given == value)
    except Exception:
        return False


def _key_tuple(owner: str, what: str, keys: object) -> tuple[str, ...] | None:
    """``keys`` (None or a sequence of config keys) as a tuple, or a TypeError."""
    if keys is None:
        return None
    if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Iterable):
        raise TypeError(f"{owner}: {what} must be a tuple of config keys, got {describe(keys)}")
    return tuple(keys)


def _split_state_dict(owner: str, state_dict: object) -> tuple[Mapping[Any, Any], list[Any]]:
    """The ``"state"`` and ``"groups"`` of a state_dict, checked for shape, or an error."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{owner}: state_dict must be a dict with keys 'state' and 'groups' (what "
            f"state_dict() returns), got {describe(state_dict)}"
        )
    missing = [key for key in _STATE_DICT_KEYS if key not in state_dict]
    unknown = sorted(map(repr, (key for key in state_dict if key not in _STATE_DICT_KEYS)))
    if missing or unknown:
        parts = [f"missing key(s) {missing}"] if missing else []
        parts += [f"unknown key(s) [{', '.join(unknown)}]"] if unknown else []
        raise ValueError(
            f"{owner}: state_dict has {' and '.join(parts)}; expected exactly 'state' and "
            "'groups' (what state_dict() returns)"
        )
    states, groups = state_dict["state"], state_dict["groups"]
    if not isinstance(states, Mapping):
        raise TypeError(f"{owner}: state_dict['state'] must be a dict, got {describe(states)}")
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{owner}: state_dict['groups'] must be a list, got {describe(groups)}")
    return states, list(groups)


def _tensor_at(model: nn.Module, fqn: str) -> tuple[dict[str, Any], Tensor | None]:
    """The fqn's info and its tensor, or None when the fqn names no tensor of ``model``."""
    info = get_arg_info_from_tensor_fqn(model, fqn)
    module = info["module"]
    tensor = getattr(module, info["tensor_name"], None) if isinstance(module, nn.Module) else None
    return info, tensor if isinstance(tensor, Tensor) else None
