"""Raw pickle payloads and the tools to plant them inside real checkpoint containers.

Each payload is a run of opcodes that pushes exactly one object and uses no memo slots, so it can
replace any value inside a pickle stream: a sentinel string written by `torch.save`, or a new
entry appended to a top-level dict. Every payload that could run code would `touch` the canary
file; the tests assert that file never appears.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

SENTINEL = "CKPTSCOPE_HOSTILE_SENTINEL"


def ustr(text: str) -> bytes:
    """BINUNICODE: push a str."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0 form, accepted in every protocol)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call1(func: bytes, arg: bytes) -> bytes:
    """func(arg) with TUPLE1 + REDUCE."""
    return func + arg + b"\x85R"


def long_int(value: int) -> bytes:
    """LONG1 / LONG4: push an arbitrary-size int."""
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"\x8b" + struct.pack("<I", len(raw)) + raw


def put(index: int) -> bytes:
    """LONG_BINPUT at a high index the host pickle does not use."""
    return b"r" + struct.pack("<I", 1_000_000 + index)


def get(index: int) -> bytes:
    return b"j" + struct.pack("<I", 1_000_000 + index)


def shell(canary: Path) -> str:
    return f"touch {canary}"


def python_code(canary: Path) -> str:
    return f"__import__('os').system('touch {canary}')"


# ----- payloads: canary -> opcodes pushing one object ---------------------------------------------
Payload = Callable[[Path], bytes]


def p_os_system(c: Path) -> bytes:
    return call1(glob("os", "system"), ustr(shell(c)))


def p_posix_system(c: Path) -> bytes:
    return call1(glob("posix", "system"), ustr(shell(c)))


def p_subprocess(c: Path) -> bytes:
    argv = b"](" + ustr("sh") + ustr("-c") + ustr(shell(c)) + b"e"
    return call1(glob("subprocess", "check_call"), argv)


def p_eval(c: Path) -> bytes:
    return call1(glob("builtins", "eval"), ustr(python_code(c)))


def p_exec(c: Path) -> bytes:
    return call1(glob("builtins", "exec"), ustr(python_code(c)))


def p_getattr_chain(c: Path) -> bytes:
    """builtins.getattr(builtins.__import__('os'), 'system')('touch canary')."""
    module = call1(glob("builtins", "__import__"), ustr("os"))
    system = glob("builtins", "getattr") + module + ustr("system") + b"\x86R"
    return system + ustr(shell(c)) + b"\x85R"


def p_inst(c: Path) -> bytes:
    """INST: MARK args `i module\\nname\\n` (protocol 0 instantiation)."""
    return b"(" + ustr(shell(c)) + b"ios\nsystem\n"


def p_obj(c: Path) -> bytes:
    """OBJ: MARK class args `o` (protocol 1 instantiation)."""
    return b"(" + glob("os", "system") + ustr(shell(c)) + b"o"


def p_newobj(c: Path) -> bytes:
    return glob("os", "system") + ustr(shell(c)) + b"\x85\x81"


def p_newobj_ex(c: Path) -> bytes:
    return glob("os", "system") + ustr(shell(c)) + b"\x85}\x92"


def p_stack_global(c: Path) -> bytes:
    """STACK_GLOBAL (protocol 4) naming builtins.exec from strings on the stack."""
    return ustr("builtins") + ustr("exec") + b"\x93" + ustr(python_code(c)) + b"\x85R"


def p_ext(c: Path) -> bytes:
    """EXT1 code 1: a copyreg extension code (none registered) followed by a call."""
    return b"\x82\x01" + ustr(shell(c)) + b"\x85R"


def p_persistent(c: Path) -> bytes:
    """BINPERSID with a shell command as the persistent id."""
    return ustr(shell(c)) + b"Q"


def p_build_mutation(c: Path) -> bytes:
    """BUILD with slot state on the class argparse.Namespace: rewrite its __init__ process-wide."""
    state = b"N}" + ustr("__init__") + glob("os", "system") + b"s\x86"
    return glob("argparse", "Namespace") + state + b"b"


def p_pickle_loads(c: Path) -> bytes:
    """pickle.loads(<inner malicious pickle>): the inner pickle must never be handed to pickle."""
    inner = b"\x80\x02" + p_os_system(c) + b"."
    return call1(glob("pickle", "loads"), b"C" + bytes([len(inner)]) + inner if len(inner) < 256 else b"B" + struct.pack("<I", len(inner)) + inner)


def p_torch_load(c: Path) -> bytes:
    return call1(glob("torch", "load"), ustr(str(c)))


def p_numpy_runstring(c: Path) -> bytes:
    """A known numpy gadget: numpy.testing._private.utils.runstring(code, globals)."""
    return glob("numpy.testing._private.utils", "runstring") + ustr(python_code(c)) + b"}\x86R"


def p_runpy(c: Path) -> bytes:
    return glob("runpy", "_run_code") + ustr(python_code(c)) + b"}\x86R"


def p_codecs(c: Path) -> bytes:
    """_codecs.encode (allowlisted for bytes) asked for a codec other than latin1/utf-8."""
    return glob("_codecs", "encode") + ustr(shell(c)) + ustr("rot13") + b"\x86R"


def p_copyreg(c: Path) -> bytes:
    """copyreg._reconstructor(os.system, object, state): the protocol 0/1 object path."""
    return glob("copyreg", "_reconstructor") + b"(" + glob("os", "system") + glob("builtins", "object") + ustr(shell(c)) + b"tR"


def p_range_bomb(c: Path) -> bytes:
    """set(range(10**12)): allowlisted pieces, an hour of CPU."""
    return call1(glob("builtins", "set"), glob("builtins", "range") + long_int(10**12) + b"\x85R")


def p_bytes_bomb(c: Path) -> bytes:
    """bytes(10**11): 100 GB from 20 pickle bytes."""
    return call1(glob("builtins", "bytes"), long_int(10**11))


def p_deep(c: Path) -> bytes:
    """os.system(...) wrapped in 50 000 nested one-element tuples."""
    return p_os_system(c) + b"\x85" * 50_000


def p_memo_dag(c: Path) -> bytes:
    """'Billion laughs': 64 levels of {"a": d, "b": d} sharing one dict through the memo."""
    out = p_posix_system(c) + put(0) + b"0"
    for level in range(64):
        out += b"}(" + ustr("a") + get(level) + ustr("b") + get(level) + b"u" + put(level + 1) + b"0"
    return out + get(64)


def p_huge_int(c: Path) -> bytes:
    """An int of 200 000 decimal digits: printing it raises ValueError in Python >= 3.11."""
    return long_int(7**236_000)


# ----- planting ---------------------------------------------------------------------------
def plant_sentinel(pkl: bytes, payload: bytes) -> bytes:
    """Replace the BINUNICODE sentinel that torch.save wrote with the payload opcodes."""
    needle = ustr(SENTINEL)
    assert pkl.count(needle) == 1, "sentinel must occur exactly once"
    return pkl.replace(needle, payload)


def plant_top(pkl: bytes, key: str, payload: bytes) -> bytes:
    """Add `key: payload` to a pickle whose top-level object is a dict (SETITEM before STOP)."""
    assert pkl.endswith(b"."), "not a complete pickle"
    return pkl[:-1] + ustr(key) + payload + b"s."


def rewrite_zip_pickle(path: Path, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite `*/data.pkl` of a torch zip file in place (members stay stored, uncompressed)."""
    with zipfile.ZipFile(path) as zf:
        members = [(info.filename, zf.read(info.filename)) for info in zf.infolist()]
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, edit(data) if name.endswith("data.pkl") else data)
    os.replace(tmp, path)


def rewrite_legacy_pickle(path: Path, payload: bytes) -> None:
    """Legacy (non-zip) torch files hold the object pickle inline: replace the sentinel there."""
    data = path.read_bytes()
    path.write_bytes(plant_sentinel(data, payload))


def torch_zip(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, prefix: str = "archive") -> Path:
    """A torch-format zip built by hand: data.pkl, byteorder, version, raw storages."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        zf.writestr(f"{prefix}/byteorder", b"little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"{prefix}/data/{key}", raw)
        zf.writestr(f"{prefix}/version", b"3\n")
    return path


def dump(obj: object, protocol: int = 2) -> bytes:
    import pickle

    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()
