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
        await until(pilot, lambda: "ConvertFinished" in messages, timeout=300)
        await click(pilot, "#verify")
        await until(pilot, lambda: "VerifyDone" in messages, timeout=300)
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


async def test_layout_problems_name_the_wizard_field_not_the_cli_flag(tmp_path: Path) -> None:
    """Issue 16: "(give --pp-layers)" named a flag the wizard user never sees."""
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch

    src = write_megatron_torch(SPEC, tmp_path / "mt", tp=2, pp=2)  # 4 layers
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await until(pilot, lambda: getattr(app.screen, "spec", None) is not None, timeout=300)
        wizard = app.screen
        wizard.query_one("#fmt").value = "megatron"
        await pilot.pause(0.2)
        wizard.query_one("#pp").value = "3"
        await pilot.pause(0.3)
        status = str(wizard.query_one("#layout-status").render())
        assert "do not split evenly over PP=3" in status and '(give "Layers per stage")' in status and "--pp-layers" not in status


async def test_default_output_is_in_the_working_folder_not_beside_a_shared_source(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: the default output landed beside the source, also in a shared checkpoint folder."""
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch

    src = write_megatron_torch(SPEC, tmp_path / "shared" / "mt", tp=2, pp=2)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await until(pilot, lambda: getattr(app.screen, "spec", None) is not None, timeout=300)
        assert app.screen.query_one("#out").value == str(home / "mt-converted")
    monkeypatch.chdir(src)  # working inside the checkpoint: beside it, never inside
    from ckptscope.converters.writers.output import default_destination

    assert default_destination(src, src) == src.parent / "mt-converted"


async def test_leaving_the_wizard_with_choices_asks_first(tmp_path: Path) -> None:
    """Issue 16: Esc popped the whole wizard and lost every input; now it steps back, and leaving
    from the first step after choices were made asks (Esc on the question stays)."""
    from ckptscope.app.tui.convert import ConvertScreen
    from ckptscope.app.tui.dialogs import ConfirmDialog
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch

    src = write_megatron_torch(SPEC, tmp_path / "mt", tp=2, pp=2)
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await until(pilot, lambda: getattr(app.screen, "spec", None) is not None, timeout=300)
        wizard = app.screen
        await pilot.press("ctrl+n")  # a choice on the target step
        await pilot.pause(0.2)
        wizard.query_one("#fmt").value = "megatron"
        await pilot.press("escape")  # back to the source step, nothing asked
        await pilot.pause(0.2)
        assert app.screen is wizard and wizard.step == 0
        await pilot.press("escape")  # leaving now asks
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("escape")  # "Stay": the wizard and its choices are kept
        await pilot.pause(0.2)
        assert app.screen is wizard and wizard.query_one("#fmt").value == "megatron"
        await pilot.press("escape", "y")  # leave
        await pilot.pause(0.3)
        assert not isinstance(app.screen, (ConvertScreen, ConfirmDialog))


async def _focus(app: CkptscopeApp, pilot, widget_id: str) -> None:
    """Tab until the widget has the keys (how a keyboard user reaches a button)."""
    for _ in range(30):
        if app.focused is not None and app.focused.id == widget_id:
            return
        await pilot.press("tab")
        await pilot.pause(0.05)
    raise AssertionError(f"tab never reached #{widget_id}")


async def test_wizard_whole_flow_from_the_keyboard(tmp_path: Path) -> None:
    """Issue 16: open the source, Convert (x), choose the target, type TP, Enter and Ctrl+N through
    every step, run, cancel, go back, change the output, run, verify and open the output - keys only."""
    from ckptscope.app.tui.inspect import InspectScreen
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch

    src = write_megatron_torch(SPEC, tmp_path / "mt", tp=2, pp=2)
    app = CkptscopeApp(src)
    async with app.run_test(size=(150, 48)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, InspectScreen), timeout=300)
        await settle(app, pilot)
        await pilot.press("x")  # inspect -> convert this checkpoint
        await until(pilot, lambda: getattr(app.screen, "spec", None) is not None, timeout=300)
        wizard = app.screen
        await pilot.press("ctrl+n")  # source -> target: the format list has the keys
        await pilot.pause(0.2)
        assert app.focused is wizard.query_one("#fmt")
        await pilot.press("enter")  # open the list, move to megatron, choose it
        await pilot.pause(0.2)
        for _ in range(len(TARGETS)):
            if wizard.query_one("#fmt").value == "megatron":
                break
            await pilot.press("down", "enter")
            await pilot.pause(0.2)
            if wizard.query_one("#fmt").value != "megatron":
                await pilot.press("enter")
                await pilot.pause(0.2)
        assert wizard.query_one("#fmt").value == "megatron"
        await pilot.press("ctrl+n")  # -> layout: TP has the keys
        await pilot.pause(0.2)
        await pilot.press("end", "backspace", "4", "enter")  # TP 4; Enter advances
        await pilot.pause(0.2)
        await pilot.press("ctrl+n")  # dtype & tokenizer -> output
        await pilot.pause(0.2)
        assert app.focused is wizard.query_one("#out")
        first, second = tmp_path / "first", tmp_path / "second"
        await pilot.press("ctrl+a", "ctrl+k", *str(first), "enter")  # the output path, then the plan
        await until(pilot, lambda: wizard.plan is not None and wizard.plan.ok, timeout=300)
        await pilot.press("ctrl+r")  # run: a sign of life while the child process starts
        await pilot.pause(0.3)
        assert "starting the converter process" in str(wizard.query_one("#run-status").render())
        assert wizard.query_one("#run-bar").total is None  # indeterminate until the first bytes
        await pilot.press("ctrl+c")  # ...and cancel while the child starts
        await until(pilot, lambda: not wizard.running, timeout=300)
        assert "cancelled" in str(wizard.query_one("#run-status").render()) and not first.exists()
        await pilot.press("escape")  # back to the output step, inputs kept
        await pilot.pause(0.3)
        assert wizard.query_one("#wizard-body").current == "step-output" and wizard.query_one("#tp").value == "4"
        await _focus(app, pilot, "out")
        await pilot.press("ctrl+a", "ctrl+k", *str(second), "enter")  # change the output, plan again
        await until(pilot, lambda: wizard.plan is not None and wizard.plan.ok and wizard.output == second, timeout=300)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: not wizard.running and "done" in str(wizard.query_one("#run-status").render()), timeout=300)
        assert detect(second).parallel.tp == 4
        await _focus(app, pilot, "verify")
        await pilot.press("enter")
        await until(pilot, lambda: any("logits:" in line for line in wizard.query_one("#run-log").lines), timeout=300)
        assert any("logits:" in line and "OK" in line for line in wizard.query_one("#run-log").lines)
        await _focus(app, pilot, "open")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, InspectScreen) and app.screen.ckpt.root == second.resolve(), timeout=300)


async def test_a_failed_conversion_says_why_and_leaves_the_wizard_usable(tmp_path: Path) -> None:
    """A conversion that fails in the child (here: the source went away after planning) used to
    leave the wizard "running" with no word: it could neither run again nor go back."""
    import shutil

    from ckptscope.converters.samples.megatron_torch import write_megatron_torch

    src = write_megatron_torch(SPEC, tmp_path / "mt", tp=2, pp=2)
    out = tmp_path / "out"
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(150, 48)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await until(pilot, lambda: getattr(app.screen, "spec", None) is not None)
        wizard = app.screen
        wizard.query_one("#out").value = str(out)
        while wizard.query_one("#wizard-body").current != "step-plan":
            await click(pilot, "#next")  # the defaults: to HF
        await until(pilot, lambda: wizard.plan is not None and wizard.plan.ok)
        shutil.rmtree(src)
        await click(pilot, "#run")
        await until(pilot, lambda: not wizard.running, timeout=300)
        status = str(wizard.query_one("#run-status").render())
        assert status.startswith("failed: ") and "mt" in status
        assert any(line.startswith("failed: ") for line in wizard.query_one("#run-log").lines)
        assert not wizard.query_one("#back").disabled and not app.converting and not out.exists()
