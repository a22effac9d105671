"""An `Input` that never sends a control or format character of its value to the terminal.

The diff and convert screens prefill paths, and a path is checkpoint-derived text: a folder name
holding `ESC ] 52` would set the clipboard when shown. The value itself must stay exact (it is the
path that gets opened), so only what is drawn changes: every unsafe character is shown as one
reversed `�`, one character for one, so cursor positions still match the value.
"""

from __future__ import annotations

from typing import Any

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Input

from ckptscope.inspectors.summary import unsafe_characters


class SafeHighlighter(Highlighter):
    def highlight(self, text: Text) -> None:
        plain = text.plain
        spots = [m.start() for m in unsafe_characters(plain)]
        if not spots:
            return
        chars = list(plain)
        for i in spots:
            chars[i] = "\ufffd"
        text.plain = "".join(chars)
        for i in spots:
            text.stylize("reverse", i, i + 1)


class SafeInput(Input):
    """`Input` with `SafeHighlighter` (for values that may hold checkpoint text: paths, filters)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("highlighter", SafeHighlighter())
        super().__init__(*args, **kwargs)
