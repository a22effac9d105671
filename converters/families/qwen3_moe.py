"""Qwen3-MoE (`Qwen3MoeForCausalLM`): Qwen3's attention (per-head QK-norm) and a sparse MoE
block on every layer but those `mlp_only_layers` / `decoder_sparse_step` keep dense: `mlp.gate`
router, per-expert `mlp.experts.{e}.*_proj` on disk (the fused transformers-5 form is read too),
top-k weights renormalised when `norm_topk_prob`."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec, SpecError
from .base import FusedExperts, MegatronTraits
from .common import (experts, finish_hf_config, first, llama_attention, llama_config_kwargs, llama_family, llama_spec,
                     need, qwen_window_kwargs, refuse_features, swiglu_mlp)
from .hf_defaults import hf_config


def dense_layers(config: dict[str, Any]) -> tuple[int, ...]:
    """Layers whose MLP is dense (`intermediate_size`), as transformers' Qwen2/3-MoE decoder layer
    decides: sparse unless listed in `mlp_only_layers` or off the `decoder_sparse_step` beat."""
    only = {int(i) for i in config.get("mlp_only_layers") or ()}
    step = int(config.get("decoder_sparse_step") or 1)
    if step < 1:
        raise SpecError(f"{config.get('model_type')}: decoder_sparse_step {step} is not a positive step")
    return tuple(i for i in range(int(config["num_hidden_layers"])) if i in only or (i + 1) % step)


def dense_layer_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """The config fields that put `spec.dense_layers` back: a sparse step where they follow one
    (as configs say it), else listed with every other layer sparse."""
    dense = set(spec.dense_layers)
    for step in range(2, spec.layers + 1):
        if dense and dense == {i for i in range(spec.layers) if (i + 1) % step}:
            return {"mlp_only_layers": [], "decoder_sparse_step": step}
    return {"mlp_only_layers": sorted(dense), "decoder_sparse_step": 1}


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "qwen3_moe", qk_norm=True, qkv_bias=bias, o_bias=bias,
                      experts=int(first(config, "num_experts", "num_local_experts")), topk=int(config.get("num_experts_per_tok") or 2),
                      expert_ffn=int(first(config, "moe_intermediate_size")), norm_topk_prob=bool(config.get("norm_topk_prob", False)),
                      dense_layers=dense_layers(config))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Qwen3-MoE", (
        "QK-norm", "experts", "un-renormalised top-k", "a sliding window", "a per-layer sliding pattern",
        "dense layers among MoE layers"))
    need(spec.moe and spec.qk_norm and not spec.qk_norm_full and not spec.shared_expert_ffn,
         "HF Qwen3-MoE needs experts without a shared expert and per-head QK-norm")
    need(spec.qkv_bias == spec.o_bias, "HF Qwen3-MoE's attention_bias covers q/k/v and o together")
    config = hf_config("Qwen3MoeConfig", **llama_config_kwargs(
        spec, attention_bias=spec.qkv_bias, num_local_experts=spec.experts, num_experts_per_tok=spec.topk,
        moe_intermediate_size=spec.expert_ffn, norm_topk_prob=spec.norm_topk_prob, **dense_layer_kwargs(spec),
        **qwen_window_kwargs(spec)))
    return finish_hf_config(config, spec, "Qwen3MoeForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.moe and s.qk_norm and not s.shared_expert_ffn


FAMILY = llama_family(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    layer=(*llama_attention(), *swiglu_mlp(), *experts("mlp.gate.weight", "mlp.experts.{e}")),  # dense layers: mlp.*_proj
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=3),
    fused_experts=FusedExperts(),
    doc="Qwen3-MoE: QK-norm attention + top-k MoE (norm_topk_prob)",
)
