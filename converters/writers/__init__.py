"""Target writers by `--to` name."""

from __future__ import annotations

from .base import PlannedFile, TargetOptions, Writer
from .hf import HfWriter
from .megatron_dist import MegatronDistWriter
from .megatron_torch import MegatronTorchWriter
from .nxd import NxdWriter

WRITERS: dict[str, type[Writer]] = {
    "hf": HfWriter,
    "megatron": MegatronTorchWriter,
    "megatron-dist": MegatronDistWriter,
    "nxd": NxdWriter,
}

__all__ = ["WRITERS", "PlannedFile", "TargetOptions", "Writer"]
