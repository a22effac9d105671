"""Megatron `torch` format as canonical tensors: TP shards gathered per parameter, EP per expert."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ckptscope.inspectors.model import Checkpoint

from ..rules import megatron as mg
from ..sharding import gather
from ..spec import ModelSpec, SpecError, spec_from_megatron_args
from .base import PRE, Accounting, CanonicalSource, by_global, groups


class MegatronTorchSource(CanonicalSource):
    """Megatron `torch` format: gathers TP shards per parameter, EP ranks per expert."""

    kind = "megatron-torch"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        self.ckpt = ckpt
        spec = spec or spec_from_megatron_args(ckpt.metadata.get("args", {}), true_vocab=true_vocab, vocab_note=vocab_note)
        self.spec = spec.with_(qkv_version=legacy_qkv_version(ckpt, spec))
        self.index = by_global(ckpt)
        self.variant = mg.detect_variant(list(self.index))

    def _stored(self, param: mg.Param, layer: int | None, expert: int | None = None) -> str | None:
        """The stored global name of a param (first spelling present on disk)."""
        prefix = mg.LAYER_PREFIX[self.variant].format(i=layer) if layer is not None else ""
        candidates = [param.name(self.variant, self.spec), *param.read_names()]
        for name in dict.fromkeys(candidates):
            full = prefix + name.format(e=expert)
            if full in self.index:
                return full
        return None

    def _expected(self, group: int) -> list[tuple[mg.Param, str, list[str]]]:
        """(param, stored name, canonical names) for one group; stored name may be missing."""
        spec, out = self.spec, []
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            for param, where in mg.global_params(spec):
                if where == stage:
                    name = self._stored(param, None) or param.name("legacy" if self.variant == "legacy" else "local", spec)
                    out.append((param, name, list(param.canon)))
            return out
        for param in mg.layer_params(spec):
            for e in range(spec.experts) if param.expert else [None]:
                canon = [f"layers.{group}." + c.format(e=e) for c in param.canon]
                name = self._stored(param, group, e) or (mg.LAYER_PREFIX[self.variant].format(i=group) + param.name(self.variant, spec).format(e=e))
                out.append((param, name, canon))
        return out

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for param, name, canon in self._expected(group):
            infos = self.index.get(name)
            if not infos:
                raise SpecError(f"{self.ckpt.path}: missing tensor {name}")
            shards = [self.ckpt.load(t) for t in infos]
            out.update(zip(canon, gather(param, shards, self.spec)))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected = {name: canon for g in groups(self.spec) for _, name, canon in self._expected(g)}
        rules = list(mg.IGNORED_PATTERNS)
        if self.spec.tied:  # last-stage synced copy of the tied embedding
            rules += [rf"^{re.escape(n)}$" for n in set(mg.TIED_HEAD_COPY.values())]
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def notes(self) -> list[str]:
        return [f"Megatron naming: {self.variant}", f"vocab: {self.spec.vocab} rows kept ({self.spec.vocab_note})",
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
