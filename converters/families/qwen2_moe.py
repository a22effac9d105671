"""Qwen2-MoE (`Qwen2MoeForCausalLM`): Qwen2's attention (q/k/v biases) and a MoE block with a
shared expert beside the routed ones, scaled by `sigmoid(shared_expert_gate(x))`. The router's
softmax probabilities are used as they are unless `norm_topk_prob`."""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec
from .base import FusedExperts, MegatronTraits
from .common import (experts, finish_hf_config, first, llama_attention, llama_config_kwargs, llama_family, llama_spec,
                     need, qwen_window_kwargs, refuse_features, swiglu_mlp)
from .hf_defaults import hf_config
from .qwen3_moe import dense_layer_kwargs, dense_layers


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("qkv_bias", True))
    return llama_spec(config, "qwen2_moe", qkv_bias=bias, experts=int(first(config, "num_experts", "num_local_experts")),
                      topk=int(config.get("num_experts_per_tok") or 2), expert_ffn=int(first(config, "moe_intermediate_size")),
                      norm_topk_prob=bool(config.get("norm_topk_prob", False)),
                      shared_expert_ffn=int(config.get("shared_expert_intermediate_size") or 0), shared_expert_gate=True,
                      dense_layers=dense_layers(config))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Qwen2-MoE", (
        "experts", "a shared expert", "un-renormalised top-k", "a sliding window", "a per-layer sliding pattern",
        "dense layers among MoE layers"))
    need(spec.moe and spec.shared_expert_ffn > 0 and spec.shared_expert_gate, "HF Qwen2-MoE needs experts and a gated shared expert")
    need(not (spec.o_bias or spec.mlp_bias or spec.qk_norm), "HF Qwen2-MoE has q/k/v biases only and no QK-norm")
    kwargs = llama_config_kwargs(
        spec, qkv_bias=spec.qkv_bias, num_experts=spec.experts, num_experts_per_tok=spec.topk, moe_intermediate_size=spec.expert_ffn,
        shared_expert_intermediate_size=spec.shared_expert_ffn, norm_topk_prob=spec.norm_topk_prob, **dense_layer_kwargs(spec),
        derived_head_dim="Qwen2-MoE", **qwen_window_kwargs(spec))
    config = hf_config("Qwen2MoeConfig", **kwargs)
    return finish_hf_config(config, spec, "Qwen2MoeForCausalLM")


def _shared(s: ModelSpec) -> bool:
    return s.shared_expert_ffn > 0


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.moe and s.shared_expert_ffn > 0 and not s.qk_norm


FAMILY = llama_family(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    layer=(
        *llama_attention(),
        *swiglu_mlp(),  # a dense layer (`mlp_only_layers`): mlp.*_proj
        *experts("mlp.gate.weight", "mlp.experts.{e}"),
        Row("mlp.shared_expert.gate_proj.weight", ("shared.gate",), when=_shared),
        Row("mlp.shared_expert.up_proj.weight", ("shared.up",), when=_shared),
        Row("mlp.shared_expert.down_proj.weight", ("shared.down",), when=_shared),
        Row("mlp.shared_expert_gate.weight", ("shared_gate",), when=lambda s: _shared(s) and s.shared_expert_gate),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=3),
    fused_experts=FusedExperts(),
    doc="Qwen2-MoE / Qwen1.5-MoE: q/k/v biases + top-k MoE with a sigmoid-gated shared expert",
)
