"""Parametrized modules that pickle.

torch's ``register_parametrization`` swaps a module's class for a generated subclass whose
``__getstate__`` raises, so a torch.ao-prepared model cannot be pickled (or saved whole with
``torch.save``). After registering, the adapter swaps in an equivalent generated class that
pickles by rebuilding itself from the original class and its parametrized tensor names.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["make_picklable"]

_MARK = "_funcsparse_picklable"


def make_picklable(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class that pickles; a no-op if it already has one."""
    cls = type(module)
    if getattr(cls, _MARK, False) or not parametrize.is_parametrized(module):
        return
    original = cls.__bases__[0]
    namespace = {
        key: value
        for key, value in vars(cls).items()
        if key not in ("__getstate__", "__dict__", "__weakref__")
    }
    namespace["__reduce_ex__"] = _reduce_parametrized
    namespace[_MARK] = True
    module.__class__ = type(cls.__name__, (original,), namespace)


def _reduce_parametrized(self: nn.Module, protocol: Any) -> tuple[Any, ...]:
    original = type(self).__bases__[0]
    names = tuple(self.parametrizations.keys())  # type: ignore[union-attr, operator]
    return (_rebuild_parametrized, (original, names), dict(self.__dict__))


def _rebuild_parametrized(original: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    module = original.__new__(original)
    parametrize._inject_new_class(module)
    for name in names:
        parametrize._inject_property(module, name)
    make_picklable(module)
    return module
