"""Command-line option checks, declared as tables: every value is refused up front, before any
checkpoint is opened, with one line naming the option (`--max-shard-size abc: ...`).

A command lists `{parameter: Rule(flag, check)}`; a check returns the normalised value or raises
`ValueError(problem)`. Bounds are generous for real runs and small enough that no later step
sizes an allocation or a loop from them (a 300-digit `--iteration`, `--tp 10**9`).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptscope.converters.formats import TARGETS as _TARGETS
from ckptscope.inspectors.files import SIDE_FILE_LIMITS

Check = Callable[[Any], Any]

MAX_INT64 = 2**63 - 1
MAX_CONFIG_BYTES = SIDE_FILE_LIMITS["json"]  # a --config JSON is a few KB; the readers' own cap
MAX_PATTERN = 4096  # --filter / --ignore globs


class OptionError(ValueError):
    """A bad option value; str() is one line naming the option."""

    def __init__(self, flag: str, value: Any, problem: str) -> None:
        shown = str(value)
        shown = shown if len(shown) <= 300 else shown[:40] + f"...({len(shown)} characters)"
        super().__init__(f"{flag} {shown}: {problem}" if flag else f"{shown}: {problem}")
        self.flag = flag


@dataclass(frozen=True)
class Rule:
    flag: str  # "" for a positional argument: the message starts with its value (a path)
    check: Check


def validate(values: dict[str, Any], rules: dict[str, Rule]) -> dict[str, Any]:
    """Normalised values for every ruled parameter that was given (None means not given)."""
    out = dict(values)
    for name, rule in rules.items():
        value = values.get(name)
        if value is None:
            continue
        try:
            out[name] = rule.check(value)
        except OptionError:
            raise
        except (ValueError, OverflowError, TypeError) as exc:
            raise OptionError(rule.flag, value, str(exc) or type(exc).__name__) from None
    return out


# ----- checks ------------------------------------------------------------------------------------
def integer(lo: int, hi: int) -> Check:
    def check(value: Any) -> int:
        n = int(value)
        if not lo <= n <= hi:
            raise ValueError(f"must be an integer from {lo:,} to {hi:,}")
        return n
    return check


def number(lo: float, hi: float) -> Check:
    def check(value: Any) -> float:
        x = float(value)
        if not (math.isfinite(x) and lo <= x <= hi):
            raise ValueError(f"must be a finite number from {lo:g} to {hi:g}")
        return x
    return check


def choice(*names: str, what: str = "") -> Check:
    def check(value: Any) -> str:
        if value not in names:
            options = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
            raise ValueError(f"unknown {what}; choose {options}" if what else f"choose {options}")
        return str(value)
    return check


SIZE_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "b": 1}


def byte_size(lo: int, hi: int) -> Check:
    """`5GB`, `500MB`, `2GiB`, `40000` -> bytes."""
    def check(value: Any) -> int:
        low = str(value).strip().lower()
        unit = next((u for u in sorted(SIZE_UNITS, key=len, reverse=True) if low.endswith(u)), "")
        digits = low[: len(low) - len(unit)].strip()
        try:
            amount = float(digits) if digits else math.nan
        except ValueError:
            amount = math.nan
        if not math.isfinite(amount):
            raise ValueError("expected a size such as 5GB, 500MB, 2GiB or a number of bytes")
        n = int(amount * SIZE_UNITS.get(unit, 1))
        if not lo <= n <= hi:
            raise ValueError(f"must be from {lo:,} to {hi:,} bytes")
        return n
    return check


def int_list(count: tuple[int, int], each: tuple[int, int]) -> Check:
    """`7,9` -> [7, 9]."""
    def check(value: Any) -> list[int]:
        parts = [p.strip() for p in str(value).split(",")]
        if not count[0] <= len(parts) <= count[1]:
            raise ValueError(f"expected {count[0]} to {count[1]} comma-separated integers")
        out = []
        for part in parts:
            if not part.isascii() or not part.isdigit() or len(part) > 9:
                raise ValueError("expected comma-separated integers")
            out.append(integer(*each)(part))
        return out
    return check


def text(max_len: int) -> Check:
    def check(value: Any) -> str:
        s = str(value)
        if len(s) > max_len:
            raise ValueError(f"longer than {max_len} characters")
        if "\x00" in s:
            raise ValueError("holds a NUL character")
        return s
    return check


def each(inner: Check) -> Check:
    """The same check on every value of a repeatable option."""
    def check(values: Iterable[Any]) -> list[Any]:
        return [inner(v) for v in values]
    return check


def path(kind: str = "any", max_bytes: int | None = None, what: str = "") -> Check:
    """An existing path: `any`, `file` (a regular file, at most `max_bytes`) or `dir`;
    `what` names it in the problem (`cannot read config: no such file or directory`)."""
    inner = _path(kind, max_bytes)
    if not what:
        return inner

    def check(value: Any) -> Path:
        try:
            return inner(value)
        except ValueError as exc:
            raise ValueError(f"cannot read {what}: {exc}") from None
    return check


# A checkpoint location as typer declares it: `location` (its parser) makes it a local Path or a
# RemotePath. Not annotated `Path`: typer before 0.29 converts a Path-annotated value with
# `Path(...)` after the parser, which turned `s3://bucket/key` into a local path.
Location = Any


def location(value: str) -> Path:
    """A command-line path: a URL (`s3://`, `https://`, any fsspec protocol) stays a remote path."""
    from ckptscope.inspectors.storage import as_path

    return as_path(value)  # type: ignore[no-any-return]


def _path(kind: str, max_bytes: int | None) -> Check:
    def check(value: Any) -> Path:
        from ckptscope.inspectors.storage import is_remote

        if is_remote(value):  # existence and kind: the storage layer's one-line errors, on first use
            return location(value)
        p = Path(value).expanduser()
        if "\x00" in str(value):
            raise ValueError("holds a NUL character")
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise ValueError("no such file or directory") from None
        except OSError as exc:
            raise ValueError(exc.strerror or str(exc)) from None
        if kind == "file" and not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if kind == "dir" and not stat.S_ISDIR(st.st_mode):
            raise ValueError("not a folder")
        if kind == "any" and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ValueError("not a regular file or folder (FIFO, device or socket)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{st.st_size:,} bytes; at most {max_bytes:,} expected")
        return p
    return check


def output_path() -> Check:
    """A destination name: not empty, no NUL (its checks against the source come later, still before work)."""
    def check(value: Any) -> Path:
        s = str(value)
        if not s.strip() or "\x00" in s:
            raise ValueError("not a usable folder name")
        return location(value) if not isinstance(value, Path) else value
    return check


# ----- the tables --------------------------------------------------------------------------------
def core(name: str) -> Check:
    """The converter's own rule for an option (converters/options.py): one place decides its range."""
    from ckptscope.converters.options import OptionError as CoreOptionError, option

    def check(value: Any) -> Any:
        try:
            return option(name).value(value)
        except CoreOptionError as exc:  # "--tp 0: must be at least 1" -> the problem after the value
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
    return check


LAYOUT = {name: Rule(f"--{name}", core(name)) for name in ("tp", "pp", "ep")}
CONFIG = Rule("--config", path("file", MAX_CONFIG_BYTES, what="config"))
TARGETS = tuple(_TARGETS)  # the registry's (converters/formats.py)

RENAMES = {"rename": Rule("--rename", core("rename")),  # --rename / --map of convert, check and diff
           "rename_map": Rule("--map", path("file", SIDE_FILE_LIMITS["index"], what="rename map"))}
INSPECT = {
    "path": Rule("", path()),
    "filter_": Rule("--filter", text(MAX_PATTERN)),
}
CHECK = {
    "path": Rule("", path()),
    "to": Rule("--to", choice(*TARGETS, what="target format")),
    **LAYOUT,
    "config": CONFIG,
    "ignore": Rule("--ignore", each(text(MAX_PATTERN))),
    **RENAMES,
}
DIFF = {"a": Rule("", path()), "b": Rule("", path()), "config": CONFIG, **RENAMES}
VERIFY = {
    "a": Rule("", path()), "b": Rule("", path()), "config": CONFIG,
    "tokens": Rule("--tokens", integer(1, 65_536)),
    "tolerance": Rule("--tolerance", number(0.0, 1e30)),
}
CONVERT = {  # the paths only: every other convert option is the core's (converters/options.py, ConvertRequest)
    "src": Rule("", path()),
    "dst": Rule("", output_path()),
    "tokenizer": Rule("--tokenizer", path()),
    "tokenizer_root": Rule("--tokenizer-root", path("dir")),
    "config": CONFIG,
    "ignore": Rule("--ignore", each(text(MAX_PATTERN))),
    "rename_map": RENAMES["rename_map"],
}
DEMO = {"target": Rule("", output_path())}
