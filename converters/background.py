"""Run a conversion in a child process and relay its progress events.

A conversion is CPU and memcpy heavy; run in a thread of an interactive app it competes with
the UI for the GIL and the UI falls seconds behind. In a child process it does not. The child
(`python -m ckptscope.converters.background`) receives the request as JSON on stdin, plans again
from it (so what runs is exactly what was previewed) and writes one JSON line per `Progress`
event on stdout. Stopping the parent iterator sends SIGTERM; the child turns that into an
exception inside the run generator, whose clean-up removes the temporary output folder.

A plain subprocess rather than multiprocessing: apps that replace `sys.stdout`/`sys.stderr`
(Textual does) break multiprocessing's fd passing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .request import ConvertRequest
from .run import Progress


class ConversionFailed(RuntimeError):
    pass


def convert_in_subprocess(request: ConvertRequest, *, poll: float = 0.1,
                          should_stop: Callable[[], bool] = lambda: False) -> Iterator[Progress]:
    """Yield the child's progress events. When `should_stop()` turns true (checked every `poll`
    seconds), or this generator is closed, the child is terminated and cleans up after itself."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptscope.converters.background"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
    )
    assert proc.stdin is not None
    proc.stdin.write(request.to_json().encode())
    proc.stdin.close()
    yield from relay_events(proc, poll=poll, should_stop=should_stop)


def relay_events(proc: subprocess.Popen, *, poll: float = 0.1,
                 should_stop: Callable[[], bool] = lambda: False) -> Iterator[Progress]:
    """Turn the child's JSON lines into events until its "end" (or "error") line.

    Lines are split here from raw `os.read` chunks, never through a buffered file: `select` sees
    only the pipe, so a buffered reader holding the last lines (the final event and "end" often
    arrive in one chunk) would look like a child that exited without a word."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    try:
        while not should_stop():
            newline = pending.find(b"\n")
            if newline < 0:
                ready, _, _ = select.select([fd], [], [], poll)
                if not ready:
                    if proc.poll() is not None:  # exited and its pipe is empty: it never said "end"
                        raise ConversionFailed(f"conversion process died (exit {proc.returncode})")
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    proc.wait(30)
                    raise ConversionFailed(f"conversion process ended unexpectedly (exit {proc.returncode})")
                pending += chunk
                continue
            line, pending = pending[:newline], pending[newline + 1:]
            message = json.loads(line)
            kind = message.pop("kind")
            if kind == "event":
                yield Progress(**message)
            elif kind == "error":
                proc.wait(30)
                raise ConversionFailed(message["message"])
            else:
                proc.wait(30)
                return
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


# ----- child side --------------------------------------------------------------------------------
def _send(kind: str, **payload: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **payload}) + "\n")
    sys.stdout.flush()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def child_main() -> int:
    from ckptscope.inspectors.errors import CheckpointError

    from .run import convert

    signal.signal(signal.SIGTERM, _terminate)
    events = None
    try:
        request = ConvertRequest.from_json(sys.stdin.read())
        plan = request.plan()
        events = convert(plan, request.dst, **request.policies())
        for event in events:
            _send("event", **dataclasses.asdict(event))
        _send("end")
        return 0
    except SystemExit:
        if events is not None:
            events.close()  # runs the run generator's clean-up: the temporary folder goes
        raise
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        if events is not None:
            events.close()
        text = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
        _send("error", message=" ".join(text.split()))
        return 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(child_main())
