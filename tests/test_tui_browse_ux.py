"""Browse (issue 16): folders are labelled however they are expanded, Enter opens an iteration
folder, missing shards / rank files are flagged, and no "opening…" toast outlives an error."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path


from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.inspectors.browse import label_path

from .test_tui import settle, until


def screen_text(app: CkptscopeApp) -> str:
    """What the terminal shows, line by line (from the app's own SVG export)."""
    svg = app.export_screenshot()
    lines: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        lines.setdefault(float(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3))))
    return "\n".join("".join(t for _, t in sorted(parts)).replace("\xa0", " ") for _, parts in sorted(lines.items()))


async def _browse(app: CkptscopeApp, pilot):
    from ckptscope.app.tui.browse import BrowseScreen, CheckpointTree

    await until(pilot, lambda: isinstance(app.screen, BrowseScreen))
    await settle(app, pilot)
    return app.screen, app.screen.query_one(CheckpointTree)


async def _cursor_to(pilot, tree, name: str) -> None:
    for _ in range(40):
        node = tree.cursor_node
        if node is not None and node.data is not None and node.data.path.name == name:
            return
        await pilot.press("down")
    raise AssertionError(f"{name} not reached")


async def test_space_on_a_root_labels_its_iterations_and_enter_opens_one(demo: Path) -> None:
    from ckptscope.app.tui.inspect import InspectScreen

    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        screen, tree = await _browse(app, pilot)
        await _cursor_to(pilot, tree, "megatron-torch-tp2pp2")
        await pilot.press("space")  # expand, not open
        iteration = demo / "megatron-torch-tp2pp2" / "iter_0000200"
        await until(pilot, lambda: iteration in tree.labels)
        await settle(app, pilot)
        assert tree.labels[iteration].kind == "megatron-torch" and tree.labels[iteration].role == "iteration"
        assert "iter_0000200  megatron-torch · iter 200 · TP2 × 2 stage/expert ranks" in screen_text(app)
        await _cursor_to(pilot, tree, "iter_0000200")
        await pilot.pause(0.2)
        preview = str(screen.query_one("#browse-preview").render())
        assert "(probing…)" not in preview and "format      megatron-torch" in preview and "entry       iteration" in preview
        await pilot.press("enter")  # opens the iteration folder; does not expand it
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        assert app.screen.ckpt.path == iteration and not tree.cursor_node.is_expanded


async def test_expanding_with_the_mouse_labels_too(demo: Path) -> None:
    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        _, tree = await _browse(app, pilot)
        await _cursor_to(pilot, tree, "nxd-tp2pp2")
        tree.cursor_node.expand()  # what a click on the ▶ arrow does: a NodeExpanded without a selection
        await until(pilot, lambda: any(p.parent == demo / "nxd-tp2pp2" for p in tree.labels))


async def test_labels_that_arrive_after_drawing_show_without_a_key(demo: Path) -> None:
    from ckptscope.app.tui.messages import FolderLabelled

    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        screen, tree = await _browse(app, pilot)
        hf = demo / "hf-llama"
        label = tree.labels.pop(hf)
        tree.relabel({hf})  # drawn without its label, as when the probe is still in flight
        # (Tree caches each drawn line: a plain tree.refresh() keeps showing what was drawn)
        await pilot.pause(0.2)
        assert "hf-llama  hf" not in screen_text(app)
        screen.post_message(FolderLabelled({hf: label}))
        await pilot.pause(0.3)
        assert "hf-llama  hf" in screen_text(app)


def _without_a_shard(demo: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "hf-broken"
    shutil.copytree(demo / "hf-mixtral", broken)
    (broken / "model-00002-of-00002.safetensors").unlink()
    return broken


def _without_a_rank(demo: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "mt-broken"
    shutil.copytree(demo / "megatron-torch-tp2pp2", broken)
    shutil.rmtree(broken / "iter_0000200" / "mp_rank_01_001")
    return broken


def test_missing_shard_and_rank_file_are_flagged(demo: Path, tmp_path: Path) -> None:
    hf = label_path(_without_a_shard(demo, tmp_path))
    assert not hf.complete and hf.missing == ("model-00002-of-00002.safetensors",) and "INCOMPLETE" in hf.text()
    mt = label_path(_without_a_rank(demo, tmp_path))
    assert not mt.complete and mt.missing == ("mp_rank_01_001/model_optim_rng.pt",)
    assert label_path(demo / "hf-mixtral").complete and label_path(demo / "megatron-torch-tp2pp2").complete


async def test_browse_preview_names_the_missing_file(demo: Path, tmp_path: Path) -> None:
    _without_a_shard(demo, tmp_path)
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        screen, tree = await _browse(app, pilot)
        await _cursor_to(pilot, tree, "hf-broken")
        await pilot.pause(0.2)
        preview = str(screen.query_one("#browse-preview").render())
        assert "complete    NO" in preview and "missing   model-00002-of-00002.safetensors" in preview
        assert "hf-broken  hf · INCOMPLETE" in screen_text(app)


async def test_opening_toast_goes_with_the_error(demo: Path, tmp_path: Path) -> None:
    broken = _without_a_shard(demo, tmp_path)
    app = CkptscopeApp(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await _browse(app, pilot)
        app.open_checkpoint(broken)
        await until(pilot, lambda: type(app.screen).__name__ == "ErrorDialog")
        await pilot.pause(0.2)
        assert "model-00002-of-00002.safetensors" in str(app.screen.query_one("#error-message").render())
        assert not list(app._notifications), [n.message for n in app._notifications]
