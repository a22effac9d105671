"""Megatron-DeepSpeed pipeline checkpoints with real GPT-2 and BLOOM blocks (issue 5).

Fixture: a tiny random `transformers` GPT-2 / BLOOM model -> Megatron `torch` TP2 (ckptscope) ->
re-packed into Megatron-DeepSpeed pipeline layer files (`repack_megatron_as_pipeline`: per-layer
legacy names `input_layernorm`, `self_attention.query_key_value` (per-head q,k,v per TP shard),
`mlp.dense_h_to_4h` (plain GELU), `word_embeddings` (+ `position_embeddings` / BLOOM's
`word_embeddings.norm`), bare `weight`/`bias` final norm, tied head) under both layer-index maps.
Converting that to HF gives back the source model's state dict bit for bit, and its logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.samples import deepspeed as dss
from ckptscope.converters.writers import TargetOptions

from .helpers import (
    assert_same_hf_state,
    convert_to,
    logits_diff,
)

VOCAB = 300


def _build(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    if kind == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=8, n_positions=128,
                                               bos_token_id=0, eos_token_id=0))
    else:
        model = t.BloomForCausalLM(t.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=4, n_head=8))
    with torch.no_grad():  # non-trivial norms and biases so every term shows in the logits
        for name, p in model.named_parameters():
            if any(k in name for k in ("norm", "ln")) or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


_convert = convert_to


@pytest.fixture(scope="module", params=["gpt2", "bloom"])
def family(request, tmp_path_factory) -> tuple[str, Path, torch.nn.Module, Path]:
    kind = request.param
    base = tmp_path_factory.mktemp(kind)
    model = _build(kind)
    model.save_pretrained(base / "hf")
    mt = _convert(base / "hf", base / "mt", "megatron", tp=2)
    return kind, base / "hf", model, mt


@pytest.mark.parametrize("style", dss.PIPELINE_STYLES)
def test_family_pipeline_tp2_to_hf(family, tmp_path: Path, style: str) -> None:
    kind, src, model, mt = family
    root = dss.repack_megatron_as_pipeline(mt, tmp_path / "ds", pp=2, style=style)
    files = sorted(p.name for p in (root / "global_step2").glob("layer_*"))
    assert len([f for f in files if f.endswith("-model_01-model_states.pt")]) == 6  # embed, 4 blocks, norm; tied head
    embed = torch.load(root / "global_step2" / "layer_01-model_00-model_states.pt")
    block = torch.load(next((root / "global_step2").glob("layer_03-model_01-*")))
    assert ("position_embeddings.weight" in embed) == (kind == "gpt2")
    assert ("word_embeddings.norm.weight" in embed) == (kind == "bloom")
    assert {"self_attention.query_key_value.bias", "mlp.dense_h_to_4h.weight", "input_layernorm.bias"} <= set(block)
    assert block["mlp.dense_h_to_4h.weight"].shape == (128, 64)  # 4h / TP rows: no gate

    plan = make_plan(root, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert plan.source.kind == "deepspeed" and plan.source.spec.family == kind
    assert any(style in note for note in plan.notes), plan.notes
    out = tmp_path / "hf"
    run_to_end(plan, out)

    assert_same_hf_state(src, out)
    diff = logits_diff(out, model, VOCAB)
    assert diff <= 1e-5, diff
