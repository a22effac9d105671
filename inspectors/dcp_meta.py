"""torch-free stand-ins for the dataclasses and enums a DCP `.metadata` pickle names.

`torch.distributed.checkpoint` takes most of a second to import on top of torch itself, and a
reader only needs the fields: each stand-in is a plain record that BUILD fills with the
pickled field values (missing fields keep torch's defaults), never runs code, and carries
torch's class name. `safe_pickle` maps the pickled qualified names here (`ALLOWLIST` below).
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar

from .dtypes import DTYPES, LAYOUTS, Sealed


class Record:
    """A dataclass instance as pickled: `__dict__` from BUILD state, class-level defaults."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(self._fields) or not set(kwargs) <= set(self._fields):
            raise pickle.UnpicklingError(f"{type(self).__name__}() with unknown fields refused")
        for name, value in (*zip(self._fields, args), *kwargs.items()):
            self.__dict__[name] = value

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"


def _record(name: str, fields: dict[str, Any], module: str) -> type[Record]:
    return type(name, (Record,), {"_fields": tuple(fields), "__module__": module, "__qualname__": name, **fields})


class _EnumMember(Sealed):
    """One member of a stand-in enum: `<WriteItemType.TENSOR: 1>`."""

    __slots__ = ("owner", "name", "value")

    def __init__(self, owner: str, name: str, value: int) -> None:
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def _label(self) -> str:
        return f"{self.owner}.{self.name}"

    def __repr__(self) -> str:
        return f"<{self.owner}.{self.name}: {self.value}>"


def _enum(owner: str, members: dict[str, int]) -> Any:
    """A callable like an Enum class: `Kind(1)` is its member of value 1, other values raise."""
    by_value = {value: _EnumMember(owner, name, value) for name, value in members.items()}

    def lookup(value: Any) -> _EnumMember:
        member = by_value.get(value) if isinstance(value, int) and not isinstance(value, bool) else None
        if member is None:
            raise pickle.UnpicklingError(f"{short(value)} is not a valid {owner}")
        return member

    lookup.__name__ = lookup.__qualname__ = owner
    lookup.members = by_value  # type: ignore[attr-defined]
    return lookup


def short(value: Any) -> str:
    return repr(value)[:40] if isinstance(value, (int, str)) else type(value).__name__


_META = "torch.distributed.checkpoint.metadata"
_PLANNER = "torch.distributed.checkpoint.planner"
_FS = "torch.distributed.checkpoint.filesystem"

MEM_FORMAT_ENCODING = _enum("_MEM_FORMAT_ENCODING", {"TORCH_CONTIGUOUS_FORMAT": 0, "TORCH_CHANNELS_LAST": 1,
                                                     "TORCH_PRESERVE_FORMAT": 2})
_MEMORY_FORMATS = {0: "torch.contiguous_format", 1: "torch.channels_last", 2: "torch.preserve_format"}

Metadata = _record("Metadata", {"state_dict_metadata": None, "planner_data": None, "storage_data": None,
                                "storage_meta": None, "version": None}, _META)
TensorStorageMetadata = _record("TensorStorageMetadata", {"properties": None, "size": None, "chunks": None}, _META)
BytesStorageMetadata = _record("BytesStorageMetadata", {}, _META)
ChunkStorageMetadata = _record("ChunkStorageMetadata", {"offsets": None, "sizes": None}, _META)
StorageMeta = _record("StorageMeta", {"checkpoint_id": None, "save_id": None, "load_id": None, "modules": None}, _META)
_TensorPropertiesBase = _record("TensorProperties", {"dtype": DTYPES["float32"], "layout": LAYOUTS["strided"],
                                                     "requires_grad": False, "memory_format": _MEMORY_FORMATS[0],
                                                     "pin_memory": False}, _META)


class TensorProperties(_TensorPropertiesBase):  # type: ignore[misc, valid-type]
    """torch pickles it as a tuple (dtype, layout, requires_grad, memory-format code, pin_memory)."""

    __module__ = _META

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("garbled TensorProperties state")
        dtype, layout, requires_grad, encoding, pin_memory = state
        if not isinstance(encoding, _EnumMember) or encoding.owner != "_MEM_FORMAT_ENCODING":
            raise pickle.UnpicklingError(f"Invalid torch.memory_format encoding: {short(encoding)}")
        for key, value in (("dtype", dtype), ("layout", layout), ("requires_grad", requires_grad),
                           ("memory_format", _MEMORY_FORMATS[encoding.value]), ("pin_memory", pin_memory)):
            self.__dict__[key] = value


class MetadataIndex(Record):
    """A dict key of `storage_data`: equal and hashed by (fqn, offset), as torch's frozen dataclass."""

    __module__ = _META
    _fields = ("fqn", "offset", "index")
    fqn: Any = None
    offset: Any = None
    index: Any = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataIndex) and (self.fqn, self.offset) == (other.fqn, other.offset)

    def __hash__(self) -> int:
        return hash((self.fqn, self.offset))


SavePlan = _record("SavePlan", {"items": None, "storage_data": None, "planner_data": None, "usable": True}, _PLANNER)
WriteItem = _record("WriteItem", {"index": None, "type": None, "bytes_io_data": None, "tensor_data": None}, _PLANNER)
TensorWriteData = _record("TensorWriteData", {"chunk": None, "properties": None, "size": None}, _PLANNER)
LoadPlan = _record("LoadPlan", {"items": None, "storage_data": None, "planner_data": None}, _PLANNER)
ReadItem = _record("ReadItem", {"type": None, "dest_index": None, "dest_offsets": None, "storage_index": None,
                                "storage_offsets": None, "lengths": None}, _PLANNER)
WriteItemType = _enum("WriteItemType", {"TENSOR": 1, "SHARD": 2, "BYTE_IO": 3})
LoadItemType = _enum("LoadItemType", {"TENSOR": 1, "BYTE_IO": 2})
StorageInfo = _record("_StorageInfo", {"relative_path": None, "offset": None, "length": None,
                                       "transform_descriptors": None}, _FS)
StoragePrefix = _record("_StoragePrefix", {"prefix": None}, _FS)

ALLOWLIST: dict[tuple[str, str], Any] = {
    (_META, "Metadata"): Metadata, (_META, "TensorStorageMetadata"): TensorStorageMetadata,
    (_META, "BytesStorageMetadata"): BytesStorageMetadata, (_META, "ChunkStorageMetadata"): ChunkStorageMetadata,
    (_META, "TensorProperties"): TensorProperties, (_META, "MetadataIndex"): MetadataIndex,
    (_META, "StorageMeta"): StorageMeta, (_META, "_MEM_FORMAT_ENCODING"): MEM_FORMAT_ENCODING,
    (_PLANNER, "SavePlan"): SavePlan, (_PLANNER, "WriteItem"): WriteItem, (_PLANNER, "WriteItemType"): WriteItemType,
    (_PLANNER, "TensorWriteData"): TensorWriteData, (_PLANNER, "LoadPlan"): LoadPlan, (_PLANNER, "ReadItem"): ReadItem,
    (_PLANNER, "LoadItemType"): LoadItemType,
    (_FS, "_StorageInfo"): StorageInfo, (_FS, "_StoragePrefix"): StoragePrefix,
    # Megatron-Core >= 0.15 pickles a Metadata subclass; its extra field lands in __dict__.
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"): Metadata,
}
