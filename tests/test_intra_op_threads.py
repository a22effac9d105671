"""A conversion runs torch ops on its own threads only, with the objects alive before it frozen
out of the garbage collector, and gives the process both back afterwards, whether it finished
or failed: a verification or an app that converts next must not inherit a single-threaded torch
or a collector that no longer sees its objects."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import convert, run_to_end
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers import TargetOptions

SPEC = SampleSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    gc.unfreeze()  # an in-process CLI test may have frozen the session's objects for good (cli._torch_out_of_gc)
    yield 2
    torch.set_num_threads(before)


def test_the_count_is_one_while_converting_and_restored_after(tmp_path: Path, two_threads: int) -> None:
    src = write_hf(SPEC, tmp_path / "hf")
    seen, frozen = [], []
    for event in convert(make_plan(src, TargetOptions("megatron", tp=2, workers=2)), tmp_path / "out"):
        if event.stage == "layer":
            seen.append(torch.get_num_threads())
            frozen.append(gc.get_freeze_count())
    assert seen and set(seen) == {1}
    assert min(frozen) > 10_000  # the modules' objects, at least
    assert torch.get_num_threads() == two_threads
    assert gc.get_freeze_count() == 0


def test_a_failed_conversion_restores_it_too(tmp_path: Path, two_threads: int) -> None:
    src = write_hf(SPEC, tmp_path / "hf")
    events = convert(make_plan(src, TargetOptions("megatron", tp=2)), tmp_path / "out")
    next(events), next(events)  # started, one layer written
    with pytest.raises(RuntimeError, match="stop"):
        events.throw(RuntimeError("stop"))
    assert torch.get_num_threads() == two_threads
    assert gc.get_freeze_count() == 0
    run_to_end(make_plan(src, TargetOptions("hf")), tmp_path / "again")
    assert torch.get_num_threads() == two_threads


def test_a_caller_s_freeze_is_left_in_place(tmp_path: Path, two_threads: int) -> None:
    """The CLI freezes torch's objects for its process's life; a conversion does not undo that."""
    src = write_hf(SPEC, tmp_path / "hf")
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        run_to_end(make_plan(src, TargetOptions("hf")), tmp_path / "out")
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()
