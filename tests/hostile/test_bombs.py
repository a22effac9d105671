"""Small files that used to crash, hang or eat memory: each is one line and exit 2, within bounds.

The cases that allocate (deep nesting, inflation, numpy and frozenset budgets, huge layout
numbers) run the real entry point in a child process whose own peak RSS (wait4) and wall time
are measured against the issue's generous bounds: < 1 GB and < 10 s on a quiet machine (the
bound asserted here is 60 s: the test machine is shared, and a regression is minutes or a kill).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


from .conftest import Outcome, assert_one_line_error, check_case, run_measured
from .corpus import Case, build
from .round2 import BOMBS

MEASURED = {"args_deep_slice", "metadata_deep_slice", "bin_inflate_bomb", "args_numpy_object_array", "args_frozensets",
            "args_pp_billion", "args_vpp_billion", "dcp_huge_shape", "args_etp_grid"}
PEAK_MB, SECONDS = 1024, 60


@pytest.mark.parametrize("case", [c for c in BOMBS if c.name in MEASURED], ids=lambda c: c.name)
def test_bomb_in_a_child(case: Case, tmp_path: Path) -> None:
    path, canary = build(case, tmp_path)
    assert sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) < 10 << 20, "inputs are under 10 MB"
    out = run_measured("inspect", str(path), "--stats")
    assert out.code != -11, f"{case.name}: SIGSEGV"
    assert_one_line_error(case, Outcome(out.code, out.stdout, out.stderr))
    assert out.peak_mb < PEAK_MB, f"{case.name}: peak {out.peak_mb:.0f} MB"
    assert out.seconds < SECONDS, f"{case.name}: {out.seconds:.1f} s"
    assert not canary.exists()


@pytest.mark.parametrize("case", [c for c in BOMBS if c.name not in MEASURED], ids=lambda c: c.name)
def test_bomb_in_process(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)


CHILD = textwrap.dedent(
    """
    import resource, sys
    from tests.hostile.round2 import common_state_inflate
    from ckptscope.inspectors import CheckpointError
    from ckptscope.inspectors.dcp import safe_torch_loads
    from ckptscope.inspectors.errors import reading
    buf = common_state_inflate()
    assert len(buf) < 4 << 20, len(buf)
    try:
        with reading("common_state", "cannot decode"):
            safe_torch_loads(buf)
    except CheckpointError as exc:
        print(exc)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def test_common_state_member_inflating_to_gigabytes(tmp_path: Path) -> None:
    """A DCP bytes entry (common_state) whose 1.5 MB storage member inflates to 1.5 GiB."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, cwd=repo, check=False,
                          env={**os.environ, "PYTHONPATH": str(repo.parent)})
    assert proc.returncode == 0, proc.stderr
    message, peak = proc.stdout.strip().splitlines()
    assert "is compressed and inflates to 1610612736 bytes" in message
    assert int(peak) < PEAK_MB


def test_numpy_object_array_unit() -> None:
    """The same refusal straight from the unpickler: checked before numpy allocates."""
    from ckptscope.inspectors.safe_pickle import safe_loads

    from .round2 import p_numpy_object_array

    with pytest.raises(Exception, match="numpy object array of 300000000 elements"):
        safe_loads(b"\x80\x02" + p_numpy_object_array(Path("/nonexistent")) + b".")


def test_total_budget_is_per_load() -> None:
    """Two loads of the same allowed pickle both succeed: the budget is a counter per unpickling."""
    from ckptscope.inspectors.safe_pickle import safe_loads

    from .round2 import p_frozensets

    data = b"\x80\x02" + p_frozensets(2, 1_000_000)(Path("/nonexistent")) + b"."
    assert [len(s) for s in safe_loads(data)] == [1_000_000, 1_000_000]
    assert [len(s) for s in safe_loads(data)] == [1_000_000, 1_000_000]
    with pytest.raises(Exception, match="allocation budget"):
        safe_loads(b"\x80\x02" + p_frozensets(5, 1_000_000)(Path("/nonexistent")) + b".")
