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
import torch

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
    import torch.distributed.checkpoint as dcp

    from ckptscope.converters.samples.demo import DEMO_SPEC
    from ckptscope.converters.samples.deepspeed import write_deepspeed_zero
    from ckptscope.converters.samples.hf import hf_config, hf_state_dict, write_hf
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch
    from ckptscope.converters.samples.nxd import write_nxd

    root = tmp_path_factory.mktemp("formats")
    paths = sorted(p for p in demo.iterdir() if p.is_dir())
    paths.append(write_hf(DEMO_SPEC, root / "hf-bin", shards=2, fmt="bin"))
    paths.append(write_nxd(DEMO_SPEC, root / "nxd-xser", tp=2, xser=True))
    paths.append(write_deepspeed_zero(DEMO_SPEC, root / "ds-zero", dp=2))
    paths.append(write_megatron_torch(DEMO_SPEC, root / "megatron-legacy", tp=2, legacy=True, with_optimizer=True))
    state = hf_state_dict(DEMO_SPEC)
    tag = root / "ds-universal" / "global_step7_universal"
    for name, value in state.items():
        folder = tag / "zero" / name
        folder.mkdir(parents=True)
        torch.save({"param": value.float().clone(), "cat_dim": 0}, folder / "fp32.pt")
        torch.save({"param": torch.zeros_like(value), "cat_dim": 0}, folder / "exp_avg.pt")
    torch.save({"module": None, "ds_version": "0.19.8", "global_steps": 7}, tag / "mp_rank_00_model_states.pt")
    (tag.parent / "latest_universal").write_text(tag.name)
    (tag.parent / "config.json").write_text(json.dumps(hf_config(DEMO_SPEC)))
    paths.append(tag.parent)
    with pytest.warns(UserWarning):  # "torch.distributed is disabled ... assuming a single process"
        dcp.save({"model": {k: v.clone() for k, v in state.items()}}, checkpoint_id=str(root / "dcp" / "fsdp_0"))
    (root / "dcp" / "config.json").write_text(json.dumps(hf_config(DEMO_SPEC)))
    paths.append(root / "dcp" / "fsdp_0")
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
