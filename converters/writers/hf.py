"""Hugging Face writer: sharded safetensors + index, config.json, generation_config.json, tokenizer.

Shards are planned from the spec before anything is read (model order, `max_shard_bytes`), so
each shard's header is written first and tensors stream into it as layers arrive.
"""

from __future__ import annotations

import json
import math

import torch

from .. import vocab
from ..families import HfEntry, hf_config_from_spec, hf_entries
from ..sources.base import group_of
from .base import PlannedFile, Unit, Writer
from .output import copy_into
from .safetensors_stream import SafetensorsStreamWriter

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
INDEX = "model.safetensors.index.json"


class HfWriter(Writer):
    def __init__(self, spec, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, opts)
        shapes = spec.canonical_shapes()
        # config.json now, not after the tensors: a spec the family's HF class cannot hold is refused by the plan
        self.config = hf_config_from_spec(spec.with_(dtype=self.dtype))  # a table lookup: no transformers import
        self.entries = hf_entries(spec)  # stored HF tensors, model order
        self.stored_shape = {e.name: e.op.shape([shapes[c] for c in e.canon], spec) for e in self.entries}
        # a buffer the model keeps in fp32 (DeepSeek-V3's correction bias) is not rounded to the target dtype
        self.stored_dtype = {e.name: torch.float32 if e.canon and all(vocab.kept_fp32(c) for c in e.canon) else self.dtype
                             for e in self.entries}
        planned: list[list[HfEntry]] = [[]]
        size = 0
        for entry in self.entries:
            nbytes = math.prod(self.stored_shape[entry.name]) * self.stored_dtype[entry.name].itemsize
            if planned[-1] and entry.canon and size + nbytes > opts.max_shard_bytes:  # constants stay with their layer
                planned.append([])
                size = 0
            planned[-1].append(entry)
            size += nbytes
        self.planned = planned
        self.shards: list[list[str]] = [[c for e in entries for c in e.canon] for entries in planned]  # canonical, per shard
        n = len(planned)
        self.shard_files = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self.shard_of = {e.name: k for k, entries in enumerate(planned) for e in entries}
        self.by_group: dict[int, list[HfEntry]] = {}
        for entry in self.entries:
            self.by_group.setdefault(entry.group, []).append(entry)
        self.shapes = shapes
        self._open: dict[int, SafetensorsStreamWriter] = {}

    def resume_units(self, groups: list[int]) -> list[Unit]:
        """One unit per safetensors shard (its header says whether it was fully written)."""
        return [Unit("safetensors", (name,), frozenset(group_of(self.spec, c) for c in canons))
                for name, canons in zip(self.shard_files, self.shards)]

    def ownership_units(self, groups: list[int]) -> list[Unit]:
        return self.resume_units(groups)

    def files(self) -> list[PlannedFile]:
        out = [PlannedFile(f, len(entries), sum(math.prod(self.stored_shape[e.name]) * self.stored_dtype[e.name].itemsize
                                                for e in entries)) for f, entries in zip(self.shard_files, self.planned)]
        out += [PlannedFile(n, 0, 0) for n in ("config.json", "generation_config.json")]
        if len(self.shards) > 1:
            out.append(PlannedFile(INDEX, 0, 0))
        return out

    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        assert self.folder is not None
        for entry in self.by_group.get(group, []):
            k = self.shard_of[entry.name]
            if self.shard_files[k] in self.done_files:  # --resume: this shard is already complete
                continue
            writer = self._open.get(k)
            if writer is None:
                header = [(e.name, self.stored_dtype[e.name], self.stored_shape[e.name]) for e in self.planned[k]]
                writer = self._open[k] = SafetensorsStreamWriter(self.folder / self.shard_files[k], header)
            stored = entry.op.pack([tensors[c] for c in entry.canon], self.spec)
            writer.write(entry.name, stored.to(self.stored_dtype[entry.name]))
            if writer.done:
                writer.close()
                del self._open[k]

    def close(self) -> None:
        assert self.folder is not None
        if self._open:
            raise RuntimeError(f"shards left incomplete: {sorted(self._open)}")
        if not self.finalize:
            return
        (self.folder / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        generation = {k: v for k, v in (("bos_token_id", self.spec.bos_token_id), ("eos_token_id", self.spec.eos_token_id)) if v is not None}
        generation["_from_model_config"] = True
        (self.folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if self.opts.tokenizer_source is not None:
            from ..tokenizers import write as write_tokenizer

            write_tokenizer(self.opts.tokenizer_source, self.folder, copy_into)
        elif self.opts.tokenizer:
            for name in TOKENIZER_FILES:
                src = self.opts.tokenizer / name
                if src.is_file():
                    copy_into(src, self.folder / name)
        if len(self.shards) > 1:  # the index declares the sharded output complete: write it last
            total = sum(math.prod(shape) * self.stored_dtype[name].itemsize for name, shape in self.stored_shape.items())
            index = {"metadata": {"total_size": total},
                     "weight_map": dict(sorted((e.name, self.shard_files[self.shard_of[e.name]]) for e in self.entries))}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        for writer in self._open.values():
            writer._fh.close()
        self._open.clear()

