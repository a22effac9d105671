"""Hugging Face writer: sharded safetensors + index, config.json, generation_config.json, tokenizer.

Shards are planned from the spec before anything is read (model order, `max_shard_bytes`), so
each shard's header is written first and tensors stream into it as layers arrive.
"""

from __future__ import annotations

import json
import math
import shutil

import torch

from ..rules.hf import hf_names
from ..sources import group_canon
from ..spec import hf_config_from_spec
from .base import PlannedFile, Writer
from .safetensors_stream import SafetensorsStreamWriter

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
INDEX = "model.safetensors.index.json"


class HfWriter(Writer):
    def __init__(self, spec, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, opts)
        shapes = spec.canonical_shapes()
        self.names = hf_names(spec)  # canonical -> HF, model order
        self.shards: list[list[str]] = [[]]
        size = 0
        for canon in self.names:
            nbytes = math.prod(shapes[canon]) * self.dtype.itemsize
            if self.shards[-1] and size + nbytes > opts.max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(canon)
            size += nbytes
        n = len(self.shards)
        self.shard_files = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self.shard_of = {c: k for k, names in enumerate(self.shards) for c in names}
        self.shapes = shapes
        self._open: dict[int, SafetensorsStreamWriter] = {}

    def files(self) -> list[PlannedFile]:
        out = [PlannedFile(f, len(names), sum(math.prod(self.shapes[c]) for c in names) * self.dtype.itemsize)
               for f, names in zip(self.shard_files, self.shards)]
        out += [PlannedFile(n, 0, 0) for n in ("config.json", "generation_config.json")]
        if len(self.shards) > 1:
            out.append(PlannedFile(INDEX, 0, 0))
        return out

    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        assert self.folder is not None
        for canon in group_canon(self.spec, group):
            k = self.shard_of[canon]
            if self.shard_files[k] in self.done_files:  # --resume: this shard is already complete
                continue
            writer = self._open.get(k)
            if writer is None:
                entries = [(self.names[c], self.dtype, self.shapes[c]) for c in self.shards[k]]
                writer = self._open[k] = SafetensorsStreamWriter(self.folder / self.shard_files[k], entries)
            writer.write(self.names[canon], tensors[canon].to(self.dtype))
            if writer.done:
                writer.close()
                del self._open[k]

    def close(self) -> None:
        assert self.folder is not None
        if self._open:
            raise RuntimeError(f"shards left incomplete: {sorted(self._open)}")
        config = hf_config_from_spec(self.spec.with_(dtype=self.dtype))
        (self.folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = {k: v for k, v in (("bos_token_id", self.spec.bos_token_id), ("eos_token_id", self.spec.eos_token_id)) if v is not None}
        generation["_from_model_config"] = True
        (self.folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if self.opts.tokenizer:
            for name in TOKENIZER_FILES:
                src = self.opts.tokenizer / name
                if src.is_file():
                    shutil.copy2(src, self.folder / name)
        if len(self.shards) > 1:  # the index declares the sharded output complete: write it last
            total = sum(math.prod(self.shapes[c]) for c in self.names) * self.dtype.itemsize
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted((self.names[c], self.shard_files[self.shard_of[c]]) for c in self.names))}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        for writer in self._open.values():
            writer._fh.close()
        self._open.clear()

