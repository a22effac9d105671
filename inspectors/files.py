"""Opening files of an untrusted checkpoint: regular files only, side files bounded in size.

A checkpoint folder can hold a FIFO named `x.safetensors` (an `open()` blocks forever), a
symlink to `/dev/zero` named like a tracker (an unbounded read eats all memory), or a data file
that is a symlink out of the folder (its bytes end up in a conversion). Every reader opens files
through `open_regular` (non-blocking open, then `fstat`: a regular file or a one-line refusal),
reads small side files through `read_side_file` (a size cap per kind of file), and resolves
data files named by metadata through `inside`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointError
from .storage import RemotePath, open_remote

# Side files are metadata, not weights: a generous cap each, far below what would hurt.
SIDE_FILE_LIMITS: dict[str, int] = {
    "tracker": 4096,  # latest_checkpointed_iteration.txt, DeepSpeed `latest`, NxD `newest`
    "json": 16 << 20,  # config.json, generation_config.json, params.json, metadata.json
    "index": 256 << 20,  # model.safetensors.index.json (a million tensor names fit)
}

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path, what: str = "file", *, nofollow: bool = False) -> BinaryIO:
    """Open for reading without blocking (a FIFO would wait for a writer) and refuse anything
    that is not a regular file once opened (`fstat` of the descriptor, not of the name). A
    remote path (`storage.RemotePath`) opens as a ranged reader over its object."""
    if isinstance(path, RemotePath):
        return open_remote(path, what)  # type: ignore[return-value]
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (getattr(os, "O_NOFOLLOW", 0) if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CheckpointError(path, f"cannot open {what}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(path, f"{what} is {_kind(mode)}, not a regular file; refusing to read it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_side_file(path: str | Path, kind: str, what: str) -> bytes:
    """The whole of a small side file, refused when it is not regular or larger than its cap."""
    limit = SIDE_FILE_LIMITS[kind]
    with open_regular(path, what) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise CheckpointError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise CheckpointError(path, f"{what} is larger than {limit} bytes; refusing to read it")
    return data


def read_side_text(path: str | Path, kind: str, what: str) -> str:
    return read_side_file(path, kind, what).decode("utf-8", errors="replace")


_ITERATION = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() accepts '²' and '١'


def parse_iteration(path: str | Path, text: str) -> int | None:
    """An iteration number as a tracker writes it, or None; never int() on arbitrary digits."""
    text = text.strip()
    return int(text) if _ITERATION.fullmatch(text) else None


def file_size(fh: BinaryIO) -> int:
    """Size of an open file: a remote reader knows it, a local one asks its descriptor."""
    size = getattr(fh, "size", None)
    return int(size) if isinstance(size, int) else os.fstat(fh.fileno()).st_size


def lexists(path: str | Path) -> bool:
    """`os.path.lexists` that also answers for a remote path (object keys have no links)."""
    return path.exists() if isinstance(path, RemotePath) else os.path.lexists(path)


def inside(path: Path, root: Path, what: str, blame: str | Path) -> Path:
    """The real file `path` resolves to, refused unless it lies inside `root` (links followed)."""
    if isinstance(path, RemotePath):  # keys have no links: `..` was folded when the path was built
        if not isinstance(root, RemotePath) or (path != root and root not in path.parents):
            raise CheckpointError(blame, f"{what} {path.name!r} lies outside the checkpoint folder; refusing")
        if not path.exists():
            raise CheckpointError(path, f"cannot resolve {what}: no such object")
        return path
    try:
        real = path.resolve(strict=True)
        top = root.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(path, f"cannot resolve {what}: {getattr(exc, 'strerror', None) or exc}") from None
    if real != top and top not in real.parents:
        raise CheckpointError(blame, f"{what} {path.name!r} resolves to {str(real)[:120]!r}, outside the checkpoint folder; refusing")
    return real
