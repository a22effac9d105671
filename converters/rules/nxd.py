"""NxD (Neuron) parameter table: stored names in both naming styles and how TP/EP cut each one.

NxD's converter keeps HF Llama names (`--model_style hf`) or rewrites them by substring
(`--model_style megatron`, `MEGATRON_RENAMES` below); the attention projections exist in several
mutually exclusive *forms* (separate q/k/v, GQA `qkv_proj.weight_q/k/v`, fused `weight_qkv`,
coalesced `qkv_proj.weight`, Megatron `query` + `key_value`). Readers pick the form whose names
are on disk; writers pick one from the options. Rows are the one `Row` type: the op relates a
stored tensor to canonical tensors (`layouts.py`), the cut says which heads or slices each TP
rank holds (`shards.py`: `Heads` / `HeadBlocks` under `kv_size_multiplier`); expert rows stack a
rank's local experts on dim 0, each stored transposed (`[in, out]`).
Reference: ../shared/reference/nxd-deepspeed-files.md §1.3-1.5.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import families
from ..layouts import ConcatRows, Transposed
from ..row import Row
from ..shards import COLUMN, GATE_UP, ROW, Blocks, HeadBlocks, Heads
from ..spec import ModelSpec

STYLES = ("hf", "megatron")

# hf-style names NxD keeps as they are: the Llama family's own (never typed again here)
_LLAMA = families.family("llama")
HF: dict[str, str] = {row.canon[0]: row.name for row in (*_LLAMA.pre, *_LLAMA.layer, *_LLAMA.post) if len(row.canon) == 1}
LAYER_PREFIX = _LLAMA.layer_prefix

Q_HEADS, KV_HEADS, O_COLUMNS = Heads("q"), Heads("kv"), Heads("q", dim=1)
FUSED = ConcatRows()


def _dense(spec: ModelSpec) -> bool:
    return not spec.moe


def _moe(spec: ModelSpec) -> bool:
    return spec.moe


# rows and the pipeline stage holding them
GLOBAL_PARAMS: tuple[tuple[Row, str], ...] = (
    (Row(HF["embed"], ("embed",), shard=COLUMN), "first"),
    (Row(HF["final_norm"], ("final_norm",)), "last"),
    (Row(HF["lm_head"], ("lm_head",), when=lambda s: not s.tied, shard=COLUMN), "last"),
)

LAYER_PARAMS: tuple[Row, ...] = (
    Row(HF["input_norm"], ("input_norm",)),
    Row(HF["attn.o"], ("attn.o",), shard=O_COLUMNS),
    Row(HF["post_attn_norm"], ("post_attn_norm",)),
    Row("mlp.gate_up_proj.weight", ("mlp.gate", "mlp.up"), FUSED, _dense, GATE_UP),
    Row(HF["mlp.down"], ("mlp.down",), when=_dense, shard=ROW),
    Row("mlp.router.linear_router.weight", ("router",), when=_moe),
    # [E_local, hidden, 2f/tp]: per expert [gate | up] transposed, each rank [gate_r | up_r] on dim 1
    Row("mlp.expert_mlps.mlp_op.gate_up_proj.weight", ("experts.{e}.gate", "experts.{e}.up"), Transposed(FUSED), _moe,
        Blocks(dim=1, parts=2), stacked=True),
    # [E_local, f/tp, hidden]
    Row("mlp.expert_mlps.mlp_op.down_proj.weight", ("experts.{e}.down",), Transposed(), _moe, COLUMN, stacked=True),
)

# Attention forms, most specific first (a reader takes the first whose names are on disk).
Q, K, V = ("attn.q",), ("attn.k",), ("attn.v",)
QKV_CANON = ("attn.q", "attn.k", "attn.v")
ATTENTION_FORMS: dict[str, tuple[Row, ...]] = {
    "gqa_fused": (Row("self_attn.qkv_proj.weight_qkv", QKV_CANON, FUSED, shard=HeadBlocks(("q", "kv", "kv"))),),
    "gqa": (Row("self_attn.qkv_proj.weight_q", Q, shard=Q_HEADS), Row("self_attn.qkv_proj.weight_k", K, shard=KV_HEADS),
            Row("self_attn.qkv_proj.weight_v", V, shard=KV_HEADS)),
    "coalesced": (Row("self_attn.qkv_proj.weight", QKV_CANON, FUSED, shard=HeadBlocks(("q", "kv", "kv"))),),  # megatron: query_key_value
    "megatron_gqa": (Row("self_attn.query.weight", Q, shard=Q_HEADS),
                     Row("self_attn.key_value.weight", ("attn.k", "attn.v"), FUSED, shard=HeadBlocks(("kv", "kv")))),
    "separate": (Row(HF["attn.q"], Q, shard=Q_HEADS), Row(HF["attn.k"], K, shard=KV_HEADS),
                 Row(HF["attn.v"], V, shard=KV_HEADS)),
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


def layer_params(spec: ModelSpec, form: str) -> list[Row]:
    """Rows of one layer in module order: norm, attention (form), o_proj, norm, MLP."""
    rows = [p for p in LAYER_PARAMS if p.when(spec)]
    return rows[:1] + list(ATTENTION_FORMS[form]) + rows[1:]


def global_params(spec: ModelSpec) -> list[tuple[Row, str]]:
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
    (lambda s: s.attn_sinks or s.router_bias or s.expert_bias or s.activation == "clamped_swiglu",
     "NxD's Llama/Mixtral layers have no attention sinks, router / expert biases or clamped SwiGLU"),
    (lambda s: s.mla or bool(s.dense_layers) or s.router_score != "softmax" or s.router_score_bias or s.router_groups > 1
     or s.routed_scaling != 1.0, "NxD's Llama/Mixtral layers have no latent attention, dense layers among MoE ones, "
     "or sigmoid / biased / grouped / scaled routers"),
    (lambda s: (s.embedding_multiplier, s.residual_multiplier, s.logits_scaling) != (1.0, 1.0, 1.0)
     or s.attention_multiplier is not None, "NxD's Llama layers have no embedding / residual / attention / logits multipliers"),
    (lambda s: s.qk_l2_norm or bool(s.nope_layers or s.chunked_layers) or s.router_on_input,
     "NxD's Llama/Mixtral layers have no L2 QK-norm, NoPE or chunked-attention layers, or input-scaled experts (Llama 4)"),
)


def check_spec(spec: ModelSpec) -> list[str]:
    """Why NxD's Llama/Mixtral layers cannot hold this model (empty when they can)."""
    return [reason for test, reason in NXD_CANNOT if test(spec)]
