"""Writing a conversion straight to `s3://`: one multipart upload per output file, markers last.

A bucket has no rename, so the local "temporary sibling, then rename" of `output.AtomicFolder`
becomes: every output file streams to its final key as the writers produce it (an S3 multipart
upload, so memory holds one part per open file and nothing is staged on disk); the files that
say "this checkpoint is complete" (an HF index, the Megatron tracker, DCP's `.metadata` and
`metadata.json`, NxD's `done`) are held back and uploaded only after every other file has been
committed. On failure or Ctrl-C the open multipart uploads are aborted and the objects already
written are deleted, so a reader never sees an output that looks complete and is not.

`OutPath` is the folder path the writers see: `/`, `mkdir`, `write_text` and `open_output`
(through `output.open_output`) are all they use.
"""

from __future__ import annotations

import contextlib
import io
import threading
from typing import Any

from ckptscope.inspectors import storage
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.storage import RemotePath, describe, forget

# Files whose presence tells a reader the checkpoint is complete (see each writer's close()).
MARKERS = frozenset({
    "model.safetensors.index.json", "pytorch_model.bin.index.json",  # HF
    "latest_checkpointed_iteration.txt", "latest", "newest",  # Megatron, DeepSpeed, NxD trackers
    ".metadata", "metadata.json",  # DCP / torch_dist
    "done",  # NxD
})
PART = 16 << 20  # multipart part size (S3 needs at least 5 MiB per part but the last)


class OutputExistsRemote(CheckpointError):
    """The destination prefix already holds objects."""


class RemoteDestination:
    """The conversion's output under one `s3://` prefix; a context manager like `AtomicFolder`."""

    def __init__(self, dst: RemotePath, force: bool = False) -> None:
        if not dst.url.lower().startswith("s3://"):
            raise CheckpointError(dst, "only s3:// destinations are supported for remote outputs")
        self.root = dst
        self.dst = dst
        self.force = force
        self.reuse = None  # no --resume into a bucket
        self.lock = self  # AtomicFolder's interface: `lock.release()`
        self._open: list[Any] = []  # fsspec files with an upload in progress
        self._written: list[str] = []  # keys committed so far (deleted again on failure)
        self._deferred: list[tuple[str, bytes]] = []  # markers, uploaded by commit() in write order
        self._mutex = threading.Lock()

    # AtomicFolder's interface
    def acquire(self) -> None:
        forget()
        if self.root.exists() and any(True for _ in self.root.iterdir()):
            if self.force:
                raise OutputExistsRemote(self.root, "exists and is not empty; --force does not replace a remote output, delete it first")
            raise OutputExistsRemote(self.root, "exists and is not empty (choose an empty prefix)")

    def release(self) -> None:
        return None

    def __enter__(self) -> OutPath:
        self.acquire()
        return OutPath(self, "")

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            try:
                self.commit()
                return
            except BaseException:
                self.abort()
                raise
        self.abort()

    # files
    def key(self, rel: str) -> str:
        return f"{self.root.key}/{rel}" if rel else self.root.key

    def open(self, rel: str) -> Any:
        name = rel.rsplit("/", 1)[-1]
        if name in MARKERS:
            return _Deferred(self, rel)
        try:
            fh = self.root.fs.open(self.key(rel), "wb", block_size=max(5 << 20, storage.SETTINGS["write_part"]))
        except Exception as exc:  # noqa: BLE001 - one line naming the object
            raise CheckpointError(self.root / rel, f"cannot write output: {describe(exc) or exc}") from None
        upload = _Upload(self, rel, fh)
        with self._mutex:
            self._open.append(upload)
        return upload

    def _closed(self, upload: _Upload) -> None:
        with self._mutex:
            self._open.remove(upload)
            self._written.append(upload.rel)

    def defer(self, rel: str, data: bytes) -> None:
        with self._mutex:
            self._deferred = [(r, d) for r, d in self._deferred if r != rel] + [(rel, data)]

    def commit(self) -> None:
        """Every data file is committed: now the markers, in the order the writer wrote them."""
        if self._open:
            raise CheckpointError(self.root, f"output file {self._open[0].rel} was never closed; not publishing the markers")
        for rel, data in self._deferred:
            try:
                self.root.fs.pipe_file(self.key(rel), data)
            except Exception as exc:  # noqa: BLE001
                raise CheckpointError(self.root / rel, f"cannot write output: {describe(exc) or exc}") from None
            self._written.append(rel)
        self._deferred = []
        forget()

    def abort(self) -> None:
        """Abort the uploads in progress and delete what was written: nothing half-done stays."""
        with self._mutex:
            uploads, self._open = self._open, []
            written, self._written = self._written, []
            self._deferred = []
        for upload in uploads:
            upload.discard()
        for rel in written:
            with contextlib.suppress(Exception):
                self.root.fs.rm_file(self.key(rel))
        forget()


class _Upload(io.RawIOBase):
    """One output file streaming to its key (fsspec/s3fs buffers a part, then uploads it)."""

    def __init__(self, dest: RemoteDestination, rel: str, fh: Any) -> None:
        super().__init__()
        self.dest, self.rel, self.fh = dest, rel, fh

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(self.dest.root / self.rel, f"cannot write output: {describe(exc) or exc}") from None

    def tell(self) -> int:
        return int(self.fh.tell())

    def flush(self) -> None:
        return None  # parts go up when full; a forced flush would upload parts under S3's 5 MiB minimum

    def discard(self) -> None:
        """Abort the upload (S3 AbortMultipartUpload); a later close() publishes nothing."""
        if not self.closed:
            with contextlib.suppress(Exception):
                self.fh.discard()
            io.RawIOBase.close(self)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.fh.close()  # CompleteMultipartUpload (or one PutObject for a small file)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(self.dest.root / self.rel, f"cannot write output: {describe(exc) or exc}") from None
        finally:
            super().close()
        self.dest._closed(self)


class _Deferred(io.BytesIO):
    """A marker file: kept in memory until the destination commits."""

    def __init__(self, dest: RemoteDestination, rel: str) -> None:
        super().__init__()
        self.dest, self.rel = dest, rel

    def close(self) -> None:
        if not self.closed:
            self.dest.defer(self.rel, self.getvalue())
        super().close()


class OutPath:
    """A path inside a remote destination, as the writers use folder paths."""

    __slots__ = ("dest", "rel")

    def __init__(self, dest: RemoteDestination, rel: str) -> None:
        self.dest, self.rel = dest, rel.strip("/")

    def __truediv__(self, name: str) -> OutPath:
        return OutPath(self.dest, f"{self.rel}/{name}" if self.rel else str(name))

    def __str__(self) -> str:
        return f"{self.dest.root.url}/{self.rel}" if self.rel else self.dest.root.url

    def __repr__(self) -> str:
        return f"OutPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutPath) and other.dest is self.dest and other.rel == self.rel

    def __hash__(self) -> int:
        return hash((id(self.dest), self.rel))

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def parent(self) -> OutPath:
        return OutPath(self.dest, self.rel.rsplit("/", 1)[0] if "/" in self.rel else "")

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        return None  # keys need no folders

    def exists(self) -> bool:
        return False

    def is_file(self) -> bool:
        return False

    def unlink(self, missing_ok: bool = False) -> None:
        return None

    def open_write(self) -> Any:
        return self.dest.open(self.rel)

    def write_bytes(self, data: bytes) -> int:
        with self.open_write() as fh:
            fh.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))
