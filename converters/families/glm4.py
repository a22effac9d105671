"""GLM-4 (`Glm4ForCausalLM`, GLM-4-0414): Llama-style attention with q/k/v biases, interleaved
partial rotary (the first half of each head rotates, in pairs), a fused `gate_up_proj`, and two
extra norms on the attention and MLP outputs (`post_self_attn_layernorm`, `post_mlp_layernorm`)."""

from __future__ import annotations

from typing import Any

from ..layouts import ConcatRows
from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, interleaved_qkv, llama_config_kwargs, llama_family, llama_spec, need, refuse_features,
                     rope_parameters)
from .hf_defaults import hf_config



def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", True))
    return llama_spec(config, "glm4", qkv_bias=bias, out_norms=True)


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "GLM4", ("partial rotary", "norms on the branch outputs"))
    need(spec.out_norms and spec.pre_norms and not spec.qk_norm and not spec.moe and not spec.o_bias and not spec.mlp_bias,
         "HF GLM4 needs pre- and post-norms, q/k/v biases only, no QK-norm or experts")
    config = hf_config("Glm4Config", **llama_config_kwargs(spec, attention_bias=spec.qkv_bias, rope_parameters=rope_parameters(spec)))
    return finish_hf_config(config, spec, "Glm4ForCausalLM")


FAMILY = llama_family(
    name="glm4",
    model_types=("glm4",),
    layer=(
        Row("input_layernorm.weight", ("input_norm",)),
        *interleaved_qkv(),
        Row("self_attn.o_proj.weight", ("attn.o",)),
        Row("post_self_attn_layernorm.weight", ("attn_out_norm",)),
        Row("post_attention_layernorm.weight", ("post_attn_norm",)),
        Row("mlp.gate_up_proj.weight", ("mlp.gate", "mlp.up"), ConcatRows()),
        Row("mlp.down_proj.weight", ("mlp.down",)),
        Row("post_mlp_layernorm.weight", ("mlp_out_norm",)),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),
    doc="GLM-4-0414: interleaved partial rotary, fused gate_up, post-norms on both branches",
)
