"""Every mapping table against the canonical vocabulary, and every op's round trip (issue 12).

Each row of every table - family HF tables, Megatron (mcore, legacy, TE, torch_dist), Megatron-LLM,
DeepSpeed, NxD - names canonical tensors the vocabulary declares; scattering canonical tensors
into TP shards and gathering them back gives the same bits for every Megatron and NxD row, on
random tensors of the row's shapes, at TP 1, 2 and 4.
"""

from __future__ import annotations

import pytest
import torch
from ckptscope.converters import families, vocab
from ckptscope.converters.nxd_sharding import Geometry
from ckptscope.converters.nxd_sharding import gather as nxd_gather
from ckptscope.converters.nxd_sharding import scatter as nxd_scatter
from ckptscope.converters.rules import deepspeed, megatron, megatron_llm, nxd
from ckptscope.converters.sharding import from_global, gather, scatter, to_global
from ckptscope.converters.spec import ModelSpec


def _rel(canon: str) -> str:
    return canon.replace("{e}", "0")


def test_every_table_row_names_declared_canonical_tensors() -> None:
    rows: list[tuple[str, tuple[str, ...]]] = []
    for family in families.FAMILIES.values():
        rows += [(f"{family.name}:{r.name}", r.canon) for r in (*family.pre, *family.layer, *family.post)]
    rows += [(f"megatron:{p.names['local']}", p.canon) for p in megatron.LAYER_PARAMS]
    rows += [(f"megatron:{p.names['local']}", p.canon) for p, _ in megatron.GLOBAL_PARAMS]
    rows += [(f"megatron-llm:{p.names['local']}", p.canon) for p in megatron_llm.LAYER_PARAMS]
    for table in deepspeed.ROLE_ROWS.values():
        rows += [(f"deepspeed:{p.names['local']}", p.canon) for naming in table.values() for p in naming]
    rows += [(f"nxd:{p.hf}", p.canon) for p in nxd.LAYER_PARAMS] + [(f"nxd:{p.hf}", p.canon) for p, _ in nxd.GLOBAL_PARAMS]
    rows += [(f"nxd:{p.hf}", p.canon) for form in nxd.ATTENTION_FORMS.values() for p in form]
    undeclared = [(where, c) for where, canon in rows for c in canon if not vocab.is_declared(_rel(c))]
    assert not undeclared, undeclared
    assert len(rows) > 300


SPECS = {
    "gqa-swiglu-bias": ModelSpec(family="qwen2", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=100,
                                 qkv_bias=True),
    "mha-gelu-ln1p": ModelSpec(family="gpt2", layers=1, hidden=64, heads=4, kv_heads=4, head_dim=16, ffn=128, vocab=100,
                               norm="layernorm", activation="gelu_tanh", qkv_bias=True, o_bias=True, mlp_bias=True,
                               layernorm_1p=True, position="learned", max_position_embeddings=32),
    "moe-shared-qknorm": ModelSpec(family="qwen2_moe", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=100,
                                   experts=4, expert_ffn=32, shared_expert_ffn=48, shared_expert_gate=True, qk_norm=True),
}


def _canon_tensors(spec: ModelSpec, canon: tuple[str, ...]) -> list[torch.Tensor]:
    shapes = spec.canonical_shapes()
    return [torch.randn(shapes[c]) for c in canon]


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("kind", list(SPECS))
def test_megatron_rows_scatter_then_gather_is_identity(kind: str, tp: int) -> None:
    spec = SPECS[kind]
    padded = spec.padded_for(tp)
    for param in [*megatron.layer_params(spec), *(p for p, _ in megatron.global_params(spec))]:
        canon = tuple(("layers.0." + c.format(e=1)) if not c.startswith(("embed", "pos_embed", "final_norm", "lm_head")) else c
                      for c in param.canon)
        parts = _canon_tensors(spec, canon)
        back = gather(param, scatter(param, parts, spec, tp, padded), spec)
        full = from_global(param, to_global(param, parts, spec, padded), spec)  # torch_dist's global tensor
        for a, b, c in zip(parts, back, full):
            if param.pack is megatron.Pack.NORM and spec.layernorm_1p:  # stored gamma - 1: exact to one rounding
                assert torch.allclose(a, b, rtol=0, atol=2e-7) and torch.allclose(a, c, rtol=0, atol=2e-7)
            else:
                assert torch.equal(a, b) and torch.equal(a, c), (kind, tp, param.canon)


@pytest.mark.parametrize("form", list(nxd.ATTENTION_FORMS))
@pytest.mark.parametrize(("tp", "kv_mult"), [(1, 1), (2, 1), (4, 1), (8, 2)])
def test_nxd_rows_scatter_then_gather_is_identity(form: str, tp: int, kv_mult: int) -> None:
    spec = ModelSpec(family="llama", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=128)
    geo = Geometry(spec, tp, 1, kv_mult)
    for param in nxd.layer_params(spec, form):
        if param.expert:
            continue
        canon = tuple(f"layers.0.{c}" for c in param.canon)
        parts = _canon_tensors(spec, canon)
        back = nxd_gather(param, nxd_scatter(param, parts, geo), geo)
        assert all(torch.equal(a, b) for a, b in zip(parts, back)), (form, tp, param.canon)
