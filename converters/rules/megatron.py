"""Megatron parameter table: one row per stored parameter, for every naming variant.

Variants: `local` (Megatron-Core local spec), `te` (Transformer-Engine spec: norms fused into
the next linear), `legacy` (pre-mcore nested `language_model`, flattened), `dist` (torch_dist keys:
local and TE specs share them). epfLLM Megatron-LLM checkpoints have their own table
(`rules/megatron_llm.py`: other names, `[up; gate]` SwiGLU) built from the same `Param` rows. Each row says which canonical tensors it holds (`canon`,
relative to `layers.{i}.` for layer rows), how tensor parallelism splits it (`split`) and how the
canonical tensors are packed into it (`pack`). Readers and writers both walk this table, so a
name is never mapped in one direction only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..spec import ModelSpec


class Split(Enum):
    COLUMN = "column"  # output rows split over TP (dim 0)
    ROW = "row"  # input columns split over TP (dim 1)
    REPLICATED = "replicated"  # every TP rank holds it whole
    VOCAB = "vocab"  # rows = padded vocabulary, split over TP (dim 0)


class Pack(Enum):
    NONE = "none"
    QKV = "qkv"  # q, k, v fused per query group
    SWIGLU = "swiglu"  # gate, up: per-rank [gate_r; up_r] (torch) / [gate; up] (dist)
    NORM = "norm"  # norm weight: stored as gamma - 1 under layernorm-1p


def _always(spec: ModelSpec) -> bool:
    return True


@dataclass(frozen=True)
class Param:
    canon: tuple[str, ...]
    names: dict[str, str]  # variant -> name ("local" is the fallback); may contain {e}
    split: Split
    pack: Pack = Pack.NONE
    when: Callable[[ModelSpec], bool] = _always
    expert: bool = False  # per-expert row: {e} in names and canon
    aliases: tuple[str, ...] = field(default=())  # other spellings accepted on read

    def name(self, variant: str, spec: ModelSpec) -> str:
        if spec.moe and f"{variant}_moe" in self.names:
            return self.names[f"{variant}_moe"]
        return self.names.get(variant, self.names["local"])

    def read_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.names.values(), *self.aliases)))


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


LAYER_PARAMS: tuple[Param, ...] = (
    Param(("input_norm",), {"local": "input_layernorm.weight", "te": "self_attention.linear_qkv.layer_norm_weight",
                            "legacy": "input_norm.weight", "dist": "self_attention.linear_qkv.layer_norm_weight"},
          Split.REPLICATED, Pack.NORM, aliases=("input_layernorm.weight",)),
    Param(("input_norm.bias",), {"local": "input_layernorm.bias", "te": "self_attention.linear_qkv.layer_norm_bias",
                                 "legacy": "input_norm.bias", "dist": "self_attention.linear_qkv.layer_norm_bias"},
          Split.REPLICATED, when=_norm_bias, aliases=("input_layernorm.bias",)),
    Param(("attn.q", "attn.k", "attn.v"), {"local": "self_attention.linear_qkv.weight",
                                           "legacy": "self_attention.query_key_value.weight"},
          Split.COLUMN, Pack.QKV, aliases=("attention.query_key_value.weight",)),
    Param(("attn.q.bias", "attn.k.bias", "attn.v.bias"), {"local": "self_attention.linear_qkv.bias",
                                                          "legacy": "self_attention.query_key_value.bias"},
          Split.COLUMN, Pack.QKV, when=lambda s: s.qkv_bias, aliases=("attention.query_key_value.bias",)),
    Param(("attn.q_norm",), {"local": "self_attention.q_layernorm.weight"}, Split.REPLICATED, when=lambda s: s.qk_norm),
    Param(("attn.k_norm",), {"local": "self_attention.k_layernorm.weight"}, Split.REPLICATED, when=lambda s: s.qk_norm),
    Param(("attn.o",), {"local": "self_attention.linear_proj.weight", "legacy": "self_attention.dense.weight"},
          Split.ROW, aliases=("attention.dense.weight",)),
    Param(("attn.o.bias",), {"local": "self_attention.linear_proj.bias", "legacy": "self_attention.dense.bias"},
          Split.REPLICATED, when=lambda s: s.o_bias, aliases=("attention.dense.bias",)),
    Param(("post_attn_norm",), {"local": "pre_mlp_layernorm.weight", "te": "mlp.linear_fc1.layer_norm_weight",
                                "te_moe": "pre_mlp_layernorm.weight", "legacy": "post_attention_norm.weight",
                                "dist": "mlp.linear_fc1.layer_norm_weight"},
          Split.REPLICATED, Pack.NORM, when=_post_norm, aliases=("post_attention_layernorm.weight", "mlp_layernorm.weight")),
    Param(("post_attn_norm.bias",), {"local": "pre_mlp_layernorm.bias", "te": "mlp.linear_fc1.layer_norm_bias",
                                     "te_moe": "pre_mlp_layernorm.bias", "legacy": "post_attention_norm.bias",
                                     "dist": "mlp.linear_fc1.layer_norm_bias"},
          Split.REPLICATED, when=lambda s: _norm_bias(s) and _post_norm(s),
          aliases=("post_attention_layernorm.bias", "mlp_layernorm.bias")),
    Param(("mlp.gate", "mlp.up"), {"local": "mlp.linear_fc1.weight", "legacy": "mlp.dense_h_to_4h.weight"},
          Split.COLUMN, Pack.SWIGLU, when=_gated),
    Param(("mlp.gate.bias", "mlp.up.bias"), {"local": "mlp.linear_fc1.bias", "legacy": "mlp.dense_h_to_4h.bias"},
          Split.COLUMN, Pack.SWIGLU, when=lambda s: _gated(s) and s.mlp_bias),
    Param(("mlp.up",), {"local": "mlp.linear_fc1.weight", "legacy": "mlp.dense_h_to_4h.weight"}, Split.COLUMN, when=_ungated),
    Param(("mlp.up.bias",), {"local": "mlp.linear_fc1.bias", "legacy": "mlp.dense_h_to_4h.bias"},
          Split.COLUMN, when=lambda s: _ungated(s) and s.mlp_bias),
    # swiss-ai fork: xIELU is the MLP's `activation_func` module; its two scalars are replicated
    Param(("mlp.act.alpha_p",), {"local": "mlp.activation_func.alpha_p"}, Split.REPLICATED, when=lambda s: s.activation == "xielu"),
    Param(("mlp.act.alpha_n",), {"local": "mlp.activation_func.alpha_n"}, Split.REPLICATED, when=lambda s: s.activation == "xielu"),
    Param(("mlp.down",), {"local": "mlp.linear_fc2.weight", "legacy": "mlp.dense_4h_to_h.weight"}, Split.ROW, when=_dense),
    Param(("mlp.down.bias",), {"local": "mlp.linear_fc2.bias", "legacy": "mlp.dense_4h_to_h.bias"},
          Split.REPLICATED, when=lambda s: _dense(s) and s.mlp_bias),
    Param(("router",), {"local": "mlp.router.weight"}, Split.REPLICATED, when=lambda s: s.moe),
    Param(("shared.gate", "shared.up"), {"local": "mlp.shared_experts.linear_fc1.weight"}, Split.COLUMN, Pack.SWIGLU,
          when=lambda s: s.moe and s.shared_expert_ffn > 0),
    Param(("shared.down",), {"local": "mlp.shared_experts.linear_fc2.weight"}, Split.ROW, when=lambda s: s.moe and s.shared_expert_ffn > 0),
    Param(("shared_gate",), {"local": "mlp.shared_experts.gate_weight"}, Split.REPLICATED,
          when=lambda s: s.moe and s.shared_expert_ffn > 0 and s.shared_expert_gate),
    Param(("experts.{e}.gate", "experts.{e}.up"),
          {"local": "mlp.experts.local_experts.{e}.linear_fc1.weight", "dist": "mlp.experts.experts.linear_fc1.weight",
           "legacy": "mlp.local_experts.{e}.dense_h_to_4h.weight"},
          Split.COLUMN, Pack.SWIGLU, when=lambda s: s.moe, expert=True, aliases=("mlp.experts.linear_fc1.weight{e}",)),
    Param(("experts.{e}.down",),
          {"local": "mlp.experts.local_experts.{e}.linear_fc2.weight", "dist": "mlp.experts.experts.linear_fc2.weight",
           "legacy": "mlp.local_experts.{e}.dense_4h_to_h.weight"},
          Split.ROW, when=lambda s: s.moe, expert=True, aliases=("mlp.experts.linear_fc2.weight{e}",)),
)

# Model-level parameters; `stage` says which pipeline stage holds them.
# Learned positions are replicated over TP (Megatron's `position_embeddings`); the embedding
# LayerNorm uses bigscience Megatron-DeepSpeed's spelling (`word_embeddings.norm`) under each prefix.
GLOBAL_PARAMS: tuple[tuple[Param, str], ...] = (
    (Param(("embed",), {"local": "embedding.word_embeddings.weight", "legacy": "language_model.embedding.word_embeddings.weight"},
           Split.VOCAB), "first"),
    (Param(("pos_embed",), {"local": "embedding.position_embeddings.weight",
                            "legacy": "language_model.embedding.position_embeddings.weight"},
           Split.REPLICATED, when=lambda s: s.position == "learned"), "first"),
    (Param(("embed_norm",), {"local": "embedding.word_embeddings.norm.weight",
                             "legacy": "language_model.embedding.word_embeddings.norm.weight"},
           Split.REPLICATED, Pack.NORM, when=lambda s: s.embed_norm), "first"),
    (Param(("embed_norm.bias",), {"local": "embedding.word_embeddings.norm.bias",
                                  "legacy": "language_model.embedding.word_embeddings.norm.bias"},
           Split.REPLICATED, when=lambda s: s.embed_norm and s.norm_bias), "first"),
    (Param(("final_norm",), {"local": "decoder.final_layernorm.weight", "legacy": "language_model.encoder.final_norm.weight"},
           Split.REPLICATED, Pack.NORM, aliases=("language_model.encoder.final_layernorm.weight",)), "last"),
    (Param(("final_norm.bias",), {"local": "decoder.final_layernorm.bias", "legacy": "language_model.encoder.final_norm.bias"},
           Split.REPLICATED, when=_norm_bias, aliases=("language_model.encoder.final_layernorm.bias",)), "last"),
    (Param(("lm_head",), {"local": "output_layer.weight", "legacy": "language_model.output_layer.weight"},
           Split.VOCAB, when=lambda s: not s.tied), "last"),
)

# With tied embeddings and PP > 1 the last stage stores its own synced copy of the embedding.
TIED_HEAD_COPY = {"local": "output_layer.weight", "legacy": "word_embeddings_for_head.weight", "dist": "output_layer.weight"}

LAYER_PREFIX = {"local": "decoder.layers.{i}.", "te": "decoder.layers.{i}.", "legacy": "language_model.encoder.layers.{i}.",
                "dist": "decoder.layers.{i}."}

# Stored entries that carry no weights and are dropped by rule (the plan lists them as ignored).
IGNORED_PATTERNS = (
    r"(^|\.)_extra_state($|/)",
    r"(^|\.)inv_freq$",
    r"^optimizer\.",
    r"^rng_state",
    r"^rerun_state_machine",
    r"^opt_param_scheduler",
    r"^lr_scheduler",
    r"(^|\.)expert_bias$",
)


def layer_params(spec: ModelSpec) -> list[Param]:
    return [p for p in LAYER_PARAMS if p.when(spec)]


def global_params(spec: ModelSpec) -> list[tuple[Param, str]]:
    return [(p, stage) for p, stage in GLOBAL_PARAMS if p.when(spec)]
