"""Conversion streams: peak memory stays near a few layers, far below the model size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec

# 12 layers of ~50 MB (fp32), small vocab so the layers dominate: model ≈ 640 MB.
SPEC = SampleSpec(layers=12, hidden=1024, heads=16, kv_heads=4, ffn=3584, vocab=2048)

CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ckptscope.converters.plan import make_plan
    from ckptscope.converters.run import convert
    from ckptscope.converters.writers import TargetOptions

    def hwm():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                yield line.split(":")[0], int(line.split()[1]) * 1024

    src, dst, fmt, tp, pp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    plan = make_plan(src, TargetOptions(fmt, tp=tp, pp=pp), true_vocab=2048)
    assert plan.ok, plan.errors
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter after imports and planning
    base = dict(hwm())["VmRSS"]
    for _ in convert(plan, dst):
        pass
    print(json.dumps({"base": base, "peak": dict(hwm())["VmHWM"]}))
    """
)


def _layer_bytes(spec: SampleSpec) -> int:
    shapes = spec.canonical_shapes()
    return sum(math.prod(s) for n, s in shapes.items() if n.startswith("layers.0.")) * spec.dtype.itemsize


@pytest.mark.parametrize(("source", "fmt", "tp", "pp"), [("megatron", "hf", 1, 1), ("hf", "megatron", 2, 2)])
def test_peak_memory_is_a_few_layers(tmp_path: Path, source: str, fmt: str, tp: int, pp: int) -> None:
    src = tmp_path / "src"
    if source == "megatron":
        write_megatron_torch(SPEC, src, tp=2, pp=2)
    else:
        write_hf(SPEC, src, shards=4)
    model_bytes = SPEC.nbytes()
    layer = _layer_bytes(SPEC)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp_path / "out"), fmt, str(tp), str(pp)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = result["peak"] - result["base"]
    print(f"layer {layer / 2**20:.0f} MiB, model {model_bytes / 2**20:.0f} MiB, peak growth {growth / 2**20:.0f} MiB")
    # read shards + gathered canonical tensors + target shards of one layer, plus transient copies
    assert growth < 4 * layer + 64 * 2**20, (growth, layer)
    assert growth < model_bytes / 2
