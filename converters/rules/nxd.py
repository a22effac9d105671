"""NxD (Neuron) parameter table: stored names in both naming styles and how TP/EP cut each one.

NxD's converter keeps HF Llama names (`--model_style hf`) or rewrites them by substring
(`--model_style megatron`, `MEGATRON_RENAMES` below); the attention projections exist in several
mutually exclusive *forms* (separate q/k/v, GQA `qkv_proj.weight_q/k/v`, fused `weight_qkv`,
coalesced `qkv_proj.weight`, Megatron `query` + `key_value`). Readers pick the form whose names
are on disk; writers pick one from the options. Every row says how one stored tensor relates
to canonical tensors (`Layout`); the cutting itself lives in `converters/nxd_sharding.py`.
Reference: ../shared/reference/nxd-deepspeed-files.md §1.3-1.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .. import families
from ..spec import ModelSpec

STYLES = ("hf", "megatron")

# hf-style names NxD keeps as they are: the Llama family's own (never typed again here)
_LLAMA = families.family("llama")
HF: dict[str, str] = {row.canon[0]: row.name for row in (*_LLAMA.pre, *_LLAMA.layer, *_LLAMA.post) if len(row.canon) == 1}
LAYER_PREFIX = _LLAMA.layer_prefix


class Layout(Enum):
    REPLICATED = "replicated"  # every TP rank holds it whole
    COLUMN = "column"  # contiguous split of dim 0 (embedding, lm_head)
    ROW = "row"  # contiguous split of dim 1 (down_proj)
    Q = "q"  # the rank's Q heads (reordered under kv_size_multiplier)
    KV = "kv"  # the rank's KV heads (KV tiled kv_size_multiplier times, then split)
    O = "o"  # o_proj columns of the rank's Q heads
    QKV = "qkv"  # per rank [q_r; k_r; v_r]
    KV_PAIR = "kv_pair"  # per rank [k_r; v_r] (megatron-style `key_value`)
    GATE_UP = "gate_up"  # per rank [gate_r; up_r]
    EXPERT_GATE_UP = "expert_gate_up"  # [E_local, hidden, 2f/tp]: per rank [gate_r | up_r] on dim 2
    EXPERT_DOWN = "expert_down"  # [E_local, f/tp, hidden]


def _always(spec: ModelSpec) -> bool:
    return True


def _dense(spec: ModelSpec) -> bool:
    return not spec.moe


def _moe(spec: ModelSpec) -> bool:
    return spec.moe


@dataclass(frozen=True)
class NxdParam:
    canon: tuple[str, ...]  # relative to `layers.{i}.` for layer rows; `{e}` expands over experts
    hf: str  # hf-style name (relative to `model.layers.{i}.` for layer rows)
    layout: Layout
    when: Callable[[ModelSpec], bool] = _always

    @property
    def expert(self) -> bool:
        return self.layout in (Layout.EXPERT_GATE_UP, Layout.EXPERT_DOWN)


# name, layout, pipeline stage holding it
GLOBAL_PARAMS: tuple[tuple[NxdParam, str], ...] = (
    (NxdParam(("embed",), HF["embed"], Layout.COLUMN), "first"),
    (NxdParam(("final_norm",), HF["final_norm"], Layout.REPLICATED), "last"),
    (NxdParam(("lm_head",), HF["lm_head"], Layout.COLUMN, when=lambda s: not s.tied), "last"),
)

LAYER_PARAMS: tuple[NxdParam, ...] = (
    NxdParam(("input_norm",), HF["input_norm"], Layout.REPLICATED),
    NxdParam(("attn.o",), HF["attn.o"], Layout.O),
    NxdParam(("post_attn_norm",), HF["post_attn_norm"], Layout.REPLICATED),
    NxdParam(("mlp.gate", "mlp.up"), "mlp.gate_up_proj.weight", Layout.GATE_UP, when=_dense),
    NxdParam(("mlp.down",), HF["mlp.down"], Layout.ROW, when=_dense),
    NxdParam(("router",), "mlp.router.linear_router.weight", Layout.REPLICATED, when=_moe),
    NxdParam(("experts.{e}.gate", "experts.{e}.up"), "mlp.expert_mlps.mlp_op.gate_up_proj.weight",
             Layout.EXPERT_GATE_UP, when=_moe),
    NxdParam(("experts.{e}.down",), "mlp.expert_mlps.mlp_op.down_proj.weight", Layout.EXPERT_DOWN, when=_moe),
)

# Attention forms, most specific first (a reader takes the first whose names are on disk).
Q, K, V = ("attn.q",), ("attn.k",), ("attn.v",)
QKV_CANON = ("attn.q", "attn.k", "attn.v")
ATTENTION_FORMS: dict[str, tuple[NxdParam, ...]] = {
    "gqa_fused": (NxdParam(QKV_CANON, "self_attn.qkv_proj.weight_qkv", Layout.QKV),),
    "gqa": (NxdParam(Q, "self_attn.qkv_proj.weight_q", Layout.Q), NxdParam(K, "self_attn.qkv_proj.weight_k", Layout.KV),
            NxdParam(V, "self_attn.qkv_proj.weight_v", Layout.KV)),
    "coalesced": (NxdParam(QKV_CANON, "self_attn.qkv_proj.weight", Layout.QKV),),  # megatron: query_key_value
    "megatron_gqa": (NxdParam(Q, "self_attn.query.weight", Layout.Q),
                     NxdParam(("attn.k", "attn.v"), "self_attn.key_value.weight", Layout.KV_PAIR)),
    "separate": (NxdParam(Q, HF["attn.q"], Layout.Q), NxdParam(K, HF["attn.k"], Layout.KV), NxdParam(V, HF["attn.v"], Layout.KV)),
}


def write_form(style: str, fuse_qkv: bool, spec: ModelSpec) -> str:
    """The attention form NxD's converter produces for these options."""
    if style == "megatron":  # modify_qkv_for_megatron: query_key_value (MHA) or query + key_value (GQA)
        return "coalesced" if spec.heads == spec.kv_heads else "megatron_gqa"
    return "gqa_fused" if fuse_qkv else "gqa"


# NxD `rename_keys_for_megatron`: substring renames in this order, then the `model.` prefix.
MEGATRON_RENAMES: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "language_model.embedding.word_embeddings.weight"),
    ("model.norm.weight", "language_model.encoder.final_layernorm.weight"),
    ("lm_head.weight", "language_model.output_layer.weight"),
    ("self_attn.", "self_attention."),
    ("rotary_emb.inv_freq", "core_attention.rotary_emb.inv_freq"),
    ("o_proj.weight", "dense.weight"),
    ("gate_up_proj.weight", "dense_h_to_4h.weight"),
    ("down_proj.weight", "dense_4h_to_h.weight"),
    ("qkv_proj.weight", "query_key_value.weight"),
)

# Stored entries that carry no weights.
IGNORED_PATTERNS = (r"(^|\.)inv_freq$", r"(^|\.)_extra_state$")


def megatron_name(name: str) -> str:
    """hf-style full name -> megatron-style full name (NxD `rename_keys_for_megatron`)."""
    for old, new in MEGATRON_RENAMES:
        name = name.replace(old, new)
    return _prefix(name)


def _prefix(name: str) -> str:
    return "language_model.encoder." + name.removeprefix("model.") if name.startswith("model.") else name


def stored_name(hf_full: str, style: str) -> str:
    return megatron_name(hf_full) if style == "megatron" else hf_full


def layer_params(spec: ModelSpec, form: str) -> list[NxdParam]:
    """Rows of one layer in module order: norm, attention (form), o_proj, norm, MLP."""
    rows = [p for p in LAYER_PARAMS if p.when(spec)]
    return rows[:1] + list(ATTENTION_FORMS[form]) + rows[1:]


def global_params(spec: ModelSpec) -> list[tuple[NxdParam, str]]:
    return [(p, stage) for p, stage in GLOBAL_PARAMS if p.when(spec)]


# ----- file layout ----------------------------------------------------------------------------
def shard_file_name(tp_rank: int, pp_rank: int, ep_rank: int | None = None) -> str:
    """NxD `_get_path`: dp always 00 for model files; ep only when expert parallelism is on."""
    ep = f"ep_rank_{ep_rank:02d}_" if ep_rank is not None else ""
    return f"dp_rank_00_{ep}tp_rank_{tp_rank:02d}_pp_rank_{pp_rank:02d}.pt"


def layer_stages(layers: int, pp: int) -> list[int]:
    """PP rank of every layer: even split, remainder to the last stages (NxD create_partitions)."""
    base, extra = divmod(layers, pp)
    sizes = [base + (1 if stage >= pp - extra else 0) for stage in range(pp)]
    return [stage for stage, size in enumerate(sizes) for _ in range(size)]


# What NxD's Llama / Mixtral modules (the only layers its checkpoints load into) cannot hold.
NXD_CANNOT: tuple[tuple[Callable[[ModelSpec], bool], str], ...] = (
    (lambda s: s.qkv_bias or s.o_bias or s.mlp_bias, "NxD's Llama/Mixtral layers have no linear biases; this model has some"),
    (lambda s: s.qk_norm, "NxD's Llama layers have no QK-norm"),
    (lambda s: s.norm != "rmsnorm", "NxD's Llama layers use RMSNorm; this model uses LayerNorm"),
    (lambda s: s.activation != "swiglu" or s.position != "rope" or s.parallel_attn or s.embed_norm,
     "NxD's Llama layers are sequential SwiGLU blocks with RoPE"),
    (lambda s: not s.pre_norms or s.out_norms, "NxD's Llama layers have pre-norms only"),
    (lambda s: s.shared_expert_ffn > 0 or (s.moe and not s.norm_topk_prob), "NxD's Mixtral MoE has no shared expert and renormalises top-k"),
    (lambda s: s.sliding_window is not None, "NxD's Llama attention has no sliding window"),
    (lambda s: s.norm_zero_centered or bool(s.attn_softcap or s.final_softcap) or s.rope_local_theta is not None,
     "NxD's Llama layers have no (1 + w) norms, soft-capping or second RoPE base"),
    (lambda s: s.rotary_percent != 1.0, "NxD's Llama attention rotates the whole head (no partial rotary)"),
    (lambda s: (s.embedding_multiplier, s.residual_multiplier, s.logits_scaling) != (1.0, 1.0, 1.0)
     or s.attention_multiplier is not None, "NxD's Llama layers have no embedding / residual / attention / logits multipliers"),
)


def check_spec(spec: ModelSpec) -> list[str]:
    """Why NxD's Llama/Mixtral layers cannot hold this model (empty when they can)."""
    return [reason for test, reason in NXD_CANNOT if test(spec)]
