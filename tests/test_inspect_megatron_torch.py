"""Megatron `torch` format: rank folders, TP/PP/EP/VPP, both layer specs, legacy nesting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptscope.converters.ops import fuse_qkv, pack_swiglu, split
from ckptscope.converters.samples.megatron_torch import write_megatron_torch
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors import CheckpointError, detect
from ckptscope.inspectors.megatron_common import TRACKER

DENSE = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)
MOE = SampleSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=300, experts=4)


@pytest.mark.parametrize(("tp", "pp", "te"), [(1, 1, False), (2, 1, True), (1, 2, False), (2, 2, True), (4, 1, False), (4, 2, True)])
def test_dense_layouts(tmp_path: Path, tp: int, pp: int, te: bool) -> None:
    write_megatron_torch(DENSE, tmp_path, tp=tp, pp=pp, te=te, iterations=(3, 7))
    ckpt = detect(tmp_path)
    assert ckpt.kind == "megatron-torch"
    assert ckpt.iteration == 7 and ckpt.iterations == [3, 7]
    assert (ckpt.parallel.tp, ckpt.parallel.pp) == (tp, pp)
    assert len([f for f in ckpt.files if f.role == "model"]) == tp * pp
    assert ckpt.metadata["checkpoint_version"] == 3.0 and ckpt.metadata["args"]["num_layers"] == 4
    norm = "self_attention.linear_qkv.layer_norm_weight" if te else "input_layernorm.weight"
    layers = {t.global_name.split(".")[2] for t in ckpt.model_tensors() if t.global_name.endswith(norm)}
    assert layers == {"0", "1", "2", "3"}  # pipeline-local numbers made global
    # a TP shard of the fused QKV of global layer 3 holds exactly the grouped rows
    c = "layers.3."
    qkv = fuse_qkv(DENSE.tensor(c + "attn.q"), DENSE.tensor(c + "attn.k"), DENSE.tensor(c + "attn.v"), 8, 2)
    for r in range(tp):
        got = ckpt.load("decoder.layers.3.self_attention.linear_qkv.weight", {"tp": r})
        assert torch.equal(got, split(qkv, 0, tp)[r])
        fc1 = ckpt.load("decoder.layers.3.mlp.linear_fc1.weight", {"tp": r})
        assert torch.equal(fc1, pack_swiglu(DENSE.tensor(c + "mlp.gate"), DENSE.tensor(c + "mlp.up"), tp)[r])
    rows = DENSE.padded_vocab(tp) // tp
    assert ckpt.tensor("embedding.word_embeddings.weight", {"tp": 0}).shape == (rows, 64)
    if te:
        assert any(o.kind == "_extra_state" for o in ckpt.objects)


def test_expert_parallel_resolves_the_ambiguous_suffix(tmp_path: Path) -> None:
    write_megatron_torch(MOE, tmp_path, tp=1, pp=1, ep=2)
    assert sorted(p.name for p in (tmp_path / "iter_0000010").iterdir()) == ["mp_rank_00_000", "mp_rank_00_001"]
    ckpt = detect(tmp_path)
    assert (ckpt.parallel.pp, ckpt.parallel.ep) == (1, 2)
    info = ckpt.find("decoder.layers.1.mlp.experts.local_experts.1.linear_fc2.weight", {"ep": 1})[0]
    assert info.global_name == "decoder.layers.1.mlp.experts.local_experts.3.linear_fc2.weight"
    assert torch.equal(ckpt.load(info), MOE.tensor("layers.1.experts.3.down"))


def test_tp_pp_ep_together(tmp_path: Path) -> None:
    write_megatron_torch(MOE, tmp_path, tp=2, pp=2, ep=2)
    ckpt = detect(tmp_path)
    assert ckpt.parallel.label() == "TP2×PP2×EP2"
    assert len([f for f in ckpt.files if f.role == "model"]) == 8
    info = ckpt.find("decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight", {"tp": 1, "pp": 1, "ep": 1})[0]
    assert info.global_name == "decoder.layers.1.mlp.experts.local_experts.2.linear_fc1.weight"


def test_virtual_pipeline_chunks(tmp_path: Path) -> None:
    write_megatron_torch(DENSE, tmp_path, tp=1, pp=2, vpp=2)
    ckpt = detect(tmp_path)
    assert ckpt.parallel.vpp == 2
    by_layer = {}
    for t in ckpt.model_tensors():
        if t.name.endswith("input_layernorm.weight"):
            by_layer[int(t.global_name.split(".")[2])] = (t.ranks.pp, t.ranks.vpp)
    assert by_layer == {0: (0, 0), 1: (1, 0), 2: (0, 1), 3: (1, 1)}  # chunk v*PP+p holds layer block v*PP+p
    assert torch.equal(ckpt.load("decoder.layers.2.input_layernorm.weight"), DENSE.tensor("layers.2.input_norm"))


def test_legacy_nested_layout(tmp_path: Path) -> None:
    spec = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=8, ffn=96, vocab=300, tied=True)
    write_megatron_torch(spec, tmp_path, tp=2, pp=2, legacy=True)
    ckpt = detect(tmp_path)
    assert "legacy nested" in ckpt.format_detail
    names = {t.global_name for t in ckpt.model_tensors()}
    assert "language_model.encoder.layers.3.self_attention.query_key_value.weight" in names
    assert "language_model.embedding.word_embeddings.weight" in names
    assert "word_embeddings_for_head.weight" in names
    head = ckpt.load("word_embeddings_for_head.weight", {"tp": 1, "pp": 1})
    assert torch.equal(head, split(torch.cat([spec.tensor("embed"), spec.tensor("embed")[-1:].expand(256 * 2 - 300, 64)]), 0, 2)[1])


def test_release_tracker(tmp_path: Path) -> None:
    write_megatron_torch(DENSE, tmp_path, tp=1, pp=1)
    (tmp_path / "iter_0000010").rename(tmp_path / "release")
    (tmp_path / TRACKER).write_text("release\n")
    ckpt = detect(tmp_path)
    assert ckpt.iteration == "release"


def test_opening_an_iteration_folder_or_one_rank_file(tmp_path: Path) -> None:
    write_megatron_torch(DENSE, tmp_path, tp=2, pp=1)
    folder = detect(tmp_path / "iter_0000010")
    assert folder.iteration == 10 and len(folder.files) == 2
    single = detect(tmp_path / "iter_0000010" / "mp_rank_01" / "model_optim_rng.pt")
    assert {t.ranks.tp for t in single.tensors} == {1}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / TRACKER).write_text("12"), "iter_0000012, which does not exist"),
        (lambda root: (root / TRACKER).write_text("latest!"), "iteration number or 'release'"),
        (lambda root: (root / "iter_0000010" / "mp_rank_01_001" / "model_optim_rng.pt").unlink(), "missing rank file"),
        (lambda root: __import__("shutil").rmtree(root / "iter_0000010" / "mp_rank_00_001"), "missing rank file"),
        (lambda root: (root / "iter_0000010" / "mp_rank_01_000" / "model_optim_rng.pt").write_bytes(b"PK\x03\x04 cut"), "mp_rank_01_000"),
    ],
)
def test_damaged_roots(tmp_path: Path, damage, message: str) -> None:
    write_megatron_torch(DENSE, tmp_path, tp=2, pp=2)
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        detect(tmp_path)


@pytest.mark.parametrize("item", ["gpt_tp2pp1", "moe_ep2"])
def test_real_corpus_legacy(corpus: Path, item: str) -> None:
    root = corpus / "megatron" / item / "legacy"
    ckpt = detect(root)
    assert ckpt.kind == "megatron-torch" and ckpt.iteration == 10
    hparams = __import__("json").loads((corpus / "megatron" / item / "hparams.json").read_text())
    assert ckpt.parallel.tp == hparams["tensor_model_parallel_size"]
    assert ckpt.parallel.ep == hparams["expert_model_parallel_size"] and ckpt.parallel.pp == 1
    assert ckpt.metadata["args"]["num_layers"] == hparams["num_layers"]
    for rank_file in sorted(root.glob("iter_0000010/mp_rank_*/model_optim_rng.pt")):
        ref = torch.load(rank_file, weights_only=False)["model"]  # trusted corpus, reference only
        rel = str(rank_file.relative_to(root / "iter_0000010"))
        listed = {t.name: t for t in ckpt.tensors if t.file == rel and t.group == "model"}
        tensors = {k: v for k, v in ref.items() if isinstance(v, torch.Tensor)}
        assert set(listed) == set(tensors)
        for name, value in tensors.items():
            assert listed[name].shape == tuple(value.shape) and listed[name].dtype == str(value.dtype)[6:]
            assert torch.equal(ckpt.load(listed[name]), value)
    if item == "moe_ep2":
        info = ckpt.find("decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight", {"ep": 1})[0]
        assert info.global_name.endswith("local_experts.3.linear_fc1.weight")
