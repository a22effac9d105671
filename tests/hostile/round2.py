"""Hostile inputs of the second hardening round (issue 15, read side), grouped by class.

- READ_EXACT: files where a reader could show something other than what torch loads
  (duplicate zip members, the archive folder, views outside their storage, DCP data files that
  leave the folder, DCP chunks that overlap, BUILD on a dict or on an allowlisted class);
- BOMBS: small files that would crash, hang or eat memory (deep nesting, decompression,
  allocation budgets, layout numbers, side-file sizes, tracker digits, huge shapes);
- SPECIAL_FILES: FIFOs, devices and links where a regular file is expected.

Each case is a `corpus.Case` (same `expect` vocabulary); `docs/reliability.md` lists them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from . import pickles as P
from .corpus import MEGATRON_RANK0, TRACKER, Case, _load_own, hf_bin, hf_st, megatron, megatron_dist, nxd

DIST = "iter_0000010"


# ----- zip surgery ---------------------------------------------------------------------------
def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i.filename)) for i in zf.infolist()]


def _write_members(path: Path, members: list[tuple[str, bytes]], deflate: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: that is the point
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members:
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)


def _pkl_name(members: list[tuple[str, bytes]]) -> str:
    return next(n for n, _ in members if n.endswith("data.pkl"))


def bin_duplicate_pkl(work: Path, canary: Path) -> Path:
    """data.pkl twice: the first (torch's pick) runs os.system, the last (zipfile's pick) is clean."""
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    members = _members(path)
    name = _pkl_name(members)
    evil = P.plant_top(dict(members)[name], "evil", P.p_os_system(canary))
    _write_members(path, [(name, evil), *members])
    return root


def bin_duplicate_storage(work: Path, canary: Path) -> Path:
    """Storage data/0 twice with different bytes: torch and zipfile would show different tensors."""
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    members = _members(path)
    name, data = next((n, d) for n, d in members if n.endswith("/data/0"))
    _write_members(path, [*members, (name, bytes(len(data)))])
    return root


def bin_archive_folder(work: Path, canary: Path) -> Path:
    """torch reads `<folder of the first entry>/data.pkl`; a shorter clean `a/data.pkl` is a decoy."""
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    members = _members(path)
    name = _pkl_name(members)
    evil = P.plant_top(dict(members)[name], "evil", P.p_os_system(canary))
    _write_members(path, [(name, evil) if n == name else (n, d) for n, d in members] + [("a/data.pkl", dict(members)[name])])
    return root


def _patch_first_offset(path: Path, offset: int) -> None:
    """Replace the storage offset of the first tensor (`BINPERSID BININT1 0`) in data.pkl."""
    P.rewrite_zip_pickle(path, lambda pkl: pkl.replace(b"QK\x00", b"QJ" + struct.pack("<i", offset), 1))


def _one_tensor_bin(work: Path, tensor: torch.Tensor) -> Path:
    root = hf_bin(work)
    torch.save({"w": tensor}, root / "pytorch_model.bin")
    return root


def view_negative_offset(work: Path, canary: Path) -> Path:
    root = _one_tensor_bin(work, torch.arange(16, dtype=torch.float32))
    _patch_first_offset(root / "pytorch_model.bin", -64)
    return root


def view_outside_storage(work: Path, canary: Path) -> Path:
    root = _one_tensor_bin(work, torch.arange(16, dtype=torch.float32))
    _patch_first_offset(root / "pytorch_model.bin", 8)
    return root


def view_stride0_bomb(work: Path, canary: Path) -> Path:
    """A 4-byte storage viewed as [25000, 25000] with stride 0 (what `expand` saves)."""
    return _one_tensor_bin(work, torch.zeros(1).expand(25000, 25000))


def bin_build_on_model_dict(work: Path, canary: Path) -> Path:
    """BUILD applied to the top-level state dict: its tensors become attributes ("0 tensors")."""
    root = hf_bin(work)
    state = b"}" + P.ustr("hidden") + P.p_os_system(canary) + b"s"
    P.rewrite_zip_pickle(root / "pytorch_model.bin", lambda pkl: pkl[:-1] + state + b"b.")
    return root


# ----- DCP surgery ---------------------------------------------------------------------------
def _edit_metadata(root: Path, edit: Callable[[object], None]) -> None:
    path = root / DIST / ".metadata"
    meta = pickle.loads(path.read_bytes())  # our own file
    edit(meta)
    path.write_bytes(pickle.dumps(meta))


def dcp_overlap_and_hole(work: Path, canary: Path) -> Path:
    """Second TP chunk of the embedding moved up by 32 rows: overlap [32:64], hole [96:128]."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    root = megatron_dist(work, tp=2)
    key = "embedding.word_embeddings.weight"

    def edit(meta) -> None:  # type: ignore[no-untyped-def]
        entry = meta.state_dict_metadata[key]
        old = entry.chunks[1]
        moved = torch.Size([old.offsets[0] - 32, *old.offsets[1:]])
        entry.chunks[1] = ChunkStorageMetadata(offsets=moved, sizes=old.sizes)
        index = next(i for i in meta.storage_data if i.fqn == key and tuple(i.offset) == tuple(old.offsets))
        meta.storage_data[MetadataIndex(key, moved, index.index)] = meta.storage_data.pop(index)

    _edit_metadata(root, edit)
    return root


def dcp_huge_shape(work: Path, canary: Path) -> Path:
    """A tensor claiming 2**40 elements in one chunk of a small file (`--stats` would allocate 4 TB)."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    root = megatron_dist(work)
    key = "embedding.word_embeddings.weight"

    def edit(meta) -> None:  # type: ignore[no-untyped-def]
        entry = meta.state_dict_metadata[key]
        entry.size = torch.Size([2**40])
        entry.chunks = [ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([2**40]))]
        index = next(i for i in meta.storage_data if i.fqn == key)
        meta.storage_data[MetadataIndex(key, torch.Size([0]), None)] = meta.storage_data.pop(index)

    _edit_metadata(root, edit)
    return root


def dcp_symlink_out(work: Path, canary: Path) -> Path:
    """__0_0.distcp replaced by a link to an identical file outside the checkpoint."""
    root = megatron_dist(work)
    data = root / DIST / "__0_0.distcp"
    outside = work / "outside.bin"
    os.replace(data, outside)
    data.symlink_to(outside)
    return root


def dcp_symlink_inside(work: Path, canary: Path) -> Path:
    """A link that stays inside the folder is fine (the real file is read)."""
    root = megatron_dist(work)
    data = root / DIST / "__0_0.distcp"
    os.replace(data, root / DIST / "real_0_0.bin")
    data.symlink_to("real_0_0.bin")
    return root


def dcp_fifo(work: Path, canary: Path) -> Path:
    root = megatron_dist(work)
    data = root / DIST / "__0_0.distcp"
    data.unlink()
    os.mkfifo(data)
    return root


def dcp_dev_zero(work: Path, canary: Path) -> Path:
    root = megatron_dist(work)
    data = root / DIST / "__0_0.distcp"
    data.unlink()
    data.symlink_to("/dev/zero")
    return root


def p_dcp_class_mutation(c: Path) -> bytes:
    """BUILD with slot state on an allowlisted DCP class: rewrite its __init__ process-wide."""
    state = b"N}" + P.ustr("__init__") + P.glob("os", "system") + b"s\x86"
    return P.glob("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata") + state + b"b"


def dcp_metadata_class_mutation(work: Path, canary: Path) -> Path:
    root = megatron_dist(work)
    path = root / DIST / ".metadata"
    meta = pickle.loads(path.read_bytes())
    meta.planner_data = {"evil": P.SENTINEL}
    path.write_bytes(P.plant_sentinel(pickle.dumps(meta, protocol=2), p_dcp_class_mutation(canary)))
    return root


# ----- bombs ---------------------------------------------------------------------------------
def p_deep_slice(levels: int) -> P.Payload:
    """slice(slice(...slice(None))) `levels` deep: 4 bytes a level, no memo, no MARK."""
    def payload(c: Path) -> bytes:
        return P.glob("builtins", "slice") + P.put(7) + b"0" + P.get(7) * levels + b"N" + b"\x85R" * levels
    return payload


def in_args(payload: P.Payload, ranks: tuple[str, ...] = ("mp_rank_00",)) -> Callable[[Path, Path], Path]:
    """The payload as `args.exploit` in rank 0's file (the reader opens it first)."""
    def build(work: Path, canary: Path) -> Path:
        root = megatron(work)
        for rank in ranks:
            path = root / f"{DIST}/{rank}/model_optim_rng.pt"
            state = _load_own(path)
            state["args"].exploit = P.SENTINEL  # type: ignore[index]
            torch.save(state, path)
            P.rewrite_zip_pickle(path, lambda pkl: P.plant_sentinel(pkl, payload(canary)))
        return root
    return build


def in_metadata(payload: P.Payload) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron_dist(work)
        path = root / DIST / ".metadata"
        meta = pickle.loads(path.read_bytes())
        meta.planner_data = {"evil": P.SENTINEL}
        path.write_bytes(P.plant_sentinel(pickle.dumps(meta, protocol=2), payload(canary)))
        return root
    return build


def p_numpy_object_array(c: Path) -> bytes:
    """numpy's own reconstruct + BUILD of an object array of 300 M elements with no values (2.4 GB)."""
    dtype = P.glob("numpy", "dtype") + P.ustr("O8") + b"\x89\x88\x87R"
    state = b"(K\x01J" + struct.pack("<i", 300_000_000) + b"\x85" + dtype + b"\x89]t"
    return (P.glob("numpy.core.multiarray", "_reconstruct") + P.glob("numpy", "ndarray") + b"K\x00\x85C\x01b\x87R"
            + state + b"b")


def p_frozensets(count: int, size: int) -> P.Payload:
    """`count` frozenset(range(size)), each within the per-object cap, kept in one list."""
    def payload(c: Path) -> bytes:
        one = P.call1(P.glob("builtins", "frozenset"), P.glob("builtins", "range") + P.long_int(size) + b"\x85R")
        return b"](" + one * count + b"e"
    return payload


def bin_inflate_bomb(work: Path, canary: Path) -> Path:
    """A ~1 MB deflated data.pkl that inflates to 0.9 GiB of opcodes (NONE, POP, ...): under the 1 GiB
    cap on a data.pkl, so only the inflate budget stops it."""
    root = hf_bin(work)
    path = root / "pytorch_model.bin"
    members = _members(path)
    name = _pkl_name(members)
    size = 900 << 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as out:
                out.write(b"\x80\x02")
                block = b"N0" * (1 << 19)
                for _ in range(size // len(block)):
                    out.write(block)
                out.write(b"N.")
            for n, d in members:
                if n != name:
                    zf.writestr(n, d)
    return root


def common_state_inflate(buf_size: int = 3 << 29) -> bytes:
    """A torch.save zip (in memory) whose storage member is deflated: 1.5 MB inflating to 1.5 GiB."""
    pkl = (b"\x80\x02" + P.glob("torch._utils", "_rebuild_tensor_v2") + b"(" + b"(" + P.ustr("storage")
           + P.glob("torch", "ByteStorage") + P.ustr("0") + P.ustr("cpu") + P.long_int(buf_size) + b"tQ"
           + b"K\x00" + P.long_int(buf_size) + b"\x85K\x01\x85\x89" + P.glob("collections", "OrderedDict") + b")R" + b"tR.")
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(buf_size // len(block)):
                out.write(block)
    return raw.getvalue()


def _set_args(**values: object) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron(work)
        for rank in ("mp_rank_00", "mp_rank_01"):
            path = root / f"{DIST}/{rank}/model_optim_rng.pt"
            state = _load_own(path)
            for key, value in values.items():
                setattr(state["args"], key, value)  # type: ignore[index]
            torch.save(state, path)
        return root
    return build


def _ds_tp(value: object) -> Callable[[Path, Path], Path]:
    """DeepSpeed model states whose `checkpoint_parallel_dimensions` claim tp_degree = `value`."""
    def build(work: Path, canary: Path) -> Path:
        from ckptscope.converters.samples.deepspeed import write_deepspeed_zero

        from .corpus import TINY

        root = write_deepspeed_zero(TINY, work / "ds")
        path = root / "global_step2/mp_rank_00_model_states.pt"
        state = _load_own(path)
        state["checkpoint_parallel_dimensions"] = {"tp_degree": value}  # type: ignore[index]
        torch.save(state, path)
        return root
    return build


def _tracker(text: str | bytes) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        root = megatron(work)
        data = text.encode() if isinstance(text, str) else text
        (root / TRACKER).write_bytes(data)
        return root
    return build


def big_config(work: Path, canary: Path) -> Path:
    """A config.json of 20 MB (valid JSON): side files are capped, not read whole."""
    root = hf_st(work)
    config = json.loads((root / "config.json").read_text())
    config["padding"] = "x" * (20 << 20)
    (root / "config.json").write_text(json.dumps(config))
    return root


def xser_bad_dtype(value: object) -> Callable[[Path, Path], Path]:
    def build(work: Path, canary: Path) -> Path:
        tag = nxd(work, xser=True)
        info = next((tag / "model").glob("*.info.pt"))
        state = _load_own(info)
        first = next(iter(state.values()))  # type: ignore[union-attr]
        first["dtype"] = value
        torch.save(state, info)
        return tag
    return build


# ----- special files -------------------------------------------------------------------------
def st_fifo(work: Path, canary: Path) -> Path:
    root = hf_st(work)
    (root / "model.safetensors").unlink()
    os.mkfifo(root / "model.safetensors")
    return root


def loose_st_fifo(work: Path, canary: Path) -> Path:
    folder = work / "loose"
    folder.mkdir()
    os.mkfifo(folder / "x.safetensors")
    return folder / "x.safetensors"


def bin_fifo(work: Path, canary: Path) -> Path:
    root = hf_bin(work)
    (root / "pytorch_model.bin").unlink()
    os.mkfifo(root / "pytorch_model.bin")
    return root


def tracker_fifo(work: Path, canary: Path) -> Path:
    root = megatron(work)
    (root / TRACKER).unlink()
    os.mkfifo(root / TRACKER)
    return root


def tracker_dev_zero(work: Path, canary: Path) -> Path:
    root = megatron(work)
    (root / TRACKER).unlink()
    (root / TRACKER).symlink_to("/dev/zero")
    return root


def config_dev_zero(work: Path, canary: Path) -> Path:
    root = hf_st(work)
    (root / "config.json").unlink()
    (root / "config.json").symlink_to("/dev/zero")
    return root


def metadata_fifo(work: Path, canary: Path) -> Path:
    root = megatron_dist(work)
    (root / DIST / ".metadata").unlink()
    os.mkfifo(root / DIST / ".metadata")
    return root


C = Case
READ_EXACT: list[Case] = [
    C("bin_duplicate_pkl", "torch zip (pytorch_model.bin)", "data.pkl twice, the first one (torch's) with os.system", bin_duplicate_pkl, "error", r"two members named", "pytorch_model.bin"),
    C("bin_duplicate_storage", "torch zip (pytorch_model.bin)", "storage data/0 twice with different bytes", bin_duplicate_storage, "error", r"two members named", "pytorch_model.bin"),
    C("bin_archive_folder", "torch zip (pytorch_model.bin)", "os.system in <first entry's folder>/data.pkl, a clean decoy a/data.pkl", bin_archive_folder, "placeholder", placeholder="os.system"),
    C("view_negative_offset", "torch zip (pytorch_model.bin)", "_rebuild_tensor_v2 with storage offset -64", view_negative_offset, "error", r"negative offset", "pytorch_model.bin"),
    C("view_outside_storage", "torch zip (pytorch_model.bin)", "view of 16 elements at offset 8 of a 16-element storage", view_outside_storage, "error", r"outside its 64-byte storage", "pytorch_model.bin"),
    C("view_stride0_bomb", "torch zip (pytorch_model.bin)", "4-byte storage viewed as [25000, 25000], stride 0", view_stride0_bomb, "error", r"tensor view of 625000000 elements", "pytorch_model.bin"),
    C("bin_build_on_model_dict", "torch zip (pytorch_model.bin)", "BUILD state applied to the top-level state dict", bin_build_on_model_dict, "error", r"BUILD\) to a dict", "pytorch_model.bin"),
    C("dcp_overlap_and_hole", "torch_dist / DCP", "two TP chunks overlap by 32 rows and leave a 32-row hole", dcp_overlap_and_hole, "error", r"overlap", ".metadata"),
    C("dcp_symlink_out", "torch_dist / DCP", "__0_0.distcp is a symlink to a file outside the checkpoint", dcp_symlink_out, "error", r"outside the checkpoint folder", "__0_0.distcp"),
    C("dcp_symlink_inside", "torch_dist / DCP", "__0_0.distcp is a symlink to a file in the same folder", dcp_symlink_inside, "opens"),
    C("dcp_metadata_class_mutation", "torch_dist / DCP", "BUILD slot state on ChunkStorageMetadata (an allowlisted class) in .metadata", dcp_metadata_class_mutation, "error", r"tried to modify ChunkStorageMetadata.__init__", ".metadata"),
]

BOMBS: list[Case] = [
    C("args_deep_slice", "Megatron args (model_optim_rng.pt)", "slice nested 1 000 000 deep (7 MB)", in_args(p_deep_slice(1_000_000)), "error", r"nested more than 10000 levels deep", "model_optim_rng.pt"),
    C("metadata_deep_slice", "DCP .metadata", "slice nested 1 000 000 deep (7 MB)", in_metadata(p_deep_slice(1_000_000)), "error", r"nested more than 10000 levels deep", ".metadata"),
    C("bin_inflate_bomb", "torch zip (pytorch_model.bin)", "1 MB deflated data.pkl inflating to 0.9 GiB", bin_inflate_bomb, "error", r"is compressed and inflates to \d+ bytes", "pytorch_model.bin"),
    C("args_numpy_object_array", "Megatron args (model_optim_rng.pt)", "60-byte numpy object array of 300 M elements", in_args(p_numpy_object_array), "error", r"numpy object array of 300000000 elements", "model_optim_rng.pt"),
    C("args_frozensets", "Megatron args (model_optim_rng.pt)", "20 x frozenset(range(2 000 000)), each under the per-object cap", in_args(p_frozensets(20, 2_000_000)), "error", r"allocation budget", "model_optim_rng.pt"),
    C("args_pp_billion", "Megatron args (model_optim_rng.pt)", "pipeline_model_parallel_size = 10**9", _set_args(pipeline_model_parallel_size=10**9), "error", r"pipeline_model_parallel_size = 1000000000 is not a parallel size", MEGATRON_RANK0),
    C("args_vpp_billion", "Megatron args (model_optim_rng.pt)", "virtual_pipeline_model_parallel_size = 10**9", _set_args(virtual_pipeline_model_parallel_size=10**9), "error", r"virtual_pipeline_model_parallel_size = 1000000000 is not a parallel size", MEGATRON_RANK0),
    C("args_etp_billion", "Megatron args (model_optim_rng.pt)", "expert_tensor_parallel_size = 10**9", _set_args(expert_tensor_parallel_size=10**9), "error", r"expert_tensor_parallel_size = 1000000000 is not a parallel size", MEGATRON_RANK0),
    C("args_etp_grid", "Megatron args (model_optim_rng.pt)", "PP, EP and expert TP of 1024 each: a 10**9-rank grid to list",
      _set_args(pipeline_model_parallel_size=1024, expert_model_parallel_size=1024, expert_tensor_parallel_size=1024, num_experts=1024),
      "error", r"missing rank file", "iter_0000010/mp_rank_00_000_000/model_optim_rng.pt"),
    C("args_negative_tp", "Megatron args (model_optim_rng.pt)", "tensor_model_parallel_size = -1", _set_args(tensor_model_parallel_size=-1), "error", r"tensor_model_parallel_size = -1 is not a parallel size", MEGATRON_RANK0),
    C("args_negative_ep", "Megatron args (model_optim_rng.pt)", "expert_model_parallel_size = -4", _set_args(expert_model_parallel_size=-4), "error", r"expert_model_parallel_size = -4 is not a parallel size", MEGATRON_RANK0),
    C("args_pp_string", "Megatron args (model_optim_rng.pt)", "pipeline_model_parallel_size = 'two'", _set_args(pipeline_model_parallel_size="two"), "error", r"is not a parallel size", MEGATRON_RANK0),
    C("ds_tp_negative", "DeepSpeed", "checkpoint_parallel_dimensions tp_degree = -1", _ds_tp(-1), "error", r"tp_degree = -1 is not a parallel size", "mp_rank_00_model_states.pt"),
    C("ds_tp_billion", "DeepSpeed", "checkpoint_parallel_dimensions tp_degree = 10**9", _ds_tp(10**9), "error", r"tp_degree = 1000000000 is not a parallel size", "mp_rank_00_model_states.pt"),
    C("hf_big_config", "HF safetensors", "config.json of 20 MB", big_config, "error", r"config.json is larger than \d+ bytes", "config.json"),
    C("tracker_5000_digits", "Megatron torch", "tracker holds 5000 digits", _tracker("7" * 5000), "error", r"larger than 4096 bytes|at most 12 ASCII digits", TRACKER),
    C("tracker_300_digits", "Megatron torch", "tracker holds 300 digits", _tracker("7" * 300), "error", r"at most 12 ASCII digits", TRACKER),
    C("tracker_superscript", "Megatron torch", "tracker holds '²'", _tracker("²"), "error", r"at most 12 ASCII digits", TRACKER),
    C("tracker_arabic_digit", "Megatron torch", "tracker holds '١' (Arabic-Indic one)", _tracker("١٠"), "error", r"at most 12 ASCII digits", TRACKER),
    C("tracker_big", "Megatron torch", "tracker of 1 MB", _tracker(b"1" + b" " * (1 << 20)), "error", r"tracker is larger than 4096 bytes", TRACKER),
    C("dcp_huge_shape", "torch_dist / DCP", "tensor of 2**40 elements in one chunk of a small file", dcp_huge_shape, "error", r"needs \d+ bytes, its storage entry holds", ".metadata"),
    C("xser_dtype_string", "NxD xser", ".info.pt dtype 'float99'", xser_bad_dtype("float99"), "error", r"not a torch dtype", "info.pt"),
    C("xser_dtype_int", "NxD xser", ".info.pt dtype 7", xser_bad_dtype(7), "error", r"not a torch dtype", "info.pt"),
    C("xser_dtype_attr", "NxD xser", ".info.pt dtype '__class__'", xser_bad_dtype("__class__"), "error", r"not a torch dtype", "info.pt"),
]

SPECIAL_FILES: list[Case] = [
    C("st_fifo", "HF safetensors", "model.safetensors is a FIFO", st_fifo, "error", r"FIFO", "model.safetensors"),
    C("loose_st_fifo", "safetensors file", "x.safetensors (opened directly) is a FIFO", loose_st_fifo, "error", r"FIFO|not a recognised checkpoint", "x.safetensors"),
    C("bin_fifo", "HF pytorch_model.bin", "pytorch_model.bin is a FIFO", bin_fifo, "error", r"FIFO|not a recognised checkpoint", "pytorch_model.bin|hf"),
    C("tracker_fifo", "Megatron torch", "tracker is a FIFO", tracker_fifo, "error", r"FIFO", TRACKER),
    C("tracker_dev_zero", "Megatron torch", "tracker is a symlink to /dev/zero", tracker_dev_zero, "error", r"character device", TRACKER),
    C("config_dev_zero", "HF safetensors", "config.json is a symlink to /dev/zero", config_dev_zero, "error", r"character device", "config.json"),
    C("metadata_fifo", "torch_dist / DCP", ".metadata is a FIFO", metadata_fifo, "error", r"FIFO", ".metadata"),
    C("dcp_data_fifo", "torch_dist / DCP", "__0_0.distcp is a FIFO", dcp_fifo, "error", r"not a regular file", "__0_0.distcp"),
    C("dcp_data_dev_zero", "torch_dist / DCP", "__0_0.distcp is a symlink to /dev/zero", dcp_dev_zero, "error", r"outside the checkpoint folder", "__0_0.distcp"),
]

ROUND2: list[Case] = READ_EXACT + BOMBS + SPECIAL_FILES

__all__ = ["BOMBS", "READ_EXACT", "ROUND2", "SPECIAL_FILES", "common_state_inflate"]
