"""`ckptscope` command line: a thin face over the headless inspectors and converters.

Bad input never shows a traceback: a `CheckpointError` prints one line naming the file and the
problem and exits with status 2 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from ckptscope.inspectors import CheckpointError, detect
from ckptscope.inspectors.stats import iter_stats
from ckptscope.inspectors.summary import printable, select

from . import render

app = typer.Typer(
    name="ckptscope",
    help="Inspect, diff and convert LLM training checkpoints (Megatron-LM, Megatron-DeepSpeed, NxD, Hugging Face).",
    no_args_is_help=True,
    add_completion=False,
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
        except KeyboardInterrupt:
            typer.echo("ckptscope: interrupted", err=True)
            raise typer.Exit(130) from None
        except (FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            if _state["debug"]:
                raise
            fail(f"{getattr(exc, 'filename', '') or ''}{': ' if getattr(exc, 'filename', None) else ''}{exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - last resort: still one line, never a traceback
            if _state["debug"]:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", 1)

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False) -> None:
    _state["debug"] = debug


@app.command()
@guarded
def inspect(
    path: Annotated[Path, typer.Argument(help="Checkpoint root, iteration folder, or a single file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (machine output).")] = False,
    filter_: Annotated[str | None, typer.Option("--filter", "-f", help="Glob on tensor names, e.g. 'decoder.layers.0.*'.")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Compute min/max/mean/std and NaN/Inf counts (reads the selected tensors, one at a time).")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also list optimizer / rng tensors.")] = False,
) -> None:
    """Show format, layout, files, tensors, totals and training args of a checkpoint."""
    ckpt = detect(path)
    tensors = select(ckpt.tensors, filter_)
    if filter_ and not tensors:
        typer.echo(f"ckptscope: warning: no tensor matches {printable(filter_)!s}", err=True)
    stat_rows = list(iter_stats(ckpt, [t for t in tensors if show_all or t.group == "model"])) if stats else None
    if as_json:
        doc = ckpt.to_json()
        if filter_:
            doc["tensors"] = [t.to_json() for t in tensors]
            doc["filter"] = filter_
        if stat_rows is not None:
            doc["stats"] = [s.to_json() for s in stat_rows]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    render.render_inspect(render.make_console(), ckpt, tensors, stat_rows, show_all)


@app.command()
@guarded
def demo(
    target: Annotated[Path, typer.Argument(help="Folder to write the demo workspace into.")] = Path("ckptscope-demo"),
    force: Annotated[bool, typer.Option("--force", help="Replace the folder if it is not empty.")] = False,
) -> None:
    """Write a demo workspace with one small checkpoint of every supported format, then list it."""
    from ckptscope.converters.samples.demo import write_demo

    console = render.make_console()
    with console.status("writing demo checkpoints..."):
        items = write_demo(target, force=force)
    table = Table(title=f"Demo workspace: {target}", title_justify="left", show_edge=False)
    for col in ("folder", "format", "iteration", "layout", "tensors", "size"):
        table.add_column(col)
    for name, path in items.items():
        ckpt = detect(path)
        table.add_row(name, ckpt.kind, str(ckpt.iteration if ckpt.iteration is not None else "-"), ckpt.parallel.label(),
                      str(len(ckpt.model_tensors())), render.size(ckpt.total_bytes))
    console.print(table)
    console.print(Text(f"\nNext: ckptscope inspect {target}/megatron-torch-tp2pp2", style="bold"))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
