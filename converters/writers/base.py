"""What every target writer provides: a file plan up front, then streaming group writes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..spec import ModelSpec


@dataclass(frozen=True)
class Unit:
    """Output files that are complete together, and the groups that feed them: what `--resume`
    keeps when every file of it validates, and what one `--distributed` rank writes whole."""

    kind: str  # "safetensors" | "torch" (validated on resume) | "all" (one unit: the whole output)
    files: tuple[str, ...]
    groups: frozenset[int]


@dataclass(frozen=True)
class PlannedFile:
    rel: str
    tensors: int
    nbytes: int


@dataclass
class TargetOptions:
    format: str  # hf | megatron | megatron-dist | nxd
    tp: int = 1
    pp: int = 1
    ep: int = 1
    pp_layers: list[int] | None = None
    dtype: torch.dtype | None = None  # None: keep the source dtype
    megatron_spec: str = "local"  # local | te
    iteration: int = 1
    max_shard_bytes: int = 5 * 10**9
    tokenizer: Path | None = None  # HF folder, tokenizer.model or vocab.json (see converters/tokenizers.py)
    tokenizer_root: Path | None = None  # resolve the tokenizer named in Megatron args inside this folder
    vocab_extra_ids: int = 0  # append <extra_id_0..N-1> to the tokenizer
    special_tokens: dict[str, str] = field(default_factory=dict)  # e.g. {"eos": "<|im_end|>"}
    tokenizer_source: Any = None  # tokenizers.TokenizerSource, resolved by make_plan
    make_vocab_size_divisible_by: int | None = None
    extra_args: dict = field(default_factory=dict)
    # NxD target (`--to nxd`)
    nxd_style: str = "hf"  # hf | megatron naming inside the shards
    fuse_qkv: bool = False  # hf style: one `qkv_proj.weight_qkv` instead of weight_q/k/v
    kv_size_multiplier: int = 1  # KV heads replicated this many times (TP > KV heads)
    xser: bool = False  # torch_xla xser layout (tensor files + references)
    nxd_tag: str = ""  # tag folder name; default step_<iteration>
    # engine (not part of the output): threads reading groups ahead of the writer (converters/pipeline.py)
    workers: int = 1


class Writer(ABC):
    """Receives canonical tensors group by group (embeddings, layers in order, head)."""

    def __init__(self, spec: ModelSpec, opts: TargetOptions) -> None:
        self.spec = spec
        self.opts = opts
        self.dtype = opts.dtype or spec.dtype
        self.folder: Path | None = None
        self.done_files: set[str] = set()  # --resume: complete files already on disk (writers that support it skip them)
        # False on torchrun ranks other than 0: close() finishes this rank's files but writes no
        # index / config / completion marker (rank 0 does, once every rank is done)
        self.finalize = True

    @abstractmethod
    def files(self) -> list[PlannedFile]:
        """Every file the writer will produce, with tensor counts and sizes."""

    def open(self, folder: Path) -> None:
        self.folder = folder

    @abstractmethod
    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Finish files; write the marker that declares the output complete last."""

    def abort(self) -> None:
        """Release open files after a failure (the folder itself is removed by the caller)."""

    def notes(self) -> list[str]:
        return []

    def resume_units(self, groups: list[int]) -> list[Unit]:
        """Units a resumed conversion may keep (empty: this target restarts from scratch)."""
        return []

    def ownership_units(self, groups: list[int]) -> list[Unit]:
        """Units that one `--distributed` rank writes whole (default: the whole output, one rank)."""
        return [Unit("all", tuple(f.rel for f in self.files()), frozenset(groups))]


class StagedWriter(Writer):
    """A writer of one file per rank that keeps only the current pipeline stage's files open.

    Groups arrive in order, so a stage's files are finished when the first group of the next
    stage arrives (and by `close`). Subclasses open and finish one stage's files."""

    def __init__(self, spec: ModelSpec, opts: TargetOptions) -> None:
        super().__init__(spec, opts)
        self._stage = -1

    def _enter_stage(self, stage: int) -> None:
        if stage == self._stage:
            return
        self._finish_stage()
        assert self.folder is not None
        self._stage = stage
        self._open_stage(stage)

    @abstractmethod
    def _open_stage(self, stage: int) -> None: ...

    @abstractmethod
    def _finish_stage(self) -> None:
        """Finish every open file of the current stage (nothing when none is open)."""
