"""Meta's original Llama checkpoint names (`consolidated.NN.pth`), as data.

Rows are the one `Row` type (canonical tensors, how model parallelism cut them), so the shards
are gathered with `row.gather`. Meta applies RoPE to interleaved channel pairs, so
the gathered q and k are permuted to rotate-half order (`ROTARY_ROWS`) unless the user says the
weights were already permuted (`--rotary-layout half`). Llama 1/2 split the embedding along the
hidden dim (`EMBED_BY_DIM`), Llama 3 along the vocabulary (`EMBED_BY_VOCAB`): the stored shard
shape tells which.
"""

from __future__ import annotations

from ..spec import ModelSpec
from ..row import Row
from ..shards import COLUMN, REPLICATED, ROW, Shard


def _p(canon: str, name: str, shard: Shard, when=None) -> Row:  # type: ignore[no-untyped-def]
    return Row(name, (canon,), shard=shard, **({"when": when} if when else {}))


EMBED_BY_DIM = _p("embed", "tok_embeddings.weight", ROW)
EMBED_BY_VOCAB = _p("embed", "tok_embeddings.weight", COLUMN)

LAYER_PREFIX = "layers.{i}."
LAYER_ROWS: tuple[Row, ...] = (
    _p("input_norm", "attention_norm.weight", REPLICATED),
    _p("attn.q", "attention.wq.weight", COLUMN),
    _p("attn.k", "attention.wk.weight", COLUMN),
    _p("attn.v", "attention.wv.weight", COLUMN),
    _p("attn.o", "attention.wo.weight", ROW),
    _p("post_attn_norm", "ffn_norm.weight", REPLICATED),
    _p("mlp.gate", "feed_forward.w1.weight", COLUMN),
    _p("mlp.up", "feed_forward.w3.weight", COLUMN),
    _p("mlp.down", "feed_forward.w2.weight", ROW),
)
POST_ROWS: tuple[Row, ...] = (
    _p("final_norm", "norm.weight", REPLICATED),
    _p("lm_head", "output.weight", COLUMN, when=lambda s: not s.tied),
)

# canonical row -> which head count its per-head rotary permutation uses
ROTARY_ROWS = {"attn.q": lambda s: s.heads, "attn.k": lambda s: s.kv_heads}

IGNORED_PATTERNS = (r"^rope\.freqs$", r"(^|\.)inner_attention\.rope\.freqs$")


def llama3_scaling() -> dict:
    """`use_scaled_rope` in params.json: Llama 3.1's fixed smoothing parameters."""
    return {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


def family_note(spec: ModelSpec) -> str:
    return "CodeLlama-style (rope base 1e6)" if spec.rope_theta >= 1e6 and not spec.rope_scaling else ""
