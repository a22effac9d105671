"""Checkpoints written by megatron-core itself (`tests/mcore_writer.py`: gloo processes on this
CPU), read against megatron-core's own forward; and our Megatron outputs loaded back into
megatron-core's model, strictly, giving its logits again.

The layout under test is MoE experts with a TP of their own (`--expert-tensor-parallel-size`,
megatron-core 0.10+): with TP 2, EP 2 and expert TP 1 the `torch` format has two rank folders,
`mp_rank_00_000` and `mp_rank_01_001`, not four - each holds half of the dense layers' TP shards
and whole experts - and `torch_dist` holds the same tensors by global offsets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ckptscope.converters.verify import verify
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.megatron_common import legacy_rank_folders
from ckptscope.inspectors.model import logical_param_count
from ckptscope.inspectors.rankmap import rank_map

from .helpers import assert_same_hf_state, convert_to

ROOT = Path(__file__).resolve().parents[1]


def write_with_megatron_core(out: Path, *loads: Path, **options: int | str | bool) -> Path:
    """Run tests/mcore_writer.py: megatron-core saves `model` (its MODELS) with the layout in
    `options` and its logits; with `loads`, it loads each of them instead (loaded_logits_K.pt)."""
    pytest.importorskip("megatron.core", reason="megatron-core is a test extra: pip install -e '.[test]'")
    cmd = [sys.executable, "-m", "tests.mcore_writer", str(out), *(f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items()),
           *(f"--load={c}" for c in loads)]
    done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def etp1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_with_megatron_core(tmp_path_factory.mktemp("mcore") / "tp2ep2etp1", tp=2, ep=2, etp=1, world=2)


def _logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from .mcore_writer import probe_ids

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(probe_ids()).logits


def test_legacy_rank_folders_follow_megatron_cores_rank_order() -> None:
    assert legacy_rank_folders(2, 1, 2) == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1)]  # expert TP = TP: the grid
    assert legacy_rank_folders(2, 1, 2, etp=1) == [(0, 0, 0), (1, 0, 1)]
    assert legacy_rank_folders(2, 2, 4, etp=1) == [(e % 2, stage, e) for stage in (0, 1) for e in range(4)]
    assert legacy_rank_folders(4, 1, 2, etp=2) == [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)]


def test_experts_on_their_own_tp_read_from_the_torch_format(etp1: Path, tmp_path: Path) -> None:
    legacy = etp1 / "legacy"
    assert sorted(p.name for p in (legacy / "iter_0000001").iterdir()) == ["mp_rank_00_000", "mp_rank_01_001"]
    ckpt = detect(legacy)
    assert ckpt.parallel.label() == "TP2×PP1×EP2×ETP1" and ckpt.to_json()["parallel"]["etp"] == 1
    grid = rank_map(ckpt)
    assert not grid.missing and sorted(grid.unwritten) == [(0, 0, 1), (1, 0, 0)] and grid.sizes["etp"] == 1
    hf = convert_to(legacy, tmp_path / "hf", "hf")
    reference = torch.load(etp1 / "reference_logits.pt")
    assert (_logits(hf) - reference).abs().max().item() <= 1e-5
    from transformers import AutoModelForCausalLM

    assert logical_param_count(ckpt) == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(hf)).parameters())
    report = verify(legacy, hf)
    assert report.identical and report.logits_ok and not report.config_differences  # ffn_hidden_size (unused: every layer routes) is not a difference


def test_browse_labels_the_expert_tp_folders_complete(etp1: Path, tmp_path: Path) -> None:
    """The browse pane judges completeness from names alone: the two folders megatron-core writes
    for TP2 EP2 expert-TP1 are complete; without one of its model files the folder is not."""
    import shutil

    from ckptscope.inspectors.browse import label_path

    assert label_path(etp1 / "legacy").complete and not label_path(etp1 / "legacy").missing
    copy = tmp_path / "legacy"
    shutil.copytree(etp1 / "legacy", copy)
    (copy / "iter_0000001" / "mp_rank_01_001" / "model_optim_rng.pt").unlink()
    assert label_path(copy).missing == ("mp_rank_01_001/model_optim_rng.pt",)


def test_torch_dist_of_the_same_run_gives_the_same_model(etp1: Path, tmp_path: Path) -> None:
    from_legacy = convert_to(etp1 / "legacy", tmp_path / "a", "hf")
    from_dist = convert_to(etp1 / "dist", tmp_path / "b", "hf")
    assert_same_hf_state(from_legacy, from_dist)


def test_a_megatron_target_from_it_reshards_the_experts(etp1: Path, tmp_path: Path) -> None:
    """ETP1 source -> our Megatron TP2 EP2 (experts split with the dense layers) -> HF: every bit."""
    mt = convert_to(etp1 / "legacy", tmp_path / "mt", "megatron", tp=2, ep=2)
    assert_same_hf_state(convert_to(etp1 / "legacy", tmp_path / "a", "hf"), convert_to(mt, tmp_path / "b", "hf"))


def test_a_missing_rank_folder_is_still_named(etp1: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "legacy"
    shutil.copytree(etp1 / "legacy", copy)
    shutil.rmtree(copy / "iter_0000001" / "mp_rank_01_001")
    with pytest.raises(CheckpointError, match=r"mp_rank_01_001.*missing rank file: args say TP2×PP1×EP2×ETP1 \(1 of 2"):
        detect(copy)


def test_pipeline_stages_with_experts_on_their_own_tp(tmp_path: Path) -> None:
    """TP2 PP2 EP2 expert-TP1 on 4 processes: two rank folders per stage, `mp_rank_TT_PPP_EEE`;
    the torch format and torch_dist of the same run give the same model."""
    run = write_with_megatron_core(tmp_path / "run", tp=2, pp=2, ep=2, etp=1, world=4)
    names = sorted(p.name for p in (run / "legacy" / "iter_0000001").iterdir())
    assert names == ["mp_rank_00_000_000", "mp_rank_00_001_000", "mp_rank_01_000_001", "mp_rank_01_001_001"]
    assert detect(run / "legacy").parallel.label() == "TP2×PP2×EP2×ETP1"
    assert_same_hf_state(convert_to(run / "legacy", tmp_path / "a", "hf"), convert_to(run / "dist", tmp_path / "b", "hf"))


# model (tests/mcore_writer.py MODELS): the layout megatron-core saves it with, and ours
ROUND_TRIPS = {
    "qwen3": ({"tp": 2, "world": 2}, {"tp": 2}),  # QK-norm, kv_channels beside hidden / heads
    "gpt2": ({"tp": 2, "world": 2}, {"tp": 2}),  # LayerNorm, fused bias-GELU (tanh), learned positions, tied head
    "qwen2_moe": ({"tp": 2, "ep": 2, "etp": 1, "world": 2}, {"ep": 2}),  # gated shared expert, first layer dense
}


def _loaded_logits(ckpts: list[Path], out: Path, model: str, layout: dict) -> list[torch.Tensor]:
    """megatron-core's logits with each checkpoint loaded in turn, on as few processes as the layout allows (PP 1)."""
    world = max(layout.get("tp", 1), layout.get("ep", 1) * (layout.get("etp") or layout.get("tp", 1)))
    write_with_megatron_core(out, *ckpts, model=model, world=world, **layout)
    return [torch.load(out / f"loaded_logits_{k}.pt") for k in range(len(ckpts))]


@pytest.mark.parametrize("model", sorted(ROUND_TRIPS))
def test_families_from_megatron_core_and_back_into_it(model: str, tmp_path: Path) -> None:
    """megatron-core's torch and torch_dist files -> HF: transformers gives megatron-core's logits and
    verify finds every field the same; HF -> our Megatron torch and torch_dist: megatron-core loads
    both strictly (every key its model has, no other) and gives its logits again."""
    saved, ours = ROUND_TRIPS[model]
    run = write_with_megatron_core(tmp_path / "run", model=model, **saved)
    reference = torch.load(run / "reference_logits.pt")
    hf = convert_to(run / "legacy", tmp_path / "hf", "hf")
    assert (_logits(hf) - reference).abs().max().item() <= 1e-5
    report = verify(run / "legacy", hf)
    assert report.identical and report.logits_ok and not report.config_differences, report.config_differences
    assert_same_hf_state(hf, convert_to(run / "dist", tmp_path / "hf-dist", "hf"))
    torch_fmt = convert_to(hf, tmp_path / "ours-torch", "megatron", **ours)
    dist = convert_to(hf, tmp_path / "ours-dist", "megatron-dist", **{k: v for k, v in saved.items() if k in ("tp", "ep")})
    for logits in _loaded_logits([torch_fmt, dist], tmp_path / "load", model, ours):  # torch_dist loads into any layout
        assert (logits - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("model", ["mistral", "llama31", "interleaved", "qwen3_moe"])
def test_features_read_from_megatron_core(model: str, tmp_path: Path) -> None:
    """A sliding window (4 keys, the probe 16 tokens long), Llama 3.1's RoPE scaling (without it
    the logits differ by 2.4e-4), RoPE on adjacent channel pairs (TP2), and Qwen3-MoE (QK-norm,
    renormalised top-k; TP2 EP2 expert-TP1), saved by megatron-core: the HF model transformers
    runs gives megatron-core's logits, and verify finds every field the same."""
    layout = {"tp": 2, "ep": 2, "etp": 1} if model.endswith("_moe") else {"tp": 2}
    run = write_with_megatron_core(tmp_path / "run", model=model, world=2, **layout)
    hf = convert_to(run / "legacy", tmp_path / "hf", "hf")
    assert (_logits(hf) - torch.load(run / "reference_logits.pt")).abs().max().item() <= 1e-5
    report = verify(run / "legacy", hf)
    assert report.identical and report.logits_ok and not report.config_differences, report.config_differences


def test_a_model_no_hf_family_holds_is_refused_but_reshards_between_megatron_layouts(tmp_path: Path) -> None:
    """DeepSeek-V3's router (sigmoid, score-correction bias, groups, scale) without latent attention:
    an HF target is refused at plan time in one line; Megatron -> Megatron loads back into
    megatron-core with its logits, correction bias included."""
    from ckptscope.converters.plan import make_plan
    from ckptscope.converters.writers import TargetOptions

    run = write_with_megatron_core(tmp_path / "run", model="deepseek_moe", tp=2, ep=2, etp=1, world=2)
    plan = make_plan(run / "legacy", TargetOptions("hf"))
    assert not plan.ok and any("cannot hold a sigmoid / biased-choice / group-limited / scaled router" in e for e in plan.errors)
    reference = torch.load(run / "reference_logits.pt")
    dist = convert_to(run / "legacy", tmp_path / "dist", "megatron-dist", tp=2, ep=2)
    torch_fmt = convert_to(dist, tmp_path / "torch", "megatron", ep=2)
    for logits in _loaded_logits([torch_fmt, dist], tmp_path / "load", "deepseek_moe", {"ep": 2}):
        assert (logits - reference).abs().max().item() <= 1e-5


def test_our_expert_tp_split_loads_into_megatron_core(etp1: Path, tmp_path: Path) -> None:
    """Our Megatron TP2 EP2 outputs cut every expert over the TP ranks (ETP = TP, fc1 as
    [gate_r; up_r]): megatron-core's TP2 EP2 model (4 processes) loads both strictly and gives the
    logits of the ETP1 run they came from."""
    hf = convert_to(etp1 / "legacy", tmp_path / "hf", "hf")
    ours = [convert_to(hf, tmp_path / "torch", "megatron", tp=2, ep=2), convert_to(hf, tmp_path / "dist", "megatron-dist", tp=2, ep=2)]
    reference = torch.load(etp1 / "reference_logits.pt")
    for logits in _loaded_logits(ours, tmp_path / "load", "mixtral", {"tp": 2, "ep": 2}):
        assert (logits - reference).abs().max().item() <= 1e-5


def test_our_pipeline_stages_load_into_megatron_core(tmp_path: Path) -> None:
    """Our Megatron TP1 PP2 rank files (layers numbered from 0 on each stage, the embedding on the
    first, the head on the last): megatron-core's two stages load them strictly."""
    run = write_with_megatron_core(tmp_path / "run", model="qwen3", tp=2, world=2)
    hf = convert_to(run / "legacy", tmp_path / "hf", "hf")
    ours = [convert_to(hf, tmp_path / "torch", "megatron", pp=2), convert_to(hf, tmp_path / "dist", "megatron-dist", pp=2)]
    write_with_megatron_core(tmp_path / "load", *ours, model="qwen3", pp=2, world=2)  # a missing, extra or misshapen key fails


@pytest.mark.parametrize("layout", [{"pp": 2, "vpp": 2, "layers": 4}, {"pp": 2, "layers": 3, "first-stage-layers": 1}],
                         ids=["pp2-vpp2", "uneven-pp2"])
def test_pipeline_layouts_megatron_core_saves(layout: dict, tmp_path: Path) -> None:
    """Virtual stages (`model0` / `model1` in each rank file, layers numbered per chunk) and an uneven
    split (`decoder_first_pipeline_num_layers`: one layer on stage 0, two on stage 1), as
    megatron-core saves them: the torch format gives the same model as torch_dist of the same run."""
    run = write_with_megatron_core(tmp_path / "run", model="qwen3", world=2, **layout)
    assert_same_hf_state(convert_to(run / "legacy", tmp_path / "a", "hf"), convert_to(run / "dist", tmp_path / "b", "hf"))


def test_a_bf16_run(tmp_path: Path) -> None:
    """A --bf16 run (TP2 EP2 expert-TP1; megatron-core's torch norms stay fp32): HF in bfloat16, the
    same bits from either format, and transformers' bf16 forward within bf16 rounding of megatron-core's."""
    import json

    from transformers import AutoModelForCausalLM

    from .mcore_writer import probe_ids

    run = write_with_megatron_core(tmp_path / "run", model="mixtral", tp=2, ep=2, etp=1, world=2, bf16=True)
    hf = convert_to(run / "legacy", tmp_path / "hf", "hf")
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    assert_same_hf_state(hf, convert_to(run / "dist", tmp_path / "hf-dist", "hf"))
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        got = model(probe_ids()).logits.float()
    reference = torch.load(run / "reference_logits.pt").float()
    assert (got - reference).abs().max().item() <= 2 * 2.0 ** -7 * reference.abs().max().item()  # two bf16 steps at the top


def test_expert_tp_times_ep_below_tp_is_refused_as_unloadable(etp1: Path, tmp_path: Path) -> None:
    """With ETP x EP < TP megatron-core's saving ranks never include some TP ranks: their layer
    shards exist nowhere, and the refusal says so (args edited to TP4 on the ETP1 files)."""
    import shutil

    copy = tmp_path / "legacy"
    shutil.copytree(etp1 / "legacy", copy)
    for rank_file in copy.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)
        state["args"].tensor_model_parallel_size = 4
        torch.save(state, rank_file)
    with pytest.raises(CheckpointError, match=r"no file holds the layers' TP ranks \[2, 3\]"):
        detect(copy)
