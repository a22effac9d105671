"""Fuzz target for the rendering helper (`ckptscope.app.safe`, over `printable`): arbitrary text in,
nothing that acts on a terminal out, and markup always shown literally.

Properties (hypothesis, derandomized like tests/test_reliability_fuzz.py):
- `printable(s)` holds no character of category Cc, Cf, Cs, Zl or Zp (controls, format characters,
  surrogates, line separators); it is the identity on text without them; it is idempotent;
- `Text.from_markup(safe_markup(s), emoji=False).plain == printable(s)`: every `[tag]` is literal text;
- `safe(s)` / `safe_cells` give `Text` whose plain text is `printable(s)`, and rendering them
  through a terminal console emits no ESC other than rich's own colour codes;
- the hand-written character table in `inspectors/summary.py` matches `unicodedata` exactly.
"""

from __future__ import annotations

import io
import re
import sys
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ckptscope.app.safe import printable, row, safe, safe_cells, safe_markup, safe_text

FUZZ = settings(max_examples=300, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
UNSAFE = ("Cc", "Cf", "Cs", "Zl", "Zp")
SGR = re.compile(r"\x1b\[[0-9;]*m")

# text biased towards what breaks terminals and markup parsers
PIECES = st.sampled_from(["[", "]", "/", "\\", "[/]", "[/b]", "[b]", "[link=http://x]", "[@click=app.quit]", "\x1b", "\x1b]52;c;",
                          "\x07", "\x9b", "\x9d", "\x7f", "\u200f", "\u200b", "\ufeff", "\xad", "\u202e", "\u2066", "\U000e0041",
                          "\u2028", "\ud800", "\r", "\n", "\t", "$var", "a", "é", "中", "🙂"])
TEXT = st.one_of(st.text(), st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=30).map("".join),
                 st.text(alphabet=st.characters(categories=UNSAFE)))


def has_unsafe(text: str) -> bool:
    return any(unicodedata.category(c) in UNSAFE for c in text)


@FUZZ
@given(TEXT)
def test_printable_leaves_nothing_unsafe(s: str) -> None:
    out = printable(s, 10**6)
    assert not has_unsafe(out)
    assert printable(out, 10**6) == out  # idempotent: escaping twice changes nothing
    if not has_unsafe(s):
        assert out == s
    out.encode("utf-8")  # no lone surrogate left: it can be written to any UTF-8 terminal


@FUZZ
@given(TEXT)
def test_markup_is_always_literal(s: str) -> None:
    assert Text.from_markup(safe_markup(s, 10**6), emoji=False).plain == printable(s, 10**6)


@FUZZ
@given(TEXT, st.booleans())
def test_safe_text_and_cells_render_inert(s: str, as_text: bool) -> None:
    cell = Text(s) if as_text else s  # (rich's Text drops a few controls itself, e.g. \r)
    made = safe_cells([cell, 3, None])
    assert isinstance(made[0], Text) and made[0].plain == (printable(cell.plain, 10**5) if as_text else printable(s, 500))
    assert safe(s).plain == printable(s)
    assert safe_text(Text(s)).plain == printable(Text(s).plain, 100_000)
    table = Table()
    table.add_column("x")
    row(table, cell)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="truecolor", width=80).print(table, Text.from_markup(safe_markup(s)))
    shown = SGR.sub("", buf.getvalue())
    assert "\x1b" not in shown and not has_unsafe(shown.replace("\n", ""))


def test_character_table_matches_unicodedata() -> None:
    """Every code point of an unsafe category is escaped; nothing assigned to another category is
    (the table also covers format characters of newer Unicode versions, unassigned here)."""
    from ckptscope.inspectors.summary import _CONTROL_RE

    missed = [hex(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in UNSAFE and not _CONTROL_RE.match(chr(c))]
    extra = [hex(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) not in (*UNSAFE, "Cn") and _CONTROL_RE.match(chr(c))]
    assert not missed and not extra, (missed[:20], extra[:20])
