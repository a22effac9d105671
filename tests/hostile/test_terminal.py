"""Checkpoint strings never act on the terminal or the screen (issue 15, "Terminal and traceback").

One hostile checkpoint, with escape sequences (OSC 52 clipboard, OSC 0 window title, CSI, C1),
invisible format characters (RLM, ZWSP, BOM, soft hyphen, bidi override, tag characters) and
rich/Textual markup (`[link=...]`, `[/]`, `[/b]`, `[@click=...]`) in tensor names, `__metadata__`
keys and values, config keys, dtype strings and its own path, is rendered through every command
(plain and with colours forced on) and every screen of the app. Nothing raw may come out: no ESC
except rich's own colour codes, no C1, no unescaped format character, no parsed markup (the
markup text is shown literally), no crash, no traceback.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptscope.app.tui.app import CkptscopeApp
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.nxd import write_nxd

from .conftest import run_cli
from .corpus import TINY, _load_own

OSC52 = "\x1b]52;c;cHduZWQ=\x07"
TITLE = "\x1b]0;pwned\x07"
INVISIBLE = "\u200f\u200b\ufeff\xad\u202e\U000e0041\u2028"
MARKUP = ["[link=https://evil.example]x[/link]", "[/]", "[/b]", "[@click=app.quit]q[/]", "[bold red]", "evil[/b]"]
HOSTILE = [OSC52, TITLE, "\x1b[2J\x9b31m\x9d0;t\x9c\x7f", INVISIBLE, *MARKUP]
SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours, when a terminal is forced


def unsafe(text: str) -> list[str]:
    """Every character that must not reach a terminal raw (after rich's own SGR codes are removed)."""
    return sorted({c for c in SGR.sub("", text) if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")})


def assert_safe(text: str, where: str) -> None:
    found = unsafe(text)
    assert not found, f"{where}: raw control/format characters reached the output: {found!r}"
    assert "\x1b]8;" not in text, f"{where}: a hyperlink (OSC 8) was emitted"
    assert "Traceback" not in text and "MarkupError" not in text, where


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """An HF folder at a path holding `[/b]`, an ESC title sequence and an RLM."""
    base = tmp_path_factory.mktemp("term") / "ck["
    folder = write_hf(TINY, base / f"b]{TITLE}hf\u200f")
    assert "[/b]" in str(folder)
    shard = folder / "model.safetensors"
    tensors = load_file(shard)
    for n, s in enumerate(HOSTILE):
        tensors[f"model.layers.0.{s}.weight"] = torch.ones(2, n + 1)
    meta = {"format": "pt", **{f"{s}key{n}": f"value{s}" for n, s in enumerate(HOSTILE)}}
    save_file(tensors, shard, metadata=meta)
    config = json.loads((folder / "config.json").read_text())
    config.update({f"{s}cfg{n}": s for n, s in enumerate(HOSTILE)})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def xser_dtypes(tmp_path_factory) -> Path:
    """NxD xser: dtype names are strings from the `.info.pt` files (an OSC 52 dtype in `diff` set the clipboard)."""
    tag = write_nxd(TINY, tmp_path_factory.mktemp("xs") / "nxd", xser=True)
    for info in tag.rglob("*.info.pt"):
        doc = _load_own(info)
        for n, meta in enumerate(doc.values()):
            meta["dtype"] = HOSTILE[n % len(HOSTILE)]
        torch.save(doc, info)
    return tag


def _commands(ckpt: Path, other: Path, out: Path) -> list[list[str]]:
    return [
        ["inspect", str(ckpt)], ["inspect", str(ckpt), "--stats", "--all"], ["inspect", str(ckpt), "--filter", "*[/]*"],
        ["inspect", str(ckpt), "--filter", f"{OSC52}*"], ["inspect", str(ckpt), "--json"],
        ["diff", str(ckpt), str(other)], ["diff", str(ckpt), str(other), "--numeric"], ["diff", str(ckpt), str(other), "--json"],
        ["check", str(ckpt), "--to", "megatron"], ["check", str(ckpt), "--to", "hf", "--json"],
        ["convert", str(ckpt), str(out), "--plan-only"], ["convert", str(ckpt), str(out)],
        ["convert", str(ckpt), str(out), "--ignore", "*.weight", "--plan-only"],
        ["check", str(ckpt), "--to", "hf", "--rename", "weight=w"], ["diff", str(ckpt), str(other), "--rename", "^=x."],
        ["verify", str(ckpt), str(other), "--layers"],
        ["verify", str(ckpt), str(other)], ["verify", str(ckpt), str(other), "--json"],
    ]


@pytest.mark.parametrize("colour", [False, True], ids=["plain", "forced-colour"])
def test_every_command_on_hostile_strings(hostile: Path, xser_dtypes: Path, tmp_path: Path, colour: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if colour:
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "200")
    seen = ""
    for ckpt, other in ((hostile, hostile), (xser_dtypes, xser_dtypes), (xser_dtypes, hostile)):
        for args in _commands(ckpt, other, tmp_path / "out"):
            out = run_cli(*args)
            assert out.code in (0, 1, 2), (args, out.code)
            assert_safe(out.stdout, f"{args[0]} stdout")
            assert_safe(out.stderr, f"{args[0]} stderr")
            if out.code == 2:  # one line per refusal (a refused plan lists its errors, then says nothing was written)
                lines = out.stderr.strip().splitlines()
                assert all(line.startswith("ckptscope: ") for line in lines) and "Traceback" not in out.stderr, (args, out)
            seen += out.stdout
    for shown in MARKUP:
        assert shown in seen, f"{shown!r} was parsed as markup instead of shown"
    assert "\\x1b]52" in seen and "\\u200f" in seen  # shown escaped, not dropped
    assert not (tmp_path / "out").exists()


def test_error_lines_and_paths_are_escaped(hostile: Path, tmp_path: Path) -> None:
    bad = tmp_path / f"nope{OSC52}[/b]"
    for args in (["inspect", str(bad)], ["convert", str(hostile), str(hostile / "x")], ["diff", str(bad), str(hostile)],
                 ["convert", str(hostile), str(tmp_path / "o"), "--max-shard-size", f"{OSC52}[/]"]):
        out = run_cli(*args)
        assert out.code == 2
        assert_safe(out.stderr, args[0])
        assert len(out.stderr.strip().splitlines()) == 1


# ----- the app ---------------------------------------------------------------------------------
GROUPS = ("open", "explain", "filter", "probe", "stats", "spec", "plan", "convert", "verify", "diff")


async def _settle(app: CkptscopeApp, pilot) -> None:  # type: ignore[no-untyped-def]
    for _ in range(400):
        await pilot.pause(0.05)
        if not [w for w in app.workers if w.group in GROUPS and not w.is_finished]:
            break
    await pilot.pause(0.1)


def _screen_text(app: CkptscopeApp) -> str:
    return app.export_screenshot()


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTSCOPE_CONFIG_DIR", str(tmp_path / "config"))


async def test_every_screen_on_hostile_strings(hostile: Path, xser_dtypes: Path) -> None:
    from textual.widgets import DataTable

    from ckptscope.app.tui.dialogs import ErrorDialog
    from ckptscope.app.tui.inspect import InspectScreen, TensorTree

    shots: list[tuple[str, str]] = []
    app = CkptscopeApp(hostile.parent)
    async with app.run_test(size=(160, 50)) as pilot:
        await _settle(app, pilot)
        shots.append(("browse", _screen_text(app)))
        for _ in range(3):
            await pilot.press("down")
            await pilot.pause(0.1)
        shots.append(("browse preview", _screen_text(app)))
        for ckpt in (hostile, xser_dtypes):
            app.open_checkpoint(ckpt)
            await _settle(app, pilot)
            shots.append(("toast", _screen_text(app)))
            screen = app.screen
            if isinstance(screen, ErrorDialog) and ckpt is xser_dtypes:  # the reader may refuse unknown dtype names:
                shots.append(("open refused", _screen_text(app)))  # then the dialog is what shows them
                app.pop_screen()
                await pilot.pause(0.1)
                continue
            assert isinstance(screen, InspectScreen), getattr(screen, "message", type(screen))
            tree = screen.query_one(TensorTree)
            for node in list(tree.root.children):
                if node.allow_expand:
                    tree._expand_recursive(node)
            await pilot.pause(0.2)
            for n in range(min(40, tree.last_line + 1)):
                tree.cursor_line = n
                await pilot.pause(0.02)
                if n % 8 == 0:
                    shots.append((f"tree line {n}", _screen_text(app)))
            await pilot.press("s")
            await _settle(app, pilot)
            shots.append(("details + stats", _screen_text(app)))
            for tab, pane in (("2", "tab-metadata"), ("3", "tab-summary"), ("4", "tab-files")):
                await pilot.press(tab)
                await pilot.pause(0.3)
                assert screen.query_one("#inspect-tabs").active == pane
                shots.append((f"tab {pane}", _screen_text(app)))
                if pane == "tab-summary" and ckpt is hostile:
                    assert "ck[/b]" in shots[-1][1], "the path is not shown literally on the Summary tab"
            table = screen.query_one("#meta-table", DataTable)
            assert table.row_count > len(HOSTILE) or ckpt is xser_dtypes
            screen.query_one("#meta-filter").value = "["
            await pilot.pause(0.2)
            shots.append(("metadata filtered", _screen_text(app)))
            await pilot.press("1")
            screen.query_one("#tensor-filter").value = "*[/]*"
            await _settle(app, pilot)
            shots.append(("tensor filter", _screen_text(app)))
            await pilot.press("ctrl+p")  # the command palette lists tensor names
            await pilot.pause(0.3)
            shots.append(("palette", _screen_text(app)))
            await pilot.press(*"evil")
            await pilot.pause(0.5)
            shots.append(("palette search", _screen_text(app)))
            await pilot.press("escape")
            await pilot.pause(0.2)
            app.open_diff(ckpt)
            await pilot.pause(0.3)
            app.screen.query_one("#diff-b").value = str(hostile)
            await pilot.click("#compare")
            await _settle(app, pilot)
            shots.append(("diff", _screen_text(app)))
            await pilot.click("#check")
            await _settle(app, pilot)
            shots.append(("check", _screen_text(app)))
            app.open_convert(ckpt)
            await _settle(app, pilot)
            shots.append(("convert", _screen_text(app)))
            app.notify(f"toast {OSC52}[/b]{INVISIBLE}")
            app.push_screen(ErrorDialog(f"title {TITLE}[/b]", f"message {OSC52}[/]"))
            await pilot.pause(0.3)
            shots.append(("dialog", _screen_text(app)))
            app.pop_screen()
            await pilot.pause(0.1)
    for where, shot in shots:
        assert_safe(shot, where)
    everything = "".join(s for _, s in shots).replace("&#160;", " ")
    for shown in ("[/b]", "[/]", "[link=https://evil.example]"):
        assert shown in everything, f"{shown!r} not shown literally on any screen"
