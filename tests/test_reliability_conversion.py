"""Conversion safety, in-process: sources stay byte-identical, a full disk is one clear line and
leaves nothing behind, NaN/Inf warn or (with --strict) refuse, `--resume` continues a killed run.

The signal tests (SIGINT, SIGTERM, SIGKILL at random points) run real subprocesses and live in
tests/hostile/test_interrupts.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ckptscope.app.cli import app
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import CheckpointError, detect

SPEC = SampleSpec(layers=4, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=100, seed=5)
runner = CliRunner()


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (names and bytes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def no_partials(parent: Path) -> bool:
    return not any(".ckptscope-partial-" in p.name for p in parent.iterdir())


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("src")
    return {"hf": write_hf(SPEC, base / "hf", shards=2),
            "megatron": write_megatron_torch(SPEC, base / "mt", tp=2, pp=2)}


@pytest.mark.parametrize("kind", ["hf", "megatron"])
def test_source_byte_identical_after_every_command(sources: dict[str, Path], kind: str, tmp_path: Path) -> None:
    src = sources[kind]
    before = tree_digest(src)
    target = "megatron" if kind == "hf" else "hf"
    runs = [
        ("inspect", str(src)),
        ("inspect", str(src), "--json", "--stats", "--all"),
        ("convert", str(src), str(tmp_path / "out"), "--to", target, "--json"),
        ("verify", str(src), str(tmp_path / "out"), "--json"),
        ("convert", str(src), str(tmp_path / "out"), "--to", target, "--force", "--verify", "--json"),
    ]
    for args in runs:
        code, _, stderr = cli(*args)
        assert code == 0, (args, stderr)
        assert tree_digest(src) == before, f"source changed by {args[0]}"
    assert no_partials(tmp_path)


def _enospc_after(n: int):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def hook(original):  # type: ignore[no-untyped-def]
        def patched(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] > n:
                raise OSError(errno.ENOSPC, "No space left on device", str(getattr(self, "path", "?")))
            return original(self, *args, **kwargs)

        return patched

    return hook


@pytest.mark.parametrize("target, cls_path", [
    ("hf", "ckptscope.converters.writers.safetensors_stream.SafetensorsStreamWriter.write"),
    ("megatron", "ckptscope.converters.writers.torchzip.TorchZipWriter.add"),
])
def test_disk_full_is_one_line_and_removes_partial_output(sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           target: str, cls_path: str) -> None:
    module_name, cls_name, attr = cls_path.rsplit(".", 2)
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    monkeypatch.setattr(cls, attr, _enospc_after(5)(getattr(cls, attr)))
    src = sources["megatron" if target == "hf" else "hf"]
    code, _, stderr = cli("convert", str(src), str(tmp_path / "out"), "--to", target, "--json")
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert "No space left on device" in lines[0] and "partial output removed" in lines[0]
    assert not (tmp_path / "out").exists() and no_partials(tmp_path)


def _with_nan(src: Path, dst: Path) -> Path:
    """Copy of the HF source with one NaN and one Inf in layer 1's down projection."""
    import shutil

    shutil.copytree(src, dst)
    for shard in sorted(dst.glob("*.safetensors")):
        tensors = load_file(shard)
        name = "model.layers.1.mlp.down_proj.weight"
        if name in tensors:
            tensors[name][0, 0] = float("nan")
            tensors[name][0, 1] = float("inf")
            save_file(tensors, shard, metadata={"format": "pt"})
    return dst


def test_nan_warns_by_default_and_strict_refuses(sources: dict[str, Path], tmp_path: Path) -> None:
    src = _with_nan(sources["hf"], tmp_path / "nan-src")
    code, stdout, stderr = cli("convert", str(src), str(tmp_path / "out"), "--to", "megatron", "--json")
    assert code == 0, stderr
    assert "ckptscope: warning: non-finite values in layer 1" in stderr and "1 NaN, 1 Inf" in stderr
    assert json.loads(stdout)["warnings"]
    code, _, stderr = cli("convert", str(src), str(tmp_path / "strict"), "--to", "megatron", "--strict", "--json")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--strict refuses" in lines[0] and "layer 1" in lines[0]
    assert not (tmp_path / "strict").exists() and no_partials(tmp_path)


# ----- --resume -----------------------------------------------------------------------------------
KILLER = r"""
import os, signal, sys

from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import convert
from ckptscope.converters.writers import TargetOptions
src, dst, target, stop, shard = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
plan = make_plan(src, TargetOptions(target, pp=2 if target == "megatron" else 1, max_shard_bytes=shard))
for n, event in enumerate(convert(plan, dst)):
    if n == stop:
        os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer: no cleanup runs
"""


@pytest.mark.parametrize("target, stop, shard", [("megatron", 4, 5 * 10**9), ("hf", 4, 40_000)])
def test_resume_after_sigkill(sources: dict[str, Path], tmp_path: Path, target: str, stop: int, shard: int) -> None:
    src = sources["megatron" if target == "hf" else "hf"]
    dst = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(src), str(dst), target, str(stop), str(shard)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partials = [p for p in tmp_path.iterdir() if ".ckptscope-partial-" in p.name]
    assert len(partials) == 1 and not dst.exists()
    with pytest.raises(CheckpointError):
        detect(dst)
    journal = json.loads((partials[0] / ".ckptscope-resume.json").read_text())
    assert journal["completed_files"], "the killed run finished at least one unit"
    kept = {rel: os.stat(partials[0] / rel).st_mtime_ns for rel in journal["completed_files"]}

    extra = ["--pp", "2"] if target == "megatron" else ["--max-shard-size", str(shard)]
    code, stdout, stderr = cli("convert", str(src), str(dst), "--to", target, "--resume", "--json", *extra)
    assert code == 0, stderr
    assert json.loads(stdout)["resumed_groups"] > 0
    assert no_partials(tmp_path) and not (dst / ".ckptscope-resume.json").exists()
    for rel, mtime in kept.items():  # completed files were kept, not rewritten
        assert os.stat(dst / rel).st_mtime_ns == mtime

    clean = tmp_path / "clean"
    code, _, stderr = cli("convert", str(src), str(clean), "--to", target, "--json", *extra)
    assert code == 0, stderr
    assert tree_digest(dst) == tree_digest(clean), "resumed output differs from an uninterrupted conversion"


def test_resume_without_partial_starts_fresh(sources: dict[str, Path], tmp_path: Path) -> None:
    code, stdout, stderr = cli("convert", str(sources["hf"]), str(tmp_path / "out"), "--to", "megatron", "--resume", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["resumed_groups"] == 0
    assert detect(tmp_path / "out").complete


def test_incomplete_source_is_refused(tmp_path: Path) -> None:
    from ckptscope.converters.samples.megatron_dist import write_megatron_dist

    src = write_megatron_dist(SPEC, tmp_path / "torn", with_metadata_json=False)
    code, _, stderr = cli("convert", str(src), str(tmp_path / "out"), "--to", "hf", "--json")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "incomplete" in lines[0] and "metadata.json" in lines[0]
    assert not (tmp_path / "out").exists() and no_partials(tmp_path)


def test_torch_zip_outputs_carry_valid_crcs(sources: dict[str, Path], tmp_path: Path) -> None:
    """Our Megatron writer's zips pass the CRC check the reader now applies to full reads."""
    code, _, stderr = cli("convert", str(sources["hf"]), str(tmp_path / "out"), "--to", "megatron", "--json")
    assert code == 0, stderr
    ckpt = detect(tmp_path / "out")
    for t in ckpt.model_tensors():
        assert torch.isfinite(ckpt.load(t)).all()
