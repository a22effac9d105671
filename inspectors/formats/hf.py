"""Hugging Face folders: safetensors or pytorch_model.bin, single or sharded with an index."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..probing import Probe
from ..errors import CheckpointError, reading
from ..files import read_side_file, read_side_text
from ..model import Checkpoint, ShardFile, TensorInfo, dtype_name, relpath
from ..safetensors_header import read_header
from ..torchfile import LazyTensor, flatten, open_torch_file

if TYPE_CHECKING:
    import torch

SHARD_RE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$", re.ASCII)
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
CONFIG_FILES = ("config.json", "generation_config.json")


class _Index(msgspec.Struct):
    weight_map: dict[str, str]


_DECODE_INDEX = msgspec.json.Decoder(_Index)  # typed: a 100k-name index parses without a Python pass


@dataclass(slots=True)
class LazySource:
    """A tensor inside a torch.save file, read on demand."""

    tensor: LazyTensor

    def load(self) -> torch.Tensor:
        return self.tensor.load()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if SHARD_RE.match(p.name) and p.is_file())


class HfReader:
    kind = "hf"

    def probe(self, path: Path) -> Probe | None:
        if path.is_file():
            if path.suffix == ".safetensors" or SHARD_RE.match(path.name) or path.name in INDEX_NAMES:
                return Probe(self.kind, path, detail=path.suffix.lstrip("."))
            return None
        if not path.is_dir():
            return None
        weights = _weight_files(path)
        index = [n for n in INDEX_NAMES if (path / n).is_file()]
        if not weights and not index:
            loose = sorted(path.glob("*.safetensors"))
            if not loose:
                return None
            weights = loose
        kind = "safetensors" if any(p.suffix == ".safetensors" for p in weights) or index[:1] == [INDEX_NAMES[0]] else "bin"
        return Probe(self.kind, path, detail=f"{kind}, {len(weights)} file(s)")

    def open(self, probe: Probe) -> Checkpoint:
        path = probe.path
        folder = path if path.is_dir() else path.parent
        ckpt = Checkpoint(kind=self.kind, path=path)
        weights, index_file, weight_map = self._select_weights(path, folder, ckpt)
        for file in weights:
            self._index_file(ckpt, file, folder)
        if weight_map is not None and index_file is not None:
            self._check_index(ckpt, weight_map, index_file)
        if path.is_dir():
            self._add_side_files(ckpt, folder, weights, index_file)
        ckpt.format_detail = self._describe(weights)
        return ckpt

    # ------------------------------------------------------------------------------------
    def _select_weights(self, path: Path, folder: Path, ckpt: Checkpoint) -> tuple[list[Path], Path | None, dict[str, str] | None]:
        """The weight files to read, and the index (file and weight_map) when there is one."""
        if path.is_file() and path.name not in INDEX_NAMES:
            return [path], None, None
        index_file = path if path.is_file() else next((folder / n for n in INDEX_NAMES if (folder / n).is_file()), None)
        if index_file is not None:
            weight_map = self._read_index(index_file)
            files = [folder / f for f in sorted(set(weight_map.values()))]  # dedupe names first: 100k Paths are slow
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(folder / missing[0], f"missing shard named in {index_file.name} ({len(missing)} of {len(files)} missing)")
            return files, index_file, weight_map
        weights = _weight_files(folder) or sorted(folder.glob("*.safetensors"))
        st = [p for p in weights if p.suffix == ".safetensors"]
        if st and len(st) != len(weights):
            ckpt.warnings.append("both safetensors and .bin weights present; reading the safetensors files")
            weights = st
        sharded = [p for p in weights if "-of-" in p.name]
        if sharded:
            total = int(sharded[0].name.split("-of-")[1].split(".")[0])
            if len(sharded) != total:
                ckpt.warnings.append(f"{len(sharded)} of {total} shards present and no index file")
        return weights, None, None

    def _read_index(self, index_file: Path) -> dict[str, str]:
        raw = read_side_file(index_file, "index", "index")
        try:
            weight_map = _DECODE_INDEX.decode(raw).weight_map
        except msgspec.ValidationError:
            raise CheckpointError(index_file, "index has no valid 'weight_map'") from None
        except (msgspec.DecodeError, ValueError) as exc:
            raise CheckpointError(index_file, f"cannot read index: not valid JSON ({str(exc).splitlines()[0][:80]})") from None
        for shard in set(weight_map.values()):
            if "/" in shard or shard.startswith(".."):
                raise CheckpointError(index_file, f"weight_map names a file outside the folder: {shard[:60]!r}")
        return weight_map

    def _index_file(self, ckpt: Checkpoint, file: Path, folder: Path) -> None:
        rel = relpath(file, folder)
        ckpt.files.append(ShardFile(file, rel, file.stat().st_size, role="model"))
        if file.suffix == ".safetensors":
            header = read_header(file)
            ckpt.metadata.setdefault("safetensors_metadata", {})[rel] = header.metadata
            for entry in header.entries.values():
                ckpt.tensors.append(TensorInfo(entry.name, entry.shape, entry.dtype, rel, source=entry))
            return
        tf = open_torch_file(file)
        ckpt.placeholders.extend(tf.placeholders)
        obj = tf.obj
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        for name, value in flatten(obj):
            if isinstance(value, LazyTensor):
                ckpt.tensors.append(TensorInfo(name, value.shape, dtype_name(value.dtype), rel, source=LazySource(value)))

    def _check_index(self, ckpt: Checkpoint, weight_map: dict[str, str], index_file: Path) -> None:
        tensors = ckpt.tensors
        stored = {t.name: t.file for t in tensors}
        if len(stored) != len(tensors):
            ckpt.warnings.append(f"{len(tensors) - len(stored)} tensor name(s) stored in more than one shard")
        if stored == weight_map:  # the usual case: one C-level comparison
            return
        pairs = {(t.name, t.file) for t in tensors}
        absent = [n for n, f in weight_map.items() if (n, f) not in pairs]
        if absent:
            raise CheckpointError(index_file, f"{len(absent)} tensor(s) in weight_map not found in their shard, e.g. {absent[0]!r}")
        extra = [t.name for t in tensors if t.name not in weight_map]
        if extra:
            ckpt.warnings.append(f"{len(extra)} stored tensor(s) not listed in {index_file.name}, e.g. {extra[0]}")

    def _add_side_files(self, ckpt: Checkpoint, folder: Path, weights: list[Path], index_file: Path | None) -> None:
        taken = set(weights) | ({index_file} if index_file else set())
        if index_file:
            ckpt.files.append(ShardFile(index_file, index_file.name, index_file.stat().st_size, role="index"))
        for child in sorted(folder.iterdir()):
            if child in taken or not child.is_file():
                continue
            role = "config" if child.name in CONFIG_FILES else "tokenizer" if child.name in TOKENIZER_FILES else "other"
            ckpt.files.append(ShardFile(child, child.name, child.stat().st_size, role=role))
        for name, key in (("config.json", "config"), ("generation_config.json", "generation_config")):
            file = folder / name
            if file.exists():  # a FIFO or a device named config.json is refused, not skipped
                text = read_side_text(file, "json", name)
                with reading(file, "cannot read JSON"):
                    ckpt.metadata[key] = json.loads(text)
        tokenizer = [f.rel for f in ckpt.files if f.role == "tokenizer"]
        if tokenizer:
            ckpt.metadata["tokenizer_files"] = tokenizer
        if "config" not in ckpt.metadata:
            ckpt.warnings.append("no config.json: architecture unknown")

    @staticmethod
    def _describe(weights: list[Path]) -> str:
        kind = "safetensors" if weights and weights[0].suffix == ".safetensors" else "pytorch .bin"
        return f"{kind}, {len(weights)} shard{'s' if len(weights) != 1 else ''}"


READER = HfReader()


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture fields worth showing first."""
    keys = (
        "architectures", "model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
        "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
        "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
        "num_local_experts", "num_experts_per_tok", "torch_dtype", "dtype", "transformers_version",
    )
    return {k: config[k] for k in keys if k in config}
