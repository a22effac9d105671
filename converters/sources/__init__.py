"""Readers from inspected checkpoints to canonical tensors, one group at a time.

A group is the unit of streaming: `PRE` (embedding), each layer `0..L-1`, then the final norm
and LM head (numbered L). `read(group)` gathers exactly that group's tensors from every shard
that holds them. `account()` explains every stored tensor: mapped, ignored by rule, or unmatched.
A new source format is one module here plus a line in `SOURCES`. A source's module is imported
when a checkpoint of its kind is opened: an HF conversion loads no Megatron, DeepSpeed or NxD
tables (issue 17: start-up).
"""

from __future__ import annotations

from typing import Any

from ckptscope.inspectors.lazy import attribute
from ckptscope.inspectors.model import Checkpoint

from ..discovery import find_bridge_model_config, find_hf_config
from ..families import spec_from_hf_config
from ..megatron_args import args_from_transformer_config, spec_from_megatron_args
from ..renames import Renames, renamed_view
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, group_canon, group_label, groups

# inspector kind -> "module:Class" of its source in this package (imported on first use)
SOURCES: dict[str, str] = {
    "hf": "hf:HfSource",
    "megatron-torch": "megatron_torch:MegatronTorchSource",
    "megatron-dist": "megatron_dist:MegatronDistSource",
    "nxd": "nxd:NxdSource",
    "deepspeed": "deepspeed:DeepSpeedSource",
    "meta": "meta:MetaSource",
    "dcp": "dcp:DcpSource",
    "deepspeed-universal": "deepspeed_universal:UniversalSource",
}
# what some kinds do before their source is built
CONFIG_BESIDE = ("nxd", "dcp", "deepspeed-universal")  # architecture from an HF config.json near the checkpoint
MEGATRON = ("megatron-dist", "megatron-torch")  # Megatron-Bridge keeps it in run_config.yaml instead of args


def source_class(kind: str) -> type[CanonicalSource]:
    """The source class of an inspector kind, its module imported now."""
    if kind not in SOURCES:
        raise SpecError(f"converting from {kind} is not supported yet (supported: {', '.join(SOURCES)})")
    found: type[CanonicalSource] = attribute(__name__, SOURCES[kind])
    return found

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
    if rotary_layout == "auto" or view.ckpt.kind == "meta":
        return source
    if view.ckpt.kind == "hf":
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
    kind = ckpt.kind
    cls = source_class(kind)
    if from_optimizer_fp32 and kind != "deepspeed":
        raise SpecError(f"--from-optimizer-fp32 applies to DeepSpeed checkpoints, not {kind}")
    architecture_from = "--config" if config else ""
    if config is None and (kind in CONFIG_BESIDE or (kind == "deepspeed" and not ckpt.metadata.get("args"))):
        found = find_hf_config(ckpt)
        if found is not None:
            config, where = found
            architecture_from = str(where)
    spec = spec_from_hf_config(config) if config else None
    if spec is None and kind in MEGATRON and not ckpt.metadata.get("args"):
        bridge = find_bridge_model_config(ckpt)  # Megatron-Bridge: the TransformerConfig in run_config.yaml
        if bridge is not None:
            spec = spec_from_megatron_args(args_from_transformer_config(bridge[0]), true_vocab=true_vocab, vocab_note=vocab_note)
            architecture_from = str(bridge[1])
    source = _construct(cls, ckpt, spec, true_vocab, vocab_note, from_optimizer_fp32, rotary_layout)
    source.architecture_from = architecture_from or source.architecture_from
    return source


def _construct(cls: type[CanonicalSource], ckpt: Checkpoint, spec: ModelSpec | None, true_vocab: int | None, vocab_note: str,
               from_optimizer_fp32: bool, rotary_layout: str) -> CanonicalSource:
    kind = ckpt.kind
    if kind == "hf":
        source = cls(ckpt, spec)
        if true_vocab is not None and true_vocab != source.spec.vocab:
            raise SpecError(f"--true-vocab-size {true_vocab} disagrees with config.json vocab_size {source.spec.vocab}")
        return source
    if spec is not None and (spec.mla or spec.dense_layers) and kind != "dcp":  # their tables hold uniform GQA layers
        raise SpecError(f"{ckpt.kind} tables have no multi-head latent attention or dense layers among MoE ones: "
                        f"a {spec.family} model is read from HF (or HF-named DCP) folders only")
    if spec is not None and true_vocab is not None:
        spec = spec.with_(vocab=true_vocab, vocab_note=vocab_note or "--true-vocab-size")
    if kind == "deepspeed":
        return cls(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note, from_optimizer_fp32=from_optimizer_fp32)  # type: ignore[call-arg]
    if kind == "meta":
        return cls(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note, interleaved=rotary_layout != "half")
    return cls(ckpt, spec, true_vocab=true_vocab, vocab_note=vocab_note)  # type: ignore[call-arg]


__all__ = ["PRE", "SOURCES", "Accounting", "CanonicalSource", "group_canon", "group_label", "groups", "open_source", "source_class"]
