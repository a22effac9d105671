"""The parent side of a conversion run in a child process: every line the child wrote is relayed,
however the pipe chunks them, and a child that dies without its "end" line is reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ckptscope.converters.background import ConversionFailed, relay_events


def _event(index: int) -> dict:
    return {"kind": "event", "stage": "layer", "index": index, "total": 3, "label": f"layer {index}",
            "tensor": "", "bytes_done": index, "bytes_total": 3, "elapsed": 0.0}


def _child(lines: list[dict], exit_code: int = 0) -> subprocess.Popen:
    """A child that writes all its lines in one write and exits at once: the chunking under
    which a buffered reader lost the final lines (CI saw 'process died (exit 0)')."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    code = f"import os, sys; os.write(1, {text.encode()!r}); sys.exit({exit_code})"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, bufsize=0)


def test_lines_arriving_in_one_chunk_with_the_exit_are_all_relayed() -> None:
    events = list(relay_events(_child([_event(1), _event(2), _event(3), {"kind": "end"}])))
    assert [event.index for event in events] == [1, 2, 3]


def test_the_childs_error_line_is_raised_as_its_message() -> None:
    with pytest.raises(ConversionFailed, match="^disk full$"):
        list(relay_events(_child([_event(1), {"kind": "error", "message": "disk full"}], exit_code=1)))


def test_a_child_that_exits_without_its_end_line_is_a_failure() -> None:
    with pytest.raises(ConversionFailed, match=r"exit 3"):
        list(relay_events(_child([_event(1)], exit_code=3)))
