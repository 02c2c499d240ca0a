"""torch.ao.pruning's public module paths and names exist in funcsparse.adapter.

A search-and-replace of the package prefix must be the whole migration, so every public
module of torch.ao.pruning (no ``_`` in its path) and every public name there must import
from the same relative path under funcsparse.adapter.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest
import torch.ao.pruning as ao
from torch import nn

import funcsparse.adapter as fa

TORCH_AO = "torch.ao.pruning"
FUNCSPARSE = "funcsparse.adapter"


def public_modules() -> list[str]:
    """torch.ao.pruning and its submodules whose path has no private part."""
    names = [TORCH_AO]
    for info in pkgutil.walk_packages(ao.__path__, TORCH_AO + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_names(module: ModuleType) -> set[str]:
    """``__all__``, the names the module's own source binds at top level, and (for a
    package) what it imports from torch.ao.pruning: every name legacy code may import."""
    names = set(getattr(module, "__all__", ()))
    source = Path(module.__file__).read_text() if module.__file__ else ""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for name, value in vars(module).items():
        home = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        submodule = isinstance(value, ModuleType) and value.__name__.startswith(
            module.__name__ + "."
        )
        if submodule or (module.__name__ == TORCH_AO and str(home).startswith(TORCH_AO)):
            names.add(name)
    return {name for name in names if not name.startswith("_")}


CASES = [
    (path, name)
    for path in public_modules()
    for name in sorted(public_names(importlib.import_module(path)))
]


def test_the_walk_sees_the_paths_legacy_code_imports() -> None:
    paths = {path for path, _ in CASES}
    assert {
        "torch.ao.pruning.sparsifier.utils",
        "torch.ao.pruning.sparsifier.weight_norm_sparsifier",
        "torch.ao.pruning.sparsifier.base_sparsifier",
        "torch.ao.pruning.sparsifier.nearly_diagonal_sparsifier",
        "torch.ao.pruning.scheduler.base_scheduler",
        "torch.ao.pruning.scheduler.cubic_scheduler",
        "torch.ao.pruning.scheduler.lambda_scheduler",
    } <= paths
    assert ("torch.ao.pruning", "get_static_sparse_quantized_mapping") in CASES
    assert ("torch.ao.pruning.sparsifier.utils", "get_arg_info_from_tensor_fqn") in CASES
    assert len(CASES) >= 30


@pytest.mark.parametrize(("path", "name"), CASES)
def test_every_public_name_exists_at_the_same_path(path: str, name: str) -> None:
    theirs = getattr(importlib.import_module(path), name)
    ours_path = FUNCSPARSE + path[len(TORCH_AO) :]
    ours = getattr(importlib.import_module(ours_path), name)
    # The same kind of object: a class for a class, a function for a function, a module
    # for a module (at the same relative path), equal data for data.
    if isinstance(theirs, ModuleType):
        assert ours.__name__ == FUNCSPARSE + theirs.__name__[len(TORCH_AO) :]
    elif inspect.isclass(theirs):
        assert inspect.isclass(ours) and ours.__name__ == theirs.__name__
        assert ours.__module__.startswith(FUNCSPARSE)
    elif callable(theirs):
        assert callable(ours) and ours.__module__.startswith(FUNCSPARSE)
    else:
        assert ours == theirs


def test_submodule_objects_are_the_adapters_not_copies() -> None:
    from funcsparse.adapter.scheduler.cubic_scheduler import CubicSL
    from funcsparse.adapter.sparsifier import utils
    from funcsparse.adapter.sparsifier.weight_norm_sparsifier import WeightNormSparsifier

    assert CubicSL is fa.CubicSL and WeightNormSparsifier is fa.WeightNormSparsifier
    assert utils.FakeSparsity is fa.FakeSparsity
    assert utils.get_arg_info_from_tensor_fqn is fa.get_arg_info_from_tensor_fqn


def test_quantized_mappings_equal_torch_aos() -> None:
    for name in ("get_static_sparse_quantized_mapping", "get_dynamic_sparse_quantized_mapping"):
        ours, theirs = getattr(fa, name)(), getattr(ao, name)()
        assert ours == theirs and set(ours) == {nn.Linear}
        assert getattr(fa, name)() is not ours  # a fresh dict each call: mutating one is safe
