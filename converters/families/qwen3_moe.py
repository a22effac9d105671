"""Qwen3-MoE (`Qwen3MoeForCausalLM`): Qwen3's attention (per-head QK-norm) and a sparse MoE
block on every layer: `mlp.gate` router, per-expert `mlp.experts.{e}.*_proj` on disk (the fused
transformers-5 form is read too), top-k weights renormalised when `norm_topk_prob`."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec, SpecError
from .base import FusedExperts, MegatronTraits
from .common import (experts, finish_hf_config, first, llama_attention, llama_config_kwargs, llama_family, llama_spec,
                     need, qwen_window_kwargs, refuse_features)
from .hf_defaults import hf_config


def every_layer_sparse(config: dict[str, Any]) -> None:
    """Dense layers between sparse ones (`mlp_only_layers`, `decoder_sparse_step` > 1) are not modelled."""
    if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step") or 1) != 1:
        raise SpecError(f"{config.get('model_type')}: dense layers between MoE layers (mlp_only_layers / decoder_sparse_step) "
                        "are not supported yet")


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    every_layer_sparse(config)
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "qwen3_moe", qk_norm=True, qkv_bias=bias, o_bias=bias,
                      experts=int(first(config, "num_experts", "num_local_experts")), topk=int(config.get("num_experts_per_tok") or 2),
                      expert_ffn=int(first(config, "moe_intermediate_size")), norm_topk_prob=bool(config.get("norm_topk_prob", False)))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Qwen3-MoE", (
        "QK-norm", "experts", "un-renormalised top-k", "a sliding window", "a per-layer sliding pattern"))
    need(spec.moe and spec.qk_norm and not spec.qk_norm_full and not spec.shared_expert_ffn,
         "HF Qwen3-MoE needs experts without a shared expert and per-head QK-norm")
    need(spec.qkv_bias == spec.o_bias, "HF Qwen3-MoE's attention_bias covers q/k/v and o together")
    config = hf_config("Qwen3MoeConfig", **llama_config_kwargs(
        spec, attention_bias=spec.qkv_bias, num_local_experts=spec.experts, num_experts_per_tok=spec.topk,
        moe_intermediate_size=spec.expert_ffn, norm_topk_prob=spec.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
        **qwen_window_kwargs(spec)))
    return finish_hf_config(config, spec, "Qwen3MoeForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.moe and s.qk_norm and not s.shared_expert_ffn


FAMILY = llama_family(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    layer=(*llama_attention(), *experts("mlp.gate.weight", "mlp.experts.{e}")),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=3),
    fused_experts=FusedExperts(),
    doc="Qwen3-MoE: QK-norm attention + top-k MoE (norm_topk_prob)",
)
