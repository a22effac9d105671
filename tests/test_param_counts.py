"""Parameter counts (issue 14): what `inspect` calls parameters equals the model's own
`sum(p.numel() for p in model.parameters())` in every format and layout, replicas across TP /
EP ranks counted once, and stored buffers (xIELU constants) shown apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.converters.samples import deepspeed as dss
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.megatron_dist import write_megatron_dist
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.nxd import write_nxd
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import detect
from ckptscope.inspectors.summary import logical_param_count

from .helpers import convert_to


def _model(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    small = dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=96)
    config = {"llama": lambda: t.LlamaConfig(**small),
              "mixtral": lambda: t.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **small),
              "apertus": lambda: t.ApertusConfig(**small)}[kind]()
    return t.AutoModelForCausalLM.from_config(config)


LAYOUTS = [("hf", {}), ("megatron", dict(tp=2, pp=2)), ("megatron-dist", dict(tp=2)), ("nxd", dict(tp=2, pp=2))]


@pytest.mark.parametrize(("fmt", "layout"), LAYOUTS, ids=[f for f, _ in LAYOUTS])
def test_llama_counts_in_every_format(tmp_path: Path, fmt: str, layout: dict) -> None:
    model = _model("llama")
    model.save_pretrained(tmp_path / "src")
    out = tmp_path / "src" if fmt == "hf" else convert_to(tmp_path / "src", tmp_path / fmt, fmt, **layout)
    ckpt = detect(out)
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    assert detect(out).to_json()["totals"]["parameters"] == logical_param_count(ckpt)


@pytest.mark.parametrize("fmt", ["megatron", "megatron-dist"])
def test_expert_parallel_replicas_count_once(tmp_path: Path, fmt: str) -> None:
    """Non-expert tensors sit on every EP rank: they are one parameter set, not EP of them."""
    model = _model("mixtral")
    model.save_pretrained(tmp_path / "src")
    out = convert_to(tmp_path / "src", tmp_path / fmt, fmt, tp=1, ep=2)
    ckpt = detect(out)
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    if fmt == "megatron":
        assert ckpt.param_count() > logical_param_count(ckpt)  # the stored elements do repeat across EP ranks


def test_buffers_are_shown_apart(tmp_path: Path) -> None:
    model = _model("apertus")
    model.save_pretrained(tmp_path / "src")
    ckpt = detect(tmp_path / "src")
    stored_buffers = sum(b.numel() for name, b in model.state_dict().items() if name.endswith((".beta", ".eps")))
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    assert logical_param_count(ckpt, buffers=True) == stored_buffers > 0
    # what the user sees: inspect's totals name the buffers beside the parameters, never inside them
    from ckptscope.app.cli import app
    from typer.testing import CliRunner

    doc = json.loads(CliRunner().invoke(app, ["inspect", str(tmp_path / "src"), "--json"]).stdout)
    assert (doc["totals"]["parameters"], doc["totals"]["buffer_elements"]) == (logical_param_count(ckpt), stored_buffers)
    human = CliRunner().invoke(app, ["inspect", str(tmp_path / "src")], terminal_width=200)
    assert f"{logical_param_count(ckpt):,} + {stored_buffers:,} in buffers" in human.stdout, human.stdout


@pytest.mark.parametrize("item", ["hf/llama_gqa_sharded", "hf/llama_gqa_pytorch_bin_sharded", "hf/mixtral_moe_sharded"])
def test_corpus_hf_counts_equal_the_model(corpus: Path, item: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(corpus / item), local_files_only=True)
    assert logical_param_count(detect(corpus / item)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("item", ["megatron/gpt_tp2pp1", "megatron/moe_ep2", "deepspeed/zero2_bf16"])
def test_corpus_megatron_layouts_agree(corpus: Path, item: str) -> None:
    """megatron-core's own torch and torch_dist saves of one model count the same parameters: the
    model's canonical tensors plus Megatron's padded vocabulary rows (EP replicas counted once)."""
    import math

    from ckptscope.converters.sources import open_source

    folders = [corpus / item / "legacy", corpus / item / "dist"] if item.startswith("megatron") else [corpus / item]
    for folder in folders:
        ckpt = detect(folder)
        spec = open_source(ckpt).spec
        padding = ((spec.padded_vocab or spec.vocab) - spec.vocab) * spec.hidden * (1 if spec.tied else 2)
        assert logical_param_count(ckpt) == sum(math.prod(s) for s in spec.canonical_shapes().values()) + padding, folder


def test_corpus_deepspeed_pipeline_counts_its_model(corpus: Path, tmp_path: Path) -> None:
    """DeepSpeed's own PipelineModule save (layer files, `module=None` rank files): the Llama its
    hparams.json describes, built by transformers, has exactly the parameters inspect counts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .test_convert_deepspeed import _config_from_hparams

    item = corpus / "deepspeed" / "pipe2_mp"
    config = AutoConfig.from_pretrained(str(_config_from_hparams(item, tmp_path / "config.json").parent))
    model = AutoModelForCausalLM.from_config(config)
    assert logical_param_count(detect(item)) == sum(p.numel() for p in model.parameters())


# Every layout the sample writers produce, for a dense and a MoE model: (writer, TP whose Megatron
# vocabulary padding the layout stores, or None when it stores the model's own vocabulary)
SAMPLE_LAYOUTS = {
    "hf": (lambda spec, out: write_hf(spec, out), None),
    "megatron-tp2pp2": (lambda spec, out: write_megatron_torch(spec, out, tp=2, pp=2), 2),
    "megatron-pp2vpp2": (lambda spec, out: write_megatron_torch(spec, out, pp=2, vpp=2), 1),
    "megatron-dist-tp2": (lambda spec, out: write_megatron_dist(spec, out, tp=2), 2),
    "nxd-tp2pp2": (lambda spec, out: write_nxd(spec, out, tp=2, pp=2), None),
    "deepspeed-pipeline-tp2pp2": (lambda spec, out: dss.write_deepspeed_pipeline(spec, out, tp=2, pp=2), 2),
    "deepspeed-pipeline-no-model-axis": (lambda spec, out: dss.write_deepspeed_pipeline(spec, out, pp=2, model_axis=False), 1),
    "deepspeed-zero2": (lambda spec, out: dss.write_deepspeed_zero(spec, out, dp=2, stage=2), None),
    "dcp-accelerate": (lambda spec, out: _accelerate_dcp(spec, out), None),
}
MOE_LAYOUTS = {
    "megatron-ep2": (lambda spec, out: write_megatron_torch(spec, out, ep=2), 1),
    "megatron-dist-ep2": (lambda spec, out: write_megatron_dist(spec, out, ep=2), 1),
    "nxd-ep2": (lambda spec, out: write_nxd(spec, out, ep=2), None),
}
DENSE_ONLY = ("deepspeed-pipeline-tp2pp2", "deepspeed-pipeline-no-model-axis", "deepspeed-zero2")  # the writers model no MoE


def _accelerate_dcp(spec, out: Path) -> Path:  # type: ignore[no-untyped-def]
    import torch.distributed.checkpoint as dcp
    from ckptscope.converters.samples.hf import hf_state_dict

    dcp.save({"model": hf_state_dict(spec)}, checkpoint_id=str(out))  # torch's own writer, Accelerate's layout
    return out


CASES = [(kind, name) for kind in ("dense", "moe") for name in (*SAMPLE_LAYOUTS, *(MOE_LAYOUTS if kind == "moe" else ()))
         if not (kind == "moe" and name in DENSE_ONLY)]


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_every_sample_layout_counts_the_model(tmp_path: Path, kind: str, layout: str) -> None:
    """Each layout's count is the model's own `parameters()` (transformers, from the same weights
    written as HF), plus the padded vocabulary rows where the layout's model has them (Megatron's
    embedding and head are built padded): TP slices add up, TP / EP replicas count once, NxD's
    stacked experts count on every EP rank, a bare pipeline norm (`6.weight`) is one tensor."""
    from transformers import AutoModelForCausalLM

    spec = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300, experts=4 if kind == "moe" else 0)
    reference = write_hf(spec, tmp_path / "reference")
    model = AutoModelForCausalLM.from_pretrained(str(reference))
    write, padded_tp = {**SAMPLE_LAYOUTS, **MOE_LAYOUTS}[layout]
    ckpt = detect(write(spec, tmp_path / layout))
    padding = (spec.padded_vocab(padded_tp) - spec.vocab) * spec.hidden * 2 if padded_tp else 0
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters()) + padding
    assert logical_param_count(ckpt, buffers=True) == 0
