"""Every conversion option, declared once: its type, default, parser, validation and help.

The CLI's flags, the wizard's fields and `ConvertRequest` validation all come from these tables,
so a rule (a choice, a range, which target formats an option applies to) is written only here.
Values arrive raw (text from a terminal or an input field, or already typed) and `parse` turns
them into what `TargetOptions` and `make_plan` take; a bad value is one line naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


MAX_DEGREE = 4096  # TP / PP / EP beyond this are typos, not clusters
MAX_INT = 2**62


class OptionError(ValueError):
    """A conversion option has a value it cannot take; the message names the option."""


@dataclass(frozen=True)
class Option:
    """One option: `name` is the Python name (`pp_layers`), `flag` the CLI spelling (`--pp-layers`)."""

    name: str
    label: str  # the wizard's field label
    help: str
    kind: str  # int | text | path | choice | bool | list
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    parse: Callable[[str], Any] | None = None  # text -> value (after the generic checks)
    formats: tuple[str, ...] | None = None  # target formats it applies to (None: all)
    step: str = "target"  # the wizard step that shows it: target | layout | dtype | source | output
    placeholder: str = ""
    cli: str = ""  # the CLI flag when it is not `--name-with-dashes`

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace("_", "-")

    def applies_to(self, fmt: str) -> bool:
        return self.formats is None or fmt in self.formats

    def value(self, raw: Any) -> Any:
        """A raw value (text or typed) -> the option's value; `OptionError` names the option."""
        if raw is None or (isinstance(raw, str) and not raw.strip() and (self.kind != "text" or self.parse)):
            raw = self.default  # defaults go through the same parsing ("5GB" -> bytes)
        if raw is None:
            return None
        try:
            return self._convert(raw)
        except OptionError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise OptionError(f"{self.flag} {_shown(raw)}: {exc}") from None

    def _convert(self, raw: Any) -> Any:
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise OptionError(f"{self.flag} {_shown(raw)}: expected yes or no")
        if self.kind == "int":
            value = _integer(raw, self.flag)
            if self.minimum is not None and value < self.minimum:
                raise OptionError(f"{self.flag} {value}: must be at least {self.minimum}")
            if value > (self.maximum or MAX_INT):
                raise OptionError(f"{self.flag} {value}: must be at most {self.maximum or MAX_INT}")
            return value
        if self.kind == "choice":
            text = str(raw).strip()
            if text not in self.choices:
                raise OptionError(f"{self.flag} {_shown(raw)}: choose {', '.join(self.choices)}")
            return self.parse(text) if self.parse else text
        if self.kind == "path":
            return Path(str(raw)).expanduser()
        if self.kind == "list":
            items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
            values = tuple(str(i) for i in items)
            return self.parse(values) if self.parse else values
        text = str(raw)
        return self.parse(text) if self.parse else text


def _shown(raw: Any) -> str:
    text = str(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(raw: Any, flag: str) -> int:
    if isinstance(raw, bool):
        raise OptionError(f"{flag} {raw}: expected a whole number")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,19}", text):  # ASCII digits only, bounded: no '١', no 300-digit numbers
        raise OptionError(f"{flag} {_shown(raw)}: expected a whole number")
    return int(text)


SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000000` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]{1,12}(?:\.[0-9]{1,6})?)\s*([a-zA-Z]{0,3})\s*", text)
    if not match or match.group(2).lower() not in (*SIZE_UNITS, ""):
        raise OptionError(f"--max-shard-size {_shown(text)}: expected a size such as 5GB, 500MB or 2GiB")
    nbytes = int(float(match.group(1)) * SIZE_UNITS.get(match.group(2).lower() or "b", 1))
    if not 1 <= nbytes <= MAX_INT:
        raise OptionError(f"--max-shard-size {_shown(text)}: must be from 1 byte to {MAX_INT:,} bytes")
    return nbytes


def parse_pp_layers(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(parts) > MAX_DEGREE or not all(re.fullmatch(r"[0-9]{1,9}", p) for p in parts):
        raise OptionError(f"--pp-layers {_shown(text)}: expected comma-separated layer counts, e.g. 7,9")
    return [int(p) for p in parts]


def parse_renames(values: Any) -> tuple[str, ...]:
    """`PATTERN=REPLACEMENT` rules, each checked (a bad regular expression is refused here)."""
    from .renames import RenameError, parse_rules

    try:
        return tuple(rule.text for rule in parse_rules(values))
    except RenameError as exc:
        raise OptionError(f"--rename {exc}") from None


def parse_dtype(text: str) -> Any:
    from .spec import DTYPES

    return DTYPES[text].torch  # a conversion option: the writers make tensors of it


MEGATRON = ("megatron", "megatron-dist")
RANKED = ("megatron", "megatron-dist", "nxd")  # targets sharded over ranks

TARGET_OPTIONS: tuple[Option, ...] = (
    Option("megatron_spec", "Megatron spec", "Megatron names to write: local | te (Megatron-Core specs) | megatron-llm "
           "(epfLLM Megatron-LLM: nested names, interleaved q/k, [up; gate] SwiGLU; --to megatron only).",
           "choice", "local", choices=("local", "te", "megatron-llm"), formats=MEGATRON),
    Option("nxd_style", "NxD naming", "NxD target names: hf | megatron.", "choice", "hf", choices=("hf", "megatron"), formats=("nxd",)),
    Option("fuse_qkv", "Fused QKV", "NxD target: one fused qkv_proj.weight_qkv per rank.", "bool", False, formats=("nxd",)),
    Option("kv_size_multiplier", "KV size multiplier", "NxD target: replicate KV heads N times (TP > KV heads).", "int", 1,
           minimum=1, maximum=MAX_DEGREE, formats=("nxd",)),
    Option("xser", "xser layout", "NxD target: torch_xla xser layout (tensor files + references).", "bool", False, formats=("nxd",)),
    Option("iteration", "Iteration", "Iteration number written into Megatron / NxD targets.", "int", 1, minimum=0,
           maximum=2**63 - 1, formats=RANKED),
    Option("max_shard_size", "Max shard size", "HF shard size limit, e.g. 5GB, 500MB.", "text", "5GB", parse=parse_size,
           formats=("hf",)),
    Option("tp", "Tensor parallel", "Target tensor-parallel size.", "int", 1, minimum=1, maximum=MAX_DEGREE, formats=RANKED,
           step="layout"),
    Option("pp", "Pipeline parallel", "Target pipeline-parallel size.", "int", 1, minimum=1, maximum=MAX_DEGREE, formats=RANKED,
           step="layout"),
    Option("ep", "Expert parallel", "Target expert-parallel size (MoE).", "int", 1, minimum=1, maximum=MAX_DEGREE, formats=RANKED,
           step="layout"),
    Option("pp_layers", "Layers per stage", "Uneven pipeline split, e.g. 7,9.", "text", None, parse=parse_pp_layers,
           formats=RANKED, step="layout", placeholder="optional, e.g. 7,9"),
    Option("dtype", "Dtype", "fp32 | bf16 | fp16 (default: keep the source dtype).", "choice", None, choices=("fp32", "bf16", "fp16"),
           parse=parse_dtype, step="dtype"),
    Option("tokenizer", "Tokenizer", "HF tokenizer folder, sentencepiece tokenizer.model, or GPT-2 vocab.json (+ merges.txt): "
           "written into an HF output as a complete HF tokenizer; its size trims or pads the vocab.", "path", None, step="dtype",
           placeholder="optional tokenizer folder or file"),
    Option("tokenizer_root", "Tokenizer root", "Folder holding the tokenizer files the Megatron args name (tokenizer_model / "
           "vocab_file / merge_file), used when --tokenizer is not given.", "path", None, step="dtype", placeholder="optional"),
    Option("special_tokens", "Special tokens", "Set special tokens, e.g. eos=<|im_end|> (repeatable, or space-separated).",
           "list", (), step="dtype", placeholder="optional, e.g. eos=<|im_end|>", cli="--override-special-tokens"),
    Option("vocab_extra_ids", "Extra ids", "Append <extra_id_0..N-1> special tokens to the tokenizer (as Megatron's "
           "--vocab-extra-ids).", "int", 0, minimum=0, maximum=1 << 20, step="dtype"),
)

SOURCE_OPTIONS: tuple[Option, ...] = (
    Option("config", "Architecture config", "HF config.json giving the architecture (for sources that lack it).", "path", None,
           step="source", placeholder="optional config.json"),
    Option("true_vocab", "True vocab size", "Vocabulary rows to keep (drops Megatron padding).", "int", None, minimum=1,
           maximum=1 << 31, step="dtype", placeholder="optional", cli="--true-vocab-size"),
    Option("from_optimizer_fp32", "Weights from ZeRO fp32", "DeepSpeed source: rebuild fp32 weights from the ZeRO optimizer "
           "partitions (needed for ZeRO-3).", "bool", False, step="source"),
    Option("rotary_layout", "Rotary layout", "How the source stores q/k for RoPE: auto (detect) | half (rotate-half, HF / "
           "Megatron-Core) | interleaved (Meta consolidated.*.pth, --rotary-interleaved runs, Megatron-LLM).", "choice", "auto",
           choices=("auto", "half", "interleaved"), step="source"),
    Option("ignore", "Ignore", "Glob of stored tensor names to drop (repeatable).", "list", (), step="source",
           placeholder="optional globs, space-separated"),
    Option("rename", "Rename", "Rename stored tensors before reading them: PATTERN=REPLACEMENT, a regular expression "
           r"replaced wherever it matches, \1 for captures (repeatable, applied in order), e.g. '^transformer\.=model.'.",
           "list", (), parse=parse_renames, step="source", placeholder="optional PATTERN=REPLACEMENT rules, space-separated"),
    Option("rename_map", "Rename map", "File of exact renames, applied before --rename: a JSON object {\"old\": \"new\"} "
           "or 'old new' lines.", "path", None, step="source", placeholder="optional JSON or 'old new' lines", cli="--map"),
)

POLICY_OPTIONS: tuple[Option, ...] = (
    Option("force", "Replace a non-empty output", "Replace a non-empty output folder.", "bool", False, step="output"),
    Option("strict", "Refuse NaN / Inf", "Refuse to convert when a source tensor holds NaN or Inf (default: warn).", "bool", False,
           step="output"),
    Option("resume", "Resume", "Continue an interrupted conversion from its last complete HF shard / Megatron stage; keep the "
           "partial folder if this run stops too.", "bool", False, step="output"),
    Option("workers", "Workers", "Threads reading and gathering layers ahead of the writer (each holds about one layer).", "int", 2,
           minimum=1, maximum=64, step="output"),
)

ALL_OPTIONS: dict[str, Option] = {o.name: o for o in (*TARGET_OPTIONS, *SOURCE_OPTIONS, *POLICY_OPTIONS)}


def option(name: str) -> Option:
    return ALL_OPTIONS[name]


def help_for(name: str) -> str:
    return ALL_OPTIONS[name].help
