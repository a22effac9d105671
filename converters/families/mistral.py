"""Mistral (`MistralForCausalLM`): Llama's block with a sliding attention window on every layer
(Megatron-Core: `window_size`)."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import MegatronTraits
from .common import finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, refuse_features
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    return llama_spec(config, "mistral")


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Mistral", ("a sliding window",))
    need(not (spec.qkv_bias or spec.o_bias or spec.mlp_bias or spec.qk_norm or spec.moe),
         "HF Mistral has no biases, QK-norm or experts")
    config = hf_config("MistralConfig", **llama_config_kwargs(spec, sliding_window=spec.sliding_window))
    return finish_hf_config(config, spec, "MistralForCausalLM")


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.gated and s.sliding_window is not None and not s.moe and not s.qk_norm and not s.qkv_bias


FAMILY = llama_family(
    name="mistral",
    model_types=("mistral",),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=1),
    doc="Mistral: Llama block + sliding window on every layer",
)
