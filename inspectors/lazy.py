"""A module imported on first use, for readers whose byte-reading paths need torch and whose
indexing paths must not pay for it (`import torch` is about 1.5 s; `inspect` never reads bytes)."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for a module: the first attribute access imports it (later ones find it in sys.modules)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def attribute(package: str, path: str) -> Any:
    """`"module:name"` under `package`, imported now: registries name their entries in tables and
    import only the entry a run uses (a conversion's start-up, issue 17)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"{package}.{module}"), name)


torch = LazyModule("torch")  # `from ckptscope.inspectors.lazy import torch` where only some paths need it
