"""Issue 14: a ZeRO checkpoint saved by the Hugging Face Trainer (`checkpoint-N/config.json` beside
`latest`, `global_stepN/`, `zero_to_fp32.py`, `trainer_state.json`) converts end to end from the
wizard: the source step finds the Trainer's config.json and says so, no --config is typed, and
the HF output holds the model's weights bit for bit (the wizard's own verify passes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.converters.samples import deepspeed as dss
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect

from .helpers import assert_same_hf_state
from .test_tui import click, settle, until

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)


def _trainer_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A Trainer-style ZeRO-2 checkpoint folder and the HF model it holds."""
    reference = write_hf(SPEC, tmp_path / "reference")
    root = dss.write_deepspeed_zero(SPEC, tmp_path / "run" / "checkpoint-2", dp=2, stage=2, bf16=False)
    shutil.copy(reference / "config.json", root / "config.json")  # the Trainer saves the model config here
    (root / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    (root / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script, copied by the Trainer\n")
    return root, reference


async def test_wizard_converts_a_trainer_zero_checkpoint_with_its_own_config(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the wizard's default output is in the working folder
    root, reference = _trainer_folder(tmp_path)
    out = tmp_path / "hf-out"
    messages: list[str] = []
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48), message_hook=lambda m: messages.append(type(m).__name__)) as pilot:
        await settle(app, pilot)
        app.open_convert(root)
        await settle(app, pilot)
        wizard = app.screen
        await until(pilot, lambda: wizard.spec is not None)
        status = str(wizard.query_one("#src-status").render())
        assert f"architecture from {root / 'config.json'}" in status and not wizard.query_one("#config").value
        await click(pilot, "#next")  # target: HF (the default)
        assert wizard.query_one("#fmt").value == "hf"
        while wizard.query_one("#wizard-body").current != "step-output":  # HF: no layout step
            await click(pilot, "#next")
        wizard.query_one("#out").value = str(out)
        await click(pilot, "#next")  # plan
        await until(pilot, lambda: wizard.plan is not None)
        assert wizard.plan.ok, wizard.plan.errors
        await click(pilot, "#run")
        await until(pilot, lambda: "ConvertFinished" in messages, timeout=600)
        await click(pilot, "#verify")
        await until(pilot, lambda: "VerifyDone" in messages, timeout=600)
        await pilot.pause(0.1)
        assert "OK" in "\n".join(wizard.query_one("#run-log").lines)
    assert detect(out).kind == "hf"
    assert_same_hf_state(out, reference)
