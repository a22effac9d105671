"""The plan: before a byte is written, account for every source tensor and every target file.

A plan is refused (`errors`) when a stored tensor is neither mapped nor ignored by a rule or an
`--ignore` glob, when an expected tensor is missing, or when the target layout cannot hold the
model (heads, query groups, FFN and vocab split over TP, layers over PP, experts over EP).

With a tokenizer, the source is wrapped in `tokenizers.VocabFit` when its vocabulary differs
from the tokenizer's size, whatever the source format: the plan notes say trimmed or padded.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptscope.inspectors import Checkpoint, detect
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.storage import as_path

from . import families
from .discovery import read_config
from .rename_advice import suggest_renames
from .renames import Renames
from .sources import Accounting, CanonicalSource, groups, open_source
from .tokenizers import TokenizerSource, VocabFit, classify, from_megatron_args, vocab_action
from .tokenizers import size as tokenizer_size
from .spec import SpecError
from .formats import TARGETS
from .writers import PlannedFile, TargetOptions, Writer

MAX_LISTED = 20


@dataclass
class Plan:
    source_path: Path
    ckpt: Checkpoint
    source: CanonicalSource
    target: TargetOptions
    writer: Writer
    accounting: Accounting
    files: list[PlannedFile]
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vocab_fit: tuple[int, int, int] | None = None  # (stored rows, trained rows, tokenizer size) when a tokenizer decides
    renamed: dict[str, str] = field(default_factory=dict)  # stored name -> name read (`--rename`, `--map`)
    suggested_renames: list[str] = field(default_factory=list)  # `--rename` rules that would place unmatched tensors

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def spec(self):  # type: ignore[no-untyped-def]
        return self.source.spec

    @property
    def groups(self) -> list[int]:
        return groups(self.spec)

    @property
    def dtype(self) -> Any:
        """The output dtype (the source's when the target refused the model and has no writer)."""
        return self.writer.dtype if self.writer is not None else (self.target.dtype or self.spec.dtype)

    @property
    def total_bytes(self) -> int:
        return sum(int(_numel(s)) for s in self.spec.canonical_shapes().values()) * self.dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        acc = self.accounting
        return {
            "source": {"path": str(self.source_path), "format": self.ckpt.kind, "layout": self.ckpt.parallel.as_dict()},
            "target": {"format": self.target.format, "tp": self.target.tp, "pp": self.target.pp, "ep": self.target.ep,
                       "pp_layers": self.target.pp_layers, "dtype": str(self.dtype).removeprefix("torch."),
                       "megatron_spec": self.target.megatron_spec},
            "spec": self.spec.summary(),
            "tensors": {"mapped": len(acc.mapped), "ignored": len(acc.ignored), "unmatched": len(acc.unmatched),
                        "missing": len(acc.missing)},
            "renamed": self.renamed,
            "suggested_renames": self.suggested_renames,
            "mapped": acc.mapped,
            "ignored": acc.ignored,
            "unmatched": acc.unmatched,
            "missing": acc.missing,
            "files": [{"path": f.rel, "tensors": f.tensors, "bytes": f.nbytes} for f in self.files],
            "total_bytes": self.total_bytes,
            "notes": self.notes,
            "warnings": self.warnings,
            "errors": self.errors,
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _tokenizer_source(target: TargetOptions, ckpt: Checkpoint) -> TokenizerSource | None:
    """The tokenizer to carry into the output: `--tokenizer`, or the one Megatron args name,
    found inside `--tokenizer-root`."""
    merges = None
    if target.tokenizer is not None:
        path, kind = classify(target.tokenizer)
        origin = "--tokenizer"
    elif target.tokenizer_root is not None:
        found = from_megatron_args(ckpt.metadata.get("args") or {}, Path(target.tokenizer_root))
        if found is None:
            raise CheckpointError(ckpt.path, "--tokenizer-root given but the checkpoint's args name no tokenizer (give --tokenizer)")
        path, kind, merges = found
        origin = "Megatron args"
    else:
        if target.vocab_extra_ids or target.special_tokens:
            raise CheckpointError(ckpt.path, "--vocab-extra-ids / --override-special-tokens need a tokenizer (--tokenizer or --tokenizer-root)")
        return None
    return TokenizerSource(path, kind, target.vocab_extra_ids, dict(target.special_tokens), origin, merges)


def option_conflicts(target: TargetOptions) -> list[str]:
    """Target options that do not go together (each option's own range is `options.py`'s)."""
    if target.megatron_spec == "megatron-llm" and target.format != "megatron":
        return ["--megatron-spec megatron-llm writes Megatron-LLM's torch format: use --to megatron"]
    return []


def _carry_mtp(source: CanonicalSource, target: TargetOptions) -> tuple[list[str], list[str]]:
    """Multi-token-prediction modules go where the target holds them (else the source drops them by
    a named rule); megatron-core shares the embedding and head with them, so copies must be equal.
    Returns (errors, notes)."""
    n = source.spec.mtp
    if not n or target.format not in TARGETS:
        return [], []
    fmt = TARGETS[target.format]
    if not fmt.holds_mtp or target.megatron_spec == "megatron-llm" or (fmt.name == "hf" and not families.family(source.spec.family).mtp):
        source.drop_mtp()  # (an HF family without MTP modules: transformers has no names for them)
        return [], []
    if fmt.whole_model:
        return [], [f"multi-token-prediction: {n} module(s) carried"]
    differ = source.mtp_copy_mismatches()
    if differ:
        shared = "megatron-core shares one embedding and head with its MTP modules"
        return [f"multi-token-prediction: {'; '.join(differ)}, and {shared}"], []
    carried = f"{n} module(s) carried as megatron-core's mtp.layers.{{k}} (mtp_num_layers {n})"
    return [], [f"multi-token-prediction: {carried}, the embedding and head shared with the model"]


def make_plan(
    src: str | Path,
    target: TargetOptions,
    *,
    config: str | Path | None = None,
    true_vocab: int | None = None,
    ignore: tuple[str, ...] = (),
    from_optimizer_fp32: bool = False,
    rotary_layout: str = "auto",
    renames: Renames | None = None,
) -> Plan:
    """Inspect the source, derive the architecture and lay out the target; write nothing."""
    src = as_path(src)
    ckpt = detect(src)
    config_dict = read_config(config) if config is not None else None
    vocab_note = "--true-vocab-size" if true_vocab is not None else ""
    tokenizer = _tokenizer_source(target, ckpt)
    target.tokenizer_source = tokenizer
    tok_size = tokenizer_size(tokenizer) if tokenizer is not None else None
    options = {"config": config_dict, "from_optimizer_fp32": from_optimizer_fp32, "rotary_layout": rotary_layout,
               "renames": renames}
    try:
        try:
            source = open_source(ckpt, true_vocab=true_vocab, vocab_note=vocab_note, **options)  # type: ignore[arg-type]
        except SpecError as exc:
            if tok_size is None or true_vocab is not None or "vocab size" not in str(exc):
                raise
            # args say nothing about the vocabulary: the tokenizer's size is all there is
            source = open_source(ckpt, true_vocab=tok_size, vocab_note="size of the tokenizer", **options)  # type: ignore[arg-type]
    except SpecError as exc:
        raise CheckpointError(src, str(exc)) from None
    architecture_from = source.architecture_from
    ckpt, renamed = source.ckpt, dict(source.renamed)  # the names as read (renamed view)
    mtp_errors, mtp_notes = _carry_mtp(source, target)
    vocab_fit = None
    if tokenizer is not None and tok_size is not None:
        note = f"size of the tokenizer ({tokenizer.origin}: {tokenizer.path})"
        stored = max(source.spec.padded_vocab or source.spec.vocab, source.spec.vocab)
        vocab_fit = (stored, source.spec.vocab, tok_size)
        if source.spec.vocab != tok_size:
            source = VocabFit(source, tok_size, note)
        else:
            source.spec = source.spec.with_(vocab_note=note)
    spec = source.spec
    errors: list[str] = mtp_errors
    warnings: list[str] = list(ckpt.warnings)
    if target.format not in TARGETS:
        raise CheckpointError(src, f"unknown target format {target.format!r} (choose from {', '.join(TARGETS)})")
    if target.format != "hf":
        errors += [f"target layout: {p}" for p in spec.check_parallel(target.tp, target.pp, target.ep, target.pp_layers)]
    elif (target.tp, target.pp, target.ep) != (1, 1, 1):
        errors.append("an HF target holds the full model: --tp/--pp/--ep do not apply")
    errors += option_conflicts(target)
    acc = source.account(ignore)
    suggested: list[str] = []
    if acc.unmatched:
        listed = [f"{name}" + (f" (nearest rule: {near})" if near else "") for name, near in list(acc.unmatched.items())[:MAX_LISTED]]
        suggested = suggest_renames(acc.unmatched, acc.missing)
        fix = " ".join(f"--rename {shlex.quote(r)}" for r in suggested)
        advice = f"rename them: {fix}" if suggested else "rename them with --rename PATTERN=REPLACEMENT, or add --ignore GLOB to drop them"
        errors.append(f"{len(acc.unmatched)} stored tensor(s) match no rule ({advice}): " + "; ".join(listed))
    if acc.missing:
        errors.append(f"{len(acc.missing)} expected tensor(s) missing from the source: " + ", ".join(acc.missing[:MAX_LISTED]))
    if spec.padded_vocab and spec.vocab == spec.padded_vocab and "unknown" in spec.vocab_note:
        warnings.append(f"true vocabulary size unknown: keeping all {spec.padded_vocab} padded rows (give --true-vocab-size or --tokenizer)")
    if target.dtype is not None and target.dtype != spec.dtype:
        warnings.append(f"casting {str(spec.dtype)[6:]} -> {str(target.dtype)[6:]}")
    try:
        writer = TARGETS[target.format].writer_class()(spec, target)
        files = writer.files()
    except SpecError as exc:
        errors.append(str(exc))
        writer, files = None, []  # type: ignore[assignment]
    notes = source.notes() + mtp_notes + (writer.notes() if writer is not None else [])
    notes.append(f"model family: {spec.family}" + (f"; quirks: {'; '.join(spec.quirks())}" if spec.quirks() else ""))
    if architecture_from:
        notes.append(f"architecture: from {architecture_from}")
    if tokenizer is not None and tok_size is not None and vocab_fit is not None:
        notes.append(vocab_action(vocab_fit[0], tok_size, vocab_fit[1]))
        notes.append(f"tokenizer: {tokenizer.kind} from {tokenizer.path}"
                     + (f", +{tokenizer.extra_ids} extra ids" if tokenizer.extra_ids else "")
                     + (f", special tokens {tokenizer.overrides}" if tokenizer.overrides else ""))
    return Plan(src, ckpt, source, target, writer, acc, files, warnings, errors, notes, vocab_fit, renamed, suggested)  # type: ignore[arg-type]
