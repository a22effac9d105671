"""Option values are refused before any checkpoint is opened: exit 2, one line naming the option,
no traceback, nothing written, the source unchanged (issue 15: `--max-shard-size abc`,
`--true-vocab-size -24` and a 300-digit `--iteration` gave internal errors or failed half-way)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .conftest import ERROR_LINE, run_cli
from .corpus import hf_st

HUGE = "9" * 300


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("opts")
    hf_st(base)
    (base / "big.json").write_bytes(b" " * (17 * 2**20))
    (base / "list.json").write_text("[1, 2]")
    (base / "bad.json").write_text("{not json")
    os.mkfifo(base / "fifo.json")
    return base


@pytest.fixture(autouse=True)
def no_planning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused option must be refused before any checkpoint is read or planned."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was opened before the options were checked")

    # the modules that bind `detect` at import are imported (by resolving their targets) before
    # `detect` itself is patched: the CLI imports them lazily, and one first imported while the
    # patch is on would keep `boom` after the test
    for target in ("ckptscope.converters.plan.make_plan", "ckptscope.converters.diff.diff_checkpoints",
                   "ckptscope.converters.diff.check_target", "ckptscope.converters.verify.verify", "ckptscope.inspectors.detect"):
        monkeypatch.setattr(target, boom)


CONVERT = [
    (["--max-shard-size", "abc"], "--max-shard-size"),
    (["--max-shard-size", "nanGB"], "--max-shard-size"),
    (["--max-shard-size", "infMB"], "--max-shard-size"),
    (["--max-shard-size", "-5MB"], "--max-shard-size"),
    (["--max-shard-size", "0"], "--max-shard-size"),
    (["--max-shard-size", "1e400"], "--max-shard-size"),
    (["--max-shard-size", HUGE], "--max-shard-size"),
    (["--true-vocab-size", "-24"], "--true-vocab-size"),
    (["--true-vocab-size", "0"], "--true-vocab-size"),
    (["--true-vocab-size", HUGE], "--true-vocab-size"),
    (["--iteration", HUGE], "--iteration"),
    (["--iteration", "-1"], "--iteration"),
    (["--iteration", "abc"], "--iteration"),
    (["--tp", "0"], "--tp"),
    (["--tp", "-1"], "--tp"),
    (["--tp", "abc"], "--tp"),
    (["--pp", str(10**9)], "--pp"),
    (["--ep", HUGE], "--ep"),
    (["--pp-layers", "1,x"], "--pp-layers"),
    (["--pp-layers", "1,-3"], "--pp-layers"),
    (["--pp-layers", ",".join(["1"] * 5000)], "--pp-layers"),
    (["--pp-layers", HUGE], "--pp-layers"),
    (["--vocab-extra-ids", "-1"], "--vocab-extra-ids"),
    (["--vocab-extra-ids", str(10**12)], "--vocab-extra-ids"),
    (["--kv-size-multiplier", "0"], "--kv-size-multiplier"),
    (["--workers", "0"], "--workers"),
    (["--workers", str(10**6)], "--workers"),
    (["--dtype", "fp8"], "--dtype"),
    (["--to", "onnx"], "--to"),
    (["--megatron-spec", "x"], "--megatron-spec"),
    (["--nxd-style", "x"], "--nxd-style"),
    (["--rotary-layout", "x"], "--rotary-layout"),
    (["--config", "{w}/missing.json"], "--config"),
    (["--config", "{w}/big.json"], "--config"),
    (["--config", "{w}/fifo.json"], "--config"),
    (["--config", "/dev/zero"], "--config"),
    (["--config", "{w}"], "--config"),
    (["--tokenizer", "{w}/missing"], "--tokenizer"),
    (["--tokenizer", "{w}/fifo.json"], "--tokenizer"),
    (["--tokenizer-root", "{w}/list.json"], "--tokenizer-root"),
    (["--ignore", "x" * 10000], "--ignore"),
    (["--rename", "a[=b"], "--rename"),
    (["--rename", "(" * 3000 + "=b"], "--rename"),
    (["--rename", "x" * 10000 + "=y"], "--rename"),
    (["--rename", "x=\\9"], "--rename"),
    (["--map", "{w}/missing"], "--map"),
    (["--map", "{w}/fifo.json"], "--map"),
    (["--map", "/dev/zero"], "--map"),
    (["--bogus"], "--bogus"),
]


def _line(out) -> str:  # type: ignore[no-untyped-def]
    lines = out.stderr.strip().splitlines()
    assert out.code == 2, (out.code, out.stderr)
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "internal error" not in out.stderr
    return lines[0]


@pytest.mark.parametrize("extra, flag", CONVERT, ids=[f"{f}={a[-1][:12]}" for a, f in CONVERT])
def test_convert_option_refused_up_front(work: Path, extra: list[str], flag: str) -> None:
    before = digest(work / "hf")
    out = run_cli("convert", str(work / "hf"), str(work / "out"), *[a.format(w=work) for a in extra])
    line = _line(out)
    assert flag in line, line
    assert len(line) < 400
    assert not (work / "out").exists() and digest(work / "hf") == before


@pytest.mark.parametrize("args, flag", [
    (["--to", "hf", "--tp", "0"], "--tp"), (["--to", "megatron", "--pp", str(10**9)], "--pp"), (["--to", "megatron", "--ep", "-1"], "--ep"),
    (["--to", "x"], "--to"), (["--to", "hf", "--config", "/dev/zero"], "--config"), (["--to", "hf", "--ignore", "x" * 10000], "--ignore"),
    (["--to", "hf", "--rename", "a[=b"], "--rename"), (["--to", "hf", "--map", "/dev/zero"], "--map"),
])
def test_check_option_refused_up_front(work: Path, args: list[str], flag: str) -> None:
    assert flag in _line(run_cli("check", str(work / "hf"), *args))


@pytest.mark.parametrize("args, flag", [
    (["--tokens", "0"], "--tokens"), (["--tokens", HUGE], "--tokens"), (["--tolerance", "nan"], "--tolerance"),
    (["--tolerance", "-1"], "--tolerance"), (["--tolerance", "inf"], "--tolerance"), (["--config", "{w}/fifo.json"], "--config"),
])
def test_verify_option_refused_up_front(work: Path, args: list[str], flag: str) -> None:
    assert flag in _line(run_cli("verify", str(work / "hf"), str(work / "hf"), *[a.format(w=work) for a in args]))


@pytest.mark.parametrize("command", ["inspect", "diff", "verify", "check", "convert"])
@pytest.mark.parametrize("kind", ["missing", "fifo", "device"])
def test_path_arguments_are_checked_first(work: Path, command: str, kind: str) -> None:
    bad = {"missing": str(work / "missing"), "fifo": str(work / "fifo.json"), "device": "/dev/zero"}[kind]
    args = {"inspect": [bad], "diff": [bad, str(work / "hf")], "verify": [str(work / "hf"), bad], "check": [bad, "--to", "hf"],
            "convert": [bad, str(work / "out")]}[command]
    line = _line(run_cli(command, *args))
    assert bad in line


def test_diff_config_refused(work: Path) -> None:
    assert "--config" in _line(run_cli("diff", str(work / "hf"), str(work / "hf"), "--config", str(work / "big.json")))


def test_inspect_filter_too_long(work: Path) -> None:
    assert "--filter" in _line(run_cli("inspect", str(work / "hf"), "--filter", "*" * 10000))


def test_usage_errors_are_one_line(work: Path) -> None:
    for args in (["convert", str(work / "hf")], ["inspect"], ["convert", str(work / "hf"), str(work / "out"), "--tp"]):
        _line(run_cli(*args))


def test_config_that_is_not_a_json_object(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the up-front checks: a `--config` that is not JSON is still one line naming it, not an internal error."""
    monkeypatch.undo()
    for name in ("list.json", "bad.json"):
        out = run_cli("verify", str(work / "hf"), str(work / "hf"), "--config", str(work / name), "--no-logits")
        assert name in _line(out)


def test_good_values_still_work(work: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.undo()
    out = run_cli("convert", str(work / "hf"), str(tmp_path / "out"), "--to", "megatron", "--iteration", str(2**62),
                  "--max-shard-size", "2GiB", "--workers", "1", "--json")
    assert out.code == 0, out.stderr
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").read_text().strip() == str(2**62)
