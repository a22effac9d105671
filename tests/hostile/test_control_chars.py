"""Terminal control characters in names and metadata never reach the terminal raw.

Tensor names, file and folder names, training args, config values and error messages all come
from the checkpoint; an ESC sequence could clear the screen, retitle the terminal or hide text,
a bidi override could reorder what is shown. Human output escapes them (`printable`), JSON
output escapes them by construction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.nxd import write_nxd

from .conftest import run_cli
from .corpus import TINY, _load_own

EVIL = "\x1b[2J\x1b]0;pwned\x07\u202eevil\x9b31m"
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_clean(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw control characters reached the output: {found!r}"


def test_safetensors_names_and_metadata(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({f"model.{EVIL}.weight": torch.ones(2, 2), "model.norm.weight": torch.ones(2)}, folder / "model.safetensors",
              metadata={"format": "pt", "note": EVIL})
    (folder / "config.json").write_text(json.dumps({"model_type": EVIL, "architectures": [EVIL], "hidden_size": 2}))
    for args in (["inspect", str(folder)], ["inspect", str(folder), "--stats", "--all"], ["inspect", str(folder), "--filter", f"*{EVIL}*"],
                 ["inspect", str(folder), "--filter", EVIL + "nomatch"]):
        out = run_cli(*args)
        assert out.code == 0, out.stderr
        assert_clean(out.stdout + out.stderr)
        assert "\\x1b" in out.stdout or "nomatch" in args[-1]
    out = run_cli("inspect", str(folder), "--json")
    assert_clean(out.stdout)
    assert any(EVIL in t["name"] for t in json.loads(out.stdout)["tensors"])  # escaped on the wire, exact once parsed


def test_megatron_args_and_nxd_tag_names(tmp_path: Path) -> None:
    root = write_megatron_torch(TINY, tmp_path / "mt", tp=1)
    rank = root / "iter_0000010/mp_rank_00/model_optim_rng.pt"
    state = _load_own(rank)
    state["args"].tokenizer_type = EVIL
    state["args"].normalization = EVIL
    torch.save(state, rank)
    out = run_cli("inspect", str(root))
    assert out.code == 0, out.stderr
    assert_clean(out.stdout)
    assert "tokenizer_type" in out.stdout

    tag = write_nxd(TINY, tmp_path / f"nxd{EVIL}", tag=f"step{EVIL}")
    out = run_cli("inspect", str(tag.parent))
    assert out.code == 0, out.stderr
    assert_clean(out.stdout)


def test_error_messages(tmp_path: Path) -> None:
    bad = tmp_path / f"empty{EVIL}"
    bad.mkdir()
    out = run_cli("inspect", str(bad))
    assert out.code == 2
    assert_clean(out.stderr)
    root = write_megatron_torch(TINY, tmp_path / "mt", tp=1)
    (root / "latest_checkpointed_iteration.txt").write_text(EVIL)
    out = run_cli("inspect", str(root))
    assert out.code == 2 and "tracker must hold" in out.stderr
    assert_clean(out.stderr)
