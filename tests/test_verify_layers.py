"""`verify A B --layers` (issue 16): the first layer and sub-block where two models diverge.

A sample HF checkpoint, its Megatron TP2 conversion (correct: every layer within tolerance) and
copies with one weight of one layer deliberately changed (the report names that layer, that
sub-block and that weight), across formats.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ckptscope.app.cli import app
from ckptscope.converters.layer_diff import compare_layers, sparkline
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec

from .helpers import convert_to

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)
runner = CliRunner()


def _corrupt(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    state[name][3, 5] += 0.5
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layers")
    hf = write_hf(SPEC, root / "hf")
    return {"hf": hf, "megatron": convert_to(hf, root / "mt", "megatron", tp=2),
            "bad_mlp": _corrupt(hf, root / "bad_mlp", "model.layers.2.mlp.down_proj.weight"),
            "bad_attn": _corrupt(hf, root / "bad_attn", "model.layers.1.self_attn.o_proj.weight")}


def test_correct_conversion_is_within_tolerance_at_every_layer(models) -> None:
    result = runner.invoke(app, ["verify", str(models["hf"]), str(models["megatron"]), "--layers", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["first_divergence"] is None
    assert [r["layer"] for r in doc["layers"]] == [-1, 0, 1, 2, 3]
    assert all(r[b]["max_abs"] <= 1e-5 for r in doc["layers"][1:] for b in ("attention", "mlp", "hidden"))
    human = runner.invoke(app, ["verify", str(models["hf"]), str(models["megatron"]), "--layers"], terminal_width=160)
    assert "all 4 layers within tolerance" in human.stdout and "by layer: ····" in human.stdout


@pytest.mark.parametrize(("bad", "layer", "block", "weight"), [
    ("bad_mlp", 2, "mlp", "layers.2.mlp.down"),
    ("bad_attn", 1, "attention", "layers.1.attn.o"),
])
def test_one_corrupted_layer_is_named_with_its_sub_block_and_weight(models, bad: str, layer: int, block: str, weight: str) -> None:
    report = compare_layers(models["megatron"], models[bad])  # across formats: Megatron TP2 vs HF
    assert report.first == (layer, block) and not report.ok
    assert [n for n, _ in report.first_weights] == [weight]
    assert all(r.worst() <= report.tolerance for r in report.rows if r.layer < layer)
    result = runner.invoke(app, ["verify", str(models["hf"]), str(models[bad]), "--layers"], terminal_width=160)
    assert result.exit_code == 1
    assert f"first divergence: layer {layer} {block}" in result.stdout and weight in result.stdout
    assert "█" in result.stdout


def test_sparkline_is_blank_within_tolerance() -> None:
    assert sparkline([0.0, 1e-6, 1e-3, 1.0], 1e-5) == "··▄█"


async def test_app_layers_view_names_the_corrupted_layer(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The diff screen's Layers button renders the same core report."""
    from ckptscope.app.tui.app import CkptscopeApp

    from .test_tui import click, settle, until

    app = CkptscopeApp(models["hf"].parent)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        app.open_diff(models["megatron"])
        await pilot.pause(0.2)
        screen = app.screen
        screen.query_one("#diff-b").value = str(models["bad_mlp"])
        await click(pilot, "#layers")
        await until(pilot, lambda: screen.report is not None)
        assert screen.report.first == (2, "mlp")
        assert "first divergence: layer 2 mlp" in str(screen.query_one("#diff-summary").render())
        shown = str(screen.query_one("#diff-extra").render())
        assert "layers.2.mlp.down" in shown and "█" in shown
        assert not screen.query_one("#diff-table").display
