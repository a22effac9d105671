"""Output safety: a conversion never writes over, inside or around its source, never replaces what
someone else created meanwhile, never follows a link planted in its partial folder, and leaves a
result the user's team can read (issue 15, "Writing where it must not").

Every refusal: exit 2, one `ckptscope: error:` line naming the path and the problem, source bytes
unchanged, nothing written outside the destination.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
from pathlib import Path

import pytest
import torch

from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import convert
from ckptscope.converters.writers import TargetOptions
from ckptscope.converters.writers.output import AtomicFolder, OutputExists

from .conftest import ERROR_LINE, Outcome, run_cli
from .corpus import TRACKER, _load_own, hf_st, megatron


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (the source tree before/after)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(out: Outcome, *words: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.code == 2, (out.code, out.stderr, out.stdout[-500:])
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def hf(tmp_path: Path) -> Path:
    return hf_st(tmp_path, shards=2)


@pytest.fixture
def mt(tmp_path: Path) -> Path:
    return megatron(tmp_path, tp=1)


# ----- destination overlaps the source ------------------------------------------------------------
def test_destination_is_the_source(hf: Path) -> None:
    before = digest(hf)
    refused(run_cli("convert", str(hf), str(hf), "--force"), str(hf), "is the source")
    assert digest(hf) == before


def test_destination_contains_the_source(mt: Path) -> None:
    """`convert ROOT/iter_X ROOT --force` deleted the root with every other iteration."""
    before = digest(mt)
    iteration = next(mt.glob("iter_*"))
    refused(run_cli("convert", str(iteration), str(mt), "--force"), "contains the source")
    assert digest(mt) == before


def test_destination_inside_the_source(hf: Path) -> None:
    before, names = digest(hf), listing(hf)
    for force in ([], ["--force"]):
        refused(run_cli("convert", str(hf), str(hf / "converted"), *force), "inside the source")
    assert digest(hf) == before and listing(hf) == names


def test_destination_reached_through_a_symlink(hf: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(hf)
    before = digest(hf)
    refused(run_cli("convert", str(hf), str(link), "--force"), "is the source")
    refused(run_cli("convert", str(link), str(hf / "sub"), "--force"), "inside the source")
    assert digest(hf) == before


def test_destination_that_holds_a_source_file_through_a_symlink(hf: Path, tmp_path: Path) -> None:
    """HF caches keep shards as symlinks into a blob folder: that folder is part of the source too."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snap = tmp_path / "snapshot"
    snap.mkdir()
    for f in hf.iterdir():
        (blobs / f.name).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(blobs / f.name)
    before = digest(blobs)
    plan = make_plan(snap, TargetOptions("hf"))
    with pytest.raises(OutputExists, match="source"):
        list(convert(plan, blobs, force=True))
    assert digest(blobs) == before


def test_library_refuses_too(hf: Path) -> None:
    """The TUI and scripts call `convert()` directly: the refusal lives there, not only in the CLI."""
    plan = make_plan(hf, TargetOptions("hf"))
    before = digest(hf)
    with pytest.raises(OutputExists, match="is the source"):
        list(convert(plan, hf, force=True))
    assert digest(hf) == before


# ----- --force -------------------------------------------------------------------------------------
def test_force_onto_a_file_is_refused(hf: Path, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    refused(run_cli("convert", str(hf), str(target), "--force"), str(target), "not a folder")
    assert target.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if "ckptscope-old" in p.name or "partial" in p.name]


@pytest.mark.parametrize("where", ["root", "home", "cwd", "cwd-parent"])
def test_force_onto_a_protected_folder_is_refused_up_front(hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            where: str) -> None:
    home = tmp_path / "home"
    (home / "work" / "deep").mkdir(parents=True)
    (home / "precious.txt").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work" / "deep")
    (home / "work" / "deep" / "f").write_text("x")
    dst = {"root": Path("/"), "home": home, "cwd": home / "work" / "deep", "cwd-parent": home / "work"}[where]
    names = listing(home)
    line = refused(run_cli("convert", str(hf), str(dst), "--force"), "--force will not replace it")
    assert "internal error" not in line
    assert listing(home) == names


def test_force_replaces_a_folder(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    out = run_cli("convert", str(hf), str(dst), "--force", "--json")
    assert out.code == 0, out.stderr
    assert not (dst / "old.txt").exists() and (dst / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# ----- a destination that appears meanwhile, two conversions ---------------------------------------
def _started(plan, dst: Path, **kw):  # type: ignore[no-untyped-def]
    run = convert(plan, dst, **kw)
    next(run)  # "start": the partial folder exists, the lock is held
    return run


def test_destination_created_meanwhile_is_not_replaced(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    run = _started(make_plan(hf, TargetOptions("megatron")), dst)
    dst.mkdir()
    (dst / "theirs.txt").write_text("someone else's")
    with pytest.raises(OutputExists, match="while converting"):
        list(run)
    assert (dst / "theirs.txt").read_text() == "someone else's" and listing(dst) == {"theirs.txt"}
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name or "lock" in p.name]


def test_empty_destination_filled_meanwhile_is_not_replaced(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    dst.mkdir()
    run = _started(make_plan(hf, TargetOptions("hf")), dst)
    (dst / "theirs.bin").write_bytes(b"x" * 10)
    with pytest.raises(OutputExists, match="filled by someone else"):
        list(run)
    assert listing(dst) == {"theirs.bin"}


def test_file_created_meanwhile_is_not_replaced(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    run = _started(make_plan(hf, TargetOptions("hf")), dst)
    dst.write_text("someone else's file")
    with pytest.raises(OutputExists):
        list(run)
    assert dst.read_text() == "someone else's file"


def test_empty_folder_created_meanwhile_is_filled(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    run = _started(make_plan(hf, TargetOptions("hf")), dst)
    dst.mkdir()
    list(run)
    assert (dst / "config.json").is_file()


def test_two_conversions_to_one_destination(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    first = _started(make_plan(hf, TargetOptions("megatron")), dst)
    line = refused(run_cli("convert", str(hf), str(dst), "--to", "hf", "--force"), "another ckptscope conversion", f"pid {os.getpid()}")
    assert str(dst) in line
    with pytest.raises(OutputExists, match="another ckptscope conversion"):
        list(convert(make_plan(hf, TargetOptions("hf")), dst, force=True))
    list(first)  # the first one is untouched by the refused ones
    assert (dst / TRACKER).is_file()
    assert not [p for p in tmp_path.iterdir() if "lock" in p.name or "partial" in p.name]
    out = run_cli("convert", str(hf), str(dst), "--to", "hf", "--force", "--json")  # the lock is free again
    assert out.code == 0, out.stderr


# ----- --resume ------------------------------------------------------------------------------------
def _interrupted(plan, dst: Path) -> Path:  # type: ignore[no-untyped-def]
    run = convert(plan, dst, resume=True)
    next(run)
    next(run)
    with pytest.raises(KeyboardInterrupt):
        run.throw(KeyboardInterrupt)
    partials = [p for p in dst.parent.iterdir() if ".ckptscope-partial-" in p.name]
    assert len(partials) == 1
    return partials[0]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir-symlink"])
def test_resume_does_not_follow_what_is_planted_in_the_partial_folder(hf: Path, tmp_path: Path, kind: str) -> None:
    opts = dict(max_shard_bytes=40_000)
    dst = tmp_path / "out"
    partial = _interrupted(make_plan(hf, TargetOptions("hf", **opts)), dst)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("outside")
    pending = sorted(p.name for p in partial.iterdir() if p.suffix == ".safetensors")
    name = "model-00002-of-00002.safetensors" if "model-00002-of-00002.safetensors" not in pending else "config.json"
    target = partial / name
    if target.exists():
        target.unlink()
    if kind == "symlink":
        target.symlink_to(victim / "f")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(victim)
    out = run_cli("convert", str(hf), str(dst), "--resume", "--max-shard-size", "40000")
    refused(out, name, "refusing to resume")
    assert (victim / "f").read_text() == "outside" and listing(victim) == {"f"}
    assert not dst.exists()


def test_partial_folder_that_is_a_symlink_is_not_resumed(hf: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    partial = _interrupted(make_plan(hf, TargetOptions("hf", max_shard_bytes=40_000)), dst)
    elsewhere = tmp_path / "elsewhere"
    partial.rename(elsewhere)
    partial.symlink_to(elsewhere)
    before = digest(elsewhere)
    out = run_cli("convert", str(hf), str(dst), "--resume", "--max-shard-size", "40000", "--json")
    assert out.code == 0, out.stderr
    assert digest(elsewhere) == before


# ----- permissions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
@pytest.mark.parametrize("to", ["hf", "megatron", "megatron-dist"])
def test_output_honours_the_umask(hf: Path, tmp_path: Path, mask: int, to: str) -> None:
    old = os.umask(mask)
    try:
        out = run_cli("convert", str(hf), str(tmp_path / "out"), "--to", to, "--json")
    finally:
        os.umask(old)
    assert out.code == 0, out.stderr
    for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode == want, f"{path}: {oct(mode)} != {oct(want)}"


# ----- tokenizer paths from the checkpoint ---------------------------------------------------------
@pytest.mark.parametrize("vocab", ["../../outside/vocab.json", "../outside/vocab.json", "tok/../../outside/vocab.json", "link/vocab.json"])
def test_tokenizer_path_from_args_stays_inside_the_root(mt: Path, tmp_path: Path, vocab: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vocab.json").write_text('{"a": 0}')
    (outside / "merges.txt").write_text("#version: 0.2\n")
    root = tmp_path / "tokroot" / "b"  # ../../outside from here is tmp_path/outside
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside)
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = _load_own(rank_file)
        state["args"] = argparse.Namespace(**{**vars(state["args"]), "tokenizer_type": "GPT2BPETokenizer", "vocab_file": vocab,
                                              "merge_file": vocab.replace("vocab.json", "merges.txt")})
        torch.save(state, rank_file)
    before = digest(mt)
    out = run_cli("convert", str(mt), str(tmp_path / "out"), "--tokenizer-root", str(root))
    line = refused(out)
    assert "outside" in line or "not found" in line
    assert not (tmp_path / "out").exists()
    assert digest(mt) == before


def test_atomic_folder_is_private_while_written(tmp_path: Path) -> None:
    with AtomicFolder(tmp_path / "out") as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o700
        (tmp / "a").write_text("1")
    assert (tmp_path / "out" / "a").read_text() == "1"


# ----- demo --force ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["home", "cwd-parent", "file"])
def test_demo_force_is_refused_where_convert_force_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """`demo --force` replaced its target with `shutil.rmtree`: `ckptscope demo ~ --force` removed the home directory."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "precious.txt").write_text("x")
    (home / "notes.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work")
    target = {"home": home, "cwd-parent": home, "file": home / "notes.txt"}[where]
    names = listing(home)
    refused(run_cli("demo", str(target), "--force", "--no-open"))
    assert listing(home) == names and (home / "notes.txt").read_text() == "keep"
