"""Where real runs keep the architecture of a checkpoint whose format stores none.

Megatron-Bridge saves no Megatron-LM `args`: the model's TransformerConfig is the `model:` section
of `run_config.yaml` in the iteration folder (`find_bridge_model_config`). NxD shards and
DeepSpeed model states without Megatron-DeepSpeed args hold weights only. The
Hugging Face Trainer saves `config.json` at the checkpoint root (`checkpoint-500/config.json`
beside `global_step500/`), NxD runs keep the HF config beside their checkpoint folder; so the
folders from the checkpoint up to `MAX_UP` levels above it are searched for a `config.json`
that names a model type. `--config` stays the override; the plan says which file was used.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.files import SIDE_FILE_LIMITS, read_side_file
from ckptscope.inspectors.model import Checkpoint

MAX_UP = 3  # checkpoint-500/global_step500/ and run/checkpoints/step_N/model are within reach
MAX_CONFIG_BYTES = SIDE_FILE_LIMITS["json"]


def find_hf_config(ckpt: Checkpoint) -> tuple[dict[str, Any], Path] | None:
    """The nearest `config.json` (a regular file, not a link) that describes an HF model."""
    start = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    for folder in [start, *start.parents][: MAX_UP + 1]:
        candidate = folder / "config.json"
        text = _regular_text(candidate)
        try:
            data = json.loads(text) if text is not None else None
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("model_type"), str):
            return data, candidate
    return None


def read_config(path: str | Path) -> dict[str, Any]:
    """A `--config` file: one JSON object in a regular file of at most `MAX_CONFIG_BYTES` (the side-file
    reader never blocks on a FIFO); errors are one line naming the file."""
    try:
        doc = json.loads(read_side_file(path, "json", "config"))
    except ValueError as exc:
        raise CheckpointError(path, f"cannot read config: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(path, "cannot read config: it must hold a JSON object")
    return doc


BRIDGE_RUN_CONFIG = "run_config.yaml"
NEMO_CONTEXT, NEMO_MODEL_YAML = "context", "model.yaml"


def _regular_text(path: Path) -> str | None:
    """A small regular file's text (no link, FIFO or device followed), else None."""
    try:
        st = path.lstat()  # a remote path answers too (storage.RemotePath)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CONFIG_BYTES:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def find_bridge_model_config(ckpt: Checkpoint) -> tuple[dict[str, Any], Path] | None:
    """The model's TransformerConfig where the trainers keep it: Megatron-Bridge's `run_config.yaml`
    `model:` section (iteration folder, then the root), or NeMo 2's `context/model.yaml` `config:`
    section (beside the `weights/` folder)."""
    import yaml

    folder = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    places = [(p / BRIDGE_RUN_CONFIG, "model") for p in (folder, ckpt.root) if p is not None]
    places += [(p / NEMO_CONTEXT / NEMO_MODEL_YAML, "config") for p in (ckpt.root, folder.parent)
               if p is not None and not (p / NEMO_CONTEXT).is_symlink()]
    for candidate, section in dict.fromkeys(places):
        text = _regular_text(candidate)
        if text is None:
            continue
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CheckpointError(candidate, f"cannot parse {candidate.name}: {' '.join(str(exc).split())[:200]}") from None
        model = doc.get(section) if isinstance(doc, dict) else None
        if isinstance(model, dict):
            return model, candidate
    return None
