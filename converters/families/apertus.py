"""Apertus (`ApertusForCausalLM`; earlier `SwissAIForCausalLM`, model_type `swissai`, same
weight names): Llama-like with QK-norm, an MLP without gate (`up_proj` -> xIELU -> `down_proj`),
per-layer xIELU parameters `alpha_p` / `alpha_n`, and the norms named `attention_layernorm` /
`feedforward_layernorm`. xIELU's `beta` / `eps` buffers are constants (`Constant` rows)."""

from __future__ import annotations

from typing import Any

from ..layouts import Constant
from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import Family, MegatronTraits
from .common import hf_common, lm_head, refuse_features, rope_from_config, rope_parameters
from .hf_defaults import hf_config

XIELU_BETA, XIELU_EPS = 0.5, -1e-6


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    if config.get("hidden_act", "xielu") != "xielu":
        raise SpecError(f"Apertus hidden_act {config.get('hidden_act')!r} is not supported (xielu only)")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    theta, scaling = rope_from_config(config)
    bias = bool(config.get("attention_bias", False))
    spec = ModelSpec(
        family="apertus", layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=int(config.get("head_dim") or hidden // heads),
        ffn=int(config["intermediate_size"]), vocab=int(config["vocab_size"]), norm="rmsnorm",
        norm_eps=float(config.get("rms_norm_eps", 1e-5)), activation="xielu", rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 65536)), tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bias, o_bias=bias, qk_norm=True, **hf_common(config),
    )
    if config.get("model_type") == "swissai":
        spec.notes.append("older SwissAIForCausalLM checkpoint: written back as ApertusForCausalLM (same weight names)")
    return spec


def config_from_spec(spec: ModelSpec) -> Any:
    refuse_features(spec, "Apertus", ("QK-norm",))
    if spec.activation != "xielu" or not spec.qk_norm or spec.norm != "rmsnorm" or spec.mlp_bias or spec.qkv_bias != spec.o_bias:
        raise SpecError("HF Apertus needs xIELU, QK-norm, RMSNorm, no MLP bias and attention biases on q/k/v/o or none")
    if spec.head_dim * spec.heads != spec.hidden:
        raise SpecError("HF Apertus needs head_dim = hidden / heads")
    config = hf_config("ApertusConfig",
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.norm_eps, tie_word_embeddings=spec.tied, attention_bias=spec.qkv_bias,
        rope_parameters=rope_parameters(spec))
    config.architectures = ["ApertusForCausalLM"]
    return config


def _bias(spec: ModelSpec) -> bool:
    return spec.qkv_bias


FAMILY = Family(
    name="apertus",
    model_types=("apertus", "swissai"),
    layer_prefix="model.layers.{i}.",
    pre=(Row("model.embed_tokens.weight", ("embed",)),),
    layer=(
        Row("attention_layernorm.weight", ("input_norm",)),
        *(Row(f"self_attn.{n}_proj.weight", (f"attn.{n}",)) for n in "qkv"),
        *(Row(f"self_attn.{n}_proj.bias", (f"attn.{n}.bias",), when=_bias) for n in "qkv"),
        Row("self_attn.o_proj.weight", ("attn.o",)),
        Row("self_attn.o_proj.bias", ("attn.o.bias",), when=lambda s: s.o_bias),
        Row("self_attn.q_norm.weight", ("attn.q_norm",)),
        Row("self_attn.k_norm.weight", ("attn.k_norm",)),
        Row("feedforward_layernorm.weight", ("post_attn_norm",)),
        Row("mlp.up_proj.weight", ("mlp.up",)),
        Row("mlp.down_proj.weight", ("mlp.down",)),
        Row("mlp.act_fn.alpha_p", ("mlp.act.alpha_p",)),
        Row("mlp.act_fn.alpha_n", ("mlp.act.alpha_n",)),
        Row("mlp.act_fn.beta", (), Constant(XIELU_BETA)),
        Row("mlp.act_fn.eps", (), Constant(XIELU_EPS)),
    ),
    post=(
        Row("model.norm.weight", ("final_norm",)),
        Row("lm_head.weight", ("lm_head",), when=lm_head),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    ignored=(r"\.mlp\.act_fn\.(beta|eps)$", r"\.rotary_emb\.inv_freq$"),
    megatron=MegatronTraits(match=lambda args, s: s.activation == "xielu", rank=3),
)
