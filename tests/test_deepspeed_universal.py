"""DeepSpeed universal checkpoints (issue 14): `ds_to_universal` output converts to HF.

With DeepSpeed installed, the real `deepspeed.checkpoint.ds_to_universal` turns the corpus's
ZeRO-2 bf16 run into a universal checkpoint; its HF conversion gives the fp32 logits DeepSpeed's
own run produced and the same bits as rebuilding the weights from the ZeRO partitions
(`--from-optimizer-fp32`). Without DeepSpeed (it needs `pip install --no-build-isolation
deepspeed`, so CI does not install it) a universal folder in the layout that tool writes -
`zero/<param>/fp32.pt` = `{"param": fp32 tensor, "cat_dim": 0}`, Adam moments beside it, the
engine's model-states file copied - is built from a tiny transformers model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.summary import logical_param_count

from .helpers import convert_to, hf_state


def _convert(src: Path, dst: Path, **kw) -> Path:
    plan = make_plan(src, TargetOptions("hf"), **kw)
    assert plan.ok, plan.errors
    run_to_end(plan, dst)
    return dst


@pytest.fixture(scope="module")
def real_universal(corpus: Path, tmp_path_factory) -> Path:
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed (pip install --no-build-isolation deepspeed==0.19.8 to run ds_to_universal)")
    run = tmp_path_factory.mktemp("ds") / "zero2_bf16"
    shutil.copytree(corpus / "deepspeed" / "zero2_bf16", run)
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(run / "global_step2"),
                    "--output_folder", str(run / "global_step2_universal"), "--inject_missing_state"],
                   check=True, capture_output=True)
    return run


def test_real_universal_checkpoint_converts_to_deepspeeds_own_logits(real_universal: Path, tmp_path: Path) -> None:
    import transformers as t

    universal = real_universal / "global_step2_universal"
    ckpt = detect(universal)
    assert (ckpt.kind, ckpt.iteration) == ("deepspeed-universal", 2)
    out = _convert(universal, tmp_path / "hf")  # architecture: the config.json beside the run
    rebuilt = _convert(real_universal / "global_step2", tmp_path / "rebuilt", config=real_universal / "config.json",
                       from_optimizer_fp32=True)
    a, b = hf_state(out), hf_state(rebuilt)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = t.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.load(real_universal / "input_ids.pt")).logits
    assert (logits - torch.load(real_universal / "reference_logits_fp32.pt")).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def layout_universal(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    import transformers as t

    torch.manual_seed(0)
    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2)).eval()
    run = tmp_path_factory.mktemp("layout")
    tag = run / "global_step7_universal"
    for name, value in model.state_dict().items():
        folder = tag / "zero" / name
        folder.mkdir(parents=True)
        torch.save({"param": value.float().clone(), "cat_dim": 0}, folder / "fp32.pt")
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.save({"param": torch.zeros_like(value), "cat_dim": 0}, folder / f"{moment}.pt")
        torch.save(torch.tensor(7.0), folder / "step.pt")
    torch.save({"module": None, "ds_version": "0.19.8", "global_steps": 7}, tag / "mp_rank_00_model_states.pt")
    (run / "latest_universal").write_text("global_step7_universal")
    (run / "config.json").write_text(json.dumps(model.config.to_dict()))
    return run, model


def test_universal_layout_round_trips_bit_for_bit(layout_universal, tmp_path: Path) -> None:
    run, model = layout_universal
    ckpt = detect(run)  # the root: latest_universal names the tag
    assert ckpt.kind == "deepspeed-universal" and ckpt.path.name == "global_step7_universal"
    assert {t.name for t in ckpt.model_tensors()} == set(model.state_dict())
    assert sum(f.role == "optimizer" for f in ckpt.files) == 3 * len(model.state_dict())
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    out = convert_to(run, tmp_path / "hf", "hf")
    state = hf_state(out)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_universal_symlinked_parameter_folder_is_not_followed(layout_universal, tmp_path: Path) -> None:
    run, model = layout_universal
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    outside = tmp_path / "outside"
    victim = copy / "global_step7_universal" / "zero" / "model.norm.weight"
    shutil.move(str(victim), outside)
    victim.symlink_to(outside, target_is_directory=True)
    ckpt = detect(copy)
    assert "model.norm.weight" not in {t.name for t in ckpt.model_tensors()}
    out = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "convert", str(copy), str(tmp_path / "hf")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "model.norm" in out.stdout + out.stderr
