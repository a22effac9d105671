"""Hugging Face folders as canonical tensors, through the family's table (`families/`); MoE
families whose files hold transformers-5's fused experts are read from that form too, and
weights stored as MXFP4 (gpt-oss: `W_blocks` + `W_scales`) or as block-scaled FP8 (DeepSeek-V3:
`W` + `W_scale_inv`) are dequantized as they are read."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptscope.inspectors.model import Checkpoint, TensorInfo
from ckptscope.inspectors.safetensors_header import StEntry

from .. import families, fp8, vocab
from ..layouts import Identity
from ..mxfp4 import dequantize, quantized_pairs
from ..spec import ModelSpec, SpecError
from .base import Accounting, CanonicalSource, groups
from .grouped_read import read_grouped, worth_grouping

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too


class HfSource(CanonicalSource):
    kind = "hf"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None) -> None:
        self.ckpt = ckpt
        config = ckpt.metadata.get("config")
        if spec is None:
            if not isinstance(config, dict):
                raise SpecError(f"{ckpt.path}: no config.json; pass --config FILE")
            spec = families.spec_from_hf_config(config)
        self.family = families.family(spec.family)
        self.index = {t.name: t for t in ckpt.model_tensors()}
        mtp = self.family.layer_prefix.format(i=spec.layers)
        if spec.mtp and not any(n.startswith(mtp) for n in self.index):  # declared, then stripped from the files
            note = f"config declares {spec.mtp} multi-token-prediction module(s), the files hold none ({mtp}*): written as none"
            spec = spec.with_(mtp_layers=0, notes=[*spec.notes, note])
        self.spec = spec
        self.mxfp4 = {name: pair for name, pair in quantized_pairs(self.index).items() if name not in self.index}
        self.fp8 = {n: pair for n, pair in fp8.quantized_pairs(self.index).items()  # a scale beside a float8 weight only
                    if self.index[n].dtype.startswith("float8")}
        self.fp8_block = fp8.block_size(config if isinstance(config, dict) else None)
        unscaled = next((n for n, t in self.index.items() if t.dtype.startswith("float8") and n not in self.fp8), None)
        if unscaled is not None:  # its scale lives elsewhere or nowhere: reading it as is would be a wrong model
            raise SpecError(f"{ckpt.path}: {unscaled} is stored as {self.index[unscaled].dtype} without a weight_scale_inv beside it")
        form = self.family.fused_experts
        self.fused = form is not None and any(n.endswith(form.gate_up) for n in self.index)
        self._lay_out()

    def _lay_out(self) -> None:
        """The stored tensors read per streaming group, from the spec."""
        spec = self.spec
        self.entries: dict[int, list[families.HfEntry]] = {g: [] for g in groups(spec)}
        for entry in families.hf_entries(spec):
            if not entry.canon:
                continue  # a constant buffer (rebuilt on write), accounted as ignored
            if self.fused and any(".experts." in c or c.endswith(".router") for c in entry.canon):
                continue  # read from the fused tensors instead
            self.entries[entry.group].append(entry)
        self.shapes = spec.canonical_shapes()
        self.ops = {e.name: e.op for entries in self.entries.values() for e in entries}

    def read(self, group: int) -> dict[str, torch.Tensor]:
        fused = self.fused and group in self._fused_layers()
        batch = self._read_batch([e.name for e in self.entries[group]] + (list(self._fused_names(group)) if fused else []))
        out: dict[str, torch.Tensor] = {}
        for entry in self.entries[group]:
            stored = self._stored(entry.name, batch)
            parts = entry.op.unpack(stored, [self.shapes[c] for c in entry.canon], self.spec)
            out.update(zip(entry.canon, parts))
        if fused:
            out.update(self._read_fused(group, batch))
        return out

    def drop_mtp(self) -> None:
        super().drop_mtp()
        self._lay_out()

    def mtp_copy_mismatches(self) -> list[str]:
        """Each MTP module's `embed_tokens` / `shared_head.head` against the model's own, one pair in
        memory at a time."""
        own = {c: e.name for e in (*self.entries[-1], *self.entries[self.spec.layers]) for c in e.canon}
        out = []
        for k in range(self.spec.mtp):
            for entry in self.entries[self.spec.layers + 1 + k]:
                shared = entry.canon[0].split(".", 2)[2]
                if shared in vocab.MTP_SHARED and shared in own and not torch.equal(self._stored(entry.name), self._stored(own[shared])):
                    out.append(f"{entry.name} differs from {own[shared]}")
        return out

    def _read_batch(self, names: list[str]) -> dict[str, torch.Tensor]:
        """A group of many small plain tensors (an MoE layer) read into one buffer (grouped_read.py)."""
        plain = [self.index[n].source for n in names if n in self.index and n not in self.fp8 and n not in self.mxfp4]
        entries = [s for s in plain if isinstance(s, StEntry)]
        return read_grouped(entries) if len(entries) == len(plain) and worth_grouping(entries) else {}

    def _stored(self, name: str, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The stored tensor of a table name (dequantized to the model's dtype when kept as MXFP4)."""
        if batch and name in batch:
            return batch[name]
        if name in self.mxfp4:
            blocks, scales = (self._load(self.index[n]) for n in self.mxfp4[name])
            return dequantize(blocks, scales, self.spec.dtype)
        if name not in self.index:
            raise SpecError(f"{self.ckpt.path}: missing tensor {name}")
        if name in self.fp8:
            weight, scale = (self._load(self.index[n]) for n in self.fp8[name])
            try:
                return fp8.dequantize(weight, scale, self.fp8_block, self.spec.dtype)
            except ValueError as exc:
                raise SpecError(f"{self.ckpt.path}: {name}: {exc}") from None
        return self._load(self.index[name])

    def _load(self, info: TensorInfo) -> torch.Tensor:
        """A safetensors tensor's source is its validated header entry: one positioned read (per
        tensor `safe_open`, a header parse + mmap + copy, cost more than the data of small experts)."""
        return self.ckpt.load(info)

    def _fused_layers(self) -> dict[int, tuple[int, str]]:
        """Streaming group -> (stored layer index, canonical prefix) of every MoE layer, MTP modules' included."""
        spec = self.spec
        out = {i: (i, f"layers.{i}.") for i in range(spec.layers) if spec.layer_spec(i).moe}
        if spec.mtp_spec().moe:
            out.update({spec.layers + 1 + k: (spec.layers + k, f"mtp.{k}.") for k in range(spec.mtp)})
        return out

    def _fused_names(self, group: int) -> dict[str, list[str]]:
        """Stored fused name -> canonical pattern names of a MoE layer's group (router included)."""
        form = self.family.fused_experts
        assert form is not None
        stored, canon_prefix = self._fused_layers()[group]
        prefix = self.family.layer_prefix.format(i=stored)
        out = {prefix + form.router: [canon_prefix + "router"]}
        out.update({prefix + name: [canon_prefix + c for c in canon] for name, canon in form.rows()})
        return out

    def _read_fused(self, i: int, batch: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, canon in self._fused_names(i).items():
            stored = self._stored(name, batch)
            if len(canon) == 1 and "{e}" not in canon[0]:
                out[canon[0]] = stored
                continue
            for e in range(self.spec.experts):
                for c, part in zip(canon, torch.chunk(stored[e], len(canon), dim=0)):
                    out[c.format(e=e)] = part.contiguous()
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        expected: dict[str, list[str]] = {}
        for group in groups(self.spec):
            for entry in self.entries[group]:
                for name in self.mxfp4.get(entry.name) or self.fp8.get(entry.name) or (entry.name,):
                    expected.setdefault(name, []).extend(entry.canon)
        if self.fused:
            for group in self._fused_layers():
                for name, canon in self._fused_names(group).items():
                    expected[name] = [c.replace("{e}", "*") for c in canon]
        rules = list(families.hf_ignored(self.spec))
        if self.spec.tied:
            rules.append(r"^lm_head\.weight$")  # tied: the head is the embedding
        acc = Accounting()
        acc.settle(self.index, expected, rules, user_ignores)
        return acc

    def stored_as_canonical(self, name: str) -> bool:
        """True when the stored tensor is its canonical tensor unchanged (an identity layout)."""
        return isinstance(self.ops.get(name), Identity)

    def notes(self) -> list[str]:
        return list(self.spec.notes)

    def storage_quirks(self) -> list[str]:
        out = []
        if self.fp8:
            dtypes = "/".join(sorted({self.index[w].dtype for w, _ in self.fp8.values()}))
            out.append(f"{len(self.fp8)} weights stored as {dtypes} with {self.fp8_block[0]}×{self.fp8_block[1]} block scales "
                       "(weight_scale_inv), dequantized on read")
        if self.mxfp4:
            out.append(f"{len(self.mxfp4)} weights stored as MXFP4 (_blocks + _scales, 32-value groups), dequantized on read")
        return out
