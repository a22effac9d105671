"""Megatron torch_dist as canonical tensors: stacked keys sliced per layer and expert."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from ckptscope.inspectors.model import Checkpoint

from ..megatron_args import spec_from_megatron_args
from ..row import Row, from_stored
from .. import vocab
from ..rules import megatron as mg
from ..shards import Blocks
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, groups
from .megatron_torch import mtp_dropped


NEMO_PREFIX = "module."


class MegatronDistSource(CanonicalSource):
    """torch_dist: global (TP-independent) tensors; stacked keys are sliced per layer/expert."""

    kind = "megatron-dist"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        from ckptscope.inspectors.formats.megatron_dist import load_stacked_slice

        self._slice = load_stacked_slice
        self.ckpt = ckpt
        self.spec = spec or spec_from_megatron_args(ckpt.metadata.get("args", {}), true_vocab=true_vocab, vocab_note=vocab_note)
        self.index = {t.name: t for t in ckpt.model_tensors()}
        if self.index and all(n.startswith(NEMO_PREFIX) for n in self.index):  # NeMo 2: MegatronParallel's wrapper
            self.index = {n[len(NEMO_PREFIX):]: t for n, t in self.index.items()}

    def _locate(self, param: Row, layer: int | None, expert: int | None,
                mtp: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """Stored keys and index prefixes holding this param (two keys for split swiglu); `mtp`: the
        layer of MTP module k (one key per module, as megatron-core stores it)."""
        if layer is None:
            names = [param.name_for("local", self.spec), *param.read_names()]
            for name in names:
                if name in self.index:
                    return [(name, ())]
            return []
        rels = [param.name_for("dist", self.spec.layer_spec(layer)), *param.read_names()]
        for rel in dict.fromkeys(rels):
            rel = rel.replace("{e}", "")
            idx_e = (expert,) if param.expert else ()
            if mtp is not None:
                for inner in (mg.MTP_LAYER, *mg.MTP_LAYER_ALIASES):
                    if (key := mg.MTP_PREFIX.format(k=mtp) + inner + rel) in self.index:
                        return [(key, idx_e)]
                continue
            stacked = f"decoder.layers.{rel}"
            per_layer = f"decoder.layers.{layer}.{rel}"
            if stacked in self.index:
                return [(stacked, (layer, *idx_e))]
            if per_layer in self.index:
                return [(per_layer, idx_e)]
            if isinstance(param.shard, Blocks) and per_layer + "_w" in self.index:
                return [(per_layer + "_w", idx_e), (per_layer + "_v", idx_e)]
        return []

    def _expected_mtp(self, k: int) -> list[tuple[Row, list[tuple[str, tuple[int, ...]]], list[str]]]:
        """MTP module k: its own rows and layer, then the embedding and head it shares with the model."""
        spec, top = self.spec, mg.MTP_PREFIX.format(k=k)
        out = [(p, [(top + p.name, ())] if top + p.name in self.index else [], [f"mtp.{k}." + c for c in p.canon])
               for p in mg.MTP_PARAMS]
        layer = spec.mtp_spec()
        for param in mg.layer_params(layer):
            for e in range(layer.experts) if param.expert else [None]:
                out.append((param, self._locate(param, spec.layers, e, mtp=k), [f"mtp.{k}." + c.format(e=e) for c in param.canon]))
        out += [(p, self._locate(p, None, None), [f"mtp.{k}.{p.canon[0]}"]) for p, _ in mg.global_params(spec)
                if p.canon[0] in vocab.MTP_SHARED]
        return out

    def _expected(self, group: int) -> list[tuple[Row, list[tuple[str, tuple[int, ...]]], list[str]]]:
        spec, out = self.spec, []
        if group > spec.layers:
            return self._expected_mtp(group - spec.layers - 1)
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            for param, where in mg.global_params(spec):
                if where == stage:
                    out.append((param, self._locate(param, None, None), list(param.canon)))
            return out
        layer = spec.layer_spec(group)  # a dense layer of a MoE model (moe_layer_freq) has no expert rows
        for param in mg.layer_params(layer):
            for e in range(layer.experts) if param.expert else [None]:
                canon = [f"layers.{group}." + c.format(e=e) for c in param.canon]
                out.append((param, self._locate(param, group, e), canon))
        return out

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for param, where, canon in self._expected(group):
            if not where:
                raise SpecError(f"{self.ckpt.path}: no torch_dist key for {canon[0]}")
            parts = [self._slice(self.index[key], *index) for key, index in where]
            full = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            out.update(zip(canon, from_stored(param, full, self.spec)))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected: dict[str, list[str]] = {}
        for g in groups(self.spec):
            for param, where, canon in self._expected(g):  # the embedding and head also serve as MTP copies
                keys = [k for k, _ in where] or [f"decoder.layers.{param.name_for('dist', self.spec)}"]
                for key in keys:
                    expected.setdefault(key, []).extend(canon)
        rules = list(mg.IGNORED_PATTERNS) + mtp_dropped(self.spec)
        if self.spec.tied:
            rules.append(r"^output_layer\.weight$")
        acc = Accounting()
        acc.settle(self.index, {k: _collapse(v) for k, v in expected.items()}, rules, user_ignores)
        return acc

    def notes(self) -> list[str]:
        return [f"vocab: {self.spec.vocab} rows kept ({self.spec.vocab_note})"]


def _collapse(names: list[str]) -> list[str]:
    """Stacked keys map to every layer: show `layers.*.x` once instead of L names."""
    out = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    return out
