"""Qwen3 (`Qwen3ForCausalLM`): Llama's block with per-head QK-norm (RMSNorm over head_dim, before
RoPE), no q/k/v bias, and an explicit `head_dim` that need not be hidden / heads."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, qwen_window_kwargs,
                     refuse_features)
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "qwen3", qk_norm=True, qkv_bias=bias, o_bias=bias)


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Qwen3", ("QK-norm", "a sliding window", "a per-layer sliding pattern"))
    need(spec.qk_norm and not spec.qk_norm_full and not spec.moe and spec.qkv_bias == spec.o_bias and not spec.mlp_bias,
         "HF Qwen3 needs per-head QK-norm, no experts, attention biases on q/k/v/o or none, no MLP bias")
    config = hf_config("Qwen3Config", **llama_config_kwargs(
        spec, attention_bias=spec.qkv_bias, **qwen_window_kwargs(spec)))
    return finish_hf_config(config, spec, "Qwen3ForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.gated and s.qk_norm and not s.moe and s.norm == "rmsnorm"


FAMILY = llama_family(
    name="qwen3",
    model_types=("qwen3",),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=2),
    doc="Qwen3: Llama block + per-head QK-norm, explicit head_dim",
)
