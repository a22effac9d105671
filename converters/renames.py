"""Renaming stored tensors: a view over a checkpoint's names, before any source reads them.

A checkpoint saved under other names (`transformer.` instead of `model.`, `mlp.w2` for
`mlp.down_proj`) is fixed by renaming, not by `--ignore` (which would drop real weights):

- `--rename PATTERN=REPLACEMENT` (repeatable): a Python regular expression searched in each
  stored name and replaced everywhere it matches (`re.sub`, so `\\1` / `\\g<name>` use captures);
  rules apply in the order given, each to the result of the previous one.
- `--map FILE`: exact renames, applied first: a JSON object `{"old name": "new name", ...}` or
  text lines `old-name new-name` (blank lines and `#` comments skipped).

`renamed_view(ckpt, renames)` returns the same checkpoint with model tensors renamed (the bytes
are still read through each tensor's own source), so every format's reader, and with it check,
diff, convert and verify, sees the same names. Problems are one line: a bad regular expression
(when the option is parsed), two stored names renamed to one (refused), a rule that matches
nothing (a warning).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.files import read_side_file
from ckptscope.inspectors.model import Checkpoint

MAX_RULES = 1000
MAX_RULE_LEN = 4096
MAX_SPLITS = 64  # `=` positions tried as the split: a real pattern holds a few


class RenameError(ValueError):
    """A `--rename` rule that cannot be parsed; the message is one line (the option's face adds the flag)."""


@dataclass(frozen=True)
class RenameRule:
    """One `PATTERN=REPLACEMENT` rule, compiled and checked."""

    pattern: str
    replacement: str
    rx: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def text(self) -> str:
        return f"{self.pattern}={self.replacement}"

    def apply(self, name: str) -> str:
        return self.rx.sub(self.replacement, name)


def parse_rule(text: str) -> RenameRule:
    """`PATTERN=REPLACEMENT` -> a rule. The split is at the first `=` whose left side is a valid
    regular expression, so `(?=...)` / `(?<=...)` in the pattern need no escaping."""
    if len(text) > MAX_RULE_LEN or "\x00" in text:
        raise RenameError(f"{_shown(text)}: too long or holds a NUL character")
    problem = "expected PATTERN=REPLACEMENT"
    for at in [i for i, ch in enumerate(text) if ch == "="][:MAX_SPLITS]:
        pattern, replacement = text[:at], text[at + 1:]
        if not pattern:
            continue
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            problem = f"bad regular expression: {exc}"
            continue
        except (RecursionError, OverflowError):  # "((((...": nested past what the compiler handles
            problem = "bad regular expression: nested too deeply"
            continue
        try:
            rx.sub(replacement, "")  # a bad group reference in the replacement fails here
            for group in re.findall(r"\\(\d+)|\\g<(\w+)>", replacement):
                ref = group[0] or group[1]
                if ref.isdigit() and int(ref) > rx.groups or (not ref.isdigit() and ref not in rx.groupindex):
                    raise re.error(f"invalid group reference {ref}")
        except re.error as exc:
            raise RenameError(f"{_shown(text)}: bad replacement: {exc}") from None
        return RenameRule(pattern, replacement, rx)
    raise RenameError(f"{_shown(text)}: {problem}")


def _shown(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def parse_rules(values: Iterable[str]) -> tuple[RenameRule, ...]:
    """Every rule of a repeatable option (a wizard field holds several, space-separated)."""
    items = [item for value in values for item in str(value).split()]
    if len(items) > MAX_RULES:
        raise RenameError(f"{len(items)} rules; at most {MAX_RULES}")
    return tuple(parse_rule(item) for item in items)


def read_map(path: str | Path) -> dict[str, str]:
    """A `--map` file: a JSON object of exact names, or `old new` lines."""
    text = read_side_file(path, "index", "rename map").decode("utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CheckpointError(path, f"--map: not valid JSON: {exc}") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
            raise CheckpointError(path, "--map: the JSON object must map names to names (strings)")
        return dict(doc)
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(path, f"--map line {number}: expected 'old-name new-name'")
        if parts[0] in out:
            raise CheckpointError(path, f"--map line {number}: {parts[0]} renamed twice")
        out[parts[0]] = parts[1]
    return out


@dataclass(frozen=True)
class Renames:
    """What the user asked to rename: exact names (`--map`) first, then the rules in order."""

    rules: tuple[RenameRule, ...] = ()
    exact: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules or self.exact)

    @classmethod
    def from_options(cls, rename: Iterable[str] = (), map_file: str | Path | None = None) -> Renames:
        exact = tuple(read_map(map_file).items()) if map_file is not None else ()
        return cls(parse_rules(rename), exact)

    def apply(self, name: str) -> str:
        name = dict(self.exact).get(name, name)
        for rule in self.rules:
            name = rule.apply(name)
        return name


@dataclass
class RenameResult:
    """The renamed view and what it did: old -> new global name, and warnings."""

    ckpt: Checkpoint
    renamed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def renamed_view(ckpt: Checkpoint, renames: Renames) -> RenameResult:
    """The checkpoint with its model tensors renamed (stored and global names alike); refused
    with one line when two names would become one."""
    if not renames:
        return RenameResult(ckpt)
    model = [t for t in ckpt.tensors if t.group == "model"]
    names = list(dict.fromkeys(n for t in model for n in (t.global_name, t.name)))
    new = {n: renames.apply(n) for n in names}
    _refuse_collisions(ckpt, {t.global_name for t in model}, new)
    lookup = dict(renames.exact)
    warnings = [f"--map: {old} matches no stored tensor" for old in lookup if old not in new]
    seen = list(new)
    for rule in renames.rules:
        if not any(rule.rx.search(n) for n in seen):
            warnings.append(f"--rename {rule.text}: matches no stored tensor")
        seen = [rule.apply(n) for n in seen]
    tensors = [dataclasses.replace(t, name=new[t.name], global_name=new[t.global_name])
               if t.group == "model" and (new[t.name] != t.name or new[t.global_name] != t.global_name) else t
               for t in ckpt.tensors]
    view = dataclasses.replace(ckpt, tensors=tensors, warnings=[*ckpt.warnings, *warnings])
    renamed = {old: new[old] for old in dict.fromkeys(t.global_name for t in model) if new[old] != old}
    return RenameResult(view, renamed, warnings)


def _refuse_collisions(ckpt: Checkpoint, global_names: set[str], new: dict[str, str]) -> None:
    """Two distinct stored (global) names must not end up as one."""
    owner: dict[str, str] = {}
    for old in sorted(global_names):
        target = new[old]
        if target in owner:
            raise CheckpointError(ckpt.path, f"renames make {owner[target]} and {old} both {target}")
        owner[target] = old


_INDEX = re.compile(r"(?<=\.)(\d+)(?=\.|$)")


def folded(renamed: dict[str, str]) -> list[tuple[str, str, int]]:
    """Renames that differ only by layer / expert numbers as one line each, for display:
    (`transformer.layers.{0..31}.mlp.w2.weight`, `model.layers.{0..31}.mlp.down_proj.weight`, 32)."""
    from ckptscope.inspectors.summary import Row

    groups: dict[tuple[str, str], list[tuple[int, ...]]] = {}
    for old, new in renamed.items():
        key = (_INDEX.sub("{}", old), _INDEX.sub("{}", new))
        same = tuple(_INDEX.findall(old)) == tuple(_INDEX.findall(new))
        groups.setdefault(key if same else (old, new), []).append(tuple(int(n) for n in _INDEX.findall(old)) if same else ())
    out = []
    for (old, new), indices in groups.items():
        kept = [ix for ix in indices if ix]
        out.append((Row(old, kept).name, Row(new, kept).name, len(indices)))
    return out
