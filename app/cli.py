"""`ckptscope` command line: a thin face over the headless inspectors and converters.

Bad input never shows a traceback: a `CheckpointError` prints one line naming the file and the
problem and exits with status 2 (`--debug` shows the traceback instead).
"""

# No `from __future__ import annotations` here: typer reads every command's annotations while it
# builds the command tree, two or three times each, and string annotations are compiled and
# evaluated again on every read (0.02 s of every start-up, issue 17).

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.lazy import LazyModule

from . import options
from .clihelp import ROOT_EXAMPLES, Command, examples
from .options import OptionError, validate

# What a command needs, imported when it runs: `--help` and `inspect` start without them (issue 17).
render = LazyModule("ckptscope.app.render")


def printable(text: Any, limit: int = 500) -> str:
    from ckptscope.inspectors.summary import printable as escape

    return escape(text, limit)


def stderr_progress() -> Any:
    from .progress import stderr_progress as progress

    return progress()


class OneLineErrors(TyperGroup):
    """Usage errors (`--tp abc`, an unknown option, a missing argument) as one line, exit 2, like every other refusal."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.echo("ckptscope: aborted", err=True)
            sys.exit(1)
        except typer.TyperException as exc:  # typer's own click: usage errors and bad parameters
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.echo(f"ckptscope: error: {printable(message, 1000)}{where}", err=True)
            sys.exit(getattr(exc, "exit_code", EXIT_BAD_INPUT))
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="ckptscope",
    help="Inspect, diff and convert LLM training checkpoints (Megatron-LM, Megatron-DeepSpeed, NxD, Hugging Face).\n\n"
         "`ckptscope` alone opens the terminal app in the current folder; `ckptscope PATH` opens it at PATH.",
    epilog=examples(ROOT_EXAMPLES),
    subcommand_metavar="[PATH] | COMMAND [ARGS]...",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=False,
    invoke_without_command=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_BAD_INPUT = 2
_state: dict[str, bool] = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """One line on stderr, then exit."""
    typer.echo(f"ckptscope: error: {printable(message, 1000)}", err=True)
    raise typer.Exit(code)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so cleanup (`finally`, generator close) runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def guarded(func: F) -> F:
    """Turn known failures into one-line errors with a non-zero status."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except CheckpointError as exc:
            if _state["debug"]:
                raise
            fail(str(exc))
        except OptionError as exc:
            if _state["debug"]:
                raise
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("ckptscope: interrupted", err=True)
            raise typer.Exit(130) from None
        except Terminated:
            typer.echo("ckptscope: terminated", err=True)
            raise typer.Exit(143) from None
        except (FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            if _state["debug"]:
                raise
            fail(f"{getattr(exc, 'filename', '') or ''}{': ' if getattr(exc, 'filename', None) else ''}{exc.strerror or exc}")
        except OSError as exc:  # disk full, I/O error while writing: the environment, not the input
            if _state["debug"]:
                raise
            fail(f"{getattr(exc, 'filename', '') or ''}{': ' if getattr(exc, 'filename', None) else ''}{exc.strerror or exc}", 1)
        except Exception as exc:  # noqa: BLE001 - last resort: still one line, never a traceback
            if _state["debug"]:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", 1)

    return wrapper  # type: ignore[return-value]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"ckptscope {version('ckptscope')}")
        except PackageNotFoundError:
            typer.echo("ckptscope (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="key=value for s3:// / https:// paths (endpoint_url, anon, profile; read_concurrency, read_retries); repeatable, never stored.")] = None,
    version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Without a command, open the terminal app in the current folder (`ckptscope PATH` opens PATH)."""
    _state["debug"] = debug
    if storage_option:
        from ckptscope.inspectors.storage import configure, parse_option

        try:
            configure(dict(parse_option(o) for o in storage_option))
        except ValueError as exc:
            fail(str(exc))
    if ctx.invoked_subcommand is None:
        open_app(Path.cwd())


def open_app(path: Path) -> None:
    """Run the Textual app at a folder or checkpoint."""
    from ckptscope.app.tui.app import CkptscopeApp

    if not path.exists():
        fail(f"{path}: no such file or directory")
    CkptscopeApp(path).run()


def _path_shortcut(argv: list[str]) -> Path | None:
    """`ckptscope PATH` (an existing path, not a command name) opens the app there."""
    args, opts = [], []
    for i, a in enumerate(argv):  # `--storage-option k=v` before a URL configures its filesystem
        if a.startswith("--storage-option=") or (i and argv[i - 1] == "--storage-option"):
            opts.append(a.split("=", 1)[1] if a.startswith("--storage-option=") else a)
        elif a not in ("--debug", "--storage-option"):
            args.append(a)
    if opts and len(args) == 1:
        from ckptscope.inspectors.storage import configure, parse_option

        try:
            configure(dict(parse_option(o) for o in opts))
        except ValueError:
            return None  # the command line proper reports it in one line
    if len(args) == 1 and not args[0].startswith("-") and args[0] not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        return options.location(args[0])
    return None


@app.command(cls=Command)
@guarded
def inspect(
    path: Annotated[options.Location, typer.Argument(help="Checkpoint root, iteration folder, or a single file (or an s3:// / https:// URL).", parser=options.location)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (machine output).")] = False,
    filter_: Annotated[str | None, typer.Option("--filter", "-f", help="Glob on tensor names, e.g. 'decoder.layers.0.*'.")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Compute min/max/mean/std and NaN/Inf counts (reads the selected tensors, one at a time).")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also list optimizer / rng tensors.")] = False,
) -> None:
    """Show format, layout, files, tensors, totals and training args of a checkpoint."""
    from ckptscope.inspectors import detect
    from ckptscope.inspectors.rankmap import rank_map
    from ckptscope.inspectors.stats import iter_stats
    from ckptscope.inspectors.summary import select

    validate(locals(), options.INSPECT)
    ckpt = detect(path)
    tensors = select(ckpt.tensors, filter_)
    if filter_ and not tensors:
        typer.echo(f"ckptscope: warning: no tensor matches {printable(filter_)!s}", err=True)
    stat_rows = list(iter_stats(ckpt, [t for t in tensors if show_all or t.group == "model"])) if stats else None
    family = render.family_and_quirks(ckpt)
    if as_json:
        doc = ckpt.to_json()
        doc["family"], doc["quirks"], doc["architecture"] = family["family"], family["quirks"], family["architecture"] or None
        if family["problem"]:
            doc["family_problem"] = family["problem"]
        doc["rank_map"] = rank_map(ckpt).to_json()
        if filter_:
            doc["tensors"] = [t.to_json() for t in tensors]
            doc["filter"] = filter_
        if stat_rows is not None:
            doc["stats"] = [s.to_json() for s in stat_rows]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    render.render_inspect(render.make_console(), ckpt, tensors, stat_rows, show_all, family)


@app.command(cls=Command)
@guarded
def demo(
    target: Annotated[Path, typer.Argument(help="Folder to write the demo workspace into.")] = Path("ckptscope-demo"),
    force: Annotated[bool, typer.Option("--force", help="Replace the folder if it is not empty.")] = False,
    open_tui: Annotated[bool, typer.Option("--open/--no-open", help="Open the app on the demo (when run in a terminal).")] = True,
) -> None:
    """Write a demo workspace with one small checkpoint of every supported format, then open the app on it."""
    validate(locals(), options.DEMO)
    from rich.table import Table
    from rich.text import Text

    from ckptscope.converters.writers.output import check_destination, publish_permissions
    from ckptscope.inspectors import detect

    from .safe import row, safe

    check_destination(target, force)  # --force replaces a folder only: never a file, /, home or a cwd ancestor
    from ckptscope.converters.samples.demo import write_demo

    console = render.make_console()
    with console.status("writing demo checkpoints..."):
        items = write_demo(target, force=force)
    publish_permissions(Path(target).expanduser())  # built in a private temporary folder
    table = Table(title=safe(f"Demo workspace: {target}"), title_justify="left", show_edge=False)
    for col in ("folder", "format", "iteration", "layout", "tensors", "size"):
        table.add_column(col)
    for name, path in items.items():
        ckpt = detect(path)
        row(table, name, ckpt.kind, str(ckpt.iteration if ckpt.iteration is not None else "-"), ckpt.parallel.label(),
            str(len(ckpt.model_tensors())), render.size(ckpt.total_bytes))
    console.print(table)
    if open_tui and sys.stdin.isatty() and sys.stdout.isatty():
        open_app(Path(target))
        return
    console.print(Text(f"\nNext: ckptscope {target}   (the app)   or   ckptscope inspect {target}/megatron-torch-tp2pp2", style="bold"))


def _help(name: str) -> str:
    """A convert option's help, as the core declares it (converters/options.py)."""
    from ckptscope.converters.options import option

    opt = option(name)
    return opt.help + (f" ({', '.join(opt.formats)} targets)" if opt.formats and name not in ("tp", "pp", "ep") else "")


def _default(name: str) -> str:
    """A default the core declares (`to`: the first registered target)."""
    from ckptscope.converters.formats import TARGETS
    from ckptscope.converters.options import option

    return next(iter(TARGETS)) if name == "to" else option(name).default


def _targets_help() -> str:
    from ckptscope.converters.formats import TARGETS

    return "Target format: " + " | ".join(f"{f.name} ({f.label})" for f in TARGETS.values()) + "."


@app.command(cls=Command)
@guarded
def convert(
    src: Annotated[options.Location, typer.Argument(help="Source checkpoint (any supported format; a path or an s3:// / https:// URL).", parser=options.location)],
    dst: Annotated[options.Location, typer.Argument(help="Output folder (built in a temporary sibling, renamed at the end), or s3://bucket/prefix (streamed, markers last).", parser=options.location)],
    to: Annotated[str, typer.Option("--to", help=_targets_help())] = _default("to"),
    tp: Annotated[int, typer.Option("--tp", help=_help("tp"))] = 1,
    pp: Annotated[int, typer.Option("--pp", help=_help("pp"))] = 1,
    ep: Annotated[int, typer.Option("--ep", help=_help("ep"))] = 1,
    pp_layers: Annotated[str | None, typer.Option("--pp-layers", help=_help("pp_layers"))] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=_help("dtype"))] = None,
    true_vocab_size: Annotated[int | None, typer.Option("--true-vocab-size", help=_help("true_vocab"))] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help=_help("tokenizer"))] = None,
    tokenizer_root: Annotated[Path | None, typer.Option("--tokenizer-root", help=_help("tokenizer_root"))] = None,
    vocab_extra_ids: Annotated[int, typer.Option("--vocab-extra-ids", help=_help("vocab_extra_ids"))] = 0,
    override_special_tokens: Annotated[list[str] | None, typer.Option("--override-special-tokens", help=_help("special_tokens"))] = None,
    rotary_layout: Annotated[str, typer.Option("--rotary-layout", help=_help("rotary_layout"))] = "auto",
    config: Annotated[Path | None, typer.Option("--config", help=_help("config"))] = None,
    megatron_spec: Annotated[str, typer.Option("--megatron-spec", help=_help("megatron_spec"))] = "local",
    iteration: Annotated[int, typer.Option("--iteration", help=_help("iteration"))] = 1,
    nxd_style: Annotated[str, typer.Option("--nxd-style", help=_help("nxd_style"))] = _default("nxd_style"),
    fuse_qkv: Annotated[bool, typer.Option("--fuse-qkv/--no-fuse-qkv", help=_help("fuse_qkv"))] = False,
    kv_size_multiplier: Annotated[int, typer.Option("--kv-size-multiplier", help=_help("kv_size_multiplier"))] = 1,
    xser: Annotated[bool, typer.Option("--xser/--no-xser", help=_help("xser"))] = False,
    from_optimizer_fp32: Annotated[bool, typer.Option("--from-optimizer-fp32", help=_help("from_optimizer_fp32"))] = False,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help=_help("max_shard_size"))] = "5GB",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help=_help("ignore"))] = None,
    rename: Annotated[list[str] | None, typer.Option("--rename", metavar="PATTERN=REPLACEMENT", help=_help("rename"))] = None,
    rename_map: Annotated[Path | None, typer.Option("--map", metavar="FILE", help=_help("rename_map"))] = None,
    plan_only: Annotated[bool, typer.Option("--plan-only", help="Print the plan and stop; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help=_help("force"))] = False,
    strict: Annotated[bool, typer.Option("--strict", help=_help("strict"))] = False,
    resume: Annotated[bool, typer.Option("--resume", help=_help("resume"))] = False,
    workers: Annotated[int, typer.Option("--workers", help=_help("workers"))] = 2,
    distributed: Annotated[bool, typer.Option("--distributed", help="Under torchrun: each rank writes its share of the output files, rank 0 finishes the output (gloo; see docs/performance.md).")] = False,
    verify_after: Annotated[bool, typer.Option("--verify", help="Compare tensors and logits of the result with the source.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output (plan and summary as JSON).")] = False,
) -> None:
    """Convert a checkpoint to another format and parallel layout, streaming layer by layer."""
    _torch_out_of_gc()
    from ckptscope.converters.request import ConvertRequest
    from ckptscope.converters.run import convert as run_convert
    from ckptscope.converters.writers.output import check_destination

    v = validate(locals(), options.CONVERT)  # paths: they exist, are what they should be
    src, dst = v["src"], v["dst"]
    given = {"tp": tp, "pp": pp, "ep": ep, "pp_layers": pp_layers, "dtype": dtype, "true_vocab": true_vocab_size,
             "tokenizer": tokenizer, "tokenizer_root": tokenizer_root, "vocab_extra_ids": vocab_extra_ids,
             "special_tokens": override_special_tokens or (), "rotary_layout": rotary_layout, "config": config,
             "megatron_spec": megatron_spec, "iteration": iteration, "nxd_style": nxd_style, "fuse_qkv": fuse_qkv,
             "kv_size_multiplier": kv_size_multiplier, "xser": xser, "from_optimizer_fp32": from_optimizer_fp32,
             "max_shard_size": max_shard_size, "ignore": ignore or (), "force": force, "strict": strict, "resume": resume,
             "workers": workers, "rename": rename or (), "rename_map": rename_map}
    request = ConvertRequest(str(src), str(dst), to, {k: value for k, value in given.items() if value is not None})
    problems = request.errors()  # every option against the core's tables: one line naming the first bad one
    if problems:
        fail(problems[0])
    for warning in request.warnings():
        typer.echo(f"ckptscope: warning: {warning}", err=True)
    if distributed and resume:
        fail("--resume and --distributed do not combine")
    follower = distributed and os.environ.get("RANK", "0") != "0"  # torchrun ranks > 0 print errors only
    if not plan_only:  # refused before any work: output over / inside / around what is read, --force onto a file or /
        check_destination(dst, force, [p for p in (src, tokenizer, tokenizer_root, config, rename_map) if p is not None])
    plan = request.plan()
    console = None if as_json else render.make_console()  # JSON output imports no rich at all
    if not plan.ok and not plan_only and not as_json:  # refuse first: the reasons, not a plan that will not run
        for error in plan.errors:
            typer.echo(f"ckptscope: error: {printable(error, 4000)}", err=True)
        typer.echo("ckptscope: nothing written (--plan-only prints the whole plan)", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if as_json and (plan_only or not plan.ok):
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    elif not as_json and not follower:
        render.render_plan(console, plan)
    if not plan.ok:
        raise typer.Exit(EXIT_BAD_INPUT)
    if plan_only:
        return
    if distributed:
        from ckptscope.converters.run import convert_distributed

        events = convert_distributed(plan, dst, force=force, strict=strict)
    else:
        events = run_convert(plan, dst, **request.policies())
    cpu_before = time.process_time()  # every thread of this process: how many cores the conversion kept busy
    final = _run_with_progress(console, events, quiet=as_json or follower)
    cpu_seconds = time.process_time() - cpu_before
    if follower:
        _exit_rank(0)
    for warning in final.warnings:
        typer.echo(f"ckptscope: warning: {printable(warning, 1000)}", err=True)
    summary = {"output": final.output, "seconds": round(final.elapsed, 3), "cpu_seconds": round(cpu_seconds, 3), "bytes": final.bytes_done,
               "files": len(plan.files), "format": to, "resumed_groups": final.skipped, "warnings": list(final.warnings)}
    if verify_after:
        from ckptscope.converters.verify import verify_conversion

        _quiet_transformers()
        with stderr_progress() as progress:
            report = verify_conversion(request, plan, progress)
        summary["verify"] = report.to_json()
        if not as_json:
            render.render_verify(console, report)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        from rich.text import Text

        console.print(Text(f"wrote {printable(final.output, 1000)}: {render.size(final.bytes_done)} in {final.elapsed:.1f}s", style="bold green"))
    if verify_after and summary["verify"]["logits"]["ok"] is False:
        raise typer.Exit(1)
    if distributed:
        _exit_rank(0)


def _torch_out_of_gc() -> None:
    """Import torch, then move what the process holds out of the collector's sight (`gc.freeze`):
    ~180k objects that live as long as the process. A full collection walks them all in 0.07-0.09 s,
    and the engine's own imports trigger one right after torch's (issue 17: a conversion's fixed cost)."""
    import gc

    import torch  # noqa: F401

    gc.freeze()


def _quiet_transformers() -> None:
    """transformers prints its own load report (every unexpected tensor name, raw: escape sequences
    included) and progress bars to the terminal while `verify` builds the models; our report says
    what differs, so only its errors are let through."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _renames(rename: list[str] | None, rename_map: Path | None) -> Any:
    """`--rename` rules and a `--map` file as the core applies them (converters/renames.py)."""
    from ckptscope.converters.renames import Renames

    return Renames.from_options(rename or (), rename_map)


def _read_config(path: Path | None) -> dict[str, Any] | None:
    from ckptscope.converters.discovery import read_config

    return read_config(path) if path is not None else None


def _exit_rank(code: int) -> None:
    """End a torchrun rank without interpreter teardown: daemon threads still inside torch's C++
    code (read-ahead, background config) can abort a normal exit ("terminate called without an
    active exception"). Output is complete and flushed, and the process group is destroyed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_with_progress(console: Any, events: Any, quiet: bool) -> Any:
    """Drive the run generator under a rich progress bar (overall bytes, ETA, current layer);
    `quiet` (`--json`, torchrun ranks > 0) shows none, so it builds none."""
    if quiet:
        return _drain(events)
    from .safe import safe_markup
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    final = None
    with Progress(TextColumn("[bold]{task.description:<22}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = None
        try:
            for event in events:
                if task is None:
                    task = bar.add_task(event.label, total=event.bytes_total)
                bar.update(task, completed=event.bytes_done, description=safe_markup(event.label))
                final = event
        finally:
            events.close()  # an interrupt here, outside the generator, must still run its cleanup now
    return final


def _drain(events: Any) -> Any:
    """The run generator's last event, with no bar."""
    final = None
    try:
        for event in events:
            final = event
    finally:
        events.close()  # as under the bar: an interrupt must still run the generator's cleanup now
    return final


@app.command(cls=Command)
@guarded
def verify(
    a: Annotated[options.Location, typer.Argument(help="First checkpoint (any format).", parser=options.location)],
    b: Annotated[options.Location, typer.Argument(help="Second checkpoint (any format).", parser=options.location)],
    logits: Annotated[bool, typer.Option("--logits/--no-logits", help="Also compare logits on a fixed token batch.")] = True,
    tokens: Annotated[int, typer.Option("--tokens", help="Sequence length of the token batch.")] = 16,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Max abs logits difference accepted.")] = 1e-5,
    config: Annotated[Path | None, typer.Option("--config", help="HF config.json for sources that lack the architecture.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    layers: Annotated[bool, typer.Option("--layers", help="Run both on the probe layer by layer: per-layer attention, MLP and hidden-state differences, and the first layer and sub-block beyond --tolerance.")] = False,
) -> None:
    """Compare two checkpoints through the canonical model: tensors and logits."""
    validate(locals(), options.VERIFY)
    from ckptscope.converters.verify import verify as run_verify

    if layers:
        _verify_layers(a, b, tokens, tolerance, _read_config(config), as_json)
        return
    _quiet_transformers()
    with stderr_progress() as progress:
        report = run_verify(a, b, logits=logits, tokens=tokens, tolerance=tolerance,
                            config=_read_config(config), progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render.render_verify(render.make_console(), report)
    if report.logits_ok is False or (not logits and not report.identical):
        raise typer.Exit(1)


def _verify_layers(a: Path, b: Path, tokens: int, tolerance: float, config: dict[str, Any] | None, as_json: bool) -> None:
    """`verify --layers`: where two models diverge (converters/layer_diff.py); exit 1 when they do."""
    from ckptscope.converters.layer_diff import compare_layers

    report = compare_layers(a, b, tokens=tokens, tolerance=tolerance, config=config)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render.render_layers(render.make_console(), report)
    if not report.ok:
        raise typer.Exit(1)


@app.command(cls=Command)
@guarded
def diff(
    a: Annotated[options.Location, typer.Argument(help="Checkpoint A (any format), the reference.", parser=options.location)],
    b: Annotated[options.Location, typer.Argument(help="Checkpoint B (any format).", parser=options.location)],
    numeric: Annotated[bool, typer.Option("--numeric", help="Also read the tensors (one layer at a time) and report the max abs difference of each.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    only_problems: Annotated[bool, typer.Option("--only-problems", help="List only tensors that differ.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="HF config.json giving the architecture (for sources that lack it).")] = None,
    rename: Annotated[list[str] | None, typer.Option("--rename", metavar="PATTERN=REPLACEMENT", help=_help("rename") + " Applies to both sides.")] = None,
    rename_map: Annotated[Path | None, typer.Option("--map", metavar="FILE", help=_help("rename_map"))] = None,
) -> None:
    """Debug mismatched tensor names: missing, unexpected, shape- and dtype-mismatched tensors, with suggestions."""
    validate(locals(), options.DIFF)
    from ckptscope.converters.diff import diff_checkpoints

    with stderr_progress() as progress:
        report = diff_checkpoints(a, b, numeric=numeric, config=config, renames=_renames(rename, rename_map),
                                  progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(only_problems), indent=2) + "\n")
    else:
        render.render_diff(render.make_console(), report, only_problems)
    if not report.identical:
        raise typer.Exit(1)


@app.command(cls=Command)
@guarded
def check(
    path: Annotated[options.Location, typer.Argument(help="Source checkpoint (any supported format).", parser=options.location)],
    to: Annotated[str, typer.Option("--to", help="Target format: hf | megatron | megatron-dist.")],
    tp: Annotated[int, typer.Option("--tp", help="Target tensor-parallel size (Megatron targets).")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Target pipeline-parallel size.")] = 1,
    ep: Annotated[int, typer.Option("--ep", help="Target expert-parallel size (MoE).")] = 1,
    config: Annotated[Path | None, typer.Option("--config", help="HF config.json giving the architecture (for sources that lack it).")] = None,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Glob of stored tensor names to drop (repeatable).")] = None,
    rename: Annotated[list[str] | None, typer.Option("--rename", metavar="PATTERN=REPLACEMENT", help=_help("rename"))] = None,
    rename_map: Annotated[Path | None, typer.Option("--map", metavar="FILE", help=_help("rename_map"))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """What converting PATH --to a format and layout would do (mapped, ignored, unplaceable, missing, layout errors); writes nothing."""
    validate(locals(), options.CHECK)
    from ckptscope.converters.diff import check_target

    report = check_target(path, to, tp=tp, pp=pp, ep=ep, config=config, ignore=tuple(ignore or ()),
                          renames=_renames(rename, rename_map))
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render.render_check(render.make_console(), report)
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    shortcut = _path_shortcut(sys.argv[1:])
    if shortcut is not None:
        open_app(shortcut)
        return
    if _command_help(sys.argv[1:]):
        return
    app()


def _command_help(argv: list[str]) -> bool:
    """`ckptscope COMMAND -h`: the command's help without processing the root's options (typer
    builds a pydantic validator for each processed option: a fifth of a second of start-up)."""
    if len(argv) != 2 or argv[1] not in ("-h", "--help"):
        return False
    group = typer.main.get_command(app)
    command = group.commands.get(argv[0]) if isinstance(group, TyperGroup) else None
    if command is None:
        return False
    command.main([argv[1]], prog_name=f"{group.name} {argv[0]}", help_option_names=["-h", "--help"])
    return True


if __name__ == "__main__":
    main()
