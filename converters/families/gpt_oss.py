"""gpt-oss (`GptOssForCausalLM`): attention with biases and a learned sink logit per head,
sliding and full layers alternating, YaRN RoPE, and a MoE of every layer whose router and experts
have biases. The experts are stored stacked and as `[in, out]`: `gate_up_proj` [E, hidden, 2f]
interleaves gate and up columns (gate at even ones), `down_proj` is [E, f, hidden]; the expert
activation is a clamped SwiGLU, `(clamp(up) + 1) * g * sigmoid(alpha * g)` with `g = min(gate, limit)`.
The router's softmax over the top-k logits equals Mixtral's renormalised top-k."""

from __future__ import annotations

from typing import Any

from ..layouts import Interleave, Stacked, Transposed
from ..row import Row
from ..spec import ModelSpec
from .base import MegatronTraits
from .common import finish_hf_config, llama_attention, llama_config_kwargs, llama_family, llama_spec, need, refuse_features
from .hf_defaults import hf_config

FEATURES = ("experts", "a sliding window", "a per-layer sliding pattern", "attention sinks", "router / expert biases",
            "a clamped SwiGLU")


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    bias = bool(config.get("attention_bias", True))
    return llama_spec(config, "gpt_oss", qkv_bias=bias, o_bias=bias, experts=int(config["num_local_experts"]),
                      topk=int(config.get("num_experts_per_tok") or 4), expert_ffn=int(config["intermediate_size"]),
                      attn_sinks=True, router_bias=True, expert_bias=True, activation="clamped_swiglu",
                      glu_alpha=float(config.get("swiglu_alpha", 1.702)), glu_limit=float(config.get("swiglu_limit", 7.0)))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "GptOss", FEATURES)
    need(spec.moe and spec.norm_topk_prob and not spec.shared_expert_ffn and spec.attn_sinks and spec.router_bias
         and spec.expert_bias and spec.activation == "clamped_swiglu",
         "HF gpt-oss needs experts with biases and the clamped SwiGLU, a biased router with renormalised top-k, and sinks")
    need(spec.qkv_bias == spec.o_bias and not spec.qk_norm, "HF gpt-oss has all attention biases or none, and no QK-norm")
    kwargs = llama_config_kwargs(spec, intermediate_size=spec.expert_ffn, num_local_experts=spec.experts,
                                 num_experts_per_tok=spec.topk, sliding_window=spec.sliding_window, attention_bias=spec.o_bias,
                                 swiglu_alpha=spec.glu_alpha, swiglu_limit=spec.glu_limit)
    return finish_hf_config(hf_config("GptOssConfig", **kwargs), spec, "GptOssForCausalLM")


def _moe(spec: ModelSpec) -> bool:
    return spec.moe


FAMILY = llama_family(
    name="gpt_oss",
    model_types=("gpt_oss",),
    layer=(
        *llama_attention(),
        Row("self_attn.sinks", ("attn.sinks",), when=lambda s: s.attn_sinks),
        Row("mlp.router.weight", ("router",), when=_moe),
        Row("mlp.router.bias", ("router.bias",), when=_moe),
        Row("mlp.experts.gate_up_proj", ("experts.{e}.gate", "experts.{e}.up"), Stacked(Transposed(Interleave()), 2), _moe,
            stacked=True),
        Row("mlp.experts.gate_up_proj_bias", ("experts.{e}.gate.bias", "experts.{e}.up.bias"), Stacked(Interleave(), 2), _moe,
            stacked=True),
        Row("mlp.experts.down_proj", ("experts.{e}.down",), Stacked(Transposed(), 1), _moe, stacked=True),
        Row("mlp.experts.down_proj_bias", ("experts.{e}.down.bias",), Stacked(), _moe, stacked=True),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    megatron=MegatronTraits(match=lambda args, s: s.attn_sinks and s.activation == "clamped_swiglu" and s.moe, rank=2),
    doc="gpt-oss: sinks, alternating sliding / full attention, YaRN, biased router and stacked interleaved experts",
)
