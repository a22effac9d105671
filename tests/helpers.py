"""Small helpers shared by the conversion tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF safetensors folder, by name."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out
