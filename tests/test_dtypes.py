"""The torch-free stand-ins (inspectors/dtypes.py, dcp_meta.py) against torch itself: every torch
dtype is in the table with its itemsize and kind, storage classes name the same dtypes, DCP
records carry torch's field names, and a real DCP `.metadata` reads back field for field."""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle

import pytest
import torch
from torch.distributed.checkpoint import filesystem, metadata, planner

from ckptscope.inspectors import dcp_meta
from ckptscope.inspectors.dtypes import DTYPES, LAYOUTS, STORAGE_DTYPES, Device, DType, Size
from ckptscope.inspectors.safe_pickle import RestrictedUnpickler, safe_loads


def test_every_torch_dtype_is_in_the_table() -> None:
    found = {name: value for name in dir(torch) if isinstance(value := getattr(torch, name), torch.dtype)}
    assert set(found) == set(DTYPES)
    for name, real in found.items():
        ours = DTYPES[name]
        assert ours == real and real == ours and str(ours) == str(real) and ours.torch is real, name
        assert (ours.itemsize, ours.is_complex) == (real.itemsize, real.is_complex), name
        assert ours.is_floating_point == real.is_floating_point, name


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_storage_classes_name_torchs_dtypes() -> None:
    for storage, name in STORAGE_DTYPES.items():
        cls = getattr(torch, storage, None)
        if cls is None:  # float8 storages: named as hand-made files name them (no torch class)
            assert storage == "".join(p.capitalize() for p in name.split("_")) + "Storage"
            continue
        assert (torch.uint8 if storage == "UntypedStorage" else cls.dtype) == DTYPES[name].torch, storage


def test_pickled_torch_values_read_as_stand_ins() -> None:
    value = {"dtype": torch.bfloat16, "half": torch.half, "size": torch.Size([2, 3]), "dev": torch.device("cuda", 1),
             "cpu": torch.device("cpu")}
    out = safe_loads(pickle.dumps(value, protocol=2))
    assert isinstance(out["dtype"], DType) and out["dtype"] is DTYPES["bfloat16"] and out["half"] is DTYPES["float16"]
    assert isinstance(out["size"], Size) and out["size"] == torch.Size([2, 3]) and repr(out["size"]) == repr(torch.Size([2, 3]))
    assert isinstance(out["dev"], Device) and repr(out["dev"]) == repr(value["dev"]) and str(out["cpu"]) == "cpu"
    assert copy.deepcopy(out)["dtype"] is DTYPES["bfloat16"]
    assert repr(LAYOUTS["strided"]) == repr(torch.strided)


@pytest.mark.parametrize("data", [
    b"\x80\x02ctorch\nbfloat16\n}X\x08\x00\x00\x00itemsizeK\x08sb.",  # BUILD on a shared dtype
    b"\x80\x02ctorch\ndevice\nX\x06\x00\x00\x00rocket\x85R.",  # a device type torch does not know
    b"\x80\x02ctorch\nSize\n]X\x01\x00\x00\x00xa\x85R.",  # a Size of a string
])
def test_stand_ins_refuse_what_torch_refuses(data: bytes) -> None:
    with pytest.raises((pickle.UnpicklingError, AttributeError)):
        safe_loads(data)
    assert DTYPES["bfloat16"].itemsize == 2


def test_dcp_records_have_torchs_fields() -> None:
    for (module, name), ours in dcp_meta.ALLOWLIST.items():
        if module.startswith("megatron"):
            continue
        real = getattr({"metadata": metadata, "planner": planner, "filesystem": filesystem}[module.rsplit(".", 1)[1]], name)
        if dataclasses.is_dataclass(real):
            assert ours._fields == tuple(f.name for f in dataclasses.fields(real)), name
        else:  # an enum
            assert {m.value: m.name for m in real} == {v: m.name for v, m in ours.members.items()}, name


def test_real_dcp_metadata_reads_back_field_for_field() -> None:
    chunk = metadata.ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 3]))
    props = metadata.TensorProperties(dtype=torch.bfloat16)
    index = metadata.MetadataIndex("w", [0, 0])
    meta = metadata.Metadata({"w": metadata.TensorStorageMetadata(props, torch.Size([2, 3]), [chunk]),
                              "b": metadata.BytesStorageMetadata()},
                             storage_data={index: filesystem._StorageInfo("__0_0.distcp", 5, 12)})
    ours = RestrictedUnpickler(io.BytesIO(pickle.dumps(meta))).load()
    assert type(ours) is dcp_meta.Metadata and type(ours).__name__ == "Metadata"
    entry = ours.state_dict_metadata["w"]
    assert entry.properties.dtype is DTYPES["bfloat16"] and entry.properties.memory_format == "torch.contiguous_format"
    assert entry.size == (2, 3) and entry.chunks[0].offsets == (0, 0) and entry.chunks[0].sizes == (2, 3)
    assert isinstance(ours.state_dict_metadata["b"], dcp_meta.BytesStorageMetadata)
    [(key, info)] = ours.storage_data.items()
    assert (key.fqn, key.offset, info.relative_path, info.offset, info.length) == ("w", (0, 0), "__0_0.distcp", 5, 12)
    assert repr(key) == repr(index)
