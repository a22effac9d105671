"""The small user config file (theme choice), in $CKPTSCOPE_CONFIG_DIR or the XDG config dir."""

from __future__ import annotations

import json
import os
from pathlib import Path


def config_path() -> Path:
    base = os.environ.get("CKPTSCOPE_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "ckptscope")
    return Path(base) / "config.json"


def load() -> dict:
    try:
        data = json.loads(config_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save(**changes: object) -> None:
    """Merge and write; a read-only home must not break the app, so failures are ignored."""
    data = {**load(), **changes}
    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError:
        pass
