"""Headless views of a Checkpoint shared by the CLI and the TUI.

- `natural_key`: `layers.10` sorts after `layers.9`;
- `collapse`: repeated layers fold into one row (`decoder.layers.{0..31}.mlp.linear_fc1.weight`),
  with shard count, shapes, dtypes and totals;
- `arch_fields`: the architecture fields of args / config worth showing first;
- `printable`: names and strings from a checkpoint are untrusted; escape control characters
  before they reach a terminal.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .megatron_common import ARCH_FIELDS
from .model import REPLICATED_RE, logical_param_count  # noqa: F401 - re-exported
from .model import Checkpoint, TensorInfo

_NUM_RE = re.compile(r"(\d+)")
_INDEX_RE = re.compile(r"(?<=\.)(\d+)(?=\.)")
# Characters that must not reach a terminal raw: C0/C1 controls and DEL (Cc), format characters (Cf:
# bidi overrides and marks, zero-width spaces and joiners, BOM, soft hyphen, tags), surrogates (Cs: a
# lone one cannot even be encoded), line/paragraph separators (Zl, Zp). tests/test_render_fuzz.py
# checks this table against unicodedata for every code point.
_UNSAFE_RANGES = (
    "\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_CONTROL_RE = re.compile(f"[{_UNSAFE_RANGES}]")


def natural_key(text: str) -> tuple[Any, ...]:
    if _NUM_RE.search(text) is None:
        return (text,)  # no number: the split below would give the same; 300k such names are common enough
    return tuple(int(p) if p.isdigit() else p for p in _NUM_RE.split(text))


def printable(text: Any, limit: int = 500) -> str:
    """Escape terminal control and invisible format characters in untrusted text (`\\x1b`, `\\u200f`).

    Markup is not this function's business: rich/Textual widgets get the result as literal text
    through `ckptscope.app.safe` (the one way checkpoint text reaches a screen).
    """
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    if s.isascii() and s.isprintable():
        return s  # the common case, without a regex pass
    return _CONTROL_RE.sub(_escape_char, s)


def unsafe_characters(text: str) -> Iterator[re.Match[str]]:
    """Where `printable` would escape something (for widgets that must keep the text's length)."""
    return _CONTROL_RE.finditer(text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def select(tensors: Iterable[TensorInfo], pattern: str | None) -> list[TensorInfo]:
    """Glob filter on stored or global names (`*` spans dots)."""
    tensors = list(tensors)
    if not pattern:
        return tensors
    return [t for t in tensors if fnmatch.fnmatchcase(t.name, pattern) or fnmatch.fnmatchcase(t.global_name, pattern)]


@dataclass(slots=True)
class Row:
    """One collapsed group of tensors that differ only by layer (and expert) numbers.

    Slots: 300k names that do not collapse make 300k rows (~100 MB less without a `__dict__` each).
    """

    pattern: str
    indices: list[tuple[int, ...]] = field(default_factory=list)
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    dtypes: set[str] = field(default_factory=set)
    shards: int = 0
    numel: int = 0
    nbytes: int = 0
    group: str = "model"

    @property
    def name(self) -> str:
        """Pattern with `{}` slots filled by index ranges, e.g. `layers.{0..31}`."""
        if not self.indices:
            return self.pattern
        slots = len(self.indices[0])
        ranges = [_range_label(sorted({ix[s] for ix in self.indices})) for s in range(slots)]
        out = self.pattern
        for label in ranges:
            out = out.replace("{}", "{" + label + "}", 1)
        return out

    @property
    def shape_label(self) -> str:
        if len(self.shapes) == 1:
            return "[" + ", ".join(str(d) for d in next(iter(self.shapes))) + "]"
        return " | ".join("[" + ", ".join(str(d) for d in s) + "]" for s in sorted(self.shapes)[:3]) + (" ..." if len(self.shapes) > 3 else "")


def _range_label(values: list[int]) -> str:
    if not values:
        return ""
    if values == list(range(values[0], values[-1] + 1)):
        return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"
    return ",".join(str(v) for v in values[:6]) + (",..." if len(values) > 6 else "")


def collapse(tensors: Iterable[TensorInfo], by_global: bool = True) -> list[Row]:
    """Fold tensors whose names differ only in numeric path components into rows."""
    rows: dict[tuple[str, str], Row] = {}
    for t in tensors:
        name = t.global_name if by_global else t.name
        if _NUM_RE.search(name) is None:  # nothing to fold: skip two regex passes
            numbers, pattern = (), name
        else:
            numbers = tuple(int(n) for n in _INDEX_RE.findall(name))
            pattern = _INDEX_RE.sub("{}", name)
        row = rows.get((t.group, pattern))
        if row is None:
            row = rows[(t.group, pattern)] = Row(pattern, group=t.group)
        if numbers:
            row.indices.append(numbers)
        row.shapes.add(t.shape)
        row.dtypes.add(t.dtype)
        row.shards += 1
        row.numel += t.numel
        row.nbytes += t.nbytes
    return sorted(rows.values(), key=lambda r: (r.group != "model", natural_key(r.pattern)))


def arch_fields(ckpt: Checkpoint) -> dict[str, Any]:
    """Architecture fields from Megatron args or an HF config, in a stable order."""
    args = ckpt.metadata.get("args")
    if isinstance(args, dict) and args:
        return {k: args[k] for k in ARCH_FIELDS if k in args}
    config = ckpt.metadata.get("config")
    if isinstance(config, dict):
        from .formats.hf import config_summary

        return config_summary(config)
    return {}


def shard_files_label(ckpt: Checkpoint) -> str:
    roles: dict[str, int] = {}
    for f in ckpt.files:
        roles[f.role] = roles.get(f.role, 0) + 1
    return ", ".join(f"{n} {role}" for role, n in roles.items())


