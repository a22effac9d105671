"""A restricted unpickler: an allowlist of harmless classes, inert placeholders for the rest.

Checkpoints from the wild are untrusted. `pickle` can call any importable callable, so the
only safe reader is one that decides what every GLOBAL resolves to. Here:

- a small allowlist maps to real objects that cannot run code (containers, `argparse.Namespace`,
  numpy arrays/scalars/dtypes) and to torch-free stand-ins for torch's dtypes, `torch.Size`,
  devices and layouts (`dtypes.py`) and DCP metadata dataclasses (`dcp_meta.py`): reading a
  pickle never imports torch (numpy is imported the first time a pickle names it);
- tensor rebuild functions map to hooks the caller provides (lazy tensors: no bytes read);
- everything else (`megatron.*` enums, Transformer Engine recipes, `os.system`, `builtins.eval`,
  `builtins.getattr`, ...) becomes a `Placeholder` subclass that records its qualified name and
  the arguments/state it was given, and does nothing else.

Nothing a checkpoint names is ever imported or called unless it is on the allowlist.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import functools
import io
import math
import os
import pickle
import reprlib
import threading
import types
from collections.abc import Callable
from itertools import repeat
from typing import Any, BinaryIO, ClassVar

from . import dcp_meta
from .dtypes import DTYPES, LAYOUTS, Device, Size


class Placeholder:
    """Inert stand-in for a class or callable the allowlist does not know.

    Calling the stand-in class (REDUCE) or constructing it (NEWOBJ) only records arguments;
    BUILD only records state. `qualname` says what the checkpoint asked for.
    """

    qualname: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        inst = object.__new__(cls)
        object.__setattr__(inst, "args", args)
        object.__setattr__(inst, "kwargs", kwargs)
        object.__setattr__(inst, "state", None)
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D107 - accept anything
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        """Calling a placeholder (a `getattr(...)(...)` chain) yields another inert placeholder."""
        return type(self)(self, *args, **kwargs)

    def __reduce__(self) -> Any:  # never re-pickle a placeholder as the original class
        raise pickle.PicklingError(f"placeholder for {self.qualname} cannot be pickled")

    # Containers sometimes get filled through APPEND/SETITEM on reconstructed objects.
    def append(self, item: Any) -> None:
        # In place: a pickle can APPEND millions of items; copying each time would be quadratic.
        if not isinstance(self.state, list):
            object.__setattr__(self, "state", [] if self.state is None else [self.state])
        self.state.append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def __setitem__(self, key: Any, value: Any) -> None:
        state = self.state if isinstance(self.state, dict) else {}
        state[key] = value
        object.__setattr__(self, "state", state)

    def describe(self, level: int = 3) -> str:
        """`qualname(args...)`, bounded in depth and length: the arguments are untrusted too."""
        if level <= 0:
            return f"{self.qualname}(...)"
        parts = [short_repr(a, level - 1) for a in self.args[:4]]
        if isinstance(self.state, dict):
            parts += [f"{short_repr(k, 1)}={short_repr(v, level - 1)}" for k, v in list(self.state.items())[:4]]
        text = ", ".join(parts)
        if len(text) > 120:
            text = text[:117] + "..."
        return f"{self.qualname}({text})"

    def __repr__(self) -> str:
        return f"<placeholder {self.describe()}>"


_placeholder_classes: dict[str, type[Placeholder]] = {}

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40


def short_repr(value: Any, level: int = 3) -> str:
    """A bounded repr for untrusted values: no deep recursion, no huge-int conversion, no crash.

    `repr()` of a pickled structure can recurse without bound (deep nesting, placeholder chains)
    or raise (ints past `sys.get_int_max_str_digits`); this never does.
    """
    if isinstance(value, Placeholder):
        return value.describe(level)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else f"<int of {value.bit_length()} bits>"
    if level <= 0:
        return "..."
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [short_repr(v, level - 1) for v in list(value)[:4]] if len(value) <= 10_000 else ["..."]
        more = ", ..." if len(value) > 4 else ""
        return f"{type(value).__name__}[{', '.join(items)}{more}]"
    if isinstance(value, dict):
        items = [f"{short_repr(k, 1)}: {short_repr(v, level - 1)}" for k, v in list(value.items())[:4]]
        return "{" + ", ".join(items) + (", ..." if len(value) > 4 else "") + "}"
    if isinstance(value, argparse.Namespace):
        return "Namespace" + short_repr(vars(value), level)
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails is still just a name
        return f"<{type(value).__name__}>"


def placeholder_class(module: str, name: str) -> type[Placeholder]:
    """One inert subclass per qualified name, so repeated objects share a type."""
    qualname = f"{module}.{name}"
    cls = _placeholder_classes.get(qualname)
    if cls is None:
        cls = type(f"Placeholder[{qualname}]", (Placeholder,), {"qualname": qualname})
        _placeholder_classes[qualname] = cls
    return cls


def is_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder)


class XserTensorRef:
    """torch_xla's `TensorReference`: only a tensor id pointing at `<file>.tensors/tensor_<tid>.pt`."""

    def __init__(self, tid: int | None = None) -> None:
        self.tid = tid

    def __repr__(self) -> str:
        return f"<xser tensor ref {self.tid}>"


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor without calling arbitrary __init__s (protocol 0/1 objects)."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        inst = cls()
        inst.__setstate__(state)
        return inst
    if cls in (collections.OrderedDict, dict, list, set, argparse.Namespace):
        return cls() if state is None else cls(state)
    return placeholder_class("copyreg", "_reconstructor")(cls, base, state)


# Limits on what an allowlisted constructor may be asked to build: a few pickle bytes must not
# allocate gigabytes (`bytes(10**10)`) or loop for hours (`set(range(10**12))`). On top of these
# per-object caps, one unpickling has a total budget (`MAX_TOTAL_ALLOC`, see `_Budget`): twenty
# allowed-size `frozenset(range(...))` must not add up to gigabytes either.
MAX_RANGE = 10_000_000
MAX_ALLOC = 1 << 30
MAX_TOTAL_ALLOC = 256 << 20  # bytes (estimated) that allowlisted constructors may build in one load, plus 2x the pickle
MAX_DEPTH = 10_000  # nesting of containers/objects; C code recurses on deeper ones (dealloc, hash)
ELEMENT_COST = 64  # estimated bytes per element an allowlisted constructor materialises


class _Budget:
    """What one unpickling may still allocate through allowlisted constructors (a counter, no pass)."""

    def __init__(self, limit: int = MAX_TOTAL_ALLOC) -> None:
        self.left = limit
        self.limit = limit

    def charge(self, cost: int, what: str) -> None:
        self.left -= cost
        if self.left < 0:
            raise pickle.UnpicklingError(f"{what} exceeds the allocation budget of one load ({self.limit >> 20} MiB); refused")


_current = threading.local()  # the budget of the load running in this thread


def _charge(cost: int, what: str) -> None:
    budget = getattr(_current, "budget", None)
    if budget is not None:
        budget.charge(cost, what)


def _safe_range(*args: Any) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise pickle.UnpicklingError(f"range of {len(r)} elements refused (limit {MAX_RANGE})")
    return r


def _sized(ctor: Callable[..., Any]) -> Callable[..., Any]:
    """`bytes(n)` / `bytearray(n)` with an integer size are allocation bombs; bound them."""

    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool):
            if args[0] > MAX_ALLOC:
                raise pickle.UnpicklingError(f"{ctor.__name__}({args[0]}) refused (limit {MAX_ALLOC} bytes)")
            _charge(args[0], f"{ctor.__name__}({args[0]})")
        return ctor(*args)

    build.__name__ = ctor.__name__
    return build


def _build_allowlist() -> dict[tuple[str, str], Any]:
    allow: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): lambda *a: collections.defaultdict(None),
        ("collections", "Counter"): collections.Counter,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): _sized(bytearray),
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("builtins", "range"): _safe_range,
        ("builtins", "object"): object,
        ("builtins", "bytes"): _sized(bytes),
        ("__builtin__", "bytes"): _sized(bytes),
        ("__builtin__", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("_codecs", "encode"): _codecs_encode,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("copy_reg", "_reconstructor"): _safe_reconstructor,
        ("argparse", "Namespace"): argparse.Namespace,
        ("_io", "BytesIO"): io.BytesIO,  # TE `_extra_state` blobs; state is just bytes
        ("io", "BytesIO"): io.BytesIO,
        ("types", "SimpleNamespace"): argparse.Namespace,
        ("torch", "Size"): Size,
        ("torch", "device"): Device,
        ("torch.serialization", "_get_layout"): _get_layout,
        ("torch_xla.utils.serialization", "TensorReference"): XserTensorRef,
        # torch DCP's `.metadata` keeps the checkpoint_id it was saved to (a PosixPath): its text
        **{(module, cls): _path_text for module in ("pathlib", "pathlib._local")
           for cls in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path", "PurePath")},
    }
    allow.update({("torch", name): value for name, value in DTYPES.items()})
    allow.update({("torch", name): value for name, value in LAYOUTS.items()})
    return allow


_TEXT_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"})


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # protocol-2 pickles of `bytes` go through _codecs.encode(text, 'latin1'); no other codec
    # lookup (which imports modules by name) is ever needed.
    if not isinstance(obj, str) or str(encoding).lower() not in _TEXT_CODECS or errors not in ("strict", "ignore", "replace"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {str(encoding)[:20]!r} refused")
    return obj.encode(encoding, errors)


def _path_text(*parts: Any) -> str:
    """A pickled path as the text of the path: a string opens nothing."""
    return "/".join(p for p in parts if isinstance(p, str))


def _get_layout(name: str) -> Any:
    return LAYOUTS.get(str(name).removeprefix("torch."), name)


@functools.cache
def _numpy_allowlist() -> dict[tuple[str, str], Any]:
    """numpy's arrays, scalars and dtypes; built (numpy imported) when a pickle first names numpy."""
    allow: dict[tuple[str, str], Any] = {}
    try:
        import numpy as np
    except Exception:  # noqa: BLE001
        return allow
    numpy_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        # numpy pickles always ask for shape (0,); anything else is an allocation from the file.
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("numpy _reconstruct of a class other than ndarray refused")
        _charge(math.prod(_dims(shape)) * ELEMENT_COST, "numpy array")
        return numpy_reconstruct(subtype, shape, dtype)

    scalar = np.float32(0).__reduce__()[0]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allow[(mod, "_reconstruct")] = reconstruct
        allow[(mod, "scalar")] = scalar
    allow[("numpy", "ndarray")] = np.ndarray
    allow[("numpy", "dtype")] = np.dtype
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                 "uint32", "uint64", "bool_"):
        allow[("numpy", name)] = getattr(np, name)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                allow[("numpy.dtypes", name)] = getattr(dtypes, name)
    return allow


def _dims(shape: Any) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"array shape {short_repr(shape, 1)} refused")
    return dims


def _check_ndarray_state(state: Any) -> None:
    """ndarray.__setstate__ allocates shape x itemsize before it looks at the data: a 60-byte pickle
    could ask for gigabytes of object pointers. Check and charge the size first."""
    import numpy as np

    if not (isinstance(state, tuple) and len(state) in (4, 5)):
        raise pickle.UnpicklingError("garbled numpy array state")
    shape, dtype, data = state[-4], state[-3], state[-1]
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("numpy array state without a dtype")
    count = math.prod(_dims(shape))
    if dtype.hasobject:
        if not isinstance(data, list) or len(data) != count:
            raise pickle.UnpicklingError(f"numpy object array of {count} elements without as many values refused")
    elif not isinstance(data, (bytes, bytearray, str)) or len(data) != count * dtype.itemsize:  # str: Python 2 pickles
        got = len(data) if isinstance(data, (bytes, bytearray, str)) else "no"
        raise pickle.UnpicklingError(f"numpy array of {count} x {dtype.itemsize} bytes with {got} data bytes refused")
    if dtype.hasobject:  # a pointer per element; other arrays keep the pickle's own bytes
        _charge(count * 8, "numpy object array")


ALLOWLIST: dict[tuple[str, str], Any] = _build_allowlist()

RebuildHook = Callable[..., Any]

_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: static and extension types refuse setattr
_PLACEHOLDER_KEYS = frozenset(vars(placeholder_class("ckptscope", "probe")))


def _snapshot(objs: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """Attributes of the Python-level classes and functions a pickle can name.

    BUILD with a slot state does `setattr(obj, key, value)` on whatever is on the stack, and a
    GLOBAL can put an allowlisted class itself there: without this check a checkpoint could
    rewrite `argparse.Namespace` (or our own hooks) for the rest of the process.
    """
    out: list[tuple[Any, dict[str, Any]]] = []
    seen: set[int] = set()
    for obj in objs:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type):
            if not obj.__flags__ & _IMMUTABLE_TYPE:
                out.append((obj, dict(vars(obj))))
        elif isinstance(obj, types.FunctionType):
            out.append((obj, {"__defaults__": obj.__defaults__, "__kwdefaults__": obj.__kwdefaults__,
                              "__dict__": dict(obj.__dict__)}))
    return out


def _restore(snap: list[tuple[Any, dict[str, Any]]]) -> list[str]:
    """Undo any change to the snapshotted objects; return what had been changed."""
    changed: list[str] = []
    for obj, before in snap:
        name = getattr(obj, "__qualname__", type(obj).__name__)
        if isinstance(obj, type):
            now = dict(vars(obj))
            for key in now.keys() - before.keys():
                if _benign(obj, key, now[key]):
                    continue
                changed.append(f"{name}.{key}")
                type.__delattr__(obj, key)
            for key, value in before.items():
                if now.get(key, _MISSING) is not value and not _benign(obj, key, now.get(key, _MISSING)):
                    changed.append(f"{name}.{key}")
                    type.__setattr__(obj, key, value)
        else:
            if obj.__defaults__ is not before["__defaults__"] or obj.__kwdefaults__ is not before["__kwdefaults__"]:
                changed.append(f"{name}.__defaults__")
                obj.__defaults__, obj.__kwdefaults__ = before["__defaults__"], before["__kwdefaults__"]
            if obj.__dict__ != before["__dict__"]:
                changed.append(f"{name}.__dict__")
                obj.__dict__.clear()
                obj.__dict__.update(before["__dict__"])
    return changed


def _fresh_placeholders(known: set[str]) -> list[str]:
    """Placeholder classes created during one load must still hold only what `type()` gave them."""
    changed = []
    for qualname, cls in list(_placeholder_classes.items()):
        if qualname in known:
            continue
        extra = set(vars(cls)) - _PLACEHOLDER_KEYS
        for key in extra:
            type.__delattr__(cls, key)
        if extra or vars(cls).get("qualname") != qualname:
            type.__setattr__(cls, "qualname", qualname)
            changed.append(f"placeholder {qualname}")
    return changed


_MISSING = object()


def _benign(cls: type, key: str, value: Any) -> bool:
    """copyreg caches `__slotnames__` on a class the first time one is pickled (possibly in another
    thread during our load); that is the interpreter, not the checkpoint, if it holds the real slots."""
    if key != "__slotnames__" or not isinstance(value, list):
        return False
    declared = {n for c in cls.__mro__ for n in (c.__dict__.get("__slots__") or ()) if isinstance(n, str)}
    return all(isinstance(n, str) for n in value) and set(value) <= declared


_ATOMS = frozenset({str, bytes, int, float, bool, type(None), complex})  # hold no other object
_SIZED = (range, str, bytes, bytearray, list, tuple, dict, set, frozenset)
_EMPTY = ()  # EMPTY_TUPLE pushes this very object: `f()` takes nothing to charge or nest
_LOAD_LOCK = threading.RLock()  # one load at a time: a refused mutation is blamed on the right file
_DICT_STATE_KEYS = frozenset({"_metadata"})  # torch state dicts carry `_metadata` as an attribute


def _build_op(name: str) -> Callable[[Any], None]:
    """An opcode that builds one object from the items after a MARK: record the new object's
    depth, charge its size."""
    base = getattr(pickle._Unpickler, name)

    def run(self: RestrictedUnpickler) -> None:
        items = self.stack
        budget = self._budget
        budget.left -= len(items) * 8
        if budget.left < 0:
            budget.charge(0, "a container")
        if self._atoms.issuperset(map(type, items)):
            base(self)
            return
        depth = 1 + max(map(self._depths.get, map(id, items), repeat(1)))
        base(self)
        if depth >= 2:
            self._set_depth(self.stack[-1], depth)

    return run


def _tuple_op(arity: int) -> Callable[[Any], None]:
    """TUPLE1/2/3 done inline (the commonest opcodes of a torch pickle: sizes and strides)."""

    def run(self: RestrictedUnpickler) -> None:
        stack = self.stack
        items = stack[-arity:]
        stack[-arity:] = [tuple(items)]
        if self._atoms.issuperset(map(type, items)):
            return
        depth = 1 + max(map(self._depths.get, map(id, items), repeat(1)))
        if depth >= 2:
            self._set_depth(stack[-1], depth)

    return run


def _call_op(name: str, arity: int) -> Callable[[Any], None]:
    """REDUCE / NEWOBJ / NEWOBJ_EX: charge what an allowlisted callable materialises from its args."""
    base = getattr(pickle._Unpickler, name)

    def run(self: RestrictedUnpickler) -> None:
        func = self.stack[-arity]
        if id(func) in self._free or self.stack[-1] is _EMPTY:  # rebuild hooks (a LazyTensor holds nothing pickled), f()
            base(self)
            return
        rest = self.stack[-arity + 1:]
        # The result holds what the argument tuple holds: as deep as that tuple (not one more).
        depth = max(map(self._depths.get, map(id, rest), repeat(1)))
        if rest != [()]:
            self._charge_call(func, rest)
        base(self)
        if depth >= 2:
            self._set_depth(self.stack[-1], depth)

    return run


def _fill_op(name: str, marked: bool, arity: int = 0) -> Callable[[Any], None]:
    """APPEND(S) / SETITEM(S) / ADDITEMS: items go into an existing container; it gets deeper."""
    base = getattr(pickle._Unpickler, name)

    def run(self: RestrictedUnpickler) -> None:
        if marked:
            items, target = self.stack, self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        else:
            items, target = self.stack[-arity:], self.stack[-arity - 1] if len(self.stack) > arity else None
        self._budget.charge(len(items) * 8, "a container")
        depth = self._outer(items)
        base(self)
        if target is not None and depth >= 2 and depth > self._depth(target):
            self._set_depth(target, depth)

    return run


def _size_of(file: BinaryIO) -> int:
    """Bytes in the pickle stream: a big pickle may legitimately build as much again (protocol 2
    turns every `bytes` into `_codecs.encode(text)`, a copy), so the budget grows with it."""
    if isinstance(file, io.BytesIO):
        return file.getbuffer().nbytes
    if isinstance(getattr(file, "size", None), int):  # a remote reader (storage.RemoteFile)
        return int(file.size)  # type: ignore[attr-defined]
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


class RestrictedUnpickler(pickle._Unpickler):
    """Allowlist unpickler. `hooks` add callables for (module, name) pairs, e.g. tensor rebuilds.

    Built on pickle's pure-Python unpickler, whose memo is a dict: the C one grows an array to
    the index a PUT names, so one mutated `LONG_BINPUT` in a 435-byte pickle made it allocate
    and zero gigabytes for 40 s (found by the fuzz tests). The price is ~35 % more time on a
    data.pkl of 100k tensors (3.4 s against 2.5 s), nothing on ordinary checkpoints.

    Every opcode that builds or fills a container also records the nesting depth of the result
    (a dict by object id, only for depth >= 2) and charges a per-load allocation budget: depth is
    bounded without recursion (C code - dealloc of slices and numpy object arrays, tuple hashing -
    recurses on deep structures and overflows the C stack), and no sequence of allowed-size
    constructors adds up to gigabytes.

    `persistent_load` is routed to `persistent` (a callable) when given; otherwise persistent
    ids become placeholders.
    """

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file: BinaryIO,
        *,
        hooks: dict[tuple[str, str], Any] | None = None,
        persistent: Callable[[Any], Any] | None = None,
        seen: set[str] | None = None,
        atoms: frozenset[type] = frozenset(),
    ) -> None:
        super().__init__(file, encoding="latin1")
        self._atoms = _ATOMS | atoms  # types that hold no pickled object (a caller's storage refs)
        self._hooks = hooks or {}
        self._persistent = persistent
        self.placeholders: set[str] = seen if seen is not None else set()
        self._depths: dict[int, int] = {}
        self._budget = _Budget(MAX_TOTAL_ALLOC + 2 * _size_of(file))
        self._snap: list[tuple[Any, dict[str, Any]]] = []
        self._snapped: set[int] = set()
        self._free = frozenset(id(h) for h in self._hooks.values())

    # ----- depth and budget ------------------------------------------------------------
    def _outer(self, items: list[Any]) -> int:
        """Depth of a new object holding `items` (exact: atoms are 0, unrecorded containers 1)."""
        if self._atoms.issuperset(map(type, items)):
            return 1
        return 1 + max(map(self._depths.get, map(id, items), repeat(1)))

    def _depth(self, obj: Any) -> int:
        if type(obj) in self._atoms:
            return 0
        return self._depths.get(id(obj), 1)

    def _set_depth(self, obj: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"structure nested more than {MAX_DEPTH} levels deep; refused")
        if depth >= 2 and type(obj) not in self._atoms:
            self._depths[id(obj)] = depth

    def _charge_call(self, func: Any, args: list[Any]) -> None:
        """An allowlisted callable copies what it is given (set(range(n)), list(d), Size(t))."""
        if id(func) in self._free or isinstance(func, Placeholder) or (isinstance(func, type) and issubclass(func, Placeholder)):
            return
        for arg in args:
            for item in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(item, _SIZED):  # text and bytes are copied byte for byte; containers make objects
                    cost = len(item) * (1 if isinstance(item, (str, bytes, bytearray)) else ELEMENT_COST)
                    self._budget.charge(cost, f"{getattr(func, '__name__', 'a constructor')}() of {len(item)} elements")

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, dict) and not (isinstance(state, dict) and state.keys() <= _DICT_STATE_KEYS):
            # A dict has no state of its own: BUILD on it hides entries as attributes (or sets
            # attributes torch would see and we would not). torch.save only ever adds `_metadata`.
            raise pickle.UnpicklingError("pickle applies object state (BUILD) to a dict; refused")
        if isinstance(inst, (list, tuple, set, frozenset)) or type(inst) in self._atoms:  # atoms: a lazy tensor's offset
            raise pickle.UnpicklingError(f"pickle applies object state (BUILD) to a {type(inst).__name__}; refused")
        if type(inst).__module__ == "numpy" and type(inst).__name__ == "ndarray":
            _check_ndarray_state(state)
        slots = state[1] if isinstance(state, tuple) and len(state) == 2 else None
        if callable(inst) and not isinstance(inst, Placeholder):  # a class or function itself
            keys = [str(k) for part in (state if isinstance(state, tuple) else (state,)) if isinstance(part, dict) for k in part]
            name = getattr(inst, "__qualname__", type(inst).__name__)
            raise pickle.UnpicklingError(f"pickle tried to modify {', '.join(f'{name}.{k}' for k in sorted(keys)[:3]) or name}; refused")
        if isinstance(slots, dict) and any(isinstance(k, str) and k.startswith("__") for k in slots):
            raise pickle.UnpicklingError("pickle sets a special attribute through BUILD slot state; refused")
        if isinstance(state, (dict, tuple)):
            self._budget.charge(len(state) * 8, "object state")
        depth = 1 + self._depth(state)
        pickle._Unpickler.load_build(self)
        if depth > self._depth(inst):
            self._set_depth(inst, depth)

    for _name in ("load_tuple", "load_list", "load_dict", "load_frozenset", "load_obj", "load_inst"):
        dispatch[getattr(pickle, _name.removeprefix("load_").upper())[0]] = _build_op(_name)
    for _arity, _code in ((1, pickle.TUPLE1), (2, pickle.TUPLE2), (3, pickle.TUPLE3)):
        dispatch[_code[0]] = _tuple_op(_arity)
    for _name, _arity in (("load_reduce", 2), ("load_newobj", 2), ("load_newobj_ex", 3)):
        dispatch[getattr(pickle, _name.removeprefix("load_").upper())[0]] = _call_op(_name, _arity)
    for _name, _marked, _arity in (("load_append", False, 1), ("load_appends", True, 0), ("load_setitem", False, 2),
                                   ("load_setitems", True, 0), ("load_additems", True, 0)):
        dispatch[getattr(pickle, _name.removeprefix("load_").upper())[0]] = _fill_op(_name, _marked, _arity)
    dispatch[pickle.BUILD[0]] = load_build
    del _name, _arity, _marked, _code

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # OBJ and INST call the class
        self._charge_call(klass, [tuple(args)])
        super()._instantiate(klass, args)

    # ----- classes ----------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        # Python 2 era names (protocol < 3 pickles say `__builtin__`): normalise like pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in self._hooks:
            found = self._hooks[key]
        elif key in ALLOWLIST:
            found = ALLOWLIST[key]
        elif key in dcp_meta.ALLOWLIST:
            found = dcp_meta.ALLOWLIST[key]
        elif module.startswith("numpy") and key in _numpy_allowlist():
            found = _numpy_allowlist()[key]
        else:
            self.placeholders.add(f"{module}.{name}")
            found = placeholder_class(module, name)
        self._watch(found)
        return found

    def _watch(self, obj: Any) -> None:
        """Snapshot a class or function the moment the pickle first names it (before it can touch it)."""
        if id(obj) not in self._snapped:
            self._snapped.add(id(obj))
            self._snap += _snapshot([obj])

    def load(self) -> Any:
        """Unpickle; refuse (and undo) any attempt to modify an allowlisted class or function."""
        with _LOAD_LOCK:
            outer = getattr(_current, "budget", None)
            _current.budget = self._budget
            self._watch(Placeholder)
            known = set(_placeholder_classes)
            try:
                return super().load()
            finally:
                _current.budget = outer
                changed = _restore(self._snap) + _fresh_placeholders(known)
                self._depths.clear()
                if changed:
                    raise pickle.UnpicklingError(f"pickle tried to modify {', '.join(sorted(changed)[:3])}; refused")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is not None:
            return self._persistent(pid)
        self.placeholders.add("<persistent id>")
        return placeholder_class("<persistent>", "id")(pid)


def safe_loads(data: bytes, **kwargs: Any) -> Any:
    """Unpickle bytes with the allowlist (no tensors expected)."""
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()
