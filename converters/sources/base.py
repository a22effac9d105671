"""Canonical sources: the base class, streaming groups and tensor accounting.

A group is the unit of streaming: `PRE` (embedding), each layer `0..L-1`, then `post`
(final norm and LM head, numbered L). `read(group)` gathers exactly that group's tensors from
every shard that holds them; nothing else is loaded. `account()` explains every stored tensor:
mapped (to which canonical names), ignored by rule (with the rule), or unmatched.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from ckptscope.inspectors.model import Checkpoint, TensorInfo

from .. import vocab
from ..spec import ModelSpec

PRE = -1


PRE_CANON = ("embed", "pos_embed", "embed_norm", "embed_norm.bias")  # the embedding group, in model order


def group_of(spec: ModelSpec, canon: str) -> int:
    """The streaming group of a canonical name (MTP module k is group L + 1 + k, after the head)."""
    if canon.startswith("layers."):
        return int(canon.split(".")[1])
    if canon.startswith("mtp."):
        return spec.layers + 1 + int(canon.split(".")[1])
    return PRE if canon in PRE_CANON else spec.layers


def group_canon(spec: ModelSpec, group: int) -> list[str]:
    """Canonical names belonging to one streaming group."""
    if group == PRE:
        shapes = spec.canonical_shapes() if spec.position == "learned" or spec.embed_norm else {"embed": ()}
        return [c for c in PRE_CANON if c in shapes]
    if group < spec.layers:
        return list(spec.layer_shapes(group))
    if group > spec.layers:
        return list(vocab.mtp_shapes(spec, group - spec.layers - 1))
    names = ["final_norm"] + (["final_norm.bias"] if spec.norm_bias else [])
    return names + ([] if spec.tied else ["lm_head"])


def groups(spec: ModelSpec) -> list[int]:
    return [PRE, *range(spec.layers), *range(spec.layers, spec.layers + 1 + spec.mtp)]


def group_label(spec: ModelSpec, group: int) -> str:
    if group > spec.layers:
        return f"MTP module {group - spec.layers - 1}"
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
    architecture_from: str = ""  # where the architecture came from when not the checkpoint itself
    renamed: Mapping[str, str] = MappingProxyType({})  # stored name -> the name read (`--rename`, `--map`)

    @abstractmethod
    def read(self, group: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def account(self, user_ignores: Iterable[str] = ()) -> Accounting: ...

    def get(self, name: str) -> torch.Tensor:
        """One canonical tensor; the last group read is kept, so walking a layer reads it once."""
        group = group_of(self.spec, name)
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] != group:
            cached = self._cache = (group, self.read(group))
        return cached[1][name]

    def drop_mtp(self) -> None:
        """The target cannot hold multi-token-prediction modules: account them as ignored by rule."""
        self.spec = self.spec.with_(mtp_dropped=True)

    def mtp_copy_mismatches(self) -> list[str]:
        """Stored MTP copies of the embedding / head that differ from the model's own (a target that
        shares them, megatron-core, cannot hold them); sources that store them once have none."""
        return []

    def notes(self) -> list[str]:
        return []

    def storage_quirks(self) -> list[str]:
        """How weights are stored beyond the architecture (quantized formats read on the fly)."""
        return []


def by_global(ckpt: Checkpoint, tensors: Iterable[TensorInfo] | None = None) -> dict[str, list[TensorInfo]]:
    """Global name -> one stored shard per TP rank (EP ranks replicate non-expert tensors);
    `tensors` in place of the checkpoint's model tensors (as a source presents them)."""
    out: dict[str, dict[int, TensorInfo]] = {}
    for t in sorted(ckpt.model_tensors() if tensors is None else tensors, key=lambda t: (t.ranks.ep or 0, t.ranks.vpp or 0)):
        out.setdefault(t.global_name, {}).setdefault(t.ranks.tp or 0, t)
    return {name: [by_tp[r] for r in sorted(by_tp)] for name, by_tp in out.items()}
