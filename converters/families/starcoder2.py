"""StarCoder2 (`Starcoder2ForCausalLM`): LayerNorm with bias, biases on every linear (`use_bias`),
a plain GELU (tanh) MLP `c_fc` -> `c_proj`, GQA, RoPE and a sliding window."""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, llama_attention, llama_config_kwargs, llama_family, llama_spec, lm_head, need,
                     norm_rows, one_of, refuse_features)
from .hf_defaults import hf_config

ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
HF_ACTIVATION = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("use_bias", True))
    return llama_spec(config, "starcoder2", norm="layernorm", norm_eps=float(config.get("norm_epsilon", 1e-5)),
                      activation=one_of(config.get("hidden_act", "gelu_pytorch_tanh"), ACTIVATIONS, "StarCoder2 hidden_act"),
                      qkv_bias=bias, o_bias=bias, mlp_bias=bias, tied=bool(config.get("tie_word_embeddings", True)))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "StarCoder2", ("a sliding window",))
    need(spec.norm == "layernorm" and spec.activation in HF_ACTIVATION and spec.position == "rope",
         "HF StarCoder2 needs LayerNorm, RoPE and a GELU MLP")
    need(len({spec.qkv_bias, spec.o_bias, spec.mlp_bias}) == 1 and not spec.qk_norm and not spec.moe,
         "HF StarCoder2 has biases on every linear or none, no QK-norm, no experts")
    kwargs = llama_config_kwargs(spec, norm_epsilon=spec.norm_eps, use_bias=spec.qkv_bias, hidden_act=HF_ACTIVATION[spec.activation],
                                 sliding_window=spec.sliding_window, derived_head_dim="StarCoder2")
    del kwargs["rms_norm_eps"]
    config = hf_config("Starcoder2Config", **kwargs)
    return finish_hf_config(config, spec, "Starcoder2ForCausalLM")



def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    """Sequential GELU block with RoPE: Falcon's classic block is multi-head, exact GELU, no window."""
    return (not s.gated and s.position == "rope" and not s.parallel_attn and s.activation == "gelu_tanh"
            and (s.sliding_window is not None or s.kv_heads != s.heads))


FAMILY = llama_family(
    name="starcoder2",
    model_types=("starcoder2",),
    layer=(
        *(row for row in llama_attention() if row.name != "input_layernorm.weight" and row.name != "post_attention_layernorm.weight"),
        *norm_rows("input_layernorm", "input_norm"),
        *norm_rows("post_attention_layernorm", "post_attn_norm"),
        Row("mlp.c_fc.weight", ("mlp.up",)),
        Row("mlp.c_fc.bias", ("mlp.up.bias",), when=lambda s: s.mlp_bias),
        Row("mlp.c_proj.weight", ("mlp.down",)),
        Row("mlp.c_proj.bias", ("mlp.down.bias",), when=lambda s: s.mlp_bias),
    ),
    post=(*norm_rows("model.norm", "final_norm"), Row("lm_head.weight", ("lm_head",), when=lm_head)),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=_megatron, rank=3),
    doc="StarCoder2: LayerNorm + biases, GELU MLP, GQA, sliding window",
)
