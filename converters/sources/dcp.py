"""Plain torch DCP checkpoints from FSDP trainers as canonical tensors.

Hugging Face Accelerate saves `pytorch_model_fsdp_0/` with the HF model's own names under a
`model.` wrapper key (`{"model": state_dict}`); torchtitan saves `step-N/` with its own module
names (`tok_embeddings`, `layers.{i}.attention.*`, `feed_forward.w1`, `moe.*` with every expert
stacked in one tensor, ...) beside optimizer, scheduler and dataloader state. Each is a naming
style of the family: the HF table under a wrapper prefix, or the family's torchtitan table
(`rules/torchtitan.py`, each row taking the first of its spellings on disk). Tensors are global
(DCP stores every shard as a chunk of the full tensor), so a group is read whole.
The architecture comes from `--config` or a `config.json` found beside the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.model import Checkpoint

from .. import families, vocab
from ..rules import torchtitan
from ..spec import ModelSpec, SpecError
from .base import Accounting, CanonicalSource, groups

NEEDS_CONFIG = "torch DCP checkpoints carry no architecture: pass --config with the model's HF config.json"

WRAPPER_PREFIXES = ("", "model.", "module.", "_orig_mod.", "model._orig_mod.")
LAYER = re.compile(r"(^|\.)layers\.\d+\.")  # a main layer's stored name (not `mtp_layers.`)
IGNORED = (r"^optimizer\.", r"^(lr_scheduler|dataloader|train_state)", r"(^|\.)inv_freq$", r"(^|\.)freqs_cis$")

Spelled = list[tuple[families.HfEntry, tuple[str, ...]]]  # an entry and every spelling it may be stored under


def styles(spec: ModelSpec) -> dict[str, Spelled]:
    """The naming styles a DCP checkpoint of this model may use: the HF table, and torchtitan's
    when torchtitan has a model of this family (`rules/torchtitan.py`)."""
    hf = [(e, (e.name,)) for e in families.hf_entries(spec) if e.canon]
    titan = [(e, names) for e, names in torchtitan.entries(spec) if e.canon]
    return {"hf": hf, **({"torchtitan": titan} if titan else {})}


class DcpSource(CanonicalSource):
    kind = "dcp"
    needs_config = NEEDS_CONFIG

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        if spec is None:
            raise SpecError(self.needs_config)
        self.ckpt, self.spec = ckpt, spec
        self.index = {t.name: t for t in ckpt.model_tensors()}
        self.style, entries, self.names, self.older = self._naming(styles(spec))
        self.entries = {g: [e for e in entries if e.group == g] for g in groups(spec)}
        self.shapes = spec.canonical_shapes()
        self._check(entries)

    def _check(self, entries: list[families.HfEntry]) -> None:
        """Refuse at plan time what would convert into a different model: a stored shape that is not
        the model's (torchtitan's July 2025 experts were [E, dim, ffn]), or a non-zero torchtitan
        load-balancing bias on a family whose HF router has none (torchtitan's own export drops it)."""
        for entry in entries:
            stored = self.names[entry.name]
            if stored in self.index:
                expected = tuple(entry.op.shape([self.shapes[c] for c in entry.canon], self.spec))
                found = tuple(self.index[stored].shape)
                if found != expected:
                    why = " (each expert [in, out], as torchtitan stored experts before its HF adapter of August 2025: not read)" \
                        if len(found) == 3 and found == (expected[0], expected[2], expected[1]) else ""
                    raise SpecError(f"{stored} is {list(found)}, the model needs {list(expected)}{why}")
        if not (self.style.startswith("torchtitan") and torchtitan.ZERO_ONLY in torchtitan.ignored(self.spec)):
            return
        zero_only = re.compile(torchtitan.ZERO_ONLY)
        for name in (n for n in self.index if zero_only.search(n) and LAYER.search(n)):
            if self.ckpt.load(self.index[name]).any():
                raise SpecError(f"{name} is not zero: torchtitan's load-balancing bias moves the expert choice and "
                                f"HF {self.spec.family} has no such bias (torchtitan's own export drops it)")

    def _naming(self, options: dict[str, Spelled]) -> tuple[str, list[families.HfEntry], dict[str, str], list[str]]:
        """The naming style and wrapper prefix under which the most entries are stored, each entry's
        stored name (the first of its spellings on disk), and the older spellings found."""
        best: tuple[int, str, list[families.HfEntry], dict[str, str], list[str]] = (-1, "hf", [], {}, [])
        for style, spelled in options.items():
            for prefix in WRAPPER_PREFIXES:
                names, older = {}, []
                for entry, spellings in spelled:
                    on_disk = next((prefix + n for n in spellings if prefix + n in self.index), None)
                    names[entry.name] = on_disk or prefix + spellings[0]
                    if on_disk and on_disk != prefix + spellings[0]:
                        older.append(on_disk)
                found = sum(n in self.index for n in names.values())
                if found > best[0]:
                    label = style + (f" (under `{prefix[:-1]}`)" if prefix else "")
                    best = (found, label, [e for e, _ in spelled], names, older)
        return best[1:]

    def _absent_zero(self, entry: families.HfEntry) -> bool:
        """A tensor torchtitan leaves out when its feature is off (no load balancing: no bias)."""
        return self.names[entry.name] not in self.index and self.style.startswith("torchtitan") and \
            all(vocab.pattern_of(c) in torchtitan.ZERO_WHEN_ABSENT for c in entry.canon)

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for entry in self.entries[group]:
            stored = self.names[entry.name]
            shapes = [self.shapes[c] for c in entry.canon]
            if self._absent_zero(entry):
                out.update((c, torch.zeros(s, dtype=torch.float32)) for c, s in zip(entry.canon, shapes))
                continue
            if stored not in self.index:
                raise CheckpointError(self.ckpt.path, f"missing tensor {stored}")
            parts = entry.op.unpack(self.ckpt.load(self.index[stored]), shapes, self.spec)
            out.update(zip(entry.canon, parts))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected = {self.names[e.name]: list(e.canon) for g in groups(self.spec) for e in self.entries[g]
                    if not self._absent_zero(e)}
        rules = [*IGNORED, *(torchtitan.ignored(self.spec) if self.style.startswith("torchtitan") else
                             families.hf_ignored(self.spec))]
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def notes(self) -> list[str]:
        older = sorted({LAYER.sub(r"\1layers.{i}.", n) for n in self.older})
        return [f"DCP naming: {self.style}"] + ([f"older torchtitan spellings: {', '.join(older)}"] if older else [])


