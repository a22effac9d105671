"""Inspect at a glance (issue 16): the header names the model, the tree shows global shapes and
chunk counts, tensors no rule places are named and marked, and `?` lists every active key."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.inspectors import detect
from ckptscope.inspectors.summary import logical_param_count

from .test_tui import settle, until


async def _open(app: CkptscopeApp, pilot, path: Path):
    from ckptscope.app.tui.inspect import InspectScreen

    app.open_checkpoint(path)
    await until(pilot, lambda: isinstance(app.screen, InspectScreen) and app.screen.ckpt.path.parent in (path, path.parent)
                and app.screen.explained is not None)
    await settle(app, pilot)
    return app.screen


def _text(widget) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(widget.content)
    return console.export_text()


async def test_header_names_architecture_parameters_and_dtype(demo: Path) -> None:
    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _open(app, pilot, demo / "megatron-torch-tp2pp2")
        head = str(screen.query_one("#inspect-title").render())
        params = logical_param_count(detect(demo / "megatron-torch-tp2pp2"))
        assert f"llama · 4 layers · hidden 64 · heads 8 / 2 KV · {params:,} parameters · float32" in head, head
        screen = await _open(app, pilot, demo / "hf-mixtral")
        assert "experts top-2" in str(screen.query_one("#inspect-title").render())


async def test_tree_shows_global_shapes_and_counts_in_words(demo: Path) -> None:
    from ckptscope.app.tui.inspect import TensorTree

    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _open(app, pilot, demo / "megatron-torch-tp2pp2")
        tree = screen.query_one(TensorTree)
        labels = {n.data.name: str(n.label) for n in tree.root.children}
        assert labels["embedding"].startswith("embedding  1 tensor · ") and "1 tensors" not in labels["embedding"]
        screen.jump_to_tensor("decoder.layers.3.mlp.linear_fc2.weight")  # row-parallel: TP cuts dim 1
        await pilot.pause(0.3)
        assert str(tree.cursor_node.label).startswith("weight  [64, 160]  float32  2 shards of [64, 80]")
        assert "shape      [64, 160] (each shard [64, 80])" in _text(screen.query_one("#details-info"))
        screen.jump_to_tensor("decoder.layers.3.mlp.linear_fc1.weight")  # column-parallel: dim 0
        await pilot.pause(0.3)
        assert "[320, 64]" in str(tree.cursor_node.label) and "2 shards of [160, 64]" in str(tree.cursor_node.label)
        screen.jump_to_tensor("decoder.layers.3.mlp.linear_fc1.layer_norm_weight")  # replicated: whole on each rank
        await pilot.pause(0.3)
        assert str(tree.cursor_node.label).startswith("layer_norm_weight  [64]  float32  ×2 copies")


async def test_torch_dist_tensor_counts_its_chunks(demo: Path) -> None:
    from ckptscope.app.tui.inspect import TensorTree

    ckpt = detect(demo / "megatron-dist")
    chunked = next(t for t in ckpt.model_tensors() if len(t.chunks) > 1)
    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _open(app, pilot, demo / "megatron-dist")
        screen.jump_to_tensor(chunked.global_name)
        await pilot.pause(0.3)
        tree = screen.query_one(TensorTree)
        shape = "[" + ", ".join(map(str, chunked.shape)) + "]"
        assert f"{shape}  {chunked.dtype}  in {len(chunked.chunks)} chunks" in str(tree.cursor_node.label)
        details = _text(screen.query_one("#details-info"))
        assert f"in {len(chunked.chunks)} chunks" in details and "shard(s)" not in details


async def test_unmatched_tensor_is_named_in_summary_and_marked_in_the_tree(demo: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from ckptscope.app.tui.inspect import TensorTree

    odd = tmp_path / "odd"
    shutil.copytree(demo / "hf-llama", odd)
    shard = sorted(odd.glob("*.safetensors"))[0]
    tensors = load_file(str(shard))
    extra = "model.layers.0.self_attn.q_proj.weight_scale_inv"
    tensors[extra] = torch.ones(1)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = odd / "model.safetensors.index.json"
    if index.exists():
        import json

        doc = json.loads(index.read_text())
        doc["weight_map"][extra] = shard.name
        index.write_text(json.dumps(doc))
    app = CkptscopeApp(odd)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: getattr(app.screen, "explained", None) is not None)
        await settle(app, pilot)
        screen = app.screen
        assert screen.explained is not None and extra in screen.explained.view.unmatched
        tree = screen.query_one(TensorTree)
        model = next(n for n in tree.root.children if n.data.name == "model")
        assert str(model.label).endswith("1 unmatched")  # marked from the top, before anything is expanded
        screen.jump_to_tensor(extra)
        await pilot.pause(0.3)
        assert str(tree.cursor_node.label).endswith("unmatched") and tree.cursor_node.data.path == extra
        await pilot.press("3")
        await settle(app, pilot)
        summary = _text(screen.query_one("#summary"))
        assert "1 unmatched" in summary and f"unmatched  {extra}" in summary and "nearest rule" in summary


async def test_help_lists_every_active_key(demo: Path) -> None:
    from ckptscope.app.tui.dialogs import HelpScreen

    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        await _open(app, pilot, demo / "megatron-torch-tp2pp2")
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        assert isinstance(app.screen, HelpScreen)
        rows = {(key, description) for key, description, _ in app.screen.rows}
        ids = {binding_id for *_, binding_id in app.screen.rows}
        assert ("e", "Expand all below") in rows and ("space", "Expand / collapse") in rows  # the tree's own keys
        assert ("s", "Stats") in rows and ("/", "Filter") in rows and ("?", "Help") in rows
        assert sum(1 for *_, i in app.screen.rows if not i) > 3  # bindings without ids are listed too
        assert {"tensor-expand", "inspect-back", "quit", "help"} <= ids


async def test_ranks_tab_draws_the_rank_layout(demo: Path) -> None:
    app = CkptscopeApp(demo)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await _open(app, pilot, demo / "megatron-torch-tp2pp2")
        await pilot.press("5")
        await settle(app, pilot)
        assert screen.query_one("TabbedContent").active == "tab-ranks"
        text = _text(screen.query_one("#ranks"))
        assert "Rank layout (TP2×PP2)" in text and text.count("layers 2-3") == 2 and text.count("+ embedding") == 2
        assert screen.query_one("#ranks-scroll").has_focus


async def test_diff_screen_uses_the_terminal_width(demo: Path, tmp_path: Path) -> None:
    """At 200 columns neither the table's name columns nor the report below cut a 41-character name."""
    from ckptscope.app.tui.diff import DiffScreen

    renamed = "model.layers.1.mlp.up_proj.weight_by_hand"  # 41: more than the old fixed 30
    odd = tmp_path / "odd"
    shutil.copytree(demo / "hf-llama", odd)
    _rename_stored(odd, "model.layers.1.mlp.up_proj.weight", renamed)
    app = CkptscopeApp(demo)
    async with app.run_test(size=(200, 48)) as pilot:
        await settle(app, pilot)
        app.open_diff(demo / "hf-llama")
        await until(pilot, lambda: isinstance(app.screen, DiffScreen) and bool(app.screen.query("#diff-b")))
        await pilot.pause(0.2)
        screen = app.screen
        screen.query_one("#diff-b").value = str(odd)
        await pilot.click("#compare")
        await until(pilot, lambda: screen.report is not None)
        await settle(app, pilot)
        widths = {str(c.label): c.width for c in screen.query_one("#diff-table").columns.values()}
        assert widths["tensor"] > 36 and widths["suggestion"] >= len(renamed), widths
        report_lines = _text(screen.query_one("#diff-extra")).splitlines()
        assert any(renamed in line for line in report_lines), "\n".join(report_lines)
        assert max(len(line.rstrip()) for line in report_lines) > 110


def _rename_stored(folder: Path, old: str, new: str) -> None:
    """Rename one stored tensor of an HF folder (its shard and the index's weight map)."""
    import json

    from safetensors.torch import load_file, save_file

    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(shard))
        if old in tensors:
            tensors[new] = tensors.pop(old)
            save_file(tensors, str(shard), metadata={"format": "pt"})
            index = folder / "model.safetensors.index.json"
            if index.exists():
                doc = json.loads(index.read_text())
                doc["weight_map"][new] = doc["weight_map"].pop(old)
                index.write_text(json.dumps(doc))
            return
    raise AssertionError(f"{old} not stored in {folder}")
