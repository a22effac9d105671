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
from ckptscope.converters.layouts import Constant, Layout, NormOffset
from ckptscope.converters.row import Row, canon_shapes, from_stored, gather, gather_stacked, scatter, scatter_stacked, to_stored
from ckptscope.converters.rules import deepspeed, megatron, megatron_llm, meta, nxd
from ckptscope.converters.shards import Geometry
from ckptscope.converters.spec import ModelSpec


def _rel(canon: str) -> str:
    return canon.replace("{e}", "0")


def test_every_table_row_names_declared_canonical_tensors() -> None:
    rows: list[tuple[str, tuple[str, ...]]] = []
    for family in families.FAMILIES.values():
        rows += [(f"{family.name}:{r.name}", r.canon) for r in (*family.pre, *family.layer, *family.post, *family.mtp)]
    for where, table in ALL_TABLES.items():
        rows += [(f"{where}:{r.name}", r.canon) for r in table]
    undeclared = [(where, c) for where, canon in rows for c in canon if not vocab.is_declared(_rel(c))]
    assert not undeclared, undeclared
    assert len(rows) > 300


ALL_TABLES: dict[str, tuple[Row, ...]] = {
    "megatron": (*megatron.LAYER_PARAMS, *(p for p, _ in megatron.GLOBAL_PARAMS), *megatron.MTP_PARAMS),
    "megatron-llm": (*megatron_llm.LAYER_PARAMS, *(p for p, _ in megatron_llm.GLOBAL_PARAMS)),
    "deepspeed": tuple(p for table in deepspeed.ROLE_ROWS.values() for naming in table.values() for p in naming),
    "nxd": (*nxd.LAYER_PARAMS, *(p for p, _ in nxd.GLOBAL_PARAMS), *(p for form in nxd.ATTENTION_FORMS.values() for p in form)),
    "meta": (meta.EMBED_BY_DIM, meta.EMBED_BY_VOCAB, *meta.LAYER_ROWS, *meta.POST_ROWS),
}


def test_every_table_is_made_of_the_one_row_type() -> None:
    family_rows = [r for f in families.FAMILIES.values() for r in (*f.pre, *f.layer, *f.post)]
    assert all(type(r) is Row for table in ALL_TABLES.values() for r in table)
    assert all(type(r) is Row for r in family_rows)


SPECS = {
    "gqa-swiglu-bias": ModelSpec(family="qwen2", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=100,
                                 qkv_bias=True),
    "mha-gelu-ln1p": ModelSpec(family="gpt2", layers=1, hidden=64, heads=4, kv_heads=4, head_dim=16, ffn=128, vocab=100,
                               norm="layernorm", activation="gelu_tanh", qkv_bias=True, o_bias=True, mlp_bias=True,
                               layernorm_1p=True, position="learned", max_position_embeddings=32),
    "moe-shared-qknorm": ModelSpec(family="qwen2_moe", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=100,
                                   experts=4, expert_ffn=32, shared_expert_ffn=48, shared_expert_gate=True, qk_norm=True),
}


def _one_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """(x - 1) + 1 in fp32: each step rounds to half an ulp of |x| + 1."""
    return bool(((a - b).abs() <= 2.4e-7 * (a.abs() + 1)).all())


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
        geo = Geometry(spec.with_(padded_vocab=padded), tp)
        back = gather(param, scatter(param, parts, geo), geo)
        full = from_stored(param, to_stored(param, parts, geo.spec), geo.spec)  # torch_dist's global tensor
        for a, b, c in zip(parts, back, full):
            if isinstance(param.op, NormOffset) and spec.layernorm_1p:  # stored gamma - 1: exact to one rounding
                assert _one_rounding(a, b) and _one_rounding(a, c)
            else:
                assert torch.equal(a, b) and torch.equal(a, c), (kind, tp, param.canon)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("kind", list(SPECS))
def test_megatron_pieces_left_as_row_runs_are_the_joined_pieces(kind: str, tp: int) -> None:
    """`scatter(..., runs=True)` may leave a rank's piece as runs of rows (fused QKV per query
    group, fc1's `[gate_r; up_r]`): each is the piece the plain scatter makes, and the stored
    boxes cut with runs are `pack(parts)[box]`."""
    from ckptscope.converters.row import stored_boxes
    from ckptscope.converters.row_runs import RowRuns

    spec = SPECS[kind]
    geo = Geometry(spec.with_(padded_vocab=spec.padded_for(tp)), tp)
    seen_runs = 0
    for param in [*megatron.layer_params(spec), *(p for p, _ in megatron.global_params(spec))]:
        canon = tuple(("layers.0." + c.format(e=1)) if not c.startswith(("embed", "pos_embed", "final_norm", "lm_head")) else c
                      for c in param.canon)
        parts = _canon_tensors(spec, canon)
        for a, b in zip(scatter(param, parts, geo, runs=True), scatter(param, parts, geo)):
            seen_runs += isinstance(a, RowRuns)
            joined = a.join() if isinstance(a, RowRuns) else a
            assert (tuple(a.shape), a.dtype) == (tuple(b.shape), b.dtype) and torch.equal(joined, b), (kind, tp, param.canon)
        whole = param.op.pack(parts, geo.spec)
        for runs in (False, True):
            for box, piece in stored_boxes(param, parts, geo.spec, tp, runs=runs):
                got = piece.join() if isinstance(piece, RowRuns) else piece
                assert torch.equal(got, whole[tuple(slice(o, o + n) for o, n in zip(*box))]), (kind, tp, param.canon, runs)
    assert seen_runs  # QKV (and fc1 where gated) leave their pieces unjoined


@pytest.mark.parametrize("form", list(nxd.ATTENTION_FORMS))
@pytest.mark.parametrize(("tp", "kv_mult"), [(1, 1), (2, 1), (4, 1), (8, 2)])
def test_nxd_rows_scatter_then_gather_is_identity(form: str, tp: int, kv_mult: int) -> None:
    spec = ModelSpec(family="llama", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=128)
    geo = Geometry(spec, tp, 1, kv_mult)
    for param in nxd.layer_params(spec, form):
        canon = tuple(f"layers.0.{c}" for c in param.canon)
        parts = _canon_tensors(spec, canon)
        back = gather(param, scatter(param, parts, geo), geo)
        assert all(torch.equal(a, b) for a, b in zip(parts, back)), (form, tp, param.canon)


@pytest.mark.parametrize(("tp", "ep"), [(1, 1), (2, 1), (2, 2), (1, 4)])
def test_nxd_stacked_expert_rows_scatter_then_gather_is_identity(tp: int, ep: int) -> None:
    spec = ModelSpec(family="mixtral", layers=1, hidden=64, heads=8, kv_heads=4, head_dim=8, ffn=96, vocab=128,
                     experts=4, expert_ffn=32)
    geo = Geometry(spec, tp, ep)
    for param in (p for p in nxd.layer_params(spec, "gqa") if p.stacked):
        shapes = canon_shapes(param, spec)
        parts = [torch.randn(shapes[k]) for _ in range(spec.experts) for k in range(len(param.canon))]
        pieces = scatter_stacked(param, parts, geo)
        assert len(pieces) == ep and all(len(by_tp) == tp and by_tp[0].shape[0] == spec.experts // ep for by_tp in pieces)
        back = gather_stacked(param, pieces, geo)
        assert all(torch.equal(a, b) for a, b in zip(parts, back)), (param.name, tp, ep)


def _nested(op: Layout) -> list[Layout]:
    """An op and the ops it wraps (`Transposed`, `Stacked`)."""
    inner = getattr(op, "inner", None)
    return [op, *(_nested(inner) if inner is not None else [])]


def _op_cases() -> list[tuple[str, Row, ModelSpec]]:
    """Every row of every table (family tables under a spec that has the row), with a spec it applies to."""
    specs = [*SPECS.values(),
             ModelSpec(family="llama", layers=1, hidden=64, heads=8, kv_heads=2, head_dim=8, ffn=96, vocab=100,
                       rotary_interleaved=True, padded_vocab=128)]
    cases = []
    for where, table in ALL_TABLES.items():
        for row in table:
            spec = next((s for s in specs if row.when(s)), None)
            if spec is not None and row.canon:
                cases.append((f"{where}:{row.name}", row, spec))
    for family in families.FAMILIES.values():
        for row in (*family.pre, *family.layer, *family.post):
            spec = next((s for s in specs if row.when(s)), None)
            if spec is not None and row.canon and all(vocab.declared[vocab.pattern_of(c)].present(spec) for c in row.canon):
                cases.append((f"{family.name}:{row.name}", row, spec))
    return cases


def test_every_op_unpacks_what_it_packs() -> None:
    """pack then unpack is the identity for every row's op on random tensors of its shapes, and
    `shape` predicts the packed shape (norm offsets exact to one rounding)."""
    cases = _op_cases()
    every_op = set(Layout.__subclasses__()) - {Constant}  # Constant stores no canonical tensor
    assert {type(op) for _, row, _ in cases for op in _nested(row.op)} == every_op
    for where, row, spec in cases:
        shapes = canon_shapes(row, spec)
        parts = [torch.randn(s) for s in shapes]
        packed = to_stored(row, parts, spec)
        assert tuple(packed.shape) == row.op.shape(shapes, spec), where
        back = from_stored(row, packed, spec)
        for a, b in zip(parts, back):
            assert _one_rounding(a, b) if isinstance(row.op, NormOffset) else torch.equal(a, b), where


def test_an_uneven_cut_is_refused() -> None:
    """TP pieces and torch_dist boxes come from the same box arithmetic; an uneven split is an
    error there, never a silently shorter last piece."""
    from ckptscope.converters.shards import Blocks, Cut

    geo = Geometry(SPECS["gqa-swiglu-bias"], tp=4)
    for shard in (Cut(0), Cut(1), Blocks(0)):
        with pytest.raises(ValueError, match="does not split into"):
            shard.scatter(torch.zeros(6, 6), geo)
    assert [p.shape for p in Cut(1).scatter(torch.zeros(6, 8), geo)] == [torch.Size([6, 2])] * 4
