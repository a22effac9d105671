"""Mixtral (`MixtralForCausalLM`): Mistral's attention and a sparse MoE block (softmax router,
top-k, weights renormalised). Files keep the classic per-expert `w1/w3/w2`; transformers-5's fused
in-memory form is read too."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import FusedExperts, MegatronTraits
from .common import (experts, finish_hf_config, llama_attention, llama_config_kwargs, llama_family, llama_spec, need,
                     refuse_features)
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    n = int(config.get("num_local_experts") or 0)
    return llama_spec(config, "mixtral", experts=n, topk=int(config.get("num_experts_per_tok") or 2),
                      expert_ffn=int(config["intermediate_size"]))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Mixtral", ("experts", "a sliding window"))
    need(spec.moe and spec.norm_topk_prob and not spec.shared_expert_ffn, "HF Mixtral needs experts with renormalised top-k and no shared expert")
    need(not (spec.qkv_bias or spec.o_bias or spec.qk_norm), "HF Mixtral has no attention biases or QK-norm")
    config = hf_config("MixtralConfig", **llama_config_kwargs(
        spec, intermediate_size=spec.expert_ffn or spec.ffn, num_local_experts=spec.experts, num_experts_per_tok=spec.topk,
        sliding_window=spec.sliding_window))
    return finish_hf_config(config, spec, "MixtralForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.moe and not s.shared_expert_ffn and not s.qk_norm and s.norm_topk_prob


FAMILY = llama_family(
    name="mixtral",
    model_types=("mixtral",),
    layer=(*llama_attention(), *experts("block_sparse_moe.gate.weight", "block_sparse_moe.experts.{e}", "w1", "w3", "w2")),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=1),
    fused_experts=FusedExperts(),
    doc="Mixtral: Mistral attention + top-k MoE (classic w1/w3/w2 and transformers-5 fused experts)",
)
