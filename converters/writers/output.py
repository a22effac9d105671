"""Atomic output folders: build in a temporary sibling, rename into place only when complete.

An interrupted conversion leaves no folder at the destination that any reader accepts: the
temporary sibling is removed on failure and, if a crash prevents that, it keeps a name
(`.<dst>.ckptscope-partial-*`) that no reader recognises as a checkpoint.

What may be written where (issue 15), all checked before any work starts:

- never over, inside or around the source (real paths, symlinks resolved): `refuse_overlap`;
- `--force` replaces a folder only: never a file, `/`, the home directory, or a folder that
  holds the source or the current directory (`check_destination`);
- one conversion per destination at a time: a lock file beside it (`DestinationLock`);
- the commit re-checks the destination and renames with a no-replace primitive, so a folder that
  someone created meanwhile is never replaced without `--force` (`_rename_noreplace`);
- a resumed partial folder must hold only regular files and folders we own (`check_partial`);
- the committed output has the user's umask permissions (the temporary sibling is private).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ckptscope.inspectors.storage import is_remote

PARTIAL_TAG = ".ckptscope-partial-"
LOCK_TAG = ".ckptscope-lock"
OLD_TAG = ".ckptscope-old-"


class OutputExists(FileExistsError):
    """The destination cannot be written as asked; str() is one line naming it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


def real(path: str | Path) -> Path:
    """The absolute path with every symlink resolved (the parts that exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _related(a: Path, b: Path) -> str | None:
    """How `a` (destination) overlaps `b` (source), or None."""
    if a == b:
        return "is the source"
    if a.is_relative_to(b):
        return f"is inside the source {b}"
    if b.is_relative_to(a):
        return f"contains the source {b}"
    return None


def refuse_overlap(dst: str | Path, sources: Iterable[str | Path]) -> None:
    """Refuse a destination that is a source path, lies inside one, or contains one."""
    target = real(dst)
    for src in sources:
        if is_remote(src):  # a URL never overlaps a local folder
            continue
        how = _related(target, real(src))
        if how is not None:
            raise OutputExists(dst, f"the output folder {how}; choose a folder outside the source checkpoint")


def _protected() -> list[tuple[Path, str]]:
    """Folders `--force` never replaces: `/`, the home directory and every ancestor of the cwd."""
    cwd = real(Path.cwd())
    found = [(Path("/"), "the root folder"), (real(Path.home()), "the home directory")]
    found += [(p, "the current directory or a folder holding it") for p in (cwd, *cwd.parents)]
    return found


def default_destination(source: str | Path, cwd: Path) -> Path:
    """Where a conversion writes unless told: `<name>-converted` in the folder the user works in,
    not beside the source (checkpoints often sit in shared folders nobody should write into
    unasked); beside the source only when the user works inside it."""
    source = Path(source)
    name = source.name + "-converted"
    try:
        inside = cwd.resolve().is_relative_to(source.resolve())
    except OSError:
        inside = True
    return (source.parent if inside else cwd) / name


def check_destination(dst: str | Path, force: bool, sources: Iterable[str | Path] = ()) -> None:
    """Every up-front refusal for a destination (run before planning and again before writing)."""
    if is_remote(dst):  # a bucket prefix: remote_output.RemoteDestination checks it is empty
        return
    path = Path(dst).expanduser()
    if force:
        target = real(path)
        for folder, what in _protected():
            if target == folder:
                raise OutputExists(dst, f"is {what}; --force will not replace it")
    refuse_overlap(path, sources)
    if not os.path.lexists(path):
        return
    if path.is_symlink() and not path.exists():
        raise OutputExists(dst, "is a dangling symlink; remove it or choose another output folder")
    if not path.is_dir():
        raise OutputExists(dst, "exists and is not a folder; --force replaces a folder only, never a file")
    if not any(path.iterdir()):
        return
    if not force:
        raise OutputExists(dst, "exists and is not empty (use --force to replace it)")


# ----- the lock -----------------------------------------------------------------------------
class DestinationLock:
    """`fcntl.flock` on `.<dst>.ckptscope-lock` beside the destination, held until the commit.

    The file is removed on release; an acquirer checks that the file it locked is still the one
    on disk (same inode), so removing it never lets two conversions hold "the" lock.
    """

    def __init__(self, dst: Path) -> None:
        self.path = dst.with_name(f".{dst.name}{LOCK_TAG}")
        self.dst = dst
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.fd is not None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputExists(self.dst, f"another ckptscope conversion (pid {holder}) is writing this output "
                                             f"(lock {self.path}); wait for it or choose another folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return
            os.close(fd)  # the holder released and removed it between our open and flock: try again

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


# ----- renaming without replacing -----------------------------------------------------------
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2() -> object | None:
    try:  # the process's own symbols include libc's; find_library("c") would run `ldconfig -p` (6 ms a conversion)
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None


_RENAMEAT2 = _renameat2()


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError if `dst` exists (renameat2 NOREPLACE).

    Without renameat2 (old libc, a file system that does not support the flag) `os.rename` of a
    folder still fails onto a file or a non-empty folder; only an empty folder that appeared in
    the last instant could be replaced, and that holds nothing.
    """
    if _RENAMEAT2 is not None:
        rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)  # type: ignore[operator]
        if rc == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


# ----- permissions and resume safety --------------------------------------------------------
def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_to(obj: object, path: Path) -> None:
    """`torch.save` by name, or into a remote destination's upload stream."""
    import torch

    if hasattr(path, "open_write"):
        with open_output(path) as fh:
            torch.save(obj, fh)
        return
    torch.save(obj, path)


def copy_into(src: Path, dst: Path) -> None:
    """Copy a side file (tokenizer) into the output: streamed into a remote destination's object,
    `shutil.copy2` on disk."""
    if hasattr(dst, "open_write"):
        with open(src, "rb") as fin, open_output(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        return
    shutil.copy2(src, dst)


def publish_permissions(folder: Path) -> None:
    """Give the finished output the modes a plain `mkdir`/`open` would have (0777/0666 & ~umask)."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, 0o666 & ~mask)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def check_partial(folder: Path) -> None:
    """A partial folder we are about to write into again holds only our regular files and folders.

    A symlink (or FIFO, device) planted there would make a writer write through it, outside the
    output: refuse instead of following it.
    """
    top = os.lstat(folder)
    if not stat.S_ISDIR(top.st_mode) or top.st_uid != os.geteuid() or top.st_mode & 0o022:
        raise OutputExists(folder, "partial folder is not a private folder of this user; refusing to resume into it")
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or st.st_uid != os.geteuid():
                raise OutputExists(path, "not a regular file of this user in the partial folder (symlink, FIFO or "
                                         "device); refusing to resume into it")


def open_output(path: Path) -> BinaryIO:
    """Open an output file for writing without following a symlink planted in its place (a
    remote destination's path streams to its object instead: remote_output.py)."""
    if hasattr(path, "open_write"):
        return path.open_write()  # type: ignore[no-any-return]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputExists(path, "is not a regular file; refusing to write through it")
    return os.fdopen(fd, "wb")


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the folder is renamed or removed; they are delivered right after.

    A second Ctrl-C must not leave half a cleanup, and a signal between the two renames of a
    `--force` replacement must not leave neither the old nor the new output in place.
    """
    deferred = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class AtomicFolder:
    """`with AtomicFolder(dst, force) as tmp:` write into tmp; renamed to dst on success.

    `reuse` continues in an existing partial folder (`--resume`); `keep_on_error` leaves the
    partial folder in place when the block fails, so it can be resumed later. `sources` are the
    paths the conversion reads: the destination may not overlap them. The destination lock is
    taken by `acquire()` (or on entry) and released after the commit or the cleanup.
    """

    def __init__(self, dst: str | Path, force: bool = False, *, reuse: Path | None = None, keep_on_error: bool = False,
                 sources: Iterable[str | Path] = ()) -> None:
        self.given = Path(dst).expanduser()
        self.dst = real(self.given)
        self.force = force
        self.reuse = reuse
        self.keep_on_error = keep_on_error
        self.sources = tuple(sources)
        self.tmp: Path | None = None
        self.lock = DestinationLock(self.dst)

    def acquire(self) -> None:
        """Up-front checks, then the lock (before anything, even a stale partial, is removed)."""
        check_destination(self.given, self.force, self.sources)
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()

    def __enter__(self) -> Path:
        self.acquire()
        try:
            check_destination(self.given, self.force, self.sources)  # again, now that we hold the lock
            if self.reuse is not None:
                check_partial(self.reuse)
                self.tmp = self.reuse
            else:
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}{PARTIAL_TAG}", dir=self.dst.parent))
        except BaseException:
            self.lock.release()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        assert self.tmp is not None
        try:
            if exc_type is None:
                try:
                    self.commit()
                    return
                except BaseException:
                    self._discard()
                    raise
            self._discard()
        finally:
            self.lock.release()

    def _discard(self) -> None:
        if not self.keep_on_error and self.tmp is not None and self.tmp.exists():
            with signals_deferred():
                shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self) -> None:
        """Re-check the destination, then rename into place without replacing what appeared meanwhile."""
        assert self.tmp is not None
        publish_permissions(self.tmp)
        with signals_deferred():
            if not self.force and os.path.lexists(self.dst) and not (self.dst.is_dir() and not any(self.dst.iterdir())):
                raise OutputExists(self.given, "was created or filled by someone else while converting; not replaced "
                                               "(use --force to replace it)")
            check_destination(self.given, self.force, self.sources)
            old = None
            if os.path.lexists(self.dst):
                if any(self.dst.iterdir()):  # non-empty and --force (checked above): keep it until the new one is in place
                    old = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}{OLD_TAG}", dir=self.dst.parent))
                    os.rename(self.dst, old / "replaced")
                else:
                    with contextlib.suppress(OSError):
                        self.dst.rmdir()  # an empty folder: ours to fill
            try:
                _rename_noreplace(self.tmp, self.dst)
            except FileExistsError:
                if old is not None:
                    with contextlib.suppress(OSError):
                        os.rename(old / "replaced", self.dst)
                        old.rmdir()
                raise OutputExists(self.given, "was created by someone else while converting; not replaced "
                                               "(use --force to replace it)") from None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
