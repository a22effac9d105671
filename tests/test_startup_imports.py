"""`inspect` and `--help` never import torch, transformers or textual (issue 17's start-up targets):
every format is inspected in one fresh process, which then reports what it imported, and its
JSON must equal what this process (torch imported) prints for the same checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401 - this process answers with torch loaded, the fresh one without

from ckptscope.app.cli import main

HEAVY = ("torch", "transformers", "textual", "numpy")

RUNNER = r"""
import contextlib, io, json, sys
from ckptscope.app.cli import main

paths = sys.argv[1:]

def run(args):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["ckptscope", *args]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue(), err.getvalue()

report = {"help": [run(h)[0] for h in (["--help"], ["inspect", "--help"], ["convert", "--help"])], "inspect": {}}
for path in paths:
    report["inspect"][path] = run(["inspect", "--json", path])
    report["inspect"][path + " (text)"] = run(["inspect", "--all", path])[0]
report["imported"] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(report))
"""


def _inspect_here(path: Path) -> str:
    out = io.StringIO()
    sys.argv = ["ckptscope", "inspect", "--json", str(path)]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    return out.getvalue()


@pytest.fixture(scope="module")
def every_format(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo workspace plus the formats it lacks: HF .bin, NxD xser, DeepSpeed ZeRO and
    universal, Megatron legacy (nested, with optimizer), a plain torch DCP folder."""
    from ckptscope.converters.samples.extra_formats import write_extra_formats

    extra = write_extra_formats(tmp_path_factory.mktemp("formats"))
    paths = sorted(p for p in demo.iterdir() if p.is_dir()) + list(extra.values())
    return paths


def test_inspect_and_help_import_no_torch(every_format: list[Path], corpus_root_paths: list[Path]) -> None:
    paths = [*every_format, *corpus_root_paths]
    proc = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + RUNNER, *map(str, paths)],
                          capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(proc.stdout)
    assert report["help"] == [0, 0, 0]
    assert report["imported"] == [], f"a fresh `inspect` / `--help` process imported {report['imported']}"
    for path in paths:
        code, out, err = report["inspect"][str(path)]
        assert code == 0 and report["inspect"][f"{path} (text)"] == 0, (path, err)
        assert json.loads(out) == json.loads(_inspect_here(path)), path  # with torch imported: the same answer


@pytest.fixture(scope="module")
def corpus_root_paths() -> list[Path]:
    """Real checkpoints of every kind the corpus holds (none when it is absent)."""
    from .conftest import corpus_root

    root = corpus_root()
    names = ["hf/mixtral_moe_sharded", "hf/llama_gqa_pytorch_bin_sharded", "megatron/gpt_tp2pp1/dist",
             "megatron/gpt_tp2pp1/legacy", "megatron/moe_ep2/dist", "deepspeed/zero2_bf16", "deepspeed/pipe2_mp"]
    return [root / n for n in names if (root / n).is_dir()]
