"""Megatron-Bridge checkpoints (issue 14): torch_dist weights whose architecture is the
TransformerConfig in `run_config.yaml` (Bridge saves no Megatron-LM args). They convert to HF
with the checkpoint alone - Bridge itself needs the original HF model for that."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from ckptscope.converters.plan import make_plan
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors.errors import CheckpointError

from .helpers import assert_same_hf_state, convert_to, logits_diff

VOCAB = 256


def _bridge_checkpoint(tmp_path: Path, qk_norm: bool) -> tuple[Path, torch.nn.Module]:
    import transformers as t

    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=500000.0)
    config = t.Qwen3Config(head_dim=32, **small) if qk_norm else t.LlamaConfig(**small)
    model = t.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "hf")
    root = convert_to(tmp_path / "hf", tmp_path / "bridge", "megatron-dist", tp=2)
    iteration = root / "iter_0000001"
    common = torch.load(iteration / "common.pt", weights_only=False)
    del common["args"]  # Bridge keeps the model config in run_config.yaml, not Megatron-LM args
    torch.save(common, iteration / "common.pt")
    model_section = {
        "_target_": "megatron.bridge.models.qwen.qwen_provider.Qwen3ModelProvider" if qk_norm
        else "megatron.bridge.models.llama.llama_provider.LlamaModelProvider",
        "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 96, "num_attention_heads": 4, "num_query_groups": 2,
        "kv_channels": 32 if qk_norm else 16, "normalization": "RMSNorm", "layernorm_epsilon": config.rms_norm_eps,
        "gated_linear_unit": True, "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
        "position_embedding_type": "rope", "rotary_base": 500000, "rotary_percent": 1.0,
        "share_embeddings_and_output_weights": False, "add_bias_linear": False, "add_qkv_bias": False,
        "qk_layernorm": qk_norm, "vocab_size": VOCAB, "seq_length": 4096, "make_vocab_size_divisible_by": 128,
        "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1,
    }
    (iteration / "run_config.yaml").write_text(yaml.safe_dump({"model": model_section, "checkpoint": {"save": str(root)}}))
    return root, model


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_bridge_checkpoint_converts_with_its_run_config(tmp_path: Path, qk_norm: bool) -> None:
    root, model = _bridge_checkpoint(tmp_path, qk_norm)
    plan = make_plan(root, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert any(n.startswith("architecture: from") and n.endswith("run_config.yaml") for n in plan.notes)
    assert plan.spec.family == ("qwen3" if qk_norm else "llama")
    out = convert_to(root, tmp_path / "out", "hf")
    assert logits_diff(out, model, VOCAB) <= 1e-5
    assert_same_hf_state(out, tmp_path / "hf")  # HF -> Bridge-style torch_dist -> HF: the same bits


def test_without_run_config_or_args_asks_for_a_config(tmp_path: Path) -> None:
    root, _ = _bridge_checkpoint(tmp_path, False)
    (root / "iter_0000001" / "run_config.yaml").unlink()
    with pytest.raises(CheckpointError, match="--config"):
        make_plan(root, TargetOptions("hf"))


def test_bridge_gpt_oss_model_section_reads_as_gpt_oss() -> None:
    """GPTOSSBridge's provider fields (quick_gelu with clamp and offset, learnable softmax offset,
    yarn_* fields, biases) are the gpt-oss spec the HF config gives."""
    import transformers as t
    from ckptscope.converters import families
    from ckptscope.converters.megatron_args import args_from_transformer_config, spec_from_megatron_args

    model = {"num_layers": 4, "hidden_size": 64, "ffn_hidden_size": 32, "moe_ffn_hidden_size": 32, "num_attention_heads": 4,
             "num_query_groups": 2, "kv_channels": 16, "normalization": "RMSNorm", "layernorm_epsilon": 1e-5,
             "gated_linear_unit": True, "activation_func": {"_target_": "megatron.core.fusions.fused_bias_geglu.quick_gelu"},
             "activation_func_clamp_value": 7.0, "glu_linear_offset": 1.0, "softmax_type": "learnable",
             "position_embedding_type": "yarn", "rotary_base": 150000, "yarn_rotary_scaling_factor": 4.0,
             "yarn_original_max_position_embeddings": 64, "yarn_beta_fast": 32.0, "yarn_beta_slow": 1.0,
             "yarn_correction_range_round_to_int": False, "yarn_mscale": None, "yarn_mscale_all_dim": None,
             "window_size": [4, 0], "window_attn_skip_freq": 2, "num_moe_experts": 4, "moe_router_topk": 2,
             "moe_router_pre_softmax": False, "add_bias_linear": True, "add_qkv_bias": True, "vocab_size": VOCAB,
             "share_embeddings_and_output_weights": False, "max_position_embeddings": 256}
    spec = spec_from_megatron_args(args_from_transformer_config(model))
    hf = families.spec_from_hf_config(t.GptOssConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=5, max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 64, "rope_theta": 150000.0}).to_dict())
    fields = ("family", "activation", "glu_limit", "attn_sinks", "router_bias", "expert_bias", "qkv_bias", "o_bias",
              "rope_scaling", "rope_theta", "sliding_window", "layer_types", "experts", "topk", "expert_ffn", "norm_topk_prob")
    assert {f: getattr(spec, f) for f in fields} == {f: getattr(hf, f) for f in fields}
