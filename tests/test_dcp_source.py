"""Plain torch DCP checkpoints from FSDP trainers (issue 14), written by torch's own
`torch.distributed.checkpoint.save`: Accelerate's SHARDED_STATE_DICT layout (`{"model": sd}`,
HF names) and torchtitan's (its own Llama names beside optimizer and train state). Both convert
to HF with the logits of the model they were saved from, the architecture taken from a
config.json beside them or from --config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from ckptscope.converters.plan import make_plan
from ckptscope.converters.sources.dcp import torchtitan_name
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError

from .helpers import convert_to, logits_diff

VOCAB = 128


def _model(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    config = t.Qwen3Config(head_dim=32, **small) if kind == "qwen3" else t.LlamaConfig(**small)
    model = t.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _save(state: dict, folder: Path) -> Path:
    dcp.save(state, checkpoint_id=str(folder))  # torch's own writer: .metadata written last
    return folder


def test_accelerate_fsdp_sharded_state_dict(tmp_path: Path) -> None:
    model = _model("llama")
    run = tmp_path / "run"
    folder = _save({"model": {k: v.clone() for k, v in model.state_dict().items()}}, run / "pytorch_model_fsdp_0")
    model.config.to_json_file(run / "config.json")  # the Trainer keeps the model config in the run folder
    ckpt = detect(folder)
    assert ckpt.kind == "dcp" and ckpt.complete and not ckpt.warnings
    plan = make_plan(folder, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert "DCP naming: hf (under `model`)" in plan.notes and f"architecture: from {run / 'config.json'}" in plan.notes
    out = convert_to(folder, tmp_path / "hf", "hf")
    assert logits_diff(out, model, VOCAB) <= 1e-5


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_torchtitan_step_folder(tmp_path: Path, kind: str) -> None:
    model = _model(kind)
    state = {torchtitan_name(k): v.clone() for k, v in model.state_dict().items()}
    state["optimizer.state.tok_embeddings.weight.exp_avg"] = torch.zeros(VOCAB, 64)
    state["train_state"] = {"step": 10}
    folder = _save(state, tmp_path / "checkpoint" / "step-10")
    with pytest.raises(CheckpointError, match="--config"):
        make_plan(folder, TargetOptions("hf"))
    model.config.to_json_file(tmp_path / "config.json")
    out = convert_to(folder, tmp_path / "hf", "hf", config=tmp_path / "config.json")
    assert logits_diff(out, model, VOCAB) <= 1e-5
    plan = make_plan(folder, TargetOptions("megatron", tp=2), config=tmp_path / "config.json")
    assert plan.ok and "DCP naming: torchtitan" in plan.notes and not plan.accounting.unmatched


def test_megatron_torch_dist_is_not_taken_for_plain_dcp(tmp_path: Path) -> None:
    model = _model("llama")
    model.save_pretrained(tmp_path / "src")
    dist = convert_to(tmp_path / "src", tmp_path / "dist", "megatron-dist", tp=2)
    assert detect(dist).kind == "megatron-dist"
    shutil.rmtree(tmp_path / "src")
