"""Browse screen: a directory tree that recognises checkpoint roots and iteration folders.

Folder labels (kind, iteration, layout, size, complete) come from name-only probing in a thread
worker whenever a directory is expanded, so large folders stay responsive.
"""

from __future__ import annotations

import os
from pathlib import Path

import humanize
from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DirectoryTree, Footer, Header, Static
from textual.widgets._directory_tree import DirEntry
from textual.widgets._tree import TreeNode

from ckptscope.inspectors.browse import FolderLabel, label_path
from ckptscope.app.safe import printable, safe, safe_text

from .messages import FolderLabelled

MAX_PROBED_CHILDREN = 400


class CheckpointTree(DirectoryTree):
    """DirectoryTree whose labels say which folders are checkpoints."""

    BINDINGS = [
        Binding("o", "open_checkpoint", "Open", id="browse-open"),
        Binding("r", "reload", "Reload", id="browse-reload"),
    ]

    def __init__(self, path: str | Path, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(path, **kwargs)
        self.labels: dict[Path, FolderLabel] = {}

    def process_label(self, label: str | Text) -> Text:
        """File names are literal text (Tree parses a `str` label as markup: a file named `[/b]` crashed it)."""
        return super().process_label(safe(label) if isinstance(label, str) else safe_text(label))

    def render_label(self, node: TreeNode[DirEntry], base_style: Style, style: Style) -> Text:
        label = super().render_label(node, base_style, style)
        if node.data is not None:
            info = self.labels.get(node.data.path)
            if info is not None and (info.kind or info.problem):
                colour = "red" if info.problem or not info.complete else "green"
                label.append(f"  {printable(info.text())}", style=f"bold {colour}")
                if info.size:
                    label.append(f"  {humanize.naturalsize(info.size, binary=True)}", style="dim")
        return label

    def filter_paths(self, paths):  # type: ignore[no-untyped-def]
        """Hide dot-folders (and our own partial outputs)."""
        return [p for p in paths if not p.name.startswith(".")]

    def action_open_checkpoint(self) -> None:
        node = self.cursor_node
        if node is not None and node.data is not None:
            self.screen.open_path(node.data.path)  # type: ignore[attr-defined]

    async def action_reload(self) -> None:
        self.labels.clear()
        await self.reload()
        self.screen.probe_children(Path(self.path))  # type: ignore[attr-defined]


class BrowseScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.back", "Back", id="browse-back", show=False),
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.root_path = path

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f" Browse {printable(self.root_path)}  ·  Enter or o opens a checkpoint", classes="title-bar", markup=False)
        with Horizontal(id="browse-body"):
            yield CheckpointTree(self.root_path, id="tree")
            yield Static("Select a folder to see what it holds.", id="browse-preview", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.probe_children(self.root_path)
        self.query_one(CheckpointTree).focus()

    @work(thread=True, exclusive=False, group="probe", exit_on_error=False, description="probe folders")
    def probe_children(self, folder: Path) -> None:
        """Label `folder` and its sub-folders (names only) without blocking the UI."""
        labels: dict[Path, FolderLabel] = {folder: label_path(folder)}
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)[:MAX_PROBED_CHILDREN]
        except OSError:
            entries = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            labels[Path(entry.path)] = label_path(entry.path)
        self.post_message(FolderLabelled(labels))

    @on(FolderLabelled)
    def _labels(self, message: FolderLabelled) -> None:
        tree = self.query_one(CheckpointTree)
        tree.labels.update(message.labels)
        tree.refresh()
        self._preview(tree.cursor_node)

    @on(DirectoryTree.DirectorySelected)
    def _dir_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        info = self.query_one(CheckpointTree).labels.get(event.path)
        if info is not None and info.kind:
            self.open_path(event.path)
        else:
            self.probe_children(event.path)

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.open_path(event.path)

    @on(DirectoryTree.NodeHighlighted)
    def _highlighted(self, event: DirectoryTree.NodeHighlighted) -> None:
        self._preview(event.node)

    def _preview(self, node: TreeNode[DirEntry] | None) -> None:
        preview = self.query_one("#browse-preview", Static)
        if node is None or node.data is None:
            return
        path = node.data.path
        info = self.query_one(CheckpointTree).labels.get(path)
        if info is None:
            preview.update(Text(f"{printable(path.name)}\n\n(probing…)"))
            return
        text = Text()
        text.append(printable(path.name) + "\n\n", style="bold")
        if info.problem:
            text.append(f"problem: {printable(info.problem)}\n", style="red")
        elif info.kind:
            text.append(f"format      {info.kind}\n")
            text.append(f"entry       {info.role}\n")
            if info.iteration is not None:
                text.append(f"iteration   {info.iteration}\n")
            if info.layout:
                text.append(f"layout      {info.layout}\n")
            text.append(f"size        {humanize.naturalsize(info.size, binary=True)}\n")
            text.append("complete    " + ("yes" if info.complete else "NO") + "\n", style="" if info.complete else "bold red")
            text.append("\nEnter / o: open in the inspector", style="dim")
        else:
            text.append("not a checkpoint", style="dim")
        preview.update(text)

    def open_path(self, path: Path) -> None:
        self.app.open_checkpoint(path)  # type: ignore[attr-defined]
