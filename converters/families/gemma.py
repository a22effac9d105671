"""Gemma (`GemmaForCausalLM`): Llama-style attention, RMSNorm that multiplies by (1 + w) and stores
w (`norm_zero_centered`: canonical norms are w as stored, never shifted, so bf16 weights stay
exact), embeddings scaled by sqrt(hidden) (`embedding_multiplier`), a GeGLU MLP (tanh GELU
gate), tied head. Gemma 2 and 3 (`gemma2.py`, `gemma3.py`) build on the pieces here."""

from __future__ import annotations

import math
from typing import Any

from ..spec import ModelSpec, SpecError
from .base import MegatronTraits
from .common import finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, one_of, refuse_features
from .hf_defaults import hf_config

ACTIVATIONS = {"gelu_pytorch_tanh": "geglu_tanh", "gelu_tanh": "geglu_tanh", "gelu_new": "geglu_tanh", "gelu": "geglu"}
HF_ACTIVATION = {"geglu_tanh": "gelu_pytorch_tanh", "geglu": "gelu"}
GEMMA_FEATURES = ("zero-centred norms", "a GeGLU MLP", "embedding / residual / attention / logits multipliers")


def gemma_spec(config: dict[str, Any], family: str, act_key: str = "hidden_activation", **fields: Any) -> ModelSpec:
    """The fields every Gemma shares; the gate's GELU is read from the key the family's modelling
    code reads (Gemma 1: `hidden_act`, whose original "gelu" is the exact form; Gemma 2/3:
    `hidden_activation`)."""
    act = config.get(act_key) or "gelu_pytorch_tanh"
    return llama_spec(config, family, activation=one_of(act, ACTIVATIONS, f"{family} hidden_activation"),
                      norm_zero_centered=True, embedding_multiplier=math.sqrt(int(config["hidden_size"])),
                      tied=bool(config.get("tie_word_embeddings", True)), **fields)


def gemma_kwargs(spec: ModelSpec, holds: str, supported: tuple[str, ...] = (), act_key: str = "hidden_activation") -> dict[str, Any]:
    """Config keyword arguments every Gemma shares, after refusing what the class cannot hold."""
    refuse_features(spec, holds, GEMMA_FEATURES + supported)
    need(spec.norm_zero_centered and spec.activation in HF_ACTIVATION, f"HF {holds} needs (1 + w) norms and a GeGLU MLP")
    need(math.isclose(spec.embedding_multiplier, math.sqrt(spec.hidden), rel_tol=1e-12),
         f"HF {holds} scales embeddings by sqrt(hidden) only")
    need(spec.residual_multiplier == 1.0 and spec.logits_scaling == 1.0, f"HF {holds} has no residual or logits multiplier")
    need(not (spec.qkv_bias or spec.o_bias or spec.mlp_bias), f"HF {holds} has no linear biases")
    return llama_config_kwargs(spec, attention_bias=False, **{act_key: HF_ACTIVATION[spec.activation]})


def query_pre_attn_scalar(spec: ModelSpec) -> float | int:
    """Gemma 2/3 scale scores by query_pre_attn_scalar ** -0.5 (kept exact for integral scalars)."""
    if spec.attention_multiplier is None:
        return spec.head_dim
    value = spec.attention_multiplier ** -2
    return round(value) if math.isclose(value, round(value), rel_tol=1e-9) else value


def attention_multiplier(config: dict[str, Any]) -> float:
    scalar = config.get("query_pre_attn_scalar")
    if scalar is None:
        raise SpecError(f"{config.get('model_type')}: config.json lacks query_pre_attn_scalar")
    return float(scalar) ** -0.5


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    return gemma_spec(config, "gemma", act_key="hidden_act")


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    kwargs = gemma_kwargs(spec, "Gemma", act_key="hidden_act")
    need(spec.attention_multiplier is None, "HF Gemma scales attention by 1/sqrt(head_dim) only")
    return finish_hf_config(hf_config("GemmaConfig", **kwargs), spec, "GemmaForCausalLM")


FAMILY = llama_family(
    name="gemma",
    model_types=("gemma",),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(),  # the embedding scale has no megatron-core argument: Megatron targets are refused
    doc="Gemma: (1 + w) RMSNorm, sqrt(hidden) embedding scale, GeGLU, tied head",
)
