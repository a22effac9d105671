"""NxD targets from the command line (issue 14): a model NxD cannot hold is refused in one line
before anything is written; `--verify` reads the NxD output with the source's architecture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptscope.app.cli", *args], capture_output=True, text=True, timeout=300)


def _save(kind: str, folder: Path) -> Path:
    import transformers as t

    torch.manual_seed(0)
    small = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    config = {"qwen2": t.Qwen2Config, "llama": t.LlamaConfig}[kind](**small)
    t.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_nxd_refuses_what_its_layers_cannot_hold(tmp_path: Path) -> None:
    src = _save("qwen2", tmp_path / "qwen2")
    done = _cli("convert", str(src), str(tmp_path / "out"), "--to", "nxd", "--tp", "2")
    assert done.returncode == 2, done.stderr
    assert "no linear biases" in done.stdout + done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_nxd_verify_reads_the_output_with_the_source_architecture(tmp_path: Path) -> None:
    src = _save("llama", tmp_path / "llama")
    done = _cli("convert", str(src), str(tmp_path / "out"), "--to", "nxd", "--tp", "2", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    assert '"ok": true' in done.stdout and "carries no architecture" in done.stdout
    summary = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{"):])[0]
    assert 0 < summary["cpu_seconds"] and summary["seconds"] > 0  # the CPU the conversion used, every thread


def test_nxd_source_finds_the_run_config(tmp_path: Path) -> None:
    """An NxD run folder with the model's config.json beside its checkpoints converts without --config."""
    import shutil

    src = _save("llama", tmp_path / "llama")
    assert _cli("convert", str(src), str(tmp_path / "run"), "--to", "nxd", "--tp", "2").returncode == 0
    refused = _cli("convert", str(tmp_path / "run"), str(tmp_path / "back0"), "--to", "hf")
    assert refused.returncode == 2 and "--config" in refused.stderr + refused.stdout
    shutil.copy(src / "config.json", tmp_path / "run" / "config.json")
    done = _cli("convert", str(tmp_path / "run"), str(tmp_path / "back"), "--to", "hf", "--verify")
    assert done.returncode == 0, done.stderr
    assert "architecture: from" in done.stdout and "OK" in done.stdout
