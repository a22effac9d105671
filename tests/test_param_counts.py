"""Parameter counts (issue 14): what `inspect` calls parameters equals the model's own
`sum(p.numel() for p in model.parameters())` in every format and layout, replicas across TP /
EP ranks counted once, and stored buffers (xIELU constants) shown apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
