"""A plain DCP save from a trainer (torchtitan's layout: model, optimizer, `train_state`,
`lr_scheduler`, `dataloader`) shows its training state when inspected: the step becomes the
iteration, the scalars are decoded by the allowlist unpickler, the dataloader is listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ckptscope.inspectors import detect
from ckptscope.inspectors.model import training_state


def _torchtitan_like_save(folder: Path) -> None:
    state = {
        "tok_embeddings.weight": torch.randn(32, 8),
        "layers.0.attention.wq.weight": torch.randn(8, 8),
        "train_state": {"step": 1200, "ntokens_seen": 9_830_400},  # torchtitan's Trainer.state_dict()
        "lr_scheduler": {"last_epoch": 1200},
        "dataloader": {"version": 1, "dp_world_size": 2, "dp_rank_0": b"\x00" * 300},
    }
    dcp.save(state, checkpoint_id=str(folder))


def test_trainer_state_of_a_plain_dcp_save(tmp_path: Path) -> None:
    folder = tmp_path / "step-1200"
    _torchtitan_like_save(folder)
    ckpt = detect(folder)
    assert ckpt.kind == "dcp" and ckpt.iteration == 1200
    state = ckpt.metadata["trainer_state"]
    assert state["train_state.step"] == 1200 and state["train_state.ntokens_seen"] == 9_830_400
    assert state["lr_scheduler.last_epoch"] == 1200
    assert state["dataloader"].startswith("3 entries")
    shown = training_state(ckpt)
    assert shown["iteration"] == "1200" and shown["tokens seen"] == "9,830,400"
    assert shown["scheduler"] == "present (last_epoch 1200)" and shown["dataloader"].startswith("3 entries")
    kinds = {o.name: o.kind for o in ckpt.objects}
    assert kinds["train_state.step"] == "train_state" and kinds["dataloader.dp_rank_0"] == "dataloader"


def test_the_cli_shows_it_without_importing_torch(tmp_path: Path) -> None:
    folder = tmp_path / "step-1200"
    _torchtitan_like_save(folder)
    code = ("import json, sys; from ckptscope.app.cli import main; sys.argv = ['ckptscope', 'inspect', '--json', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True).stdout
    *document, imported = out.strip().splitlines()  # the inspect JSON, then the modules line
    doc = json.loads("\n".join(document))
    assert doc["iteration"] == 1200 and doc["metadata"]["trainer_state"]["train_state.step"] == 1200
    assert json.loads(imported) == []
