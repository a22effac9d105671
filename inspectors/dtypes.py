"""torch-free stand-ins for the torch values a checkpoint's pickles name: dtypes, `torch.Size`,
`torch.device` and layouts.

Reading headers and pickles must not cost `import torch` (about 1.5 s): `ckptscope inspect`
and `--help` only describe tensors. The restricted unpickler resolves `torch.bfloat16` & co. to
the `DType` objects of this table (name, bytes per element, kind), which print, compare and
JSON-encode like torch's own; only code that reads tensor bytes asks for `DType.torch` (and so
imports torch, inside that function). tests/test_dtypes.py checks the table against torch.
"""

from __future__ import annotations

import pickle
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Sealed:
    """A shared stand-in the unpickler hands out (a dtype, a device, a layout, an enum member):
    nothing may change one, a pickle's BUILD may not apply state to one, and a copy is itself."""

    __slots__ = ()

    def _label(self) -> str:
        raise NotImplementedError

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._label()} is read-only")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"pickle applies object state to {self._label()}; refused")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


class DType(Sealed):
    """A torch dtype by name: what a reader needs without torch (itemsize, float or not)."""

    __slots__ = ("name", "itemsize", "is_floating_point", "is_complex")

    def __init__(self, name: str, itemsize: int, is_floating_point: bool, is_complex: bool) -> None:
        for key, value in (("name", name), ("itemsize", itemsize), ("is_floating_point", is_floating_point),
                           ("is_complex", is_complex)):
            object.__setattr__(self, key, value)

    def _label(self) -> str:
        return f"torch.{self.name}"

    def __reduce__(self) -> Any:  # never written back out as a ckptscope object
        raise pickle.PicklingError(f"torch.{self.name} stand-in cannot be pickled; use DType.torch")

    @property
    def torch(self) -> torch.dtype:
        """The real torch dtype (imports torch: only for code that reads or makes tensors)."""
        import torch

        return getattr(torch, self.name)

    def __str__(self) -> str:
        return f"torch.{self.name}"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DType):
            return other is self
        if type(other).__name__ == "dtype" and type(other).__module__ == "torch":  # a real torch.dtype
            return str(other) == str(self)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))


# name, bytes per element, floating point, complex (torch 2.13; tests/test_dtypes.py compares).
_TABLE: tuple[tuple[str, int, bool, bool], ...] = (
    ("float64", 8, True, False), ("float32", 4, True, False), ("float16", 2, True, False),
    ("bfloat16", 2, True, False), ("float8_e4m3fn", 1, True, False), ("float8_e4m3fnuz", 1, True, False),
    ("float8_e5m2", 1, True, False), ("float8_e5m2fnuz", 1, True, False), ("float8_e8m0fnu", 1, True, False),
    ("float4_e2m1fn_x2", 1, True, False),
    ("complex128", 16, False, True), ("complex64", 8, False, True), ("complex32", 4, False, True),
    ("int64", 8, False, False), ("int32", 4, False, False), ("int16", 2, False, False), ("int8", 1, False, False),
    ("uint64", 8, False, False), ("uint32", 4, False, False), ("uint16", 2, False, False), ("uint8", 1, False, False),
    ("bool", 1, False, False),
    ("int1", 1, False, False), ("int2", 1, False, False), ("int3", 1, False, False), ("int4", 1, False, False),
    ("int5", 1, False, False), ("int6", 1, False, False), ("int7", 1, False, False),
    ("uint1", 1, False, False), ("uint2", 1, False, False), ("uint3", 1, False, False), ("uint4", 1, False, False),
    ("uint5", 1, False, False), ("uint6", 1, False, False), ("uint7", 1, False, False),
    ("qint32", 4, False, False), ("qint8", 1, False, False), ("quint8", 1, False, False),
    ("quint4x2", 1, False, False), ("quint2x4", 1, False, False),
    ("bits16", 2, False, False), ("bits8", 1, False, False), ("bits1x8", 1, False, False),
    ("bits2x4", 1, False, False), ("bits4x2", 1, False, False),
)
# torch's other names for the same dtypes (`torch.half is torch.float16`)
ALIASES = {"double": "float64", "float": "float32", "half": "float16", "cdouble": "complex128", "cfloat": "complex64",
           "chalf": "complex32", "long": "int64", "int": "int32", "short": "int16", "bit": "uint1"}

DTYPES: dict[str, DType] = {name: DType(name, size, flt, cplx) for name, size, flt, cplx in _TABLE}
DTYPES.update({alias: DTYPES[name] for alias, name in ALIASES.items()})

# Storage class names (as pickled in a storage's persistent id) -> dtype name
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
    "Float8E4m3fnStorage": "float8_e4m3fn", "Float8E5m2Storage": "float8_e5m2",
    "Float8E4m3fnuzStorage": "float8_e4m3fnuz", "Float8E5m2fnuzStorage": "float8_e5m2fnuz",
}


def dtype(name: str) -> DType:
    """The dtype called `name` (`bfloat16`, `torch.bfloat16`, an alias such as `half`)."""
    found = DTYPES.get(str(name).removeprefix("torch."))
    if found is None:
        raise ValueError(f"unknown dtype {str(name)[:40]!r}")
    return found


def as_torch(value: Any) -> torch.dtype:
    """A real torch dtype from a stand-in, a name or a torch dtype (imports torch)."""
    if isinstance(value, DType):
        return value.torch
    if isinstance(value, str):
        return dtype(value).torch
    return value


class Size(tuple):  # type: ignore[type-arg]
    """`torch.Size`: a tuple of ints (torch refuses any other element)."""

    __slots__ = ()

    def __new__(cls, dims: Any = ()) -> Size:
        items = tuple(dims)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in items):
            raise pickle.UnpicklingError("torch.Size of something other than ints refused")
        return super().__new__(cls, items)

    def __repr__(self) -> str:
        return f"torch.Size({list(self)!r})"


_DEVICE_RE = re.compile(r"^([a-z][a-z_]*)(?::(\d{1,6}))?$", re.ASCII)
# torch's device types (c10/core/DeviceType.h); any other name torch.device refuses
DEVICE_TYPES = frozenset({"cpu", "cuda", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia", "xla",
                          "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "xpu", "ipu", "privateuseone"})


class Device(Sealed):
    """`torch.device('cuda', 0)`: type and index, printed as torch prints them."""

    __slots__ = ("type", "index")

    def __init__(self, kind: Any, index: Any = None) -> None:
        match = _DEVICE_RE.match(kind) if isinstance(kind, str) else None
        if match is None or match.group(1) not in DEVICE_TYPES or (match.group(2) is not None and index is not None):
            raise pickle.UnpicklingError(f"torch.device({str(kind)[:40]!r}) refused")
        if match.group(2) is not None:
            index = int(match.group(2))
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not -1 <= index < 1 << 16):
            raise pickle.UnpicklingError("torch.device with a bad index refused")
        object.__setattr__(self, "type", match.group(1))
        object.__setattr__(self, "index", None if index is None or index < 0 else index)

    def _label(self) -> str:
        return "torch.device"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Device):
            return (self.type, self.index) == (other.type, other.index)
        return str(self) == str(other) if type(other).__name__ == "device" and type(other).__module__ == "torch" else NotImplemented

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device(type={self.type!r})" if self.index is None else f"device(type={self.type!r}, index={self.index})"


class Layout(Sealed):
    """`torch.strided` & co.: a name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def _label(self) -> str:
        return f"torch.{self.name}"

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    __str__ = __repr__


LAYOUTS: dict[str, Layout] = {name: Layout(name) for name in ("strided", "sparse_coo", "sparse_csr", "_mkldnn")}


def resolve(value: Any) -> Any:
    """torch's own dtype once torch is imported, else the stand-in: a value that travels from a
    reader (stand-in) into code that makes tensors (which has imported torch by then) arrives as
    torch's, while indexing and inspecting never import torch for it."""
    if isinstance(value, DType) and "torch" in sys.modules:
        return value.torch
    return value


class DTypeField:
    """A dataclass field holding a dtype given as a stand-in, a name or a torch dtype; reads
    give `resolve(value)`. The default is a stand-in, so defining the class imports nothing."""

    def __init__(self, default: str | None = None) -> None:
        self.default = DTYPES[default] if default else None

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            if self.default is None:  # dataclasses read this as "no default"
                raise AttributeError(self.slot)
            return self.default  # what dataclasses take as the field default
        return resolve(obj.__dict__.get(self.slot, self.default))

    def __set__(self, obj: Any, value: Any) -> None:
        if isinstance(value, str):
            value = dtype(value)
        obj.__dict__[self.slot] = value
