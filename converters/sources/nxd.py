"""NxD (Neuron) checkpoints as canonical tensors: any TP/PP/EP, both naming styles, every QKV form.

NxD files carry no architecture, so the spec comes from `--config` (an HF config.json, as NxD's
own converter needs). The attention form is read off the names on disk, and
`kv_size_multiplier` off the KV row count per rank (KV rows × TP > kv_heads × head_dim means
the KV heads were replicated and the Q heads reordered; the rows' `Heads` cuts undo both).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptscope.inspectors.formats.nxd import guess_style
from ckptscope.inspectors.model import Checkpoint, TensorInfo

from ..row import Row, expert_canon, gather_stacked
from ..rules import nxd as rules
from ..shards import Geometry
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, groups
from .tp_read import read_rows

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

NEEDS_CONFIG = "NxD checkpoints carry no architecture: pass --config with the model's HF config.json"
Expected = tuple[Row, str, list[str]]


class NxdSource(CanonicalSource):
    kind = "nxd"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "") -> None:
        if spec is None:
            raise SpecError(NEEDS_CONFIG)
        if problems := rules.check_spec(spec):
            raise SpecError("; ".join(problems))
        self.ckpt = ckpt
        self.index: dict[str, dict[tuple[int, int], TensorInfo]] = {}
        for t in ckpt.model_tensors():
            self.index.setdefault(t.name, {}).setdefault((t.ranks.ep or 0, t.ranks.tp or 0), t)
        self.style = ckpt.metadata.get("nxd", {}).get("style") or guess_style(self.index)
        self.tp, self.ep = ckpt.parallel.tp, ckpt.parallel.ep
        embed = self._infos(rules.stored_name(rules.GLOBAL_PARAMS[0][0].name, self.style))
        self.spec = spec.with_(dtype=_dtype(embed[0])) if embed else spec
        self.form = self._detect_form()
        self.geo = Geometry(self.spec, self.tp, self.ep, self._detect_kv_mult())
        if embed and sum(t.shape[0] for t in embed) != self.spec.vocab:
            raise SpecError(f"embedding has {sum(t.shape[0] for t in embed)} rows, config.json says vocab_size {self.spec.vocab}")

    # ----- names --------------------------------------------------------------------------
    def _name(self, param: Row, layer: int | None) -> str:
        full = param.name if layer is None else rules.LAYER_PREFIX.format(i=layer) + param.name
        return rules.stored_name(full, self.style)

    def _detect_form(self) -> str:
        first = next((i for i in range(self.spec.layers) if self._infos(self._name(rules.LAYER_PARAMS[0], i))), 0)
        for form, rows in rules.ATTENTION_FORMS.items():
            if all(self._name(p, first) in self.index for p in rows):
                return form
        raise SpecError(f"no known attention projection names for layer {first} ({self.style}-style names); "
                        f"expected one of: {', '.join(rows[0].name for rows in rules.ATTENTION_FORMS.values())}")

    def _detect_kv_mult(self) -> int:
        """Replication implied by the first attention row whose row count tells it."""
        for i in range(self.spec.layers):
            for param in rules.ATTENTION_FORMS[self.form]:
                infos = self._infos(self._name(param, i))
                if infos:
                    mult = kv_multiplier(param, infos[0].shape[0], Geometry(self.spec, self.tp))
                    if mult is not None:
                        return mult
        return 1


    def _infos(self, name: str) -> list[TensorInfo]:
        """One shard per TP rank of a non-expert tensor (the lowest EP rank that holds it)."""
        by_rank = self.index.get(name, {})
        eps = sorted({ep for ep, _ in by_rank})
        return [by_rank[(eps[0], tp)] for tp in range(self.tp) if (eps[0], tp) in by_rank] if eps else []

    def _expected(self, group: int) -> list[Expected]:
        spec = self.spec
        if group in (PRE, spec.layers):
            stage = "first" if group == PRE else "last"
            return [(p, self._name(p, None), list(p.canon)) for p, where in rules.global_params(spec) if where == stage]
        out: list[Expected] = []
        prefix = f"layers.{group}."
        for param in rules.layer_params(spec, self.form):
            canon = expert_canon(param, spec, prefix) if param.stacked else [prefix + c for c in param.canon]
            out.append((param, self._name(param, group), canon))
        return out

    # ----- reading ------------------------------------------------------------------------
    def read(self, group: int) -> dict[str, torch.Tensor]:
        """The group's canonical tensors; plain TP cuts are read in place (`tp_read.read_rows`)."""
        out: dict[str, torch.Tensor] = {}
        rows = []
        for param, name, canon in self._expected(group):
            if param.stacked:
                shards = [[self._load(name, ep, tp) for tp in range(self.tp)] for ep in range(self.ep)]
                out.update(zip(canon, gather_stacked(param, shards, self.geo)))
                continue
            infos = self._infos(name)
            if len(infos) != self.tp:
                raise SpecError(f"{self.ckpt.path}: {name} is stored on {len(infos)} of {self.tp} TP ranks")
            rows.append((param, canon, infos))
        out.update(read_rows(rows, self.spec, self.ckpt.load, self.geo))
        return out

    def _load(self, name: str, ep: int, tp: int) -> torch.Tensor:
        info = self.index.get(name, {}).get((ep, tp))
        if info is None:
            raise SpecError(f"{self.ckpt.path}: {name} missing on ep rank {ep}, tp rank {tp}")
        return self.ckpt.load(info)

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected = {name: canon for g in groups(self.spec) for _, name, canon in self._expected(g)}
        acc = Accounting()
        acc.settle(self.index, expected, rules.IGNORED_PATTERNS, user_ignores)
        return acc

    def notes(self) -> list[str]:
        return [f"NxD {self.style}-style names, attention form {self.form}, kv_size_multiplier {self.geo.kv_mult}",
                f"TP{self.tp} EP{self.ep}; architecture from --config"]


def _dtype(info: TensorInfo) -> torch.dtype:
    return getattr(torch, info.dtype)


def kv_multiplier(row: Row, shard_rows: int, geo: Geometry) -> int | None:
    """kv_size_multiplier implied by one piece's row count (None when the row does not tell):
    KV rows per rank × TP = kv_heads × head_dim × multiplier."""
    kv_rows = row.shard.kv_rows(shard_rows, geo)
    if kv_rows is None:
        return None
    spec = geo.spec
    mult = kv_rows * geo.tp / (spec.kv_heads * spec.head_dim)
    if mult < 1 or mult != int(mult):
        raise SpecError(f"{row.name}: {shard_rows} rows per rank do not fit {spec.heads} heads / {spec.kv_heads} KV heads "
                        f"of size {spec.head_dim} at TP={geo.tp}")
    return int(mult)
