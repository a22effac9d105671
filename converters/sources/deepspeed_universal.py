"""DeepSpeed universal checkpoints as canonical tensors: each `zero/<name>/fp32.pt` holds one
whole fp32 master weight under the module's own parameter name, so the family's HF table maps
them the way it maps a plain DCP checkpoint's (HF names, or under a wrapper such as `module.`).
The architecture comes from `--config` or a `config.json` beside the run."""

from __future__ import annotations

from .dcp import DcpSource

NEEDS_CONFIG = "DeepSpeed universal checkpoints carry no HF architecture: pass --config with the model's config.json"


class UniversalSource(DcpSource):
    kind = "deepspeed-universal"
    needs_config = NEEDS_CONFIG

    def notes(self) -> list[str]:
        return [f"DeepSpeed universal checkpoint: fp32 master weights, names {self.style}"]
