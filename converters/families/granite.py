"""Granite (`GraniteForCausalLM`): Llama's block with four scalars: embeddings times
`embedding_multiplier`, each branch output times `residual_multiplier` before the residual add,
attention scores scaled by `attention_multiplier` (not 1/sqrt(head_dim)), logits divided by
`logits_scaling`. megatron-core has no arguments for them: Megatron targets are refused."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import MegatronTraits
from .common import finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, refuse_features
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "granite", qkv_bias=bias, o_bias=bias, mlp_bias=bool(config.get("mlp_bias", False)),
                      embedding_multiplier=float(config.get("embedding_multiplier", 1.0)),
                      residual_multiplier=float(config.get("residual_multiplier", 1.0)),
                      attention_multiplier=float(config.get("attention_multiplier", 1.0)),
                      logits_scaling=float(config.get("logits_scaling", 1.0)))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Granite", ("embedding / residual / attention / logits multipliers",))
    need(not spec.qk_norm and not spec.moe and spec.qkv_bias == spec.o_bias, "HF Granite has no QK-norm or experts")
    kwargs = llama_config_kwargs(
        spec, attention_bias=spec.qkv_bias, mlp_bias=spec.mlp_bias, embedding_multiplier=spec.embedding_multiplier,
        residual_multiplier=spec.residual_multiplier, logits_scaling=spec.logits_scaling,
        attention_multiplier=spec.attention_multiplier if spec.attention_multiplier is not None else spec.head_dim ** -0.5,
        derived_head_dim="Granite")
    config = hf_config("GraniteConfig", **kwargs)
    return finish_hf_config(config, spec, "GraniteForCausalLM")


FAMILY = llama_family(
    name="granite",
    model_types=("granite",),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),
    doc="Granite 3.x: Llama block + embedding / residual / attention / logits multipliers",
)
