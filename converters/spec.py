"""`ModelSpec`: the architecture in one dataclass, read from and written back to each format.

Canonical tensors (full, unsharded, unfused) are named from this small vocabulary:

    embed, pos_embed, embed_norm, final_norm, lm_head
    layers.{i}.input_norm, layers.{i}.post_attn_norm
    layers.{i}.attn.q | k | v | o, layers.{i}.attn.q_norm | k_norm
    layers.{i}.mlp.gate | up | down, layers.{i}.mlp.act.alpha_p | alpha_n
    layers.{i}.router, layers.{i}.experts.{e}.gate | up | down

A name names a weight; its bias (where the model has one) is the same name plus `.bias`.
Norm weights are the true gamma (Megatron's layernorm-1p offset is undone on read).

Family features (see docs/families.md):
- `pos_embed` [max_positions, hidden]: learned absolute positions (`position == "learned"`, GPT-2).
- `embed_norm` (+ `.bias`): LayerNorm right after the word embedding (BLOOM).
- An MLP without a gate (`activation` gelu / gelu_tanh / xielu) has only `mlp.up` (fc1) and
  `mlp.down` (fc2); `mlp.gate` exists only for SwiGLU.
- `mlp.act.alpha_p` / `alpha_n` [1]: xIELU's learned per-layer parameters (Apertus), stored
  softplus-inverse as HF and the swiss-ai Megatron fork keep them.
- Parallel attention (Falcon): `input_norm` feeds attention; `post_attn_norm` is the MLP's own
  norm (`ln_mlp`) when `parallel_norms == 2` and absent when one norm feeds both branches.
- q/k rows are always in the rotate-half ("HF") order; a source that stores them interleaved
  (Meta, `--rotary-interleaved`, Megatron-LLM) says so in `rotary_interleaved` and is permuted
  on read (and on write, for Megatron targets of such a spec).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

FAMILIES = ("llama", "mistral", "qwen2", "mixtral")  # Llama-style families handled here; others: rules/families
ACTIVATIONS = ("swiglu", "gelu", "gelu_tanh", "xielu")
POSITIONS = ("rope", "learned", "alibi")

# family -> (transformers config class, architecture)
HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
}
HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "mixtral": "mixtral", "codellama": "llama"}

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class SpecError(ValueError):
    """The architecture cannot be determined or is not supported for this conversion."""


@dataclass
class ModelSpec:
    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int  # true vocabulary: rows kept in HF
    padded_vocab: int | None = None  # rows as stored by a Megatron-style source
    vocab_note: str = ""  # where `vocab` came from, shown in the plan
    make_vocab_size_divisible_by: int = 128
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-5
    layernorm_1p: bool = False
    activation: str = "swiglu"  # swiglu | gelu (exact erf) | gelu_tanh (GPT-2 "gelu_new", BLOOM) | xielu (Apertus)
    position: str = "rope"  # rope | learned (pos_embed table) | alibi (no position tensor)
    embed_norm: bool = False  # LayerNorm after the word embedding (BLOOM `word_embeddings_layernorm`)
    parallel_attn: bool = False  # attention and MLP read the same residual, outputs summed (Falcon)
    parallel_norms: int = 2  # parallel_attn only: 1 = one norm feeds both branches, 2 = ln_attn + ln_mlp
    rotary_interleaved: bool = False  # storage quirk: q/k rows stored in interleaved pairs (Meta, Megatron-LLM)
    qkv_version: int = 2  # storage quirk of legacy Megatron sources: checkpoint_version 0 / 1 QKV orderings
    megatron_llm: bool = False  # storage quirk: read from epfLLM Megatron-LLM names ([up; gate] SwiGLU); set by the source
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF-style dict, e.g. llama3
    rotary_percent: float = 1.0
    max_position_embeddings: int = 4096
    tied: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    experts: int = 0
    topk: int = 2
    expert_ffn: int = 0
    sliding_window: int | None = None
    dtype: torch.dtype = torch.float32
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    notes: list[str] = field(default_factory=list)

    # ----- derived -------------------------------------------------------------------------
    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def norm_bias(self) -> bool:
        return self.norm == "layernorm"

    @property
    def gated(self) -> bool:
        """SwiGLU: fc1 holds gate and up; every other activation has fc1 = up only."""
        return self.activation == "swiglu"

    @property
    def has_post_attn_norm(self) -> bool:
        return not (self.parallel_attn and self.parallel_norms == 1)

    def quirks(self) -> list[str]:
        """Layout quirks worth flagging in inspect / diff views."""
        out = []
        if self.rotary_interleaved:
            out.append("interleaved rotary q/k (permuted to rotate-half on read)")
        if self.qkv_version < 2:
            out.append(f"checkpoint_version {self.qkv_version} QKV ordering")
        if self.megatron_llm:
            out.append("Megatron-LLM layout" + (" (SwiGLU fc1 packed [up; gate])" if self.gated else ""))
        if self.padded_vocab and self.padded_vocab != self.vocab:
            out.append(f"padded vocab: {self.padded_vocab} rows stored, {self.vocab} real")
        if self.layernorm_1p:
            out.append("layernorm-1p (stored gamma - 1)")
        if self.tied:
            out.append("tied embedding and LM head")
        if self.parallel_attn:
            out.append(f"parallel attention ({self.parallel_norms} norm{'s' if self.parallel_norms > 1 else ''})")
        if self.position != "rope":
            out.append(f"{self.position} positions")
        if self.embed_norm:
            out.append("embedding layernorm")
        if self.qk_norm:
            out.append("qk-norm")
        if self.rope_scaling:
            out.append(f"rope scaling: {self.rope_scaling.get('rope_type') or self.rope_scaling.get('type')}")
        return out

    def padded_for(self, tp: int, divisible_by: int | None = None) -> int:
        """Megatron's padded vocab for a target TP: ceil(vocab / (divisor × TP)) × divisor × TP."""
        multiple = (divisible_by or self.make_vocab_size_divisible_by or 1) * tp
        return int(math.ceil(self.vocab / multiple) * multiple)

    def canonical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every canonical tensor (weights and biases) with its full shape, in model order."""
        h = self.hidden
        out: dict[str, tuple[int, ...]] = {"embed": (self.vocab, h)}
        if self.position == "learned":
            out["pos_embed"] = (self.max_position_embeddings, h)
        if self.embed_norm:
            out["embed_norm"] = (h,)
            if self.norm_bias:
                out["embed_norm.bias"] = (h,)
        for i in range(self.layers):
            out.update(self.layer_shapes(i))
        out["final_norm"] = (h,)
        if self.norm_bias:
            out["final_norm.bias"] = (h,)
        if not self.tied:
            out["lm_head"] = (self.vocab, h)
        return out

    def layer_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        h, d = self.hidden, self.head_dim
        p = f"layers.{i}."
        out: dict[str, tuple[int, ...]] = {}

        def norm(name: str) -> None:
            out[p + name] = (h,)
            if self.norm_bias:
                out[p + name + ".bias"] = (h,)

        norm("input_norm")
        for name, rows in (("q", self.heads * d), ("k", self.kv_heads * d), ("v", self.kv_heads * d)):
            out[p + f"attn.{name}"] = (rows, h)
            if self.qkv_bias:
                out[p + f"attn.{name}.bias"] = (rows,)
        out[p + "attn.o"] = (h, self.heads * d)
        if self.o_bias:
            out[p + "attn.o.bias"] = (h,)
        if self.qk_norm:
            out[p + "attn.q_norm"] = (d,)
            out[p + "attn.k_norm"] = (d,)
        if self.has_post_attn_norm:
            norm("post_attn_norm")
        if self.moe:
            f = self.expert_ffn or self.ffn
            out[p + "router"] = (self.experts, h)
            for e in range(self.experts):
                out[p + f"experts.{e}.gate"] = (f, h)
                out[p + f"experts.{e}.up"] = (f, h)
                out[p + f"experts.{e}.down"] = (h, f)
        else:
            if self.gated:
                out[p + "mlp.gate"] = (self.ffn, h)
            out[p + "mlp.up"] = (self.ffn, h)
            out[p + "mlp.down"] = (h, self.ffn)
            if self.mlp_bias:
                if self.gated:
                    out[p + "mlp.gate.bias"] = (self.ffn,)
                out[p + "mlp.up.bias"] = (self.ffn,)
                out[p + "mlp.down.bias"] = (h,)
            if self.activation == "xielu":
                out[p + "mlp.act.alpha_p"] = (1,)
                out[p + "mlp.act.alpha_n"] = (1,)
        return out

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        out.pop("notes")
        return out

    # ----- parallel checks -----------------------------------------------------------------
    def check_parallel(self, tp: int = 1, pp: int = 1, ep: int = 1, pp_layers: list[int] | None = None) -> list[str]:
        """Reasons a target layout cannot hold this model (empty when it can)."""
        problems = []
        d = self.head_dim
        if self.heads % tp:
            problems.append(f"{self.heads} attention heads do not split over TP={tp}")
        if ((self.heads + 2 * self.kv_heads) * d) % tp:
            problems.append(f"fused QKV rows ({(self.heads + 2 * self.kv_heads) * d}) do not split over TP={tp}")
        if self.kv_heads % tp and tp % self.kv_heads:
            problems.append(f"{self.kv_heads} query groups and TP={tp}: one must divide the other")
        ffn = self.expert_ffn or self.ffn if self.moe else self.ffn
        if ffn % tp:
            problems.append(f"FFN size {ffn} does not split over TP={tp}")
        if self.hidden % tp:
            problems.append(f"hidden size {self.hidden} does not split over TP={tp}")
        if pp_layers is not None:
            if len(pp_layers) != pp:
                problems.append(f"--pp-layers lists {len(pp_layers)} stages, PP={pp}")
            elif sum(pp_layers) != self.layers or min(pp_layers) < 1:
                problems.append(f"--pp-layers {','.join(map(str, pp_layers))} must be positive and sum to {self.layers} layers")
        elif self.layers % pp:
            problems.append(f"{self.layers} layers do not split evenly over PP={pp} (give --pp-layers)")
        if ep > 1 and not self.moe:
            problems.append(f"EP={ep} needs a mixture-of-experts model")
        elif self.moe and self.experts % ep:
            problems.append(f"{self.experts} experts do not split over EP={ep}")
        return problems

    def stage_layers(self, pp: int, pp_layers: list[int] | None = None) -> list[range]:
        """Global layer ranges of each pipeline stage (even split unless given)."""
        sizes = pp_layers or [self.layers // pp] * pp
        out, start = [], 0
        for n in sizes:
            out.append(range(start, start + n))
            start += n
        return out


# ---------------------------------------------------------------------------------------------
# Megatron args <-> ModelSpec
# ---------------------------------------------------------------------------------------------
def _arg(args: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if args.get(name) is not None:
            return args[name]
    return default


def _dtype_from_args(args: dict[str, Any]) -> torch.dtype:
    params = str(args.get("params_dtype", ""))
    if args.get("bf16") or "bfloat16" in params:
        return torch.bfloat16
    if args.get("fp16") or "float16" in params:
        return torch.float16
    return torch.float32


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
    for unsupported in ("squared_relu", "xiprelu", "xiprelup", "onnx_safe"):
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
    if "rope" in kind or "rotary" in kind or args.get("use_rotary_position_embeddings"):
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
    linear_bias = bool(args.get("add_bias_linear", args.get("use_bias", not mllm)))
    if "disable_bias_linear" in args and "add_bias_linear" not in args:
        linear_bias = not bool(args["disable_bias_linear"])
    parallel = bool(args.get("parallel_attn"))
    if experts:
        family = "mixtral"
    elif activation == "xielu":
        family = "apertus"
    elif parallel or (activation != "swiglu" and position == "rope"):
        family = "falcon"
    elif position == "alibi":
        family = "bloom"
    elif position == "learned":
        family = "gpt2"
    else:
        family = "qwen2" if args.get("add_qkv_bias") and not linear_bias else "llama"
    tied = not bool(args.get("untie_embeddings_and_output_weights", False))
    if mllm and "tie_embed_logits" in args:
        tied = bool(args["tie_embed_logits"])
    interleaved = args.get("rotary_interleaved")
    interleaved = bool(interleaved) if interleaved is not None else (mllm and position == "rope")
    return ModelSpec(
        family=family,
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
        mlp_bias=linear_bias,
        qk_norm=bool(args.get("qk_layernorm")),
        experts=experts,
        topk=int(args.get("moe_router_topk") or 2),
        expert_ffn=int(args.get("moe_ffn_hidden_size") or ffn) if experts else 0,
        dtype=_dtype_from_args(args),
    )


def megatron_args_from_spec(spec: ModelSpec, *, tp: int, pp: int, ep: int = 1, padded_vocab: int,
                            pp_layers: list[int] | None = None, iteration: int = 1, ckpt_format: str = "torch",
                            transformer_impl: str = "local") -> dict[str, Any]:
    """Megatron's argument names for a target layout (a full Namespace's worth of fields)."""
    if spec.o_bias != spec.mlp_bias or (spec.o_bias and not spec.qkv_bias):
        raise SpecError("Megatron biases are all-or-nothing (add_bias_linear) plus add_qkv_bias; this model's biases do not fit")
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
        "apply_layernorm_1p": spec.layernorm_1p,
        "swiglu": spec.gated,
        "openai_gelu": spec.activation == "gelu_tanh",
        "bias_gelu_fusion": spec.activation != "gelu",
        "bias_activation_fusion": spec.activation != "gelu",
        "xielu": spec.activation == "xielu",
        "embed_layernorm": spec.embed_norm,
        "parallel_attn": spec.parallel_attn,
        "parallel_layernorm": spec.parallel_attn and spec.parallel_norms == 2,
        "add_bias_linear": spec.o_bias,
        "add_qkv_bias": spec.qkv_bias,
        "qk_layernorm": spec.qk_norm,
        "untie_embeddings_and_output_weights": not spec.tied,
        "position_embedding_type": {"rope": "rope", "learned": "learned_absolute", "alibi": "alibi"}[spec.position],
        "use_rotary_position_embeddings": spec.position == "rope",
        "add_position_embedding": spec.position == "learned",
        "rotary_base": int(spec.rope_theta) if float(spec.rope_theta).is_integer() else spec.rope_theta,
        "rotary_percent": spec.rotary_percent,
        "rotary_interleaved": spec.rotary_interleaved,
        "use_rope_scaling": bool(spec.rope_scaling and spec.rope_scaling.get("rope_type") == "llama3"),
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
    if pp_layers and len(set(pp_layers)) > 1:
        args["decoder_first_pipeline_num_layers"] = pp_layers[0]
        args["decoder_last_pipeline_num_layers"] = pp_layers[-1]
    return args


# ---------------------------------------------------------------------------------------------
# HF config <-> ModelSpec
# ---------------------------------------------------------------------------------------------
def _rope_from_config(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = config.get("rope_parameters")
    if isinstance(params, dict):  # transformers 5
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        scaling = None if rope_type == "default" else {k: v for k, v in params.items() if k != "rope_theta"}
        return theta, scaling
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(config.get("rope_theta", 10000.0)), scaling


def hf_dtype(config: dict[str, Any]) -> torch.dtype:
    dtype_name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(str(dtype_name).removeprefix("torch."), torch.float32)


def spec_from_hf_config(config: dict[str, Any]) -> ModelSpec:
    """Architecture from an HF config.json: Llama-style families here, others by their rules module."""
    from .rules.families import family_for_model_type

    model_type = str(config.get("model_type", ""))
    other = family_for_model_type(model_type)
    if other is not None:
        return other.spec_from_config(config)
    family = HF_MODEL_TYPES.get(model_type)
    if family is None:
        from .rules.families import HF_FAMILIES

        supported = ", ".join([*FAMILIES, *HF_FAMILIES])
        raise SpecError(f"HF model_type {model_type!r} is not supported yet (supported: {supported})")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    theta, scaling = _rope_from_config(config)
    dtype_name = config.get("dtype") or config.get("torch_dtype") or "float32"
    attention_bias = bool(config.get("attention_bias", False))
    experts = int(config.get("num_local_experts") or 0) if family == "mixtral" else 0
    return ModelSpec(
        family=family,
        layers=int(config["num_hidden_layers"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        ffn=int(config["intermediate_size"]),
        vocab=int(config["vocab_size"]),
        vocab_note="from config.json",
        norm="rmsnorm",
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2" or attention_bias,
        o_bias=attention_bias and family != "qwen2",
        mlp_bias=bool(config.get("mlp_bias", False)),
        experts=experts,
        topk=int(config.get("num_experts_per_tok") or 2),
        expert_ffn=int(config["intermediate_size"]) if experts else 0,
        sliding_window=config.get("sliding_window") if config.get("use_sliding_window", True) else None,
        dtype=DTYPES.get(str(dtype_name).removeprefix("torch."), torch.float32),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
    )


def hf_config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    """config.json built by transformers' own config class for the family (loadable as is)."""
    import transformers

    from .rules.families import HF_FAMILIES

    if spec.family in HF_FAMILIES:
        out = finish_hf_config(HF_FAMILIES[spec.family].config_from_spec(spec), spec)
        out.setdefault("torch_dtype", out.get("dtype"))
        return out

    class_name, arch = HF_CLASSES[spec.family]
    if spec.family == "qwen2" and (spec.o_bias or spec.mlp_bias):
        raise SpecError("Qwen2 has q/k/v biases only; this model also has output / MLP biases")
    if spec.family in ("llama",) and spec.qkv_bias != spec.o_bias:
        raise SpecError("HF Llama's attention_bias covers q/k/v and o together; use family qwen2 for q/k/v-only biases")
    if spec.qk_norm:
        raise SpecError("QK-norm models have no HF Llama-family equivalent here")
    kwargs: dict[str, Any] = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=(spec.expert_ffn or spec.ffn) if spec.moe else spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.norm_eps,
        tie_word_embeddings=spec.tied,
        rope_theta=spec.rope_theta,
    )
    if spec.rope_scaling:
        kwargs["rope_scaling"] = dict(spec.rope_scaling)
    if spec.family == "llama":
        kwargs.update(attention_bias=spec.qkv_bias, mlp_bias=spec.mlp_bias)
    if spec.family == "mixtral":
        kwargs.update(num_local_experts=spec.experts, num_experts_per_tok=spec.topk)
    if spec.family in ("mistral", "mixtral", "qwen2"):
        kwargs["sliding_window"] = spec.sliding_window
    if spec.bos_token_id is not None:
        kwargs["bos_token_id"] = spec.bos_token_id
    if spec.eos_token_id is not None:
        kwargs["eos_token_id"] = spec.eos_token_id
    config = getattr(transformers, class_name)(**kwargs)
    config.architectures = [arch]
    out = finish_hf_config(config, spec)
    # transformers 4.x reads the top-level RoPE keys; 5.x reads `rope_parameters` (and the old keys)
    if out.get("rope_theta") is None:
        out["rope_theta"] = spec.rope_theta
    if spec.rope_scaling and out.get("rope_scaling") is None:
        out["rope_scaling"] = dict(spec.rope_scaling)
    out.setdefault("torch_dtype", out.get("dtype"))
    return out


def finish_hf_config(config: Any, spec: ModelSpec) -> dict[str, Any]:
    """A transformers config object -> config.json dict with the dtype and token ids of the spec."""
    if isinstance(config, dict):
        return config
    config.dtype = str(spec.dtype).removeprefix("torch.")
    for key in ("bos_token_id", "eos_token_id"):
        value = getattr(spec, key)
        if value is not None:
            setattr(config, key, value)
    return config.to_dict()
