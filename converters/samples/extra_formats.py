"""The formats the demo workspace lacks, written small from the demo's spec: HF `.bin`, NxD
xser, DeepSpeed ZeRO and universal (`ds_to_universal`'s layout), Megatron legacy (nested, with
optimizer) and a plain torch DCP folder. Start-up measurements and the torch-free inspect test
run `inspect` on every format; both take them from here."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .deepspeed import write_deepspeed_zero
from .demo import DEMO_SPEC
from .hf import hf_config, hf_state_dict, write_hf
from .megatron_torch import write_megatron_torch
from .nxd import write_nxd


def write_extra_formats(root: Path) -> dict[str, Path]:
    """name -> checkpoint path, each in its own folder under `root`."""
    import torch.distributed.checkpoint as dcp

    out = {"hf-bin": write_hf(DEMO_SPEC, root / "hf-bin", shards=2, fmt="bin"),
           "nxd-xser": write_nxd(DEMO_SPEC, root / "nxd-xser", tp=2, xser=True),
           "deepspeed-zero": write_deepspeed_zero(DEMO_SPEC, root / "ds-zero", dp=2),
           "megatron-legacy": write_megatron_torch(DEMO_SPEC, root / "megatron-legacy", tp=2, legacy=True, with_optimizer=True)}
    state = hf_state_dict(DEMO_SPEC)
    tag = root / "ds-universal" / "global_step7_universal"
    for name, value in state.items():
        folder = tag / "zero" / name
        folder.mkdir(parents=True)
        torch.save({"param": value.float().clone(), "cat_dim": 0}, folder / "fp32.pt")
        torch.save({"param": torch.zeros_like(value), "cat_dim": 0}, folder / "exp_avg.pt")
    torch.save({"module": None, "ds_version": "0.19.8", "global_steps": 7}, tag / "mp_rank_00_model_states.pt")
    (tag.parent / "latest_universal").write_text(tag.name)
    (tag.parent / "config.json").write_text(json.dumps(hf_config(DEMO_SPEC)))
    out["deepspeed-universal"] = tag.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        dcp.save({"model": {k: v.clone() for k, v in state.items()}}, checkpoint_id=str(root / "dcp" / "fsdp_0"))
    (root / "dcp" / "config.json").write_text(json.dumps(hf_config(DEMO_SPEC)))
    out["torch-dcp"] = root / "dcp" / "fsdp_0"
    return out
