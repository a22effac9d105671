"""Form fields rendered from the core's option tables (`converters/options.py`).

The wizard declares no option of its own: each `Option` becomes one row (a checkbox, a select or
an input with the option's label, placeholder and help as tooltip), shown only for the target
formats it applies to, and read back as the raw value `ConvertRequest` validates.
"""

from __future__ import annotations

from typing import Any

from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select

from ckptscope.converters.options import Option

from .safe_input import SafeInput

KEEP = ""  # a Select's "leave the default" choice


def field_id(option: Option) -> str:
    return option.name.replace("_", "-")


def field(option: Option) -> Widget:
    """One form row for an option (its id is the option name with dashes)."""
    widget: Widget
    if option.kind == "bool":
        widget = Checkbox(option.label, value=bool(option.default), id=field_id(option))
        widget.tooltip = option.help
        return Horizontal(Label(""), widget, classes="form-row", id=f"row-{field_id(option)}")
    if option.kind == "choice":
        keep = [] if option.default is not None else [("keep the source's" if option.name == "dtype" else "default", KEEP)]
        widget = Select([*keep, *((c, c) for c in option.choices)], value=option.default if option.default is not None else KEEP,
                        allow_blank=False, id=field_id(option))
    else:
        default = "" if option.default in (None, (), []) else str(option.default)
        widget = SafeInput(default, placeholder=option.placeholder or option.help[:60], id=field_id(option),
                           type="integer" if option.kind == "int" else "text")
    widget.tooltip = option.help
    return Horizontal(Label(option.label), widget, classes="form-row", id=f"row-{field_id(option)}")


def read(screen: Any, option: Option) -> Any:
    """The raw value of an option's field (text as typed, a choice, a bool; None when left empty)."""
    widget = screen.query_one(f"#{field_id(option)}")
    if isinstance(widget, Checkbox):
        return widget.value
    if isinstance(widget, Select):
        return None if widget.value in (KEEP, Select.BLANK) else str(widget.value)
    assert isinstance(widget, Input)
    text = widget.value.strip()
    if not text:
        return None
    return text.split() if option.kind == "list" else text


def fill(screen: Any, option: Option, value: Any) -> None:
    """Put a raw value into an option's field (what another screen carries into the wizard)."""
    widget = screen.query_one(f"#{field_id(option)}")
    if isinstance(widget, Checkbox):
        widget.value = bool(value)
    elif isinstance(widget, Select):
        widget.value = KEEP if value is None else str(value)
    else:
        assert isinstance(widget, Input)
        widget.value = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else ("" if value is None else str(value))


def show_for(screen: Any, options: tuple[Option, ...], fmt: str) -> None:
    """Show the rows of the options that apply to the target format, hide the others."""
    for option in options:
        screen.query_one(f"#row-{field_id(option)}").display = option.applies_to(fmt)
