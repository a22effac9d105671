"""Real `ckptscope convert` processes interrupted by signals.

- SIGINT / SIGTERM: the temporary folder is removed and the exit status is 130 / 143.
- SIGKILL at random points: nothing at the destination is ever accepted by `detect()` unless
  the run had finished (the rename into place is the last step, after the completion marker).

The source (~90 MB) is large enough that a conversion takes a second or more, so signals land
mid-run; runs go in parallel to keep the wall time down.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import CheckpointError, detect

MEDIUM = SampleSpec(layers=12, hidden=384, heads=8, kv_heads=2, ffn=1024, vocab=4000, seed=11)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    return write_hf(MEDIUM, tmp_path_factory.mktemp("medium") / "hf", shards=2)


def _restore_sigint() -> None:
    """Background jobs inherit SIGINT ignored; a user's terminal would deliver it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(src: Path, dst: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ckptscope.app.cli", "convert", str(src), str(dst), *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_restore_sigint)  # noqa: PLW1509 - pytest's main thread spawns it


def partials(parent: Path, dst: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{dst.name}.ckptscope-partial-")]


def wait_for_partial(parent: Path, dst: Path, proc: subprocess.Popen[str], timeout: float = 60) -> bool:
    """Until the run has created its temporary folder (False if it ended first)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if partials(parent, dst):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("conversion never started")


@pytest.mark.parametrize("sig, code, target", [(signal.SIGINT, 130, "megatron"), (signal.SIGTERM, 143, "hf")])
def test_sigint_sigterm_remove_partial_output(medium: Path, tmp_path: Path, sig: int, code: int, target: str) -> None:
    extra = ["--pp", "2"] if target == "megatron" else ["--max-shard-size", "20MB"]
    for attempt, delay in enumerate((0.15, 0.05, 0.0)):  # a fast machine may finish before the signal lands
        dst = tmp_path / f"out{attempt}"
        proc = start(medium, dst, "--to", target, *extra)
        assert wait_for_partial(tmp_path, dst, proc), proc.communicate()
        time.sleep(delay)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        if dst.exists():
            assert detect(dst).complete  # the signal came after the final rename: inconclusive, retry
            continue
        assert proc.returncode == code, stderr
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
        assert not partials(tmp_path, dst)
        return
    pytest.fail("every conversion finished before the signal arrived")


def test_sigkill_at_random_points_never_leaves_an_accepted_folder(medium: Path, tmp_path: Path) -> None:
    rng = random.Random(20240607)
    runs = []
    for i, target in enumerate(["megatron", "hf", "megatron-dist", "megatron"]):
        dst = tmp_path / f"out{i}"
        extra = ["--pp", "2"] if target == "megatron" else ["--max-shard-size", "20MB"] if target == "hf" else []
        runs.append((dst, start(medium, dst, "--to", target, *extra), rng.uniform(0.0, 0.6)))
    killed = 0
    for dst, proc, delay in runs:
        if wait_for_partial(tmp_path, dst, proc):
            time.sleep(delay)
            proc.kill()
        proc.communicate(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            killed += 1
            if dst.exists():  # only possible if the kill landed after the final rename
                assert detect(dst).complete
            else:
                with pytest.raises(CheckpointError):
                    detect(dst)
        else:
            assert proc.returncode == 0 and detect(dst).complete
        for partial in partials(tmp_path, dst):  # whatever the kill left is never a checkpoint at dst
            assert partial.name.startswith(".") and partial != dst
    assert killed >= 2, "the source is too small for the kills to land mid-run"
