"""How the CLI's help reads: metavars (`SRC`, `N`, `DTYPE` rather than typer's `{src}`, `<int>`,
`<list[str]>`) and an examples epilog per command, declared as tables so a new option gets a
readable placeholder without touching its declaration.

`Command` is the click command class every `@app.command(cls=Command)` uses; it applies the
tables when typer builds it.
"""

from __future__ import annotations

import types
from typing import Any

from typer.core import TyperCommand

# parameter name (the Python name typer gives click) -> placeholder shown in usage and help
METAVARS: dict[str, str] = {
    "src": "SRC", "dst": "DST", "path": "PATH", "a": "A", "b": "B", "target": "DIR",
    "to": "FORMAT", "tp": "N", "pp": "N", "ep": "N", "pp_layers": "N,N,...", "dtype": "DTYPE",
    "true_vocab_size": "N", "tokenizer": "PATH", "tokenizer_root": "DIR", "vocab_extra_ids": "N",
    "override_special_tokens": "NAME=TOKEN", "rotary_layout": "LAYOUT", "config": "FILE",
    "megatron_spec": "SPEC", "iteration": "N", "nxd_style": "STYLE", "kv_size_multiplier": "N",
    "max_shard_size": "SIZE", "ignore": "GLOB", "workers": "N", "filter_": "GLOB", "tokens": "N",
    "tolerance": "X", "rename": "PATTERN=REPLACEMENT", "map_file": "FILE", "map_": "FILE",
}
# when a parameter is not in the table: by its click type's class name (typer vendors click in
# recent releases, so the classes themselves differ between versions)
TYPE_METAVARS: dict[str, str] = {"IntParamType": "N", "IntRange": "N", "FloatParamType": "X", "FloatRange": "X",
                                 "Path": "PATH", "StringParamType": "TEXT"}

_EXAMPLES: dict[str, tuple[str, ...]] = {
    "inspect": ("ckptscope inspect checkpoints/                 # latest iteration of a Megatron run",
                "ckptscope inspect model/ --filter 'decoder.layers.0.*' --stats",
                "ckptscope inspect model/ --json | jq .parallel"),
    "convert": ("ckptscope convert checkpoints/ hf-out --to hf --dtype bf16 --verify",
                "ckptscope convert hf-model/ mcore-out --to megatron-dist --tp 2 --pp 2",
                "ckptscope convert checkpoints/ out --to megatron --tp 4 --plan-only"),
    "verify": ("ckptscope verify checkpoints/ hf-out           # tensors, then logits",
               "ckptscope verify a/ b/ --no-logits --json"),
    "diff": ("ckptscope diff hf-model/ converted/ --numeric",
             "ckptscope diff a/ b/ --only-problems --json"),
    "check": ("ckptscope check checkpoints/ --to megatron --tp 4",
              "ckptscope check hf-model/ --to hf --ignore '*.inv_freq'"),
    "demo": ("ckptscope demo                                  # ./ckptscope-demo, then the app",
             "ckptscope demo /tmp/demo --no-open"),
}
ROOT_EXAMPLES = ("ckptscope                      # the app, in the current folder",
                 "ckptscope checkpoints/         # the app, at PATH",
                 "ckptscope inspect checkpoints/",
                 "ckptscope convert checkpoints/ hf-out --to hf --verify",
                 "ckptscope COMMAND -h           # a command's options and examples")


def examples(lines: tuple[str, ...]) -> str:
    """An epilog click prints as is (`\\b` keeps it from re-wrapping the lines)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def metavar(param: Any) -> str:
    """The table's placeholder for a click parameter, else one by its type, else its name in capitals."""
    name = param.name or ""
    return METAVARS.get(name) or TYPE_METAVARS.get(type(param.type).__name__) or name.upper()


def choices(name: str) -> tuple[str, ...]:
    """The values a choice option takes, as the core declares them (`--to`: the registered targets)."""
    from ckptscope.converters.formats import TARGETS
    from ckptscope.converters.options import ALL_OPTIONS

    if name == "to":
        return tuple(TARGETS)
    found = ALL_OPTIONS.get(name)
    return found.choices if found is not None and found.kind == "choice" else ()


def _complete_choices(values: tuple[str, ...]) -> Any:
    """A shell-completion callback offering `values` (click turns the strings into items)."""
    def complete(ctx: Any, param: Any, incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]
    return complete


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _argument_help_record(self: Any, ctx: Any) -> tuple[str, str] | None:
    """An argument's help line names it once (`SRC  Source checkpoint`), not `SRC <path>`."""
    record = type(self).get_help_record(self, ctx)
    return None if record is None else (self.metavar, record[1])


class Command(TyperCommand):
    """A typer command whose placeholders and examples come from the tables above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.name in _EXAMPLES and not self.epilog:
            self.epilog = examples(_EXAMPLES[self.name])
        for param in self.params:
            if param.metavar is None and not getattr(param, "is_flag", False):
                param.metavar = metavar(param)
            if _is_argument(param):
                param.get_help_record = types.MethodType(_argument_help_record, param)  # type: ignore[method-assign]
            values = choices(param.name or "")
            if values and getattr(param, "_custom_shell_complete", None) is None:  # `--to <TAB>`: hf megatron ...
                param._custom_shell_complete = _complete_choices(values)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """`[OPTIONS] SRC DST` (click's convention), not typer's `{src} {dst}`."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if _is_argument(param):
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
        return pieces
