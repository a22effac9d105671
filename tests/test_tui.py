"""The Textual app driven with Pilot: browse, inspect, stats, filter, theme, diff, wizard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec

GROUPS = ("open", "explain", "filter", "probe", "stats", "spec", "plan", "convert", "verify", "diff")


async def settle(app: CkptscopeApp, pilot, timeout: float = 120.0) -> None:
    """Wait for our own workers (not DirectoryTree's long-lived loader)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if not [w for w in app.workers if w.group in GROUPS and not w.is_finished]:
            break
    await pilot.pause(0.1)


def _screen_log(app: CkptscopeApp) -> str:
    """What the screen's run log says: the reason a wait ran out is usually written there."""
    try:
        return " | ".join(app.screen.query_one("#run-log").lines[-8:])
    except Exception:  # noqa: BLE001 - only a diagnostic
        return "(no run log on this screen)"


async def until(pilot, condition, timeout: float = 120.0) -> None:
    """Wait on the wall clock, not a count of pauses: a loaded CI machine stretches each pause.
    The deadlines are far above what any step needs; they only end a hung test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"condition not reached in {timeout:.0f}s; screen {type(pilot.app.screen).__name__}, "
                         f"run log: {_screen_log(pilot.app)}")


async def click(pilot, selector: str) -> None:
    await pilot.click(selector)
    await pilot.pause(0.15)


async def _inspect(app: CkptscopeApp, pilot, path: Path):
    from ckptscope.app.tui.inspect import InspectScreen

    app.open_checkpoint(path)
    await settle(app, pilot)
    assert isinstance(app.screen, InspectScreen)
    return app.screen


async def test_browse_labels_checkpoints(demo: Path) -> None:
    from ckptscope.app.tui.browse import BrowseScreen, CheckpointTree

    app = CkptscopeApp(demo)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, BrowseScreen)
        labels = app.screen.query_one(CheckpointTree).labels
        kinds = {p.name: label.kind for p, label in labels.items() if label.kind}
        assert kinds["megatron-torch-tp2pp2"] == "megatron-torch" and kinds["megatron-dist"] == "megatron-dist"
        assert kinds["nxd-tp2pp2"] == "nxd" and kinds["deepspeed-pipe"] == "deepspeed" and kinds["hf-llama"] == "hf"
        assert labels[demo / "megatron-torch-tp2pp2"].iteration == 200
        # keyboard: move to the megatron root and open it with Enter
        tree = app.screen.query_one(CheckpointTree)
        for _ in range(20):
            node = tree.cursor_node
            if node is not None and node.data is not None and node.data.path.name == "megatron-torch-tp2pp2":
                break
            await pilot.press("down")
        await pilot.press("enter")
        await settle(app, pilot)
        assert type(app.screen).__name__ == "InspectScreen"
        assert app.screen.ckpt.iteration == 200


async def test_open_path_directly_then_back_to_the_browser(demo: Path) -> None:
    """`ckptscope PATH` on a checkpoint shows it first; the browser is built only when asked for."""
    from ckptscope.app.tui.browse import BrowseScreen
    from ckptscope.app.tui.inspect import InspectScreen

    app = CkptscopeApp(demo / "hf-mixtral")
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        assert not any(isinstance(s, BrowseScreen) for s in app.screen_stack)
        await settle(app, pilot)
        assert app.screen.shown_at is not None and app.screen.explained is not None
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, BrowseScreen))
        assert app.screen.root_path == demo  # the browser opens on the checkpoint's folder
        await pilot.press("escape")  # back on the browser stays there
        await pilot.pause(0.1)
        assert isinstance(app.screen, BrowseScreen) and len(app.screen_stack) == 2


async def test_opening_a_bad_start_path_lands_on_the_browser(tmp_path: Path) -> None:
    from ckptscope.app.tui.browse import BrowseScreen

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    app = CkptscopeApp(bad)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(app, pilot)
        assert type(app.screen).__name__ == "ErrorDialog"
        assert "model.safetensors" in str(app.screen.query_one("#error-message").render())
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert isinstance(app.screen, BrowseScreen)


async def test_inspect_tree_filter_stats_and_metadata(demo: Path) -> None:
    from textual.widgets import DataTable, Sparkline

    from ckptscope.app.tui.inspect import TensorTree

    messages: list[str] = []
    app = CkptscopeApp(demo)
    async with app.run_test(size=(140, 40), message_hook=lambda m: messages.append(type(m).__name__)) as pilot:
        await settle(app, pilot)
        screen = await _inspect(app, pilot, demo / "megatron-torch-tp2pp2")
        tree = screen.query_one(TensorTree)
        top = [c.data.name for c in tree.root.children]
        assert top[:3] == ["decoder", "embedding", "output_layer"]
        decoder = tree.root.children[0]
        assert not decoder.is_expanded and not decoder.children  # lazy: nothing built before expansion
        tree.move_cursor(decoder)
        await pilot.press("space")
        await pilot.pause(0.1)
        assert decoder.children  # built on expansion
        # filter
        await pilot.press("slash")
        await pilot.press(*"linear_fc2")
        await pilot.pause(0.2)
        await pilot.press("escape")  # leaves the filter box, not the screen
        assert type(app.screen).__name__ == "InspectScreen" and tree.has_focus
        leaves = [n for n in tree.root.data.iter_leaves()]
        assert leaves and all(n.path.endswith("linear_fc2.weight") for n in leaves)
        assert len(leaves) == 4  # one per global layer, each with its TP shards
        # jump to a tensor and compute statistics
        screen.jump_to_tensor("decoder.layers.3.mlp.linear_fc2.weight")
        await pilot.pause(0.2)
        assert tree.cursor_node.data.path == "decoder.layers.3.mlp.linear_fc2.weight"
        await pilot.press("s")
        await settle(app, pilot)
        assert "StatsReady" in messages
        assert sum(screen.query_one("#histogram", Sparkline).data) == 64 * 160  # both shards' elements binned
        info = str(screen.query_one("#details-info").render())
        assert info  # rendered group
        # metadata: searchable, architecture fields present
        await pilot.press("2")
        table = screen.query_one("#meta-table", DataTable)
        keys = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert "args.num_query_groups" in keys
        screen.query_one("#meta-filter").value = "query_groups"
        await pilot.pause(0.2)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["args.num_query_groups"]


async def test_theme_switch_is_remembered(demo: Path, tmp_path: Path) -> None:
    app = CkptscopeApp(demo)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.theme == "ckptscope-dark"
        await pilot.press("ctrl+t")
        await pilot.pause(0.2)
        assert app.theme == "ckptscope-light"
        assert app.theme_variables["dtype-bfloat16"]
    saved = json.loads((tmp_path / "config" / "config.json").read_text())
    assert saved["theme"] == "ckptscope-light"
    app = CkptscopeApp(demo)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        assert app.theme == "ckptscope-light"


async def test_help_screen_lists_binding_ids(demo: Path) -> None:
    from ckptscope.app.tui.dialogs import HelpScreen

    app = CkptscopeApp(demo)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        assert isinstance(app.screen, HelpScreen)
        ids = {row[2] for row in app.screen.rows}
        assert {"quit", "help", "browse", "diff", "convert"} <= ids
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, HelpScreen)


async def test_diff_and_check(demo: Path) -> None:
    from textual.widgets import DataTable

    messages: list[str] = []
    app = CkptscopeApp(demo)
    async with app.run_test(size=(140, 40), message_hook=lambda m: messages.append(type(m).__name__)) as pilot:
        await settle(app, pilot)
        app.open_diff(demo / "megatron-torch-tp2pp2")
        await pilot.pause(0.2)
        app.screen.query_one("#diff-b").value = str(demo / "megatron-dist")
        await pilot.click("#compare")
        await settle(app, pilot)
        assert "DiffDone" in messages
        assert app.screen.report.identical
        table = app.screen.query_one("#diff-table", DataTable)
        assert table.row_count > 5 and {str(table.get_row_at(i)[0]) for i in range(table.row_count)} == {"same"}
        # a mismatch: llama vs the mixtral demo
        first = app.screen.report
        app.screen.query_one("#diff-b").value = str(demo / "hf-mixtral")
        await pilot.click("#compare")
        await until(pilot, lambda: app.screen.report is not first)
        assert not app.screen.report.identical
        # check against a layout that cannot hold the model
        second = app.screen.report
        app.screen.query_one("#check-tp").value = "3"
        await pilot.click("#check")
        await until(pilot, lambda: app.screen.report is not second)
        assert not app.screen.report.ok and app.screen.report.layout_errors


async def test_wizard_end_to_end_megatron_to_hf(demo: Path, tmp_path: Path) -> None:
    from ckptscope.converters.verify import verify

    seen: dict[int, object] = {}  # messages bubble screen -> app: count each object once (kept alive so ids stay unique)
    messages: list[str] = []

    def hook(m: object) -> None:
        if id(m) not in seen:
            seen[id(m)] = m
            messages.append(type(m).__name__)

    out = tmp_path / "converted"
    app = CkptscopeApp(demo)
    async with app.run_test(size=(140, 44), message_hook=hook) as pilot:
        await settle(app, pilot)
        await _inspect(app, pilot, demo / "megatron-torch-tp2pp2")
        await pilot.press("x")
        await settle(app, pilot)
        wizard = app.screen
        assert type(wizard).__name__ == "ConvertScreen" and wizard.spec is not None
        await click(pilot, "#next")  # target (hf)
        assert not wizard.query_one("#row-megatron-spec").display  # a Megatron option has no place in an HF target
        await click(pilot, "#next")  # an HF target holds the whole model: no layout step, straight to dtype
        assert wizard.query_one("#wizard-body").current == "step-dtype"
        await click(pilot, "#next")  # output
        wizard.query_one("#out").value = str(out)
        await click(pilot, "#next")  # plan
        await until(pilot, lambda: wizard.plan is not None)
        assert wizard.plan.ok
        await click(pilot, "#run")
        await until(pilot, lambda: "ConvertFinished" in messages)
        assert messages.count("LayerDone") == len(wizard.plan.groups)
        assert "ConvertProgress" in messages
        await pilot.pause(0.1)
        await click(pilot, "#verify")
        await until(pilot, lambda: "VerifyDone" in messages)
        await pilot.pause(0.1)
        assert "OK" in "\n".join(wizard.query_one("#run-log").lines)
    report = verify(demo / "megatron-torch-tp2pp2", out)
    assert report.identical and report.logits_ok


async def test_wizard_refuses_an_output_inside_the_source(demo: Path) -> None:
    """The wizard shows convert's destination refusals on its output step, before planning (issue 15)."""
    src = demo / "megatron-torch-tp2pp2"
    app = CkptscopeApp(demo)
    async with app.run_test(size=(140, 44)) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await settle(app, pilot)
        wizard = app.screen
        for out, why in ((src / "converted", "inside the source"), (src, "is the source"), (demo, "contains the source")):
            wizard.query_one("#force").value = True
            wizard.query_one("#out").value = str(out)
            await pilot.pause(0.05)
            assert not wizard._validate_output()
            assert why in str(wizard.query_one("#out-status").render())
        assert not (src / "converted").exists()
        wizard.query_one("#fmt").value = "megatron"  # a layout is asked for ranked targets only
        await pilot.pause(0.05)
        for value, flag in (("0", '"Tensor parallel"'), ("9" * 300, '"Tensor parallel"'), ("-3", '"Tensor parallel"')):  # the CLI's bounds, the field's name
            wizard.query_one("#tp").value = value
            await pilot.pause(0.05)
            assert wizard._validate_layout() and flag in str(wizard.query_one("#layout-status").render())


async def test_wizard_cancel_leaves_no_output(tmp_path: Path) -> None:
    src = write_megatron_torch(SampleSpec(layers=24, hidden=512, heads=8, kv_heads=2, ffn=2048, vocab=4096), tmp_path / "big", tp=2, pp=2)
    out = tmp_path / "out"
    messages: list[object] = []
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(140, 44), message_hook=messages.append) as pilot:
        await settle(app, pilot)
        app.open_convert(src)
        await settle(app, pilot)
        wizard = app.screen
        for _ in range(4):
            await click(pilot, "#next")
        wizard.query_one("#out").value = str(out)
        await click(pilot, "#next")
        await until(pilot, lambda: wizard.plan is not None)
        await pilot.click("#run")  # cancel at once: the worker stops at the next layer boundary
        assert app.converting
        await click(pilot, "#cancel")
        await until(pilot, lambda: any(type(m).__name__ == "ConvertFinished" for m in messages))
        await settle(app, pilot)
        finished = [m for m in messages if type(m).__name__ == "ConvertFinished"]
        assert finished and finished[-1].cancelled
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "ckptscope-partial" in p.name]


async def test_quit_asks_while_converting(demo: Path) -> None:
    from ckptscope.app.tui.dialogs import ConfirmDialog

    app = CkptscopeApp(demo)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        app.converting = True
        await pilot.press("q")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmDialog) and app.is_running
        app.converting = False


async def test_worker_error_becomes_one_line_dialog(tmp_path: Path) -> None:
    from ckptscope.app.tui.dialogs import ErrorDialog

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        app.open_checkpoint(bad)
        await until(pilot, lambda: isinstance(app.screen, ErrorDialog))
        assert "truncated" in app.screen.message and "\n" not in app.screen.message


async def test_palette_jumps_to_a_tensor(demo: Path) -> None:
    from ckptscope.app.tui.inspect import TensorTree

    app = CkptscopeApp(demo)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(app, pilot)
        screen = await _inspect(app, pilot, demo / "hf-llama")
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"layers.2.mlp.down_proj")
        await pilot.pause(0.6)
        await pilot.press("enter")
        await pilot.pause(0.4)
        assert screen.query_one(TensorTree).cursor_node.data.path == "model.layers.2.mlp.down_proj.weight"


def test_cli_path_shortcut_and_commands() -> None:
    from ckptscope.app.cli import _path_shortcut

    assert _path_shortcut(["inspect"]) is None and _path_shortcut(["demo"]) is None
    assert _path_shortcut(["some/folder"]) == Path("some/folder")
    assert _path_shortcut(["--debug", "x"]) == Path("x")
    assert torch.__version__  # the app imports torch lazily through the inspectors
