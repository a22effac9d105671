"""`ModelSpec`: the architecture in one dataclass, and nothing else.

Formats read it from and write it back to their own metadata (`families/` for config.json,
`megatron_args.py` for Megatron `args`); the canonical tensors it implies are declared in
`vocab.py`. Family features (see docs/families.md):
- learned positions, embedding LayerNorm, ungated MLPs (GELU / xIELU), parallel attention (Falcon);
- `pre_norms` False: no norm before attention or MLP (OLMo2); `out_norms`: a norm on each branch's
  output before the residual add (OLMo2, GLM4); `qk_norm_full`: QK-norm over all heads (OLMo2);
- MoE: `experts` routed experts, `norm_topk_prob` renormalises the top-k weights (Mixtral,
  Qwen3-MoE) or keeps the softmax probabilities (Qwen2-MoE); a shared expert of
  `shared_expert_ffn` with an optional sigmoid gate (Qwen2-MoE);
- Granite's multipliers (embedding, residual, attention scale, logits divisor).
- multi-head latent attention (`kv_lora_rank` > 0, DeepSeek-V2/V3): `head_dim` is then the RoPE
  part of a query/key head (as transformers sets it), `qk_nope_dim` the rest, `v_head_dim` the
  value head; MLA weights are canonical as stored (`rope_interleave` is a forward property);
- routers beyond softmax top-k: sigmoid scores, a score-correction bias used for the choice only,
  group-limited top-k, a scale on the routed sum (DeepSeek-V3); `dense_layers` of a MoE model
  have a dense MLP of `ffn` instead (`layer_spec(i)` is the per-layer view every table reads).
- q/k rows are always in the rotate-half ("HF") order; a source that stores them interleaved
  (Meta, `--rotary-interleaved`, Megatron-LLM, GLM4) is permuted on read (and on write for
  Megatron targets of such a spec).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ckptscope.inspectors.dtypes import DTYPES as _STANDINS, DTypeField

from . import vocab

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first use: specs are made by `inspect` too

ACTIVATIONS = ("swiglu", "geglu_tanh", "geglu", "gelu", "gelu_tanh", "xielu", "relu2", "clamped_swiglu")
GATED = ("swiglu", "geglu_tanh", "geglu", "clamped_swiglu")  # fc1 holds gate and up
POSITIONS = ("rope", "learned", "alibi")

# --dtype names -> torch-free dtypes (`.torch` is torch's; a ModelSpec resolves them itself)
DTYPES = {"fp32": _STANDINS["float32"], "float32": _STANDINS["float32"], "bf16": _STANDINS["bfloat16"],
          "bfloat16": _STANDINS["bfloat16"], "fp16": _STANDINS["float16"], "float16": _STANDINS["float16"]}


class SpecError(ValueError):
    """The architecture cannot be determined or is not supported for this conversion."""


# transformers' DeepSeek latent norms (q_a_layernorm, kv_a_layernorm) keep RMSNorm's default eps
MLA_LATENT_EPS = 1e-6


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
    norm_topk_prob: bool = True  # MoE: renormalise the top-k router weights (False: softmax probabilities as they are)
    shared_expert_ffn: int = 0  # MoE: a shared expert of this FFN size beside the routed ones (Qwen2-MoE)
    shared_expert_gate: bool = False  # the shared expert's output scaled by sigmoid(shared_gate . x)
    pre_norms: bool = True  # norms before attention and MLP (False: OLMo2)
    out_norms: bool = False  # norms on the attention and MLP outputs before the residual add (OLMo2, GLM4)
    qk_norm_full: bool = False  # QK-norm over all heads' width instead of per head (OLMo2)
    sliding_window: int | None = None  # a query attends to the last `sliding_window` keys, itself included
    layer_types: tuple[str, ...] | None = None  # per layer: sliding_attention | full_attention (None: all sliding if a window)
    rope_local_theta: float | None = None  # RoPE base of the sliding layers when it differs (Gemma 3); they take no scaling
    norm_zero_centered: bool = False  # norms multiply by (1 + w) and store w (Gemma); canonical norms are then w
    attn_softcap: float | None = None  # attention scores capped by cap * tanh(s / cap) (Gemma 2)
    final_softcap: float | None = None  # logits capped the same way (Gemma 2)
    embedding_multiplier: float = 1.0  # Granite: embeddings scaled by this
    residual_multiplier: float = 1.0  # Granite: each branch output scaled by this before the residual add
    attention_multiplier: float | None = None  # Granite: attention scale instead of 1/sqrt(head_dim)
    logits_scaling: float = 1.0  # Granite: logits divided by this
    attn_sinks: bool = False  # a learned logit per head joins every softmax and takes its share (gpt-oss)
    router_bias: bool = False  # MoE router logits have a bias (gpt-oss)
    expert_bias: bool = False  # expert projections have biases (gpt-oss)
    glu_alpha: float = 1.702  # clamped_swiglu: (up + 1) * g * sigmoid(alpha * g), g = min(gate, limit), up in [-limit, limit]
    glu_limit: float = 7.0
    q_lora_rank: int = 0  # MLA: query down-projection rank (0: one plain q projection, DeepSeek-V2-Lite)
    kv_lora_rank: int = 0  # MLA: the compressed KV latent's rank; > 0 turns multi-head latent attention on
    qk_nope_dim: int = 0  # MLA: query / key dims per head without RoPE (head_dim holds the RoPE dims)
    v_head_dim: int = 0  # MLA: value dims per head
    rope_interleave: bool = False  # MLA: RoPE rotates adjacent pairs of the rope dims (DeepSeek), not halves
    router_score: str = "softmax"  # softmax | sigmoid (DeepSeek-V3): how router logits become expert scores
    router_score_bias: bool = False  # a bias added to the scores for the choice only (a buffer: e_score_correction_bias)
    router_groups: int = 1  # group-limited top-k: experts in this many groups, ...
    router_group_topk: int = 1  # ... experts chosen only from this many best groups (max score; top-2 sum when sigmoid)
    routed_scaling: float = 1.0  # the routed experts' weights scaled by this (routed_scaling_factor)
    dense_layers: tuple[int, ...] = ()  # MoE models: layers whose MLP is dense, of `ffn` (first_k_dense_replace)
    mtp_layers: int = 0  # multi-token-prediction modules the checkpoint declares beyond `layers` (DeepSeek-V3)
    mtp_dropped: bool = False  # the target cannot hold them: dropped by a named rule instead of carried
    # Llama 4: L2 QK-norm, NoPE layers, chunked local attention, temperature tuning, input-scaled experts
    qk_l2_norm: bool = False  # q and k RMS-normalised per head after RoPE, no weight, on the RoPE layers only (use_qk_norm)
    nope_layers: tuple[int, ...] = ()  # layers that apply no RoPE (no_rope_layers' zeros)
    attention_chunk: int | None = None  # chunked local attention: a query sees the earlier keys of its own chunk only
    chunked_layers: tuple[int, ...] = ()  # the layers that attend by chunks (layer_types' chunked_attention)
    temperature_tuning: bool = False  # NoPE-layer queries scaled by 1 + temperature_scale * log1p(floor((pos + 1) / floor))
    temperature_floor: int = 8192
    temperature_scale: float = 0.1
    router_on_input: bool = False  # MoE: an expert's routed weight scales its input, not its output (moe_apply_probs_on_input)
    dtype: torch.dtype = DTypeField("float32")  # type: ignore[assignment]  # torch's once torch is imported
    model_type: str = ""  # the HF model_type the source declared (written back as it came)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    notes: list[str] = field(default_factory=list)

    # ----- derived -------------------------------------------------------------------------
    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    def layer_spec(self, i: int) -> ModelSpec:
        """The spec of layer i alone: a dense layer of a MoE model is the same model without experts."""
        if i not in self.dense_layers:
            return self
        return replace(self, experts=0, shared_expert_ffn=0, shared_expert_gate=False, router_bias=False, expert_bias=False,
                       router_score_bias=False, dense_layers=())

    @property
    def mtp(self) -> int:
        """The multi-token-prediction modules carried (canonical `mtp.{k}.*`, streamed after the head)."""
        return 0 if self.mtp_dropped else self.mtp_layers

    def mtp_spec(self) -> ModelSpec:
        """The MTP modules' inner layer: HF numbers it after the last layer (MoE past the dense ones)."""
        return self.layer_spec(self.layers)

    @property
    def norm_bias(self) -> bool:
        return self.norm == "layernorm"

    @property
    def gated(self) -> bool:
        """SwiGLU / GeGLU: fc1 holds gate and up; every other activation has fc1 = up only."""
        return self.activation in GATED

    def window_of(self, i: int) -> int | None:
        """The sliding window of layer i (None: full attention)."""
        if self.sliding_window is None or (self.layer_types is not None and self.layer_types[i] != "sliding_attention"):
            return None
        return self.sliding_window

    @property
    def has_post_attn_norm(self) -> bool:
        return not (self.parallel_attn and self.parallel_norms == 1)

    def ffn_label(self) -> str:
        """The MLP width as summaries print it: a model with dense layers among its MoE ones
        (DeepSeek's first layers, Llama 4's interleave) has two widths, and both are named."""
        if self.moe and self.dense_layers:
            return f"ffn {self.ffn} dense / {self.expert_ffn} per expert"
        return f"ffn {self.expert_ffn or self.ffn}"

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
            out.append("qk-norm" + (" over all heads" if self.qk_norm_full else ""))
        if self.sliding_window:
            pattern = "" if self.layer_types is None else f" on {self.layer_types.count('sliding_attention')} of {self.layers} layers"
            out.append(f"sliding window {self.sliding_window}{pattern}")
        if self.rope_local_theta is not None:
            out.append(f"local RoPE base {self.rope_local_theta:g}")
        if self.norm_zero_centered:
            out.append("zero-centred norms (1 + w)")
        if self.attn_softcap or self.final_softcap:
            out.append("soft-capping (" + ", ".join(f"{k} {v:g}" for k, v in (("attention", self.attn_softcap),
                                                                                ("logits", self.final_softcap)) if v) + ")")
        if self.rotary_percent != 1.0:
            out.append(f"partial rotary {self.rotary_percent:g}")
        if not self.pre_norms:
            out.append("no pre-norms")
        if self.out_norms:
            out.append("post-norms on attention and MLP outputs")
        if self.attn_sinks:
            out.append("attention sinks")
        if self.router_bias or self.expert_bias:
            out.append("biases on the " + " and ".join(n for n, f in (("router", self.router_bias), ("experts", self.expert_bias)) if f))
        if self.activation == "clamped_swiglu":
            out.append(f"clamped SwiGLU (alpha {self.glu_alpha:g}, limit {self.glu_limit:g}, up + 1)")
        if self.mla:
            out.append(f"multi-head latent attention (kv rank {self.kv_lora_rank}, "
                       + (f"q rank {self.q_lora_rank}" if self.q_lora_rank else "plain q") + f", rope dims {self.head_dim})")
        if self.rope_interleave:
            out.append("RoPE on adjacent pairs")
        if self.moe and (self.router_score != "softmax" or self.router_score_bias or self.router_groups > 1
                         or self.routed_scaling != 1.0):
            out.append(f"{self.router_score} router" + (" with score-correction bias" if self.router_score_bias else "")
                       + (f", top-{self.router_group_topk} of {self.router_groups} groups" if self.router_groups > 1 else "")
                       + (f", routed scale {self.routed_scaling:g}" if self.routed_scaling != 1.0 else ""))
        if self.dense_layers:
            out.append(f"dense MLP on {len(self.dense_layers)} of {self.layers} layers")
        out += self._llama4_quirks()
        if self.mtp_layers:
            out.append(f"{self.mtp_layers} multi-token-prediction module(s) after the {self.layers} layers"
                       + (" (dropped by a named rule: the target cannot hold them)" if self.mtp_dropped else ""))
        if self.shared_expert_ffn:
            out.append("shared expert" + (" with sigmoid gate" if self.shared_expert_gate else ""))
        if self.moe and not self.norm_topk_prob:
            out.append("top-k router weights not renormalised")
        if (self.embedding_multiplier, self.residual_multiplier, self.logits_scaling) != (1.0, 1.0, 1.0) \
                or self.attention_multiplier is not None:
            out.append("embedding / residual / attention / logits multipliers")
        if self.rope_scaling:
            out.append(f"rope scaling: {self.rope_scaling.get('rope_type') or self.rope_scaling.get('type')}")
        return out

    def _llama4_quirks(self) -> list[str]:
        """Llama 4's attention and routing quirks (empty for every other model)."""
        out = []
        if self.qk_l2_norm:
            out.append("L2 qk-norm (no weight)" + (" on the RoPE layers" if self.nope_layers else ""))
        if self.nope_layers:
            out.append(f"no RoPE on {len(self.nope_layers)} of {self.layers} layers")
        if self.chunked_layers and self.attention_chunk:
            out.append(f"chunked attention ({self.attention_chunk} tokens) on {len(self.chunked_layers)} of {self.layers} layers")
        if self.temperature_tuning and self.nope_layers:
            out.append(f"attention temperature tuning on NoPE layers (floor {self.temperature_floor}, scale {self.temperature_scale:g})")
        if self.moe and self.router_on_input:
            out.append("routed weight scales the expert input")
        return out

    def chunk_of(self, i: int) -> int | None:
        """The attention chunk of layer i (None: not chunked)."""
        return self.attention_chunk if i in self.chunked_layers else None

    def padded_for(self, tp: int, divisible_by: int | None = None) -> int:
        """Megatron's padded vocab for a target TP: ceil(vocab / (divisor × TP)) × divisor × TP."""
        multiple = (divisible_by or self.make_vocab_size_divisible_by or 1) * tp
        return int(math.ceil(self.vocab / multiple) * multiple)

    def canonical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every canonical tensor (weights and biases) with its full shape, in model order."""
        return vocab.model_shapes(self)

    def layer_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        return vocab.layer_shapes(self, i)

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
        if self.shared_expert_ffn % tp:
            problems.append(f"shared expert FFN size {self.shared_expert_ffn} does not split over TP={tp}")
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
