"""MoE layers read and checked as one buffer: the same values as the one-tensor-at-a-time engine.

- Megatron `torch` sources read TP shards straight into one group buffer (`sources/tp_read.py`):
  the canonical tensors equal loading every shard and `row.gather`, for local, TE and legacy
  naming, at TP 1 and 2 (legacy QKV orders, undone per rank, are gathered as before:
  tests/test_families.py), and a flipped bit in an expert weight, row-cut or column-cut,
  still fails the conversion on the member's CRC-32;
- the NaN/Inf check of tensors sharing one buffer (one sum over it) names exactly the tensors
  that hold non-finite values.

Whole conversions (HF -> Megatron TP2EP2 and back) are checked byte for byte by
tests/test_engine_golden.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptscope.converters.plan import make_plan
from ckptscope.converters.row import gather
from ckptscope.converters.run import non_finite, run_to_end
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.shards import Geometry
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError

MOE = SampleSpec(layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, experts=8, expert_ffn=48, vocab=500, dtype=torch.bfloat16)
DENSE = SampleSpec(layers=2, hidden=64, heads=4, kv_heads=4, ffn=96, vocab=500, dtype=torch.bfloat16)  # the legacy layout has no MoE


# ----- Megatron `torch` sources: shards read in place -----------------------------------------
@pytest.fixture(scope="module")
def megatron_moe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {"local": write_megatron_torch(MOE, root / "local", tp=2, ep=2),
            "tp1": write_megatron_torch(MOE, root / "tp1", tp=1, ep=2),
            "te": write_megatron_torch(MOE, root / "te", tp=2, ep=2, te=True),
            "legacy": write_megatron_torch(DENSE, root / "legacy", tp=2, legacy=True)}


def _reference(source, group: int) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """What the source returned before: every shard loaded, then `row.gather`."""
    out: dict[str, torch.Tensor] = {}
    for param, name, canon in source._expected(group):
        shards = [source.ckpt.load(t) for t in source.index[name]]
        out.update(zip(canon, gather(param, shards, Geometry(source.spec, len(shards)))))
    return out


@pytest.mark.parametrize("variant", ["local", "tp1", "te", "legacy"])
def test_megatron_source_reads_shards_in_place(megatron_moe: dict[str, Path], variant: str) -> None:
    plan = make_plan(megatron_moe[variant], TargetOptions("hf"), true_vocab=MOE.vocab)
    assert plan.ok, plan.errors
    source = plan.source
    for group in plan.groups:
        got, want = source.read(group), _reference(source, group)
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
            assert torch.equal(got[name], want[name]), name
    layer = source.read(0)
    if variant != "legacy":
        experts = [t for name, t in layer.items() if ".experts." in name]
        assert len(experts) == 3 * MOE.experts
        assert len({t.untyped_storage().data_ptr() for t in experts}) == 1  # the layer's experts share one buffer


def _flip_expert(root: Path, suffix: str) -> Path:
    """XOR a byte in the middle of the first expert weight named `...{suffix}` of a rank file."""
    ckpt = detect(root)
    info = next(t for t in ckpt.model_tensors() if ".experts." in t.name and t.name.endswith(suffix))
    ref = info.source.tensor.storage  # type: ignore[union-attr]
    at = ref.data_offset() + info.numel  # half-way through the bf16 bytes
    data = bytearray(ref.file.read_bytes())
    data[at] ^= 0x10
    ref.file.write_bytes(bytes(data))
    return ref.file


@pytest.mark.parametrize("tp", [1, 2])  # TP 1: the shard read whole in place
@pytest.mark.parametrize("suffix", ["linear_fc1.weight", "linear_fc2.weight"])  # read in place: rows; via scratch: columns
def test_flipped_bit_in_an_expert_fails_on_its_crc(tmp_path: Path, suffix: str, tp: int) -> None:
    src = write_megatron_torch(MOE, tmp_path / "src", tp=tp, ep=2)
    path = _flip_expert(src, suffix)
    plan = make_plan(src, TargetOptions("hf"), true_vocab=MOE.vocab)
    assert plan.ok, plan.errors
    with pytest.raises(CheckpointError, match="CRC-32 mismatch") as err:
        run_to_end(plan, tmp_path / "out")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


# ----- NaN / Inf over a shared buffer -------------------------------------------------------
def test_non_finite_names_exactly_the_bad_views_of_a_shared_buffer() -> None:
    buf = torch.randn(64 * 100).to(torch.bfloat16)
    views = {f"experts.{i}": buf[i * 100:(i + 1) * 100].view(10, 10) for i in range(64)}
    assert non_finite(views) == []
    buf[3 * 100 + 7] = float("nan")
    buf[40 * 100] = float("inf")
    buf[40 * 100 + 1] = float("-inf")
    assert non_finite(views) == ["experts.3: 1 NaN, 0 Inf", "experts.40: 0 NaN, 2 Inf"]


def test_non_finite_is_exact_when_the_buffer_sum_overflows() -> None:
    """Finite values whose sum overflows prove nothing as a span; each tensor is then checked."""
    buf = torch.full((4 * 8,), 3.0e38, dtype=torch.float32)
    views = {f"t{i}": buf[i * 8:(i + 1) * 8] for i in range(4)}
    assert non_finite(views) == []
