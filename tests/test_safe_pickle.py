"""The restricted unpickler never runs code from a checkpoint and keeps unknown classes inert."""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptscope.inspectors import detect
from ckptscope.inspectors.safe_pickle import Placeholder, safe_loads
from ckptscope.inspectors.torchfile import open_torch_file


class _Shell:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


class _Eval:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (eval, (f"open({str(self.canary)!r}, 'w').write('x')",))


class _Exec:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (exec, (f"open({str(self.canary)!r}, 'w').write('x')",))


def _getattr_chain(canary: Path) -> bytes:
    """builtins.getattr(__import__('os'), 'system')('touch canary') as a raw protocol-2 pickle."""
    cmd = f"touch {canary}".encode()
    return (
        b"\x80\x02cbuiltins\ngetattr\nq\x00cbuiltins\n__import__\nq\x01X\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86R"
        + b"X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."
    )


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.mark.parametrize("payload", [_Shell, _Eval, _Exec])
def test_reduce_payloads_do_not_run(payload, canary: Path) -> None:
    obj = safe_loads(pickle.dumps(payload(canary), protocol=2))
    assert not canary.exists()
    assert isinstance(obj, Placeholder)
    assert obj.qualname in ("posix.system", "os.system", "builtins.eval", "builtins.exec")


def test_getattr_chain_does_not_run(canary: Path) -> None:
    obj = safe_loads(_getattr_chain(canary))
    assert not canary.exists()
    assert isinstance(obj, Placeholder)


def test_payload_inside_megatron_args_is_reported_not_run(tmp_path: Path, canary: Path) -> None:
    rank = tmp_path / "iter_0000001" / "mp_rank_00"
    rank.mkdir(parents=True)
    args = argparse.Namespace(num_layers=1, hidden_size=4, tensor_model_parallel_size=1, exploit=_Shell(canary))
    torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 1, "model": {"w": torch.ones(2)}}, rank / "model_optim_rng.pt")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("1")
    ckpt = detect(tmp_path)
    assert not canary.exists()
    assert any("system" in p for p in ckpt.placeholders)
    assert ckpt.metadata["args"]["exploit"].startswith("<posix.system(") or "system" in ckpt.metadata["args"]["exploit"]
    assert torch.equal(ckpt.load("w"), torch.ones(2))


def test_allowlisted_values_round_trip() -> None:
    value = {
        "od": collections.OrderedDict(a=1),
        "ns": argparse.Namespace(x=1, dtype=torch.bfloat16),
        "size": torch.Size([2, 3]),
        "np": np.arange(4, dtype=np.int32),
        "npscalar": np.float32(1.5),
        "set": {1, 2},
        "bytes": b"\x00\xff",
    }
    out = safe_loads(pickle.dumps(value, protocol=2))
    assert out["od"] == value["od"] and isinstance(out["od"], collections.OrderedDict)
    assert vars(out["ns"]) == vars(value["ns"])
    assert out["size"] == torch.Size([2, 3])
    assert np.array_equal(out["np"], value["np"])
    assert out["npscalar"] == np.float32(1.5)
    assert out["set"] == {1, 2} and out["bytes"] == b"\x00\xff"


def test_megatron_enum_becomes_named_placeholder() -> None:
    data = b"\x80\x02cmegatron.core.transformer.enums\nAttnBackend\nK\x05\x85R."
    obj = safe_loads(data)
    assert isinstance(obj, Placeholder)
    assert obj.qualname == "megatron.core.transformer.enums.AttnBackend"
    assert obj.args == (5,)
    assert "AttnBackend(5)" in obj.describe()


def test_torch_file_with_payload_lists_tensors_without_running(tmp_path: Path, canary: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"weight": torch.arange(6.0).reshape(2, 3), "evil": _Shell(canary)}, path)
    tf = open_torch_file(path)
    assert not canary.exists()
    assert torch.equal(tf.obj["weight"].load(), torch.arange(6.0).reshape(2, 3))
    assert isinstance(tf.obj["evil"], Placeholder)


def test_placeholder_cannot_be_repickled() -> None:
    obj = safe_loads(pickle.dumps(_Shell(Path("/nonexistent")), protocol=2))
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(obj)
    assert not isinstance(io.BytesIO(), Placeholder)


def test_memo_index_from_the_file_does_not_size_an_allocation() -> None:
    """One LONG_BINPUT naming index 2**31-1: the C unpickler allocated and zeroed a memo array
    that long (gigabytes, tens of seconds); ours keeps a dict and returns at once."""
    import struct

    import psutil

    bomb = b"\x80\x02N" + b"r" + struct.pack("<I", 2**31 - 1) + b"."
    before = psutil.Process().memory_info().rss
    assert safe_loads(bomb) is None
    assert psutil.Process().memory_info().rss - before < 64 * 2**20


def test_budget_grows_with_the_pickle_so_real_bytes_and_arrays_load(tmp_path: Path) -> None:
    """Protocol 2 turns every `bytes` into `_codecs.encode(text)` (a copy): 40 MB of TE extra
    state and an 80 MB numpy array must still load; only amplification hits the budget."""
    import numpy as np

    path = tmp_path / "big.pt"
    torch.save({"blob": io.BytesIO(b"x" * (40 << 20)), "np": np.zeros(20_000_000, dtype=np.float32)}, path)
    obj = open_torch_file(path).obj
    assert obj["blob"].getbuffer().nbytes == 40 << 20
    assert obj["np"].shape == (20_000_000,)


def test_one_memoised_string_encoded_many_times_hits_the_budget() -> None:
    """GET of a 4 MB memoised string into `_codecs.encode` 200 times: 800 MB from a 4 MB pickle."""
    text = b"X" + (4 << 20).to_bytes(4, "little") + b"a" * (4 << 20) + b"q\x00"
    call = b"c_codecs\nencode\nh\x00X\x06\x00\x00\x00latin1\x86R"
    with pytest.raises(pickle.UnpicklingError, match="allocation budget"):
        safe_loads(b"\x80\x02" + text + b"(" + call * 200 + b"l.")


def test_build_cannot_rewrite_a_lazy_tensor(tmp_path: Path) -> None:
    """BUILD on the result of a tensor rebuild would move its offset past the view checks."""
    from ckptscope.inspectors.errors import CheckpointError
    from tests.hostile import pickles as P

    path = tmp_path / "x.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    state = b"}" + P.ustr("storage_offset") + b"J" + (-64).to_bytes(4, "little", signed=True) + b"s"
    # `... <tensor> s.`: the tensor is on top of the stack just before the final SETITEM
    P.rewrite_zip_pickle(path, lambda pkl: pkl[:-2] + state + b"b" + pkl[-2:])
    with pytest.raises(CheckpointError, match=r"BUILD\) to a LazyTensor"):
        open_torch_file(path)

