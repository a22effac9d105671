"""The streaming run: read one group from every shard that holds it, map, scatter, write.

`convert(plan, dst)` is a generator of `Progress` events; the CLI and the TUI render the same
stream. Peak memory is one group (a layer, or the embeddings) plus what the writers buffer,
never the whole model. Output is built in a temporary sibling folder and renamed into place at
the end; stopping the generator early (Ctrl-C, SIGTERM, cancel, an error) removes the temporary
folder, unless `resume=True` asked to keep it for a later `--resume`.

Safety checks on the way: a source the inspector found incomplete (torn save) is refused; each
group's tensors are checked for NaN/Inf (a warning, or a refusal with `strict=True`); a failed
write (disk full) becomes one `OutputError` line.

Resume (`resume=True`): the partial folder of an interrupted run (`.<dst>.ckptscope-partial-*`,
left behind by SIGKILL, OOM-kill or a crash) carries a journal with a fingerprint of the plan.
Output files are grouped into units that are complete or not as a whole - an HF shard, or all
rank files of one Megatron pipeline stage - and a unit counts as done only if its files validate
(`_unit_complete`). Groups whose every unit is done are skipped; the rest are written again.
Other targets have no units: `--resume` restarts them from scratch.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.storage import as_path, is_remote

from .distributed import DistContext, share
from .pipeline import Prefetcher, streaming_runtime
from .plan import Plan
from .sources import group_canon, group_label
from .writers.base import Unit
from .writers.output import PARTIAL_TAG, AtomicFolder
from .writers.remote_output import RemoteDestination

JOURNAL = ".ckptscope-resume.json"
JOURNAL_VERSION = 1


class PlanRefused(RuntimeError):
    pass


class OutputError(OSError):
    """Writing the output failed (disk full, read-only, I/O error); str() is one line."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}" if self.filename else str(self.strerror)


@dataclass(frozen=True)
class Progress:
    stage: str  # start | layer | finalize | done
    index: int  # groups finished so far
    total: int  # groups in all
    label: str  # e.g. "layer 3"
    tensor: str
    bytes_done: int
    bytes_total: int
    elapsed: float
    output: str = ""
    skipped: int = 0  # groups not rewritten because a resumed run found them complete
    warnings: tuple[str, ...] = ()  # e.g. NaN/Inf found in source tensors

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


# ----- resume units -------------------------------------------------------------------------
def resume_units(plan: Plan) -> list[Unit]:
    """The resumable units the plan's writer declares (empty: this target restarts from scratch)."""
    return plan.writer.resume_units(plan.groups)


def _unit_complete(folder: Path, unit: Unit) -> bool:
    """Every file of the unit exists and validates (size and structure), so it was fully written."""
    from ckptscope.inspectors.safetensors_header import read_header
    from ckptscope.inspectors.torchfile import open_torch_file

    for rel in unit.files:
        path = folder / rel
        if not path.is_file():
            return False
        try:
            if unit.kind == "safetensors":
                read_header(path)  # the data section must end exactly at end of file
            else:
                open_torch_file(path)  # central directory, data.pkl and every storage member present
        except CheckpointError:
            return False
    return True


def fingerprint(plan: Plan) -> str:
    """Same source files (size, mtime), same target options, same planned files -> same value."""
    files = []
    for f in plan.ckpt.files:
        try:
            st = f.path.stat()
            files.append([f.rel, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([f.rel, -1, -1])
    target = {k: str(v) for k, v in dataclasses.asdict(plan.target).items() if k != "workers"}  # threads do not change the output
    doc = {"version": JOURNAL_VERSION, "source": str(as_path(plan.source_path).resolve()), "files": files, "target": target,
           "planned": [[f.rel, f.tensors, f.nbytes] for f in plan.files], "total": plan.total_bytes}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def source_paths(plan: Plan) -> list[Path]:
    """Everything a conversion reads: the output may not be, hold or lie inside any of it."""
    ckpt, target = plan.ckpt, plan.target
    paths = [as_path(plan.source_path), as_path(ckpt.path), *(f.path for f in ckpt.files)]
    paths += [p for p in (ckpt.root, getattr(target, "tokenizer", None), getattr(target, "tokenizer_root", None)) if p is not None]
    return paths


def find_partial(dst: Path, key: str) -> Path | None:
    """The newest partial folder of `dst` whose journal has this plan's fingerprint (ours, a real folder)."""
    dst = Path(dst).expanduser().resolve()
    found = []
    for child in dst.parent.glob(f".{dst.name}{PARTIAL_TAG}*"):
        if child.is_symlink() or not child.is_dir() or child.lstat().st_uid != os.geteuid():
            continue
        try:
            journal = json.loads(_read_private(child / JOURNAL, 1 << 20))
        except (OSError, ValueError):
            continue
        if isinstance(journal, dict) and journal.get("fingerprint") == key:
            found.append((child.stat().st_mtime, child))
    return max(found)[1] if found else None


def _read_private(path: Path, limit: int) -> str:
    """A small file of our own partial folder, never through a symlink, FIFO or device."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        return fh.read(limit + 1)[:limit].decode("utf-8", "replace")


def _write_journal(folder: Path, key: str, plan: Plan, done: list[str]) -> None:
    doc = {"version": JOURNAL_VERSION, "fingerprint": key, "source": str(plan.source_path), "target": plan.target.format,
           "completed_files": sorted(done), "updated": time.time()}
    tmp = folder / (JOURNAL + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc, indent=1))
    tmp.replace(folder / JOURNAL)  # atomic: a kill leaves the old or the new journal, never half of one


# ----- checks -------------------------------------------------------------------------------
def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """`name: N NaN, M Inf` for every floating tensor that is not all finite (cheap when clean)."""
    floats = {name: t for name, t in tensors.items() if t.is_floating_point() or t.is_complex()}
    clean = _clean_spans(floats)
    bad = []
    for name, t in floats.items():
        if name not in clean and not _all_finite(t):
            bad.append(f"{name}: {int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} Inf")
    return bad


def _clean_spans(tensors: dict[str, torch.Tensor]) -> set[str]:
    """Names proven finite by one check of the buffer they share. A group read as one buffer (an
    MoE layer: hundreds of small experts, `sources/grouped_read.py`) is checked with one sum
    instead of one per tensor: each small reduction wakes torch's thread pool, and that per-call
    cost, not the bytes, was most of the read threads' time. A span that is not finite as a
    whole (a real NaN, or a neighbour of another dtype read as this one) proves nothing here:
    its tensors are checked one by one."""
    by_buffer: dict[tuple[int, torch.dtype], list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        if t.device.type == "cpu" and t.is_contiguous() and t.numel():
            by_buffer.setdefault((t.untyped_storage().data_ptr(), t.dtype), []).append((name, t))
    clean: set[str] = set()
    for members in by_buffer.values():
        if len(members) < 2:
            continue
        first = min(t.storage_offset() for _, t in members)
        end = max(t.storage_offset() + t.numel() for _, t in members)
        if end - first > 2 * sum(t.numel() for _, t in members):  # mostly other data: not worth a pass over it
            continue
        if _all_finite(members[0][1].as_strided((end - first,), (1,), first)):
            clean.update(name for name, _ in members)
    return clean


def _all_finite(t: torch.Tensor) -> bool:
    """NaN and Inf propagate through a sum, so a finite sum proves every element finite; the sum
    runs ~20x faster than `isfinite` on bf16. Only a sum that overflowed needs the exact check."""
    return t.numel() == 0 or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _read_checked(source, group: int) -> tuple[dict[str, torch.Tensor], list[str]]:  # type: ignore[no-untyped-def]
    """One group's tensors and its NaN/Inf findings (runs on a prefetch thread)."""
    tensors = source.read(group)
    return tensors, non_finite(tensors)


def _output_error(exc: BaseException, where: Path, kept: bool) -> OutputError:
    code = getattr(exc, "errno", None) or errno.EIO
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    what = f"kept for --resume in {where}" if kept else "partial output removed"
    return OutputError(code, f"cannot write output: {reason} ({what})", str(getattr(exc, "filename", None) or where))


# ----- the run ------------------------------------------------------------------------------
def convert(plan: Plan, dst: str | Path, *, force: bool = False, strict: bool = False,
            resume: bool = False, dist: DistContext | None = None) -> Iterator[Progress]:
    """Stream the plan into `dst`; with `dist` (torchrun, see distributed.py) only this rank's share."""
    if not plan.ok:
        raise PlanRefused("; ".join(plan.errors))
    if not plan.ckpt.complete:
        why = next((w for w in plan.ckpt.warnings if "done" in w or "metadata.json" in w or "missing" in w or "truncated" in w),
                   plan.ckpt.warnings[0] if plan.ckpt.warnings else "")
        raise CheckpointError(plan.source_path, f"source checkpoint is incomplete ({why}); refusing to convert a torn save")
    spec, writer, source = plan.spec, plan.writer, plan.source
    groups = plan.groups
    total_bytes = plan.total_bytes
    itemsize = writer.dtype.itemsize
    start = time.perf_counter()
    done_bytes = 0
    warnings: list[str] = []
    key = fingerprint(plan)
    if dist is not None and resume:
        raise CheckpointError(plan.source_path, "--resume and --distributed do not combine")
    remote = is_remote(dst)  # s3://: each file streams to its key, markers last (writers/remote_output.py)
    if remote and (resume or dist is not None):
        raise CheckpointError(str(dst), "--resume and --distributed write local folders; not a remote destination")
    units = resume_units(plan) if dist is None and not remote else []  # ranks write concurrently: no resume journal
    mine, foreign = share(plan, dist) if dist is not None else (set(groups), set())
    atomic: Any
    if remote:
        atomic = RemoteDestination(as_path(dst), force)
    else:
        atomic = AtomicFolder(dst, force, keep_on_error=resume, sources=source_paths(plan)) if dist is None or dist.rank == 0 else _Joined(dst)
    if isinstance(atomic, (AtomicFolder, RemoteDestination)):
        atomic.acquire()  # refusals and the destination lock come before anything is written or removed
    try:
        partial = find_partial(Path(dst), key) if resume else None
        if partial is not None and not units:
            shutil.rmtree(partial, ignore_errors=True)  # our own partial of the same plan, but not resumable
            warnings.append(f"--resume: a {plan.target.format} output cannot be resumed; started again")
            partial = None
    except BaseException:
        if isinstance(atomic, AtomicFolder):
            atomic.lock.release()
        raise
    if isinstance(atomic, AtomicFolder):
        atomic.reuse = partial
    with atomic as tmp:
        if dist is not None:  # rank 0 made the temporary folder; every rank writes into it
            tmp = Path(dist.broadcast(str(tmp) if dist.rank == 0 else None))
        done_units = [u for u in units if _unit_complete(tmp, u)] if partial is not None else []
        done_files = {f for u in done_units for f in u.files}
        writer.done_files = {f for u in done_units if u.kind == "safetensors" for f in u.files}
        pending = [u for u in units if u not in done_units]
        skip = {g for g in groups if any(g in u.groups for u in done_units) and not any(g in u.groups for u in pending)}
        writer.done_files |= foreign  # files another rank owns
        writer.finalize = dist is None or dist.rank == 0  # index / config / markers: rank 0, after every rank
        opened = dist is None or dist.rank == 0 or bool(mine)
        if dist is None and not remote:
            _write_journal(tmp, key, plan, sorted(done_files))
        if opened:
            writer.open(tmp)
        # read (and NaN-check) the next groups on worker threads while this thread writes (pipeline.py)
        with streaming_runtime():  # before the read threads start: they take torch's thread count at their first op
            reads: Prefetcher | None = None
            try:
                reads = Prefetcher(lambda g: _read_checked(source, g), [g for g in groups if g not in skip and g in mine],
                                   workers=max(1, getattr(plan.target, "workers", 1)))
                yield Progress("start", 0, len(groups), group_label(spec, groups[0]), "", 0, total_bytes, 0.0, skipped=len(skip))
                for n, group in enumerate(groups):
                    if group not in mine:
                        continue
                    if group in skip:
                        done_bytes += sum(_numel(s) for c, s in spec.canonical_shapes().items() if c in set(group_canon(spec, group))) * itemsize
                        continue
                    tensors, bad = reads.take(group)
                    if bad:
                        where = f"{group_label(spec, group)}: {'; '.join(bad[:3])}" + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
                        if strict:
                            raise CheckpointError(plan.source_path, f"non-finite values in {where}; --strict refuses to convert")
                        warnings.append(f"non-finite values in {where}")
                    writer.write(group, tensors)
                    done_bytes += sum(t.numel() for t in tensors.values()) * itemsize
                    last = next(reversed(tensors)) if tensors else ""
                    del tensors
                    newly = [u for u in pending if max(u.groups) <= group and _unit_complete(tmp, u)]
                    if newly:
                        done_files |= {f for u in newly for f in u.files}
                        pending = [u for u in pending if u not in newly]
                        _write_journal(tmp, key, plan, sorted(done_files))
                    yield Progress("layer", n + 1, len(groups), group_label(spec, group), last, done_bytes, total_bytes,
                                   time.perf_counter() - start, skipped=len(skip), warnings=tuple(warnings))
                if dist is not None:
                    if dist.rank != 0 and opened:
                        writer.close()  # this rank's files only
                    failed = [r for r, ok in enumerate(dist.vote(True)) if not ok]
                    if failed:
                        raise RuntimeError(f"rank(s) {', '.join(map(str, failed))} failed (see their errors); output not written")
                if dist is None or dist.rank == 0:
                    writer.close()
                (tmp / JOURNAL).unlink(missing_ok=True)  # the finished output carries no resume state
            except OSError as exc:
                writer.abort()
                raise _output_error(exc, tmp, resume) from exc
            except RuntimeError as exc:
                writer.abort()
                if "PytorchStreamWriter" in str(exc):  # torch's zip writer reports ENOSPC this way
                    raise _output_error(exc, tmp, resume) from exc
                raise
            except BaseException:
                writer.abort()
                raise
            finally:
                if reads is not None:
                    reads.close()
        yield Progress("finalize", len(groups), len(groups), "finalize", "", done_bytes, total_bytes, time.perf_counter() - start,
                       skipped=len(skip), warnings=tuple(warnings))
    yield Progress("done", len(groups), len(groups), "done", "", done_bytes, total_bytes, time.perf_counter() - start,
                   str(atomic.dst), skipped=len(skip), warnings=tuple(warnings))


class _Joined:
    """A non-zero rank's view of the output folder: rank 0 creates, commits or removes it."""

    def __init__(self, dst: str | Path) -> None:
        self.dst = Path(dst).expanduser().resolve()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run_to_end(plan: Plan, dst: str | Path, *, force: bool = False, strict: bool = False, resume: bool = False) -> Progress:
    """Convenience for tests and scripts: run the generator and return the final event."""
    last = None
    for event in convert(plan, dst, force=force, strict=strict, resume=resume):
        last = event
    assert last is not None
    return last


def convert_distributed(plan: Plan, dst: str | Path, *, force: bool = False, strict: bool = False) -> Iterator[Progress]:
    """`convert` on this rank's share (torchrun); every rank returns only once the output is committed."""
    ctx = DistContext.from_env()
    try:
        try:
            yield from convert(plan, dst, force=force, strict=strict, dist=ctx)
        except BaseException:
            ctx.fail()
            raise
        if not all(ctx.vote(True)):
            raise RuntimeError("rank 0 could not finish the output (see its error); nothing was committed")
    finally:
        ctx.close()
