"""Readers from inspected checkpoints to canonical tensors, one group at a time.

A group is the unit of streaming: `PRE` (embedding), each layer `0..L-1`, then the final norm
and LM head (numbered L). `read(group)` gathers exactly that group's tensors from every shard
that holds them. `account()` explains every stored tensor: mapped, ignored by rule, or unmatched.
A new source format is one module here plus a line in `SOURCES`.
"""

from __future__ import annotations

from typing import Any

from ckptscope.inspectors.model import Checkpoint

from ..discovery import find_bridge_model_config, find_hf_config
from ..families import spec_from_hf_config
from ..megatron_args import args_from_transformer_config, spec_from_megatron_args
from ..renames import Renames, renamed_view
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, group_canon, group_label, groups
from .dcp import DcpSource
from .deepspeed import DeepSpeedSource
from .deepspeed_universal import UniversalSource
from .hf import HfSource
from .megatron_dist import MegatronDistSource
from .megatron_torch import MegatronTorchSource
from .meta import MetaSource
from .nxd import NxdSource

SOURCES: dict[str, type[CanonicalSource]] = {
    "hf": HfSource,
    "megatron-torch": MegatronTorchSource,
    "megatron-dist": MegatronDistSource,
    "nxd": NxdSource,
    "deepspeed": DeepSpeedSource,
    "meta": MetaSource,
    "dcp": DcpSource,
    "deepspeed-universal": UniversalSource,
}

ROTARY_LAYOUTS = ("auto", "half", "interleaved")


def open_source(ckpt: Checkpoint, *, config: dict[str, Any] | None = None, true_vocab: int | None = None,
                vocab_note: str = "", from_optimizer_fp32: bool = False, rotary_layout: str = "auto",
                renames: Renames | None = None) -> CanonicalSource:
    """The canonical view of an inspected checkpoint (`config` overrides the architecture;
    `from_optimizer_fp32` rebuilds DeepSpeed weights from the ZeRO optimizer partitions;
    `rotary_layout` overrides how the source stores q/k: `half` (rotate-half, HF / Megatron-Core
    default) or `interleaved` (Meta, `--rotary-interleaved`, Megatron-LLM); `auto` detects;
    `renames` (`--rename` / `--map`) rename the stored names first, whatever the format)."""
    if rotary_layout not in ROTARY_LAYOUTS:
        raise SpecError(f"--rotary-layout {rotary_layout}: choose {', '.join(ROTARY_LAYOUTS)}")
    if renames and from_optimizer_fp32:  # rebuilt weights take their names from the optimizer's own records
        raise SpecError("--rename / --map do not apply to weights rebuilt with --from-optimizer-fp32 yet")
    view = renamed_view(ckpt, renames or Renames())
    source = _open(view.ckpt, config, true_vocab, vocab_note, from_optimizer_fp32, rotary_layout)
    source.renamed = view.renamed
    if rotary_layout == "auto" or isinstance(source, MetaSource):
        return source
    if isinstance(source, HfSource):
        if rotary_layout == "interleaved":
            raise SpecError("HF checkpoints store q/k in rotate-half order; --rotary-layout interleaved applies to Meta / Megatron sources")
        return source
    source.spec = source.spec.with_(rotary_interleaved=rotary_layout == "interleaved")
    inner = getattr(source, "inner", None)  # DeepSpeed reading its module through another source
    if inner is not None:
        inner.spec = inner.spec.with_(rotary_interleaved=source.spec.rotary_interleaved)
    return source


def _open(ckpt: Checkpoint, config: dict[str, Any] | None, true_vocab: int | None, vocab_note: str,
          from_optimizer_fp32: bool, rotary_layout: str) -> CanonicalSource:
    cls = SOURCES.get(ckpt.kind)
    if cls is None:
        raise SpecError(f"converting from {ckpt.kind} is not supported yet (supported: {', '.join(SOURCES)})")
    if from_optimizer_fp32 and cls is not DeepSpeedSource:
        raise SpecError(f"--from-optimizer-fp32 applies to DeepSpeed checkpoints, not {ckpt.kind}")
    architecture_from = "--config" if config else ""
    if config is None and (issubclass(cls, (NxdSource, DcpSource)) or (cls is DeepSpeedSource and not ckpt.metadata.get("args"))):
        found = find_hf_config(ckpt)
        if found is not None:
            config, where = found
            architecture_from = str(where)
    spec = spec_from_hf_config(config) if config else None
    if spec is None and cls in (MegatronDistSource, MegatronTorchSource) and not ckpt.metadata.get("args"):
        bridge = find_bridge_model_config(ckpt)  # Megatron-Bridge: the TransformerConfig in run_config.yaml
        if bridge is not None:
            spec = spec_from_megatron_args(args_from_transformer_config(bridge[0]), true_vocab=true_vocab, vocab_note=vocab_note)
            architecture_from = str(bridge[1])
    source = _construct(cls, ckpt, spec, true_vocab, vocab_note, from_optimizer_fp32, rotary_layout)
    source.architecture_from = architecture_from or source.architecture_from
    return source


def _construct(cls: type[CanonicalSource], ckpt: Checkpoint, spec: ModelSpec | None, true_vocab: int | None, vocab_note: str,
               from_optimizer_fp32: bool, rotary_layout: str) -> CanonicalSource:
    if cls is HfSource:
        source = HfSource(ckpt, spec)
        if true_vocab is not None and true_vocab != source.spec.vocab:
            raise SpecError(f"--true-vocab-size {true_vocab} disagrees with config.json vocab_size {source.spec.vocab}")
        return source
    if spec is not None and (spec.mla or spec.dense_layers) and cls is not DcpSource:  # their tables hold uniform GQA layers
        raise SpecError(f"{ckpt.kind} tables have no multi-head latent attention or dense layers among MoE ones: "
                        f"a {spec.family} model is read from HF (or HF-named DCP) folders only")
    if spec is not None and true_vocab is not None:
        spec = spec.with_(vocab=true_vocab, vocab_note=vocab_note or "--true-vocab-size")
    if cls is DeepSpeedSource:
        return DeepSpeedSource(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note, from_optimizer_fp32=from_optimizer_fp32)
    if cls is MetaSource:
        return MetaSource(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note, interleaved=rotary_layout != "half")
    return cls(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note)  # type: ignore[call-arg]


__all__ = ["PRE", "SOURCES", "Accounting", "CanonicalSource", "group_canon", "group_label", "groups", "open_source"]
