"""The hostile corpus: malicious pickles in every container, corrupt and inconsistent checkpoints.

Every case builds its input from scratch in a work folder (small synthetic checkpoints written by
`ckptscope.converters.samples`, then edited), so the corpus needs no downloads and each test is
independent. `MALICIOUS` cases plant one payload (see `pickles.py`) that would `touch` a canary
file if anything ran it; `CORRUPT` cases break one thing. Each case states what ckptscope must
report: an inert placeholder, a one-line error (with a regex for the problem), or an
incomplete-checkpoint warning. `docs/reliability.md` is the table of these cases.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ckptscope.converters.samples.deepspeed import write_deepspeed_pipeline
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.megatron_dist import write_megatron_dist
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.nxd import write_nxd
from ckptscope.converters.samples.spec import SampleSpec

from . import pickles as P

TINY = SampleSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=100, seed=3)
TRACKER = "latest_checkpointed_iteration.txt"
MEGATRON_RANK0 = "iter_0000010/mp_rank_00/model_optim_rng.pt"


@dataclass(frozen=True)
class Case:
    """One hostile input. `build(work, canary)` writes it and returns the path to open.

    expect: "placeholder" (opens; `placeholder` must be listed), "error" (one-line
    CheckpointError whose text matches `problem` and names `names`), "load_error" (opens, but
    reading tensors - `inspect --stats` - fails that way), "incomplete" (opens with
    `complete == False` and a warning matching `problem`), "opens" (no error, bounded work).
    """

    name: str
    container: str
    what: str
    build: Callable[[Path, Path], Path]
    expect: str
    problem: str = ""
    names: str = ""  # substring the error must contain (the bad file's name)
    placeholder: str = ""


class Shell:
    """Pickles as os.system('touch canary') through __reduce__, like a real exploit."""

    def __init__(self, canary: Path) -> None:
        self.cmd = P.shell(canary)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.cmd,))


# ----- base checkpoints -----------------------------------------------------------------------
def hf_bin(work: Path) -> Path:
    return write_hf(TINY, work / "hf", fmt="bin")


def hf_st(work: Path, shards: int = 1) -> Path:
    return write_hf(TINY, work / "hf", shards=shards)


def megatron(work: Path, tp: int = 2, pp: int = 1) -> Path:
    return write_megatron_torch(TINY, work / "mt", tp=tp, pp=pp)


def megatron_dist(work: Path, **kw: object) -> Path:
    return write_megatron_dist(TINY, work / "md", **kw)  # type: ignore[arg-type]


def nxd(work: Path, xser: bool = False, **kw: object) -> Path:
    return write_nxd(TINY, work / "nxd", xser=xser, **kw)  # type: ignore[arg-type]


def deepspeed(work: Path) -> Path:
    return write_deepspeed_pipeline(TINY, work / "ds", tp=1, pp=2)


def _load_own(path: Path) -> object:
    """Files this module wrote itself (trusted): the real torch.load is fine here."""
    return torch.load(path, weights_only=False)


def resave_with(path: Path, mutate: Callable[[dict], None], payload: bytes, legacy: bool = False) -> None:
    """Load our own file, put SENTINEL somewhere via `mutate`, save, swap SENTINEL for the payload."""
    state = _load_own(path)
    mutate(state)  # type: ignore[arg-type]
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    if legacy:
        P.rewrite_legacy_pickle(path, payload)
    else:
        P.rewrite_zip_pickle(path, lambda pkl: P.plant_sentinel(pkl, payload))


def plant_top_of(path: Path, key: str, payload: bytes) -> None:
    P.rewrite_zip_pickle(path, lambda pkl: P.plant_top(pkl, key, payload))


def _set_arg(name: str) -> Callable[[dict], None]:
    def mutate(state: dict) -> None:
        setattr(state["args"], name, P.SENTINEL)

    return mutate


def _set_key(*path: str) -> Callable[[dict], None]:
    def mutate(state: dict) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = P.SENTINEL

    return mutate


# ----- malicious: container builders (work, canary, payload) -> path ------------------------------
def in_hf_bin(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = hf_bin(work)
        plant_top_of(root / "pytorch_model.bin", "evil", payload(canary))
        return root

    return build


def in_megatron_args(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron(work)
        for rank in ("mp_rank_00", "mp_rank_01"):
            resave_with(root / f"iter_0000010/{rank}/model_optim_rng.pt", _set_arg("exploit"), payload(canary))
        return root

    return build


def in_megatron_model(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron(work)
        resave_with(root / MEGATRON_RANK0, _set_key("model", "decoder.evil"), payload(canary))
        return root

    return build


def in_common_pt(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron_dist(work)
        resave_with(root / "iter_0000010/common.pt", _set_arg("exploit"), payload(canary))
        return root

    return build


def in_dcp_metadata(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron_dist(work)
        meta_path = root / "iter_0000010/.metadata"
        meta = pickle.loads(meta_path.read_bytes())  # our own file
        meta.planner_data = {"evil": P.SENTINEL}
        meta_path.write_bytes(P.plant_sentinel(pickle.dumps(meta, protocol=2), payload(canary)))
        return root

    return build


def in_nxd_shard(payload: P.Payload, xser: bool = False) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        tag = nxd(work, xser=xser)
        plant_top_of(tag / "model/dp_rank_00_tp_rank_00_pp_rank_00.pt", "evil", payload(canary))
        return tag

    return build


def in_xser_info(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        tag = nxd(work, xser=True)
        info = next((tag / "model").glob("*.info.pt"))
        P.rewrite_zip_pickle(info, lambda pkl: P.plant_top(pkl, "evil", payload(canary)))
        return tag

    return build


def in_deepspeed_states(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = deepspeed(work)
        resave_with(root / "global_step2/mp_rank_00_model_states.pt", _set_arg("exploit"), payload(canary))
        return root

    return build


def in_deepspeed_layer(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = deepspeed(work)
        layer = sorted((root / "global_step2").glob("layer_*-model_00-model_states.pt"))[1]
        plant_top_of(layer, "evil", payload(canary))
        return root

    return build


def legacy_hf_bin(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = hf_bin(work)
        resave_with(root / "pytorch_model.bin", _set_key("evil"), payload(canary), legacy=True)
        return root

    return build


def protocol_hf_bin(protocol: int) -> Callable[[Path, Path], Path]:
    """torch.save of a __reduce__ exploit with the given pickle protocol (0: no tensors possible)."""

    def build(work: Path, canary: Path) -> Path:
        root = hf_bin(work)
        state: dict = {} if protocol == 0 else dict(torch.load(root / "pytorch_model.bin"))
        state["evil"] = Shell(canary)
        torch.save(state, root / "pytorch_model.bin", pickle_protocol=protocol)
        return root

    return build


def _persistent_in_megatron(work: Path, canary: Path) -> Path:
    root = megatron(work)
    resave_with(root / MEGATRON_RANK0, _set_key("model", "decoder.evil"), P.p_persistent(canary))
    return root


MALICIOUS: list[Case] = [
    Case("hf_bin_os_system", "HF pytorch_model.bin", "os.system via GLOBAL+REDUCE", in_hf_bin(P.p_os_system), "placeholder", placeholder="os.system"),
    Case("hf_bin_subprocess", "HF pytorch_model.bin", "subprocess.check_call(['sh','-c',...])", in_hf_bin(P.p_subprocess), "placeholder", placeholder="subprocess.check_call"),
    Case("hf_bin_numpy_gadget", "HF pytorch_model.bin", "numpy.testing runstring gadget", in_hf_bin(P.p_numpy_runstring), "placeholder", placeholder="numpy.testing._private.utils.runstring"),
    Case("hf_bin_protocol0", "HF pytorch_model.bin", "__reduce__ exploit, pickle protocol 0 (text)", protocol_hf_bin(0), "placeholder", placeholder="system"),
    Case("hf_bin_protocol1", "HF pytorch_model.bin", "__reduce__ exploit, pickle protocol 1", protocol_hf_bin(1), "placeholder", placeholder="system"),
    Case("hf_bin_protocol2", "HF pytorch_model.bin", "__reduce__ exploit, pickle protocol 2", protocol_hf_bin(2), "placeholder", placeholder="system"),
    Case("hf_bin_protocol4", "HF pytorch_model.bin", "__reduce__ exploit, pickle protocol 4 (STACK_GLOBAL, MEMOIZE)", protocol_hf_bin(4), "placeholder", placeholder="system"),
    Case("hf_bin_protocol5", "HF pytorch_model.bin", "__reduce__ exploit, pickle protocol 5", protocol_hf_bin(5), "placeholder", placeholder="system"),
    Case("legacy_bin_inst", "legacy (non-zip) torch file", "INST opcode os.system", legacy_hf_bin(P.p_inst), "placeholder", placeholder="os.system"),
    Case("legacy_bin_eval", "legacy (non-zip) torch file", "builtins.eval", legacy_hf_bin(P.p_eval), "placeholder", placeholder="builtins.eval"),
    Case("megatron_args_os_system", "Megatron args (model_optim_rng.pt)", "os.system nested inside args", in_megatron_args(P.p_os_system), "placeholder", placeholder="os.system"),
    Case("megatron_args_eval", "Megatron args (model_optim_rng.pt)", "builtins.eval inside args", in_megatron_args(P.p_eval), "placeholder", placeholder="builtins.eval"),
    Case("megatron_args_getattr_chain", "Megatron args (model_optim_rng.pt)", "getattr(__import__('os'),'system')(...)", in_megatron_args(P.p_getattr_chain), "placeholder", placeholder="builtins.getattr"),
    Case("megatron_args_huge_int", "Megatron args (model_optim_rng.pt)", "200 000-digit int (str() raises)", in_megatron_args(P.p_huge_int), "opens"),
    Case("megatron_args_memo_dag", "Megatron args (model_optim_rng.pt)", "2**64 paths through shared memo dicts", in_megatron_args(P.p_memo_dag), "placeholder", placeholder="posix.system"),
    Case("megatron_model_obj", "Megatron model dict", "OBJ opcode os.system", in_megatron_model(P.p_obj), "placeholder", placeholder="os.system"),
    Case("megatron_model_inst", "Megatron model dict", "INST opcode os.system", in_megatron_model(P.p_inst), "placeholder", placeholder="os.system"),
    Case("megatron_model_deep", "Megatron model dict", "os.system inside 50 000 nested tuples", in_megatron_model(P.p_deep), "error", r"nested more than 10000 levels deep", "model_optim_rng.pt"),
    Case("megatron_model_memo_dag", "Megatron model dict", "2**64 paths through shared memo dicts", in_megatron_model(P.p_memo_dag), "placeholder", placeholder="posix.system"),
    Case("megatron_model_persistent_id", "Megatron model dict", "BINPERSID with a shell command as id", _persistent_in_megatron, "error", r"unexpected persistent id", "model_optim_rng.pt"),
    Case("megatron_model_ext", "Megatron model dict", "EXT1 extension-registry opcode", in_megatron_model(P.p_ext), "error", r"unregistered extension code", "model_optim_rng.pt"),
    Case("megatron_model_build_mutation", "Megatron model dict", "BUILD slot state rewriting argparse.Namespace.__init__", in_megatron_model(P.p_build_mutation), "error", r"tried to modify Namespace.__init__", "model_optim_rng.pt"),
    Case("megatron_model_range_bomb", "Megatron model dict", "set(range(10**12)) CPU bomb", in_megatron_model(P.p_range_bomb), "error", r"range of \d+ elements refused", "model_optim_rng.pt"),
    Case("megatron_model_bytes_bomb", "Megatron model dict", "bytes(10**11) memory bomb", in_megatron_model(P.p_bytes_bomb), "error", r"bytes\(\d+\) refused", "model_optim_rng.pt"),
    Case("megatron_model_codecs", "Megatron model dict", "_codecs.encode with a non-text codec", in_megatron_model(P.p_codecs), "error", r"encoding 'rot13' refused", "model_optim_rng.pt"),
    Case("common_pt_os_system", "torch_dist common.pt", "os.system nested inside args", in_common_pt(P.p_os_system), "placeholder", placeholder="os.system"),
    Case("common_pt_pickle_loads", "torch_dist common.pt", "pickle.loads(<inner exploit>)", in_common_pt(P.p_pickle_loads), "placeholder", placeholder="pickle.loads"),
    Case("dcp_metadata_os_system", "DCP .metadata", "os.system inside Metadata.planner_data", in_dcp_metadata(P.p_os_system), "placeholder", placeholder="os.system"),
    Case("dcp_metadata_stack_global_exec", "DCP .metadata", "STACK_GLOBAL builtins.exec", in_dcp_metadata(P.p_stack_global), "placeholder", placeholder="builtins.exec"),
    Case("dcp_metadata_copyreg", "DCP .metadata", "copyreg._reconstructor(os.system, object, ...)", in_dcp_metadata(P.p_copyreg), "placeholder", placeholder="os.system"),
    Case("nxd_shard_subprocess", "NxD shard (plain)", "subprocess.check_call", in_nxd_shard(P.p_subprocess), "placeholder", placeholder="subprocess.check_call"),
    Case("nxd_xser_ref_os_system", "NxD xser reference file", "os.system next to TensorReferences", in_nxd_shard(P.p_os_system, xser=True), "placeholder", placeholder="os.system"),
    Case("nxd_xser_info_eval", "NxD xser .info.pt", "builtins.eval", in_xser_info(P.p_eval), "placeholder", placeholder="builtins.eval"),
    Case("deepspeed_states_os_system", "DeepSpeed mp_rank_00_model_states.pt", "os.system nested inside args", in_deepspeed_states(P.p_os_system), "placeholder", placeholder="os.system"),
    Case("deepspeed_states_runpy", "DeepSpeed mp_rank_00_model_states.pt", "runpy._run_code", in_deepspeed_states(P.p_runpy), "placeholder", placeholder="runpy._run_code"),
    Case("deepspeed_layer_newobj", "DeepSpeed layer_XX-model_00 file", "NEWOBJ os.system", in_deepspeed_layer(P.p_newobj), "placeholder", placeholder="os.system"),
    Case("deepspeed_layer_newobj_ex", "DeepSpeed layer_XX-model_00 file", "NEWOBJ_EX os.system", in_deepspeed_layer(P.p_newobj_ex), "placeholder", placeholder="os.system"),
    Case("deepspeed_layer_torch_load", "DeepSpeed layer_XX-model_00 file", "torch.load of another file", in_deepspeed_layer(P.p_torch_load), "placeholder", placeholder="torch.load"),
]


# ----- corrupt and inconsistent inputs ------------------------------------------------------
def _wrap(make: Callable[[Path], Path]) -> Callable[[Path, Path], Path]:
    return lambda work, _canary: make(work)


def st_header(work: Path, header: object, data: bytes = b"", raw: bytes | None = None, length: int | None = None) -> Path:
    """A model.safetensors with the given header (dict or raw bytes) and data section."""
    root = hf_st(work)
    blob = raw if raw is not None else json.dumps(header).encode()
    n = len(blob) if length is None else length
    (root / "model.safetensors").write_bytes(struct.pack("<Q", n) + blob + data)
    return root


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR one byte (negative offsets count from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def zip_member_offset(path: Path, suffix: str) -> int:
    """Absolute offset of a stored zip member's first data byte."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def drop_zip_member(path: Path, suffix: str) -> None:
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i.filename)) for i in zf.infolist() if not i.filename.endswith(suffix)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)


def recompress_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)


def edit_zip_member(path: Path, suffix: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, data if i.filename.endswith(suffix) else zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, raw in members:
            zf.writestr(name, raw)


# --- safetensors
def st_length_beyond_file(work: Path) -> Path:
    return st_header(work, {}, length=10_000)


def st_length_over_cap(work: Path) -> Path:
    return st_header(work, {}, length=2**40)


def st_tiny_file(work: Path) -> Path:
    root = hf_st(work)
    (root / "model.safetensors").write_bytes(b"\x05\x00\x00")
    return root


def st_invalid_json(work: Path) -> Path:
    return st_header(work, None, raw=b'{"w": {"dtype": "F32", ')


def st_not_object(work: Path) -> Path:
    return st_header(work, [1, 2, 3])


def st_invalid_utf8(work: Path) -> Path:
    return st_header(work, None, raw=b'{"\xff\xfe": 1}')


def st_overlap(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [4], 8, 24)}, b"\0" * 24)


def st_out_of_range(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [256], 16, 1040)}, b"\0" * 32)


def st_gap(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [4], 32, 48)}, b"\0" * 48)


def st_shape_mismatch(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [3, 3], 0, 16)}, b"\0" * 16)


def st_dtype_mismatch(work: Path) -> Path:
    return st_header(work, {"a": _entry("F64", [4], 0, 16)}, b"\0" * 16)


def st_huge_shape(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [2**62, 2**62, 2**62], 0, 16)}, b"\0" * 16)


def st_unknown_dtype(work: Path) -> Path:
    return st_header(work, {"a": _entry("F128", [2], 0, 32)}, b"\0" * 32)


def st_negative_shape(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [-4], 0, 16)}, b"\0" * 16)


def st_bad_metadata(work: Path) -> Path:
    return st_header(work, {"__metadata__": {"format": 1}, "a": _entry("F32", [4], 0, 16)}, b"\0" * 16)


def st_trailing(work: Path) -> Path:
    return st_header(work, {"a": _entry("F32", [4], 0, 16)}, b"\0" * 20)


def st_truncated(work: Path) -> Path:
    root = hf_st(work)
    truncate(root / "model.safetensors", 0.7)
    return root


def st_bitflip_header(work: Path) -> Path:
    root = hf_st(work)
    flip(root / "model.safetensors", 8, 0x20)  # '{' -> '[': the header stops being an object
    return root


def st_bitflip_length(work: Path) -> Path:
    root = hf_st(work)
    flip(root / "model.safetensors", 5, 0x01)  # header length grows by 2**40
    return root


def st_index_missing_shard(work: Path) -> Path:
    root = hf_st(work, shards=2)
    (root / "model-00002-of-00002.safetensors").unlink()
    return root


def st_index_wrong_shard(work: Path) -> Path:
    root = hf_st(work, shards=2)
    index = root / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    name = next(iter(doc["weight_map"]))
    doc["weight_map"][name] = "model-00002-of-00002.safetensors" if doc["weight_map"][name].startswith("model-00001") else "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(doc))
    return root


def st_index_invalid_json(work: Path) -> Path:
    root = hf_st(work, shards=2)
    (root / "model.safetensors.index.json").write_text('{"weight_map": ')
    return root


def st_index_escapes(work: Path) -> Path:
    root = hf_st(work, shards=2)
    index = root / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"][next(iter(doc["weight_map"]))] = "../../etc/passwd"
    index.write_text(json.dumps(doc))
    return root


# --- torch zip / legacy
def bin_truncated(work: Path) -> Path:
    root = hf_bin(work)
    truncate(root / "pytorch_model.bin", 0.5)
    return root


def bin_bitflip_pickle(work: Path) -> Path:
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    flip(path, zip_member_offset(path, "data.pkl") + 5)
    return root


def bin_bitflip_tensor(work: Path) -> Path:
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    flip(path, zip_member_offset(path, "data/0") + 3, 0x40)
    return root


def bin_missing_pkl(work: Path) -> Path:
    root = hf_bin(work)
    drop_zip_member(root / "pytorch_model.bin", "data.pkl")
    return root


def bin_missing_storage(work: Path) -> Path:
    root = hf_bin(work)
    drop_zip_member(root / "pytorch_model.bin", "data/0")
    return root


def bin_short_storage(work: Path) -> Path:
    root = hf_bin(work)
    edit_zip_member(root / "pytorch_model.bin", "data/0", b"\0" * 8)
    return root


def bin_compressed(work: Path) -> Path:
    root = hf_bin(work)
    recompress_zip(root / "pytorch_model.bin")
    return root


def bin_big_endian(work: Path) -> Path:
    root = hf_bin(work)
    edit_zip_member(root / "pytorch_model.bin", "byteorder", b"big")
    return root


def bin_empty(work: Path) -> Path:
    root = hf_bin(work)
    (root / "pytorch_model.bin").write_bytes(b"")
    return root


def bin_random(work: Path) -> Path:
    root = hf_bin(work)
    (root / "pytorch_model.bin").write_bytes(bytes(range(256)) * 64)
    return root


def bin_pickle_huge_frame(work: Path) -> Path:
    """data.pkl announcing a 2**60-byte BINBYTES8 it does not have."""
    root = hf_bin(work)
    edit_zip_member(root / "pytorch_model.bin", "data.pkl", b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"xx.")
    return root


def _legacy(work: Path) -> Path:
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    torch.save(_load_own(path), path, _use_new_zipfile_serialization=False)
    return root


def legacy_truncated(work: Path) -> Path:
    root = _legacy(work)
    truncate(root / "pytorch_model.bin", 0.6)
    return root


def legacy_bad_magic(work: Path) -> Path:
    root = _legacy(work)
    flip(root / "pytorch_model.bin", 4)
    return root


def legacy_pickle_cut(work: Path) -> Path:
    root = _legacy(work)
    truncate(root / "pytorch_model.bin", 120)
    return root


def legacy_huge_bytes(work: Path) -> Path:
    """Legacy stream whose object pickle claims a 2**60-byte BINBYTES8 (read from a real file)."""
    root = hf_bin(work)
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    (root / "pytorch_model.bin").write_bytes(head + b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"xx.")
    return root


# --- Megatron torch
def mt_missing_rank_dir(work: Path) -> Path:
    root = megatron(work)
    import shutil

    shutil.rmtree(root / "iter_0000010/mp_rank_01")
    return root


def mt_missing_rank_file(work: Path) -> Path:
    root = megatron(work)
    (root / "iter_0000010/mp_rank_01/model_optim_rng.pt").unlink()
    return root


def mt_tracker_missing_iter(work: Path) -> Path:
    root = megatron(work)
    (root / TRACKER).write_text("20")
    return root


def mt_tracker_garbage(work: Path) -> Path:
    root = megatron(work)
    (root / TRACKER).write_text("\x1b[31mten")
    return root


def mt_shape_disagree(work: Path) -> Path:
    """Rank 1 of a TP2 save replaced by a file with a different hidden size (mixed runs)."""
    root = megatron(work)
    other = write_megatron_torch(SampleSpec(layers=2, hidden=48, heads=4, kv_heads=2, ffn=64, vocab=100), work / "other", tp=2)
    rank1 = "iter_0000010/mp_rank_01/model_optim_rng.pt"
    (root / rank1).write_bytes((other / rank1).read_bytes())
    return root


def mt_replicated_disagree(work: Path) -> Path:
    """A replicated layer norm whose shape differs between TP ranks."""
    root = megatron(work)
    path = root / "iter_0000010/mp_rank_01/model_optim_rng.pt"
    state = _load_own(path)
    key = next(k for k in state["model"] if k.endswith("final_layernorm.weight"))
    state["model"][key] = torch.ones(7)
    torch.save(state, path)
    return root


def mt_dtype_disagree(work: Path) -> Path:
    root = megatron(work)
    path = root / "iter_0000010/mp_rank_01/model_optim_rng.pt"
    state = _load_own(path)
    key = next(k for k in state["model"] if "linear_fc1.weight" in k)
    state["model"][key] = state["model"][key].to(torch.bfloat16)
    torch.save(state, path)
    return root


def mt_top_level_list(work: Path) -> Path:
    root = megatron(work, tp=1)
    torch.save([1, 2, 3], root / "iter_0000010/mp_rank_00/model_optim_rng.pt")
    return root


def mt_truncated(work: Path) -> Path:
    root = megatron(work)
    truncate(root / MEGATRON_RANK0, 0.4)
    return root


def mt_bitflip_tensor(work: Path) -> Path:
    root = megatron(work, tp=1)
    path = root / "iter_0000010/mp_rank_00/model_optim_rng.pt"
    flip(path, zip_member_offset(path, "data/0") + 1, 0x10)
    return root


# --- torch_dist / DCP
def md_metadata_truncated(work: Path) -> Path:
    root = megatron_dist(work)
    truncate(root / "iter_0000010/.metadata", 0.5)
    return root


def md_metadata_bitflip(work: Path) -> Path:
    root = megatron_dist(work)
    flip(root / "iter_0000010/.metadata", 0, 0x01)  # PROTO opcode 0x80 -> 0x81 (NEWOBJ)
    return root


def md_metadata_empty(work: Path) -> Path:
    root = megatron_dist(work)
    (root / "iter_0000010/.metadata").write_bytes(b"")
    return root


def md_metadata_missing(work: Path) -> Path:
    root = megatron_dist(work)
    (root / "iter_0000010/.metadata").unlink()
    return root


def md_metadata_wrong_type(work: Path) -> Path:
    root = megatron_dist(work)
    (root / "iter_0000010/.metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    return root


def md_distcp_truncated(work: Path) -> Path:
    root = megatron_dist(work)
    truncate(root / "iter_0000010/__0_0.distcp", 0.5)
    return root


def md_distcp_missing(work: Path) -> Path:
    root = megatron_dist(work)
    (root / "iter_0000010/__0_0.distcp").unlink()
    return root


def md_no_metadata_json(work: Path) -> Path:
    return megatron_dist(work, with_metadata_json=False)


def md_metadata_json_garbled(work: Path) -> Path:
    root = megatron_dist(work)
    (root / "iter_0000010/metadata.json").write_text('{"sharded_backend": ')
    return root


def md_metadata_json_backend(work: Path) -> Path:
    root = megatron_dist(work)
    (root / "iter_0000010/metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    return root


def md_common_truncated(work: Path) -> Path:
    root = megatron_dist(work)
    truncate(root / "iter_0000010/common.pt", 0.5)
    return root


def md_tracker_missing_iter(work: Path) -> Path:
    root = megatron_dist(work)
    (root / TRACKER).write_text("99")
    return root


# --- NxD
def nxd_no_done(work: Path) -> Path:
    return nxd(work, complete=False).parent


def nxd_shard_truncated(work: Path) -> Path:
    tag = nxd(work)
    truncate(tag / "model/dp_rank_00_tp_rank_00_pp_rank_00.pt", 0.5)
    return tag


def nxd_xser_tensor_truncated(work: Path) -> Path:
    tag = nxd(work, xser=True)
    truncate(tag / "model/dp_rank_00_tp_rank_00_pp_rank_00.pt.tensors/tensor_0.pt", 0.5)
    return tag


def nxd_xser_tensor_missing(work: Path) -> Path:
    tag = nxd(work, xser=True, with_info=False)
    (tag / "model/dp_rank_00_tp_rank_00_pp_rank_00.pt.tensors/tensor_1.pt").unlink()
    return tag


def nxd_xser_info_bitflip(work: Path) -> Path:
    tag = nxd(work, xser=True)
    info = next((tag / "model").glob("*.info.pt"))
    flip(info, zip_member_offset(info, "data.pkl") + 3)
    return tag


def nxd_newest_missing_tag(work: Path) -> Path:
    tag = nxd(work, complete=False)
    (tag.parent / "newest").write_text("step_99\n")
    return tag.parent


# --- DeepSpeed
def ds_latest_missing(work: Path) -> Path:
    root = deepspeed(work)
    (root / "latest").write_text("global_step9")
    (root / TRACKER).unlink()
    return root


def ds_states_truncated(work: Path) -> Path:
    root = deepspeed(work)
    truncate(root / "global_step2/mp_rank_00_model_states.pt", 0.3)
    return root


def ds_layer_bitflip(work: Path) -> Path:
    root = deepspeed(work)
    layer = sorted((root / "global_step2").glob("layer_*-model_00-model_states.pt"))[1]
    flip(layer, zip_member_offset(layer, "data.pkl") + 2)
    return root


def ds_states_list(work: Path) -> Path:
    root = deepspeed(work)
    torch.save([0], root / "global_step2/mp_rank_00_model_states.pt")
    return root


# --- generic
def empty_folder(work: Path) -> Path:
    (work / "empty").mkdir()
    return work / "empty"


def unrelated_folder(work: Path) -> Path:
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    return work / "photos"


C = Case
CORRUPT: list[Case] = [
    C("st_length_beyond_file", "safetensors", "header length beyond the file", _wrap(st_length_beyond_file), "error", r"truncated: header claims 10000 bytes", "model.safetensors"),
    C("st_length_over_cap", "safetensors", "header length 2**40", _wrap(st_length_over_cap), "error", r"exceeds the \d+-byte limit", "model.safetensors"),
    C("st_tiny_file", "safetensors", "3-byte file", _wrap(st_tiny_file), "error", r"truncated: 3 bytes", "model.safetensors"),
    C("st_invalid_json", "safetensors", "header is cut-off JSON", _wrap(st_invalid_json), "error", r"not valid JSON", "model.safetensors"),
    C("st_not_object", "safetensors", "header is a JSON list", _wrap(st_not_object), "error", r"not a JSON object", "model.safetensors"),
    C("st_invalid_utf8", "safetensors", "header is not UTF-8", _wrap(st_invalid_utf8), "error", r"not valid JSON", "model.safetensors"),
    C("st_overlap", "safetensors", "overlapping data_offsets", _wrap(st_overlap), "error", r"overlaps the previous tensor", "model.safetensors"),
    C("st_out_of_range", "safetensors", "data_offsets beyond the file", _wrap(st_out_of_range), "error", r"truncated: tensors need 1040 data bytes", "model.safetensors"),
    C("st_gap", "safetensors", "gap between tensors", _wrap(st_gap), "error", r"leaves a gap of 16 bytes", "model.safetensors"),
    C("st_shape_mismatch", "safetensors", "shape does not match the byte range", _wrap(st_shape_mismatch), "error", r"needs 36 bytes, data_offsets span 16", "model.safetensors"),
    C("st_dtype_mismatch", "safetensors", "dtype does not match the byte range", _wrap(st_dtype_mismatch), "error", r"needs 32 bytes, data_offsets span 16", "model.safetensors"),
    C("st_huge_shape", "safetensors", "shape of 2**186 elements", _wrap(st_huge_shape), "error", r"needs \d+ bytes, data_offsets span 16", "model.safetensors"),
    C("st_unknown_dtype", "safetensors", "unknown dtype F128", _wrap(st_unknown_dtype), "error", r"unknown dtype 'F128'", "model.safetensors"),
    C("st_negative_shape", "safetensors", "negative dimension", _wrap(st_negative_shape), "error", r"shape must be a list of non-negative integers", "model.safetensors"),
    C("st_bad_metadata", "safetensors", "__metadata__ with a non-string value", _wrap(st_bad_metadata), "error", r"__metadata__ must map strings to strings", "model.safetensors"),
    C("st_trailing_bytes", "safetensors", "bytes after the last tensor", _wrap(st_trailing), "error", r"4 trailing bytes", "model.safetensors"),
    C("st_truncated", "safetensors", "file cut at 70 %", _wrap(st_truncated), "error", r"truncated", "model.safetensors"),
    C("st_bitflip_header", "safetensors", "bit flip turning the header into a list", _wrap(st_bitflip_header), "error", r"not valid JSON|not a JSON object", "model.safetensors"),
    C("st_bitflip_length", "safetensors", "bit flip in the length prefix", _wrap(st_bitflip_length), "error", r"exceeds the \d+-byte limit", "model.safetensors"),
    C("st_index_missing_shard", "HF sharded safetensors", "index names a shard that is gone", _wrap(st_index_missing_shard), "error", r"missing shard named in model.safetensors.index.json", "model-00002-of-00002.safetensors"),
    C("st_index_wrong_shard", "HF sharded safetensors", "weight_map points a tensor at the wrong shard", _wrap(st_index_wrong_shard), "error", r"not found in their shard", "model.safetensors.index.json"),
    C("st_index_invalid_json", "HF sharded safetensors", "index is cut-off JSON", _wrap(st_index_invalid_json), "error", r"cannot read index", "model.safetensors.index.json"),
    C("st_index_escapes_folder", "HF sharded safetensors", "weight_map path ../../etc/passwd", _wrap(st_index_escapes), "error", r"outside the folder", "model.safetensors.index.json"),
    C("bin_truncated", "torch zip (pytorch_model.bin)", "file cut in half", _wrap(bin_truncated), "error", r"corrupt or truncated zip archive", "pytorch_model.bin"),
    C("bin_bitflip_pickle", "torch zip (pytorch_model.bin)", "bit flip inside data.pkl (CRC mismatch)", _wrap(bin_bitflip_pickle), "error", r"Bad CRC-32", "pytorch_model.bin"),
    C("bin_bitflip_tensor", "torch zip (pytorch_model.bin)", "bit flip inside tensor bytes (CRC checked on full read)", _wrap(bin_bitflip_tensor), "load_error", r"CRC-32 mismatch", "pytorch_model.bin"),
    C("bin_missing_pkl", "torch zip (pytorch_model.bin)", "zip without data.pkl", _wrap(bin_missing_pkl), "error", r"zip archive has no data.pkl", "pytorch_model.bin"),
    C("bin_missing_storage", "torch zip (pytorch_model.bin)", "zip without the data/0 storage member", _wrap(bin_missing_storage), "error", r"missing member \w+/data/0", "pytorch_model.bin"),
    C("bin_short_storage", "torch zip (pytorch_model.bin)", "storage member shorter than its tensor", _wrap(bin_short_storage), "error", r"storage 0 holds 8 bytes, needs", "pytorch_model.bin"),
    C("bin_compressed", "torch zip (pytorch_model.bin)", "members deflate-compressed", _wrap(bin_compressed), "load_error", r"is compressed", "pytorch_model.bin"),
    C("bin_big_endian", "torch zip (pytorch_model.bin)", "byteorder says big", _wrap(bin_big_endian), "error", r"big-endian torch files are not supported", "pytorch_model.bin"),
    C("bin_empty", "torch file", "0-byte file", _wrap(bin_empty), "error", r"file is empty", "pytorch_model.bin"),
    C("bin_random_bytes", "torch file", "random bytes", _wrap(bin_random), "error", r"not a torch checkpoint", "pytorch_model.bin"),
    C("bin_pickle_huge_bytes", "torch zip (pytorch_model.bin)", "data.pkl claims a 2**60-byte BINBYTES8", _wrap(bin_pickle_huge_frame), "error", r"cannot read torch file", "pytorch_model.bin"),
    C("legacy_truncated", "legacy torch file", "storages cut off", _wrap(legacy_truncated), "error", r"truncated: storage .* (runs past end of file|header missing)", "pytorch_model.bin"),
    C("legacy_bad_magic", "legacy torch file", "bit flip in the magic number", _wrap(legacy_bad_magic), "error", r"not a torch checkpoint", "pytorch_model.bin"),
    C("legacy_pickle_cut", "legacy torch file", "cut inside the object pickle", _wrap(legacy_pickle_cut), "error", r"cannot read torch file", "pytorch_model.bin"),
    C("legacy_huge_bytes", "legacy torch file", "object pickle claims a 2**60-byte BINBYTES8", _wrap(legacy_huge_bytes), "error", r"cannot read torch file", "pytorch_model.bin"),
    C("mt_missing_rank_dir", "Megatron torch", "TP rank folder missing", _wrap(mt_missing_rank_dir), "error", r"missing rank file: args say TP2", "mp_rank_01"),
    C("mt_missing_rank_file", "Megatron torch", "rank folder without model_optim_rng.pt", _wrap(mt_missing_rank_file), "error", r"missing rank file", "mp_rank_01"),
    C("mt_tracker_missing_iter", "Megatron torch", "tracker names iteration 20, absent", _wrap(mt_tracker_missing_iter), "error", r"points to iter_0000020, which does not exist", TRACKER),
    C("mt_tracker_garbage", "Megatron torch", "tracker holds escape codes", _wrap(mt_tracker_garbage), "error", r"tracker must hold an iteration number", TRACKER),
    C("mt_shape_disagree", "Megatron torch", "TP ranks from runs with different hidden sizes", _wrap(mt_shape_disagree), "error", r"rank files disagree on", "mp_rank_01"),
    C("mt_replicated_disagree", "Megatron torch", "replicated norm has another shape on rank 1", _wrap(mt_replicated_disagree), "error", r"rank files disagree on 'decoder.final_layernorm.weight'", "mp_rank_01"),
    C("mt_dtype_disagree", "Megatron torch", "one rank saved a tensor in bf16", _wrap(mt_dtype_disagree), "error", r"rank files disagree on .* bfloat16", "mp_rank_01"),
    C("mt_top_level_list", "Megatron torch", "rank file holds a list", _wrap(mt_top_level_list), "error", r"expected a dict at top level, found list", "model_optim_rng.pt"),
    C("mt_truncated", "Megatron torch", "rank file cut at 40 %", _wrap(mt_truncated), "error", r"corrupt or truncated zip archive", "mp_rank_00"),
    C("mt_bitflip_tensor", "Megatron torch", "bit flip in tensor bytes (CRC checked on full read)", _wrap(mt_bitflip_tensor), "load_error", r"CRC-32 mismatch", "model_optim_rng.pt"),
    C("md_metadata_truncated", "torch_dist / DCP", ".metadata cut in half", _wrap(md_metadata_truncated), "error", r"garbled DCP metadata", ".metadata"),
    C("md_metadata_bitflip", "torch_dist / DCP", "bit flip in the .metadata PROTO opcode", _wrap(md_metadata_bitflip), "error", r"garbled DCP metadata", ".metadata"),
    C("md_metadata_empty", "torch_dist / DCP", "0-byte .metadata", _wrap(md_metadata_empty), "error", r"DCP metadata file is empty", ".metadata"),
    C("md_metadata_missing", "torch_dist / DCP", ".metadata deleted", _wrap(md_metadata_missing), "error", r"missing DCP metadata file|not a recognised checkpoint", ".metadata|iter_0000010|md"),
    C("md_metadata_wrong_type", "torch_dist / DCP", ".metadata holds a dict", _wrap(md_metadata_wrong_type), "error", r"expected a Metadata object, found dict", ".metadata"),
    C("md_distcp_truncated", "torch_dist / DCP", "__0_0.distcp cut in half", _wrap(md_distcp_truncated), "incomplete", r"__0_0.distcp"),
    C("md_distcp_missing", "torch_dist / DCP", "__0_0.distcp deleted", _wrap(md_distcp_missing), "incomplete", r"__0_0.distcp"),
    C("md_no_metadata_json", "torch_dist / DCP", "no metadata.json (interrupted async save)", _wrap(md_no_metadata_json), "incomplete", r"no metadata.json: an interrupted"),
    C("md_metadata_json_garbled", "torch_dist / DCP", "metadata.json cut-off JSON", _wrap(md_metadata_json_garbled), "error", r"cannot parse metadata.json", "metadata.json"),
    C("md_metadata_json_backend", "torch_dist / DCP", "metadata.json names the zarr backend", _wrap(md_metadata_json_backend), "error", r"sharded_backend 'zarr' is not supported", "metadata.json"),
    C("md_common_truncated", "torch_dist / DCP", "common.pt cut in half", _wrap(md_common_truncated), "error", r"corrupt or truncated zip archive", "common.pt"),
    C("md_tracker_missing_iter", "torch_dist / DCP", "tracker names iteration 99, absent", _wrap(md_tracker_missing_iter), "error", r"points to iter_0000099, which does not exist", TRACKER),
    C("nxd_no_done", "NxD", "tag has `checkpoint` but no `done`", _wrap(nxd_no_done), "incomplete", r"no tag holds a `done` marker"),
    C("nxd_shard_truncated", "NxD", "shard cut in half", _wrap(nxd_shard_truncated), "error", r"corrupt or truncated zip archive", "dp_rank_00_tp_rank_00_pp_rank_00.pt"),
    C("nxd_xser_tensor_truncated", "NxD xser", "tensor_0.pt cut in half", _wrap(nxd_xser_tensor_truncated), "load_error", r"corrupt or truncated zip archive", "tensor_0.pt"),
    C("nxd_xser_tensor_missing", "NxD xser", "tensor_1.pt deleted, no info file", _wrap(nxd_xser_tensor_missing), "incomplete", r"tensor file for .* is missing"),
    C("nxd_xser_info_bitflip", "NxD xser", "bit flip in the .info.pt pickle", _wrap(nxd_xser_info_bitflip), "error", r"Bad CRC-32", "info.pt"),
    C("nxd_newest_missing_tag", "NxD", "`newest` names a tag that does not exist", _wrap(nxd_newest_missing_tag), "error", r"names tag 'step_99', which does not exist", "newest"),
    C("ds_latest_missing", "DeepSpeed", "`latest` names global_step9, absent", _wrap(ds_latest_missing), "error", r"names tag 'global_step9', which does not exist", "latest"),
    C("ds_states_truncated", "DeepSpeed", "mp_rank_00_model_states.pt cut at 30 %", _wrap(ds_states_truncated), "error", r"corrupt or truncated zip archive", "mp_rank_00_model_states.pt"),
    C("ds_layer_bitflip", "DeepSpeed", "bit flip in a layer file's pickle", _wrap(ds_layer_bitflip), "error", r"Bad CRC-32", "model_00-model_states.pt"),
    C("ds_states_list", "DeepSpeed", "model states hold a list", _wrap(ds_states_list), "error", r"model states hold list, expected a dict", "mp_rank_00_model_states.pt"),
    C("empty_folder", "any", "empty folder", _wrap(empty_folder), "error", r"folder is empty", "empty"),
    C("unrelated_folder", "any", "folder of photos", _wrap(unrelated_folder), "error", r"not a recognised checkpoint \(found: cat.jpg\)", "photos"),
]

ALL: list[Case] = MALICIOUS + CORRUPT


def by_name(name: str) -> Case:
    return next(c for c in ALL if c.name == name)


def build(case: Case, work: Path) -> tuple[Path, Path]:
    """Build one case in `work`; returns (path to open, canary path)."""
    work.mkdir(parents=True, exist_ok=True)
    canary = work / "PWNED"
    return case.build(work, canary), canary


__all__ = ["ALL", "CORRUPT", "MALICIOUS", "Case", "build", "by_name"]
