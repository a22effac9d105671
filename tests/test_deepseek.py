"""DeepSeek-V3 beyond the registry's cases: multi-token-prediction layers as the release stores
them (`model.layers.{num_hidden_layers}.*`) are dropped by a rule the plan names, never silently;
the correction bias is a buffer, so inspect counts parameters as the model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.model import logical_param_count
from safetensors.torch import load_file, save_file

from .helpers import convert_to, logits_diff
from .test_families_registry import VOCAB, _build

def test_inspect_counts_parameters_and_the_correction_bias_apart(tmp_path: Path) -> None:
    model = _build("deepseek_v3")
    model.save_pretrained(tmp_path / "src")
    ckpt = detect(tmp_path / "src")
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    biases = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert len(biases) == 3 and logical_param_count(ckpt, buffers=True) == sum(b.numel() for b in biases)  # layer 0 is dense


def _with_mtp_layer(folder: Path, layers: int) -> list[str]:
    """Add one MTP module as the release stores it: the last layer's block copied to index
    `layers`, plus its own norms, projection, head and embedding."""
    state = load_file(str(folder / "model.safetensors"))
    last, mtp = f"model.layers.{layers - 1}.", f"model.layers.{layers}."
    added = {mtp + n[len(last):]: t.clone() for n, t in state.items() if n.startswith(last)}
    hidden = state["model.norm.weight"].shape[0]
    added.update({mtp + "enorm.weight": torch.ones(hidden), mtp + "hnorm.weight": torch.ones(hidden),
                  mtp + "eh_proj.weight": torch.randn(hidden, 2 * hidden), mtp + "shared_head.norm.weight": torch.ones(hidden),
                  mtp + "shared_head.head.weight": state["lm_head.weight"].clone(),
                  mtp + "embed_tokens.weight": state["model.embed_tokens.weight"].clone()})
    save_file({**state, **added}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    return sorted(added)


def test_mtp_layers_are_dropped_by_a_named_rule(tmp_path: Path) -> None:
    model = _build("deepseek_v3")
    src = tmp_path / "src"
    model.save_pretrained(src)
    layers = model.config.num_hidden_layers
    added = _with_mtp_layer(src, layers)
    plan = make_plan(src, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert sorted(n for n in plan.accounting.ignored if n.startswith(f"model.layers.{layers}.")) == added
    assert all("multi-token-prediction" in plan.accounting.ignored[n] for n in added)
    assert not any(n.startswith(f"model.layers.{layers}.") for n in plan.accounting.mapped)
    out = convert_to(src, tmp_path / "hf", "hf")
    assert not any(n.startswith(f"model.layers.{layers}.") for n in load_file(str(next(out.glob("*.safetensors")))))
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 0  # the output holds none
    assert logits_diff(out, model, VOCAB) == 0.0


def test_a_release_style_config_reads_as_transformers_reads_it(tmp_path: Path) -> None:
    """The releases' config.json: v4 `rope_scaling` (type yarn, mscale / mscale_all_dim) beside a
    top-level `rope_theta`, and the original code's keys (scoring_func, topk_method, moe_layer_freq)."""
    from ckptscope.converters.reference import reference_logits
    from ckptscope.converters.sources import open_source
    from ckptscope.converters.verify import fixed_tokens
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    _build("deepseek_v3").save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    params = config.pop("rope_parameters")
    config.update(rope_theta=params.pop("rope_theta"), rope_scaling={**params, "type": params.pop("rope_type")},
                  scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1)
    config["rope_scaling"].pop("rope_type", None)
    (src / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    source = open_source(detect(src))
    ids = fixed_tokens(VOCAB, length=24)
    with torch.no_grad():
        assert (reference_logits(source.spec, source.get, ids) - model(ids).logits).abs().max().item() <= 1e-5
    assert logits_diff(convert_to(src, tmp_path / "hf", "hf"), model, VOCAB) == 0.0
    config["moe_layer_freq"] = 2  # the original code's MoE on every other layer: transformers' model has no such thing
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="moe_layer_freq 2 is not supported"):
        make_plan(src, TargetOptions("hf"))


def test_kimi_k2_config_reads_as_deepseek_v3(tmp_path: Path) -> None:
    """Kimi K2's config.json says `kimi_k2` for DeepSeek-V3's architecture (its remote code is V3's):
    read as deepseek_v3, written as transformers' own class, same logits."""
    model = _build("deepseek_v3")
    src = tmp_path / "src"
    model.save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "kimi_k2"
    (src / "config.json").write_text(json.dumps(config))
    out = convert_to(src, tmp_path / "hf", "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "deepseek_v3"
    assert logits_diff(out, model, VOCAB) == 0.0
