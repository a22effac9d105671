"""Phi-3 / Phi-3.5 / Phi-4 (`Phi3ForCausalLM`): Llama's block with fused `qkv_proj` ([q; k; v]
rows) and `gate_up_proj` ([gate; up] rows), optional partial rotary and LongRoPE scaling."""

from __future__ import annotations

from typing import Any

from ..layouts import ConcatRows
from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, refuse_features,
                     rope_parameters)
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    return llama_spec(config, "phi3")


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Phi-3", ("partial rotary", "a sliding window"))
    need(not (spec.qkv_bias or spec.o_bias or spec.mlp_bias or spec.qk_norm or spec.moe),
         "HF Phi-3 has no biases, QK-norm or experts")
    kwargs = llama_config_kwargs(spec, sliding_window=spec.sliding_window, rope_parameters=rope_parameters(spec),
                                 derived_head_dim="Phi-3",
                                 **({"partial_rotary_factor": spec.rotary_percent} if spec.rotary_percent != 1.0 else {}))
    config = hf_config("Phi3Config", **kwargs)
    return finish_hf_config(config, spec, "Phi3ForCausalLM")


FAMILY = llama_family(
    name="phi3",
    model_types=("phi3",),
    layer=(
        Row("input_layernorm.weight", ("input_norm",)),
        Row("self_attn.qkv_proj.weight", ("attn.q", "attn.k", "attn.v"), ConcatRows()),
        Row("self_attn.o_proj.weight", ("attn.o",)),
        Row("post_attention_layernorm.weight", ("post_attn_norm",)),
        Row("mlp.gate_up_proj.weight", ("mlp.gate", "mlp.up"), ConcatRows()),
        Row("mlp.down_proj.weight", ("mlp.down",)),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),  # a Megatron run of this block reads as Llama unless `hf_model_type` says Phi-3
    doc="Phi-3 / 3.5 / 4: fused qkv_proj and gate_up_proj, partial rotary",
)
