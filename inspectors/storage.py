"""Checkpoints where they live: `s3://`, `http(s)://` and any other fsspec URL as a path.

The readers walk folders with pathlib (`/`, `iterdir`, `is_file`, `stat`) and read files through
`files.open_regular`. `RemotePath` speaks that same subset over an fsspec filesystem, and
`RemoteFile` is a seekable read-only file over ranged requests, so every reader works unchanged
on a URL and reads the same bytes it reads locally: headers, pickles, zip directories.

Why a cache of its own rather than fsspec's file objects: the readers reopen a file for each
tensor, and an inspect must stay within a byte budget (a few requests per file). Small reads go
through a process-wide cache of fetched segments (a 64 KiB window, the file's tail fetched at
once for zip directories, a growing read-ahead on sequential reads); large reads bypass it and
are fetched in parallel parts straight into the caller's buffer, each part retried with back-off.
Credentials and endpoints are whatever fsspec and its backends take (environment, profiles,
`configure(...)` from `--storage-option`); nothing is stored.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import stat as stat_mod
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

# ckptscope's own knobs, set with `--storage-option read_concurrency=16` etc.; every other key goes to fsspec.
SETTINGS: dict[str, int] = {
    "read_concurrency": 8,  # parallel range requests for one large read
    "read_retries": 4,  # attempts after the first, with exponential back-off
    "read_part": 8 << 20,  # bytes per parallel part of a large read
    "write_part": 16 << 20,  # multipart upload part size of an s3:// output (S3's minimum is 5 MiB)
}
BLOCK = 32 << 10  # smallest fetch: a safetensors header or a small pickle fits in one
TAIL = 16 << 10  # a read near the end fetches the whole tail: a zip's end record and central directory
LARGE = 1 << 20  # reads this big are tensor data, read through aligned `read_part` blocks; the largest small-read window
CACHE_LIMIT = 128 << 20  # segments kept in memory across all files (16 blocks of tensor data)
BACKOFF = 0.2  # seconds before the first retry, doubled each time

_options: dict[str, Any] = {}
_lock = threading.RLock()


def is_url(value: object) -> bool:
    return isinstance(value, str) and bool(URL_RE.match(value))


def parse_option(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; values that read as JSON (true, 8, {"a": 1}) are decoded."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"storage option {text!r} is not key=value")
    try:
        decoded: Any = json.loads(value)
    except ValueError:
        decoded = value
    return key.strip(), decoded


def configure(options: Mapping[str, Any]) -> None:
    """Options for the filesystems (`endpoint_url`, `anon`, `profile`; `s3.key=` scopes a key to
    one protocol) and ckptscope's read settings. Kept in memory for this process only."""
    with _lock:
        for key, value in options.items():
            if key in SETTINGS:
                SETTINGS[key] = int(value)
            else:
                _options[key] = value
        _blobs.clear()


def _options_for(protocol: str) -> dict[str, Any]:
    out = {k: v for k, v in _options.items() if "." not in k}
    out.update({k.split(".", 1)[1]: v for k, v in _options.items() if k.startswith(protocol + ".")})
    return out


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec.core
    except ImportError:
        raise CheckpointError(url, "reading URLs needs fsspec: pip install 'ckptscope[s3]'") from None
    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.core.url_to_fs(url, **_options_for(protocol))
    except (ImportError, ValueError) as exc:
        raise CheckpointError(url, f"cannot open {protocol}:// URLs: {str(exc).splitlines()[0][:200]} "
                                   f"(pip install 'ckptscope[s3]' for s3:// and http://)") from None
    except TypeError as exc:
        raise CheckpointError(url, f"bad --storage-option for {protocol}://: {exc}") from None


# ----- errors -------------------------------------------------------------------------------------
_PERMANENT = (
    ("NoCredentialsError", ("no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
                           "or pass --storage-option anon=true for a public bucket)")),
    ("PartialCredentialsError", "incomplete credentials ({exc})"),
    ("NoSuchBucket", "no such bucket"),
    ("PermissionError", "access denied ({exc})"),
    ("FileNotFoundError", "no such object or folder"),
    ("InvalidAccessKeyId", "access denied: the access key id is not valid"),
    ("SignatureDoesNotMatch", "access denied: the secret key does not match"),
)


def describe(exc: BaseException) -> str | None:
    """One line for an error that retrying cannot fix, or None for a transient one."""
    names = {t.__name__ for t in type(exc).__mro__}
    text = f"{exc}"
    for name, message in _PERMANENT:
        if name in names or name in text:
            return message.format(exc=" ".join(text.split())[:160])
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return f"HTTP {status} ({' '.join(text.split())[:160]})"
    return None


def _retrying(url: str, what: str, call: Any) -> Any:
    """`call()` retried with back-off on transient failures; a permanent one is one line at once."""
    attempts = SETTINGS["read_retries"] + 1
    for attempt in range(attempts):
        try:
            return call()
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - backends raise anything; classify, then retry or refuse
            permanent = describe(exc)
            if permanent is not None:
                raise CheckpointError(url, permanent) from None
            if attempt + 1 == attempts:
                detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                raise CheckpointError(url, f"{what} failed after {attempts} attempts ({detail}); "
                                           f"the connection dropped or the server kept failing, rerun the command") from None
            time.sleep(BACKOFF * (2**attempt))
    raise AssertionError("unreachable")


# ----- paths --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteStat:
    st_size: int
    st_mtime: float
    st_mode: int

    @property
    def st_mtime_ns(self) -> int:
        return int(self.st_mtime * 1e9)


_FILE_MODE = stat_mod.S_IFREG | 0o444
_DIR_MODE = stat_mod.S_IFDIR | 0o555


class RemotePath:
    """The pathlib subset the readers use, over one fsspec filesystem. Names are object keys:
    there are no symlinks, FIFOs or devices to refuse, and `resolve` is the path itself."""

    __slots__ = ("_root", "fs", "key", "url")

    def __init__(self, url: str, fs: Any = None, key: str | None = None, root: str | None = None) -> None:
        if fs is None:
            fs, key = _filesystem(url)
        self.fs = fs
        self.key = str(key).rstrip("/") if key is not None else url
        self.url = url.rstrip("/")
        self._root = root if root is not None else _root_of(self.key, fs)

    # pure path operations
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __hash__(self) -> int:
        return hash(("remote", self.url))

    def __truediv__(self, name: str) -> RemotePath:
        out = self
        for part in str(name).split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                out = out.parent
                continue
            out = RemotePath(f"{out.url}/{part}", out.fs, f"{out.key}/{part}", out._root)
        return out

    @property
    def name(self) -> str:
        return "" if self.key == self._root else self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name

    @property
    def parent(self) -> RemotePath:
        if self.key == self._root:
            return self
        key = self.key.rsplit("/", 1)[0]
        url = self.url.rsplit("/", 1)[0]
        return RemotePath(url, self.fs, key, self._root)

    @property
    def parents(self) -> list[RemotePath]:
        out, cur = [], self
        while cur.key != cur._root:
            cur = cur.parent
            out.append(cur)
        return out

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.key.split("/") if p)

    def relative_to(self, other: RemotePath) -> str:
        if not isinstance(other, RemotePath) or not (self.key + "/").startswith(other.key + "/"):
            raise ValueError(f"{self} is not inside {other}")
        return self.key[len(other.key) + 1:] or "."

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def is_absolute(self) -> bool:
        return True

    def resolve(self, strict: bool = False) -> RemotePath:
        if strict and not self.exists():
            raise FileNotFoundError(2, "no such object or folder", self.url)
        return self

    def expanduser(self) -> RemotePath:
        return self

    def absolute(self) -> RemotePath:
        return self

    # queries (one listing per folder, cached for the process)
    def _entry(self) -> dict[str, Any] | None:
        return _entry(self)

    def exists(self) -> bool:
        return self._entry() is not None

    def is_file(self) -> bool:
        entry = self._entry()
        return entry is not None and entry["type"] == "file"

    def is_dir(self) -> bool:
        entry = self._entry()
        return entry is not None and entry["type"] == "directory"

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> RemoteStat:
        entry = self._entry()
        if entry is None:
            raise FileNotFoundError(2, "no such object or folder", self.url)
        if entry["type"] == "directory":
            return RemoteStat(0, 0.0, _DIR_MODE)
        return RemoteStat(_size(self, entry), _mtime(entry), _FILE_MODE)

    lstat = stat

    def iterdir(self) -> Iterator[RemotePath]:
        for name in _listing(self):
            yield self / name

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        for child in self.iterdir():
            if fnmatch.fnmatchcase(child.name, pattern):
                yield child

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        for child in sorted(self.iterdir()):
            if fnmatch.fnmatchcase(child.name, pattern):
                yield child
            if child.is_dir():
                yield from child.rglob(pattern)

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def open(self, mode: str = "rb") -> RemoteFile:
        if mode != "rb":
            raise io.UnsupportedOperation("remote paths are read-only here; use storage.open_upload")
        return open_remote(self, "file")


def _root_of(key: str, fs: Any) -> str:
    """The top a path cannot go above: the bucket of `bucket/key`, the host of an HTTP URL."""
    if "://" in key:  # HTTP filesystems keep whole URLs as paths
        scheme, rest = key.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}"
    return key.split("/", 1)[0]


def as_path(value: Any) -> Any:
    """A `RemotePath` for a URL or a remote path, else a `pathlib.Path` (how every reader takes paths)."""
    from pathlib import Path

    if isinstance(value, RemotePath):
        return value
    if is_url(value):
        return RemotePath(value)
    return Path(value)


def is_remote(value: Any) -> bool:
    return isinstance(value, RemotePath) or is_url(value)


# ----- listings and entries -------------------------------------------------------------------------
_listings: dict[tuple[int, str], dict[str, dict[str, Any]] | None] = {}
_entries: dict[tuple[int, str], dict[str, Any] | None] = {}


def _http(path: RemotePath) -> bool:
    return "://" in path.key


def _listing(path: RemotePath) -> dict[str, dict[str, Any]]:
    """Children of a folder by name (one LIST, cached); an unlistable folder is empty."""
    cache_key = (id(path.fs), path.key)
    with _lock:
        if cache_key in _listings:
            return _listings[cache_key] or {}
    try:
        found = _retrying(path.url, "listing", lambda: path.fs.ls(path.key + ("/" if _http(path) else ""), detail=True))
    except CheckpointError as exc:
        if "no such" not in exc.problem:
            raise
        found = None
    children: dict[str, dict[str, Any]] | None = None
    if found is not None:
        children = {}
        prefix = path.key + "/"
        for entry in found:
            name = str(entry.get("name", "")).rstrip("/")
            if not name.startswith(prefix) or name == path.key:
                continue
            rest = name[len(prefix):]
            if not rest or "/" in rest or rest in (".", ".."):
                continue
            kind = "directory" if entry.get("type") == "directory" or str(entry.get("name", "")).endswith("/") else "file"
            children[rest] = {**entry, "type": kind}
    with _lock:
        _listings[cache_key] = children
    return children or {}


def _entry(path: RemotePath) -> dict[str, Any] | None:
    if path.key == path._root:
        return {"type": "directory"}
    cache_key = (id(path.fs), path.key)
    with _lock:
        if cache_key in _entries:
            return _entries[cache_key]
        parent_listed = (id(path.fs), path.parent.key) in _listings
    entry: dict[str, Any] | None
    if not _http(path) or parent_listed:
        entry = _listing(path.parent).get(path.name)
        if entry is None and _http(path) is False and not _listing(path.parent):
            entry = _info(path)  # a bucket root we may not list, or a key without a listable parent
    else:
        entry = _info(path)
    with _lock:
        _entries[cache_key] = entry
    return entry


def _info(path: RemotePath) -> dict[str, Any] | None:
    try:
        info = _retrying(path.url, "looking up", lambda: path.fs.info(path.key))
    except CheckpointError as exc:
        if "no such" in exc.problem:
            return None
        raise
    if _http(path):  # an HTTP "folder" is a page of links: HTML, or a URL ending in a slash
        kind = "directory" if info.get("mimetype") == "text/html" or path.url.endswith("/") else "file"
        return {**info, "type": kind}
    return {**info, "type": "directory" if info.get("type") == "directory" else "file"}


def _size(path: RemotePath, entry: dict[str, Any]) -> int:
    size = entry.get("size")
    if size is None:
        info = _info(path) or {}
        size = info.get("size")
        entry["size"] = size
    if size is None:
        raise CheckpointError(path, "the server does not report this file's size; ranged reads need it")
    return int(size)


def _mtime(entry: dict[str, Any]) -> float:
    value = entry.get("LastModified") or entry.get("mtime") or entry.get("last_modified")
    try:
        return float(value.timestamp()) if hasattr(value, "timestamp") else float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def forget(path: RemotePath | None = None) -> None:
    """Drop cached listings and bytes (after writing to a bucket, or between test cases)."""
    with _lock:
        _listings.clear()
        _entries.clear()
        _blobs.clear()
        _segments.clear()
        _cached[0] = 0
    if path is not None:
        invalidate = getattr(path.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate()


# ----- reading --------------------------------------------------------------------------------------
_segments: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # LRU over every file
_cached = [0]
_blobs: dict[str, _Blob] = {}
_pool: list[ThreadPoolExecutor] = []


def _executor() -> ThreadPoolExecutor:
    with _lock:
        if not _pool or _pool[0]._max_workers != SETTINGS["read_concurrency"]:
            from concurrent.futures import ThreadPoolExecutor  # remote reads only: local ones never start it

            _pool[:] = [ThreadPoolExecutor(max_workers=max(1, SETTINGS["read_concurrency"]), thread_name_prefix="ckptscope-read")]
        return _pool[0]


class _Blob:
    """One remote file: its size and which cached segments start where."""

    def __init__(self, path: RemotePath, size: int) -> None:
        self.path = path
        self.size = size
        self.starts: dict[int, int] = {}  # segment start -> length
        self.last_end = -1
        self.window = BLOCK

    def _fetch(self, start: int, end: int) -> bytes:
        def call() -> bytes:
            data = self.path.fs.cat_file(self.path.key, start=start, end=end)
            if len(data) != end - start:
                raise ConnectionError(f"short read: {len(data)} of {end - start} bytes at offset {start}")
            return bytes(data)

        return _retrying(self.path.url, f"reading bytes {start}-{end}", call)

    def _cached(self, offset: int, n: int) -> bytes | None:
        with _lock:
            for start, length in self.starts.items():
                if start <= offset and offset + n <= start + length:
                    key = (self.path.url, start)
                    _segments.move_to_end(key)
                    data = _segments[key]
                    return data[offset - start: offset - start + n]
        return None

    def _store(self, start: int, data: bytes) -> None:
        with _lock:
            key = (self.path.url, start)
            if key in _segments:
                _cached[0] -= len(_segments.pop(key))
            _segments[key] = data
            self.starts[start] = len(data)
            _cached[0] += len(data)
            while _cached[0] > CACHE_LIMIT and len(_segments) > 1:
                (url, old), dropped = _segments.popitem(last=False)
                _cached[0] -= len(dropped)
                blob = _blobs.get(url)
                if blob is not None:
                    blob.starts.pop(old, None)

    def pread(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        if n >= SETTINGS["read_part"]:
            buf = bytearray(n)
            self.readinto_at(offset, memoryview(buf))
            return bytes(buf)
        if n >= LARGE:  # tensor data (headers and pickles are smaller, and stay within the inspect budget)
            return self._blocks(offset, n)
        hit = self._cached(offset, n)
        if hit is not None:
            return hit
        with _lock:  # headers and pickles: small windows keep an inspect within its byte budget
            self.window = min(self.window * 2, LARGE) if offset == self.last_end else BLOCK
            window = self.window
        start, end = offset, min(self.size, offset + max(n, window))
        if self.size - offset <= TAIL and n <= TAIL:  # the tail: a zip's end record and central directory, at once
            start, end = max(0, self.size - TAIL), self.size
        data = self._fetch(start, end)
        self._store(start, data)
        with _lock:
            self.last_end = end
        return data[offset - start: offset - start + n]

    def _blocks(self, offset: int, n: int) -> bytes:
        """Tensor data through aligned `read_part` blocks: a layer's tensors, read in any order,
        share the blocks around them, and only the blocks not cached yet are requested."""
        part = SETTINGS["read_part"]
        first, last = offset // part, (offset + n - 1) // part
        got: dict[int, bytes] = {}
        with _lock:
            for b in range(first, last + 1):
                data = _segments.get((self.path.url, b * part))
                if data is not None and len(data) == min(part, self.size - b * part):
                    _segments.move_to_end((self.path.url, b * part))
                    got[b] = data
        missing = [b for b in range(first, last + 1) if b not in got]
        while missing:  # contiguous runs of missing blocks, one request each
            run = [missing.pop(0)]
            while missing and missing[0] == run[-1] + 1:
                run.append(missing.pop(0))
            start, end = run[0] * part, min(self.size, (run[-1] + 1) * part)
            data = self._fetch(start, end)
            for b in run:
                got[b] = data[b * part - start: (b + 1) * part - start]
                self._store(b * part, got[b])
        joined = got[first] if first == last else b"".join(got[b] for b in range(first, last + 1))
        return joined[offset - first * part: offset - first * part + n]

    def readinto_at(self, offset: int, view: memoryview) -> int:
        """Fill `view` from `offset`: small reads from the cache, large ones in parallel parts."""
        n = max(0, min(len(view), self.size - offset))
        if n < SETTINGS["read_part"]:
            data = self.pread(offset, n)
            view[: len(data)] = data
            return len(data)
        part = max(BLOCK, SETTINGS["read_part"])
        spans = [(s, min(n, s + part)) for s in range(0, n, part)]

        def fill(span: tuple[int, int]) -> None:
            lo, hi = span
            view[lo:hi] = self._fetch(offset + lo, offset + hi)

        if len(spans) == 1:
            fill(spans[0])
        else:
            for future in [_executor().submit(fill, s) for s in spans]:
                future.result()
        return n


def _blob(path: RemotePath) -> _Blob:
    with _lock:
        blob = _blobs.get(path.url)
    if blob is None:
        blob = _Blob(path, path.stat().st_size)
        with _lock:
            blob = _blobs.setdefault(path.url, blob)
    return blob


class RemoteFile(io.RawIOBase):
    """A seekable, read-only view of one remote file (what `open_regular` returns for a URL)."""

    def __init__(self, blob: _Blob) -> None:
        super().__init__()
        self._blob = blob
        self._pos = 0
        self.name = str(blob.path)

    @property
    def size(self) -> int:
        return self._blob.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._blob.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._blob.size - self._pos
        data = self._blob.pread(self._pos, n)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        got = self._blob.readinto_at(self._pos, view)
        self._pos += got
        return got

    def peek(self, n: int = 1) -> bytes:
        return self._blob.pread(self._pos, max(1, n))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a remote file has no descriptor")


def open_remote(path: RemotePath, what: str) -> RemoteFile:
    """A reader over a remote object; a folder or a missing key is the same refusal as locally."""
    entry = path._entry()
    if entry is None:
        raise CheckpointError(path, f"cannot open {what}: no such object")
    if entry["type"] != "file":
        raise CheckpointError(path, f"{what} is a directory, not a regular file; refusing to read it")
    return RemoteFile(_blob(path))
