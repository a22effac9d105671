"""`--rename` / `--map` (issue 16): a checkpoint saved under other names is fixed by renaming,
end to end, with the logits of the original; `check` suggests the concrete rules.

The fixture is a tiny random Llama saved by transformers, and a copy whose tensors were renamed
the way real checkpoints drift: `transformer.` for `model.` and `mlp.w2` for `mlp.down_proj`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ckptscope.app.cli import app
from ckptscope.converters.diff import check_target, diff_checkpoints
from ckptscope.converters.rename_advice import suggest_renames
from ckptscope.converters.renames import Renames, parse_rule, renamed_view
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect

runner = CliRunner()
FIX = ["^transformer\\.=model.", "\\.mlp\\.w2\\.=.mlp.down_proj."]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """(original HF folder, renamed copy, the model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("rename")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "orig")
    shutil.copytree(root / "orig", root / "broken")
    state = load_file(str(root / "broken" / "model.safetensors"))
    state = {k.replace("model.", "transformer.", 1).replace("mlp.down_proj", "mlp.w2"): v for k, v in state.items()}
    save_file(state, str(root / "broken" / "model.safetensors"), metadata={"format": "pt"})
    return root / "orig", root / "broken", model


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(str(folder)).eval()(ids).logits


def test_check_suggests_the_concrete_renames_not_ignore(llama) -> None:
    _, broken, _ = llama
    result = runner.invoke(app, ["check", str(broken), "--to", "hf", "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["suggested_renames"] == FIX
    assert doc["counts"]["unplaced"] == 29
    human = runner.invoke(app, ["check", str(broken), "--to", "hf"], terminal_width=200)
    assert "fix the names: --rename '^transformer\\.=model.' --rename '\\.mlp\\.w2\\.=.mlp.down_proj.'" in human.stdout
    fixed = runner.invoke(app, ["check", str(broken), "--to", "hf", "--json", *[a for r in FIX for a in ("--rename", r)]])
    assert fixed.exit_code == 0, fixed.output
    doc = json.loads(fixed.stdout)
    assert doc["counts"]["unplaced"] == 0 and doc["counts"]["missing"] == 0
    assert doc["renamed"]["transformer.layers.2.mlp.w2.weight"] == "model.layers.2.mlp.down_proj.weight"


def test_convert_with_renames_gives_the_original_logits(llama, tmp_path: Path) -> None:
    orig, broken, model = llama
    out = tmp_path / "fixed"
    result = runner.invoke(app, ["convert", str(broken), str(out), "--to", "hf", *[a for r in FIX for a in ("--rename", r)]],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "transformer.layers.{0..2}.mlp.w2.weight -> model.layers.{0..2}.mlp.down_proj.weight  ×3" in result.stdout
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(str(orig / "model.safetensors")))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids).logits
    assert torch.equal(_logits(out, ids), want)


def test_map_file_json_and_lines_then_rules(llama, tmp_path: Path) -> None:
    """A map renames exact names first; rules then apply to the result (here: the prefix)."""
    _, broken, _ = llama
    lines = tmp_path / "renames.txt"
    lines.write_text("# w2 is down_proj\n" + "".join(f"transformer.layers.{i}.mlp.w2.weight transformer.layers.{i}.mlp.down_proj.weight\n"
                                                   for i in range(3)))
    as_json = tmp_path / "renames.json"
    as_json.write_text(json.dumps({f"transformer.layers.{i}.mlp.w2.weight": f"transformer.layers.{i}.mlp.down_proj.weight"
                                   for i in range(3)}))
    for path in (lines, as_json):
        report = check_target(broken, "hf", renames=Renames.from_options([FIX[0]], path))
        assert report.ok, report.errors
        assert report.renamed["transformer.layers.1.mlp.w2.weight"] == "model.layers.1.mlp.down_proj.weight"


def test_convert_verify_reads_the_source_through_the_renames(llama, tmp_path: Path) -> None:
    _, broken, _ = llama
    result = runner.invoke(app, ["convert", str(broken), str(tmp_path / "o"), "--to", "megatron", "--tp", "2", "--verify", "--json",
                                 *[a for r in FIX for a in ("--rename", r)]])
    assert result.exit_code == 0, result.output
    logits = json.loads(result.stdout)["verify"]["logits"]
    assert logits["ok"] and logits["max_abs_diff"] < 1e-5


def test_diff_applies_renames_to_both_sides(llama) -> None:
    orig, broken, _ = llama
    assert not diff_checkpoints(orig, broken).identical
    report = diff_checkpoints(orig, broken, renames=Renames.from_options(FIX), numeric=True)
    assert report.identical and report.max_abs == 0.0
    assert len(report.b.renamed) == 29 and not report.a.renamed
    partial = diff_checkpoints(orig, broken, renames=Renames.from_options(FIX[:1]))
    assert partial.b.suggested_renames == [FIX[1]]


def test_renames_are_a_view_for_every_format(tmp_path: Path) -> None:
    """Megatron torch TP2xPP2: names renamed away are unplaced, renamed back they all map again."""
    mt = write_megatron_torch(SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300), tmp_path / "mt", tp=2, pp=2)
    away = check_target(mt, "hf", renames=Renames.from_options(["linear_fc2=w2"]))
    assert away.counts["unplaced"] == 4 and away.suggested_renames == ["\\.mlp\\.w2\\.=.mlp.linear_fc2."]
    back = check_target(mt, "hf", renames=Renames.from_options(["linear_fc2=w2", *away.suggested_renames]))
    assert back.ok and back.counts["mapped"] == check_target(mt, "hf").counts["mapped"]
    view = renamed_view(detect(mt), Renames.from_options(["^decoder\\.=trunk."]))
    assert all(t.name.startswith("trunk.") and t.global_name.startswith("trunk.") for t in view.ckpt.model_tensors()
               if t.global_name.startswith("trunk.layers"))


def test_errors_are_one_line(llama, tmp_path: Path) -> None:
    _, broken, _ = llama
    bad = runner.invoke(app, ["check", str(broken), "--to", "hf", "--rename", "mlp.(w2=x"])
    assert bad.exit_code == 2 and "bad regular expression" in bad.output and len(bad.output.strip().splitlines()) == 1
    clash = runner.invoke(app, ["convert", str(broken), str(tmp_path / "o"), "--rename", "(up_proj|w2)=down_proj"])
    assert clash.exit_code == 2 and "both" in clash.output and str(broken) in clash.output
    assert len(clash.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    nothing = runner.invoke(app, ["check", str(broken), "--to", "hf", "--json", "--rename", "nomatch=x", *[a for r in FIX for a in ("--rename", r)]])
    assert nothing.exit_code == 0 and json.loads(nothing.stdout)["warnings"] == ["--rename nomatch=x: matches no stored tensor"]
    fp32 = runner.invoke(app, ["convert", str(broken), str(tmp_path / "o"), "--from-optimizer-fp32", "--rename", FIX[0]])
    assert fp32.exit_code == 2 and "--from-optimizer-fp32" in fp32.output
    broken_map = tmp_path / "map.txt"
    broken_map.write_text("only-one-name\n")
    result = runner.invoke(app, ["diff", str(broken), str(broken), "--map", str(broken_map)])
    assert result.exit_code == 2 and "--map line 1" in result.output


def test_rule_parsing() -> None:
    assert parse_rule("(?<=mlp\\.)w2=down_proj").apply("m.mlp.w2.weight") == "m.mlp.down_proj.weight"
    assert parse_rule("layers\\.(\\d+)\\.=blocks.\\1.").apply("layers.12.x") == "blocks.12.x"
    assert suggest_renames(["a.layers.0.x"], ["a.layers.0.y"]) == ["\\.x$=.y"]
    assert suggest_renames(["layers.0.x", "layers.1.x"], ["model.layers.0.x", "model.layers.1.x"]) == ["^=model."]
