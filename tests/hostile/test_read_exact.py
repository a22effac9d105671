"""Read exactly what torch reads, or refuse: zip members, views, DCP data files and chunks, BUILD.

Each case (see `round2.READ_EXACT`) is opened with `detect()` and the CLI; the outcome is the
documented one and no payload runs. Two behaviours need more than one process: an allowlisted
DCP class modified by `.metadata` must be caught the first time in a fresh process, and blamed
on the right checkpoint of a `diff`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptscope.inspectors import detect
from ckptscope.inspectors.dcp import DcpReader

from .conftest import Outcome, assert_one_line_error, check_case, run_measured
from .corpus import Case, megatron_dist
from .round2 import READ_EXACT, dcp_metadata_class_mutation


@pytest.mark.parametrize("case", READ_EXACT, ids=lambda c: c.name)
def test_read_exact(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)


def test_dcp_class_mutation_caught_first_time_and_blamed_right(tmp_path: Path) -> None:
    """A fresh process (DCP allowlist never used before), then both orders of a diff."""
    evil = dcp_metadata_class_mutation(tmp_path / "evil", tmp_path / "PWNED")
    clean = megatron_dist(tmp_path / "clean")
    case = Case("dcp_metadata_class_mutation", "", "", dcp_metadata_class_mutation, "error",
                r"tried to modify ChunkStorageMetadata.__init__", "evil/md/iter_0000010/.metadata")
    for args in (("inspect", str(evil)), ("diff", str(clean), str(evil)), ("diff", str(evil), str(clean))):
        out = run_measured(*args)
        assert_one_line_error(case, Outcome(out.code, out.stdout, out.stderr))
    assert not (tmp_path / "PWNED").exists()


def test_dcp_chunks_with_a_hole_are_incomplete(tmp_path: Path) -> None:
    """Without overlap, missing elements are a torn save: opens incomplete, the stored part reads."""
    import pickle

    root = megatron_dist(tmp_path, tp=2)
    meta_path = root / "iter_0000010/.metadata"
    meta = pickle.loads(meta_path.read_bytes())
    entry = meta.state_dict_metadata["embedding.word_embeddings.weight"]
    entry.chunks = entry.chunks[:1]
    meta_path.write_bytes(pickle.dumps(meta))
    ckpt = detect(root)
    assert not ckpt.complete
    assert any("embedding.word_embeddings.weight: chunks hold" in w for w in ckpt.warnings)
    reader = DcpReader(root / "iter_0000010")
    first = entry.chunks[0]
    assert reader.read_box("embedding.word_embeddings.weight", first.offsets, first.sizes).shape == torch.Size(first.sizes)


def test_expanded_tensor_within_bounds_still_reads(tmp_path: Path) -> None:
    """An `expand`ed tensor (stride 0, a few more elements than its storage) is what torch saves: read it."""
    from ckptscope.inspectors.torchfile import open_torch_file

    path = tmp_path / "x.pt"
    torch.save({"w": torch.arange(3.0).expand(4, 3)}, path)
    tensor = open_torch_file(path).obj["w"]
    assert torch.equal(tensor.load(), torch.arange(3.0).expand(4, 3))
