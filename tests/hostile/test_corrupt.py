"""Corrupt and inconsistent checkpoints: one-line error naming the file, exit 2, no traceback.

Every case in `corpus.CORRUPT` goes through `detect()` and `ckptscope inspect` in-process; a
subset also runs the real entry point as a separate process. Incomplete saves (torch_dist
without metadata.json, NxD tag without `done`, a missing data file) open with `complete:
false` and a warning, so a torn save can still be explored; `convert` refuses them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ckptscope.inspectors import CheckpointError, detect

from .conftest import assert_one_line_error, run_cli
from .corpus import CORRUPT, Case, build, by_name


def test_corpus_size() -> None:
    assert len(CORRUPT) >= 40


@pytest.mark.parametrize("case", CORRUPT, ids=lambda c: c.name)
def test_corrupt(case: Case, tmp_path: Path) -> None:
    path, _ = build(case, tmp_path)
    if case.expect == "error":
        with pytest.raises(CheckpointError) as info:
            detect(path)
        assert "\n" not in str(info.value) and re.search(case.problem, str(info.value))
        assert_one_line_error(case, run_cli("inspect", str(path)))
        return
    ckpt = detect(path)
    out = run_cli("inspect", str(path), "--json")
    assert out.code == 0, out.stderr
    doc = json.loads(out.stdout)
    if case.expect == "incomplete":
        assert doc["complete"] is False and not ckpt.complete
        assert any(re.search(case.problem, w) for w in doc["warnings"]), doc["warnings"]
    elif case.expect == "load_error":
        assert_one_line_error(case, run_cli("inspect", str(path), "--stats", "--all"))


def test_convert_refuses_incomplete_source(tmp_path: Path) -> None:
    """Inspecting a torn save is useful; converting it would produce a model with holes."""
    path, _ = build(by_name("md_no_metadata_json"), tmp_path)
    out = run_cli("convert", str(path), str(tmp_path / "out"), "--to", "hf")
    assert_one_line_error(Case("convert_incomplete", "", "", lambda *_: path, "error", r"incomplete", ""), out)
    assert not (tmp_path / "out").exists()
