"""Hugging Face names: the Llama family (Llama, Mistral, Qwen2, Mixtral) here, other families
in `rules/families/` (one module each, registered in `HF_FAMILIES`), as data.

Everything outside this module goes through `hf_entries(spec)`: one `HfEntry` per stored HF
tensor, with the canonical tensors it holds and the typed `Layout` between them (for Llama all
entries are 1:1 identities built from the tables below, so its behaviour is unchanged).

`HF_LAYER` maps canonical layer tensors to HF names (1:1 renames); `HF_GLOBAL` the model-level
ones. Mixtral experts have two spellings on disk: the classic per-expert `w1/w3/w2` (what hub
checkpoints and `save_pretrained` write) and the transformers-5 fused in-memory form
`mlp.experts.gate_up_proj` [E, 2f, h] / `mlp.experts.down_proj` [E, h, f] (`HF_FUSED_EXPERTS`),
which readers accept too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..layouts import IDENTITY, Layout
from ..spec import ModelSpec

HF_GLOBAL: dict[str, str] = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}

HF_LAYER: dict[str, str] = {
    "input_norm": "input_layernorm.weight",
    "attn.q": "self_attn.q_proj.weight",
    "attn.k": "self_attn.k_proj.weight",
    "attn.v": "self_attn.v_proj.weight",
    "attn.o": "self_attn.o_proj.weight",
    "attn.q.bias": "self_attn.q_proj.bias",
    "attn.k.bias": "self_attn.k_proj.bias",
    "attn.v.bias": "self_attn.v_proj.bias",
    "attn.o.bias": "self_attn.o_proj.bias",
    "attn.q_norm": "self_attn.q_norm.weight",
    "attn.k_norm": "self_attn.k_norm.weight",
    "post_attn_norm": "post_attention_layernorm.weight",
    "mlp.gate": "mlp.gate_proj.weight",
    "mlp.up": "mlp.up_proj.weight",
    "mlp.down": "mlp.down_proj.weight",
    "mlp.gate.bias": "mlp.gate_proj.bias",
    "mlp.up.bias": "mlp.up_proj.bias",
    "mlp.down.bias": "mlp.down_proj.bias",
    "router": "block_sparse_moe.gate.weight",
    "experts.{e}.gate": "block_sparse_moe.experts.{e}.w1.weight",
    "experts.{e}.up": "block_sparse_moe.experts.{e}.w3.weight",
    "experts.{e}.down": "block_sparse_moe.experts.{e}.w2.weight",
}

LAYER_PREFIX = "model.layers.{i}."


@dataclass(frozen=True)
class FusedExperts:
    """transformers-5 fused expert tensors: stacked over experts, gate/up concatenated."""

    name: str
    canon: tuple[str, ...]  # per-expert canonical names, concatenated along dim 0 of each slice


HF_FUSED_EXPERTS = (
    FusedExperts("mlp.experts.gate_up_proj", ("experts.{e}.gate", "experts.{e}.up")),
    FusedExperts("mlp.experts.down_proj", ("experts.{e}.down",)),
)
HF_FUSED_ROUTER = "mlp.gate.weight"

# Stored entries that carry no weights (old checkpoints keep rotary buffers).
HF_IGNORED = (r"\.rotary_emb\.inv_freq$", r"\.attn\.(masked_)?bias$")


def hf_layer_names(spec: ModelSpec, i: int) -> dict[str, str]:
    """canonical name -> HF name for every tensor of layer i."""
    out: dict[str, str] = {}
    for canon in spec.layer_shapes(i):
        rel = canon.split(".", 2)[2]
        parts = rel.split(".")
        key = rel
        e = None
        if parts[0] == "experts":
            e = parts[1]
            key = ".".join(["experts", "{e}", *parts[2:]])
        out[canon] = LAYER_PREFIX.format(i=i) + HF_LAYER[key].format(e=e)
    return out


def hf_global_names(spec: ModelSpec) -> dict[str, str]:
    out = {}
    for canon in ("embed", "final_norm", "lm_head"):
        if canon == "lm_head" and spec.tied:
            continue
        out[canon] = HF_GLOBAL[canon]
    return out


def hf_names(spec: ModelSpec) -> dict[str, str]:
    """canonical -> HF for the whole model, in model order."""
    out = {"embed": HF_GLOBAL["embed"]}
    for i in range(spec.layers):
        out.update(hf_layer_names(spec, i))
    out.update({k: v for k, v in hf_global_names(spec).items() if k != "embed"})
    return out


# ---------------------------------------------------------------------------------------------
# Family registry: a family is a table of `HfParam` rows plus its config <-> spec functions.
# ---------------------------------------------------------------------------------------------
def _always(spec: ModelSpec) -> bool:
    return True


@dataclass(frozen=True)
class HfParam:
    """One stored HF tensor: its name (relative to the layer prefix for layer rows), the
    canonical tensors it holds (relative to `layers.{i}.` for layer rows) and the layout."""

    name: str
    canon: tuple[str, ...]
    layout: Layout = IDENTITY
    when: Callable[[ModelSpec], bool] = _always


@dataclass(frozen=True)
class HfFamily:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values read as this family
    layer_prefix: str
    pre: tuple[HfParam, ...]  # embedding group
    layer: tuple[HfParam, ...]
    post: tuple[HfParam, ...]  # final norm + head group
    spec_from_config: Callable[[dict[str, Any]], ModelSpec]
    config_from_spec: Callable[[ModelSpec], Any]  # a transformers config object
    ignored: tuple[str, ...] = field(default=())  # stored non-weights (regexes)


@dataclass(frozen=True)
class HfEntry:
    """A stored HF tensor of one model: full name, full canonical names, layout, streaming group."""

    name: str
    canon: tuple[str, ...]
    layout: Layout
    group: int


HF_FAMILIES: dict[str, HfFamily] = {}


def register(family: HfFamily) -> HfFamily:
    HF_FAMILIES[family.name] = family
    return family


def _llama_entries(spec: ModelSpec) -> list[HfEntry]:
    def group(canon: str) -> int:
        return -1 if canon == "embed" else int(canon.split(".")[1]) if canon.startswith("layers.") else spec.layers

    return [HfEntry(name, (canon,), IDENTITY, group(canon)) for canon, name in hf_names(spec).items()]


def hf_entries(spec: ModelSpec) -> list[HfEntry]:
    """Every stored HF tensor of the model, in model order."""
    from . import families  # noqa: F401 - registers the family modules

    family = HF_FAMILIES.get(spec.family)
    if family is None:
        return _llama_entries(spec)
    out = [HfEntry(p.name, p.canon, p.layout, -1) for p in family.pre if p.when(spec)]
    for i in range(spec.layers):
        prefix = family.layer_prefix.format(i=i)
        out += [HfEntry(prefix + p.name, tuple(f"layers.{i}.{c}" for c in p.canon), p.layout, i)
                for p in family.layer if p.when(spec)]
    out += [HfEntry(p.name, p.canon, p.layout, spec.layers) for p in family.post if p.when(spec)]
    return out


def hf_ignored(spec: ModelSpec) -> tuple[str, ...]:
    """Regexes of stored entries that carry no weights for this model's family."""
    from . import families  # noqa: F401

    family = HF_FAMILIES.get(spec.family)
    return HF_IGNORED + (family.ignored if family else ())
