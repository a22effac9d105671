"""Malicious pickles in every container: nothing runs, each is an inert placeholder or one clear error.

Each case plants a payload that would `touch` a canary file (see `pickles.py`); we open it
with `detect()`, `ckptscope inspect --json`, the human view and `--stats` (which reads every
tensor), then check the canary never appeared and the outcome is the documented one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ckptscope.inspectors import CheckpointError, detect
from ckptscope.inspectors.safe_pickle import ALLOWLIST, Placeholder

from .conftest import assert_one_line_error, run_cli
from .corpus import MALICIOUS, Case, build

NAMESPACE_BEFORE = dict(vars(argparse.Namespace))


def test_corpus_size() -> None:
    assert len(MALICIOUS) >= 20
    containers = {c.container for c in MALICIOUS}
    for needed in ("HF pytorch_model.bin", "Megatron args (model_optim_rng.pt)", "torch_dist common.pt", "DCP .metadata",
                   "NxD xser reference file", "DeepSpeed mp_rank_00_model_states.pt", "NxD shard (plain)",
                   "legacy (non-zip) torch file"):
        assert needed in containers


@pytest.mark.parametrize("case", MALICIOUS, ids=lambda c: c.name)
def test_malicious(case: Case, tmp_path: Path) -> None:
    path, canary = build(case, tmp_path)
    if case.expect == "error":
        with pytest.raises(CheckpointError) as info:
            detect(path)
        assert "\n" not in str(info.value)
        assert_one_line_error(case, run_cli("inspect", str(path), "--json"))
    else:
        ckpt = detect(path)
        out = run_cli("inspect", str(path), "--json")
        assert out.code == 0, out.stderr
        doc = json.loads(out.stdout)
        if case.expect == "placeholder":
            assert any(p.endswith(case.placeholder) for p in doc["placeholders"]), doc["placeholders"]
            assert any(p.endswith(case.placeholder) for p in ckpt.placeholders)
        human = run_cli("inspect", str(path), "--all")
        assert human.code == 0, human.stderr
        if case.expect == "placeholder":
            assert "inert placeholders" in human.stdout
        stats = run_cli("inspect", str(path), "--stats", "--json")
        assert stats.code == 0, stats.stderr
    assert not canary.exists(), f"{case.name}: payload ran"
    assert dict(vars(argparse.Namespace)) == NAMESPACE_BEFORE, "a pickle modified argparse.Namespace"
    assert all(not isinstance(v, Placeholder) for v in ALLOWLIST.values())
