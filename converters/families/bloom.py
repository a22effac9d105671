"""BLOOM (`BloomForCausalLM`): ALiBi (no position tensor), LayerNorm after the word embedding,
biases everywhere, GELU (tanh) MLP, tied head. The fused QKV is per head `[heads, 3, d]`, which
is Megatron's grouped layout with one group per head (`GroupedQKV`)."""

from __future__ import annotations

from typing import Any

from ..layouts import GroupedQKV
from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import Family, MegatronTraits
from .common import LN_F_AND_HEAD, first, hf_common, refuse_features
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    if config.get("apply_residual_connection_post_layernorm"):
        raise SpecError("BLOOM with apply_residual_connection_post_layernorm is not supported")
    hidden = int(first(config, "hidden_size", "n_embed"))
    heads = int(first(config, "n_head", "num_attention_heads"))
    return ModelSpec(
        family="bloom", layers=int(first(config, "n_layer", "num_hidden_layers")), hidden=hidden, heads=heads, kv_heads=heads,
        head_dim=hidden // heads, ffn=4 * hidden, vocab=int(config["vocab_size"]), norm="layernorm",
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)), activation="gelu_tanh", position="alibi", embed_norm=True,
        max_position_embeddings=int(config.get("seq_length") or 2048), tied=bool(config.get("tie_word_embeddings", True)),
        qkv_bias=True, o_bias=True, mlp_bias=True, **hf_common(config),
    )


def config_from_spec(spec: ModelSpec) -> Any:
    refuse_features(spec, "BLOOM")
    if spec.kv_heads != spec.heads or spec.head_dim * spec.heads != spec.hidden or spec.ffn != 4 * spec.hidden:
        raise SpecError("HF BLOOM needs multi-head attention, head_dim = hidden / heads and FFN = 4 x hidden")
    if spec.position != "alibi" or not spec.embed_norm or spec.activation != "gelu_tanh" or spec.norm != "layernorm":
        raise SpecError("HF BLOOM needs ALiBi, an embedding LayerNorm and a GELU (tanh) MLP")
    config = hf_config("BloomConfig", vocab_size=spec.vocab, hidden_size=spec.hidden, n_layer=spec.layers, n_head=spec.heads,
                                      layer_norm_epsilon=spec.norm_eps, tie_word_embeddings=spec.tied)
    config.architectures = ["BloomForCausalLM"]
    return config


FAMILY = Family(
    name="bloom",
    model_types=("bloom",),
    layer_prefix="transformer.h.{i}.",
    pre=(
        Row("transformer.word_embeddings.weight", ("embed",)),
        Row("transformer.word_embeddings_layernorm.weight", ("embed_norm",)),
        Row("transformer.word_embeddings_layernorm.bias", ("embed_norm.bias",)),
    ),
    layer=(
        Row("input_layernorm.weight", ("input_norm",)),
        Row("input_layernorm.bias", ("input_norm.bias",)),
        Row("self_attention.query_key_value.weight", ("attn.q", "attn.k", "attn.v"), GroupedQKV()),
        Row("self_attention.query_key_value.bias", ("attn.q.bias", "attn.k.bias", "attn.v.bias"), GroupedQKV()),
        Row("self_attention.dense.weight", ("attn.o",)),
        Row("self_attention.dense.bias", ("attn.o.bias",)),
        Row("post_attention_layernorm.weight", ("post_attn_norm",)),
        Row("post_attention_layernorm.bias", ("post_attn_norm.bias",)),
        Row("mlp.dense_h_to_4h.weight", ("mlp.up",)),
        Row("mlp.dense_h_to_4h.bias", ("mlp.up.bias",)),
        Row("mlp.dense_4h_to_h.weight", ("mlp.down",)),
        Row("mlp.dense_4h_to_h.bias", ("mlp.down.bias",)),
    ),
    post=LN_F_AND_HEAD,
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=lambda args, s: s.position == "alibi", rank=2),
)
