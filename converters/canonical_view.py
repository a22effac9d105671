"""Which canonical tensor each stored tensor maps to, for views that explain a checkpoint.

Never raises for unsupported checkpoints: the problem is returned instead, so an inspector can
still show the stored tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.model import Checkpoint

from .sources import open_source
from .spec import ModelSpec, SpecError


@dataclass
class CanonicalView:
    spec: ModelSpec | None
    mapped: dict[str, list[str]] = field(default_factory=dict)  # stored (global) name -> canonical names
    ignored: dict[str, str] = field(default_factory=dict)
    unmatched: dict[str, str] = field(default_factory=dict)
    problem: str = ""
    storage: list[str] = field(default_factory=list)  # how the weights are stored (quantized formats)

    @property
    def family(self) -> str:
        """The detected model family (gpt2, bloom, falcon, apertus, llama, ...), "" when unknown."""
        return self.spec.family if self.spec else ""

    @property
    def quirks(self) -> list[str]:
        """Layout quirks to flag: interleaved rotary, padded vocab, layernorm-1p, tied head, ..."""
        return (self.spec.quirks() if self.spec else []) + self.storage

    @property
    def architecture(self) -> str:
        """One line for a header: `llama · 32 layers · hidden 4096 · heads 32 / 8 KV · 8 experts top-2`."""
        s = self.spec
        if s is None:
            return ""
        return " · ".join([s.family, f"{s.layers} layers", f"hidden {s.hidden}", f"heads {s.heads} / {s.kv_heads} KV",
                           *([f"{s.experts} experts top-{s.topk}"] if s.moe else [])])

    def canonical_for(self, stored: str) -> str:
        if stored in self.mapped:
            return ", ".join(self.mapped[stored])
        if stored in self.ignored:
            return f"ignored ({self.ignored[stored]})"
        if stored in self.unmatched:
            near = self.unmatched[stored]
            return "unmatched" + (f" (nearest rule: {near})" if near else "")
        return "—"


def canonical_view(ckpt: Checkpoint) -> CanonicalView:
    try:
        source = open_source(ckpt)
        acc = source.account()
    except (SpecError, CheckpointError, KeyError, ValueError) as exc:
        return CanonicalView(None, problem=str(exc))
    return CanonicalView(source.spec, acc.mapped, acc.ignored, acc.unmatched, storage=source.storage_quirks())
