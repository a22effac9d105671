"""ckptscope's look: Textual themes (with app variables) and the stylesheet. Data only.

Theme variables become TCSS variables (`$dtype-bf16`, `$rank-1`, ...) used by `ckptscope.tcss`
and by widgets that colour dtypes and ranks.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

STYLESHEET = Path(__file__).with_name("ckptscope.tcss")

DTYPE_VARIABLES_DARK = {
    "dtype-float32": "#7aa2f7",
    "dtype-bfloat16": "#9ece6a",
    "dtype-float16": "#e0af68",
    "dtype-float8": "#f7768e",
    "dtype-int": "#bb9af7",
    "dtype-other": "#a9b1d6",
}
DTYPE_VARIABLES_LIGHT = {
    "dtype-float32": "#1d4ed8",
    "dtype-bfloat16": "#15803d",
    "dtype-float16": "#b45309",
    "dtype-float8": "#be123c",
    "dtype-int": "#7e22ce",
    "dtype-other": "#475569",
}
RANK_VARIABLES_DARK = {f"rank-{i}": c for i, c in enumerate(("#7dcfff", "#ff9e64", "#c3e88d", "#f7768e", "#bb9af7", "#e0af68", "#73daca", "#b4f9f8"))}
RANK_VARIABLES_LIGHT = {f"rank-{i}": c for i, c in enumerate(("#0369a1", "#c2410c", "#4d7c0f", "#be123c", "#7e22ce", "#a16207", "#0f766e", "#1e40af"))}

DARK = Theme(
    name="ckptscope-dark",
    primary="#7aa2f7",
    secondary="#bb9af7",
    accent="#ff9e64",
    warning="#e0af68",
    error="#f7768e",
    success="#9ece6a",
    foreground="#c0caf5",
    background="#1a1b26",
    surface="#1f2335",
    panel="#24283b",
    dark=True,
    variables={**DTYPE_VARIABLES_DARK, **RANK_VARIABLES_DARK, "arch-field": "#ff9e64", "block-cursor-text-style": "none"},
)

LIGHT = Theme(
    name="ckptscope-light",
    primary="#1d4ed8",
    secondary="#7e22ce",
    accent="#c2410c",
    warning="#b45309",
    error="#be123c",
    success="#15803d",
    foreground="#1e293b",
    background="#f8fafc",
    surface="#eef2f7",
    panel="#e2e8f0",
    dark=False,
    variables={**DTYPE_VARIABLES_LIGHT, **RANK_VARIABLES_LIGHT, "arch-field": "#c2410c", "block-cursor-text-style": "none"},
)

THEMES = (DARK, LIGHT)
DEFAULT_THEME = DARK.name


def dtype_variable(dtype: str) -> str:
    """Which theme variable colours a dtype name."""
    if dtype.startswith("float8"):
        return "dtype-float8"
    if dtype in ("float32", "bfloat16", "float16"):
        return f"dtype-{dtype}"
    if dtype.startswith(("int", "uint", "bool")):
        return "dtype-int"
    return "dtype-other"
