"""The app fixes mismatched names (issue 16): the check screen offers the suggested renames,
applies them, and carries them into the convert wizard, whose output has the original logits."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ckptscope.app.tui.app import CkptscopeApp

from .test_rename import FIX, _logits, llama  # noqa: F401 - the fixture: a tiny Llama and its renamed copy
from .test_tui import click, settle, until


async def test_check_screen_applies_suggested_renames_and_carries_them_into_the_wizard(llama, tmp_path) -> None:  # noqa: F811
    orig, broken, model = llama
    out = tmp_path / "fixed"
    seen: list[str] = []
    app = CkptscopeApp(broken.parent)
    async with app.run_test(size=(160, 48), message_hook=lambda m: seen.append(type(m).__name__)) as pilot:
        await settle(app, pilot)
        app.open_diff(broken)
        await pilot.pause(0.2)
        screen = app.screen
        assert not screen.query_one("#rename-row").display
        screen.query_one("#check-target").value = "hf"
        await click(pilot, "#check")
        await until(pilot, lambda: screen.report is not None)
        first = screen.report
        assert not first.ok and first.suggested_renames == FIX
        assert screen.query_one("#rename-row").display and not screen.query_one("#apply-renames").disabled
        await click(pilot, "#apply-renames")
        await until(pilot, lambda: screen.report is not first)
        assert screen.report.ok and len(screen.report.renamed) == 29
        assert screen.query_one("#check-rename").value.split() == FIX
        await click(pilot, "#convert-renamed")
        await until(pilot, lambda: type(app.screen).__name__ == "ConvertScreen")
        wizard = app.screen
        assert wizard.query_one("#rename").value.split() == FIX
        await until(pilot, lambda: wizard.spec is not None)
        await click(pilot, "#next")  # target: hf
        await click(pilot, "#next")  # whole model: no layout step
        await click(pilot, "#next")  # output
        wizard.query_one("#out").value = str(out)
        await click(pilot, "#next")  # plan
        await until(pilot, lambda: wizard.plan is not None)
        assert wizard.plan.ok and wizard.plan.renamed["transformer.layers.0.mlp.w2.weight"] == "model.layers.0.mlp.down_proj.weight"
        assert "mlp.w2.weight -> model.layers.{0..2}.mlp.down_proj.weight" in str(wizard.query_one("#plan-text").render())
        await click(pilot, "#run")
        await until(pilot, lambda: "ConvertFinished" in seen, timeout=300)
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(str(orig / "model.safetensors")))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(_logits(out, ids), model(ids).logits)
