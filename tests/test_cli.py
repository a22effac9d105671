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


def _many_names(folder: Path, names: list[str]) -> Path:
    """A safetensors file with one 1-element tensor per name (header written directly: fast)."""
    import struct

    folder.mkdir()
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(names)))
    return folder


def test_names_that_do_not_collapse_are_listed_without_a_table_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: 300k names without a numeric pattern took 135 s and 1.8 GB in rich's table layout.
    Above MAX_TABLE_ROWS the rows are plain aligned lines: every name still listed, escaped, once."""
    import random
    import string

    from ckptscope.app import render

    monkeypatch.setattr(render, "MAX_TABLE_ROWS", 50)
    laid_out: list[int] = []
    table = render.listing_table
    monkeypatch.setattr(render, "listing_table", lambda title, cols, rows: laid_out.append(len(rows)) or table(title, cols, rows))
    rnd = random.Random(0)
    names = sorted({"".join(rnd.choices(string.ascii_lowercase, k=10)) for _ in range(300)}) + ["evil\x1b]52;c;x\x07[/b]"]
    result = runner.invoke(app, ["inspect", str(_many_names(tmp_path / "many", names))])
    assert result.exit_code == 0, result.stderr
    assert not [n for n in laid_out if n > 50], "a long listing went through the table layout"
    lines = result.stdout.splitlines()
    for name in names[:-1]:
        assert sum(line.endswith("  " + name) for line in lines) == 1, name
    assert "evil\\x1b]52;c;x\\x07[/b]" in result.stdout and "\x1b" not in result.stdout
    assert "plain listing" in result.stdout
