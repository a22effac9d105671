"""The one way checkpoint-derived text reaches a terminal or a screen.

Tensor names, metadata keys and values, dtype strings, file names and paths, tokenizer and family
names all come from files nobody vetted. Two things must never happen to them on the way out:

- a control or format character reaches the terminal raw (an ESC/OSC sequence sets the clipboard
  or the window title, a bidi override reorders what is shown, a ZWSP hides a difference):
  `printable` escapes them (`\\x1b`, `\\u200f`);
- rich or Textual markup in them is interpreted (`[link=...]` becomes a hidden hyperlink, `[/]`
  raises `MarkupError`): `safe` builds a literal `Text`, and `safe_cells` does so for every
  string cell of a table row, so no checkpoint string is ever parsed as markup.

`safe_markup` is for the few places that only take a markup string (rich progress descriptions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.markup import RE_TAGS
from rich.text import Text

from ckptscope.inspectors.summary import printable

__all__ = ["printable", "row", "safe", "safe_cells", "safe_markup", "safe_text"]


def safe(value: Any, limit: int = 500, style: str = "") -> Text:
    """Untrusted text as a literal rich `Text`: control/format characters escaped, markup inert."""
    return Text(printable(value, limit), style=style)


def safe_text(text: Text, limit: int = 100_000) -> Text:
    """A `Text` built elsewhere, with any raw control/format character escaped (styles kept when clean)."""
    plain = text.plain
    if printable(plain, limit) == plain:
        return text
    return Text(printable(plain, limit), style=text.style)


def safe_cells(cells: Iterable[Any], limit: int = 500) -> list[Any]:
    """Table cells for rich `Table.add_row` / Textual `DataTable.add_row`: strings become literal `Text`
    (both parse a `str` cell as markup), `Text` is re-checked, other renderables pass through."""
    out: list[Any] = []
    for cell in cells:
        if isinstance(cell, str):
            out.append(safe(cell, limit))
        elif isinstance(cell, Text):
            out.append(safe_text(cell))
        else:
            out.append(cell)
    return out


def row(table: Any, *cells: Any, **kwargs: Any) -> Any:
    """`table.add_row(*cells)` for a rich `Table` or a Textual `DataTable`, every cell made safe."""
    return table.add_row(*safe_cells(cells), **kwargs)


_BRACKET = re.compile(r"(\\*)\[")


def safe_markup(value: Any, limit: int = 500) -> str:
    """Untrusted text for a markup string: characters escaped, then every `[` escaped.

    `Text.from_markup(safe_markup(s), emoji=False).plain == printable(s)` exactly
    (tests/test_render_fuzz.py). Rich reads `\\[` before a tag as an escape (and pairs of
    backslashes before it as literal ones) but `\\[` before any other `[` as a plain `[`, so the
    backslashes in front of each `[` are rewritten by which case it is. A trailing backslash is
    left alone: never put a markup tag straight after the result.
    """
    s = printable(value, limit)
    if "[" not in s:
        return s
    tags = {m.start(3) - 1 for m in RE_TAGS.finditer(s)}
    return _BRACKET.sub(lambda m: m.group(1) * (2 if m.end(1) in tags else 1) + "\\[", s)
