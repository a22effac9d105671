"""Shared fixtures: where the real-world corpus lives, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def corpus_root() -> Path:
    env = os.environ.get("CKPTSCOPE_CORPUS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's app settings (the saved theme), nor another test's."""
    monkeypatch.setenv("CKPTSCOPE_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workspace (one small checkpoint of every format), written once per test module."""
    from ckptscope.converters.samples.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("ws") / "demo")["hf-llama"].parent


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
