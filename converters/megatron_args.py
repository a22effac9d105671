"""Megatron `args` <-> `ModelSpec`, in Megatron-LM's own argument names.

Megatron stores no model type, so the family is recognised by the registry (`families`) from
the architecture these args describe; ckptscope also writes `hf_model_type` and the token ids,
which Megatron ignores, so that a round trip gives back the config it started from.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ckptscope.inspectors.dtypes import DTYPES, DType

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from . import families
from .spec import MLA_LATENT_EPS, ModelSpec, SpecError

def _arg(args: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if args.get(name) is not None:
            return args[name]
    return default


def _dtype_from_args(args: dict[str, Any]) -> DType:
    params = str(args.get("params_dtype", ""))
    if args.get("bf16") or "bfloat16" in params:
        return DTYPES["bfloat16"]
    if args.get("fp16") or "float16" in params:
        return DTYPES["float16"]
    return DTYPES["float32"]


def is_megatron_llm(args: dict[str, Any]) -> bool:
    """epfLLM/Megatron-LLM runs: their own arg names, and q/k stored in interleaved rotary order."""
    return any(k in args for k in ("glu_activation", "use_rms_norm", "num_attention_heads_kv", "tie_embed_logits"))


def _activation_from_args(args: dict[str, Any]) -> str:
    """Megatron's MLP activation. Plain GELU runs use the fused bias-GeLU kernel (tanh
    approximation) unless fusion was switched off; `openai_gelu` is the tanh form too."""
    if args.get("xielu"):
        return "xielu"
    if args.get("swiglu") or str(args.get("glu_activation") or "").lower() == "swiglu":
        return "swiglu"
    if args.get("squared_relu"):
        return "relu2"
    if args.get("quick_geglu"):  # megatron-core quick_gelu(x_glu) * (x_linear + offset), gpt-oss with its clamp
        if float(args.get("glu_linear_offset") or 0.0) != 1.0 or not args.get("activation_func_clamp_value"):
            raise SpecError("Megatron quick_geglu without gpt-oss's glu_linear_offset 1 and activation_func_clamp_value "
                            "has no HF equivalent here")
        return "clamped_swiglu"
    for unsupported in ("xiprelu", "xiprelup", "onnx_safe"):
        if args.get(unsupported):
            raise SpecError(f"Megatron activation {unsupported} has no HF equivalent here")
    if args.get("glu_activation"):
        raise SpecError(f"Megatron-LLM glu_activation {args['glu_activation']!r} is not supported (swiglu only)")
    if args.get("openai_gelu"):
        return "gelu_tanh"
    if args.get("bias_gelu_fusion") is False or args.get("bias_activation_fusion") is False:
        return "gelu"
    return "gelu_tanh"


# Megatron-LLM and bigscience Megatron-DeepSpeed pickle `PositionEmbeddingType` enums; the safe
# reader keeps them as placeholders, shown as `<...PositionEmbeddingType(1)>`.
_POSITION_ENUM = re.compile(r"positionembeddingtype\((\d+)\)")
_POSITION_ENUM_VALUES = {"1": "rotary", "2": "absolute", "3": "alibi"}


def _position_from_args(args: dict[str, Any], activation: str) -> str:
    kind = str(args.get("position_embedding_type") or "").lower()
    enum = _POSITION_ENUM.search(kind)
    if enum:
        kind = _POSITION_ENUM_VALUES.get(enum.group(1), kind)
    if "alibi" in kind:
        return "alibi"
    if "learned" in kind or "absolute" in kind:
        return "learned"
    if "rope" in kind or "rotary" in kind or kind == "yarn" or args.get("use_rotary_position_embeddings"):
        return "rope"
    if kind:
        raise SpecError(f"position_embedding_type {kind!r} is not supported (rope, learned_absolute, alibi)")
    # old checkpoints: learned positions were the default, SwiGLU runs are Llama-style (RoPE)
    return "rope" if activation == "swiglu" else "learned"


def spec_from_megatron_args(args: dict[str, Any], *, true_vocab: int | None = None, vocab_note: str = "",
                            megatron_llm: bool | None = None) -> ModelSpec:
    """Architecture from Megatron `args` (mind `group_query_attention` before `num_query_groups`).
    `megatron_llm` says the checkpoint is epfLLM Megatron-LLM's (None: judge by its arg names);
    its args default differently (no biases unless `use_bias`, q/k interleaved)."""
    if not args:
        raise SpecError("checkpoint carries no Megatron args; pass --config with an HF config.json")
    layers = int(_arg(args, "num_layers", "encoder_num_layers", default=0))
    hidden = int(_arg(args, "hidden_size", default=0))
    heads = int(_arg(args, "num_attention_heads", default=0))
    if not (layers and hidden and heads):
        raise SpecError("Megatron args lack num_layers / hidden_size / num_attention_heads")
    kv = int(args["num_query_groups"]) if args.get("group_query_attention") and args.get("num_query_groups") else heads
    mllm = is_megatron_llm(args) if megatron_llm is None else megatron_llm
    if mllm and args.get("num_attention_heads_kv") and args.get("use_multiquery_attn") is not False:
        kv = int(args["num_attention_heads_kv"])  # older Megatron-LLM: only with use_multiquery_attn
    head_dim = int(_arg(args, "kv_channels", default=hidden // heads))
    activation = _activation_from_args(args)
    position = _position_from_args(args, activation)
    default_ffn = int(4 * hidden * 2 / 3 / 64) * 64 if activation == "swiglu" else 4 * hidden
    ffn = int(_arg(args, "ffn_hidden_size", default=default_ffn))
    padded = _arg(args, "padded_vocab_size")
    if true_vocab is None:
        stored = _arg(args, "orig_vocab_size", "true_vocab_size", "vocab_size")
        if stored is not None:
            true_vocab, vocab_note = int(stored), vocab_note or "from Megatron args"
        elif padded is not None:
            true_vocab, vocab_note = int(padded), "unknown true vocab: keeping all padded rows (give --true-vocab-size)"
        else:
            raise SpecError("Megatron args hold no vocab size; give --true-vocab-size")
    normalization = str(args.get("normalization") or ("RMSNorm" if args.get("use_rms_norm") else "LayerNorm"))
    experts = int(args.get("num_experts") or 0)
    scaling = None
    if args.get("use_rope_scaling"):
        scaling = {"rope_type": "llama3", "factor": float(args.get("rope_scaling_factor") or 8.0), "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    elif mllm and float(args.get("rope_scaling_factor") or 1.0) != 1.0:  # positions / factor: HF linear scaling
        scaling = {"rope_type": "linear", "factor": float(args["rope_scaling_factor"])}
    elif float(args.get("rotary_seq_len_interpolation_factor") or 1.0) != 1.0:  # megatron-core: positions / factor
        scaling = {"rope_type": "linear", "factor": float(args["rotary_seq_len_interpolation_factor"])}
    if str(args.get("position_embedding_type") or "") == "yarn":
        scaling = _yarn_from_args(args)
    linear_bias = bool(args.get("add_bias_linear", args.get("use_bias", not mllm)))
    if "disable_bias_linear" in args and "add_bias_linear" not in args:
        linear_bias = not bool(args["disable_bias_linear"])
    parallel = bool(args.get("parallel_attn"))
    tied = not bool(args.get("untie_embeddings_and_output_weights", False))
    if mllm and "tie_embed_logits" in args:
        tied = bool(args["tie_embed_logits"])
    interleaved = args.get("rotary_interleaved")
    interleaved = bool(interleaved) if interleaved is not None else (mllm and position == "rope")
    window = _window_from_args(args)
    layer_types = _layer_types_from_args(args, layers) if window else None
    shared_ffn = int(args.get("moe_shared_expert_intermediate_size") or 0) if experts else 0
    mla = _mla_from_args(args)
    if mla:
        kv, head_dim, interleaved = heads, mla.pop("head_dim"), False
        scaling = mla.pop("rope_scaling")
    spec = ModelSpec(
        family="",
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        ffn=ffn,
        vocab=int(true_vocab),
        padded_vocab=int(padded) if padded is not None else None,
        vocab_note=vocab_note,
        make_vocab_size_divisible_by=int(args.get("make_vocab_size_divisible_by") or 128),
        norm="rmsnorm" if normalization.lower() == "rmsnorm" else "layernorm",
        norm_eps=float(_arg(args, "norm_epsilon", "layernorm_epsilon", default=1e-5)),
        layernorm_1p=bool(args.get("apply_layernorm_1p")),
        activation=activation,
        position=position,
        embed_norm=bool(args.get("embed_layernorm")),
        parallel_attn=parallel,
        parallel_norms=2 if args.get("parallel_layernorm") or not parallel else 1,
        rotary_interleaved=interleaved,
        rope_theta=float(_arg(args, "rotary_base", "rope_theta", default=10000)),
        rope_scaling=scaling,
        rotary_percent=float(_arg(args, "rotary_percent", default=1.0)),
        max_position_embeddings=int(_arg(args, "max_position_embeddings", "seq_length", default=4096)),
        tied=tied,
        qkv_bias=bool(args.get("add_qkv_bias")) or linear_bias,
        o_bias=linear_bias,
        mlp_bias=linear_bias and not experts,  # add_bias_linear reaches the experts and the router of a MoE
        expert_bias=linear_bias and bool(experts),
        router_bias=linear_bias and bool(experts),
        attn_sinks=str(args.get("softmax_type") or "vanilla") == "learnable",
        glu_limit=float(args.get("activation_func_clamp_value") or 7.0),
        qk_norm=bool(args.get("qk_layernorm")) and not mla,  # MLA's qk_layernorm: the latent norms
        experts=experts,
        topk=int(args.get("moe_router_topk") or 2),
        expert_ffn=int(args.get("moe_ffn_hidden_size") or ffn) if experts else 0,
        norm_topk_prob=_renormalised_from_args(args),
        **_router_from_args(args, layers, experts),
        **mla,
        shared_expert_ffn=shared_ffn,
        shared_expert_gate=bool(shared_ffn and args.get("moe_shared_expert_gate")),
        sliding_window=window,
        layer_types=layer_types,
        dtype=_dtype_from_args(args),
        mtp_layers=int(args.get("mtp_num_layers") or 0),  # megatron-core's `mtp.layers.{k}` (HF: where the family has them)
        model_type=str(args.get("hf_model_type") or ""),
        **{key: _token_id(args.get(key)) for key in TOKEN_IDS},
    )
    spec = spec.with_(**_llama4_from_args(args, layers, experts))
    family = families.family(families.recognise_megatron(args, spec))
    return family.megatron.finish(spec.with_(family=family.name))


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _mla_from_args(args: dict[str, Any]) -> dict[str, Any]:
    """ModelSpec fields of megatron-core's multi-latent attention (`MLATransformerConfig`): head_dim
    is the RoPE part (`qk_pos_emb_head_dim`), the RoPE dims always rotate as adjacent pairs, and its
    own YaRN (`rope_type yarn`, `rotary_scaling_factor`, `original_max_position_embeddings`,
    `beta_fast` / `beta_slow`, `mscale` / `mscale_all_dim`, ranges rounded to integers). Empty
    without `multi_latent_attention`."""
    if not args.get("multi_latent_attention"):
        return {}
    if not args.get("qk_layernorm"):
        raise SpecError("Megatron multi_latent_attention without qk_layernorm (no latent norms) has no HF equivalent here")
    factor = float(args.get("rotary_scaling_factor") or 1.0)
    scaling = None
    if str(args.get("rope_type") or "yarn") == "yarn" and factor > 1.0:  # MLATransformerConfig's default rope_type is yarn
        scaling = {"rope_type": "yarn", "factor": factor,
                   "original_max_position_embeddings": int(args.get("original_max_position_embeddings") or 4096),
                   "beta_fast": float(args.get("beta_fast") or 32.0), "beta_slow": float(args.get("beta_slow") or 1.0)}
        mscale, all_dim = float(args.get("mscale") or 1.0), float(args.get("mscale_all_dim") or 0.0)
        if (mscale, all_dim) != (1.0, 0.0):
            scaling.update(mscale=mscale, mscale_all_dim=all_dim)
    return dict(head_dim=int(_arg(args, "qk_pos_emb_head_dim", default=64)), q_lora_rank=int(args.get("q_lora_rank") or 0),
                kv_lora_rank=int(_arg(args, "kv_lora_rank", default=32)), qk_nope_dim=int(_arg(args, "qk_head_dim", default=128)),
                v_head_dim=int(_arg(args, "v_head_dim", default=128)), rope_interleave=True, rope_scaling=scaling)


def _renormalised_from_args(args: dict[str, Any]) -> bool:
    """Whether the chosen experts' weights sum to one: softmax after top-k unless
    `moe_router_pre_softmax`; megatron-core always renormalises sigmoid scores of top-k > 1."""
    if str(args.get("moe_router_score_function") or "softmax") == "sigmoid":
        return int(args.get("moe_router_topk") or 2) > 1
    return not bool(args.get("moe_router_pre_softmax"))


def _moe_layers_from_args(args: dict[str, Any], layers: int) -> list[bool]:
    """megatron-core's `moe_layer_freq`: an int N puts a MoE on every N-th layer (i % N == 0), a
    list (or its string form, as the CLI takes it) flags each layer 1 (MoE) or 0 (dense)."""
    freq = args.get("moe_layer_freq", 1)
    if isinstance(freq, str):
        freq = _moe_freq_string(freq)
    if isinstance(freq, int) and not isinstance(freq, bool) and freq > 0:
        return [i % freq == 0 for i in range(layers)]
    if isinstance(freq, (list, tuple)) and len(freq) == layers and all(v in (0, 1) for v in freq):
        return [bool(v) for v in freq]
    raise SpecError(f"Megatron moe_layer_freq {freq!r} is neither a positive int nor {layers} flags of 0/1")


def _moe_freq_string(text: str) -> Any:
    """The CLI's list expression (`([0]*1+[1]*3)`), read without eval: repeated 0/1 runs only."""
    flat = text.replace(" ", "")
    if flat.isdigit():
        return int(flat)
    match = re.fullmatch(r"\(?((?:\[[01]\]\*\d+\+?)+)\)?(?:\*(\d+))?", flat)
    if not match:
        raise SpecError(f"Megatron moe_layer_freq {text!r} is not a list of 0/1 runs")
    runs = [int(v) for v, n in re.findall(r"\[([01])\]\*(\d+)", match.group(1)) for _ in range(int(n))]
    return runs * int(match.group(2) or 1)


def _router_from_args(args: dict[str, Any], layers: int, experts: int) -> dict[str, Any]:
    """ModelSpec router and per-layer fields of a MoE (nothing for a dense model)."""
    if not experts:
        return {}
    moe_layers = _moe_layers_from_args(args, layers)
    return dict(router_score=str(args.get("moe_router_score_function") or "softmax"),
                router_score_bias=bool(args.get("moe_router_enable_expert_bias")),
                router_groups=int(args.get("moe_router_num_groups") or 1),
                router_group_topk=int(args.get("moe_router_group_topk") or 1),
                routed_scaling=float(args.get("moe_router_topk_scaling_factor") or 1.0),
                dense_layers=tuple(i for i, moe in enumerate(moe_layers) if not moe))

# HF YaRN keys <-> Megatron-LM's arguments (`--rotary-scaling-factor`, `--yarn-*`, `--mscale*`)
YARN_ARGS = {"factor": "rotary_scaling_factor", "original_max_position_embeddings": "yarn_original_max_position_embeddings",
             "beta_fast": "yarn_beta_fast", "beta_slow": "yarn_beta_slow", "truncate": "yarn_correction_range_round_to_int"}


def _yarn_from_args(args: dict[str, Any]) -> dict[str, Any]:
    """HF `rope_parameters` of a megatron-core YaRN model (defaults as `_apply_yarn_config_from_args`).
    megatron-core's attention factor is mscale(f, mscale) / mscale(f, mscale_all_dim): HF's default
    when mscale = 1 and mscale_all_dim = 0, else both are kept."""
    defaults = {"rotary_scaling_factor": 1.0, "yarn_original_max_position_embeddings": 4096, "yarn_beta_fast": 32.0,
                "yarn_beta_slow": 1.0, "yarn_correction_range_round_to_int": True}
    out: dict[str, Any] = {"rope_type": "yarn"}
    for key, arg in YARN_ARGS.items():
        value = args.get(arg)
        out[key] = defaults[arg] if value is None else value
    out["factor"], out["beta_fast"], out["beta_slow"] = float(out["factor"]), float(out["beta_fast"]), float(out["beta_slow"])
    out["original_max_position_embeddings"], out["truncate"] = int(out["original_max_position_embeddings"]), bool(out["truncate"])
    mscale, all_dim = float(args.get("mscale") or 1.0), float(args.get("mscale_all_dim") or 0.0)
    if (mscale, all_dim) != (1.0, 0.0):
        out["mscale"], out["mscale_all_dim"] = mscale, all_dim
    return out


def _llama4_from_args(args: dict[str, Any], layers: int, experts: int) -> dict[str, Any]:
    """Llama 4's megatron-core fields: `qk_l2_norm` (RMS-normalised q / k with no weight),
    `no_rope_freq` (an int N: every N-th layer skips RoPE; or one 0/1 flag per layer, 1 = NoPE) and
    `moe_apply_probs_on_input` (the routed weight scales the expert input; top-1 only)."""
    freq = args.get("no_rope_freq")
    if isinstance(freq, int) and not isinstance(freq, bool) and freq > 0:
        flags = [int((i + 1) % freq == 0) for i in range(layers)]
    elif isinstance(freq, (list, tuple)) and len(freq) == layers and all(v in (0, 1) for v in freq):
        flags = [int(v) for v in freq]
    elif freq in (None, 0, []):
        flags = [0] * layers
    else:
        raise SpecError(f"Megatron no_rope_freq {freq!r} is neither a positive int nor {layers} flags of 0/1")
    out = {"qk_l2_norm": bool(args.get("qk_l2_norm")), "nope_layers": tuple(i for i, v in enumerate(flags) if v),
           "router_on_input": bool(experts and args.get("moe_apply_probs_on_input"))}
    carried = {field: args[arg] for arg, field in LLAMA4_CARRIED.items() if args.get(arg) is not None}
    return {**out, **carried}


# Llama 4 config fields megatron-core has no use for where it can hold the model (a chunk size on no
# chunked layer, temperature tuning without NoPE layers): ckptscope writes them beside its args, as
# it does `hf_model_type`, so that HF -> Megatron -> HF gives the same config.json back.
LLAMA4_CARRIED = {"hf_attention_chunk_size": "attention_chunk", "hf_attn_temperature_tuning": "temperature_tuning",
                  "hf_floor_scale": "temperature_floor", "hf_attn_scale": "temperature_scale"}


def _llama4_args(spec: ModelSpec) -> dict[str, Any]:
    """Inverse of `_llama4_from_args` (Megatron-LM flags --qk-l2-norm, --no-rope-freq, --moe-apply-probs-on-input)."""
    out = {"qk_l2_norm": spec.qk_l2_norm, "moe_apply_probs_on_input": spec.moe and spec.router_on_input,
           "no_rope_freq": [int(i in spec.nope_layers) for i in range(spec.layers)] if spec.nope_layers else None}
    if spec.family == "llama4":
        out.update({arg: getattr(spec, field) for arg, field in LLAMA4_CARRIED.items()})
    return out


def _yarn_args(spec: ModelSpec) -> dict[str, Any]:
    """Inverse of `_yarn_from_args` (empty unless the spec's RoPE is YaRN)."""
    if _rope_type(spec) != "yarn":
        return {}
    s = spec.rope_scaling or {}
    out: dict[str, Any] = {"position_embedding_type": "yarn",
                           "rotary_scaling_factor": float(s.get("factor") or spec.max_position_embeddings / (
                               s.get("original_max_position_embeddings") or spec.max_position_embeddings)),
                           "yarn_original_max_position_embeddings": int(s.get("original_max_position_embeddings")
                                                                        or spec.max_position_embeddings),
                           "yarn_beta_fast": float(s.get("beta_fast") or 32), "yarn_beta_slow": float(s.get("beta_slow") or 1),
                           "yarn_correction_range_round_to_int": bool(s.get("truncate", True))}
    both = bool(s.get("mscale") and s.get("mscale_all_dim"))
    out["mscale"], out["mscale_all_dim"] = (float(s["mscale"]), float(s["mscale_all_dim"])) if both else (1.0, 0.0)
    return out

def _mla_args(spec: ModelSpec) -> dict[str, Any]:
    """Inverse of `_mla_from_args`: MLATransformerConfig's fields. GPTModel leaves RoPE to MLA when
    position_embedding_type is rope (its own `yarn` type would add a second rotary embedding)."""
    s = spec.rope_scaling or {}
    yarn = _rope_type(spec) == "yarn"
    both = bool(s.get("mscale") and s.get("mscale_all_dim"))
    return {"multi_latent_attention": True, "q_lora_rank": spec.q_lora_rank or None, "kv_lora_rank": spec.kv_lora_rank,
            "qk_head_dim": spec.qk_nope_dim, "qk_pos_emb_head_dim": spec.head_dim, "v_head_dim": spec.v_head_dim,
            "qk_layernorm": True, "position_embedding_type": "rope", "rope_type": "yarn" if yarn else "rope",
            "rotary_scaling_factor": float(s.get("factor") or 1.0) if yarn else 1.0,
            "original_max_position_embeddings": int(s.get("original_max_position_embeddings") or spec.max_position_embeddings),
            "beta_fast": float(s.get("beta_fast") or 32.0), "beta_slow": float(s.get("beta_slow") or 1.0),
            "mscale": float(s["mscale"]) if both else 1.0, "mscale_all_dim": float(s["mscale_all_dim"]) if both else 0.0,
            "mtp_num_layers": spec.mtp or None}  # multi-token-prediction modules carried (`mtp.layers.{k}.*`)


def _moe_args(spec: ModelSpec) -> dict[str, Any]:
    """Inverse of `_router_from_args`: the MoE layer pattern and megatron-core's router options."""
    if not spec.moe:
        return {}
    grouped = spec.router_groups > 1
    return {"moe_layer_freq": [int(i not in spec.dense_layers) for i in range(spec.layers)] if spec.dense_layers else 1,
            "moe_router_score_function": spec.router_score, "moe_router_enable_expert_bias": spec.router_score_bias,
            "moe_router_num_groups": spec.router_groups if grouped else None,
            "moe_router_group_topk": spec.router_group_topk if grouped else None,
            "moe_router_topk_scaling_factor": spec.routed_scaling if spec.routed_scaling != 1.0 else None}


# Features megatron-core has no argument for: a Megatron checkpoint of such a model would run
# differently, so Megatron targets are refused with these reasons (plus the family's own).
INEXPRESSIBLE = (
    (lambda s: s.mtp > 0 and s.layer_spec(s.layers - 1).moe != s.mtp_spec().moe,
     "a multi-token-prediction layer whose MLP is not the last layer's kind (megatron-core builds it from the last layer's spec)"),
    (lambda s: _bias_problem(s),
     "these biases (Megatron's are all-or-nothing: add_bias_linear on every linear, the router and the experts included, "
     "plus add_qkv_bias for q/k/v alone; shared experts without)"),
    (lambda s: s.activation == "clamped_swiglu" and s.glu_alpha != 1.702, "a clamped SwiGLU with alpha other than quick_gelu's 1.702"),
    (lambda s: (s.embedding_multiplier, s.residual_multiplier, s.logits_scaling) != (1.0, 1.0, 1.0)
     or s.attention_multiplier is not None, "embedding / residual / attention / logits multipliers (Granite)"),
    (lambda s: s.qk_norm_full, "QK-norm over all heads' width (megatron-core's q/k_layernorm is per head)"),
    (lambda s: not s.pre_norms, "a block without pre-norms (megatron-core always normalises the attention and MLP inputs)"),
    (lambda s: s.out_norms, "norms on the attention and MLP outputs (no such module in megatron-core's GPT layer)"),
    (lambda s: _rope_problem(s), "this RoPE scaling (megatron-core has linear and llama3 with factors 1 / 4 / 8192 only)"),
    (lambda s: s.activation in ("geglu_tanh", "geglu"), "a GeGLU MLP (Megatron-LM's arguments select SwiGLU only)"),
    (lambda s: bool(s.attn_softcap or s.final_softcap), "attention / logit soft-capping"),
    (lambda s: s.rope_local_theta is not None, "a separate RoPE base for the sliding layers"),
    (lambda s: s.norm_zero_centered and s.norm == "rmsnorm", "zero-centred (1 + w) RMSNorm (apply_layernorm_1p covers LayerNorm)"),
    (lambda s: s.mla and not s.rope_interleave,
     "latent attention rotating RoPE halves (megatron-core's MLA always rotates adjacent pairs)"),
    (lambda s: s.mla and _mla_rope_problem(s), "this RoPE scaling with latent attention (megatron-core's MLA takes plain RoPE "
     "or YaRN with integer-rounded ranges, and mscale_all_dim only together with mscale)"),
    (lambda s: s.mla and s.norm_eps != MLA_LATENT_EPS,
     f"latent attention with a norm epsilon other than {MLA_LATENT_EPS:g} (megatron-core's latent norms use norm_epsilon, HF's "
     f"{MLA_LATENT_EPS:g})"),
    (lambda s: s.moe and s.router_score not in ("softmax", "sigmoid"), "this router score function"),
    (lambda s: s.moe and s.router_groups > 1 and s.topk // s.router_group_topk != (2 if s.router_score == "sigmoid" else 1),
     "this group-limited top-k (HF scores a group by its best expert under softmax, its best two under sigmoid; megatron-core "
     "sums a group's top moe_router_topk / moe_router_group_topk)"),
    (lambda s: s.moe and s.router_groups > 1 and s.router_score == "softmax" and s.norm_topk_prob,
     "group-limited top-k with renormalised softmax weights (megatron-core then ranks groups by logits)"),
    (lambda s: s.moe and s.router_score == "sigmoid" and s.norm_topk_prob != (s.topk > 1),
     "sigmoid router weights renormalised otherwise than megatron-core (always for top-k > 1, never for top-1)"),
    (lambda s: s.moe and s.router_score_bias and s.router_score != "sigmoid",
     "a score-correction bias on a softmax router (megatron-core adds expert_bias to sigmoid scores only)"),
    (lambda s: bool(s.dense_layers) and not s.moe, "dense layers declared in a model without experts"),
)


def _mla_rope_problem(spec: ModelSpec) -> bool:
    """megatron-core's MLA builds RotaryEmbedding (no scaling) or YarnRotaryEmbedding (ranges rounded
    to integers, cos / sin scaled by mscale(f, mscale) / mscale(f, mscale_all_dim))."""
    kind, s = _rope_type(spec), spec.rope_scaling or {}
    if kind == "default":
        return False
    if kind != "yarn" or s.get("attention_factor") is not None or not s.get("truncate", True):
        return True
    return bool(s.get("mscale_all_dim")) and not s.get("mscale")


def _rope_type(spec: ModelSpec) -> str:
    scaling = spec.rope_scaling or {}
    return str(scaling.get("rope_type", scaling.get("type", "default")))


# megatron-core's llama3 scaling has its smoothing constants built in
MEGATRON_LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope_problem(spec: ModelSpec) -> bool:
    kind = _rope_type(spec)
    if kind == "llama3":
        return any(float((spec.rope_scaling or {}).get(k, v)) != v for k, v in MEGATRON_LLAMA3.items())
    if kind == "yarn":  # an explicit attention_factor has no Megatron argument
        return (spec.rope_scaling or {}).get("attention_factor") is not None
    return kind not in ("default", "linear")


def _bias_problem(s: ModelSpec) -> bool:
    ffn_bias = s.expert_bias if s.moe else s.mlp_bias
    return (s.o_bias != ffn_bias or (s.o_bias and not s.qkv_bias) or (s.moe and s.router_bias != s.o_bias)
            or (s.o_bias and s.shared_expert_ffn > 0))


def megatron_problems(spec: ModelSpec) -> list[str]:
    """Why megatron-core cannot hold this model (empty when it can)."""
    return [reason for test, reason in INEXPRESSIBLE if test(spec)] + families.megatron_problems(spec)


def _token_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _window_from_args(args: dict[str, Any]) -> int | None:
    """megatron-core `window_size` (left, right): a query sees keys [q-left, q+right], so HF's
    window of W keys (itself included) is (W-1, 0). Other shapes are not HF models."""
    window = args.get("window_size")
    if window in (None, (-1, -1), [-1, -1]):
        return None
    if not (isinstance(window, (tuple, list)) and len(window) == 2 and all(isinstance(v, int) for v in window)):
        raise SpecError(f"Megatron window_size {window!r} is not a (left, right) pair")
    left, right = window
    if right != 0 or left < 0:
        raise SpecError(f"Megatron window_size {tuple(window)} looks ahead or is negative: no HF model attends that way")
    return left + 1


def _layer_types_from_args(args: dict[str, Any], layers: int) -> tuple[str, ...] | None:
    """megatron-core `window_attn_skip_freq` (`is_layer_window_attention`, 1-based layer numbers):
    an int N makes every N-th layer full attention, a list marks sliding layers with 1. None when
    every layer slides (HF's `layer_types` is then left out)."""
    freq = args.get("window_attn_skip_freq")
    if freq is None:
        return None
    if isinstance(freq, int) and not isinstance(freq, bool) and freq > 0:
        sliding = [(i + 1) % freq != 0 for i in range(layers)]
    elif isinstance(freq, (list, tuple)) and len(freq) == layers and all(v in (0, 1) for v in freq):
        sliding = [bool(v) for v in freq]
    else:
        raise SpecError(f"Megatron window_attn_skip_freq {freq!r} is neither a positive int nor {layers} flags of 0/1")
    if all(sliding):
        return None
    return tuple("sliding_attention" if v else "full_attention" for v in sliding)


def _skip_freq(spec: ModelSpec) -> int | list[int] | None:
    """Inverse of `_layer_types_from_args`: the int form when the pattern is periodic (N-1 sliding
    layers, then one full), else the per-layer list."""
    if spec.layer_types is None:
        return None
    flags = [int(t == "sliding_attention") for t in spec.layer_types]
    for n in range(2, spec.layers + 1):
        if flags == [int((i + 1) % n != 0) for i in range(spec.layers)]:
            return n
    return flags


def megatron_args_from_spec(spec: ModelSpec, *, tp: int, pp: int, ep: int = 1, padded_vocab: int,
                            pp_layers: list[int] | None = None, iteration: int = 1, ckpt_format: str = "torch",
                            transformer_impl: str = "local") -> dict[str, Any]:
    """Megatron's argument names for a target layout (a full Namespace's worth of fields)."""
    args: dict[str, Any] = {
        "num_layers": spec.layers,
        "hidden_size": spec.hidden,
        "ffn_hidden_size": spec.ffn,
        "num_attention_heads": spec.heads,
        "group_query_attention": spec.kv_heads != spec.heads,
        "num_query_groups": spec.kv_heads,
        "kv_channels": spec.head_dim,
        "seq_length": min(spec.max_position_embeddings, 4096),
        "max_position_embeddings": spec.max_position_embeddings,
        "padded_vocab_size": padded_vocab,
        "vocab_size": spec.vocab,
        "make_vocab_size_divisible_by": spec.make_vocab_size_divisible_by,
        "normalization": "RMSNorm" if spec.norm == "rmsnorm" else "LayerNorm",
        "norm_epsilon": spec.norm_eps,
        "apply_layernorm_1p": spec.layernorm_1p or spec.norm_zero_centered,  # megatron-core stores w, normalises with w + 1
        "swiglu": spec.gated and spec.activation != "clamped_swiglu",
        "quick_geglu": spec.activation == "clamped_swiglu",
        "glu_linear_offset": 1.0 if spec.activation == "clamped_swiglu" else 0.0,
        "activation_func_clamp_value": spec.glu_limit if spec.activation == "clamped_swiglu" else None,
        "softmax_type": "learnable" if spec.attn_sinks else "vanilla",
        "openai_gelu": spec.activation == "gelu_tanh",
        "bias_gelu_fusion": spec.activation != "gelu",
        "bias_activation_fusion": spec.activation != "gelu",
        "xielu": spec.activation == "xielu",
        "squared_relu": spec.activation == "relu2",
        "embed_layernorm": spec.embed_norm,
        "parallel_attn": spec.parallel_attn,
        "parallel_layernorm": spec.parallel_attn and spec.parallel_norms == 2,
        "add_bias_linear": spec.o_bias,
        "add_qkv_bias": spec.qkv_bias,
        "qk_layernorm": spec.qk_norm,  # with latent attention: its latent norms (set by _mla_args)
        "untie_embeddings_and_output_weights": not spec.tied,
        "position_embedding_type": {"rope": "rope", "learned": "learned_absolute", "alibi": "alibi"}[spec.position],
        "use_rotary_position_embeddings": spec.position == "rope",
        "add_position_embedding": spec.position == "learned",
        "rotary_base": int(spec.rope_theta) if float(spec.rope_theta).is_integer() else spec.rope_theta,
        "rotary_percent": spec.rotary_percent,
        "rotary_interleaved": spec.rotary_interleaved,
        "use_rope_scaling": _rope_type(spec) == "llama3",
        "rotary_seq_len_interpolation_factor": float(spec.rope_scaling["factor"]) if _rope_type(spec) == "linear" else None,
        "rope_scaling_factor": float((spec.rope_scaling or {}).get("factor", 8.0)),
        "num_experts": spec.experts or None,
        "moe_router_topk": spec.topk,
        "moe_ffn_hidden_size": (spec.expert_ffn or spec.ffn) if spec.moe else None,
        "moe_grouped_gemm": False,
        "params_dtype": spec.dtype,
        "bf16": spec.dtype == torch.bfloat16,
        "fp16": spec.dtype == torch.float16,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "expert_model_parallel_size": ep,
        "virtual_pipeline_model_parallel_size": None,
        "transformer_impl": transformer_impl,
        "ckpt_format": ckpt_format,
        "use_dist_ckpt": ckpt_format == "torch_dist",
        "iteration": iteration,
        "consumed_train_samples": 0,
        "consumed_valid_samples": 0,
        "tokenizer_type": "HuggingFaceTokenizer",
        "use_mcore_models": True,
    }
    problems = megatron_problems(spec)
    if problems:
        raise SpecError(f"megatron-core cannot express this {spec.family} model: {'; '.join(problems)}")
    args.update({
        "window_size": (spec.sliding_window - 1, 0) if spec.sliding_window else None,
        "window_attn_skip_freq": _skip_freq(spec),
        "moe_router_pre_softmax": spec.moe and not spec.norm_topk_prob,
        "moe_shared_expert_intermediate_size": spec.shared_expert_ffn or None,
        "moe_shared_expert_gate": bool(spec.shared_expert_ffn and spec.shared_expert_gate),
        "hf_model_type": spec.model_type or families.family(spec.family).model_types[0],
        **(_mla_args(spec) if spec.mla else _yarn_args(spec)),
        **_moe_args(spec),
        **_llama4_args(spec),
        **{key: getattr(spec, key) for key in TOKEN_IDS},
    })
    if pp_layers and len(set(pp_layers)) > 1:
        args["decoder_first_pipeline_num_layers"] = pp_layers[0]
        args["decoder_last_pipeline_num_layers"] = pp_layers[-1]
    return args



# megatron-core TransformerConfig field -> Megatron-LM argument (Megatron-Bridge's run_config.yaml
# `model:` section holds the former); fields with the same name in both pass through.
TRANSFORMER_CONFIG_RENAMES = {
    "num_moe_experts": "num_experts",
    "layernorm_epsilon": "norm_epsilon",
    "layernorm_zero_centered_gamma": "apply_layernorm_1p",
    "yarn_rotary_scaling_factor": "rotary_scaling_factor",  # GPTModelProvider's YaRN fields; the CLI drops `yarn_`
    "yarn_mscale": "mscale",
    "yarn_mscale_all_dim": "mscale_all_dim",
}
# activation_func (serialised as `{_target_: torch.nn.functional.silu, _call_: false}` or a name)
ACTIVATION_FUNCS = {"silu": "swiglu", "gelu": "gelu", "fast_gelu": "openai_gelu", "openai_gelu": "openai_gelu",
                    "squared_relu": "squared_relu", "relu2": "squared_relu", "quick_gelu": "quick_geglu"}


def args_from_transformer_config(model: dict[str, Any]) -> dict[str, Any]:
    """Megatron-LM args (what `spec_from_megatron_args` reads) from a TransformerConfig mapping."""
    args = {TRANSFORMER_CONFIG_RENAMES.get(k, k): v for k, v in model.items() if not str(k).startswith("_")}
    func = model.get("activation_func")
    name = func.get("_target_", "") if isinstance(func, dict) else str(func or "")
    kind = ACTIVATION_FUNCS.get(name.rsplit(".", 1)[-1])
    if kind is None and name:
        raise SpecError(f"activation_func {name!r} is not supported (silu, gelu, fast_gelu, squared_relu, quick_gelu)")
    gated = bool(model.get("gated_linear_unit"))
    if kind == "swiglu" and not gated:
        raise SpecError("activation silu without gated_linear_unit (SiLU MLP without a gate) is not supported")
    if kind == "swiglu" or kind is None and gated:
        args["swiglu"] = True
    elif kind == "gelu":
        args["bias_gelu_fusion"] = args["bias_activation_fusion"] = False  # exact GELU
    elif kind is not None:
        args[kind] = True
    heads, groups = model.get("num_attention_heads"), model.get("num_query_groups")
    args["group_query_attention"] = groups is not None and groups != heads
    args["untie_embeddings_and_output_weights"] = not model.get("share_embeddings_and_output_weights", True)
    window = model.get("window_size")
    if isinstance(window, list):
        args["window_size"] = tuple(window)
    return args
