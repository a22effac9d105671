"""Hugging Face folders as canonical tensors (classic and transformers-5 fused Mixtral experts)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ckptscope.inspectors.model import Checkpoint

from ..rules import hf as hf_rules
from ..spec import ModelSpec, SpecError, spec_from_hf_config
from .base import PRE, Accounting, CanonicalSource, groups


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

    def _names(self, group: int) -> dict[str, str]:
        spec = self.spec
        if group == PRE:
            return {"embed": hf_rules.HF_GLOBAL["embed"]}
        if group < spec.layers:
            names = hf_rules.hf_layer_names(spec, group)
            if self.fused:
                names = {c: n for c, n in names.items() if ".experts." not in c and not c.endswith(".router")}
            return names
        out = {c: n for c, n in hf_rules.hf_global_names(spec).items() if c != "embed"}
        if spec.tied and "lm_head.weight" in self.index:
            pass  # an extra tied copy is accounted as ignored below
        return out

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out = {canon: self.ckpt.load(self.index[name]) for canon, name in self._names(group).items()}
        if self.fused and 0 <= group < self.spec.layers:
            out.update(self._read_fused(group))
        return out

    def _read_fused(self, i: int) -> dict[str, torch.Tensor]:
        prefix = hf_rules.LAYER_PREFIX.format(i=i)
        out = {f"layers.{i}.router": self.ckpt.load(self.index[prefix + hf_rules.HF_FUSED_ROUTER])}
        for fused in hf_rules.HF_FUSED_EXPERTS:
            stacked = self.ckpt.load(self.index[prefix + fused.name])
            for e in range(self.spec.experts):
                parts = torch.chunk(stacked[e], len(fused.canon), dim=0)
                for canon, part in zip(fused.canon, parts):
                    out[f"layers.{i}." + canon.format(e=e)] = part.contiguous()
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected: dict[str, list[str]] = {}
        for group in groups(self.spec):
            for canon, name in self._names(group).items():
                expected.setdefault(name, []).append(canon)
        if self.fused:
            for i in range(self.spec.layers):
                prefix = hf_rules.LAYER_PREFIX.format(i=i)
                expected[prefix + hf_rules.HF_FUSED_ROUTER] = [f"layers.{i}.router"]
                for fused in hf_rules.HF_FUSED_EXPERTS:
                    expected[prefix + fused.name] = [f"layers.{i}.{c.format(e='*')}" for c in fused.canon]
        rules = list(hf_rules.HF_IGNORED)
        if self.spec.tied:
            rules.append(r"^lm_head\.weight$")  # tied: the head is the embedding
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc
