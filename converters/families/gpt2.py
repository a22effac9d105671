"""GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm with bias, biases everywhere, GELU
(tanh) MLP without a gate, tied head. `Conv1D` stores weights `[in, out]` (`Transposed`), and
`c_attn` holds `[Q | K | V]` along its output columns (`ConcatRows` inside `Transposed`)."""

from __future__ import annotations

from typing import Any

from ..layouts import CONV1D, ConcatRows, Transposed
from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import Family, MegatronTraits
from .common import LN_F_AND_HEAD, first, hf_common, one_of, refuse_features
from .hf_defaults import hf_config

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("scale_attn_weights") is False:
        raise SpecError("HF model_type 'gpt2' with scale_attn_by_inverse_layer_idx or scale_attn_weights=False is not supported")
    hidden = int(first(config, "n_embd", "hidden_size"))
    heads = int(first(config, "n_head", "num_attention_heads"))
    return ModelSpec(
        family="gpt2", layers=int(first(config, "n_layer", "num_hidden_layers")), hidden=hidden, heads=heads, kv_heads=heads,
        head_dim=hidden // heads, ffn=int(config.get("n_inner") or 4 * hidden), vocab=int(config["vocab_size"]),
        norm="layernorm", norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        activation=one_of(config.get("activation_function", "gelu_new"), ACTIVATIONS, "GPT-2 activation_function"),
        position="learned", max_position_embeddings=int(first(config, "n_positions", "max_position_embeddings", default=1024)),
        tied=bool(config.get("tie_word_embeddings", True)), qkv_bias=True, o_bias=True, mlp_bias=True, **hf_common(config),
    )


def config_from_spec(spec: ModelSpec) -> Any:
    refuse_features(spec, "GPT-2")
    if spec.kv_heads != spec.heads or spec.head_dim * spec.heads != spec.hidden or spec.norm != "layernorm":
        raise SpecError("HF GPT-2 needs multi-head attention with head_dim = hidden / heads and LayerNorm")
    if spec.activation not in HF_ACTIVATION or spec.position != "learned" or not (spec.qkv_bias and spec.o_bias and spec.mlp_bias):
        raise SpecError("HF GPT-2 needs learned positions, a GELU MLP and biases on every linear")
    config = hf_config("GPT2Config",
        vocab_size=spec.vocab, n_positions=spec.max_position_embeddings, n_embd=spec.hidden, n_layer=spec.layers,
        n_head=spec.heads, n_inner=spec.ffn if spec.ffn != 4 * spec.hidden else None,
        activation_function=HF_ACTIVATION[spec.activation], layer_norm_epsilon=spec.norm_eps, tie_word_embeddings=spec.tied)
    config.architectures = ["GPT2LMHeadModel"]
    return config


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    layer_prefix="transformer.h.{i}.",
    pre=(
        Row("transformer.wte.weight", ("embed",)),
        Row("transformer.wpe.weight", ("pos_embed",)),
    ),
    layer=(
        Row("ln_1.weight", ("input_norm",)),
        Row("ln_1.bias", ("input_norm.bias",)),
        Row("attn.c_attn.weight", ("attn.q", "attn.k", "attn.v"), Transposed(ConcatRows())),
        Row("attn.c_attn.bias", ("attn.q.bias", "attn.k.bias", "attn.v.bias"), ConcatRows()),
        Row("attn.c_proj.weight", ("attn.o",), CONV1D),
        Row("attn.c_proj.bias", ("attn.o.bias",)),
        Row("ln_2.weight", ("post_attn_norm",)),
        Row("ln_2.bias", ("post_attn_norm.bias",)),
        Row("mlp.c_fc.weight", ("mlp.up",), CONV1D),
        Row("mlp.c_fc.bias", ("mlp.up.bias",)),
        Row("mlp.c_proj.weight", ("mlp.down",), CONV1D),
        Row("mlp.c_proj.bias", ("mlp.down.bias",)),
    ),
    post=LN_F_AND_HEAD,
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=lambda args, s: s.position == "learned", rank=2),
)
