"""Run a small piece of lrkit once a framework has been imported, without importing it ourselves.

``import lrkit`` must stay NumPy-only, yet a Keras model saved with an lrkit schedule has to load
in a fresh process after ``import lrkit`` — which needs lrkit's Keras classes registered with
Keras's serialisation. :func:`when_imported` does that without importing Keras: if Keras is
already imported it imports the registering module now, otherwise a finder on
:data:`sys.meta_path` waits for ``import keras`` and imports it right after Keras has finished
loading. The finder only wraps the loader Python's own machinery found; it changes nothing else.

Example::

    when_imported("keras", "lrkit.integrations.keras.schedule")
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from typing import Any

__all__ = ["when_imported"]


class _Loader(importlib.abc.Loader):
    """The loader that was found, plus an action after the module has been executed."""

    def __init__(self, loader: Any, action) -> None:
        self._loader = loader
        self._action = action

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._action()

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        modules = self.pending.pop(fullname)
        spec.loader = _Loader(spec.loader, lambda: _import_all(fullname, modules))
        return spec


_FINDER = _Finder()


def _import_all(framework: str, modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # never break the user's own `import keras`
            warnings.warn(f"lrkit: could not register its {framework} classes ({name}): {exc}; "
                          f"import lrkit.{framework} yourself to see the error", stacklevel=3)


def when_imported(framework: str, module: str) -> None:
    """Import ``module`` as soon as the top-level package ``framework`` is imported (now if it is)."""
    if framework in sys.modules:
        _import_all(framework, [module])
        return
    _FINDER.pending.setdefault(framework, []).append(module)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
