"""Falcon (`FalconForCausalLM`): parallel attention, RoPE, LayerNorm with bias, GELU MLP.

Three shapes of one architecture: 7B-style multi-query (one KV head, one norm feeding both
branches), `new_decoder_architecture` 40B/180B-style (grouped KV heads, `ln_attn` + `ln_mlp`)
and the classic sequential block (`input_layernorm` + `post_attention_layernorm`). The fused QKV
is grouped `[q.., k, v]` per KV head in all of them (`GroupedQKV`). ALiBi Falcons are refused.
"""

from __future__ import annotations

from typing import Any

from ..layouts import GroupedQKV
from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import Family, MegatronTraits
from .common import (LN_F_AND_HEAD, first, hf_common, norm_rows, one_of, refuse_features, rope_from_config,
                     rope_parameters)
from .hf_defaults import hf_config

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def _two_norms(spec: ModelSpec) -> bool:
    return spec.parallel_attn and spec.parallel_norms == 2


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    if config.get("alibi"):
        raise SpecError("Falcon with ALiBi is not supported (rotary Falcons only)")
    hidden = int(first(config, "hidden_size", "n_embed"))
    heads = int(first(config, "num_attention_heads", "n_head"))
    new_arch = bool(config.get("new_decoder_architecture"))
    parallel = bool(config.get("parallel_attn", True))
    if new_arch:
        if not parallel:
            raise SpecError("Falcon new_decoder_architecture without parallel_attn has no well-defined block")
        kv = int(config.get("num_kv_heads") or config.get("n_head_kv") or heads)
        norms = int(config.get("num_ln_in_parallel_attn") or 2)
    else:
        kv = 1 if config.get("multi_query", True) else heads
        norms = 1 if parallel else 2
    theta, scaling = rope_from_config(config)
    bias = bool(config.get("bias", False))
    return ModelSpec(
        family="falcon", layers=int(first(config, "num_hidden_layers", "n_layer")), hidden=hidden, heads=heads, kv_heads=kv,
        head_dim=hidden // heads, ffn=int(config.get("ffn_hidden_size") or 4 * hidden), vocab=int(config["vocab_size"]),
        norm="layernorm", norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        activation=one_of(config.get("activation", "gelu"), ACTIVATIONS, "Falcon activation"),
        parallel_attn=parallel, parallel_norms=norms, rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(config.get("max_position_embeddings") or 2048),
        tied=bool(config.get("tie_word_embeddings", True)), qkv_bias=bias, o_bias=bias, mlp_bias=bias, **hf_common(config),
    )


def config_from_spec(spec: ModelSpec) -> Any:
    refuse_features(spec, "Falcon")
    if spec.norm != "layernorm" or spec.position != "rope" or spec.activation not in HF_ACTIVATION:
        raise SpecError("HF Falcon needs LayerNorm, RoPE and a GELU MLP")
    if spec.head_dim * spec.heads != spec.hidden or len({spec.qkv_bias, spec.o_bias, spec.mlp_bias}) != 1:
        raise SpecError("HF Falcon needs head_dim = hidden / heads and biases on all linears or none")
    new_arch = _two_norms(spec) or spec.kv_heads not in (1, spec.heads)
    if new_arch and not spec.parallel_attn:
        raise SpecError("HF Falcon's grouped-KV (new_decoder_architecture) block is always parallel")
    if not spec.parallel_attn and spec.kv_heads != spec.heads:
        raise SpecError("HF Falcon's sequential block needs multi-head attention")
    kwargs: dict[str, Any] = {
        "vocab_size": spec.vocab, "hidden_size": spec.hidden, "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "layer_norm_epsilon": spec.norm_eps, "bias": spec.qkv_bias, "max_position_embeddings": spec.max_position_embeddings,
        "ffn_hidden_size": spec.ffn, "activation": HF_ACTIVATION[spec.activation], "tie_word_embeddings": spec.tied,
        "parallel_attn": spec.parallel_attn, "new_decoder_architecture": new_arch, "alibi": False,
        "rope_parameters": rope_parameters(spec)}
    if new_arch:
        kwargs.update(num_kv_heads=spec.kv_heads, num_ln_in_parallel_attn=spec.parallel_norms, multi_query=False)
    else:
        kwargs.update(multi_query=spec.kv_heads == 1 and spec.heads > 1)
    config = hf_config("FalconConfig", **kwargs)
    config.architectures = ["FalconForCausalLM"]
    return config



FAMILY = Family(
    name="falcon",
    model_types=("falcon", "RefinedWeb", "RefinedWebModel"),
    layer_prefix="transformer.h.{i}.",
    pre=(Row("transformer.word_embeddings.weight", ("embed",)),),
    layer=(
        *norm_rows("input_layernorm", "input_norm", lambda s: not _two_norms(s)),
        *norm_rows("ln_attn", "input_norm", _two_norms),
        Row("self_attention.query_key_value.weight", ("attn.q", "attn.k", "attn.v"), GroupedQKV()),
        Row("self_attention.query_key_value.bias", ("attn.q.bias", "attn.k.bias", "attn.v.bias"), GroupedQKV(),
                when=lambda s: s.qkv_bias),
        Row("self_attention.dense.weight", ("attn.o",)),
        Row("self_attention.dense.bias", ("attn.o.bias",), when=lambda s: s.o_bias),
        *norm_rows("post_attention_layernorm", "post_attn_norm", lambda s: not s.parallel_attn),
        *norm_rows("ln_mlp", "post_attn_norm", _two_norms),
        Row("mlp.dense_h_to_4h.weight", ("mlp.up",)),
        Row("mlp.dense_h_to_4h.bias", ("mlp.up.bias",), when=lambda s: s.mlp_bias),
        Row("mlp.dense_4h_to_h.weight", ("mlp.down",)),
        Row("mlp.dense_4h_to_h.bias", ("mlp.down.bias",), when=lambda s: s.mlp_bias),
    ),
    post=LN_F_AND_HEAD,
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    ignored=(r"\.rotary_emb\.inv_freq$",),
    megatron=MegatronTraits(match=lambda args, s: s.parallel_attn or (not s.gated and s.position == "rope" and s.activation != "xielu"), rank=2),
)
