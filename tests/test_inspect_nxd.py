"""NxD reader against the NxD sample writer: layouts, xser, naming styles, tags and entry points."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from ckptscope.converters.samples.nxd import layer_stages, write_nxd
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.formats.nxd import READER
from ckptscope.inspectors.model import Checkpoint

DENSE = SampleSpec(layers=3, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=256)
MOE = SampleSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=128, experts=4)


def open_path(path: Path) -> Checkpoint:
    probe = READER.probe(path)
    assert probe is not None, f"nxd reader did not claim {path}"
    return READER.open(probe)


def gather(ckpt: Checkpoint, name: str, dim: int, tp: int, **ranks: int) -> torch.Tensor:
    return torch.cat([ckpt.load(name, {"tp": r, **ranks}) for r in range(tp)], dim=dim)


def check_dense_values(ckpt: Checkpoint, spec: SampleSpec, tp: int, pp: int) -> None:
    """Every NxD shard, gathered back, equals the spec's canonical tensor."""
    last = pp - 1
    assert torch.equal(gather(ckpt, "model.embed_tokens.weight", 0, tp, pp=0), spec.tensor("embed"))
    assert torch.equal(gather(ckpt, "lm_head.weight", 0, tp, pp=last), spec.tensor("lm_head"))
    assert torch.equal(ckpt.load("model.norm.weight", {"tp": tp - 1, "pp": last}), spec.tensor("final_norm"))
    for i, stage in enumerate(layer_stages(spec.layers, pp)):
        pre, canon = f"model.layers.{i}.", f"layers.{i}."
        where = {"pp": stage}
        attn = pre + "self_attn.qkv_proj."
        assert torch.equal(gather(ckpt, attn + "weight_q", 0, tp, **where), spec.tensor(canon + "attn.q"))
        assert torch.equal(gather(ckpt, attn + "weight_k", 0, tp, **where), spec.tensor(canon + "attn.k"))
        assert torch.equal(gather(ckpt, attn + "weight_v", 0, tp, **where), spec.tensor(canon + "attn.v"))
        assert torch.equal(gather(ckpt, pre + "self_attn.o_proj.weight", 1, tp, **where), spec.tensor(canon + "attn.o"))
        assert torch.equal(gather(ckpt, pre + "mlp.down_proj.weight", 1, tp, **where), spec.tensor(canon + "mlp.down"))
        halves = [ckpt.load(pre + "mlp.gate_up_proj.weight", {"tp": r, **where}).chunk(2) for r in range(tp)]
        assert torch.equal(torch.cat([h[0] for h in halves]), spec.tensor(canon + "mlp.gate"))
        assert torch.equal(torch.cat([h[1] for h in halves]), spec.tensor(canon + "mlp.up"))
        for r in range(tp):
            assert torch.equal(ckpt.load(pre + "input_layernorm.weight", {"tp": r, **where}), spec.tensor(canon + "input_norm"))


@pytest.mark.parametrize("xser", [False, True], ids=["plain", "xser"])
@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_dense_layouts_roundtrip(tmp_path: Path, tp: int, pp: int, xser: bool) -> None:
    write_nxd(DENSE, tmp_path, tp=tp, pp=pp, xser=xser)
    ckpt = open_path(tmp_path)
    assert ckpt.kind == "nxd"
    assert (ckpt.parallel.tp, ckpt.parallel.pp, ckpt.parallel.ep) == (tp, pp, 1)
    assert ckpt.iteration == "step_10" and ckpt.root == tmp_path and ckpt.complete
    assert ckpt.metadata["nxd"]["xser"] is xser
    assert ckpt.metadata["nxd"]["style"] == "hf"
    assert ckpt.format_detail.startswith("xser" if xser else "plain")
    assert not ckpt.warnings
    model_files = [f for f in ckpt.files if f.role == "model"]
    assert len(model_files) == tp * pp
    for t in ckpt.tensors:
        assert t.ranks.tp is not None and t.ranks.pp is not None and t.ranks.ep is None
        assert t.group == "model"
    # embedding only on pp 0, final norm only on the last stage, layer numbers global
    assert {t.ranks.pp for t in ckpt.find("model.embed_tokens.weight")} == {0}
    assert {t.ranks.pp for t in ckpt.find("model.norm.weight")} == {pp - 1}
    assert {t.ranks.pp for t in ckpt.find("model.layers.2.input_layernorm.weight")} == {pp - 1}
    check_dense_values(ckpt, DENSE, tp, pp)


def test_layers_remainder_goes_to_last_stages() -> None:
    assert layer_stages(30, 4) == [0] * 7 + [1] * 7 + [2] * 8 + [3] * 8
    assert layer_stages(3, 2) == [0, 1, 1]


def test_kv_size_multiplier_tiles_kv_and_reorders_q(tmp_path: Path) -> None:
    """heads 8, kv 2, kv_mult 2, tp 4: rank r holds KV head r%2 and the matching half of its Q group."""
    write_nxd(DENSE, tmp_path, tp=4, kv_size_multiplier=2)
    ckpt = open_path(tmp_path)
    d = DENSE.d
    q_full, k_full, o_full = (DENSE.tensor(f"layers.0.attn.{w}") for w in ("q", "k", "o"))
    expected_q_heads = {0: [0, 1], 1: [4, 5], 2: [2, 3], 3: [6, 7]}
    for rank, heads in expected_q_heads.items():
        k = ckpt.load("model.layers.0.self_attn.qkv_proj.weight_k", {"tp": rank})
        assert torch.equal(k, k_full[(rank % 2) * d : (rank % 2 + 1) * d])
        q = ckpt.load("model.layers.0.self_attn.qkv_proj.weight_q", {"tp": rank})
        assert torch.equal(q, torch.cat([q_full[h * d : (h + 1) * d] for h in heads]))
        o = ckpt.load("model.layers.0.self_attn.o_proj.weight", {"tp": rank})
        assert torch.equal(o, torch.cat([o_full[:, h * d : (h + 1) * d] for h in heads], dim=1))


def test_fused_qkv(tmp_path: Path) -> None:
    write_nxd(DENSE, tmp_path, tp=2, fuse_qkv=True)
    ckpt = open_path(tmp_path)
    assert not ckpt.find("model.layers.0.self_attn.qkv_proj.weight_q")
    d, q_rows, kv_rows = DENSE.d, DENSE.heads * DENSE.d // 2, DENSE.kv_heads * DENSE.d // 2
    for r in range(2):
        fused = ckpt.load("model.layers.1.self_attn.qkv_proj.weight_qkv", {"tp": r})
        assert fused.shape == (q_rows + 2 * kv_rows, DENSE.hidden)
        q, k, v = fused.split([q_rows, kv_rows, kv_rows])
        assert torch.equal(q, DENSE.tensor("layers.1.attn.q")[r * q_rows : (r + 1) * q_rows])
        assert torch.equal(k, DENSE.tensor("layers.1.attn.k")[r * kv_rows : (r + 1) * kv_rows])
        assert torch.equal(v, DENSE.tensor("layers.1.attn.v")[r * kv_rows : (r + 1) * kv_rows])
    assert d * DENSE.heads == DENSE.hidden


def test_megatron_style_names(tmp_path: Path) -> None:
    write_nxd(DENSE, tmp_path, tp=2, pp=2, style="megatron", xser=True)
    ckpt = open_path(tmp_path)
    assert ckpt.metadata["nxd"]["style"] == "megatron"
    names = {t.name for t in ckpt.tensors}
    assert all(n.startswith("language_model.") for n in names)
    for name in (
        "language_model.embedding.word_embeddings.weight",
        "language_model.encoder.final_layernorm.weight",
        "language_model.output_layer.weight",
        "language_model.encoder.layers.2.self_attention.query.weight",
        "language_model.encoder.layers.2.self_attention.key_value.weight",
        "language_model.encoder.layers.2.self_attention.dense.weight",
        "language_model.encoder.layers.2.mlp.dense_h_to_4h.weight",
        "language_model.encoder.layers.2.mlp.dense_4h_to_h.weight",
        "language_model.encoder.layers.2.input_layernorm.weight",
    ):
        assert name in names, name
    kv = gather(ckpt, "language_model.encoder.layers.0.self_attention.key_value.weight", 0, 2, pp=0)
    rows = DENSE.kv_heads * DENSE.d // 2
    k0, v0 = kv[:rows], kv[rows : 2 * rows]
    assert torch.equal(k0, DENSE.tensor("layers.0.attn.k")[:rows])
    assert torch.equal(v0, DENSE.tensor("layers.0.attn.v")[:rows])


@pytest.mark.parametrize("xser", [False, True], ids=["plain", "xser"])
def test_moe_expert_parallel(tmp_path: Path, xser: bool) -> None:
    write_nxd(MOE, tmp_path, tp=2, ep=2, xser=xser)
    ckpt = open_path(tmp_path)
    assert (ckpt.parallel.tp, ckpt.parallel.ep) == (2, 2)
    assert len([f for f in ckpt.files if f.role == "model"]) == 4
    assert all(t.ranks.ep is not None for t in ckpt.tensors)
    on_ep1 = {t.name for t in ckpt.tensors if t.ranks.ep == 1}
    assert on_ep1 and all("expert_mlps" in n for n in on_ep1)
    assert {t.ranks.ep for t in ckpt.find("model.layers.0.mlp.router.linear_router.weight")} == {0}
    ffn_r = MOE.ffn // 2
    for ep in range(2):
        for tp in range(2):
            where = {"ep": ep, "tp": tp}
            gate_up = ckpt.load("model.layers.1.mlp.expert_mlps.mlp_op.gate_up_proj.weight", where)
            down = ckpt.load("model.layers.1.mlp.expert_mlps.mlp_op.down_proj.weight", where)
            assert gate_up.shape == (2, MOE.hidden, 2 * ffn_r) and down.shape == (2, ffn_r, MOE.hidden)
            for local in range(2):
                e = ep * 2 + local
                cols = slice(tp * ffn_r, (tp + 1) * ffn_r)
                assert torch.equal(gate_up[local, :, :ffn_r], MOE.tensor(f"layers.1.experts.{e}.gate").t()[:, cols])
                assert torch.equal(gate_up[local, :, ffn_r:], MOE.tensor(f"layers.1.experts.{e}.up").t()[:, cols])
                assert torch.equal(down[local], MOE.tensor(f"layers.1.experts.{e}.down").t()[cols])


def test_xser_open_reads_no_tensor_files_when_info_present(tmp_path: Path) -> None:
    tag = write_nxd(DENSE, tmp_path, tp=2, xser=True)
    stash = tmp_path / "stash"
    stash.mkdir()
    tensor_dirs = sorted((tag / "model").glob("*.pt.tensors"))
    assert len(tensor_dirs) == 2
    for folder in tensor_dirs:
        shutil.move(str(folder), stash / folder.name)
    ckpt = open_path(tag)  # would fail if any tensor file were opened
    assert ckpt.metadata["nxd"]["info_files"] == 2
    assert ckpt.tensor("model.layers.0.mlp.down_proj.weight", {"tp": 1}).shape == (DENSE.hidden, DENSE.ffn // 2)
    with pytest.raises(CheckpointError):
        ckpt.load("model.norm.weight", {"tp": 0})
    for folder in tensor_dirs:
        shutil.move(str(stash / folder.name), folder)
    assert torch.equal(ckpt.load("model.norm.weight", {"tp": 0}), DENSE.tensor("final_norm"))


def test_xser_without_info_uses_tensor_headers(tmp_path: Path) -> None:
    write_nxd(DENSE, tmp_path, tp=2, pp=2, xser=True, with_info=False)
    assert not list(tmp_path.rglob("*.info.pt"))
    ckpt = open_path(tmp_path)
    assert ckpt.metadata["nxd"]["info_files"] == 0 and ckpt.metadata["nxd"]["xser"]
    check_dense_values(ckpt, DENSE, 2, 2)


def test_xser_info_with_stem_spelling(tmp_path: Path) -> None:
    tag = write_nxd(DENSE, tmp_path, xser=True)
    shard = tag / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt"
    (tag / "model" / (shard.name + ".info.pt")).rename(tag / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.info.pt")
    ckpt = open_path(tag)
    assert ckpt.metadata["nxd"]["info_files"] == 1
    check_dense_values(ckpt, DENSE, 1, 1)


def test_missing_xser_tensor_file_is_reported(tmp_path: Path) -> None:
    tag = write_nxd(DENSE, tmp_path, xser=True, with_info=False)
    (tag / "model" / "dp_rank_00_tp_rank_00_pp_rank_00.pt.tensors" / "tensor_0.pt").unlink()
    ckpt = open_path(tag)
    assert not ckpt.complete
    assert any("model.embed_tokens.weight" in w for w in ckpt.warnings)
    assert not ckpt.find("model.embed_tokens.weight")


def test_incomplete_tag_is_flagged_but_opened(tmp_path: Path) -> None:
    tag = write_nxd(DENSE, tmp_path, complete=False)
    assert (tag / "checkpoint").exists() and not (tag / "done").exists()
    probe = READER.probe(tag)
    assert probe is not None and not probe.complete
    ckpt = READER.open(probe)
    assert not ckpt.complete
    assert any("done" in w for w in ckpt.warnings)
    check_dense_values(ckpt, DENSE, 1, 1)


def test_entry_points_tag_model_dir_and_single_file(tmp_path: Path) -> None:
    tag = write_nxd(DENSE, tmp_path, tp=2, pp=2, tag="my--step=5-consumed_samples=160.0.ckpt")
    for entry in (tag, tag / "model"):
        ckpt = open_path(entry)
        assert ckpt.iteration == tag.name
        assert len([f for f in ckpt.files if f.role == "model"]) == 4
        assert {f.rel for f in ckpt.files if f.role == "marker"} == {"checkpoint", "done"}
        assert ckpt.metadata["nxd"]["step"] == 5
        assert ckpt.metadata["nxd"]["consumed_samples"] == 160.0
    single = tag / "model" / "dp_rank_00_tp_rank_01_pp_rank_01.pt"
    ckpt = open_path(single)
    assert [f.rel for f in ckpt.files if f.role == "model"] == ["model/dp_rank_00_tp_rank_01_pp_rank_01.pt"]
    assert {t.ranks for t in ckpt.tensors} == {ckpt.tensors[0].ranks}
    assert ckpt.tensors[0].ranks.tp == 1 and ckpt.tensors[0].ranks.pp == 1
    assert (ckpt.parallel.tp, ckpt.parallel.pp) == (2, 2)
    assert torch.equal(ckpt.load("model.norm.weight"), DENSE.tensor("final_norm"))


def test_root_picks_newest_done_tag(tmp_path: Path) -> None:
    older = write_nxd(DENSE, tmp_path, tag="step_20")
    newer = write_nxd(DENSE, tmp_path, tag="step_10")
    torn = write_nxd(DENSE, tmp_path, tag="step_30", complete=False)
    os.utime(older / "done", (1_000, 1_000))
    os.utime(newer / "done", (2_000, 2_000))
    os.utime(torn, (3_000, 3_000))
    probe = READER.probe(tmp_path)
    assert probe is not None
    assert probe.path == newer and probe.iteration == "step_10" and probe.root == tmp_path
    assert probe.iterations == ["step_20", "step_10", "step_30"]
    assert probe.complete and not probe.problems


def test_root_with_legacy_newest_file(tmp_path: Path) -> None:
    for tag in ("a", "b", "c"):
        folder = write_nxd(DENSE, tmp_path, tag=tag)
        (folder / "done").unlink()
        (folder / "checkpoint").unlink()
    (tmp_path / "newest").write_text("a\nb\n")
    probe = READER.probe(tmp_path)
    assert probe is not None and probe.iteration == "b" and not probe.problems
    (tmp_path / "newest").write_text("a\nzzz\n")
    with pytest.raises(CheckpointError) as err:
        READER.probe(tmp_path)
    assert err.value.path.endswith("newest")


def test_wrapped_model_state_is_unwrapped(tmp_path: Path) -> None:
    model = tmp_path / "tag" / "model"
    model.mkdir(parents=True)
    torch.save({"model": {"model.norm.weight": torch.ones(4)}, "extra": 1}, model / "dp_rank_00_tp_rank_00_pp_rank_00.pt")
    ckpt = open_path(tmp_path / "tag")
    assert [t.name for t in ckpt.tensors] == ["model.norm.weight"]
    assert torch.equal(ckpt.load("model.norm.weight"), torch.ones(4))


def test_optimizer_files_are_listed_not_parsed(tmp_path: Path) -> None:
    tag = write_nxd(DENSE, tmp_path, tp=2)
    optim = tag / "optim"
    optim.mkdir()
    for dp in range(2):
        (optim / f"dp_rank_{dp:02d}_tp_rank_00_pp_rank_00.pt").write_bytes(b"not a torch file")
    (tag / "scheduler.pt").write_bytes(b"x")
    ckpt = open_path(tmp_path)
    optim_files = [f for f in ckpt.files if f.role == "optimizer"]
    assert len(optim_files) == 2 and all(f.size == 16 for f in optim_files)
    assert {f.ranks.dp for f in optim_files} == {0, 1}
    assert ckpt.metadata["nxd"]["optimizer_files"] == 2
    assert all(t.group == "model" for t in ckpt.tensors)
    assert READER.probe(optim) is None
    assert READER.probe(optim / "dp_rank_00_tp_rank_00_pp_rank_00.pt") is None


def test_unrelated_paths_are_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes(b"{}")
    (tmp_path / "other" / "model").mkdir()
    (tmp_path / "file.pt").write_bytes(b"x")
    for path in (tmp_path / "empty", tmp_path / "other", tmp_path / "file.pt", tmp_path / "missing"):
        assert READER.probe(path) is None


def test_no_torch_xla_left_behind(tmp_path: Path) -> None:
    import sys

    write_nxd(DENSE, tmp_path, xser=True)
    assert not any(name == "torch_xla" or name.startswith("torch_xla.") for name in sys.modules)


def test_detect_finds_nxd(tmp_path: Path) -> None:
    try:
        from ckptscope.inspectors.detect import detect
        from ckptscope.inspectors.formats import READERS  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"formats package not importable yet: {exc}")
    write_nxd(DENSE, tmp_path, tp=2, xser=True)
    ckpt = detect(tmp_path)
    assert ckpt.kind == "nxd" and ckpt.parallel.tp == 2
