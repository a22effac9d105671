"""Megatron parameter table: one row per stored parameter, for every naming variant.

Variants: `local` (Megatron-Core local spec), `te` (Transformer-Engine spec: norms fused into
the next linear), `legacy` (pre-mcore nested `language_model`, flattened), `dist` (torch_dist keys:
local and TE specs share them). epfLLM Megatron-LLM checkpoints have their own table
(`rules/megatron_llm.py`: other names, `[up; gate]` SwiGLU) of the same `Row`s. Each row says which
canonical tensors it holds (`canon`, relative to `layers.{i}.` for layer rows), the op that
packs them (`layouts.py`: grouped QKV, `[gate; up]`, layernorm-1p offset, vocab padding) and how
tensor parallelism cuts the result (`shards.py`). Readers and writers both walk this table, so a
name is never mapped in one direction only.
"""

from __future__ import annotations

from collections.abc import Callable

from ..layouts import IDENTITY, ConcatRows, GroupedQKV, Layout, NormOffset, PadVocab
from ..row import Row
from ..shards import COLUMN, GATE_UP, REPLICATED, ROW, QkvCut, Shard
from ..spec import ModelSpec

QKV = GroupedQKV(keeps_rotary=True)  # a Megatron target of an interleaved source keeps its layout
QKV_CUT = QkvCut(0)
NORM = NormOffset()
VOCAB = PadVocab()
SWIGLU = ConcatRows()  # [gate; up]; GATE_UP cuts it per rank into [gate_r; up_r]


def _always(spec: ModelSpec) -> bool:
    return True


def mrow(canon: tuple[str, ...], names: dict[str, str], op: Layout = IDENTITY, shard: Shard = REPLICATED,
         when: Callable[[ModelSpec], bool] = _always, aliases: tuple[str, ...] = (),
         shards: dict[str, Shard] | None = None) -> Row:
    """A Megatron row: `names` maps naming variant -> spelling (`local` is the row's name);
    `shards` gives a variant its own TP cut."""
    return Row(names["local"], canon, op, when, shard, variants=names, aliases=aliases, shards=shards or {})


def _dense(spec: ModelSpec) -> bool:
    return not spec.moe


def _norm_bias(spec: ModelSpec) -> bool:
    return spec.norm_bias


def _gated(spec: ModelSpec) -> bool:
    return not spec.moe and spec.gated


def _ungated(spec: ModelSpec) -> bool:
    """fc1 without a gate (GELU / xIELU MLPs): it holds `mlp.up` alone."""
    return not spec.moe and not spec.gated


def _post_norm(spec: ModelSpec) -> bool:
    return spec.has_post_attn_norm


def _mha(spec: ModelSpec) -> bool:
    """q, k, v projections fused in linear_qkv (every attention but latent attention)."""
    return not spec.mla


def _mla_q_down(spec: ModelSpec) -> bool:
    return spec.mla and spec.q_lora_rank > 0


# megatron-core's MLA (`multi_latent_attention.py`, `gpt_layer_specs.py`): the down-projections are
# TELinear `duplicated` under TE (whole on every rank) and ColumnParallelLinear in the local spec (cut,
# the latent gathered before its norm); the up-projections and linear_q_proj are cut by heads (each
# head's rows are contiguous: [nope; rope] for q, [k_nope; v] for kv), linear_proj by its input.
# The latent norms are fused into the up-projections under TE (`layer_norm_weight`), `q_layernorm` /
# `kv_layernorm` in the local spec; the input norm is never fused (`input_layernorm`).
LATENT_DOWN_CUTS = {"te": REPLICATED}
MLA_PARAMS: tuple[Row, ...] = (
    mrow(("attn.q",), {"local": "self_attention.linear_q_proj.weight"}, IDENTITY, COLUMN,
         when=lambda s: s.mla and not s.q_lora_rank),
    mrow(("attn.q_down",), {"local": "self_attention.linear_q_down_proj.weight"}, IDENTITY, COLUMN, when=_mla_q_down,
         shards=LATENT_DOWN_CUTS),
    mrow(("attn.q_down_norm",), {"local": "self_attention.q_layernorm.weight",
                                  "te": "self_attention.linear_q_up_proj.layer_norm_weight"}, when=_mla_q_down),
    mrow(("attn.q_up",), {"local": "self_attention.linear_q_up_proj.weight"}, IDENTITY, COLUMN, when=_mla_q_down),
    mrow(("attn.kv_down",), {"local": "self_attention.linear_kv_down_proj.weight"}, IDENTITY, COLUMN,
         when=lambda s: s.mla, shards=LATENT_DOWN_CUTS),
    mrow(("attn.kv_down_norm",), {"local": "self_attention.kv_layernorm.weight",
                                   "te": "self_attention.linear_kv_up_proj.layer_norm_weight"}, when=lambda s: s.mla),
    mrow(("attn.kv_up",), {"local": "self_attention.linear_kv_up_proj.weight"}, IDENTITY, COLUMN, when=lambda s: s.mla),
)


LAYER_PARAMS: tuple[Row, ...] = (
    mrow(("input_norm",), {"local": "input_layernorm.weight", "te": "self_attention.linear_qkv.layer_norm_weight",
                            "legacy": "input_norm.weight", "dist": "self_attention.linear_qkv.layer_norm_weight",
                            "te_mla": "input_layernorm.weight"},
          NORM, REPLICATED, aliases=("input_layernorm.weight",)),
    mrow(("input_norm.bias",), {"local": "input_layernorm.bias", "te": "self_attention.linear_qkv.layer_norm_bias",
                                 "legacy": "input_norm.bias", "dist": "self_attention.linear_qkv.layer_norm_bias"},
          IDENTITY, REPLICATED, when=_norm_bias, aliases=("input_layernorm.bias",)),
    mrow(("attn.q", "attn.k", "attn.v"), {"local": "self_attention.linear_qkv.weight",
                                           "legacy": "self_attention.query_key_value.weight"},
          QKV, QKV_CUT, when=_mha, aliases=("attention.query_key_value.weight",)),
    *MLA_PARAMS,
    mrow(("attn.q.bias", "attn.k.bias", "attn.v.bias"), {"local": "self_attention.linear_qkv.bias",
                                                          "legacy": "self_attention.query_key_value.bias"},
          QKV, QKV_CUT, when=lambda s: s.qkv_bias, aliases=("attention.query_key_value.bias",)),
    mrow(("attn.sinks",), {"local": "self_attention.core_attention.softmax_offset"}, IDENTITY, COLUMN,  # per local head
         when=lambda s: s.attn_sinks),
    mrow(("attn.q_norm",), {"local": "self_attention.q_layernorm.weight"}, IDENTITY, REPLICATED, when=lambda s: s.qk_norm),
    mrow(("attn.k_norm",), {"local": "self_attention.k_layernorm.weight"}, IDENTITY, REPLICATED, when=lambda s: s.qk_norm),
    mrow(("attn.o",), {"local": "self_attention.linear_proj.weight", "legacy": "self_attention.dense.weight"},
          IDENTITY, ROW, aliases=("attention.dense.weight",)),
    mrow(("attn.o.bias",), {"local": "self_attention.linear_proj.bias", "legacy": "self_attention.dense.bias"},
          IDENTITY, REPLICATED, when=lambda s: s.o_bias, aliases=("attention.dense.bias",)),
    mrow(("post_attn_norm",), {"local": "pre_mlp_layernorm.weight", "te": "mlp.linear_fc1.layer_norm_weight",
                                "te_moe": "pre_mlp_layernorm.weight", "legacy": "post_attention_norm.weight",
                                "dist": "mlp.linear_fc1.layer_norm_weight"},
          NORM, REPLICATED, when=_post_norm, aliases=("post_attention_layernorm.weight", "mlp_layernorm.weight")),
    mrow(("post_attn_norm.bias",), {"local": "pre_mlp_layernorm.bias", "te": "mlp.linear_fc1.layer_norm_bias",
                                     "te_moe": "pre_mlp_layernorm.bias", "legacy": "post_attention_norm.bias",
                                     "dist": "mlp.linear_fc1.layer_norm_bias"},
          IDENTITY, REPLICATED, when=lambda s: _norm_bias(s) and _post_norm(s),
          aliases=("post_attention_layernorm.bias", "mlp_layernorm.bias")),
    mrow(("mlp.gate", "mlp.up"), {"local": "mlp.linear_fc1.weight", "legacy": "mlp.dense_h_to_4h.weight"},
          SWIGLU, GATE_UP, when=_gated),
    mrow(("mlp.gate.bias", "mlp.up.bias"), {"local": "mlp.linear_fc1.bias", "legacy": "mlp.dense_h_to_4h.bias"},
          SWIGLU, GATE_UP, when=lambda s: _gated(s) and s.mlp_bias),
    mrow(("mlp.up",), {"local": "mlp.linear_fc1.weight", "legacy": "mlp.dense_h_to_4h.weight"}, IDENTITY, COLUMN, when=_ungated),
    mrow(("mlp.up.bias",), {"local": "mlp.linear_fc1.bias", "legacy": "mlp.dense_h_to_4h.bias"},
          IDENTITY, COLUMN, when=lambda s: _ungated(s) and s.mlp_bias),
    # swiss-ai fork: xIELU is the MLP's `activation_func` module; its two scalars are replicated
    mrow(("mlp.act.alpha_p",), {"local": "mlp.activation_func.alpha_p"}, IDENTITY, REPLICATED, when=lambda s: s.activation == "xielu"),
    mrow(("mlp.act.alpha_n",), {"local": "mlp.activation_func.alpha_n"}, IDENTITY, REPLICATED, when=lambda s: s.activation == "xielu"),
    mrow(("mlp.down",), {"local": "mlp.linear_fc2.weight", "legacy": "mlp.dense_4h_to_h.weight"}, IDENTITY, ROW, when=_dense),
    mrow(("mlp.down.bias",), {"local": "mlp.linear_fc2.bias", "legacy": "mlp.dense_4h_to_h.bias"},
          IDENTITY, REPLICATED, when=lambda s: _dense(s) and s.mlp_bias),
    mrow(("router",), {"local": "mlp.router.weight"}, IDENTITY, REPLICATED, when=lambda s: s.moe),
    mrow(("router.bias",), {"local": "mlp.router.bias"}, IDENTITY, REPLICATED, when=lambda s: s.moe and s.router_bias),
    # megatron-core's `moe_router_enable_expert_bias` buffer (fp32), added to the sigmoid scores for the choice only
    mrow(("router.score_bias",), {"local": "mlp.router.expert_bias"}, IDENTITY, REPLICATED,
         when=lambda s: s.moe and s.router_score_bias),
    mrow(("shared.gate", "shared.up"), {"local": "mlp.shared_experts.linear_fc1.weight"}, SWIGLU, GATE_UP,
          when=lambda s: s.moe and s.shared_expert_ffn > 0),
    mrow(("shared.down",), {"local": "mlp.shared_experts.linear_fc2.weight"}, IDENTITY, ROW, when=lambda s: s.moe and s.shared_expert_ffn > 0),
    mrow(("shared_gate",), {"local": "mlp.shared_experts.gate_weight"}, IDENTITY, REPLICATED,
          when=lambda s: s.moe and s.shared_expert_ffn > 0 and s.shared_expert_gate),
    mrow(("experts.{e}.gate", "experts.{e}.up"),
          {"local": "mlp.experts.local_experts.{e}.linear_fc1.weight", "dist": "mlp.experts.experts.linear_fc1.weight",
           "legacy": "mlp.local_experts.{e}.dense_h_to_4h.weight"},
          SWIGLU, GATE_UP, when=lambda s: s.moe, aliases=("mlp.experts.linear_fc1.weight{e}",)),
    mrow(("experts.{e}.down",),
          {"local": "mlp.experts.local_experts.{e}.linear_fc2.weight", "dist": "mlp.experts.experts.linear_fc2.weight",
           "legacy": "mlp.local_experts.{e}.dense_4h_to_h.weight"},
          IDENTITY, ROW, when=lambda s: s.moe, aliases=("mlp.experts.linear_fc2.weight{e}",)),
    mrow(("experts.{e}.gate.bias", "experts.{e}.up.bias"),
         {"local": "mlp.experts.local_experts.{e}.linear_fc1.bias", "dist": "mlp.experts.experts.linear_fc1.bias",
          "legacy": "mlp.local_experts.{e}.dense_h_to_4h.bias"},
         SWIGLU, GATE_UP, when=lambda s: s.moe and s.expert_bias, aliases=("mlp.experts.linear_fc1.bias{e}",)),
    mrow(("experts.{e}.down.bias",),
         {"local": "mlp.experts.local_experts.{e}.linear_fc2.bias", "dist": "mlp.experts.experts.linear_fc2.bias",
          "legacy": "mlp.local_experts.{e}.dense_4h_to_h.bias"},
         IDENTITY, REPLICATED, when=lambda s: s.moe and s.expert_bias, aliases=("mlp.experts.linear_fc2.bias{e}",)),
)

# Model-level parameters; `stage` says which pipeline stage holds them.
# Learned positions are replicated over TP (Megatron's `position_embeddings`); the embedding
# LayerNorm uses bigscience Megatron-DeepSpeed's spelling (`word_embeddings.norm`) under each prefix.
GLOBAL_PARAMS: tuple[tuple[Row, str], ...] = (
    (mrow(("embed",), {"local": "embedding.word_embeddings.weight", "legacy": "language_model.embedding.word_embeddings.weight"},
           VOCAB, COLUMN), "first"),
    (mrow(("pos_embed",), {"local": "embedding.position_embeddings.weight",
                            "legacy": "language_model.embedding.position_embeddings.weight"},
           IDENTITY, REPLICATED, when=lambda s: s.position == "learned"), "first"),
    (mrow(("embed_norm",), {"local": "embedding.word_embeddings.norm.weight",
                             "legacy": "language_model.embedding.word_embeddings.norm.weight"},
           NORM, REPLICATED, when=lambda s: s.embed_norm), "first"),
    (mrow(("embed_norm.bias",), {"local": "embedding.word_embeddings.norm.bias",
                                  "legacy": "language_model.embedding.word_embeddings.norm.bias"},
           IDENTITY, REPLICATED, when=lambda s: s.embed_norm and s.norm_bias), "first"),
    (mrow(("final_norm",), {"local": "decoder.final_layernorm.weight", "legacy": "language_model.encoder.final_norm.weight"},
           NORM, REPLICATED, aliases=("language_model.encoder.final_layernorm.weight",)), "last"),
    (mrow(("final_norm.bias",), {"local": "decoder.final_layernorm.bias", "legacy": "language_model.encoder.final_norm.bias"},
           IDENTITY, REPLICATED, when=_norm_bias, aliases=("language_model.encoder.final_layernorm.bias",)), "last"),
    (mrow(("lm_head",), {"local": "output_layer.weight", "legacy": "language_model.output_layer.weight"},
           VOCAB, COLUMN, when=lambda s: not s.tied), "last"),
)

# With tied embeddings and PP > 1 the last stage stores its own synced copy of the embedding.
TIED_HEAD_COPY = {"local": "output_layer.weight", "legacy": "word_embeddings_for_head.weight", "dist": "output_layer.weight"}

LAYER_PREFIX = {"local": "decoder.layers.{i}.", "te": "decoder.layers.{i}.", "legacy": "language_model.encoder.layers.{i}.",
                "dist": "decoder.layers.{i}."}

# megatron-core's multi-token prediction (`multi_token_prediction.py`): module k is `mtp.layers.{k}.` with
# its norms, eh_proj (a ColumnParallelLinear over [embedding; hidden]: rows cut over TP), final_layernorm and
# one transformer layer of the last decoder layer's spec (`mtp_model_layer.`; `transformer_layer.` before
# megatron-core 0.16). Embedding and output layer are the model's own (shared): on the last PP stage the
# `torch` format stores a copy of the embedding (`embedding.word_embeddings.weight`), torch_dist one key.
MTP_PREFIX = "mtp.layers.{k}."
MTP_LAYER = "mtp_model_layer."
MTP_LAYER_ALIASES = ("transformer_layer.",)
MTP_PARAMS: tuple[Row, ...] = (
    mrow(("enorm",), {"local": "enorm.weight"}, NORM),
    mrow(("hnorm",), {"local": "hnorm.weight"}, NORM),
    mrow(("eh_proj",), {"local": "eh_proj.weight"}, IDENTITY, COLUMN),
    mrow(("final_norm",), {"local": "final_layernorm.weight"}, NORM),
)

# Stored entries that carry no weights and are dropped by rule (the plan lists them as ignored).
IGNORED_PATTERNS = (
    r"(^|\.)_extra_state($|/)",
    r"(^|\.)inv_freq$",
    r"^optimizer\.",
    r"^rng_state",
    r"^rerun_state_machine",
    r"^opt_param_scheduler",
    r"^lr_scheduler",
)


def layer_params(spec: ModelSpec, variant: str = "local") -> list[Row]:
    """The rows of one layer (`spec.layer_spec(i)`: a dense layer of a MoE model has no expert rows),
    each with the TP cut of the naming variant."""
    return [p.for_variant(variant) for p in LAYER_PARAMS if p.when(spec)]


def global_params(spec: ModelSpec) -> list[tuple[Row, str]]:
    return [(p, stage) for p, stage in GLOBAL_PARAMS if p.when(spec)]
