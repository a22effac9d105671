"""The canonical vocabulary: every canonical tensor the converter knows, declared once.

Readers turn stored tensors into these, writers turn these into stored tensors; every format and
family table names its canonical tensors from here (a test checks each row against `declared`).
Like llama.cpp's `MODEL_TENSOR`: no other module spells a canonical name from scratch.

A canonical tensor is full (unsharded) and unfused; its bias, where the model has one, is the
same name plus `.bias`. Norm weights are the true gamma (Megatron's layernorm-1p offset is
undone on read). q/k rows are in rotate-half order. Names are relative to `layers.{i}.` for
layer tensors; `{e}` stands for an expert index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import ModelSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Canonical:
    """One canonical tensor: name pattern, block, shape from the spec, when the model has it."""

    name: str
    block: str  # embedding | attention | mlp | moe | norm | head
    shape: Callable[[ModelSpec], Shape]
    present: Callable[[ModelSpec], bool]
    doc: str
    tp: str = "replicated"  # how tensor parallelism cuts it on its own: column (dim 0) | row (dim 1) | vocab | replicated
    fp32: bool = False  # kept in float32 whatever the target dtype (a buffer the model keeps in fp32)


def _always(s: ModelSpec) -> bool:
    return True


def _h(s: ModelSpec) -> Shape:
    return (s.hidden,)


def _hidden(s: ModelSpec) -> int:
    return s.hidden


def _norm(name: str, when: Callable[[ModelSpec], bool], doc: str) -> tuple[Canonical, Canonical]:
    """A hidden-size norm and its bias (LayerNorm models only)."""
    return (Canonical(name, "norm", _h, when, doc),
            Canonical(name + ".bias", "norm", _h, lambda s: when(s) and s.norm_bias, doc + " (bias)"))


def _expert_ffn(s: ModelSpec) -> int:
    return s.expert_ffn or s.ffn


def _linear(prefix: str, block: str, rows: Callable[[ModelSpec], int], cols: Callable[[ModelSpec], int],
            when: Callable[[ModelSpec], bool], bias: Callable[[ModelSpec], bool] | None, doc: str,
            tp: str = "column") -> tuple[Canonical, ...]:
    """A linear layer and its bias: a column-parallel bias is cut with its rows, a row-parallel one is whole."""
    weight = Canonical(prefix, block, lambda s: (rows(s), cols(s)), when, doc, tp)
    if bias is None:
        return (weight,)
    return weight, Canonical(prefix + ".bias", block, lambda s: (rows(s),), lambda s: when(s) and bias(s), doc + " (bias)",
                             "column" if tp == "column" else "replicated")


def _q_rows(s: ModelSpec) -> int:
    return s.heads * (s.qk_nope_dim + s.head_dim if s.mla else s.head_dim)


def _o_cols(s: ModelSpec) -> int:
    return s.heads * s.v_head_dim if s.mla else _q_rows(s)


def _mla(s: ModelSpec) -> bool:
    return s.mla


def _not_mla(s: ModelSpec) -> bool:
    return not s.mla


def _q_down(s: ModelSpec) -> bool:
    return s.mla and s.q_lora_rank > 0


def _kv_rows(s: ModelSpec) -> int:
    return s.kv_heads * s.head_dim


def _dense(s: ModelSpec) -> bool:
    return not s.moe


def _gated_dense(s: ModelSpec) -> bool:
    return not s.moe and s.gated


def _shared(s: ModelSpec) -> bool:
    return s.moe and s.shared_expert_ffn > 0


def _shared_ffn(s: ModelSpec) -> int:
    return s.shared_expert_ffn


PRE: tuple[Canonical, ...] = (
    Canonical("embed", "embedding", lambda s: (s.vocab, s.hidden), _always, "word embedding [vocab, hidden]", "vocab"),
    Canonical("pos_embed", "embedding", lambda s: (s.max_position_embeddings, s.hidden), lambda s: s.position == "learned",
              "learned absolute positions [max_positions, hidden] (GPT-2)"),
    *_norm("embed_norm", lambda s: s.embed_norm, "LayerNorm right after the word embedding (BLOOM)"),
)

LAYER: tuple[Canonical, ...] = (
    *_norm("input_norm", lambda s: s.pre_norms, "norm before attention (Falcon: before both branches)"),
    *_linear("attn.q", "attention", _q_rows, _hidden, lambda s: not _q_down(s), lambda s: s.qkv_bias,
             "query projection (MLA without a query latent: [heads*(nope+rope), hidden])"),
    *_linear("attn.q_down", "attention", lambda s: s.q_lora_rank, _hidden, _q_down, None,
             "MLA query down-projection to the query latent [q_rank, hidden] (DeepSeek q_a_proj)", "replicated"),
    Canonical("attn.q_down_norm", "attention", lambda s: (s.q_lora_rank,), _q_down, "MLA RMSNorm of the query latent (q_a_layernorm)"),
    *_linear("attn.q_up", "attention", _q_rows, lambda s: s.q_lora_rank, _q_down, None,
             "MLA query up-projection [heads*(nope+rope), q_rank], per head the no-RoPE dims then the RoPE ones (q_b_proj)"),
    *_linear("attn.kv_down", "attention", lambda s: s.kv_lora_rank + s.head_dim, _hidden, _mla, None,
             "MLA KV down-projection: the KV latent then the one RoPE key shared by all heads [kv_rank+rope, hidden] "
             "(kv_a_proj_with_mqa)", "replicated"),
    Canonical("attn.kv_down_norm", "attention", lambda s: (s.kv_lora_rank,), _mla, "MLA RMSNorm of the KV latent (kv_a_layernorm)"),
    *_linear("attn.kv_up", "attention", lambda s: s.heads * (s.qk_nope_dim + s.v_head_dim), lambda s: s.kv_lora_rank, _mla, None,
             "MLA KV up-projection [heads*(nope+v), kv_rank], per head the no-RoPE key dims then the value (kv_b_proj)"),
    *_linear("attn.k", "attention", _kv_rows, _hidden, _not_mla, lambda s: s.qkv_bias, "key projection"),
    *_linear("attn.v", "attention", _kv_rows, _hidden, _not_mla, lambda s: s.qkv_bias, "value projection"),
    *_linear("attn.o", "attention", _hidden, _o_cols, _always, lambda s: s.o_bias, "attention output projection", "row"),
    Canonical("attn.sinks", "attention", lambda s: (s.heads,), lambda s: s.attn_sinks,
              "attention sink logit per head, joins each softmax (gpt-oss)"),
    Canonical("attn.q_norm", "attention", lambda s: (_q_rows(s) if s.qk_norm_full else s.head_dim,),
              lambda s: s.qk_norm, "qk-norm of queries: per head [head_dim], or over all heads [heads*head_dim] (OLMo2)"),
    Canonical("attn.k_norm", "attention", lambda s: (_kv_rows(s) if s.qk_norm_full else s.head_dim,),
              lambda s: s.qk_norm, "qk-norm of keys: per head [head_dim], or over all KV heads (OLMo2)"),
    *_norm("attn_out_norm", lambda s: s.out_norms, "norm of the attention output before the residual add (OLMo2, GLM4)"),
    *_norm("post_attn_norm", lambda s: s.pre_norms and s.has_post_attn_norm,
           "norm before the MLP (HF post_attention_layernorm; Falcon's ln_mlp)"),
    Canonical("mlp.gate", "mlp", lambda s: (s.ffn, s.hidden), _gated_dense, "SwiGLU gate projection", "column"),
    Canonical("mlp.up", "mlp", lambda s: (s.ffn, s.hidden), _dense, "up projection (fc1 of an ungated MLP)", "column"),
    Canonical("mlp.down", "mlp", lambda s: (s.hidden, s.ffn), _dense, "down projection", "row"),
    Canonical("mlp.gate.bias", "mlp", lambda s: (s.ffn,), lambda s: _gated_dense(s) and s.mlp_bias, "SwiGLU gate bias", "column"),
    Canonical("mlp.up.bias", "mlp", lambda s: (s.ffn,), lambda s: _dense(s) and s.mlp_bias, "up projection bias", "column"),
    Canonical("mlp.down.bias", "mlp", lambda s: (s.hidden,), lambda s: _dense(s) and s.mlp_bias, "down projection bias"),
    Canonical("mlp.act.alpha_p", "mlp", lambda s: (1,), lambda s: not s.moe and s.activation == "xielu",
              "xIELU positive slope, softplus-inverse (Apertus)"),
    Canonical("mlp.act.alpha_n", "mlp", lambda s: (1,), lambda s: not s.moe and s.activation == "xielu",
              "xIELU negative slope, softplus-inverse (Apertus)"),
    Canonical("router", "moe", lambda s: (s.experts, s.hidden), lambda s: s.moe, "router logits [experts, hidden]"),
    Canonical("router.bias", "moe", lambda s: (s.experts,), lambda s: s.moe and s.router_bias, "router logit bias (gpt-oss)"),
    Canonical("router.score_bias", "moe", lambda s: (s.experts,), lambda s: s.moe and s.router_score_bias,
              "expert score-correction bias, added to the router scores for the choice of experts only, not their weights "
              "(a buffer, not a parameter: DeepSeek-V3's e_score_correction_bias, megatron-core's expert_bias)", fp32=True),
    Canonical("experts.{e}.gate", "moe", lambda s: (_expert_ffn(s), s.hidden), lambda s: s.moe, "expert gate projection", "column"),
    Canonical("experts.{e}.up", "moe", lambda s: (_expert_ffn(s), s.hidden), lambda s: s.moe, "expert up projection", "column"),
    Canonical("experts.{e}.down", "moe", lambda s: (s.hidden, _expert_ffn(s)), lambda s: s.moe, "expert down projection", "row"),
    Canonical("experts.{e}.gate.bias", "moe", lambda s: (_expert_ffn(s),), lambda s: s.moe and s.expert_bias,
              "expert gate bias (gpt-oss)", "column"),
    Canonical("experts.{e}.up.bias", "moe", lambda s: (_expert_ffn(s),), lambda s: s.moe and s.expert_bias, "expert up bias", "column"),
    Canonical("experts.{e}.down.bias", "moe", lambda s: (s.hidden,), lambda s: s.moe and s.expert_bias, "expert down bias"),
    *_linear("shared.gate", "moe", _shared_ffn, _hidden, _shared, None, "shared expert gate projection (Qwen2-MoE)"),
    *_linear("shared.up", "moe", _shared_ffn, _hidden, _shared, None, "shared expert up projection"),
    *_linear("shared.down", "moe", _hidden, _shared_ffn, _shared, None, "shared expert down projection", "row"),
    Canonical("shared_gate", "moe", lambda s: (1, s.hidden), lambda s: _shared(s) and s.shared_expert_gate,
              "sigmoid gate scaling the shared expert's output [1, hidden]"),
    *_norm("mlp_out_norm", lambda s: s.out_norms, "norm of the MLP output before the residual add (OLMo2, GLM4)"),
)

POST: tuple[Canonical, ...] = (
    *_norm("final_norm", _always, "final norm"),
    Canonical("lm_head", "head", lambda s: (s.vocab, s.hidden), lambda s: not s.tied, "output head (absent when tied)", "vocab"),
)

# A multi-token-prediction module k (DeepSeek-V3) is `mtp.{k}.` + its own tensors below, one layer's
# tensors (`LAYER`) and the embedding, final norm and head it applies: `embed` / `lm_head` are copies
# of the model's own in HF files, shared (stored once) in megatron-core.
MTP: tuple[Canonical, ...] = (
    Canonical("enorm", "norm", _h, lambda s: s.mtp > 0, "MTP norm of the next token's embedding"),
    Canonical("hnorm", "norm", _h, lambda s: s.mtp > 0, "MTP norm of the previous depth's hidden state"),
    Canonical("eh_proj", "mlp", lambda s: (s.hidden, 2 * s.hidden), lambda s: s.mtp > 0,
              "MTP projection of [enorm(embedding); hnorm(hidden)] back to hidden [hidden, 2*hidden]", "column"),
)
MTP_SHARED = ("embed", "lm_head")  # an MTP module's copies of the model's own tensors

declared: dict[str, Canonical] = {c.name: c for c in (*PRE, *LAYER, *POST, *MTP)}


def layer_shapes(spec: ModelSpec, i: int) -> dict[str, Shape]:
    """Every canonical tensor of layer i with its full shape, in model order."""
    out: dict[str, Shape] = {}
    prefix = f"layers.{i}."
    spec = spec.layer_spec(i)  # a dense layer of a MoE model has no experts
    experts: list[Canonical] = []  # consecutive per-expert tensors, expanded expert-major

    def flush() -> None:
        for e in range(spec.experts):
            out.update({prefix + c.name.format(e=e): c.shape(spec) for c in experts})
        experts.clear()

    for c in LAYER:
        if not c.present(spec):
            continue
        if "{e}" in c.name:
            experts.append(c)
            continue
        flush()
        out[prefix + c.name] = c.shape(spec)
    flush()
    return out


def mtp_shapes(spec: ModelSpec, k: int) -> dict[str, Shape]:
    """Every canonical tensor of MTP module k: its embedding copy, norms and projection, its layer,
    its final norm and head copy."""
    prefix = f"mtp.{k}."
    out = {prefix + "embed": (spec.vocab, spec.hidden)}
    out.update({prefix + c.name: c.shape(spec) for c in MTP})
    out.update({prefix + n.removeprefix(f"layers.{spec.layers}."): shape
                for n, shape in layer_shapes(spec, spec.layers).items()})  # numbered after the last layer, as in HF
    out.update({prefix + c.name: c.shape(spec) for c in POST if c.present(spec)})
    return out


def model_shapes(spec: ModelSpec) -> dict[str, Shape]:
    """Every canonical tensor of the model with its full shape, in model order."""
    out = {c.name: c.shape(spec) for c in PRE if c.present(spec)}
    for i in range(spec.layers):
        out.update(layer_shapes(spec, i))
    out.update({c.name: c.shape(spec) for c in POST if c.present(spec)})
    for k in range(spec.mtp):
        out.update(mtp_shapes(spec, k))
    return out


def pattern_of(canonical: str) -> str:
    """The vocabulary pattern of a concrete canonical name (`layers.3.experts.7.up` -> `experts.{e}.up`)."""
    parts = canonical.split(".")
    if parts[0] in ("layers", "mtp"):
        parts = parts[2:]
    if len(parts) > 1 and parts[0] == "experts":
        parts[1] = "{e}"
    return ".".join(parts)


def kept_fp32(canonical: str) -> bool:
    """Written in float32 whatever the target dtype (a bf16 copy would round it)."""
    found = declared.get(pattern_of(canonical))
    return found is not None and found.fp32


def is_declared(canonical: str) -> bool:
    return pattern_of(canonical) in declared
