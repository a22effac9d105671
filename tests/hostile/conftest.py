"""Helpers shared by the hostile-input tests: build a case, run the CLI in-process or as a process."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from ckptscope.app.cli import app

from .corpus import Case, build

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


def check_case(case: Case, work: Path) -> None:
    """The contract every hostile case meets: the documented outcome through `detect()`, the JSON,
    human and `--stats` views of the CLI, and a canary that never appears."""
    import json

    import pytest

    from ckptscope.inspectors import CheckpointError, detect

    path, canary = build(case, work)
    if case.expect == "error":
        with pytest.raises(CheckpointError) as info:
            detect(path)
        assert "\n" not in str(info.value)
        assert_one_line_error(case, run_cli("inspect", str(path), "--json"))
    else:
        ckpt = detect(path)
        out = run_cli("inspect", str(path), "--json")
        assert out.code == 0, out.stderr
        if case.expect == "placeholder":
            placeholders = json.loads(out.stdout)["placeholders"]
            assert any(p.endswith(case.placeholder) for p in placeholders), placeholders
            assert any(p.endswith(case.placeholder) for p in ckpt.placeholders)
        human = run_cli("inspect", str(path), "--all")
        assert human.code == 0, human.stderr
        if case.expect == "placeholder":
            assert "inert placeholders" in human.stdout
        stats = run_cli("inspect", str(path), "--stats", "--json")
        assert stats.code == 0, stats.stderr
    assert not canary.exists(), f"{case.name}: payload ran"


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    config.addinivalue_line("markers", "slow: runs real conversions in subprocesses and signals them (a few seconds each)")


@dataclass
class Measured(Outcome):
    peak_mb: float
    seconds: float


def run_measured(*args: str, timeout: float = 120) -> Measured:
    """`python -m ckptscope.app.cli ...` in a child; its own peak RSS (wait4) and wall time.

    A child that runs past `timeout` is killed and reported with code -9 (a hang, before a fix).
    """
    import os
    import tempfile
    import threading
    import time

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ckptscope.app.cli", *args], stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        usage.ru_maxrss / 1024, seconds)
