"""DeepSpeed / Megatron-DeepSpeed tables: pipeline layer files, their roles and their names.

A `PipelineModule` saves one `layer_LL-model_TT-model_states.pt` per spec-list entry that is a
module (reference §2.3). Which index holds what depends on the fork (`LAYER_INDEX_MAPS`), so
files are classified by what they hold (`ROLE_MARKERS`) and the index map is only reported.
Names inside the files are the modules' own `state_dict` names: Megatron-DeepSpeed's
(`self_attention.query_key_value`, `dense_h_to_4h`, `word_embeddings`, bare `weight` for the
final norm) or an HF-style module's (`q_proj`, `gate_proj`, `embed_tokens`, `norm`). Rows are
the one `Row` type (canonical tensors, op, TP cut), so gathering is `row.gather`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .. import families, vocab
from ..layouts import IDENTITY, Identity, Layout
from ..row import Row
from ..shards import BY_VOCAB_TP, COLUMN, REPLICATED, Shard
from . import megatron as mg
from .megatron import VOCAB

NAMINGS = ("megatron", "hf")


def _p(canon: tuple[str, ...], name: str, op: Layout = IDENTITY, shard: Shard = REPLICATED, *aliases: str, when=None) -> Row:  # type: ignore[no-untyped-def]
    return Row(name, canon, op, shard=shard, aliases=aliases, **({"when": when} if when else {}))


# Megatron-DeepSpeed's per-layer names are Megatron's legacy names (reference 2.3), so its rows
# are derived from the Megatron table (`rules/megatron.py`): same canonical tensors, TP split,
# packing and conditions (gated / plain GELU MLP, biases, learned positions, embedding norm).
# Only the spelling differs: layer-local names without the `language_model...` prefixes, and
# Megatron-DeepSpeed's `input_layernorm` / `post_attention_layernorm`. `variants["mcore"]` keeps the
# Megatron-Core local name of each row (used by the fixture writer to re-pack Megatron output).
MDS_SPELLING: dict[str, str] = {
    "input_norm.weight": "input_layernorm.weight",
    "input_norm.bias": "input_layernorm.bias",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_attention_norm.bias": "post_attention_layernorm.bias",
}
# Legacy global-name prefix -> what the pipeline layer file drops (its module's own state_dict).
MDS_GLOBAL_PREFIXES: tuple[str, ...] = (
    "language_model.embedding.", "language_model.encoder.final_norm.", "language_model.encoder.final_layernorm.",
)


def _strip(name: str) -> str:
    for prefix in MDS_GLOBAL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _from_megatron(row: Row) -> Row:
    legacy = _strip(row.variants["legacy"])
    name = MDS_SPELLING.get(legacy, legacy)
    aliases = tuple(dict.fromkeys(a for a in (legacy, *(_strip(a) for a in row.aliases)) if a != name))
    return replace(row, name=name, variants={"mcore": row.name}, aliases=aliases)


MEGATRON_BLOCK_ROWS: tuple[Row, ...] = tuple(
    _from_megatron(p) for p in mg.LAYER_PARAMS if "legacy" in p.variants and not p.expert)
MEGATRON_EMBED_ROWS: tuple[Row, ...] = tuple(
    _from_megatron(p) for p, stage in mg.GLOBAL_PARAMS if stage == "first")
MEGATRON_FINAL_NORM_ROWS: tuple[Row, ...] = tuple(
    _from_megatron(p) for p, stage in mg.GLOBAL_PARAMS if stage == "last" and p.canon[0].startswith("final_norm"))

def _hf_style(rows: tuple[Row, ...], keep: Callable[[str], bool]) -> tuple[Row, ...]:
    """Rows for an HF-style pipeline module, derived from the Llama family's HF table: the module's
    own state_dict names are the last two parts (`q_proj.weight`), nested ones (`self_attn.q_proj.weight`,
    `model.embed_tokens.weight`) are read too; the TP split is the canonical tensor's own."""
    out = []
    for row in rows:
        if len(row.canon) != 1 or not isinstance(row.op, Identity) or not keep(row.canon[0]):
            continue
        local = ".".join(row.name.split(".")[-2:])
        aliases = (row.name,) if local != row.name else ()
        tp = vocab.declared[vocab.pattern_of(row.canon[0])].tp
        out.append(Row(local, row.canon, VOCAB if tp == "vocab" else IDENTITY, row.when, BY_VOCAB_TP[tp], aliases=aliases))
    return tuple(out)


LLAMA = families.family("llama")
_BLOCK = ("input_norm", "attn.", "post_attn_norm", "mlp.gate", "mlp.up", "mlp.down")

EMBED_ROWS: dict[str, tuple[Row, ...]] = {
    "megatron": MEGATRON_EMBED_ROWS,
    "hf": _hf_style(LLAMA.pre, lambda c: c == "embed"),
}

BLOCK_ROWS: dict[str, tuple[Row, ...]] = {
    "megatron": MEGATRON_BLOCK_ROWS,
    "hf": _hf_style(LLAMA.layer, lambda c: c.startswith(_BLOCK)),  # flat (`q_proj`) or nested as in LlamaDecoderLayer
}

FINAL_NORM_ROWS: dict[str, tuple[Row, ...]] = {
    "megatron": MEGATRON_FINAL_NORM_ROWS,
    "hf": _hf_style(LLAMA.post, lambda c: c == "final_norm"),
}

HEAD_ROWS: dict[str, tuple[Row, ...]] = {
    # MDS-ms LMHeadPipe (`lm_head`), older forks' `final_linear`
    "megatron": (_p(("lm_head",), "lm_head.weight", VOCAB, COLUMN, "final_linear.weight",
                    when=lambda s: not s.tied),),
    "hf": _hf_style(LLAMA.post, lambda c: c == "lm_head"),
}

ROLE_ROWS: dict[str, dict[str, tuple[Row, ...]]] = {
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
