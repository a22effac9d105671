"""CLI conventions (issue 16): `-h` everywhere, `--version`, shell completion, readable metavars,
examples in every command's help, refusals before the plan, honest verify / diff messages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptscope.app.cli import app

runner = CliRunner()
COMMANDS = ("inspect", "demo", "convert", "verify", "diff", "check")


def _script() -> str:
    """The installed console script (completion is keyed to the program name `ckptscope`)."""
    beside = Path(sys.executable).parent / "ckptscope"
    found = str(beside) if beside.exists() else shutil.which("ckptscope")
    if not found:
        pytest.skip("the ckptscope console script is not installed")
    return found


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_dash_h_is_help_everywhere(command: str) -> None:
    args = [command, "-h"] if command else ["-h"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: ckptscope {command}".rstrip() + " ")
    assert "Examples:" in result.stdout and (f"ckptscope {command}" in result.stdout.split("Examples:")[1])


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"ckptscope {version('ckptscope')}"


def test_top_level_help_says_path_opens_the_app() -> None:
    out = runner.invoke(app, ["--help"]).stdout
    assert "Usage: ckptscope [OPTIONS] [PATH] | COMMAND [ARGS]..." in out
    assert "`ckptscope PATH` opens it at PATH" in out.replace("\n  ", " ")
    assert "--install-completion" in out and "--show-completion" in out


def test_metavars_read_like_placeholders() -> None:
    out = runner.invoke(app, ["convert", "--help"], terminal_width=200).stdout
    assert "Usage: ckptscope convert [OPTIONS] SRC DST" in out
    for shown in ("--tp N", "--dtype DTYPE", "--tokenizer PATH", "--ignore GLOB", "--to FORMAT", "--max-shard-size SIZE",
                  "--override-special-tokens NAME=TOKEN", "--config FILE"):
        assert shown in out, shown
    assert not re.search(r"\{\w+\}|<(int|str|path|float|list\[str\])( range)?>", out), out
    assert "Usage: ckptscope inspect [OPTIONS] PATH" in runner.invoke(app, ["inspect", "-h"]).stdout
    assert "Usage: ckptscope demo [OPTIONS] [DIR]" in runner.invoke(app, ["demo", "-h"]).stdout


def test_missing_argument_names_the_metavar() -> None:
    result = runner.invoke(app, ["convert"])
    assert result.exit_code == 2 and "Missing argument 'SRC'" in result.output


def test_shell_completion_completes_commands_and_options() -> None:
    env = {**os.environ, "_CKPTSCOPE_COMPLETE": "complete_bash", "COMP_WORDS": "ckptscope conv", "COMP_CWORD": "1"}
    done = subprocess.run([_script()], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["convert"], done
    env.update(COMP_WORDS="ckptscope convert --dty", COMP_CWORD="2")
    done = subprocess.run([_script()], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["--dtype"], done
    shown = subprocess.run([_script(), "--show-completion", "bash"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "_CKPTSCOPE_COMPLETE=complete_bash" in shown.stdout


@pytest.fixture(scope="module")
def small_megatron(tmp_path_factory) -> Path:
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch
    from ckptscope.converters.samples.spec import SampleSpec

    root = tmp_path_factory.mktemp("mt")
    write_megatron_torch(SampleSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300), root, tp=1, pp=1)
    return root


def test_convert_refuses_before_printing_the_plan(small_megatron: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(small_megatron), str(tmp_path / "out"), "--to", "megatron", "--tp", "3"])
    assert result.exit_code == 2
    assert result.stdout == "", result.stdout  # no plan above the refusal
    assert "ckptscope: error: target layout: 8 attention heads do not split over TP=3" in result.stderr
    assert not (tmp_path / "out").exists()
    planned = runner.invoke(app, ["convert", str(small_megatron), str(tmp_path / "out"), "--to", "megatron", "--tp", "3", "--plan-only"])
    assert planned.exit_code == 2 and "Output files" in planned.stdout  # asked for: the whole plan, errors included
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    result = runner.invoke(app, ["convert", str(small_megatron), str(tmp_path / "full"), "--to", "hf"])
    assert result.exit_code == 2 and result.stdout == "" and "exists and is not empty" in result.stderr


@pytest.mark.parametrize("command", ("convert", "check"))
def test_unknown_target_names_the_option_and_the_choices(small_megatron: Path, tmp_path: Path, command: str) -> None:
    args = [command, str(small_megatron), *([str(tmp_path / "out")] if command == "convert" else []), "--to", "safetensors"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith("ckptscope: error: --to safetensors: unknown target format") and str(small_megatron) not in line
    assert all(name in line for name in ("hf", "megatron", "megatron-dist", "nxd"))
