"""Readers from inspected checkpoints to canonical tensors, one group at a time.

A group is the unit of streaming: `PRE` (embedding), each layer `0..L-1`, then `post`
(final norm and LM head, numbered L). `read(group)` gathers exactly that group's tensors from
every shard that holds them; nothing else is loaded. `account()` explains every stored tensor:
mapped (to which canonical names), ignored by rule (with the rule), or unmatched.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ckptscope.inspectors.model import Checkpoint, TensorInfo

from .rules import hf as hf_rules
from .rules import megatron as mg
from .sharding import from_global, gather
from .spec import ModelSpec, SpecError, spec_from_hf_config, spec_from_megatron_args

PRE = -1


def group_canon(spec: ModelSpec, group: int) -> list[str]:
    """Canonical names belonging to one streaming group."""
    if group == PRE:
        return ["embed"]
    if group < spec.layers:
        return list(spec.layer_shapes(group))
    names = ["final_norm"] + (["final_norm.bias"] if spec.norm_bias else [])
    return names + ([] if spec.tied else ["lm_head"])


def groups(spec: ModelSpec) -> list[int]:
    return [PRE, *range(spec.layers), spec.layers]


def group_label(spec: ModelSpec, group: int) -> str:
    return "embeddings" if group == PRE else f"layer {group}" if group < spec.layers else "final norm + head"


@dataclass
class Accounting:
    mapped: dict[str, list[str]] = field(default_factory=dict)  # stored name -> canonical names
    ignored: dict[str, str] = field(default_factory=dict)  # stored name -> rule
    unmatched: dict[str, str] = field(default_factory=dict)  # stored name -> nearest expected name
    missing: list[str] = field(default_factory=list)  # expected stored names not on disk

    def settle(self, stored: Iterable[str], expected: dict[str, list[str]], ignore_rules: Iterable[str],
               user_ignores: Iterable[str] = ()) -> None:
        """Classify every stored (global) name against the expected ones and the ignore rules."""
        rules = [(r, re.compile(r)) for r in ignore_rules]
        globs = list(user_ignores)
        stored = list(dict.fromkeys(stored))
        present = set(stored)
        for name in stored:
            if name in expected:
                self.mapped[name] = expected[name]
                continue
            rule = next((r for r, rx in rules if rx.search(name)), None)
            if rule is None:
                import fnmatch

                rule = next((f"--ignore {g}" for g in globs if fnmatch.fnmatchcase(name, g)), None)
            if rule is not None:
                self.ignored[name] = rule
            else:
                near = difflib.get_close_matches(name, list(expected), n=1, cutoff=0.5)
                self.unmatched[name] = near[0] if near else ""
        self.missing = [n for n in expected if n not in present]


class CanonicalSource(ABC):
    """A checkpoint seen as canonical tensors."""

    kind: str
    spec: ModelSpec
    ckpt: Checkpoint

    @abstractmethod
    def read(self, group: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def account(self, user_ignores: Iterable[str] = ()) -> Accounting: ...

    def get(self, name: str) -> torch.Tensor:
        """One canonical tensor; the last group read is kept, so walking a layer reads it once."""
        group = PRE if name == "embed" else int(name.split(".")[1]) if name.startswith("layers.") else self.spec.layers
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] != group:
            cached = self._cache = (group, self.read(group))
        return cached[1][name]

    def notes(self) -> list[str]:
        return []


def _by_global(ckpt: Checkpoint) -> dict[str, list[TensorInfo]]:
    """Global name -> one stored shard per TP rank (EP ranks replicate non-expert tensors)."""
    out: dict[str, dict[int, TensorInfo]] = {}
    for t in sorted(ckpt.model_tensors(), key=lambda t: (t.ranks.ep or 0, t.ranks.vpp or 0)):
        out.setdefault(t.global_name, {}).setdefault(t.ranks.tp or 0, t)
    return {name: [by_tp[r] for r in sorted(by_tp)] for name, by_tp in out.items()}


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
class MegatronTorchSource(CanonicalSource):
    """Megatron `torch` format: gathers TP shards per parameter, EP ranks per expert."""

    kind = "megatron-torch"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        self.ckpt = ckpt
        self.spec = spec or spec_from_megatron_args(ckpt.metadata.get("args", {}), true_vocab=true_vocab, vocab_note=vocab_note)
        self.index = _by_global(ckpt)
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
        return [f"Megatron naming: {self.variant}", f"vocab: {self.spec.vocab} rows kept ({self.spec.vocab_note})"]


# ---------------------------------------------------------------------------------------------
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

    def _locate(self, param: mg.Param, layer: int | None, expert: int | None) -> list[tuple[str, tuple[int, ...]]]:
        """Stored keys and index prefixes holding this param (two keys for split swiglu)."""
        if layer is None:
            names = [param.name("local", self.spec), *param.read_names()]
            for name in names:
                if name in self.index:
                    return [(name, ())]
            return []
        rels = [param.name("dist", self.spec), *param.read_names()]
        for rel in dict.fromkeys(rels):
            rel = rel.replace("{e}", "")
            stacked = f"decoder.layers.{rel}"
            per_layer = f"decoder.layers.{layer}.{rel}"
            idx_e = (expert,) if param.expert else ()
            if stacked in self.index:
                return [(stacked, (layer, *idx_e))]
            if per_layer in self.index:
                return [(per_layer, idx_e)]
            if param.pack is mg.Pack.SWIGLU and per_layer + "_w" in self.index:
                return [(per_layer + "_w", idx_e), (per_layer + "_v", idx_e)]
        return []

    def _expected(self, group: int) -> list[tuple[mg.Param, list[tuple[str, tuple[int, ...]]], list[str]]]:
        spec, out = self.spec, []
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            for param, where in mg.global_params(spec):
                if where == stage:
                    out.append((param, self._locate(param, None, None), list(param.canon)))
            return out
        for param in mg.layer_params(spec):
            for e in range(spec.experts) if param.expert else [None]:
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
            out.update(zip(canon, from_global(param, full, self.spec)))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected: dict[str, list[str]] = {}
        for g in groups(self.spec):
            for param, where, canon in self._expected(g):
                keys = [k for k, _ in where] or [f"decoder.layers.{param.name('dist', self.spec)}"]
                for key in keys:
                    expected.setdefault(key, []).extend(canon)
        rules = list(mg.IGNORED_PATTERNS)
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


SOURCES: dict[str, type[CanonicalSource]] = {
    "hf": HfSource,
    "megatron-torch": MegatronTorchSource,
    "megatron-dist": MegatronDistSource,
}


def open_source(ckpt: Checkpoint, *, config: dict[str, Any] | None = None, true_vocab: int | None = None,
                vocab_note: str = "") -> CanonicalSource:
    """The canonical view of an inspected checkpoint (`config` overrides the architecture)."""
    cls = SOURCES.get(ckpt.kind)
    if cls is None:
        raise SpecError(f"converting from {ckpt.kind} is not supported yet (supported: {', '.join(SOURCES)})")
    spec = spec_from_hf_config(config) if config else None
    if cls is HfSource:
        source = HfSource(ckpt, spec)
        if true_vocab is not None and true_vocab != source.spec.vocab:
            raise SpecError(f"--true-vocab-size {true_vocab} disagrees with config.json vocab_size {source.spec.vocab}")
        return source
    if spec is not None and true_vocab is not None:
        spec = spec.with_(vocab=true_vocab, vocab_note=vocab_note or "--true-vocab-size")
    return cls(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note)  # type: ignore[call-arg]
