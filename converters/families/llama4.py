"""Llama 4 text (`Llama4ForCausalLM`, model_type `llama4_text`; the text part of a
`Llama4ForConditionalGeneration` checkpoint, model_type `llama4`, is read the same way).

What is special, as transformers' `modeling_llama4.py` computes it:
- MoE layers every `interleave_moe_layer_step`-th layer (or the listed `moe_layers`), dense SwiGLU
  of `intermediate_size_mlp` elsewhere (`ModelSpec.dense_layers`, `ffn`); a MoE layer has a shared
  expert of `intermediate_size` beside the routed ones, both summed.
- The experts are stored stacked and as `[in, out]`: `feed_forward.experts.gate_up_proj`
  [E, hidden, 2f] is `[gate | up]` along the last dim (chunked, not interleaved as gpt-oss's),
  `down_proj` [E, f, hidden].
- The router takes the top-k logits, then sigmoid (no renormalisation), and that score scales
  the expert's INPUT (`router_on_input`; megatron-core's `moe_apply_probs_on_input`).
- RoPE multiplies adjacent (even, odd) pairs as complex numbers: q/k rows are stored interleaved
  and read to rotate-half order (`InterleavedRotary`), like GLM4. `no_rope_layers` (1 = RoPE)
  marks the NoPE layers; by default every `no_rope_layer_interval`-th layer.
- `use_qk_norm`: q and k RMS-normalised per head with no weight (an L2 norm), on RoPE layers only.
- `attention_chunk_size`: the RoPE layers (`layer_types` chunked_attention) attend only inside
  their chunk of that many positions; NoPE layers attend fully.
- `attn_temperature_tuning`: NoPE-layer queries scaled by
  `1 + attn_scale * log1p(floor((pos + 1) / floor_scale))`.
"""

from __future__ import annotations

from typing import Any

from ..layouts import ConcatRows, Stacked, Transposed
from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import MegatronTraits
from .common import interleaved_qkv, finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, refuse_features, rope_parameters
from .hf_defaults import hf_config

FEATURES = ("experts", "a shared expert", "un-renormalised top-k", "a sigmoid / biased-choice / group-limited / scaled router",
            "dense layers among MoE layers", "an L2 QK-norm", "NoPE layers", "chunked attention", "attention temperature tuning",
            "routed weights on the expert inputs")
LAYER_TYPES = ("chunked_attention", "full_attention")

# The multimodal checkpoint keeps the text model under `language_model.`; its vision tower and
# projector are not part of the causal LM (read past by this rule, shown in the plan).
VISION = r"^(vision_model|multi_modal_projector)\.(?# Llama 4 vision tower / projector: not part of the text model; not carried)"

# megatron-core can hold Llama 4 only without chunked attention and temperature tuning (and, with
# NoPE layers, without the L2 QK-norm it would apply on every layer); what it holds goes through the
# per-layer dense / MoE tables (`moe_layer_freq`) and the args in `megatron_args` (qk_l2_norm,
# no_rope_freq, moe_apply_probs_on_input, sigmoid router).


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text model's config: `text_config` of a multimodal `llama4` config (dtype from the outer
    one; model_type stays `llama4` so the plan names the vision tower it reads past)."""
    if config.get("model_type") != "llama4":
        return config
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise SpecError("llama4 config.json has no text_config")
    outer = {k: config[k] for k in ("dtype", "torch_dtype") if config.get(k) is not None}
    return {**outer, **text, "model_type": "llama4"}


def _flags(config: dict[str, Any], layers: int) -> list[int]:
    """`no_rope_layers` (1 = RoPE), or transformers' default: every `no_rope_layer_interval`-th layer NoPE."""
    given = config.get("no_rope_layers")
    if given:
        if len(given) < layers or any(v not in (0, 1) for v in given[:layers]):
            raise SpecError(f"llama4 no_rope_layers {given!r} is not {layers} flags of 0 / 1")
        return [int(v) for v in given[:layers]]
    interval = int(config.get("no_rope_layer_interval") or 4)
    return [int((i + 1) % interval != 0) for i in range(layers)]


def _moe_layers(config: dict[str, Any], layers: int) -> set[int]:
    listed = config.get("moe_layers")
    if listed is not None:
        return {int(i) for i in listed}
    step = int(config.get("interleave_moe_layer_step") or 1)
    return set(range(step - 1, layers, step))


def _chunked(config: dict[str, Any], rope: list[int], chunk: int | None) -> tuple[int, ...]:
    types = config.get("layer_types") or ["chunked_attention" if r and chunk is not None else "full_attention" for r in rope]
    if set(types) - set(LAYER_TYPES) or len(types) < len(rope):
        raise SpecError(f"llama4 layer_types {sorted(set(types))} are not supported ({', '.join(LAYER_TYPES)} per layer)")
    chunked = tuple(i for i, t in enumerate(types[:len(rope)]) if t == "chunked_attention")
    if chunked and not chunk:
        raise SpecError("llama4 layer_types has chunked_attention layers but no attention_chunk_size")
    return chunked


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    config = text_config(config)
    layers = int(config["num_hidden_layers"])
    rope = _flags(config, layers)
    chunk = config.get("attention_chunk_size", 8192)
    moe = _moe_layers(config, layers)
    bias = bool(config.get("attention_bias", False))
    return llama_spec(config, "llama4", qkv_bias=bias, o_bias=bias, ffn=int(config.get("intermediate_size_mlp") or 16384),
                      experts=int(config.get("num_local_experts") or 16), topk=int(config.get("num_experts_per_tok") or 1),
                      expert_ffn=int(config.get("intermediate_size") or 8192),
                      shared_expert_ffn=int(config.get("intermediate_size") or 8192), norm_topk_prob=False,
                      router_score="sigmoid", router_on_input=True, dense_layers=tuple(i for i in range(layers) if i not in moe),
                      qk_l2_norm=bool(config.get("use_qk_norm", True)), nope_layers=tuple(i for i, r in enumerate(rope) if not r),
                      attention_chunk=int(chunk) if chunk else None, chunked_layers=_chunked(config, rope, chunk),
                      temperature_tuning=bool(config.get("attn_temperature_tuning", True)),
                      temperature_floor=int(config.get("floor_scale") or 8192),
                      temperature_scale=float(config.get("attn_scale", 0.1)))


def _period(flags: list[bool], first: int) -> int | None:
    """The n whose pattern `flags[i] == ((i + 1) % n == 0)` these flags are (None: no such n)."""
    return next((n for n in range(first, len(flags) + 1) if flags == [(i + 1) % n == 0 for i in range(len(flags))]), None)


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "Llama4", FEATURES)
    need(spec.moe and spec.router_score == "sigmoid" and not spec.norm_topk_prob and not spec.router_score_bias
         and spec.router_groups == 1 and spec.routed_scaling == 1.0 and spec.router_on_input,
         "HF Llama 4 needs experts chosen by top-k logits then sigmoid, not renormalised, scaling the expert input")
    need(spec.shared_expert_ffn == spec.expert_ffn and not spec.shared_expert_gate and not (spec.router_bias or spec.expert_bias),
         "HF Llama 4's shared expert is ungated and as wide as a routed one; router and experts have no biases")
    need(spec.qkv_bias == spec.o_bias and not spec.qk_norm and not spec.mlp_bias and spec.activation == "swiglu",
         "HF Llama 4 has all attention biases or none, no weighted QK-norm, and SwiGLU MLPs without biases")
    moe = [i for i in range(spec.layers) if i not in spec.dense_layers]
    step = _period([i in moe for i in range(spec.layers)], 1) or 1
    nope = [i in spec.nope_layers for i in range(spec.layers)]
    chunked = set(spec.chunked_layers)
    kwargs = llama_config_kwargs(
        spec, intermediate_size=spec.expert_ffn, intermediate_size_mlp=spec.ffn, num_local_experts=spec.experts,
        num_experts_per_tok=spec.topk, moe_layers=moe, interleave_moe_layer_step=step, use_qk_norm=spec.qk_l2_norm,
        no_rope_layers=[int(not n) for n in nope], no_rope_layer_interval=_period(nope, 2) or 4,
        attention_chunk_size=spec.attention_chunk,
        layer_types=["chunked_attention" if i in chunked else "full_attention" for i in range(spec.layers)],
        attn_temperature_tuning=spec.temperature_tuning, floor_scale=spec.temperature_floor, attn_scale=spec.temperature_scale,
        attention_bias=spec.o_bias, rope_parameters=rope_parameters(spec))
    for key in ("rope_theta", "rope_scaling"):
        kwargs.pop(key, None)
    return finish_hf_config(hf_config("Llama4TextConfig", **kwargs), spec, "Llama4ForCausalLM")


def megatron_problems(spec: ModelSpec) -> list[str]:
    """What megatron-core (Megatron-LM's GPT model) cannot run as transformers does; Megatron-Bridge
    adds chunked attention and temperature tuning in its own `Llama4SelfAttention`, not in megatron-core."""
    out = []
    if spec.chunked_layers:
        out.append(f"chunked local attention ({spec.attention_chunk}-token chunks on {len(spec.chunked_layers)} layers; "
                   "megatron-core has no attention_chunk_size)")
    if spec.temperature_tuning and spec.nope_layers:
        out.append("attention temperature tuning on the NoPE layers (floor_scale / attn_scale)")
    if spec.qk_l2_norm and spec.nope_layers:
        out.append("an L2 QK-norm on the RoPE layers only (megatron-core's qk_l2_norm normalises every layer)")
    if spec.moe and spec.router_on_input and spec.topk != 1:
        out.append(f"routed weights on the expert inputs with top-{spec.topk} (moe_apply_probs_on_input needs moe_router_topk 1)")
    return out


def _megatron(args: dict[str, Any], s: ModelSpec) -> bool:
    return s.moe and s.router_on_input


def _moe(s: ModelSpec) -> bool:
    return s.moe


def _dense(s: ModelSpec) -> bool:
    return not s.moe



FF = "feed_forward."

FAMILY = llama_family(
    name="llama4",
    model_types=("llama4_text", "llama4"),
    layer=(
        Row("input_layernorm.weight", ("input_norm",)),
        *interleaved_qkv(),
        Row("self_attn.o_proj.weight", ("attn.o",)),
        Row("self_attn.o_proj.bias", ("attn.o.bias",), when=lambda s: s.o_bias),
        Row("post_attention_layernorm.weight", ("post_attn_norm",)),
        Row(FF + "gate_proj.weight", ("mlp.gate",), when=_dense),
        Row(FF + "up_proj.weight", ("mlp.up",), when=_dense),
        Row(FF + "down_proj.weight", ("mlp.down",), when=_dense),
        Row(FF + "router.weight", ("router",), when=_moe),
        Row(FF + "experts.gate_up_proj", ("experts.{e}.gate", "experts.{e}.up"), Stacked(Transposed(ConcatRows()), 2), _moe,
            stacked=True),
        Row(FF + "experts.down_proj", ("experts.{e}.down",), Stacked(Transposed(), 1), _moe, stacked=True),
        Row(FF + "shared_expert.gate_proj.weight", ("shared.gate",), when=_moe),
        Row(FF + "shared_expert.up_proj.weight", ("shared.up",), when=_moe),
        Row(FF + "shared_expert.down_proj.weight", ("shared.down",), when=_moe),
    ),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    ignored_for=lambda s: (VISION,) if s.model_type == "llama4" else (),
    megatron=MegatronTraits(match=_megatron, rank=4, problems=megatron_problems),  # before qwen2_moe (shared experts)
    doc="Llama 4 (text): dense / MoE layers interleaved, shared expert, stacked experts scaled on input by a sigmoid top-k "
        "router, NoPE layers, L2 QK-norm, chunked attention, temperature tuning",
)
