"""FIFOs, devices and links where a regular file is expected: refused in one line, never opened
blocking, never read without bound. Each case runs as a child process with a timeout, so a
regression is a failed test rather than a hung suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Outcome, assert_one_line_error, run_measured
from .corpus import Case, build
from .round2 import SPECIAL_FILES


@pytest.mark.parametrize("case", SPECIAL_FILES, ids=lambda c: c.name)
def test_special_file(case: Case, tmp_path: Path) -> None:
    path, _ = build(case, tmp_path)
    out = run_measured("inspect", str(path), "--stats", timeout=60)
    assert out.code != -9, f"{case.name}: hung (killed after 60 s)"
    assert_one_line_error(case, Outcome(out.code, out.stdout, out.stderr))
    assert out.peak_mb < 1024
