"""epfLLM Megatron-LLM parameter table: its own names and its `[up; gate]` SwiGLU order.

Megatron-LLM (github.com/epfLLM/Megatron-LLM) is a fork of pre-mcore Megatron-LM, so its rows
are the same `Row`s as `rules/megatron.py`'s, with the same ops and TP cuts, read and written by
the same `row.gather` / `row.scatter`. What differs is data, kept here:

- Names. Checkpoints its trainer and `tools/checkpoint_util.py` save (variant `megatron-llm`)
  nest the model as `language_model.{embedding, encoder, lm_head}` with `self_attention`;
  `weights_conversion/hf_to_megatron.py` (variant `megatron-llm-release`, TP=PP=1) writes
  `language_model.{embedding, transformer, lm_head}` with `attention`. Both are read; the
  writer produces the first. The untied head is a bare tensor `language_model.lm_head`
  (split over TP by vocab rows); Falcon's second parallel norm is `mlp_layernorm`.
- SwiGLU order. Its GLU (`glu_activations.py`, from bigscience Megatron-DeepSpeed) computes
  `x1 * silu(x2)` on the two halves of each rank's `dense_h_to_4h` output: the first half is
  UP (not activated), the second GATE, i.e. per rank `[up_r; gate_r]` - the opposite of
  Megatron-LM's `[gate_r; up_r]`. The row lists its canonical tensors as `(mlp.up, mlp.gate)`,
  so the generic per-rank SwiGLU packing puts them in that order; no new op is needed.
- Rotary: q/k rows are stored interleaved (`permute_qkv.py`; RoPE via `view_as_complex`), set
  on the spec by the source (`rotary_interleaved`) and undone by `ops.rotary_to_half`.
- Args: `glu_activation`, `use_rms_norm`, `use_bias` (default False), `tie_embed_logits`,
  `num_attention_heads_kv`, `layernorm_epsilon`, `rope_theta`, `rope_scaling_factor` (linear
  position interpolation), `parallel_attn` / `parallel_layernorm`; see `spec_from_megatron_args`.
"""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec
from ..layouts import IDENTITY, Layout
from ..row import Row
from ..shards import COLUMN, GATE_UP, REPLICATED, ROW, Shard
from .megatron import IGNORED_PATTERNS, NORM, QKV, QKV_CUT, SWIGLU, VOCAB, mrow

ARG_MARKERS = ("tie_embed_logits", "use_rms_norm", "num_attention_heads_kv")  # arg names only Megatron-LLM uses
TRAIN = "megatron-llm"  # trainer / checkpoint_util saves: language_model.encoder, self_attention
RELEASE = "megatron-llm-release"  # hf_to_megatron.py output: language_model.transformer, attention
VARIANTS = (TRAIN, RELEASE)

__all__ = ["ARG_MARKERS", "IGNORED_PATTERNS", "LAYER_PREFIX", "RELEASE", "TIED_HEAD_COPY", "TRAIN", "VARIANTS", "args_from_spec",
           "detect", "global_params", "layer_params", "nest", "problems"]


def _row(canon: tuple[str, ...], train: str, op: Layout = IDENTITY, shard: Shard = REPLICATED, *,
         release: str | None = None, when=None) -> Row:  # type: ignore[no-untyped-def]
    """A Megatron-LLM row; `release` is the hf_to_megatron spelling when it differs."""
    names = {"local": train, TRAIN: train, RELEASE: release or train}
    return mrow(canon, names, op, shard, **({"when": when} if when else {}))


def _attn(rel: str) -> dict[str, str]:
    return {"train": f"self_attention.{rel}", "release": f"attention.{rel}"}


def _sequential(s: ModelSpec) -> bool:
    return not s.parallel_attn


def _mlp_norm(s: ModelSpec) -> bool:
    """Falcon-40B style: the MLP branch has its own norm (`--parallel_layernorm`)."""
    return s.parallel_attn and s.parallel_norms == 2


def _row_attn(canon: tuple[str, ...], rel: str, op: Layout = IDENTITY, shard: Shard = REPLICATED, when=None) -> Row:  # type: ignore[no-untyped-def]
    n = _attn(rel)
    return _row(canon, n["train"], op, shard, release=n["release"], when=when)


LAYER_PARAMS: tuple[Row, ...] = (
    _row(("input_norm",), "input_layernorm.weight", NORM, REPLICATED),
    _row(("input_norm.bias",), "input_layernorm.bias", IDENTITY, REPLICATED, when=lambda s: s.norm_bias),
    _row_attn(("attn.q", "attn.k", "attn.v"), "query_key_value.weight", QKV, QKV_CUT),
    _row_attn(("attn.q.bias", "attn.k.bias", "attn.v.bias"), "query_key_value.bias", QKV, QKV_CUT,
              when=lambda s: s.qkv_bias),
    _row_attn(("attn.o",), "dense.weight", IDENTITY, ROW),
    _row_attn(("attn.o.bias",), "dense.bias", IDENTITY, REPLICATED, when=lambda s: s.o_bias),
    _row(("post_attn_norm",), "post_attention_layernorm.weight", NORM, REPLICATED, when=_sequential),
    _row(("post_attn_norm.bias",), "post_attention_layernorm.bias", IDENTITY, REPLICATED,
         when=lambda s: _sequential(s) and s.norm_bias),
    _row(("post_attn_norm",), "mlp_layernorm.weight", NORM, REPLICATED, when=_mlp_norm),
    _row(("post_attn_norm.bias",), "mlp_layernorm.bias", IDENTITY, REPLICATED, when=lambda s: _mlp_norm(s) and s.norm_bias),
    # [up_r; gate_r] per rank: UP first (see the module docstring)
    _row(("mlp.up", "mlp.gate"), "mlp.dense_h_to_4h.weight", SWIGLU, GATE_UP, when=lambda s: s.gated),
    _row(("mlp.up.bias", "mlp.gate.bias"), "mlp.dense_h_to_4h.bias", SWIGLU, GATE_UP,
         when=lambda s: s.gated and s.mlp_bias),
    _row(("mlp.up",), "mlp.dense_h_to_4h.weight", IDENTITY, COLUMN, when=lambda s: not s.gated),
    _row(("mlp.up.bias",), "mlp.dense_h_to_4h.bias", IDENTITY, COLUMN, when=lambda s: not s.gated and s.mlp_bias),
    _row(("mlp.down",), "mlp.dense_4h_to_h.weight", IDENTITY, ROW),
    _row(("mlp.down.bias",), "mlp.dense_4h_to_h.bias", IDENTITY, REPLICATED, when=lambda s: s.mlp_bias),
)

GLOBAL_PARAMS: tuple[tuple[Row, str], ...] = (
    (_row(("embed",), "language_model.embedding.word_embeddings.weight", VOCAB, COLUMN), "first"),
    (_row(("pos_embed",), "language_model.embedding.position_embeddings.weight", IDENTITY, REPLICATED,
          when=lambda s: s.position == "learned"), "first"),
    (_row(("final_norm",), "language_model.encoder.final_layernorm.weight", NORM, REPLICATED,
          release="language_model.transformer.final_layernorm.weight"), "last"),
    (_row(("final_norm.bias",), "language_model.encoder.final_layernorm.bias", IDENTITY, REPLICATED,
          release="language_model.transformer.final_layernorm.bias", when=lambda s: s.norm_bias), "last"),
    (_row(("lm_head",), "language_model.lm_head", VOCAB, COLUMN, when=lambda s: not s.tied), "last"),
)

# Tied embeddings with PP > 1: GPTModel saves the last stage's copy as `word_embeddings_for_head`.
TIED_HEAD_COPY = {TRAIN: "word_embeddings_for_head.weight", RELEASE: "word_embeddings_for_head.weight"}

LAYER_PREFIX = {TRAIN: "language_model.encoder.layers.{i}.", RELEASE: "language_model.transformer.layers.{i}."}


def layer_params(spec: ModelSpec, variant: str = "") -> list[Row]:
    return [p for p in LAYER_PARAMS if p.when(spec)]


def global_params(spec: ModelSpec) -> list[tuple[Row, str]]:
    return [(p, stage) for p, stage in GLOBAL_PARAMS if p.when(spec)]


def detect(names: list[str], args: dict[str, Any] | None) -> str | None:
    """The Megatron-LLM variant of a `torch` checkpoint, or None. Its names alone tell for the
    release layout (`language_model.transformer.`) and an untied head (`language_model.lm_head`);
    a tied model under `language_model.encoder` is Megatron-LLM when its args hold the fork's own
    names (`tie_embed_logits`, `use_rms_norm`, `num_attention_heads_kv`; not `glu_activation`,
    which bigscience Megatron-DeepSpeed has too, with other layouts)."""
    if any(n.startswith("language_model.transformer.") for n in names):
        return RELEASE
    if "language_model.lm_head" in names:
        return TRAIN
    if any(n.startswith("language_model.") for n in names) and any(k in (args or {}) for k in ARG_MARKERS):
        return TRAIN
    return None


def problems(spec: ModelSpec, tp: int = 1, *, target: bool = True) -> list[str]:
    """What a Megatron-LLM checkpoint cannot hold (empty when it can). On read (`target=False`)
    only what its table has no rows for; a writer also refuses what its forward cannot run."""
    out = []
    for flag, what in ((spec.moe, "mixture-of-experts"), (spec.qk_norm, "QK-norm"), (spec.layernorm_1p, "layernorm-1p"),
                       (spec.embed_norm, "an embedding layernorm"), (spec.position == "alibi", "ALiBi"),
                       (spec.activation == "xielu", "xIELU"), (spec.attn_sinks, "attention sinks"),
                       (spec.activation == "clamped_swiglu", "clamped SwiGLU")):
        if flag:
            out.append(f"Megatron-LLM has no {what}")
    if not target:
        return out
    if spec.rotary_percent != 1.0:
        out.append("Megatron-LLM has no partial rotary")
    if spec.rope_scaling and spec.rope_scaling.get("rope_type", spec.rope_scaling.get("type")) != "linear":
        out.append("Megatron-LLM only has linear RoPE scaling (rope_scaling_factor)")
    if not (spec.qkv_bias == spec.o_bias == spec.mlp_bias):
        out.append("Megatron-LLM biases are all-or-nothing (use_bias)")
    if spec.kv_heads % tp:
        out.append(f"Megatron-LLM keeps whole query groups per rank: {spec.kv_heads} KV heads do not split over TP={tp}")
    if spec.hidden // spec.heads != spec.head_dim:
        out.append("Megatron-LLM derives the rotary head size from hidden / heads; this model's head_dim differs")
    return out


def args_from_spec(spec: ModelSpec) -> dict[str, Any]:
    """Megatron-LLM's own argument names (added to the Megatron-LM ones the writer also keeps).
    `position_embedding_type` is an enum in Megatron-LLM; it is written as its member name."""
    scaling = spec.rope_scaling or {}
    return {
        "glu_activation": "swiglu" if spec.gated else None,
        "use_rms_norm": spec.norm == "rmsnorm",
        "use_bias": spec.o_bias,
        "tie_embed_logits": spec.tied,
        "num_attention_heads_kv": spec.kv_heads,
        "use_multiquery_attn": spec.kv_heads != spec.heads,
        "layernorm_epsilon": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling_factor": float(scaling.get("factor", 1.0)),
        "position_embedding_type": "rotary" if spec.position == "rope" else "absolute",
        "parallel_attn": spec.parallel_attn,
        "parallel_layernorm": spec.parallel_attn and spec.parallel_norms == 2,
        "use_post_ln": False,
    }


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat rank-file names -> the nested `model` dict Megatron-LLM's `load_state_dict` walks:
    `language_model.{embedding: {word_embeddings: {weight}}, encoder: {layers.N...: t},
    lm_head: t}` and `word_embeddings_for_head: {weight}`."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        head, _, rest = name.partition(".")
        if head != "language_model":  # word_embeddings_for_head.weight
            out.setdefault(head, {})[rest] = value
            continue
        part, _, rel = rest.partition(".")
        if not rel:  # lm_head
            out.setdefault(head, {})[part] = value
        elif part == "embedding":
            module, _, leaf = rel.partition(".")
            out.setdefault(head, {}).setdefault(part, {}).setdefault(module, {})[leaf] = value
        else:  # encoder / transformer: flat names inside
            out.setdefault(head, {}).setdefault(part, {})[rel] = value
    return out


def detect_variant(names: list[str], args: dict | None = None) -> str:
    """Which naming a Megatron `torch` checkpoint uses (from its stored tensor names, and its
    args for a tied epfLLM Megatron-LLM model): `megatron-llm` / `megatron-llm-release` name
    the table in this module; the others are variants of `rules/megatron.py`'s table."""
    found = detect(names, args)
    if found is not None:
        return found
    if any(n.startswith("language_model.") for n in names):
        return "legacy"
    if any(n.endswith((".linear_qkv.layer_norm_weight", ".linear_kv_up_proj.layer_norm_weight")) for n in names):
        return "te"  # norms fused into the next linear (latent attention: its KV latent norm)
    return "local"
