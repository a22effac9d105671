"""OLMo2 (`Olmo2ForCausalLM`): no pre-norms; RMSNorm on the attention output
(`post_attention_layernorm`) and on the MLP output (`post_feedforward_layernorm`) before each
residual add; QK-norm over the full q / k projection width, before RoPE."""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, llama_attention, llama_config_kwargs, llama_family, llama_spec, need,
                     refuse_features, swiglu_mlp)
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "olmo2", qk_norm=True, qk_norm_full=True, pre_norms=False, out_norms=True, qkv_bias=bias, o_bias=bias)


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "OLMo2", (
        "QK-norm", "full-width QK-norm", "norms on the branch outputs", "a block without pre-norms"))
    need(spec.qk_norm and spec.qk_norm_full and not spec.pre_norms and spec.out_norms,
         "HF OLMo2 needs full-width QK-norm and norms on the branch outputs only")
    need(not spec.moe and not spec.mlp_bias and spec.qkv_bias == spec.o_bias, "HF OLMo2 has no experts or MLP bias")
    kwargs = llama_config_kwargs(spec, attention_bias=spec.qkv_bias, derived_head_dim="OLMo2")
    config = hf_config("Olmo2Config", **kwargs)
    return finish_hf_config(config, spec, "Olmo2ForCausalLM")


FAMILY = llama_family(
    name="olmo2",
    model_types=("olmo2",),
    layer=(
        *llama_attention(),
        Row("post_attention_layernorm.weight", ("attn_out_norm",)),
        *swiglu_mlp(),
        Row("post_feedforward_layernorm.weight", ("mlp_out_norm",)),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),
    doc="OLMo2: post-norms only, full-width QK-norm",
)
