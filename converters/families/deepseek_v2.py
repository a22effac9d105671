"""DeepSeek-V2 / V2-Lite (`DeepseekV2ForCausalLM`): multi-head latent attention and a MoE of
routed plus shared experts after `first_k_dense_replace` dense layers.

MLA: queries from a normed latent (`q_a_proj`, `q_a_layernorm`, `q_b_proj`) or one `q_proj` when
`q_lora_rank` is null (V2-Lite); `kv_a_proj_with_mqa` makes the KV latent and one RoPE key shared
by every head, `kv_b_proj` expands the normed latent into per-head no-RoPE keys and values. V2
rotates adjacent pairs of the RoPE dims (complex multiplication). The router is a softmax, top-k
over all experts (`greedy`) or within the best `topk_group` of `n_group` groups
(`group_limited_greedy`, a group scored by its best expert); the chosen probabilities are scaled
by `routed_scaling_factor` and never renormalised (transformers' V2 ignores `norm_topk_prob`).
The rows and readers here serve DeepSeek-V3 (`deepseek_v3.py`) too.
"""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import FusedExperts, MegatronTraits
from .common import experts, finish_hf_config, llama_config_kwargs, llama_family, llama_spec, need, refuse_features, swiglu_mlp
from .hf_defaults import hf_config

FEATURES = ("experts", "a shared expert", "un-renormalised top-k", "multi-head latent attention", "RoPE on adjacent pairs",
            "a sigmoid / biased-choice / group-limited / scaled router", "dense layers among MoE layers")
TOPK_METHODS = ("greedy", "group_limited_greedy")


def mla_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelSpec fields of DeepSeek's latent attention (head_dim is the RoPE part, as transformers sets it)."""
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise SpecError(f"{config.get('model_type')}: attention_bias / mlp_bias are not supported yet")
    return dict(head_dim=int(config["qk_rope_head_dim"]), q_lora_rank=int(config.get("q_lora_rank") or 0),
                kv_lora_rank=int(config["kv_lora_rank"]), qk_nope_dim=int(config["qk_nope_head_dim"]),
                v_head_dim=int(config["v_head_dim"]))


def moe_fields(config: dict[str, Any], scoring: str) -> dict[str, Any]:
    """Routed and shared experts, and the first `first_k_dense_replace` layers dense. The original
    configs' `scoring_func` and `moe_layer_freq` must say what transformers' classes do anyway."""
    n = int(config.get("n_routed_experts") or 0)
    if not n:
        return {}
    for key, value in (("scoring_func", scoring), ("moe_layer_freq", 1)):
        if config.get(key) not in (None, value):
            raise SpecError(f"{config.get('model_type')}: {key} {config[key]!r} is not supported (transformers' model has {value!r})")
    expert_ffn, shared = int(config["moe_intermediate_size"]), int(config.get("n_shared_experts") or 0)
    if not shared:
        raise SpecError(f"{config.get('model_type')}: n_shared_experts 0 is not supported (transformers builds a shared expert)")
    first_dense = min(int(config.get("first_k_dense_replace") or 0), int(config["num_hidden_layers"]))
    return dict(experts=n, topk=int(config.get("num_experts_per_tok") or 1), expert_ffn=expert_ffn,
                shared_expert_ffn=expert_ffn * shared, routed_scaling=float(config.get("routed_scaling_factor") or 1.0),
                dense_layers=tuple(range(first_dense)))


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    method = config.get("topk_method") or "greedy"
    if method not in TOPK_METHODS:
        raise SpecError(f"deepseek_v2 topk_method {method!r} is not supported ({', '.join(TOPK_METHODS)})")
    grouped = method == "group_limited_greedy"
    return llama_spec(config, "deepseek_v2", **mla_fields(config), **moe_fields(config, "softmax"), rope_interleave=True,
                      norm_topk_prob=False, router_groups=int(config.get("n_group") or 1) if grouped else 1,
                      router_group_topk=int(config.get("topk_group") or 1) if grouped else 1)


def common_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """Config fields V2 and V3 share: the Llama ones, MLA, experts and the dense layers first."""
    need(spec.mla and spec.kv_heads == spec.heads and not (spec.qkv_bias or spec.o_bias or spec.mlp_bias or spec.qk_norm),
         f"HF {spec.family} needs latent attention (kv heads = heads), no biases and no QK-norm")
    first_dense = len(spec.dense_layers)
    need(spec.dense_layers == tuple(range(first_dense)), f"HF {spec.family} has its dense layers first (first_k_dense_replace)")
    need(spec.moe and spec.shared_expert_ffn > 0 and spec.shared_expert_ffn % spec.expert_ffn == 0 and not spec.shared_expert_gate,
         f"HF {spec.family} needs routed experts and ungated shared experts of a multiple of the expert FFN")
    out = llama_config_kwargs(
        spec, q_lora_rank=spec.q_lora_rank or None, kv_lora_rank=spec.kv_lora_rank, qk_rope_head_dim=spec.head_dim,
        qk_nope_head_dim=spec.qk_nope_dim, v_head_dim=spec.v_head_dim, n_routed_experts=spec.experts,
        num_experts_per_tok=spec.topk, moe_intermediate_size=spec.expert_ffn,
        n_shared_experts=spec.shared_expert_ffn // spec.expert_ffn, routed_scaling_factor=spec.routed_scaling,
        first_k_dense_replace=first_dense)
    del out["head_dim"]  # transformers sets it to qk_rope_head_dim
    return out


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "DeepSeek-V2", FEATURES)
    need(spec.router_score == "softmax" and not spec.router_score_bias and not spec.norm_topk_prob and spec.rope_interleave,
         "HF DeepSeek-V2 has a softmax router without a correction bias or renormalised top-k, and RoPE on adjacent pairs")
    grouped = spec.router_groups > 1
    config = hf_config("DeepseekV2Config", **common_kwargs(spec), norm_topk_prob=False,
                                           topk_method="group_limited_greedy" if grouped else "greedy",
                                           n_group=spec.router_groups if grouped else None,
                                           topk_group=spec.router_group_topk if grouped else None)
    return finish_hf_config(config, spec, "DeepseekV2ForCausalLM")


def _q_down(s: ModelSpec) -> bool:
    return s.q_lora_rank > 0


def _shared(s: ModelSpec) -> bool:
    return s.moe and s.shared_expert_ffn > 0


MLA_ROWS = (
    Row("input_layernorm.weight", ("input_norm",)),
    Row("self_attn.q_proj.weight", ("attn.q",), when=lambda s: not _q_down(s)),
    Row("self_attn.q_a_proj.weight", ("attn.q_down",), when=_q_down),
    Row("self_attn.q_a_layernorm.weight", ("attn.q_down_norm",), when=_q_down),
    Row("self_attn.q_b_proj.weight", ("attn.q_up",), when=_q_down),
    Row("self_attn.kv_a_proj_with_mqa.weight", ("attn.kv_down",)),
    Row("self_attn.kv_a_layernorm.weight", ("attn.kv_down_norm",)),
    Row("self_attn.kv_b_proj.weight", ("attn.kv_up",)),
    Row("self_attn.o_proj.weight", ("attn.o",)),
    Row("post_attention_layernorm.weight", ("post_attn_norm",)),
)

# a dense layer (`layer_spec(i)` has no experts) holds `mlp.*_proj`, a MoE layer the router, experts and shared experts
MOE_ROWS = (
    *swiglu_mlp(),
    *experts("mlp.gate.weight", "mlp.experts.{e}"),
    Row("mlp.gate.e_score_correction_bias", ("router.score_bias",), when=lambda s: s.moe and s.router_score_bias),
    Row("mlp.shared_experts.gate_proj.weight", ("shared.gate",), when=_shared),
    Row("mlp.shared_experts.up_proj.weight", ("shared.up",), when=_shared),
    Row("mlp.shared_experts.down_proj.weight", ("shared.down",), when=_shared),
)

FAMILY = llama_family(
    name="deepseek_v2",
    model_types=("deepseek_v2",),
    layer=(*MLA_ROWS, *MOE_ROWS),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    fused_experts=FusedExperts(),
    megatron=MegatronTraits(match=lambda args, s: s.mla and s.router_score == "softmax", rank=5),
    doc="DeepSeek-V2 / V2-Lite: multi-head latent attention, softmax (group-limited) router, shared experts, dense layers first",
)
