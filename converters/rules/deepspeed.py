"""DeepSpeed / Megatron-DeepSpeed tables: pipeline layer files, their roles and their names.

A `PipelineModule` saves one `layer_LL-model_TT-model_states.pt` per spec-list entry that is a
module (reference §2.3). Which index holds what depends on the fork (`LAYER_INDEX_MAPS`), so
files are classified by what they hold (`ROLE_MARKERS`) and the index map is only reported.
Names inside the files are the modules' own `state_dict` names: Megatron-DeepSpeed's
(`self_attention.query_key_value`, `dense_h_to_4h`, `word_embeddings`, bare `weight` for the
final norm) or an HF-style module's (`q_proj`, `gate_proj`, `embed_tokens`, `norm`). Rows reuse
the Megatron `Param` (canonical tensors, TP split, packing), so gathering is `sharding.gather`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import ModelSpec
from .megatron import Pack, Param, Split

NAMINGS = ("megatron", "hf")


def _norm_bias(spec: ModelSpec) -> bool:
    return spec.norm_bias


def _mlp_bias(spec: ModelSpec) -> bool:
    return spec.mlp_bias


def _p(canon: tuple[str, ...], name: str, split: Split, pack: Pack = Pack.NONE, *aliases: str, when=None) -> Param:  # type: ignore[no-untyped-def]
    return Param(canon, {"local": name}, split, pack, aliases=aliases, **({"when": when} if when else {}))


EMBED_ROWS: dict[str, tuple[Param, ...]] = {
    "megatron": (_p(("embed",), "word_embeddings.weight", Split.VOCAB),),
    "hf": (_p(("embed",), "embed_tokens.weight", Split.VOCAB, Pack.NONE, "model.embed_tokens.weight"),),
}

BLOCK_ROWS: dict[str, tuple[Param, ...]] = {
    "megatron": (
        _p(("input_norm",), "input_layernorm.weight", Split.REPLICATED),
        _p(("input_norm.bias",), "input_layernorm.bias", Split.REPLICATED, when=_norm_bias),
        _p(("attn.q", "attn.k", "attn.v"), "self_attention.query_key_value.weight", Split.COLUMN, Pack.QKV),
        _p(("attn.q.bias", "attn.k.bias", "attn.v.bias"), "self_attention.query_key_value.bias", Split.COLUMN, Pack.QKV,
           when=lambda s: s.qkv_bias),
        _p(("attn.o",), "self_attention.dense.weight", Split.ROW),
        _p(("attn.o.bias",), "self_attention.dense.bias", Split.REPLICATED, when=lambda s: s.o_bias),
        _p(("post_attn_norm",), "post_attention_layernorm.weight", Split.REPLICATED),
        _p(("post_attn_norm.bias",), "post_attention_layernorm.bias", Split.REPLICATED, when=_norm_bias),
        _p(("mlp.gate", "mlp.up"), "mlp.dense_h_to_4h.weight", Split.COLUMN, Pack.SWIGLU),
        _p(("mlp.gate.bias", "mlp.up.bias"), "mlp.dense_h_to_4h.bias", Split.COLUMN, Pack.SWIGLU, when=_mlp_bias),
        _p(("mlp.down",), "mlp.dense_4h_to_h.weight", Split.ROW),
        _p(("mlp.down.bias",), "mlp.dense_4h_to_h.bias", Split.REPLICATED, when=_mlp_bias),
    ),
    "hf": (  # HF-style block modules: flat (`q_proj`) or nested as in LlamaDecoderLayer (`self_attn.q_proj`)
        _p(("input_norm",), "input_layernorm.weight", Split.REPLICATED),
        _p(("attn.q",), "q_proj.weight", Split.COLUMN, Pack.NONE, "self_attn.q_proj.weight"),
        _p(("attn.k",), "k_proj.weight", Split.COLUMN, Pack.NONE, "self_attn.k_proj.weight"),
        _p(("attn.v",), "v_proj.weight", Split.COLUMN, Pack.NONE, "self_attn.v_proj.weight"),
        _p(("attn.q.bias",), "q_proj.bias", Split.COLUMN, Pack.NONE, "self_attn.q_proj.bias", when=lambda s: s.qkv_bias),
        _p(("attn.k.bias",), "k_proj.bias", Split.COLUMN, Pack.NONE, "self_attn.k_proj.bias", when=lambda s: s.qkv_bias),
        _p(("attn.v.bias",), "v_proj.bias", Split.COLUMN, Pack.NONE, "self_attn.v_proj.bias", when=lambda s: s.qkv_bias),
        _p(("attn.o",), "o_proj.weight", Split.ROW, Pack.NONE, "self_attn.o_proj.weight"),
        _p(("attn.o.bias",), "o_proj.bias", Split.REPLICATED, Pack.NONE, "self_attn.o_proj.bias", when=lambda s: s.o_bias),
        _p(("post_attn_norm",), "post_attention_layernorm.weight", Split.REPLICATED),
        _p(("mlp.gate",), "gate_proj.weight", Split.COLUMN, Pack.NONE, "mlp.gate_proj.weight"),
        _p(("mlp.up",), "up_proj.weight", Split.COLUMN, Pack.NONE, "mlp.up_proj.weight"),
        _p(("mlp.down",), "down_proj.weight", Split.ROW, Pack.NONE, "mlp.down_proj.weight"),
    ),
}

FINAL_NORM_ROWS: dict[str, tuple[Param, ...]] = {
    "megatron": (_p(("final_norm",), "weight", Split.REPLICATED),
                 _p(("final_norm.bias",), "bias", Split.REPLICATED, when=_norm_bias)),
    "hf": (_p(("final_norm",), "norm.weight", Split.REPLICATED, Pack.NONE, "model.norm.weight"),),
}

HEAD_ROWS: dict[str, tuple[Param, ...]] = {
    # MDS-ms LMHeadPipe (`lm_head`), older forks' `final_linear`
    "megatron": (_p(("lm_head",), "lm_head.weight", Split.VOCAB, Pack.NONE, "final_linear.weight",
                    when=lambda s: not s.tied),),
    "hf": (_p(("lm_head",), "lm_head.weight", Split.VOCAB, when=lambda s: not s.tied),),
}

ROLE_ROWS: dict[str, dict[str, tuple[Param, ...]]] = {
    "embed": EMBED_ROWS, "block": BLOCK_ROWS, "final_norm": FINAL_NORM_ROWS, "head": HEAD_ROWS,
}

# A layer file has a role when it holds any of these names (a file may have two: norm + head).
ROLE_MARKERS: dict[str, tuple[str, ...]] = {
    "embed": ("word_embeddings.weight", "embed_tokens.weight", "model.embed_tokens.weight"),
    "block": ("self_attention.query_key_value.weight", "q_proj.weight", "self_attn.q_proj.weight"),
    "final_norm": ("weight", "norm.weight", "model.norm.weight"),
    "head": ("lm_head.weight", "final_linear.weight"),
}

# Names that say which naming a block file uses.
MEGATRON_MARKERS = ("query_key_value", "dense_h_to_4h", "word_embeddings")

# Stored entries that carry no weights.
IGNORED_PATTERNS = (r"(^|\.)inv_freq$", r"(^|\.)rotary_emb\.", r"(^|\.)_extra_state$", r"(^|\.)attn\.(masked_)?bias$")


@dataclass(frozen=True)
class LayerIndexMap:
    """Where a fork's GPTModelPipe puts embedding and first block in its spec list."""

    embed: int
    first_block: int
    note: str


LAYER_INDEX_MAPS: dict[str, LayerIndexMap] = {
    "microsoft": LayerIndexMap(1, 2, "Megatron-DeepSpeed (microsoft): 0 fp16 fn, 1 embedding, 2.. blocks, norm, LM head"),
    "bigscience": LayerIndexMap(1, 3, "Megatron-DeepSpeed (bigscience): 1 embedding, 2 transpose fn, 3.. blocks, undo fn, norm"),
    "plain": LayerIndexMap(0, 1, "plain PipelineModule: 0 embedding, 1.. blocks, then norm / head"),
}

# Megatron-DeepSpeed argument names -> Megatron-LM's (what `spec_from_megatron_args` reads).
MDS_ARG_RENAMES: dict[str, str] = {
    "num_key_value_heads": "num_query_groups",
}
