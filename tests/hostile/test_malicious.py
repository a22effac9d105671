"""Malicious pickles in every container: nothing runs, each is an inert placeholder or one clear error.

Each case plants a payload that would `touch` a canary file (see `pickles.py`); we open it
with `detect()`, `ckptscope inspect --json`, the human view and `--stats` (which reads every
tensor), then check the canary never appeared and the outcome is the documented one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ckptscope.inspectors.safe_pickle import ALLOWLIST, Placeholder

from .conftest import check_case
from .corpus import MALICIOUS, Case

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
    check_case(case, tmp_path)
    assert dict(vars(argparse.Namespace)) == NAMESPACE_BEFORE, "a pickle modified argparse.Namespace"
    assert all(not isinstance(v, Placeholder) for v in ALLOWLIST.values())
