"""Meta original checkpoints (`consolidated.NN.pth` + `params.json`) as canonical tensors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptscope.inspectors.dtypes import DTYPES

from ckptscope.inspectors.model import Checkpoint, TensorInfo

from ..ops import rotary_to_half
from ..rules import meta as rules
from ..row import Row, gather
from ..shards import Geometry
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, groups

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too


class MetaSource(CanonicalSource):
    kind = "meta"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "", interleaved: bool = True) -> None:
        self.ckpt = ckpt
        self.index: dict[str, list[TensorInfo]] = {}
        for t in sorted(ckpt.model_tensors(), key=lambda t: t.ranks.tp or 0):
            self.index.setdefault(t.name, []).append(t)
        self.interleaved = interleaved
        self.spec = spec or self._spec(true_vocab, vocab_note)
        embed = self.index.get("tok_embeddings.weight")
        by_dim = bool(embed) and len(embed) > 1 and embed[0].shape[1] != self.spec.hidden
        self.embed_row = rules.EMBED_BY_DIM if by_dim else rules.EMBED_BY_VOCAB

    def _spec(self, true_vocab: int | None, vocab_note: str) -> ModelSpec:
        params = self.ckpt.metadata.get("params") or {}
        try:
            hidden, layers, heads = int(params["dim"]), int(params["n_layers"]), int(params["n_heads"])
        except (KeyError, TypeError, ValueError):
            raise SpecError("params.json lacks dim / n_layers / n_heads") from None
        w1 = self.index.get("layers.0.feed_forward.w1.weight")
        embed = self.index.get("tok_embeddings.weight")
        if not w1 or not embed:
            raise SpecError("no layers.0.feed_forward.w1.weight / tok_embeddings.weight in the consolidated shards")
        vocab = int(params.get("vocab_size") or -1)
        if vocab <= 0:
            vocab = embed[0].shape[0] if embed[0].shape[1] != hidden or len(embed) == 1 else sum(t.shape[0] for t in embed)
        dtype = DTYPES.get(embed[0].dtype, DTYPES["float32"])
        spec = ModelSpec(
            family="llama", layers=layers, hidden=hidden, heads=heads, kv_heads=int(params.get("n_kv_heads") or heads),
            head_dim=hidden // heads, ffn=sum(t.shape[0] for t in w1), vocab=int(true_vocab or vocab),
            vocab_note=vocab_note or "from params.json / embedding shape", norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            rope_scaling=rules.llama3_scaling() if params.get("use_scaled_rope") else None,
            max_position_embeddings=int(params.get("max_seq_len") or 4096), tied="output.weight" not in self.index,
            dtype=dtype,
        )
        note = rules.family_note(spec)
        if note:
            spec.notes.append(note)
        return spec

    def _rows(self, group: int) -> list[tuple[Row, str, str]]:
        """(row, stored name, canonical name) of one group."""
        if group == PRE:
            return [(self.embed_row, "tok_embeddings.weight", "embed")]
        if group == self.spec.layers:
            return [(p, p.name, p.canon[0]) for p in rules.POST_ROWS if p.when(self.spec)]
        prefix = rules.LAYER_PREFIX.format(i=group)
        return [(p, prefix + p.name, f"layers.{group}.{p.canon[0]}") for p in rules.LAYER_ROWS]

    def read(self, group: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for param, name, canon in self._rows(group):
            infos = self.index.get(name)
            if not infos:
                raise SpecError(f"{self.ckpt.path}: missing tensor {name}")
            full = gather(param, shards := [self.ckpt.load(t) for t in infos], Geometry(self.spec, len(shards)))[0]
            heads = rules.ROTARY_ROWS.get(param.canon[0])
            if heads is not None and self.interleaved:
                full = rotary_to_half(full, heads(self.spec))
            out[canon] = full
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected = {name: [canon] for g in groups(self.spec) for _, name, canon in self._rows(g)}
        rules_ = list(rules.IGNORED_PATTERNS)
        acc = Accounting()
        acc.settle(self.index, expected, rules_, user_ignores)
        return acc

    def notes(self) -> list[str]:
        how = "permuted from Meta's interleaved pairs to rotate-half" if self.interleaved else "kept as stored (--rotary-layout half)"
        split = "hidden dim (Llama 1/2)" if self.embed_row is rules.EMBED_BY_DIM else "vocabulary"
        return [f"q/k rotary layout: {how}", f"embedding split over the {split}", *self.spec.notes]
