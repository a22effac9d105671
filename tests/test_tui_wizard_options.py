"""The convert wizard renders the core's registry (issue 12): its target list and option fields
come from `converters/formats.py` and `converters/options.py`, so it can do what the CLI can -
here a ZeRO source that needs `--config` and the ZeRO fp32 rebuild, written as an NxD target."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.converters.formats import TARGETS
from ckptscope.converters.samples import deepspeed as dss
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect

from .test_tui import click, settle, until

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTSCOPE_CONFIG_DIR", str(tmp_path / "config"))


async def test_wizard_zero_source_with_config_to_nxd(tmp_path: Path) -> None:
    src = dss.write_deepspeed_zero(SPEC, tmp_path / "ds", dp=2, stage=2, bf16=True)
    config = write_hf(SPEC, tmp_path / "ref") / "config.json"
    out = tmp_path / "nxd-out"
    messages: list[str] = []
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48), message_hook=lambda m: messages.append(type(m).__name__)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await settle(app, pilot)
        wizard = app.screen
        assert wizard.spec is None and "--config" in str(wizard.query_one("#src-status").render())
        # the source step carries the source options: the architecture and the fp32 rebuild
        wizard.query_one("#config").value = str(config)
        wizard.query_one("#from-optimizer-fp32").value = True
        await click(pilot, "#next")  # reads the source again with them
        await until(pilot, lambda: wizard.spec is not None)
        assert "architecture from --config" in str(wizard.query_one("#src-status").render())
        await click(pilot, "#next")  # target
        fmt = wizard.query_one("#fmt")
        assert [value for _, value in fmt._options] == list(TARGETS)  # the registry's targets, NxD included
        fmt.value = "nxd"
        await pilot.pause(0.1)
        assert wizard.query_one("#row-xser").display and not wizard.query_one("#row-max-shard-size").display
        wizard.query_one("#fuse-qkv").value = True
        await click(pilot, "#next")  # layout
        wizard.query_one("#tp").value = "2"
        wizard.query_one("#pp").value = "2"
        await pilot.pause(0.1)
        assert "fits the model" in str(wizard.query_one("#layout-status").render())
        await click(pilot, "#next")  # dtype
        await click(pilot, "#next")  # output
        wizard.query_one("#out").value = str(out)
        wizard.query_one("#strict").value = True
        await click(pilot, "#next")  # plan
        await until(pilot, lambda: wizard.plan is not None)
        assert wizard.plan.ok, wizard.plan.errors
        request = wizard._request()
        assert request.values()["from_optimizer_fp32"] and request.values()["strict"] and request.target_options().fuse_qkv
        await click(pilot, "#run")
        await until(pilot, lambda: "ConvertFinished" in messages, rounds=1200)
        await click(pilot, "#verify")
        await until(pilot, lambda: "VerifyDone" in messages, rounds=1200)
        await pilot.pause(0.1)
        assert "OK" in "\n".join(wizard.query_one("#run-log").lines)
    ckpt = detect(out)
    assert ckpt.kind == "nxd" and (ckpt.parallel.tp, ckpt.parallel.pp) == (2, 2)
    fused = [t for t in ckpt.model_tensors() if "weight_qkv" in t.name]
    assert fused and all(t.dtype == "float32" for t in fused)  # fp32 rebuilt from the ZeRO partitions


async def test_wizard_from_the_keyboard_alone(tmp_path: Path) -> None:
    """Focus lands in each step's first field, Enter advances, Esc steps back (issue 16)."""
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch

    src = write_megatron_torch(SPEC, tmp_path / "mt", tp=2, pp=2)
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await settle(app, pilot)
        wizard = app.screen
        await until(pilot, lambda: wizard.spec is not None)
        await pilot.press("ctrl+n")  # source -> target
        await pilot.pause(0.2)
        assert app.focused is wizard.query_one("#fmt")
        wizard.query_one("#fmt").value = "megatron"
        await pilot.press("ctrl+n")  # -> layout: TP has the keys
        await pilot.pause(0.2)
        assert app.focused is wizard.query_one("#tp")
        await pilot.press("end", "backspace", "2", "enter")  # typed into TP; Enter advances
        await pilot.pause(0.2)
        assert wizard.query_one("#wizard-body").current == "step-dtype" and wizard.query_one("#tp").value == "2"
        await pilot.press("escape")  # one step back, inputs kept
        await pilot.pause(0.2)
        assert wizard.query_one("#wizard-body").current == "step-layout" and wizard.query_one("#tp").value == "2"
        assert app.screen is wizard
