"""Format readers, in probing order. Each module exposes READER (see detect.FormatReader).

Imported lazily so that `ckptscope.inspectors.formats.hf` can be used on its own, and one at a
time as probing reaches them: an HF folder, probed first, imports no other reader (a
conversion's start-up, issue 17).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..probing import FormatReader

# Megatron-DeepSpeed roots carry a Megatron tracker too, so DeepSpeed probes before Megatron;
# torch_dist probes before torch because both live under the same tracker/iter_* roots; a universal
# DeepSpeed tag keeps the engine's model-states files beside `zero/`, so it probes before DeepSpeed.
ORDER = ("hf", "deepspeed_universal", "deepspeed", "megatron_dist", "megatron_torch", "nxd", "meta")


def readers() -> Iterator[FormatReader]:
    """Every reader in probing order, its module imported when the iteration reaches it."""
    for module in ORDER:
        yield importlib.import_module(f"{__name__}.{module}").READER


def __getattr__(name: str) -> Any:
    if name == "READERS":
        return list(readers())
    raise AttributeError(name)
