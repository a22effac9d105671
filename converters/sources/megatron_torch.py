"""Megatron `torch` format as canonical tensors: TP shards gathered per parameter, EP per expert.

The naming variant is detected from the stored names (and args): Megatron-Core local / TE,
legacy nested, or epfLLM Megatron-LLM, which has its own table (`rules/megatron_llm.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from ckptscope.inspectors.model import Checkpoint

from ..rules import megatron as mg
from ..rules import megatron_llm as mllm
from ..row import Row, gather
from ..shards import Geometry
from ..megatron_args import spec_from_megatron_args
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, by_global, groups


class MegatronTorchSource(CanonicalSource):
    """Megatron `torch` format: gathers TP shards per parameter, EP ranks per expert."""

    kind = "megatron-torch"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        self.ckpt = ckpt
        args = ckpt.metadata.get("args") or {}
        self.index = by_global(ckpt)
        self.variant = mllm.detect_variant(list(self.index), args)
        self.rules = mllm if self.variant in mllm.VARIANTS else mg  # the table this checkpoint's names follow
        if self.rules is mllm:
            # Megatron-LLM stores q/k interleaved even when the architecture comes from --config
            given = spec
            spec = spec or spec_from_megatron_args(args, true_vocab=true_vocab, vocab_note=vocab_note, megatron_llm=True)
            if given is not None or args.get("rotary_interleaved") is None:
                spec = spec.with_(rotary_interleaved=spec.position == "rope")
            if problems := mllm.problems(spec, target=False):
                raise SpecError("; ".join(problems))
            spec = spec.with_(megatron_llm=True)
        spec = spec or spec_from_megatron_args(args, true_vocab=true_vocab, vocab_note=vocab_note)
        # Megatron-LLM always groups QKV per KV head ([q.., k, v]: the checkpoint_version 2 order)
        self.spec = spec.with_(qkv_version=2 if self.rules is mllm else legacy_qkv_version(ckpt, spec))

    def _stored(self, param: Row, layer: int | None, expert: int | None = None) -> str | None:
        """The stored global name of a param (first spelling present on disk)."""
        prefix = self.rules.LAYER_PREFIX[self.variant].format(i=layer) if layer is not None else ""
        candidates = [param.name_for(self.variant, self.spec), *param.read_names()]
        for name in dict.fromkeys(candidates):
            full = prefix + name.format(e=expert)
            if full in self.index:
                return full
        return None

    def _expected(self, group: int) -> list[tuple[Row, str, list[str]]]:
        """(param, stored name, canonical names) for one group; stored name may be missing."""
        spec, out = self.spec, []
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            for param, where in self.rules.global_params(spec):
                if where == stage:
                    name = self._stored(param, None) or param.name_for(self.variant, spec)  # te has no global names: local
                    out.append((param, name, list(param.canon)))
            return out
        for param in self.rules.layer_params(spec):
            for e in range(spec.experts) if param.expert else [None]:
                canon = [f"layers.{group}." + c.format(e=e) for c in param.canon]
                name = self._stored(param, group, e) or (self.rules.LAYER_PREFIX[self.variant].format(i=group)
                                                         + param.name_for(self.variant, spec).format(e=e))
                out.append((param, name, canon))
        return out

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for param, name, canon in self._expected(group):
            infos = self.index.get(name)
            if not infos:
                raise SpecError(f"{self.ckpt.path}: missing tensor {name}")
            shards = [self.ckpt.load(t) for t in infos]
            out.update(zip(canon, gather(param, shards, Geometry(self.spec, len(shards)))))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected = {name: canon for g in groups(self.spec) for _, name, canon in self._expected(g)}
        rules = list(self.rules.IGNORED_PATTERNS)
        if self.spec.tied:  # last-stage synced copy of the tied embedding
            rules += [rf"^{re.escape(n)}$" for n in set(self.rules.TIED_HEAD_COPY.values())]
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def notes(self) -> list[str]:
        naming = f"Megatron naming: {self.variant}"
        if self.rules is mllm:
            naming += " (epfLLM Megatron-LLM" + (": dense_h_to_4h packs [up; gate] per rank)" if self.spec.gated else ")")
        return [naming, f"vocab: {self.spec.vocab} rows kept ({self.spec.vocab_note})",
                *(f"layout quirk: {q}" for q in self.spec.quirks() if "interleaved" in q or "checkpoint_version" in q)]


def legacy_qkv_version(ckpt: Checkpoint, spec: ModelSpec) -> int:
    """QKV ordering of a legacy rank file: `checkpoint_version` (missing with args present means
    0, as Megatron itself assumed); only multi-head models ever used the pre-2 orderings."""
    if spec.kv_heads != spec.heads:
        return 2
    version = ckpt.metadata.get("checkpoint_version")
    if version is None:
        return 0 if ckpt.metadata.get("args") else 2
    try:
        return min(int(float(version)), 2)
    except (TypeError, ValueError):
        return 2
