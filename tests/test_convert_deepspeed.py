"""DeepSpeed / Megatron-DeepSpeed conversion: real corpus items (logits against the owning
library's forward), Megatron-DeepSpeed pipeline fixtures with TP=2 (both layer-index maps),
Megatron-named modules, and fp32 rebuilds from ZeRO-1/2/3 optimizer partitions.

The pipeline fixtures use Llama-style blocks (RMSNorm, SwiGLU, GQA) in Megatron-DeepSpeed
names and GPT-2/BLOOM-style layer numbering; pipelines with real GPT-2/BLOOM blocks (LayerNorm,
GeLU, learned positions, embedding norm) are in `test_convert_deepspeed_families.py`.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from ckptscope.converters.ops import split
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.samples import deepspeed as dss
from ckptscope.converters.samples.hf import hf_name, write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers import TargetOptions
from ckptscope.converters.writers.xser import pickled_as
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from safetensors.torch import load_file

SPEC = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)


def _convert(src: Path, dst: Path, fmt: str = "hf", *, config: Path | None = None, true_vocab: int | None = None,
             from_optimizer_fp32: bool = False, **kw) -> Path:
    plan = make_plan(src, TargetOptions(fmt, **kw), config=config, true_vocab=true_vocab,
                     from_optimizer_fp32=from_optimizer_fp32)
    assert plan.ok, plan.errors
    run_to_end(plan, dst)
    return dst


def _state(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _assert_spec_tensors(folder: Path, spec: SampleSpec, dtype: torch.dtype | None = None) -> None:
    state = _state(folder)
    assert set(state) == {hf_name(c) for c in spec.canonical_shapes()}
    for canon in spec.canonical_shapes():
        want = spec.tensor(canon).to(dtype or spec.dtype)
        assert torch.equal(state[hf_name(canon)], want), canon


# ----- real corpus ----------------------------------------------------------------------------
def _corpus_logits(folder: Path, item: Path, reference: str) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        logits = model(torch.load(item / "input_ids.pt")).logits.float()
    return (logits - torch.load(item / reference)).abs().max().item()


def _config_from_hparams(item: Path, out: Path) -> Path:
    """pipe2_mp ships hparams.json, not config.json: the same numbers as a transformers LlamaConfig."""
    import transformers

    h = json.loads((item / "hparams.json").read_text())
    config = transformers.LlamaConfig(
        vocab_size=h["vocab_size"], hidden_size=h["hidden_size"], intermediate_size=h["intermediate_size"],
        num_hidden_layers=h["num_layers"], num_attention_heads=h["num_attention_heads"],
        num_key_value_heads=h["num_key_value_heads"], rms_norm_eps=h["rms_norm_eps"], rope_theta=h["rope_theta"],
        tie_word_embeddings=h["tie_word_embeddings"])
    out.write_text(config.to_json_string())
    return out


@pytest.mark.parametrize(("from_fp32", "reference", "tol"), [(False, "reference_logits.pt", 1e-2),
                                                            (True, "reference_logits_fp32.pt", 1e-4)])
def test_corpus_zero2_bf16(corpus: Path, tmp_path: Path, from_fp32: bool, reference: str, tol: float) -> None:
    item = corpus / "deepspeed" / "zero2_bf16"
    out = _convert(item, tmp_path / "hf", config=item / "config.json", from_optimizer_fp32=from_fp32)
    dtype = next(iter(_state(out).values())).dtype
    assert dtype == (torch.float32 if from_fp32 else torch.bfloat16)
    diff = _corpus_logits(out, item, reference)
    print(f"zero2_bf16 from_optimizer_fp32={from_fp32}: max |logits diff| {diff:.3g}")
    assert diff <= tol


def test_corpus_zero2_finds_the_trainer_config(corpus: Path, tmp_path: Path) -> None:
    """A Trainer-style folder (`config.json` beside `latest` and `global_step2/`) converts without
    --config, and the plan says where the architecture came from (issue 14)."""
    item = corpus / "deepspeed" / "zero2_bf16"
    plan = make_plan(item, TargetOptions("hf"))
    assert plan.ok and f"architecture: from {item / 'config.json'}" in plan.notes
    out = _convert(item, tmp_path / "hf")
    assert _corpus_logits(out, item, "reference_logits.pt") <= 1e-2


def test_zero_without_any_config_still_asks_for_one(tmp_path: Path) -> None:
    root = dss.write_deepspeed_zero(SPEC, tmp_path / "ds", dp=2, stage=2, bf16=True)
    with pytest.raises(CheckpointError, match="--config"):
        make_plan(root, TargetOptions("hf"))


def test_corpus_pipe2_mp(corpus: Path, tmp_path: Path) -> None:
    item = corpus / "deepspeed" / "pipe2_mp"
    with pytest.raises(CheckpointError, match="module=None.*--config"):
        make_plan(item, TargetOptions("hf"))
    config = _config_from_hparams(item, tmp_path / "config.json")
    out = _convert(item, tmp_path / "hf", config=config)
    diff = _corpus_logits(out, item, "reference_logits.pt")
    print(f"pipe2_mp: max |logits diff| {diff:.3g}")
    assert diff <= 1e-4
    # DeepSpeed -> Megatron with a larger TP than the source had, then back
    mt = _convert(item, tmp_path / "mt", "megatron", config=config, tp=2, pp=2)
    back = _convert(mt, tmp_path / "back")
    assert _corpus_logits(back, item, "reference_logits.pt") <= 1e-4


# ----- Megatron-DeepSpeed pipeline fixtures ---------------------------------------------------
@pytest.mark.parametrize("style", dss.PIPELINE_STYLES)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_pipeline_tp2_to_hf(tmp_path: Path, style: str, tied: bool) -> None:
    spec = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300, tied=tied)
    root = dss.write_deepspeed_pipeline(spec, tmp_path / "ds", tp=2, pp=2, style=style)
    plan = make_plan(root, TargetOptions("hf"), true_vocab=spec.vocab)
    assert plan.ok, plan.errors
    assert any(style in note for note in plan.notes), plan.notes
    run_to_end(plan, tmp_path / "hf")
    _assert_spec_tensors(tmp_path / "hf", spec)


@pytest.mark.parametrize("style", dss.PIPELINE_STYLES)
def test_pipeline_without_model_axis_names_files_without_rank(tmp_path: Path, style: str) -> None:
    """A plain PipelineModule run without model parallelism saves `layer_XX-model_states.pt`
    (no `-model_YY`) beside `mp_rank_XX` files whose module is None (issue 14)."""
    root = dss.write_deepspeed_pipeline(SPEC, tmp_path / "ds", tp=1, pp=2, style=style, model_axis=False)
    names = [p.name for p in (root / "global_step2").glob("layer_*")]
    assert names and all(re.fullmatch(r"layer_\d\d-model_states\.pt", n) for n in names), names
    ckpt = detect(root)
    assert ckpt.parallel.tp == 1 and ckpt.model_tensors()
    assert all(not t.name[0].isdigit() and t.global_name[0].isdigit() for t in ckpt.model_tensors())  # stored vs global
    _assert_spec_tensors(_convert(root, tmp_path / "hf", true_vocab=SPEC.vocab), SPEC)


def test_corpus_pipeline_files_without_rank_suffix(corpus: Path, tmp_path: Path) -> None:
    """DeepSpeed's own pipe2_mp files renamed as a topology without a model axis names them."""
    import shutil

    item = tmp_path / "pipe"
    shutil.copytree(corpus / "deepspeed" / "pipe2_mp", item)
    for path in (item / "global_step2").glob("layer_*-model_00-model_states.pt"):
        path.rename(path.with_name(path.name.replace("-model_00-", "-")))
    hparams = item / "hparams.json"
    config = _config_from_hparams(item, tmp_path / "config.json") if hparams.exists() else None
    plan = make_plan(item, TargetOptions("hf"), config=config)
    assert plan.ok, plan.errors


@pytest.mark.parametrize("layout", [dict(tp=1, pp=1), dict(tp=4, pp=2), dict(tp=1, pp=4)], ids=str)
def test_pipeline_to_megatron_any_layout(tmp_path: Path, layout: dict) -> None:
    root = dss.write_deepspeed_pipeline(SPEC, tmp_path / "ds", tp=2, pp=2, style="microsoft")
    mt = _convert(root, tmp_path / "mt", "megatron", true_vocab=SPEC.vocab, **layout)
    _assert_spec_tensors(_convert(mt, tmp_path / "hf"), SPEC)
    mult = max(1, layout["tp"] // SPEC.kv_heads)
    nxd = _convert(root, tmp_path / "nxd", "nxd", true_vocab=SPEC.vocab, kv_size_multiplier=mult, **layout)
    config = write_hf(SPEC, tmp_path / "ref") / "config.json"
    _assert_spec_tensors(_convert(nxd, tmp_path / "hf2", config=config), SPEC)


def test_megatron_named_module_tp2(tmp_path: Path) -> None:
    """Megatron-DeepSpeed without a pipeline engine: the module in mp_rank_0T holds legacy names."""
    tag = tmp_path / "ds" / "global_step3"
    tag.mkdir(parents=True)
    tp = 2
    for rank in range(tp):
        module = OrderedDict({"language_model.embedding.word_embeddings.weight": split(dss.padded(SPEC, "embed", tp), 0, tp)[rank]})
        for i in range(SPEC.layers):
            module.update({f"language_model.encoder.layers.{i}.{k}": v.contiguous()
                           for k, v in dss.block_state(SPEC, i, tp, rank).items()})
        module["language_model.encoder.final_layernorm.weight"] = SPEC.tensor("final_norm")
        module["language_model.output_layer.weight"] = split(dss.padded(SPEC, "lm_head", tp), 0, tp)[rank]
        state = dss.engine_state(step=3, dp=1, mp=tp, tp=tp, pp=1, ds_config={"zero_optimization": {"stage": 0}})
        state.update(module=OrderedDict((k, v.clone()) for k, v in module.items()), args=dss.megatron_args(SPEC, tp, 1, 3))
        torch.save(state, tag / f"mp_rank_{rank:02d}_model_states.pt")
    (tmp_path / "ds" / "latest").write_text(tag.name)
    _assert_spec_tensors(_convert(tmp_path / "ds", tmp_path / "hf", true_vocab=SPEC.vocab), SPEC)


# ----- ZeRO fp32 rebuilds ---------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_rebuild(tmp_path: Path, stage: int) -> None:
    root = dss.write_deepspeed_zero(SPEC, tmp_path / "ds", dp=3, stage=stage, bf16=True)
    config = write_hf(SPEC, tmp_path / "ref") / "config.json"
    module = _convert(root, tmp_path / "module", config=config)
    _assert_spec_tensors(module, SPEC, torch.bfloat16)
    rebuilt = _convert(root, tmp_path / "fp32", config=config, from_optimizer_fp32=True)
    _assert_spec_tensors(rebuilt, SPEC, torch.float32)


def _write_zero3(spec: SampleSpec, root: Path, dp: int) -> Path:
    """ZeRO-3 as DeepSpeed saves it: placeholder modules per DP rank, each rank's pieces of every param."""
    tag = root / "global_step2"
    tag.mkdir(parents=True)
    master = {name: spec.tensor(canon).float() for name, canon in dss.hf_names(spec).items()}
    ds_config = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    flats: list[list[torch.Tensor]] = [[] for _ in range(dp)]
    for t in master.values():
        part = -(-t.numel() // dp)
        padded = torch.cat([t.reshape(-1), t.new_zeros(part * dp - t.numel())])
        for rank in range(dp):
            flats[rank].append(padded[rank * part:(rank + 1) * part])
    for rank in range(dp):
        state = dss.engine_state(step=2, dp=dp, mp=1, tp=1, pp=1, ds_config=ds_config)
        state["module"] = OrderedDict((name, torch.empty(0, dtype=torch.bfloat16)) for name in master)
        state["param_shapes"] = [OrderedDict((name, t.shape) for name, t in master.items())]
        torch.save(state, tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        with pickled_as(*dss.DS_STUBS):
            osd = {"zero_stage": dss.ZeroStageEnum(3), "loss_scaler": dss.LossScaler(cur_scale=1.0, dynamic=False),
                   "dynamic_loss_scale": False, "overflow": False, "partition_count": dp,
                   "optimizer_state_dict": {"state": {}, "param_groups": []},
                   "fp32_flat_groups": [torch.cat(flats[rank]).clone()]}
            torch.save({"optimizer_state_dict": osd, "ds_config": ds_config, "ds_version": dss.DS_VERSION},
                       tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (root / "latest").write_text(tag.name)
    return root


def test_zero3_needs_option_then_rebuilds(tmp_path: Path) -> None:
    spec = SampleSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=97, vocab=301)  # odd sizes: padded pieces
    root = _write_zero3(spec, tmp_path / "ds", dp=4)
    config = write_hf(spec, tmp_path / "ref") / "config.json"
    with pytest.raises(CheckpointError, match="--from-optimizer-fp32"):
        make_plan(root, TargetOptions("hf"), config=config)
    _assert_spec_tensors(_convert(root, tmp_path / "hf", config=config, from_optimizer_fp32=True), spec, torch.float32)


def test_pipeline_zero1_rebuild_tp2_pp2(tmp_path: Path) -> None:
    """Megatron-DeepSpeed pipeline + ZeRO-1: optimizer param names are `<layer index>.<name>` per mp rank."""
    tp, pp = 2, 2
    root = dss.write_deepspeed_pipeline(SPEC, tmp_path / "ds", tp=tp, pp=pp, style="bigscience")
    master_spec = SampleSpec(**{**SPEC.__dict__, "seed": 7})  # different values: proves they come from the optimizer
    files = dss.pipeline_layer_files(master_spec, tp, "bigscience")
    numbers = sorted(files)
    stages = [numbers[: 1 + SPEC.layers // 2], numbers[1 + SPEC.layers // 2:]]
    tag = root / "global_step2"
    for stage, layer_numbers in enumerate(stages):
        for rank in range(tp):
            mp = stage * tp + rank
            params = OrderedDict((f"{n}.{k}", v.float()) for n in layer_numbers for k, v in files[n](rank).items())
            state = torch.load(tag / f"mp_rank_{mp:02d}_model_states.pt", weights_only=False)
            state["param_shapes"] = [OrderedDict((name, t.shape) for name, t in params.items())]
            torch.save(state, tag / f"mp_rank_{mp:02d}_model_states.pt")
            with pickled_as(*dss.DS_STUBS):
                for dp_rank, part in enumerate(dss.zero_partitions(params, 2)):
                    osd = dss.optimizer_state(part, stage=1, dp=2, step=2, params=len(params))
                    torch.save({"optimizer_state_dict": osd, "ds_config": {}, "ds_version": dss.DS_VERSION},
                               tag / f"zero_pp_rank_{dp_rank}_mp_rank_{mp:02d}_optim_states.pt")
    out = _convert(root, tmp_path / "hf", true_vocab=SPEC.vocab, from_optimizer_fp32=True)
    _assert_spec_tensors(out, master_spec, torch.float32)
