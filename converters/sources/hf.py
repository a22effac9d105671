"""Hugging Face folders as canonical tensors (every family in `rules/hf.py`; classic and
transformers-5 fused Mixtral experts)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from ckptscope.inspectors.model import Checkpoint, TensorInfo

from ..layouts import Identity
from ..rules import hf as hf_rules
from ..spec import ModelSpec, SpecError, spec_from_hf_config
from .base import Accounting, CanonicalSource, groups


class HfSource(CanonicalSource):
    kind = "hf"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None) -> None:
        self.ckpt = ckpt
        config = ckpt.metadata.get("config")
        if spec is None:
            if not isinstance(config, dict):
                raise SpecError(f"{ckpt.path}: no config.json; pass --config FILE")
            spec = spec_from_hf_config(config)
        self.spec = spec
        self.index = {t.name: t for t in ckpt.model_tensors()}
        self.fused = any(f".{f.name}" in n for n in self.index for f in hf_rules.HF_FUSED_EXPERTS)
        self.entries: dict[int, list[hf_rules.HfEntry]] = {g: [] for g in groups(spec)}
        for entry in hf_rules.hf_entries(spec):
            if not entry.canon:
                continue  # a constant buffer (rebuilt on write), accounted as ignored
            if self.fused and any(".experts." in c or c.endswith(".router") for c in entry.canon):
                continue  # read from the fused tensors instead
            self.entries[entry.group].append(entry)
        self.shapes = spec.canonical_shapes()
        self.layouts = {e.name: e.layout for entries in self.entries.values() for e in entries}

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for entry in self.entries[group]:
            stored = self._load(self.index[entry.name])
            parts = entry.layout.unpack(stored, [self.shapes[c] for c in entry.canon], self.spec)
            out.update(zip(entry.canon, parts))
        if self.fused and 0 <= group < self.spec.layers:
            out.update(self._read_fused(group))
        return out

    def _load(self, info: TensorInfo) -> torch.Tensor:
        """A safetensors tensor's source is its validated header entry: one positioned read (per
        tensor `safe_open`, a header parse + mmap + copy, cost more than the data of small experts)."""
        return self.ckpt.load(info)

    def _read_fused(self, i: int) -> dict[str, torch.Tensor]:
        prefix = hf_rules.LAYER_PREFIX.format(i=i)
        out = {f"layers.{i}.router": self._load(self.index[prefix + hf_rules.HF_FUSED_ROUTER])}
        for fused in hf_rules.HF_FUSED_EXPERTS:
            stacked = self._load(self.index[prefix + fused.name])
            for e in range(self.spec.experts):
                parts = torch.chunk(stacked[e], len(fused.canon), dim=0)
                for canon, part in zip(fused.canon, parts):
                    out[f"layers.{i}." + canon.format(e=e)] = part.contiguous()
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected: dict[str, list[str]] = {}
        for group in groups(self.spec):
            for entry in self.entries[group]:
                expected.setdefault(entry.name, []).extend(entry.canon)
        if self.fused:
            for i in range(self.spec.layers):
                prefix = hf_rules.LAYER_PREFIX.format(i=i)
                expected[prefix + hf_rules.HF_FUSED_ROUTER] = [f"layers.{i}.router"]
                for fused in hf_rules.HF_FUSED_EXPERTS:
                    expected[prefix + fused.name] = [f"layers.{i}.{c.format(e='*')}" for c in fused.canon]
        rules = list(hf_rules.hf_ignored(self.spec))
        if self.spec.tied:
            rules.append(r"^lm_head\.weight$")  # tied: the head is the embedding
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def stored_as_canonical(self, name: str) -> bool:
        """True when the stored tensor is its canonical tensor unchanged (an identity layout)."""
        return isinstance(self.layouts.get(name), Identity)

    def notes(self) -> list[str]:
        return list(self.spec.notes)
