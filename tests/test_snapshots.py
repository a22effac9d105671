"""SVG snapshots of the main screens at a fixed terminal size, in both themes.

The demo is written to a fixed path so the paths shown on screen are the same on every machine.
Update with `pytest tests/test_snapshots.py --snapshot-update` after an intended UI change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.converters.samples.demo import write_demo

from .test_tui import settle, until

DEMO = Path("/tmp/ckptscope-snapshot-demo")
SIZE = (120, 36)


@pytest.fixture(scope="module", autouse=True)
def demo() -> Path:
    write_demo(DEMO, force=True)
    return DEMO


async def _settle(pilot) -> None:
    await settle(pilot.app, pilot)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.5)


_until = until


async def _inspecting(pilot) -> None:
    await _until(pilot, lambda: type(pilot.app.screen).__name__ == "InspectScreen")
    await _settle(pilot)


def _theme(name: str):
    async def apply(pilot) -> None:
        pilot.app.theme = name
        await _settle(pilot)

    return apply


@pytest.mark.parametrize("theme", ["ckptscope-dark", "ckptscope-light"])
def test_browse(snap_compare, theme: str) -> None:
    async def run_before(pilot) -> None:
        from ckptscope.app.tui.browse import CheckpointTree

        await _theme(theme)(pilot)
        tree = pilot.app.screen.query_one(CheckpointTree)
        def listed() -> bool:  # the directory listing and the probes land asynchronously
            children = [c.data.path for c in tree.root.children if c.data is not None]
            return len(children) >= 8 and all(p in tree.labels for p in children)

        await until(pilot, listed)
        await pilot.press("down", "down", "down")
        await _settle(pilot)

    assert snap_compare(CkptscopeApp(DEMO), terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("theme", ["ckptscope-dark", "ckptscope-light"])
def test_inspect_with_stats(snap_compare, theme: str) -> None:
    async def run_before(pilot) -> None:
        await _theme(theme)(pilot)
        await _inspecting(pilot)
        screen = pilot.app.screen
        screen.jump_to_tensor("decoder.layers.3.mlp.linear_fc1.weight")
        await pilot.pause(0.3)
        await pilot.press("s")
        await _settle(pilot)

    assert snap_compare(CkptscopeApp(DEMO / "megatron-torch-tp2pp2"), terminal_size=SIZE, run_before=run_before)


def test_summary_tab(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await _inspecting(pilot)
        await pilot.press("3")
        await pilot.pause(0.2)

    assert snap_compare(CkptscopeApp(DEMO / "megatron-moe-ep2"), terminal_size=SIZE, run_before=run_before)


def test_ranks_tab(snap_compare) -> None:
    """The rank-layout map: TP columns, PP rows, what each rank file holds."""
    async def run_before(pilot) -> None:
        await _inspecting(pilot)
        await pilot.press("5")
        await pilot.pause(0.2)

    assert snap_compare(CkptscopeApp(DEMO / "megatron-torch-tp2pp2"), terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("theme", ["ckptscope-dark", "ckptscope-light"])
def test_diff(snap_compare, theme: str) -> None:
    async def run_before(pilot) -> None:
        await _theme(theme)(pilot)
        pilot.app.open_diff(DEMO / "megatron-torch-tp2pp2")
        await pilot.pause(0.3)
        pilot.app.screen.query_one("#diff-b").value = str(DEMO / "megatron-dist")
        await pilot.click("#compare")
        await _until(pilot, lambda: pilot.app.screen.report is not None and pilot.app.screen.query_one("#diff-table").row_count > 0)
        await _settle(pilot)

    assert snap_compare(CkptscopeApp(DEMO), terminal_size=SIZE, run_before=run_before)


def test_wizard_plan(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DEMO)  # the default output is in the working folder: the same path on every machine

    async def run_before(pilot) -> None:
        await _settle(pilot)
        pilot.app.open_convert(DEMO / "megatron-torch-tp2pp2")
        await _until(pilot, lambda: getattr(pilot.app.screen, "spec", None) is not None)
        screen = pilot.app.screen
        for _ in range(2):
            await pilot.click("#next")
            await pilot.pause(0.15)
        screen.query_one("#fmt").value = "megatron"
        screen.query_one("#tp").value = "4"
        await pilot.pause(0.2)
        for _ in range(2):
            await pilot.click("#next")
            await pilot.pause(0.15)
        screen.query_one("#out").value = "/tmp/ckptscope-snapshot-out"
        await pilot.click("#next")
        await _until(pilot, lambda: screen.plan is not None)
        await _settle(pilot)

    assert snap_compare(CkptscopeApp(DEMO), terminal_size=SIZE, run_before=run_before)
