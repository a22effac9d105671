"""What a model family declares: its HF tensor table, its config.json codec, and how a Megatron
checkpoint (which stores no model type) is recognised as this family.

A family module builds one `Family` and names it `FAMILY`; `families/__init__.py` lists the
modules. Nothing else in the converter switches on a family name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..layouts import Layout
from ..row import Row
from ..spec import ModelSpec


def _nothing(spec: ModelSpec) -> list[str]:
    return []


def _same(spec: ModelSpec) -> ModelSpec:
    return spec


def _no_rules(spec: ModelSpec) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class FusedExperts:
    """transformers-5 in-memory MoE form some files carry: experts stacked on dim 0
    (`gate_up_proj` [E, 2f, h] = [gate; up] per expert, `down_proj` [E, h, f]) and the router."""

    gate_up: str = "mlp.experts.gate_up_proj"
    down: str = "mlp.experts.down_proj"
    router: str = "mlp.gate.weight"

    def rows(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return ((self.gate_up, ("experts.{e}.gate", "experts.{e}.up")), (self.down, ("experts.{e}.down",)))


@dataclass(frozen=True)
class MegatronTraits:
    """How Megatron args (which carry no model type) are recognised as this family, and which of
    the family's features megatron-core cannot express (the plan refuses Megatron targets then)."""

    match: Callable[[dict[str, Any], ModelSpec], bool] | None = None
    rank: int = 0  # more specific families are tried first
    problems: Callable[[ModelSpec], list[str]] = _nothing
    finish: Callable[[ModelSpec], ModelSpec] = _same  # the family's reading of generic args (e.g. layernorm-1p)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values read as this family (first: written)
    layer_prefix: str
    pre: tuple[Row, ...]  # embedding group
    layer: tuple[Row, ...]
    post: tuple[Row, ...]  # final norm + head group
    spec_from_config: Callable[[dict[str, Any]], ModelSpec]
    config_from_spec: Callable[[ModelSpec], Any]  # a transformers config object or a config.json dict
    ignored: tuple[str, ...] = field(default=())  # stored non-weights (regexes)
    # stored tensors this model does not use, by regexes whose `(?#...)` comment says why (shown in the plan)
    ignored_for: Callable[[ModelSpec], tuple[str, ...]] = _no_rules
    megatron: MegatronTraits = field(default_factory=MegatronTraits)
    fused_experts: FusedExperts | None = None  # MoE families whose files may hold the fused form
    mtp: tuple[Row, ...] = ()  # a multi-token-prediction module's own rows, relative to its layer prefix
    doc: str = ""


@dataclass(frozen=True)
class HfEntry:
    """A stored HF tensor of one model: full name, full canonical names, layout, streaming group."""

    name: str
    canon: tuple[str, ...]
    op: Layout
    group: int


def _layer_entries(family: Family, prefix: str, canon: str, layer: ModelSpec, group: int) -> list[HfEntry]:
    """The stored tensors of one layer (`prefix` stored, `canon` canonical), per-expert rows expert-major."""
    out: list[HfEntry] = []
    pending: list[Row] = []

    def flush() -> None:
        for e in range(layer.experts):
            out.extend(HfEntry(prefix + p.name.format(e=e), tuple(canon + c.format(e=e) for c in p.canon), p.op, group)
                       for p in pending)
        pending.clear()

    for p in (p for p in family.layer if p.when(layer)):
        if p.per_expert:
            pending.append(p)
            continue
        flush()
        experts = range(layer.experts) if p.stacked else [0]  # a stacked row holds every expert, expert-major
        out.append(HfEntry(prefix + p.name, tuple(canon + c.format(e=e) for e in experts for c in p.canon), p.op, group))
    flush()
    return out


def hf_entries(family: Family, spec: ModelSpec) -> list[HfEntry]:
    """Every stored HF tensor of the model, in model order (per-expert rows expanded expert-major);
    carried multi-token-prediction modules last, numbered after the last layer as HF stores them."""
    out = [HfEntry(p.name, p.canon, p.op, -1) for p in family.pre if p.when(spec)]
    for i in range(spec.layers):  # a dense layer of a MoE model has its dense rows
        out += _layer_entries(family, family.layer_prefix.format(i=i), f"layers.{i}.", spec.layer_spec(i), i)
    out += [HfEntry(p.name, p.canon, p.op, spec.layers) for p in family.post if p.when(spec)]
    for k in range(spec.mtp):
        prefix, canon, group = family.layer_prefix.format(i=spec.layers + k), f"mtp.{k}.", spec.layers + 1 + k
        out += [HfEntry(prefix + p.name, tuple(canon + c for c in p.canon), p.op, group) for p in family.mtp if p.when(spec)]
        out += _layer_entries(family, prefix, canon, spec.mtp_spec(), group)
    return out
