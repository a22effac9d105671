"""Llama (`LlamaForCausalLM`; CodeLlama and Llama 3.x with llama3 RoPE scaling): the reference
decoder block every Llama-style family starts from. Biases are all-or-nothing on attention
(`attention_bias`) and separate on the MLP (`mlp_bias`)."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import MegatronTraits
from .common import finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, refuse_features
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "llama", qkv_bias=bias, o_bias=bias, mlp_bias=bool(config.get("mlp_bias", False)))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Llama")
    need(spec.qkv_bias == spec.o_bias, "HF Llama's attention_bias covers q/k/v and o together (q/k/v-only biases: Qwen2)")
    need(not spec.qk_norm and not spec.moe and spec.sliding_window is None,
         "HF Llama has no QK-norm, experts or sliding window (Qwen3, Mixtral, Mistral have)")
    config = hf_config("LlamaConfig", **llama_config_kwargs(spec, attention_bias=spec.qkv_bias, mlp_bias=spec.mlp_bias))
    return finish_hf_config(config, spec, "LlamaForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.gated and s.position == "rope" and not s.moe and not s.qk_norm and s.qkv_bias == s.o_bias


FAMILY = llama_family(
    name="llama",
    model_types=("llama", "codellama"),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=0),
    doc="Llama 1-3.x, CodeLlama: RMSNorm, RoPE (llama3 scaling), GQA, SwiGLU",
)
