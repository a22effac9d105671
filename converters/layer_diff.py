"""Where do two models diverge? Both run on the same probe, layer by layer (`verify --layers`).

"The converted model gives garbage" has one useful answer: the first layer and sub-block whose
output differs. Each side runs the plain-torch reference forward (`reference.py`) over its own
canonical tensors, any format, weights streamed one layer at a time, and every layer's attention
output, MLP output (each as it joins the residual) and hidden state is kept for A (activations
only: batch × tokens × hidden each), and B's are compared as they are produced. Differences are max / mean |A - B| in fp32; the first sub-block
above the tolerance is named, with the weights of that layer that differ, so the broken tensor
is found without reading the rest. `chart()` turns the per-layer differences into unicode bars
the CLI and the app show as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptscope.inspectors.errors import CheckpointError

from .reference import reference_logits
from .sources import CanonicalSource
from .spec import SpecError
from .verify import fixed_tokens, open_pair, probe_length

BLOCKS = ("attention", "mlp", "hidden")  # in the order a layer computes them
EMBEDDING = -1
BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class BlockDiff:
    max_abs: float
    mean_abs: float


@dataclass
class LayerRow:
    """One layer (-1: the embedding output) with each sub-block's difference."""

    layer: int
    blocks: dict[str, BlockDiff] = field(default_factory=dict)

    def worst(self) -> float:
        return max((b.max_abs for b in self.blocks.values()), default=0.0)


@dataclass
class LayersReport:
    a: str
    b: str
    tolerance: float
    probe_tokens: int = 0
    rows: list[LayerRow] = field(default_factory=list)
    logits: BlockDiff | None = None
    first: tuple[int, str] | None = None  # (layer, block) of the first difference above the tolerance
    first_weights: list[tuple[str, float | None]] = field(default_factory=list)  # that layer's differing weights
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first is None and (self.logits is None or self.logits.max_abs <= self.tolerance)

    def first_label(self) -> str:
        if self.first is None:
            return ""
        layer, block = self.first
        return "the embedding" if layer == EMBEDDING else f"layer {layer} {block}"

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "tolerance": self.tolerance, "probe_tokens": self.probe_tokens, "ok": self.ok,
            "first_divergence": None if self.first is None else {
                "layer": self.first[0], "block": self.first[1],
                "weights_that_differ": [{"name": n, "max_abs": d} for n, d in self.first_weights]},
            "layers": [{"layer": r.layer, **{k: {"max_abs": v.max_abs, "mean_abs": v.mean_abs} for k, v in r.blocks.items()}}
                       for r in self.rows],
            "logits": None if self.logits is None else {"max_abs": self.logits.max_abs, "mean_abs": self.logits.mean_abs},
            "notes": self.notes,
        }


def activations(source: CanonicalSource, ids: torch.Tensor) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor]:
    """Every (layer, block) output and the logits of one side, weights streamed a layer at a time."""
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def keep(layer: int, block: str, output: torch.Tensor) -> None:
        seen[(layer, block)] = output.detach().float().clone()

    with torch.no_grad():
        logits = reference_logits(source.spec, source.get, ids, tap=keep)
    return seen, logits


def differences(source: CanonicalSource, ids: torch.Tensor, reference: dict[tuple[int, str], torch.Tensor]
                ) -> tuple[dict[tuple[int, str], BlockDiff], torch.Tensor]:
    """Run one side and compare each output with `reference` as it is produced (each reference
    activation is released once compared, so only one side's activations are ever held)."""
    out: dict[tuple[int, str], BlockDiff] = {}

    def compare(layer: int, block: str, output: torch.Tensor) -> None:
        other = reference.pop((layer, block), None)
        if other is not None:
            out[(layer, block)] = _diff(other, output.detach().float())

    with torch.no_grad():
        logits = reference_logits(source.spec, source.get, ids, tap=compare)
    return out, logits


def _diff(x: torch.Tensor, y: torch.Tensor) -> BlockDiff:
    d = (x.double() - y.double()).abs()
    return BlockDiff(float(d.max()) if d.numel() else 0.0, float(d.mean()) if d.numel() else 0.0)


def compare_layers(a: str | Path, b: str | Path, *, tokens: int = 16, tolerance: float = 1e-5,
                   config: dict | None = None) -> LayersReport:
    """Run A and B on the same probe and compare them layer by layer (any formats)."""
    report = LayersReport(str(a), str(b), tolerance)
    sa, sb = open_pair(a, b, config, report.notes)
    if sa.spec.layers != sb.spec.layers or sa.spec.hidden != sb.spec.hidden:
        raise CheckpointError(b, f"not the same model shape as A ({sa.spec.layers} layers, hidden {sa.spec.hidden} vs "
                                 f"{sb.spec.layers}, {sb.spec.hidden}): nothing to compare layer by layer")
    report.probe_tokens = probe_length(sa.spec, tokens)
    ids = fixed_tokens(min(sa.spec.vocab, sb.spec.vocab), length=report.probe_tokens)
    try:
        acts_a, logits_a = activations(sa, ids)
    except SpecError as exc:  # a feature the reference forward does not model: one line naming the checkpoint
        raise CheckpointError(a, str(exc)) from None
    try:
        diffs, logits_b = differences(sb, ids, acts_a)
    except SpecError as exc:
        raise CheckpointError(b, str(exc)) from None
    vocab = min(logits_a.shape[-1], logits_b.shape[-1])
    report.logits = _diff(logits_a[..., :vocab], logits_b[..., :vocab])
    for layer in range(EMBEDDING, sa.spec.layers):
        row = LayerRow(layer, {block: diffs[(layer, block)] for block in BLOCKS if (layer, block) in diffs})
        report.rows.append(row)
        if report.first is None:
            block = next((k for k, v in row.blocks.items() if v.max_abs > tolerance), None)
            if block is not None:
                report.first = (layer, block)
    if report.first is not None:
        report.first_weights = _differing_weights(sa, sb, report.first[0])
    return report


def _differing_weights(sa: CanonicalSource, sb: CanonicalSource, layer: int) -> list[tuple[str, float | None]]:
    """Canonical weights of one layer that differ (None: shapes differ), largest first."""
    group = layer  # the embedding's group is -1 too (sources.PRE)
    ga, gb = sa.read(group), sb.read(group)
    out: list[tuple[str, float | None]] = []
    for name, ta in ga.items():
        tb = gb.get(name)
        if tb is None or ta.shape != tb.shape:
            out.append((name, None))
            continue
        d = float((ta.double() - tb.double()).abs().max()) if ta.numel() else 0.0
        if d > 0:
            out.append((name, d))
    return sorted(out, key=lambda item: -math.inf if item[1] is None else -item[1])


def bar(value: float, tolerance: float, top: float, width: int = 12) -> str:
    """A bar for one difference on a log scale from the tolerance (empty) to the largest (full)."""
    if value <= tolerance or top <= tolerance:
        return ""
    lo, hi = math.log10(max(tolerance, 1e-30)), math.log10(top)
    frac = 1.0 if hi <= lo else (math.log10(value) - lo) / (hi - lo)
    eighths = max(1, round(frac * width * 8))
    return "█" * (eighths // 8) + (BARS[eighths % 8] if eighths % 8 else "")


def sparkline(values: list[float], tolerance: float) -> str:
    """One character per layer: blank within the tolerance, then ▁..█ on a log scale."""
    top = max(values, default=0.0)
    out = []
    for v in values:
        if v <= tolerance or top <= tolerance:
            out.append("·")
            continue
        lo, hi = math.log10(max(tolerance, 1e-30)), math.log10(top)
        frac = 1.0 if hi <= lo else (math.log10(v) - lo) / (hi - lo)
        out.append(BARS[max(1, min(8, math.ceil(frac * 8)))])
    return "".join(out)


def chart(report: LayersReport, width: int = 12) -> list[tuple[str, str, str]]:
    """(layer label, max |diff| of its hidden state, bar) per layer: what the terminal draws."""
    top = max((r.worst() for r in report.rows), default=0.0)
    out = []
    for r in report.rows:
        value = r.blocks["hidden"].max_abs if "hidden" in r.blocks else r.worst()
        out.append(("embed" if r.layer == EMBEDDING else str(r.layer), f"{value:.3g}", bar(value, report.tolerance, top, width)))
    return out
