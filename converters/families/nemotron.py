"""Nemotron (`NemotronForCausalLM`, the Nemotron-4 / Minitron family): LayerNorm with bias whose
weight is stored zero-centred (`LayerNorm1P`: normalised with w + 1; Megatron's
`apply_layernorm_1p` stores it the same way, so it is never shifted), a squared-ReLU MLP without
gate (`up_proj` -> relu² -> `down_proj`), GQA and partial rotary."""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import (finish_hf_config, llama_config_kwargs, llama_family, llama_spec, lm_head, need, norm_rows, one_of,
                     refuse_features, rope_parameters)
from .hf_defaults import hf_config


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "nemotron", norm="layernorm", norm_zero_centered=True,
                      activation=one_of(config.get("hidden_act", "relu2"), {"relu2": "relu2"}, "Nemotron hidden_act"),
                      qkv_bias=bias, o_bias=bias, mlp_bias=bool(config.get("mlp_bias", False)))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Nemotron", ("zero-centred norms", "partial rotary", "a squared-ReLU MLP"))
    need(spec.norm == "layernorm" and spec.norm_zero_centered and spec.activation == "relu2" and spec.qkv_bias == spec.o_bias,
         "HF Nemotron needs LayerNorm1P, a squared-ReLU MLP and attention biases on q/k/v/o or none")
    kwargs = llama_config_kwargs(spec, norm_eps=spec.norm_eps, hidden_act="relu2", attention_bias=spec.qkv_bias,
                                 mlp_bias=spec.mlp_bias, rope_parameters=rope_parameters(spec))
    del kwargs["rms_norm_eps"]
    return finish_hf_config(hf_config("NemotronConfig", **kwargs), spec, "NemotronForCausalLM")



def _qkv_bias(s: ModelSpec) -> bool:
    return s.qkv_bias


FAMILY = llama_family(
    name="nemotron",
    model_types=("nemotron",),
    layer=(
        *norm_rows("input_layernorm", "input_norm"),
        *(row for n in "qkv" for row in (Row(f"self_attn.{n}_proj.weight", (f"attn.{n}",)),
                                         Row(f"self_attn.{n}_proj.bias", (f"attn.{n}.bias",), when=_qkv_bias))),
        Row("self_attn.o_proj.weight", ("attn.o",)),
        Row("self_attn.o_proj.bias", ("attn.o.bias",), when=lambda s: s.o_bias),
        *norm_rows("post_attention_layernorm", "post_attn_norm"),
        Row("mlp.up_proj.weight", ("mlp.up",)),
        Row("mlp.up_proj.bias", ("mlp.up.bias",), when=lambda s: s.mlp_bias),
        Row("mlp.down_proj.weight", ("mlp.down",)),
        Row("mlp.down_proj.bias", ("mlp.down.bias",), when=lambda s: s.mlp_bias),
    ),
    post=(*norm_rows("model.norm", "final_norm"), Row("lm_head.weight", ("lm_head",), when=lm_head)),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=lambda args, s: s.activation == "relu2", rank=3,
                            finish=lambda s: s.with_(norm_zero_centered=True, layernorm_1p=False)),
    doc="Nemotron-4 / Minitron: LayerNorm1P (zero-centred, with bias), squared-ReLU MLP, partial rotary",
)
