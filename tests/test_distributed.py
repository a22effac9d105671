"""torchrun mode: two local ranks (gloo on 127.0.0.1) write the same bytes as one process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ckptscope.converters.distributed import DistContext, assign, ownership_units, share
from ckptscope.converters.plan import make_plan
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers import TargetOptions

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=160, vocab=1000, dtype=torch.bfloat16)
TARGETS = {
    "hf": ["--to", "hf", "--max-shard-size", "100KB"],  # ~6 shards, owned by both ranks
    "megatron": ["--to", "megatron", "--tp", "2", "--pp", "2"],  # one pipeline stage per rank
}


def _digests(folder: Path) -> dict[str, str]:
    """Per file: sha256 of the bytes; torch zips hash every member but torch's random serialization_id."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        if zipfile.is_zipfile(path) and path.suffix == ".pt":
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if not info.filename.endswith("serialization_id"):
                        h.update(f"{info.filename}:{info.header_offset}:{info.CRC}".encode())
                        h.update(z.read(info))
        else:
            h.update(path.read_bytes())
        out[str(path.relative_to(folder))] = h.hexdigest()
    return out


def _cli(args: list[str], *, ranks: int = 0) -> subprocess.CompletedProcess[str]:
    if ranks:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               "-m", "ckptscope.app.cli", "convert", *args, "--distributed"]
    else:
        cmd = [sys.executable, "-m", "ckptscope.app.cli", "convert", *args]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_megatron_torch(SPEC, tmp_path_factory.mktemp("dist") / "src", tp=2, pp=2)


@pytest.mark.parametrize("target", list(TARGETS))
def test_two_ranks_write_the_same_bytes_as_one_process(tmp_path: Path, source: Path, target: str) -> None:
    args = [*TARGETS[target], "--true-vocab-size", str(SPEC.vocab), "--json"]
    single = _cli([str(source), str(tmp_path / "single"), *args])
    assert single.returncode == 0, single.stderr[-3000:]
    ranked = _cli([str(source), str(tmp_path / "ranked"), *args], ranks=2)
    assert ranked.returncode == 0, ranked.stderr[-3000:] + ranked.stdout[-2000:]
    a, b = _digests(tmp_path / "single"), _digests(tmp_path / "ranked")
    assert list(a) == list(b)
    assert a == b
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # rank 0 renamed the folder into place


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_file_has_one_owner_and_both_ranks_work(source: Path, target: str) -> None:
    fmt = TARGETS[target][1]
    opts = TargetOptions(fmt, tp=2, pp=2) if fmt == "megatron" else TargetOptions(fmt, max_shard_bytes=100_000)
    plan = make_plan(source, opts, true_vocab=SPEC.vocab)
    units = ownership_units(plan)
    files = [f for u in units for f in u.files]
    assert len(files) == len(set(files))
    planned = {f.rel for f in plan.files if f.nbytes}
    assert planned <= set(files)
    shares = [share(plan, DistContext(rank, 2)) for rank in range(2)]
    assert all(groups for groups, _ in shares)  # both ranks convert something
    assert set().union(*(groups for groups, _ in shares)) == set(plan.groups)
    owned = [planned - foreign for _, foreign in shares]
    assert owned[0] and owned[1] and not owned[0] & owned[1] and owned[0] | owned[1] == planned


def test_assign_balances_largest_first() -> None:
    assert assign([10, 1, 1, 8], 2) == [0, 1, 1, 1]
    assert assign([5], 3) == [0]
