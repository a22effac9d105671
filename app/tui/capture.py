"""Render the CLI's rich output into a Text for a Static, so both faces show the same thing."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text


def capture(render: Callable[..., None], *args: Any, width: int = 110, **kwargs: Any) -> Text:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="truecolor", force_terminal=True, highlight=False)
    render(console, *args, **kwargs)
    return Text.from_ansi(buf.getvalue())
