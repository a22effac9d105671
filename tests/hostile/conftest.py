"""Helpers shared by the hostile-input tests: build a case, run the CLI in-process or as a process."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

from typer.testing import CliRunner

from ckptscope.app.cli import app

from .corpus import Case

runner = CliRunner()
ERROR_LINE = re.compile(r"^ckptscope: error: .+$")


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Outcome:
    """`ckptscope ...` in this process (fast); the CLI's own error handling is exercised."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"CLI raised {type(result.exception).__name__}: {result.exception}") from result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    """`python -m ckptscope.app.cli ...` as a separate process (started, not waited for)."""
    return subprocess.Popen([sys.executable, "-m", "ckptscope.app.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_one_line_error(case: Case, out: Outcome) -> None:
    """Exit 2, stderr is exactly one `ckptscope: error:` line naming the file and the problem."""
    lines = out.stderr.strip().splitlines()
    assert out.code == 2, f"{case.name}: exit {out.code}, stderr {out.stderr!r}"
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), f"{case.name}: not one error line: {out.stderr!r}"
    assert "Traceback" not in out.stderr + out.stdout
    assert re.search(case.problem, lines[0]), f"{case.name}: {lines[0]!r} does not match {case.problem!r}"
    if case.names:
        assert re.search(case.names, lines[0]), f"{case.name}: {lines[0]!r} does not name {case.names!r}"
    assert "\x1b" not in out.stderr


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    config.addinivalue_line("markers", "slow: runs real conversions in subprocesses and signals them (a few seconds each)")
