"""Shared fixtures: where the real-world corpus lives, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def corpus_root() -> Path:
    env = os.environ.get("CKPTSCOPE_CORPUS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if not root.is_dir():
        pytest.skip(f"real-checkpoint corpus not found at {root} (set CKPTSCOPE_CORPUS)")
    return root


def proc_read_bytes() -> int:
    """Bytes this process has read through read(2)-like calls so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")
