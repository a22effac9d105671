"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): Llama's block with q/k/v biases (no o bias)."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, qwen_window_kwargs,
                     refuse_features)
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    return llama_spec(config, "qwen2", qkv_bias=True)


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Qwen2", ("a sliding window", "a per-layer sliding pattern"))
    need(not (spec.o_bias or spec.mlp_bias), "Qwen2 has q/k/v biases only; this model also has output / MLP biases")
    need(not spec.qk_norm and not spec.moe, "HF Qwen2 has no QK-norm or experts (Qwen3, Qwen2-MoE have)")
    config = hf_config("Qwen2Config", **llama_config_kwargs(spec, optional_head_dim=True, **qwen_window_kwargs(spec)))
    return finish_hf_config(config, spec, "Qwen2ForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.gated and s.qkv_bias and not s.o_bias and not s.moe and not s.qk_norm


FAMILY = llama_family(
    name="qwen2",
    model_types=("qwen2",),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=1),
    doc="Qwen2 / Qwen2.5: Llama block + q/k/v biases",
)
