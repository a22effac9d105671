"""Gemma 3 text (`Gemma3ForCausalLM`, model_type `gemma3_text`): Gemma 2's four norms, per-head
QK-norm with (1 + w), sliding-window layers with their own RoPE base (`rope_local_theta`) between
global layers whose RoPE may be scaled, and no soft-capping by default."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from .base import MegatronTraits
from .common import finish_hf_config, llama_family, rope_from_config
from .gemma import attention_multiplier, gemma_spec
from .hf_defaults import hf_config
from .gemma2 import GEMMA2_LAYER, gemma2_kwargs


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    params = config.get("rope_parameters")
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    local_theta = float(local["rope_theta"]) if isinstance(local, dict) else config.get("rope_local_base_freq")
    theta, scaling = rope_from_config(config)
    return gemma_spec(config, "gemma3", qk_norm=True, out_norms=True, attention_multiplier=attention_multiplier(config),
                      attn_softcap=config.get("attn_logit_softcapping"), final_softcap=config.get("final_logit_softcapping"),
                      rope_theta=theta, rope_scaling=scaling,
                      rope_local_theta=float(local_theta) if local_theta is not None else None)


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    kwargs = gemma2_kwargs(spec, "Gemma 3", ("QK-norm", "a second RoPE base"))
    full = {"rope_type": "default", **(spec.rope_scaling or {}), "rope_theta": spec.rope_theta}
    local = {"rope_type": "default", "rope_theta": spec.rope_local_theta if spec.rope_local_theta is not None else spec.rope_theta}
    for key in ("rope_theta", "rope_scaling"):
        kwargs.pop(key, None)
    kwargs["rope_parameters"] = {"full_attention": full, "sliding_attention": local}
    return finish_hf_config(hf_config("Gemma3TextConfig", **kwargs), spec, "Gemma3ForCausalLM")


FAMILY = llama_family(
    name="gemma3",
    model_types=("gemma3_text",),
    layer=GEMMA2_LAYER,
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),
    doc="Gemma 3 (text): Gemma 2's block + QK-norm, local RoPE base on sliding layers",
)
