"""`diff_checkpoints` / `check_target` and the `diff` / `check` commands.

Fixtures are sample checkpoints (deterministic weights: every writer of one SampleSpec holds the
same values), conversions through the real plan and run, and tiny `transformers` models.
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
from ckptscope.converters.diff import CheckReport, DiffReport, check_target, diff_checkpoints
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.megatron_dist import write_megatron_dist
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers import TargetOptions

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)
runner = CliRunner()


def _convert(src: Path, dst: Path, fmt: str, *, true_vocab: int | None = None, **layout) -> Path:
    plan = make_plan(src, TargetOptions(fmt, **layout), true_vocab=true_vocab)
    assert plan.ok, plan.errors
    run_to_end(plan, dst)
    return dst


def _edit_safetensors(src: Path, dst: Path, edit) -> Path:
    """Copy an HF folder and rewrite its single safetensors file through `edit(state)`."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diff")
    mt = write_megatron_torch(SPEC, root / "mt", tp=2, pp=2, te=True)
    out = {"mt": mt, "hf": write_hf(SPEC, root / "hf"), "hf_from_mt": _convert(mt, root / "hf_from_mt", "hf")}
    out["dist"] = write_megatron_dist(SPEC, root / "dist", tp=2)
    return out


def _by_name(report: DiffReport) -> dict:
    return {e.name: e for e in report.entries}


# ----- canonical alignment ----------------------------------------------------------------------
def test_megatron_tp2pp2_vs_the_hf_it_was_converted_to(ckpts) -> None:
    report = diff_checkpoints(ckpts["mt"], ckpts["hf_from_mt"], numeric=True)
    assert report.mode == "canonical" and report.identical
    assert report.counts["same"] == len(SPEC.canonical_shapes()) == len(report.entries)
    assert all(e.max_abs == 0.0 for e in report.entries)
    embed = _by_name(report)["embed"]
    assert embed.shape_a == embed.shape_b == (300, 64)  # true vocab, not Megatron's padded rows
    assert (embed.shards_a, embed.shards_b) == (2, 1)  # two TP shards feed it on the Megatron side
    assert report.a.format == "megatron-torch" and report.a.layout == "TP2×PP2"
    json.dumps(report.to_json())


@pytest.mark.parametrize("a, b", [("dist", "hf"), ("mt", "dist")])
def test_stacked_torch_dist_keys_align_with_other_formats(ckpts, a: str, b: str) -> None:
    report = diff_checkpoints(ckpts[a], ckpts[b], numeric=True)
    assert report.identical, report.to_json(only_problems=True)
    assert report.max_abs == 0.0 and report.counts["same"] == len(SPEC.canonical_shapes())


def test_tiny_transformers_mixtral_vs_its_torch_dist_conversion(tmp_path: Path) -> None:
    """Experts: stacked dist keys map to `layers.*.experts.*` patterns; EP shards on the other side."""
    import transformers

    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                        num_key_value_heads=2, intermediate_size=32, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=128)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "hf")
    dist = _convert(tmp_path / "hf", tmp_path / "dist", "megatron-dist", tp=2)
    mt = _convert(tmp_path / "hf", tmp_path / "mt", "megatron", tp=1, ep=2)
    for other in (dist, mt):
        report = diff_checkpoints(tmp_path / "hf", other, numeric=True)
        assert report.identical, report.to_json(only_problems=True)
        assert "layers.1.experts.3.down" in _by_name(report)


# ----- missing / unexpected with suggestions ----------------------------------------------------
def _rename_and_delete(state: dict) -> None:
    state["model.layers.1.mlp.up_proj.weights"] = state.pop("model.layers.1.mlp.up_proj.weight")
    del state["model.layers.2.self_attn.k_proj.weight"]


def test_renamed_and_deleted_tensor(ckpts, tmp_path: Path) -> None:
    broken = _edit_safetensors(ckpts["hf"], tmp_path / "broken", _rename_and_delete)
    report = diff_checkpoints(ckpts["hf"], broken)
    entries = _by_name(report)
    renamed, deleted = entries["layers.1.mlp.up"], entries["layers.2.attn.k"]
    assert renamed.status == "missing" and renamed.suggestion == "model.layers.1.mlp.up_proj.weights"
    assert renamed.shape_a == (96, 64) and renamed.shape_b is None
    assert deleted.status == "missing" and deleted.suggestion == ""
    assert {e.name for e in report.problems()} == {"layers.1.mlp.up", "layers.2.attn.k"}
    [unplaced] = report.b.unplaced
    assert unplaced.name == "model.layers.1.mlp.up_proj.weights"
    assert unplaced.nearest == "model.layers.1.mlp.up_proj.weight" and unplaced.canonical == ["layers.1.mlp.up"]
    assert report.b.missing_stored == ["model.layers.1.mlp.up_proj.weight", "model.layers.2.self_attn.k_proj.weight"]
    assert not report.identical and report.counts["missing"] == 2 and report.counts["unplaced_b"] == 1

    reverse = _by_name(diff_checkpoints(broken, ckpts["hf"]))
    assert reverse["layers.1.mlp.up"].status == "unexpected"
    assert reverse["layers.1.mlp.up"].suggestion == "model.layers.1.mlp.up_proj.weights"


def test_numeric_skips_only_the_unreadable_layers(ckpts, tmp_path: Path) -> None:
    broken = _edit_safetensors(ckpts["hf"], tmp_path / "broken", _rename_and_delete)
    report = diff_checkpoints(ckpts["mt"], broken, numeric=True)
    entries = _by_name(report)
    assert entries["layers.0.attn.q"].max_abs == 0.0 and entries["layers.3.mlp.up"].max_abs == 0.0
    assert entries["layers.1.attn.q"].max_abs is None  # its layer could not be read on B
    assert any("layer 1 of B not compared" in n for n in report.notes)
    assert any("layer 2 of B not compared" in n for n in report.notes)


def test_extra_tensor_without_a_rename_is_unplaced_with_its_nearest_rule(ckpts, tmp_path: Path) -> None:
    def add_scale(state: dict) -> None:
        state["model.layers.0.self_attn.q_proj.weight_scale_inv"] = torch.ones(1)

    odd = _edit_safetensors(ckpts["hf"], tmp_path / "odd", add_scale)
    report = diff_checkpoints(ckpts["hf"], odd)
    assert report.counts["same"] == len(report.entries) and not report.identical
    [u] = report.b.unplaced
    assert u.nearest == "model.layers.0.self_attn.q_proj.weight" and u.canonical == [] and u.shape == (1,)


# ----- shape and dtype mismatches ---------------------------------------------------------------
def test_changed_ffn_is_a_shape_mismatch_folded_over_layers(ckpts, tmp_path: Path) -> None:
    wider = write_hf(SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=128, vocab=300), tmp_path / "wide")
    report = diff_checkpoints(ckpts["hf"], wider, numeric=True)
    problems = {e.name: e for e in report.problems()}
    assert set(problems) == {f"layers.{i}.mlp.{p}" for i in range(4) for p in ("gate", "up", "down")}
    assert problems["layers.2.mlp.down"].shape_a == (64, 96) and problems["layers.2.mlp.down"].shape_b == (64, 128)
    assert all(e.status == "shape" and e.max_abs is None for e in problems.values())
    rows = {r.name: r for r in report.rows(only_problems=True)}
    assert set(rows) == {"layers.{0..3}.mlp.gate", "layers.{0..3}.mlp.up", "layers.{0..3}.mlp.down"}
    assert rows["layers.{0..3}.mlp.up"].count == 4


def test_vocab_padding_kept_in_one_conversion_is_a_shape_mismatch(ckpts, tmp_path: Path) -> None:
    padded = _convert(ckpts["mt"], tmp_path / "padded", "hf", true_vocab=SPEC.padded_vocab(2))
    report = diff_checkpoints(ckpts["hf_from_mt"], padded)
    problems = {e.name: e for e in report.problems()}
    assert set(problems) == {"embed", "lm_head"}
    assert problems["embed"].status == "shape" and (problems["embed"].shape_a, problems["embed"].shape_b) == ((300, 64), (512, 64))


def test_bf16_conversion_is_a_dtype_mismatch_with_small_values_diff(ckpts, tmp_path: Path) -> None:
    bf16 = _convert(ckpts["hf"], tmp_path / "bf16", "hf", dtype=torch.bfloat16)
    report = diff_checkpoints(ckpts["hf"], bf16, numeric=True)
    assert report.counts["dtype"] == len(report.entries) == len(SPEC.canonical_shapes())
    assert all(e.dtype_a == "float32" and e.dtype_b == "bfloat16" for e in report.entries)
    assert 0.0 < report.max_abs < 1e-2
    assert diff_checkpoints(ckpts["mt"], bf16).counts["dtype"] == len(report.entries)  # index only, across formats


# ----- stored-name fallback ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    import transformers

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    # GPT-2 itself converts (issue 6); its inverse-layer-index attention scaling variant does not
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, scale_attn_by_inverse_layer_idx=True)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_unsupported_model_falls_back_to_stored_names(gpt2: Path, tmp_path: Path) -> None:
    def edit(state: dict) -> None:
        state["transformer.h.1.mlp.c_fc.weights"] = state.pop("transformer.h.1.mlp.c_fc.weight")
        del state["transformer.h.0.attn.c_proj.bias"]
        state["transformer.wte.weight"] = state["transformer.wte.weight"].to(torch.bfloat16)

    other = _edit_safetensors(gpt2, tmp_path / "other", edit)
    report = diff_checkpoints(gpt2, other, numeric=True)
    assert report.mode == "stored" and report.a.mode == report.b.mode == "stored"
    assert "gpt2" in report.a.reason and any("stored names" in n for n in report.notes)
    entries = _by_name(report)
    assert entries["transformer.h.1.mlp.c_fc.weight"].status == "missing"
    assert entries["transformer.h.1.mlp.c_fc.weight"].suggestion == "transformer.h.1.mlp.c_fc.weights"
    assert entries["transformer.h.1.mlp.c_fc.weights"].status == "unexpected"
    assert entries["transformer.h.1.mlp.c_fc.weights"].suggestion == "transformer.h.1.mlp.c_fc.weight"
    assert entries["transformer.h.0.attn.c_proj.bias"].suggestion == ""  # nothing alike in layer 0
    wte = entries["transformer.wte.weight"]
    assert (wte.status, wte.dtype_a, wte.dtype_b) == ("dtype", "float32", "bfloat16") and 0 < wte.max_abs < 1e-2
    assert entries["transformer.h.0.ln_1.weight"].max_abs == 0.0

    same = diff_checkpoints(gpt2, gpt2, numeric=True)
    assert same.identical and same.mode == "stored" and same.max_abs == 0.0


def test_one_unsupported_side_turns_both_to_stored_names(gpt2: Path, ckpts) -> None:
    report = diff_checkpoints(ckpts["hf"], gpt2)
    assert report.mode == "stored" and report.a.reason == "" and "gpt2" in report.b.reason
    assert report.counts["same"] == 0 and report.counts["missing"] == len(SPEC.canonical_shapes())
    assert report.a.model == "" and report.a.unplaced == []  # nothing from A's canonical view leaks in


def test_hf_tensor_edited_against_its_config_shows_without_reading(ckpts, tmp_path: Path) -> None:
    def shrink(state: dict) -> None:
        state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"][:80].clone()

    edited = _edit_safetensors(ckpts["hf"], tmp_path / "edited", shrink)
    [problem] = diff_checkpoints(ckpts["mt"], edited).problems()
    assert (problem.name, problem.status, problem.shape_a, problem.shape_b) == ("layers.0.mlp.up", "shape", (96, 64), (80, 64))


# ----- check_target -----------------------------------------------------------------------------
def test_check_target_unplaceable_tensor_and_layout_error(ckpts, tmp_path: Path) -> None:
    def add_scale(state: dict) -> None:
        state["model.layers.0.self_attn.q_proj.weight_scale_inv"] = torch.ones(1)

    odd = _edit_safetensors(ckpts["hf"], tmp_path / "odd", add_scale)
    report = check_target(odd, "megatron", tp=3)
    assert isinstance(report, CheckReport) and not report.ok
    [u] = report.unplaced
    assert u.name == "model.layers.0.self_attn.q_proj.weight_scale_inv" and u.nearest == "model.layers.0.self_attn.q_proj.weight"
    assert any("attention heads do not split over TP=3" in e for e in report.layout_errors)
    assert not any("match no rule" in e for e in report.layout_errors)
    assert any("match no rule" in e for e in report.errors)
    assert report.counts["mapped"] == len(SPEC.canonical_shapes()) and report.counts["unplaced"] == 1
    assert not (tmp_path / "odd" / "iter_0000001").exists()

    fixed = check_target(odd, "megatron", tp=2, pp=2, ignore=("*weight_scale_inv",))
    assert fixed.ok and fixed.ignored == {"--ignore *weight_scale_inv": 1} and not fixed.unplaced
    assert sum(f["path"].endswith("model_optim_rng.pt") for f in fixed.files) == 4  # TP2 × PP2 rank files
    json.dumps(fixed.to_json())


def test_check_target_mapped_rules_are_folded(ckpts) -> None:
    report = check_target(ckpts["mt"], "hf")
    assert report.ok and report.source_format == "megatron-torch" and report.target["format"] == "hf"
    rules = {r.stored: r for r in report.mapped}
    qkv = rules["decoder.layers.{0..3}.self_attention.linear_qkv.weight"]
    assert qkv.count == 4 and qkv.canonical == "layers.{0..3}.attn.q, layers.{0..3}.attn.k, layers.{0..3}.attn.v"
    assert report.counts["mapped"] == 27  # distinct global names across 4 rank files
    assert any(f["path"].endswith(".safetensors") for f in report.files)


def test_check_target_missing_tensor(ckpts, tmp_path: Path) -> None:
    broken = _edit_safetensors(ckpts["hf"], tmp_path / "broken", _rename_and_delete)
    report = check_target(broken, "megatron-dist")
    assert not report.ok and report.layout_errors == []
    assert report.missing == ["model.layers.1.mlp.up_proj.weight", "model.layers.2.self_attn.k_proj.weight"]
    assert report.unplaced[0].canonical == ["layers.1.mlp.up"]


# ----- CLI --------------------------------------------------------------------------------------
def test_cli_diff_identical_json_exit_0(ckpts) -> None:
    result = runner.invoke(app, ["diff", str(ckpts["mt"]), str(ckpts["hf_from_mt"]), "--numeric", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["identical"] and doc["mode"] == "canonical" and doc["max_abs"] == 0.0
    assert doc["counts"]["same"] == len(doc["entries"]) == len(SPEC.canonical_shapes())
    assert {"name", "status", "shape_a", "shape_b", "dtype_a", "dtype_b", "max_abs", "suggestion"} <= set(doc["entries"][0])


def test_cli_diff_differences_exit_1(ckpts, tmp_path: Path) -> None:
    broken = _edit_safetensors(ckpts["hf"], tmp_path / "broken", _rename_and_delete)
    result = runner.invoke(app, ["diff", str(ckpts["hf"]), str(broken), "--json", "--only-problems"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [e["name"] for e in doc["entries"]] == ["layers.1.mlp.up", "layers.2.attn.k"]
    assert doc["b"]["unplaced"][0]["would_fill"] == ["layers.1.mlp.up"]

    human = runner.invoke(app, ["diff", str(ckpts["hf"]), str(broken), "--only-problems"])
    assert human.exit_code == 1
    assert human.stdout.splitlines()[0].startswith("DIFFERENT (canonical names): 37 same, 2 missing")
    assert "model.layers.1.mlp.up_proj.weights" in human.stdout and "layers.0.attn.q" not in human.stdout


def test_cli_diff_human_table_collapses_layers(ckpts, tmp_path: Path) -> None:
    wider = write_hf(SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=128, vocab=300), tmp_path / "wide")
    result = runner.invoke(app, ["diff", str(ckpts["mt"]), str(wider)])
    assert result.exit_code == 1, result.output
    assert "layers.{0..3}.mlp.gate" in result.stdout and "[128, 64]" in result.stdout
    assert "layers.{0..3}.attn.q" in result.stdout  # the same rows too, without --only-problems


def test_cli_escapes_untrusted_names(ckpts, tmp_path: Path) -> None:
    def add_evil(state: dict) -> None:
        state["model.layers.0.evil\x1b[31m"] = torch.ones(1)

    evil = _edit_safetensors(ckpts["hf"], tmp_path / "evil", add_evil)
    result = runner.invoke(app, ["diff", str(ckpts["hf"]), str(evil)])
    assert result.exit_code == 1
    assert "\x1b" not in result.stdout and "evil\\x1b[31m" in result.stdout


def test_cli_bad_input_exit_2(ckpts, tmp_path: Path) -> None:
    result = runner.invoke(app, ["diff", str(tmp_path / "nope"), str(ckpts["hf"])])
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = runner.invoke(app, ["check", str(ckpts["hf"]), "--to", "bogus"])
    assert result.exit_code == 2 and "unknown target format" in result.stderr
    result = runner.invoke(app, ["diff", str(ckpts["hf"]), str(ckpts["hf"]), "--config", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "cannot read config" in result.stderr


def test_cli_check_exit_codes_and_json(ckpts) -> None:
    ok = runner.invoke(app, ["check", str(ckpts["hf"]), "--to", "megatron", "--tp", "2", "--pp", "2", "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["ok"] and doc["target"]["tp"] == 2 and doc["counts"]["unplaced"] == 0 and doc["files"]
    bad = runner.invoke(app, ["check", str(ckpts["hf"]), "--to", "megatron", "--tp", "3"])
    assert bad.exit_code == 1
    assert bad.stdout.startswith("NOT CONVERTIBLE") and "attention heads do not split over TP=3" in bad.stdout


def test_numeric_values_status_and_tolerance(ckpts, tmp_path: Path) -> None:
    reseeded = write_hf(SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300, seed=1), tmp_path / "seed1")
    assert diff_checkpoints(ckpts["mt"], reseeded).identical  # names, shapes and dtypes agree
    report = diff_checkpoints(ckpts["mt"], reseeded, numeric=True)
    assert report.counts["values"] == len(report.entries) and not report.identical
    assert diff_checkpoints(ckpts["mt"], reseeded, numeric=True, tolerance=10.0).identical
