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

from .. import vocab
from ..rules import megatron as mg
from ..rules import megatron_llm as mllm
from ..row import Row
from ..megatron_args import spec_from_megatron_args
from ..spec import ModelSpec, SpecError
from . import grouped_mlp
from .base import PRE, Accounting, CanonicalSource, by_global, groups
from .tp_read import read_rows


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
        self.grouped_mlp = any(map(grouped_mlp.GROUPED_RE.match, self.index))
        if self.grouped_mlp:  # legacy GroupedMLP: each rank's weight1 / weight2 as its experts' tensors
            self.index = by_global(ckpt, grouped_mlp.per_expert(ckpt.model_tensors(), self.spec.experts))

    def _stored(self, param: Row, layer: int | None, expert: int | None = None, prefixes: tuple[str, ...] = ()) -> str | None:
        """The stored global name of a param (first spelling present on disk)."""
        if not prefixes:
            prefixes = (self.rules.LAYER_PREFIX[self.variant].format(i=layer) if layer is not None else "",)
        spec = self.spec.layer_spec(layer) if layer is not None else self.spec
        candidates = [param.name_for(self.variant, spec), *param.read_names()]
        for prefix in prefixes:
            for name in dict.fromkeys(candidates):
                full = prefix + name.format(e=expert)
                if full in self.index:
                    return full
        return None

    def _expected_mtp(self, k: int) -> list[tuple[Row, str, list[str]]]:
        """MTP module k: its own rows and layer, then the embedding and head it shares with the model
        (read again as its HF copies)."""
        spec, top = self.spec, mg.MTP_PREFIX.format(k=k)
        out = [(p, top + p.name, [f"mtp.{k}." + c for c in p.canon]) for p in mg.MTP_PARAMS]
        prefixes = tuple(top + p for p in (mg.MTP_LAYER, *mg.MTP_LAYER_ALIASES))
        layer = spec.mtp_spec()
        for param in mg.layer_params(layer, self.variant):
            for e in range(layer.experts) if param.expert else [None]:
                name = self._stored(param, spec.layers, e, prefixes) or prefixes[0] + param.name_for(self.variant, layer).format(e=e)
                out.append((param, name, [f"mtp.{k}." + c.format(e=e) for c in param.canon]))
        out += [(p, self._stored(p, None) or p.name, [f"mtp.{k}.{p.canon[0]}"]) for p, _ in mg.global_params(spec)
                if p.canon[0] in vocab.MTP_SHARED]
        return out

    def _expected(self, group: int) -> list[tuple[Row, str, list[str]]]:
        """(param, stored name, canonical names) for one group; stored name may be missing."""
        spec, out = self.spec, []
        if group > spec.layers:
            return self._expected_mtp(group - spec.layers - 1)
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            for param, where in self.rules.global_params(spec):
                if where == stage:
                    name = self._stored(param, None) or param.name_for(self.variant, spec)  # te has no global names: local
                    out.append((param, name, list(param.canon)))
            return out
        layer = spec.layer_spec(group)  # a dense layer of a MoE model (moe_layer_freq) has no expert rows
        for param in self.rules.layer_params(layer, self.variant):
            for e in range(layer.experts) if param.expert else [None]:
                canon = [f"layers.{group}." + c.format(e=e) for c in param.canon]
                name = self._stored(param, group, e) or (self.rules.LAYER_PREFIX[self.variant].format(i=group)
                                                         + param.name_for(self.variant, layer).format(e=e))
                out.append((param, name, canon))
        return out

    def read(self, group: int) -> dict[str, torch.Tensor]:
        """The group's canonical tensors. Plain TP cuts are read straight into one buffer for the
        group (`tp_read.py`: each shard into its rows or columns); the rest load and gather."""
        rows = []
        for param, name, canon in self._expected(group):
            infos = self.index.get(name)
            if not infos:
                raise SpecError(f"{self.ckpt.path}: missing tensor {name}")
            rows.append((param, canon, infos))
        return read_rows(rows, self.spec, self.ckpt.load)

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected: dict[str, list[str]] = {}
        for g in groups(self.spec):  # the embedding and head also serve as the MTP modules' copies
            for _, name, canon in self._expected(g):
                expected.setdefault(name, []).extend(canon)
        rules = list(self.rules.IGNORED_PATTERNS) + mtp_dropped(self.spec)
        if self.spec.tied:  # last-stage synced copy of the tied embedding
            rules += [rf"^{re.escape(n)}$" for n in set(self.rules.TIED_HEAD_COPY.values())]
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def notes(self) -> list[str]:
        naming = f"Megatron naming: {self.variant}"
        if self.rules is mllm:
            naming += " (epfLLM Megatron-LLM" + (": dense_h_to_4h packs [up; gate] per rank)" if self.spec.gated else ")")
        if self.grouped_mlp:
            naming += "; experts: GroupedMLP weight1 / weight2, read per expert"
        return [naming, f"vocab: {self.spec.vocab} rows kept ({self.spec.vocab_note})",
                *(f"layout quirk: {q}" for q in self.spec.quirks() if "interleaved" in q or "checkpoint_version" in q)]


def mtp_dropped(spec: ModelSpec) -> list[str]:
    """megatron-core's MTP modules when the target cannot hold them: ignored by a named rule."""
    return [r"^mtp\.layers\.(?# multi-token-prediction module: the target cannot hold it; not carried)"] if spec.mtp_dropped else []


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
