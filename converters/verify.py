"""Compare two checkpoints of any formats through the canonical model.

Tensor report: every canonical tensor present in both, equal or not (max abs difference), and
those present in only one. Logits: a fixed token batch through `transformers` for HF folders and
through the plain-torch reference forward (`reference.py`) for every other format and layout,
one group of weights at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError

from .quiet import quiet_transformers
from .reference import reference_logits
from .renames import Renames
from .sources import CanonicalSource, groups, open_source
from .spec import ModelSpec, SpecError


@dataclass
class TensorDiff:
    name: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    max_abs: float | None  # None when shapes differ
    max_abs_cast: float | None = None  # dtypes differ: max |a - b| once both are cast to the coarser dtype

    @property
    def equal(self) -> bool:
        return self.max_abs == 0.0 and self.dtype_a == self.dtype_b

    @property
    def dtype_only(self) -> bool:
        """Only the dtype differs: the values are what casting gives (a `--dtype` conversion)."""
        return self.dtype_a != self.dtype_b and self.max_abs_cast == 0.0

    @property
    def coarser_dtype(self) -> str:
        return coarser(self.dtype_a, self.dtype_b)


@dataclass
class VerifyReport:
    a: str
    b: str
    tensors: list[TensorDiff] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    logits_max_abs: float | None = None
    logits_how: tuple[str, str] = ("", "")
    tolerance: float = 1e-5
    notes: list[str] = field(default_factory=list)
    config_differences: list[str] = field(default_factory=list)  # architecture fields that differ, "field: a -> b"
    probe_tokens: int = 0
    logits_cast: str | None = None  # both sides' weights rounded to this dtype before the logits (a --dtype conversion)

    @property
    def identical(self) -> bool:
        return not self.only_a and not self.only_b and all(t.equal for t in self.tensors)

    @property
    def logits_ok(self) -> bool | None:
        """Logits within tolerance and no architecture field different (which a probe may not see)."""
        return None if self.logits_max_abs is None else self.logits_max_abs <= self.tolerance and not self.config_differences

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "identical": self.identical,
            "tensors_compared": len(self.tensors),
            "tensors_dtype_only": sum(t.dtype_only for t in self.tensors),
            "tensors_different": [{"name": t.name, "max_abs": t.max_abs, "shape_a": list(t.shape_a), "shape_b": list(t.shape_b),
                                   "dtype_a": t.dtype_a, "dtype_b": t.dtype_b, "max_abs_after_cast": t.max_abs_cast,
                                   "dtype_only": t.dtype_only} for t in self.tensors if not t.equal],
            "max_abs_tensor_diff": max((t.max_abs for t in self.tensors if t.max_abs is not None), default=0.0),
            "only_in_a": self.only_a, "only_in_b": self.only_b,
            "logits": {"max_abs_diff": self.logits_max_abs, "a": self.logits_how[0], "b": self.logits_how[1],
                       "tolerance": self.tolerance, "ok": self.logits_ok, "weights_cast_to": self.logits_cast},
            "config_differences": self.config_differences, "probe_tokens": self.probe_tokens,
            "notes": self.notes,
        }


# Spec fields that say how a checkpoint stores the model, not what the model computes
# (and metadata beside the architecture: the vocabulary may be fitted to a tokenizer, ids and
# model_type are not always stored by the format); every other field changes the outputs.
STORAGE_FIELDS = {"padded_vocab", "vocab_note", "make_vocab_size_divisible_by", "rotary_interleaved", "qkv_version",
                  "megatron_llm", "dtype", "notes", "vocab", "model_type", "bos_token_id", "eos_token_id", "pad_token_id"}


def unused_fields(spec: ModelSpec) -> set[str]:
    """Fields that no layer of this model uses: the dense MLP width of a model whose every layer
    routes to experts (megatron-core keeps its `ffn_hidden_size` beside `moe_ffn_hidden_size`;
    Mixtral's config has only the experts' width)."""
    return {"ffn"} if spec.moe and not spec.dense_layers else set()


def compare_specs(a: ModelSpec, b: ModelSpec, report: VerifyReport) -> None:
    """Every architecture field, compared one by one (a short probe cannot see them all)."""
    sa, sb = a.summary(), b.summary()
    skip = STORAGE_FIELDS | (unused_fields(a) & unused_fields(b))
    report.config_differences = [f"{k}: {sa[k]!r} -> {sb.get(k)!r}" for k in sa if k not in skip and sa[k] != sb.get(k)]


def probe_length(spec: ModelSpec, asked: int) -> int:
    """Tokens enough for every feature to show: past the sliding window, within the positions."""
    if spec.sliding_window:
        asked = max(asked, 2 * spec.sliding_window + 1)
    if spec.chunked_layers and spec.attention_chunk:  # Llama 4: into a second chunk
        asked = max(asked, 2 * spec.attention_chunk + 1)
    return min(asked, spec.max_position_embeddings) if spec.position == "learned" else asked


def _source(path: str | Path, config: dict | None = None, **options: object) -> CanonicalSource:
    ckpt = detect(path)
    try:
        return open_source(ckpt, config=config, **options)  # type: ignore[arg-type]
    except SpecError as exc:
        raise CheckpointError(path, str(exc)) from None


Progress = Callable[[str, int, int], None]  # (what, done, total): the CLI's bar, the app's log


def coarser(a: str, b: str) -> str:
    """Of two float dtype names, the one with the larger rounding step (bfloat16 over float32)."""
    def eps(name: str) -> float:
        dtype = getattr(torch, name, None)
        return torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 0.0
    return a if eps(a) >= eps(b) else b


def _max_abs_cast(ta: torch.Tensor, tb: torch.Tensor) -> float | None:
    """max |a - b| after casting both to the coarser dtype (0: B is A cast, nothing more)."""
    if ta.dtype == tb.dtype or ta.shape != tb.shape or not (ta.is_floating_point() and tb.is_floating_point()):
        return None
    to = getattr(torch, coarser(str(ta.dtype)[6:], str(tb.dtype)[6:]))
    return float((ta.to(to).to(torch.float64) - tb.to(to).to(torch.float64)).abs().max()) if ta.numel() else 0.0


def open_pair(a: str | Path, b: str | Path, config: dict | None, notes: list[str],
              **options_a: object) -> tuple[CanonicalSource, CanonicalSource]:
    """Both sides canonically; B without an architecture of its own (NxD, DeepSpeed without args)
    is read with A's, and `notes` says so."""
    sa = _source(a, config, **options_a)
    try:
        sb = _source(b, config)
    except CheckpointError:
        if config is not None:
            raise
        from .families import hf_config_from_spec

        sb = _source(b, hf_config_from_spec(sa.spec))
        notes.append("B carries no architecture: read with A's")
    return sa, sb


def compare_tensors(a: CanonicalSource, b: CanonicalSource, report: VerifyReport, progress: Progress | None = None) -> None:
    if a.spec.layers != b.spec.layers:
        report.notes.append(f"layer counts differ: {a.spec.layers} vs {b.spec.layers}; comparing common layers")
    todo = list(groups(a.spec))
    for done, group in enumerate(todo):
        if progress is not None:
            progress("comparing tensors", done, len(todo))
        if group >= b.spec.layers and group < a.spec.layers:
            continue
        at_b = group if group < a.spec.layers else b.spec.layers + group - a.spec.layers  # the head, then MTP modules
        ga = a.read(group)
        gb = b.read(at_b) if at_b <= b.spec.layers + b.spec.mtp else {}
        for name in ga:
            if name not in gb:
                report.only_a.append(name)
                continue
            ta, tb = ga[name], gb[name]
            diff = None
            if ta.shape == tb.shape:
                diff = float((ta.to(torch.float64) - tb.to(torch.float64)).abs().max()) if ta.numel() else 0.0
            report.tensors.append(TensorDiff(name, tuple(ta.shape), tuple(tb.shape), str(ta.dtype)[6:], str(tb.dtype)[6:], diff,
                                             _max_abs_cast(ta, tb)))
        report.only_b.extend(n for n in gb if n not in ga)
    if progress is not None:
        progress("comparing tensors", len(todo), len(todo))


def logits_cast(report: VerifyReport) -> str | None:
    """When every tensor is A's cast to one coarser dtype and nothing else differs, that dtype: the
    logits are then compared with both sides' weights rounded to it, so the cast itself (which
    the tensor report already names) is not reported as a logits mismatch."""
    recast = {t.coarser_dtype for t in report.tensors if t.dtype_only}
    if len(recast) != 1 or report.only_a or report.only_b or not all(t.equal or t.dtype_only for t in report.tensors):
        return None
    return recast.pop()


def logits_of(source: CanonicalSource, input_ids: torch.Tensor, cast: str | None = None) -> tuple[torch.Tensor, str]:
    """fp32 logits: transformers for HF folders, the reference forward otherwise (and for an HF
    folder read through renames, whose names on disk transformers would not find); `cast` rounds
    every weight to that dtype first."""
    rounding = getattr(torch, cast) if cast else None
    if source.kind == "hf" and not source.renamed:
        from transformers import AutoModelForCausalLM

        folder = source.ckpt.path if source.ckpt.path.is_dir() else source.ckpt.path.parent
        with quiet_transformers():  # its "Loading weights" bar and load report would land on our output
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
        with torch.no_grad():
            for param in model.parameters() if rounding is not None else ():
                param.copy_(param.to(rounding))
            out = model(input_ids).logits
        del model
        return out, "transformers"
    get = source.get if rounding is None else (lambda name: source.get(name).to(rounding))
    with torch.no_grad():
        return reference_logits(source.spec, get, input_ids), "reference forward"


def fixed_tokens(vocab: int, batch: int = 2, length: int = 16, seed: int = 1234) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


def verify(a: str | Path, b: str | Path, *, logits: bool = True, tokens: int = 16, tolerance: float = 1e-5,
           config: dict | None = None, from_optimizer_fp32: bool = False, true_vocab: int | None = None,
           rotary_layout: str = "auto", renames: Renames | None = None, progress: Progress | None = None) -> VerifyReport:
    """`config` applies to both sides; the source options (`from_optimizer_fp32`, `true_vocab`,
    `rotary_layout`, `renames`) to A only, so `convert --verify` reads the source exactly as the conversion did."""
    options: dict[str, object] = {"from_optimizer_fp32": True} if from_optimizer_fp32 else {}
    if renames:
        options["renames"] = renames
    if rotary_layout != "auto":
        options["rotary_layout"] = rotary_layout
    if true_vocab is not None:
        options["true_vocab"] = true_vocab
    report = VerifyReport(str(a), str(b), tolerance=tolerance)
    sa, sb = open_pair(a, b, config, report.notes, **options)
    compare_tensors(sa, sb, report, progress)
    compare_specs(sa.spec, sb.spec, report)
    if logits:
        vocab = min(sa.spec.vocab, sb.spec.vocab)
        report.probe_tokens = probe_length(sa.spec, tokens)
        if report.probe_tokens != tokens:
            report.notes.append(f"probe lengthened to {report.probe_tokens} tokens to cross the "
                                + (f"{sa.spec.sliding_window}-token sliding window" if sa.spec.sliding_window
                                   else f"{sa.spec.attention_chunk}-token attention chunk"))
        ids = fixed_tokens(vocab, length=report.probe_tokens)
        report.logits_cast = logits_cast(report)
        if progress is not None:
            progress("logits of A", 0, 2)
        la, how_a = logits_of(sa, ids, report.logits_cast)
        if progress is not None:
            progress("logits of B", 1, 2)
        lb, how_b = logits_of(sb, ids, report.logits_cast)
        report.logits_max_abs = float((la[..., :vocab].float() - lb[..., :vocab].float()).abs().max())
        report.logits_how = (how_a, how_b)
    return report


def verify_conversion(request: Any, plan: Any, progress: Progress | None = None) -> VerifyReport:
    """Verify a finished `ConvertRequest`, reading the source exactly as its conversion did (the
    same source options; a vocabulary fitted to a tokenizer read as far as the output keeps it)."""
    from .discovery import read_config

    v = request.source_options()
    fit = plan.vocab_fit  # (stored, trained, tokenizer)
    true_vocab = v["true_vocab"]
    if true_vocab is None and fit is not None and plan.ckpt.kind != "hf":
        true_vocab = min(fit[1], fit[2])
    return verify(request.src, request.dst, config=read_config(v["config"]) if v["config"] else None,
                  from_optimizer_fp32=v["from_optimizer_fp32"], true_vocab=true_vocab, rotary_layout=v["rotary_layout"],
                  renames=request.renames(), progress=progress)
