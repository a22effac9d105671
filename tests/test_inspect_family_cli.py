"""`ckptscope inspect` / `diff` / `check` name the model family and its layout quirks (model
families issue): text and `--json`, on fixtures written by real code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.app.cli import app
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.writers import TargetOptions
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    import transformers as t

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("family")
    gpt2 = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    gpt2.save_pretrained(base / "gpt2")
    llama = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=64))
    llama.save_pretrained(base / "llama")
    plan = make_plan(base / "llama", TargetOptions("megatron", tp=2))  # 100 rows padded to 256
    run_to_end(plan, base / "megatron")
    return {"gpt2": base / "gpt2", "llama": base / "llama", "megatron": base / "megatron"}


def _ok(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_inspect_text_names_gpt2_and_its_quirks(folders) -> None:
    out = _ok("inspect", str(folders["gpt2"]))
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    family = next(line for line in lines if line.startswith("family"))
    quirks = next(line for line in lines if line.startswith("quirks"))
    assert family.split() == ["family", "gpt2"]
    assert "tied embedding and LM head" in quirks and "learned positions" in quirks


def test_inspect_megatron_shows_padded_vocab(folders) -> None:
    out = _ok("inspect", str(folders["megatron"]))
    assert out.exit_code == 0, out.output
    quirks = next(line for line in out.stdout.splitlines() if line.startswith("quirks"))
    assert "padded vocab: 256 rows stored, 100 real" in quirks
    assert any(line.split() == ["family", "llama"] for line in out.stdout.splitlines())


def test_inspect_json_has_family_and_quirks(folders) -> None:
    doc = json.loads(_ok("inspect", str(folders["megatron"]), "--json").stdout)
    assert doc["family"] == "llama" and "padded vocab: 256 rows stored, 100 real" in doc["quirks"]
    doc = json.loads(_ok("inspect", str(folders["llama"]), "--json").stdout)
    assert doc["family"] == "llama" and doc["quirks"] == [] and "family_problem" not in doc


def test_inspect_megatron_llm_shows_its_layout(tmp_path: Path) -> None:
    from .test_megatron_llm import _llama, write_mllm_release

    root = write_mllm_release(_llama(), tmp_path / "mllm")
    doc = json.loads(_ok("inspect", str(root), "--json").stdout)
    assert doc["family"] == "llama"
    assert any(q.startswith("interleaved rotary") for q in doc["quirks"])
    assert "Megatron-LLM layout (SwiGLU fc1 packed [up; gate])" in doc["quirks"]


def test_inspect_without_architecture_still_inspects(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))  # no config.json
    text = _ok("inspect", str(tmp_path))
    assert text.exit_code == 0 and "Traceback" not in text.output
    assert any(line.startswith("family") and "unknown" in line for line in text.stdout.splitlines())
    doc = json.loads(_ok("inspect", str(tmp_path), "--json").stdout)
    assert doc["family"] is None and doc["quirks"] == [] and doc["family_problem"]


def test_diff_and_check_text_show_family_and_quirks(folders) -> None:
    diff = _ok("diff", str(folders["llama"]), str(folders["megatron"]))
    assert diff.exit_code == 0, diff.output  # identical through the canonical names
    text = " ".join(diff.stdout.split())  # rich wraps long lines
    side_b = text[text.index(" B: "):]
    assert "llama: 2 layers" in side_b and "quirks:" in side_b and "padded vocab" in side_b
    check = _ok("check", str(folders["megatron"]), "--to", "hf")
    assert check.exit_code == 0, check.output
    text = " ".join(check.stdout.split())
    model = text[text.index("source: "):]
    assert "model llama:" in model and "quirks:" in model and "padded vocab" in model
    check_gpt2 = " ".join(_ok("check", str(folders["gpt2"]), "--to", "megatron").stdout.split())
    assert "model gpt2:" in check_gpt2 and "learned positions" in check_gpt2
