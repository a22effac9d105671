"""Format readers, in probing order. Each module exposes READER (see detect.FormatReader).

Imported lazily so that `ckptscope.inspectors.formats.hf` can be used on its own.
"""

from __future__ import annotations

import importlib
from typing import Any

# Megatron-DeepSpeed roots carry a Megatron tracker too, so DeepSpeed probes before Megatron;
# torch_dist probes before torch because both live under the same tracker/iter_* roots; a universal
# DeepSpeed tag keeps the engine's model-states files beside `zero/`, so it probes before DeepSpeed.
ORDER = ("hf", "deepspeed_universal", "deepspeed", "megatron_dist", "megatron_torch", "nxd", "meta")


def __getattr__(name: str) -> Any:
    if name == "READERS":
        return [importlib.import_module(f"{__name__}.{module}").READER for module in ORDER]
    raise AttributeError(name)
