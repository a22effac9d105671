"""Gemma 2 (`Gemma2ForCausalLM`): Gemma's block with four norms (pre and post attention, pre and
post feed-forward), attention and logit soft-capping, scores scaled by
`query_pre_attn_scalar ** -0.5`, and sliding-window and global layers alternating (`layer_types`)."""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import finish_hf_config, llama_attention, llama_family, swiglu_mlp
from .gemma import attention_multiplier, gemma_kwargs, gemma_spec, query_pre_attn_scalar
from .hf_defaults import hf_config

GEMMA2_FEATURES = ("soft-capping", "norms on the branch outputs", "a sliding window", "a per-layer sliding pattern")

# input_layernorm -> attention -> post_attention_layernorm (+ residual) -> pre_feedforward_layernorm
# -> MLP -> post_feedforward_layernorm (+ residual)
GEMMA2_LAYER = (
    *(row for row in llama_attention(post_norm="pre_feedforward_layernorm")),
    Row("post_attention_layernorm.weight", ("attn_out_norm",)),
    *swiglu_mlp(),
    Row("post_feedforward_layernorm.weight", ("mlp_out_norm",)),
)


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    return gemma_spec(config, "gemma2", out_norms=True, attention_multiplier=attention_multiplier(config),
                      attn_softcap=config.get("attn_logit_softcapping"), final_softcap=config.get("final_logit_softcapping"))


def gemma2_kwargs(spec: ModelSpec, holds: str, supported: tuple[str, ...] = ()) -> dict[str, Any]:
    """Gemma's keyword arguments plus the attention scale, soft-caps and windows Gemma 2 and 3 share."""
    kwargs = gemma_kwargs(spec, holds, GEMMA2_FEATURES + supported)
    kwargs.update(query_pre_attn_scalar=query_pre_attn_scalar(spec), attn_logit_softcapping=spec.attn_softcap,
                  final_logit_softcapping=spec.final_softcap, sliding_window=spec.sliding_window)
    if spec.sliding_window is not None and spec.layer_types is None:
        kwargs["layer_types"] = ["sliding_attention"] * spec.layers
    return kwargs


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    return finish_hf_config(hf_config("Gemma2Config", **gemma2_kwargs(spec, "Gemma 2")), spec, "Gemma2ForCausalLM")


FAMILY = llama_family(
    name="gemma2",
    model_types=("gemma2",),
    layer=GEMMA2_LAYER,
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),
    doc="Gemma 2: four norms per layer, soft-capping, alternating local / global attention",
)
