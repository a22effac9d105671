"""What else a training checkpoint holds (issue 14): optimizer state, distributed-optimizer and
ZeRO files, scheduler and RNG state, iteration and consumed samples - shown by inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect
from ckptscope.inspectors.model import training_state


def test_megatron_rank_files_with_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    root = write_megatron_torch(SampleSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=128), tmp_path / "mt", tp=2)
    for path in root.rglob("model_optim_rng.pt"):
        state = torch.load(path, weights_only=False)
        state["optimizer"] = {"optimizer": {"state": {}, "param_groups": []}, "fp32_from_fp16_params": []}
        state["opt_param_scheduler"] = {"num_steps": 80}
        state["rng_state"] = [{"random_rng_state": (3, (1, 2), None)}]
        state["args"].consumed_train_samples = 640
        torch.save(state, path)
        (path.parent / "distrib_optim.pt").write_bytes(b"x" * 1000)  # Megatron's --use-distributed-optimizer file
    found = training_state(detect(root))
    assert found["consumed samples"] == "640" and found["scheduler"] == "present" and found["rng state"] == "present"
    assert "distributed-optimizer" in found["optimizer"] and "2,000 bytes" in found["optimizer"]
    out = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "inspect", str(root), "--json"], capture_output=True, text=True)
    assert json.loads(out.stdout)["training_state"] == found


def test_zero_partitions_are_named(corpus: Path) -> None:
    found = training_state(detect(corpus / "deepspeed" / "zero2_bf16"))
    assert found["optimizer"].startswith("2 ZeRO-2 partitions (bf16 run: fp32 master weights inside)")
    assert found["iteration"] == "2" and found["consumed samples"] == "8"
