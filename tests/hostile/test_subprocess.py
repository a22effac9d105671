"""The real entry point (`python -m ckptscope.app.cli`) as separate processes, on a representative subset.

The other hostile tests drive the CLI in-process; this one proves the installed entry point
behaves the same: no payload runs, placeholders are listed, bad input is one line and exit 2.
All processes start at once so the import cost is paid in parallel.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Outcome, assert_one_line_error, spawn_cli
from .corpus import build, by_name

SUBSET = ["megatron_args_os_system", "dcp_metadata_os_system", "mt_shape_disagree", "bin_bitflip_tensor"]


def test_cli_subprocess_subset(tmp_path: Path) -> None:
    procs = []
    for name in SUBSET:
        case = by_name(name)
        path, canary = build(case, tmp_path / name)
        args = ["--stats"] if case.expect == "load_error" else ["--json"] if case.expect == "placeholder" else []
        procs.append((case, canary, spawn_cli("inspect", str(path), *args)))
    for case, canary, proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert not canary.exists(), f"{case.name}: payload ran"
        if case.expect in ("error", "load_error"):
            assert_one_line_error(case, Outcome(proc.returncode, stdout, stderr))
        else:
            assert proc.returncode == 0, stderr
            assert any(p.endswith(case.placeholder) for p in json.loads(stdout)["placeholders"])
