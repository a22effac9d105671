"""`ConvertRequest`: the one thing a face (CLI, wizard) hands to the engine.

It holds raw option values by name (text from a terminal or an input field, or typed values),
so both faces build it the same way; `values()` parses and validates every option against the
tables in `options.py` and the rules between options below, each problem one line naming the
option. `plan()` is `make_plan` with exactly these options; the wizard's child process receives
the same request as JSON and plans again from it, so what runs is what was previewed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .formats import TARGETS
from .options import ALL_OPTIONS, POLICY_OPTIONS, SOURCE_OPTIONS, TARGET_OPTIONS, OptionError

if TYPE_CHECKING:
    from .plan import Plan
    from .renames import Renames
    from .sources.base import CanonicalSource
    from .writers.base import TargetOptions


@dataclass
class ConvertRequest:
    src: str
    dst: str = ""
    to: str = "hf"
    options: dict[str, Any] = field(default_factory=dict)  # raw values by option name (options.ALL_OPTIONS)

    # ----- validation --------------------------------------------------------------------------
    def errors(self) -> list[str]:
        """Every problem with the options, one line each (empty when the request can be planned)."""
        problems = self._option_errors()
        if not problems:
            from .plan import option_conflicts

            try:
                problems += option_conflicts(self.target_options())
            except OptionError as exc:
                problems.append(str(exc))
        return problems  # rules against the model are the plan's

    def _option_errors(self) -> list[str]:
        """Each option on its own: known, parseable, in range, given for this kind of target."""
        problems: list[str] = []
        if self.to not in TARGETS:
            return [f"--to {self.to}: unknown target format (choose from {', '.join(TARGETS)})"]
        unknown = [k for k in self.options if k not in ALL_OPTIONS]
        problems += [f"unknown option {k!r}" for k in unknown]
        typed: dict[str, Any] = {}
        for name, opt in ALL_OPTIONS.items():
            try:
                typed[name] = opt.value(self.options.get(name))
            except OptionError as exc:
                problems.append(str(exc))
                continue
            if opt.step == "layout" and self._misplaced(name, typed[name]):  # a layout no such target can have
                problems.append(f"{opt.flag} applies to {', '.join(opt.formats or ())} targets, not --to {self.to}")
        return problems

    def warnings(self) -> list[str]:
        """Options given for another kind of target: ignored, and said so."""
        out = []
        for name, opt in ALL_OPTIONS.items():
            if opt.step != "layout" and self._misplaced(name, opt.value(self.options.get(name))):
                out.append(f"{opt.flag} applies to {', '.join(opt.formats or ())} targets; ignored for --to {self.to}")
        return out

    def _misplaced(self, name: str, value: Any) -> bool:
        opt = ALL_OPTIONS[name]
        return name in self.options and value != opt.value(None) and not opt.applies_to(self.to)

    def values(self) -> dict[str, Any]:
        """Every option's typed value (defaults filled in); `OptionError` with the first problem."""
        problems = self._option_errors()
        if problems:
            raise OptionError(problems[0])
        return {name: opt.value(self.options.get(name)) for name, opt in ALL_OPTIONS.items()}

    # ----- what the engine takes ---------------------------------------------------------------
    def target_options(self) -> TargetOptions:
        from .tokenizers import parse_overrides
        from .writers.base import TargetOptions

        v = self.values()
        fields = {o.name: v[o.name] for o in TARGET_OPTIONS if o.applies_to(self.to)}
        fields.pop("max_shard_size", None)
        try:
            fields["special_tokens"] = parse_overrides([item for value in v["special_tokens"] for item in value.split()])
        except ValueError as exc:
            raise OptionError(f"--override-special-tokens: {exc}") from None
        return TargetOptions(self.to, max_shard_bytes=v["max_shard_size"], workers=v["workers"], **fields)

    def plan_kwargs(self) -> dict[str, Any]:
        v = self.values()
        return {"config": v["config"], "true_vocab": v["true_vocab"], "ignore": tuple(v["ignore"]),
                "from_optimizer_fp32": v["from_optimizer_fp32"], "rotary_layout": v["rotary_layout"], "renames": self.renames()}

    def renames(self) -> Renames:
        """`--map` then `--rename`, as every reader of this request's source applies them."""
        from .renames import Renames

        v = self.values()
        return Renames.from_options(v["rename"], v["rename_map"])

    def policies(self) -> dict[str, Any]:
        v = self.values()
        return {o.name: v[o.name] for o in POLICY_OPTIONS if o.name != "workers"}

    def plan(self) -> Plan:
        from .plan import make_plan

        return make_plan(self.src, self.target_options(), **self.plan_kwargs())

    def open_source(self) -> CanonicalSource:
        """The source as this request's conversion reads it (architecture and where it came from),
        without planning a target; errors are one line naming the checkpoint."""
        from ckptscope.inspectors import detect
        from ckptscope.inspectors.errors import CheckpointError

        from .discovery import read_config
        from .sources import open_source
        from .spec import SpecError

        v = self.source_options()
        try:
            return open_source(detect(self.src), config=read_config(v["config"]) if v["config"] else None,
                               true_vocab=v["true_vocab"], from_optimizer_fp32=v["from_optimizer_fp32"],
                               rotary_layout=v["rotary_layout"], renames=self.renames())
        except SpecError as exc:
            raise CheckpointError(self.src, str(exc)) from None

    def source_options(self) -> dict[str, Any]:
        """The options that say how to read the source (for `verify` after the conversion)."""
        v = self.values()
        return {o.name: v[o.name] for o in SOURCE_OPTIONS}

    # ----- transport ---------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ConvertRequest:
        data = json.loads(text)
        return cls(src=str(data["src"]), dst=str(data.get("dst") or ""), to=str(data.get("to") or "hf"),
                   options=dict(data.get("options") or {}))
