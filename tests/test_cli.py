"""`ckptscope inspect` end to end: human and JSON output, filters, stats, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ckptscope.app.cli import app
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)
runner = CliRunner()


@pytest.fixture(scope="module")
def megatron_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mt")
    write_megatron_torch(SPEC, root, tp=2, pp=2, te=True, iterations=(5, 10))
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptscope.app.cli", *args], capture_output=True, text=True, timeout=120)


def test_json_schema(megatron_root: Path) -> None:
    result = runner.invoke(app, ["inspect", str(megatron_root), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "megatron-torch" and doc["iteration"] == 10 and doc["iterations"] == [5, 10]
    assert doc["parallel"] == {"tp": 2, "pp": 2, "ep": 1, "vpp": 1, "dp": 1}
    assert {"path", "size", "ranks"} <= set(doc["files"][0])
    tensor = doc["tensors"][0]
    assert {"name", "shape", "dtype", "nbytes", "file", "ranks"} <= set(tensor)
    assert doc["metadata"]["args"]["num_layers"] == 4
    assert doc["metadata"]["args"]["params_dtype"] == "torch.float32"


def test_human_output_collapses_layers(megatron_root: Path) -> None:
    result = runner.invoke(app, ["inspect", str(megatron_root)])
    assert result.exit_code == 0, result.output
    assert "decoder.layers.{0..3}.self_attention.linear_qkv.weight" in result.stdout
    assert "TP2×PP2" in result.stdout and "num_query_groups" in result.stdout


def test_filter_and_stats(megatron_root: Path) -> None:
    result = runner.invoke(app, ["inspect", str(megatron_root), "--json", "--filter", "decoder.layers.3.mlp.*", "--stats"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tensors"] and all(t["global_name"].startswith("decoder.layers.3.mlp.") for t in doc["tensors"])
    stats = {(s["name"], s["file"]): s for s in doc["stats"]}
    fc2 = stats[("decoder.layers.1.mlp.linear_fc2.weight", "mp_rank_00_001/model_optim_rng.pt")]
    expected = SPEC.tensor("layers.3.mlp.down")[:, :48]
    assert fc2["max"] == pytest.approx(float(expected.max())) and fc2["nan"] == 0


def test_stats_count_nan_and_inf(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.tensor([1.0, float("nan"), float("inf"), -2.0])}, str(tmp_path / "model.safetensors"))
    doc = json.loads(runner.invoke(app, ["inspect", str(tmp_path), "--json", "--stats"]).stdout)
    assert doc["stats"][0]["nan"] == 1 and doc["stats"][0]["inf"] == 1
    assert doc["stats"][0]["min"] == -2.0 and doc["stats"][0]["max"] == 1.0


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p, "folder is empty"),
        (lambda p: p / "nope", "no such file"),
        (lambda p: (p / "notes.txt").write_text("hi") and p, "not a recognised checkpoint"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{") and p, "truncated"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, make, needle: str) -> None:
    target = make(tmp_path)
    proc = _cli("inspect", str(target))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert lines[0].startswith("ckptscope: error: ")


def test_bad_latest_pointer_names_the_tracker(megatron_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(megatron_root, root)
    (root / "latest_checkpointed_iteration.txt").write_text("99")
    proc = _cli("inspect", str(root))
    assert proc.returncode == 2
    assert "latest_checkpointed_iteration.txt" in proc.stderr and "iter_0000099" in proc.stderr


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"evil\x1b[31mname\x07": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0
    assert "\x1b[31m" not in result.stdout and "\\x1b[31mname\\x07" in result.stdout


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = _cli("--debug", "inspect", str(tmp_path / "missing"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr
