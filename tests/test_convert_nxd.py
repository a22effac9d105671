"""NxD conversion: HF -> NxD -> HF bit-identical with logits, every layout option, NxD <-> Megatron.

Sources are tiny random `transformers` models; the NxD reader is also checked against the
independent sample writer (`samples/nxd.py`), and the NxD writer file by file against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.app.cli import app
from ckptscope.converters.plan import make_plan
from ckptscope.converters.samples.hf import hf_name, write_hf
from ckptscope.converters.samples.nxd import write_nxd
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from safetensors.torch import load_file
from typer.testing import CliRunner

from .helpers import (
    assert_same_hf_state,
    convert_to,
    hf_state,
    logits_diff,
    saved_models,
)

COMMON = dict(vocab_size=300, hidden_size=64, num_hidden_layers=4, num_attention_heads=8, max_position_embeddings=128)


def _build(kind: str) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    if kind == "llama-gqa":
        config = transformers.LlamaConfig(intermediate_size=96, num_key_value_heads=2, **COMMON)
    elif kind == "llama-mha":
        config = transformers.LlamaConfig(intermediate_size=96, num_key_value_heads=8, **COMMON)
    elif kind == "llama-tied":
        config = transformers.LlamaConfig(intermediate_size=96, num_key_value_heads=4, tie_word_embeddings=True, **COMMON)
    elif kind == "mixtral":
        config = transformers.MixtralConfig(intermediate_size=32, num_key_value_heads=2, num_local_experts=4,
                                            num_experts_per_tok=2, **COMMON)
    else:
        raise ValueError(kind)
    cls = transformers.MixtralForCausalLM if kind == "mixtral" else transformers.LlamaForCausalLM
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial norms so every term shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    return saved_models(tmp_path_factory, ("llama-gqa", "llama-mha", "llama-tied", "mixtral"), _build)


_state = hf_state


_convert = convert_to


def _assert_same_model(src: Path, back: Path, model: torch.nn.Module, tol: float = 1e-5) -> None:
    assert_same_hf_state(src, back)
    diff = logits_diff(back, model, model.config.vocab_size)
    assert diff <= tol, diff


ROUND_TRIPS = [
    ("llama-gqa", dict(tp=2, pp=2)),
    ("llama-gqa", dict(tp=2, pp=2, xser=True)),
    ("llama-gqa", dict(tp=2, pp=2, fuse_qkv=True)),
    ("llama-gqa", dict(tp=2, pp=2, fuse_qkv=True, xser=True)),
    ("llama-gqa", dict(tp=4, pp=1, kv_size_multiplier=2)),  # TP > KV heads: replicated KV, reordered Q
    ("llama-gqa", dict(tp=4, pp=2, kv_size_multiplier=2, fuse_qkv=True, xser=True)),
    ("llama-gqa", dict(tp=2, pp=2, kv_size_multiplier=4, fuse_qkv=True)),  # replication without need
    ("llama-gqa", dict(tp=2, pp=2, nxd_style="megatron")),
    ("llama-gqa", dict(tp=4, pp=2, nxd_style="megatron", kv_size_multiplier=2, xser=True)),
    ("llama-mha", dict(tp=2, pp=2, nxd_style="megatron")),  # query_key_value (coalesced)
    ("llama-tied", dict(tp=2, pp=2, xser=True)),
    ("mixtral", dict(tp=2, pp=2, ep=2)),
    ("mixtral", dict(tp=2, pp=1, ep=4, xser=True)),
]


@pytest.mark.parametrize(("kind", "layout"), ROUND_TRIPS,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{v}" for k, v in v.items()))
def test_hf_nxd_hf_round_trip(models, tmp_path: Path, kind: str, layout: dict) -> None:
    src, model = models[kind]
    nxd = _convert(src, tmp_path / "nxd", "nxd", **layout)
    tag = nxd / "step_1"
    assert (tag / "checkpoint").read_text() == "1" and (tag / "done").read_text() == "1"
    ckpt = detect(nxd)
    assert ckpt.kind == "nxd" and ckpt.complete
    assert (ckpt.parallel.tp, ckpt.parallel.pp, ckpt.parallel.ep) == (layout["tp"], layout["pp"], layout.get("ep", 1))
    assert ckpt.metadata["nxd"]["xser"] == layout.get("xser", False)
    assert ckpt.metadata["nxd"]["style"] == layout.get("nxd_style", "hf")
    if layout.get("xser"):
        assert list((tag / "model").glob("*.pt.tensors/tensor_0.pt")) and list((tag / "model").glob("*.pt.info.pt"))
    back = _convert(nxd, tmp_path / "hf", "hf", config=src / "config.json")
    _assert_same_model(src, back, model)


def test_fused_qkv_is_split_by_true_row_counts(models, tmp_path: Path) -> None:
    """GQA per-rank [q_r; k_r; v_r] has unequal parts: NxD's equal-thirds split would be wrong."""
    src, _ = models["llama-gqa"]
    nxd = _convert(src, tmp_path / "nxd", "nxd", tp=2, pp=1, fuse_qkv=True)
    fused = detect(nxd).tensor("model.layers.0.self_attn.qkv_proj.weight_qkv", {"tp": 0})
    q_rows, kv_rows = 4 * 8, 1 * 8  # per rank: 4 of 8 Q heads, 1 of 2 KV heads, head_dim 8
    assert fused.shape == (q_rows + 2 * kv_rows, 64) and q_rows != fused.shape[0] // 3
    plan = make_plan(nxd, TargetOptions("hf"), config=src / "config.json")
    source = plan.source
    q = source.read(0)["layers.0.attn.q"]
    assert torch.equal(q, load_file(str(src / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"])


def test_nxd_megatron_hf(models, tmp_path: Path) -> None:
    src, model = models["llama-gqa"]
    nxd = _convert(src, tmp_path / "nxd", "nxd", tp=4, pp=2, kv_size_multiplier=2, fuse_qkv=True)
    mt = _convert(nxd, tmp_path / "mt", "megatron", tp=2, pp=4, config=src / "config.json")
    nxd2 = _convert(mt, tmp_path / "nxd2", "nxd", tp=2, pp=1, xser=True)  # Megatron -> NxD
    back = _convert(nxd2, tmp_path / "hf", "hf", config=src / "config.json")
    _assert_same_model(src, back, model)


def test_mixtral_nxd_megatron_round_trip(models, tmp_path: Path) -> None:
    src, model = models["mixtral"]
    nxd = _convert(src, tmp_path / "nxd", "nxd", tp=2, pp=2, ep=2)
    mt = _convert(nxd, tmp_path / "mt", "megatron", tp=1, pp=2, ep=4, config=src / "config.json")
    back = _convert(mt, tmp_path / "hf", "hf")
    _assert_same_model(src, back, model)


SAMPLE = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=256)
SAMPLE_MOE = SampleSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=32, vocab=256, experts=4)
SAMPLE_LAYOUTS = [
    (SAMPLE, dict(tp=2, pp=2)),
    (SAMPLE, dict(tp=2, pp=2, xser=True, fuse_qkv=True)),
    (SAMPLE, dict(tp=4, pp=2, kv_size_multiplier=2)),
    (SAMPLE, dict(tp=8, pp=1, kv_size_multiplier=4, fuse_qkv=True, xser=True)),
    (SAMPLE, dict(tp=2, pp=2, style="megatron", xser=True)),
    (SAMPLE_MOE, dict(tp=2, pp=2, ep=2)),
    (SAMPLE_MOE, dict(tp=2, pp=1, ep=2, xser=True)),
]


def _config_for(spec: SampleSpec, folder: Path) -> Path:
    write_hf(spec, folder)
    return folder / "config.json"


@pytest.mark.parametrize(("spec", "layout"), SAMPLE_LAYOUTS,
                         ids=lambda v: "moe" if isinstance(v, SampleSpec) and v.experts else "dense" if isinstance(v, SampleSpec)
                         else "-".join(f"{k}{v}" for k, v in v.items()))
def test_reader_matches_sample_writer(tmp_path: Path, spec: SampleSpec, layout: dict) -> None:
    """The sample writer lays NxD files out independently of the converter; reading them gives the spec's tensors."""
    write_nxd(spec, tmp_path / "nxd", **layout)
    config = _config_for(spec, tmp_path / "ref")
    back = _convert(tmp_path / "nxd", tmp_path / "hf", "hf", config=config)
    state = _state(back)
    for canon in spec.canonical_shapes():
        assert torch.equal(state[hf_name(canon)], spec.tensor(canon)), canon


@pytest.mark.parametrize(("spec", "layout"), SAMPLE_LAYOUTS,
                         ids=lambda v: "moe" if isinstance(v, SampleSpec) and v.experts else "dense" if isinstance(v, SampleSpec)
                         else "-".join(f"{k}{v}" for k, v in v.items()))
def test_writer_matches_sample_writer(tmp_path: Path, spec: SampleSpec, layout: dict) -> None:
    """Every shard the converter writes holds the same names and values as the sample writer's."""
    write_nxd(spec, tmp_path / "expected", tag="step_1", **layout)
    hf = write_hf(spec, tmp_path / "hf")
    opts = {("nxd_style" if k == "style" else k): v for k, v in layout.items()}
    _convert(hf, tmp_path / "got", "nxd", **opts)
    want, got = detect(tmp_path / "expected"), detect(tmp_path / "got")
    key = lambda t: (t.file.rsplit("/", 1)[-1], t.name)
    want_by, got_by = {key(t): t for t in want.model_tensors()}, {key(t): t for t in got.model_tensors()}
    assert want_by.keys() == got_by.keys()
    for k, info in want_by.items():
        assert torch.equal(want.load(info), got.load(got_by[k])), k


def test_tp_above_kv_heads_needs_multiplier(models) -> None:
    src, _ = models["llama-gqa"]
    plan = make_plan(src, TargetOptions("nxd", tp=4))
    assert not plan.ok and "--kv-size-multiplier 2" in " ".join(plan.errors)


def test_nxd_source_needs_config(models, tmp_path: Path) -> None:
    src, _ = models["llama-gqa"]
    nxd = _convert(src, tmp_path / "nxd", "nxd", tp=2)
    with pytest.raises(CheckpointError, match="--config"):
        make_plan(nxd, TargetOptions("hf"))


def test_cli_convert_to_nxd(models, tmp_path: Path) -> None:
    src, model = models["llama-gqa"]
    runner = CliRunner()
    out = tmp_path / "nxd"
    result = runner.invoke(app, ["convert", str(src), str(out), "--to", "nxd", "--tp", "4", "--pp", "2",
                                 "--kv-size-multiplier", "2", "--fuse-qkv", "--xser", "--nxd-style", "hf", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == "nxd"
    assert detect(out).metadata["nxd"]["xser"] is True
    plain = tmp_path / "plain"
    result = runner.invoke(app, ["convert", str(src), str(plain), "--to", "nxd", "--tp", "2", "--no-xser", "--no-fuse-qkv"])
    assert result.exit_code == 0, result.output
    assert detect(plain).metadata["nxd"]["xser"] is False
    back = tmp_path / "back"
    result = runner.invoke(app, ["convert", str(out), str(back), "--to", "hf", "--config", str(src / "config.json")])
    assert result.exit_code == 0, result.output
    _assert_same_model(src, back, model)
