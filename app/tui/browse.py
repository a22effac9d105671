"""Browse screen: a directory tree that recognises checkpoint roots and iteration folders.

Folder labels (kind, iteration, layout, size, complete) come from name-only probing in a thread
worker whenever a directory is expanded (Enter, Space or an arrow), so large folders stay
responsive. Enter on a checkpoint (a root or one iteration folder) opens it; on any other folder
it expands.
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
from textual.widgets import DirectoryTree, Footer, Header, Static, Tree
from textual.widgets._directory_tree import DirEntry
from textual.widgets._tree import TreeNode

from ckptscope.inspectors.browse import FolderLabel, label_path
from ckptscope.inspectors.storage import RemotePath, as_path
from ckptscope.app.safe import printable, safe, safe_text

from .messages import FolderLabelled

MAX_PROBED_CHILDREN = 400


def _children(folder: Path) -> list[Path]:
    """The first MAX_PROBED_CHILDREN entries of a folder or remote prefix, by name (none on error)."""
    try:
        if isinstance(folder, RemotePath):
            return sorted(folder.iterdir(), key=lambda p: p.name)[:MAX_PROBED_CHILDREN]
        return [Path(e.path) for e in sorted(os.scandir(folder), key=lambda e: e.name)[:MAX_PROBED_CHILDREN]]
    except OSError:
        return []


class CheckpointTree(DirectoryTree):
    """DirectoryTree whose labels say which folders are checkpoints; it browses local folders and
    s3:// / http(s):// prefixes alike (Textual builds every node's path with `PATH`)."""

    PATH = staticmethod(as_path)

    BINDINGS = [
        Binding("o", "open_checkpoint", "Open", id="browse-open"),
        Binding("r", "reload", "Reload", id="browse-reload"),
    ]

    def __init__(self, path: str | Path, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(path, **kwargs)
        self.auto_expand = False  # Enter opens a checkpoint folder; the screen expands the others
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
        self.screen.probed.clear()  # type: ignore[attr-defined]
        await self.reload()
        self.screen.probe_children(Path(self.path))  # type: ignore[attr-defined]

    @on(Tree.NodeExpanded)
    def _label_expanded(self, event: Tree.NodeExpanded[DirEntry]) -> None:
        """However a folder is expanded (Enter, Space, an arrow, a click), label what it holds
        (DirectoryTree stops the message here, so the screen never sees it)."""
        if event.node.data is not None:
            self.screen.probe_children(event.node.data.path)  # type: ignore[attr-defined]

    def relabel(self, paths: set[Path]) -> None:
        """Redraw the nodes of newly labelled paths: Tree caches rendered lines per node, so a
        label that arrives after a node was drawn shows only once that node is refreshed."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.data is not None and node.data.path in paths:
                node.refresh()
            stack.extend(node.children)


class BrowseScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.back", "Back", id="browse-back", show=False),
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.root_path = path
        self.probed: set[Path] = set()  # folders whose children were labelled (or are being)

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

    def probe_children(self, folder: Path) -> None:
        """Label `folder` and its sub-folders once (a reload starts over)."""
        if folder not in self.probed:
            self.probed.add(folder)
            self._probe(folder)

    @work(thread=True, exclusive=False, group="probe", exit_on_error=False, description="probe a folder")
    def probe_one(self, path: Path) -> None:
        """Label one path (beyond the first MAX_PROBED_CHILDREN of its folder, or not yet probed)."""
        self.post_message(FolderLabelled({path: label_path(path)}))

    @work(thread=True, exclusive=False, group="probe", exit_on_error=False, description="probe folders")
    def _probe(self, folder: Path) -> None:
        """Label `folder` and its sub-folders (names only) without blocking the UI."""
        labels: dict[Path, FolderLabel] = {folder: label_path(folder)}
        for child in _children(folder):
            if not child.name.startswith("."):
                labels[child] = label_path(child)
        self.post_message(FolderLabelled(labels))

    @on(FolderLabelled)
    def _labels(self, message: FolderLabelled) -> None:
        tree = self.query_one(CheckpointTree)
        tree.labels.update(message.labels)
        tree.relabel(set(message.labels))
        self._preview(tree.cursor_node)

    @on(DirectoryTree.DirectorySelected)
    def _dir_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        """Enter: open a checkpoint (root or iteration folder, labelled or not yet); expand the rest."""
        tree = self.query_one(CheckpointTree)
        info = tree.labels.get(event.path)
        if info is None:  # not labelled yet (a probe in flight): names only, quick
            info = tree.labels[event.path] = label_path(event.path)
        if info.kind:
            self.open_path(event.path)
            return
        event.node.toggle()

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
            self.probe_one(path)
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
            for name in info.missing[:8]:
                text.append(f"  missing   {printable(name)}\n", style="red")
            if len(info.missing) > 8:
                text.append(f"  … {len(info.missing) - 8} more missing\n", style="red")
            text.append("\nEnter / o: open in the inspector", style="dim")
        else:
            text.append("not a checkpoint", style="dim")
        preview.update(text)

    def open_path(self, path: Path) -> None:
        self.app.open_checkpoint(path)  # type: ignore[attr-defined]
