"""DeepSpeed reader against the sample writers and the real DeepSpeed 0.19.8 corpus items."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptscope.converters.samples.deepspeed import (
    PIPE_INDEX_MAPS,
    hf_names,
    write_deepspeed_pipeline,
    write_deepspeed_zero,
)
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.formats.deepspeed import READER
from ckptscope.inspectors.model import Checkpoint
from ckptscope.inspectors.torchfile import open_torch_file

SPEC = SampleSpec(layers=3, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=200, make_vocab_size_divisible_by=64)
LLAMA = SampleSpec(layers=2, hidden=64, heads=4, kv_heads=2, ffn=176, vocab=1000)


def open_path(path: Path) -> Checkpoint:
    probe = READER.probe(path)
    assert probe is not None, f"deepspeed reader did not claim {path}"
    return READER.open(probe)


# ----- pipeline -------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["microsoft", "bigscience"])
def test_pipeline_tp2(tmp_path: Path, style: str) -> None:
    root = write_deepspeed_pipeline(SPEC, tmp_path, tp=2, pp=2, style=style, step=7)
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "7"
    ckpt = open_path(root)  # DeepSpeed claims a Megatron-DeepSpeed root although it has a tracker
    assert ckpt.kind == "deepspeed" and ckpt.iteration == 7 and ckpt.root == root
    assert (ckpt.parallel.tp, ckpt.parallel.pp, ckpt.parallel.dp) == (2, 2, 1)
    assert not ckpt.warnings
    assert ckpt.metadata["args"]["tensor_model_parallel_size"] == 2
    assert ckpt.metadata["checkpoint_version"] == 3.0 and ckpt.metadata["iteration"] == 7
    assert ckpt.metadata["module_is_none"] is True

    idx = PIPE_INDEX_MAPS[style]
    embed, blocks = idx.embed, idx.blocks(SPEC.layers)
    norm, head = idx.final_norm(SPEC.layers), idx.head(SPEC.layers)
    assert blocks[0] == (2 if style == "microsoft" else 3)
    assert norm == (blocks[-1] + 1 if style == "microsoft" else blocks[-1] + 2)
    layer_files = sorted(f.rel for f in ckpt.files if f.rel.startswith("layer_"))
    assert layer_files == sorted(
        f"layer_{n:02d}-model_{t:02d}-model_states.pt" for n in [embed, *blocks, norm, head] for t in range(2)
    )
    mp_files = {f.rel: f.ranks for f in ckpt.files if f.rel.startswith("mp_rank_")}
    assert {rel: (r.tp, r.pp) for rel, r in mp_files.items()} == {
        "mp_rank_00_model_states.pt": (0, 0), "mp_rank_01_model_states.pt": (1, 0),
        "mp_rank_02_model_states.pt": (0, 1), "mp_rank_03_model_states.pt": (1, 1),
    }

    pad = SPEC.padded_vocab(2)
    emb = torch.cat([ckpt.load(f"{embed}.word_embeddings.weight", {"tp": t}) for t in range(2)])
    assert emb.shape == (pad, SPEC.hidden)
    assert torch.equal(emb[: SPEC.vocab], SPEC.tensor("embed")) and not emb[SPEC.vocab :].any()
    head_key = "lm_head.weight" if style == "microsoft" else "final_linear.weight"
    lm = torch.cat([ckpt.load(f"{head}.{head_key}", {"tp": t}) for t in range(2)])
    assert torch.equal(lm[: SPEC.vocab], SPEC.tensor("lm_head"))
    assert torch.equal(ckpt.load(f"{norm}.weight", {"tp": 1}), SPEC.tensor("final_norm"))
    for layer, number in enumerate(blocks):
        check_block(ckpt, number, layer)


def check_block(ckpt: Checkpoint, number: int, layer: int) -> None:
    d, group, p = SPEC.d, SPEC.heads // SPEC.kv_heads, f"layers.{layer}."
    q, k, v = (SPEC.tensor(p + f"attn.{w}").view(-1, d, SPEC.hidden) for w in ("q", "k", "v"))
    for t in range(2):
        qkv = ckpt.load(f"{number}.self_attention.query_key_value.weight", {"tp": t})
        kv_head = t  # kv_heads 2 over tp 2: one KV group per shard, rows [q x group, k, v]
        expected = torch.cat([q[kv_head * group : (kv_head + 1) * group], k[kv_head : kv_head + 1], v[kv_head : kv_head + 1]])
        assert torch.equal(qkv, expected.reshape(-1, SPEC.hidden))
        h4h = ckpt.load(f"{number}.mlp.dense_h_to_4h.weight", {"tp": t})
        gate, up = h4h.chunk(2)
        rows = slice(t * SPEC.ffn // 2, (t + 1) * SPEC.ffn // 2)
        assert torch.equal(gate, SPEC.tensor(p + "mlp.gate")[rows]) and torch.equal(up, SPEC.tensor(p + "mlp.up")[rows])
        assert torch.equal(ckpt.load(f"{number}.mlp.dense_4h_to_h.weight", {"tp": t}), SPEC.tensor(p + "mlp.down")[:, rows])
        cols = slice(t * SPEC.hidden // 2, (t + 1) * SPEC.hidden // 2)
        assert torch.equal(ckpt.load(f"{number}.self_attention.dense.weight", {"tp": t}), SPEC.tensor(p + "attn.o")[:, cols])
        assert torch.equal(ckpt.load(f"{number}.input_layernorm.weight", {"tp": t}), SPEC.tensor(p + "input_norm"))
        assert torch.equal(ckpt.load(f"{number}.post_attention_layernorm.weight", {"tp": t}), SPEC.tensor(p + "post_attn_norm"))


def test_pipeline_without_layer_files_warns_to_rebuild(tmp_path: Path) -> None:
    root = write_deepspeed_pipeline(SPEC, tmp_path, tp=1, pp=2)
    for f in (root / "global_step2").glob("layer_*"):
        f.unlink()
    ckpt = open_path(root)
    assert not ckpt.tensors
    assert any("--from-optimizer-fp32" in w for w in ckpt.warnings)


# ----- ZeRO -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
def test_zero_writer(tmp_path: Path, bf16: bool) -> None:
    root = write_deepspeed_zero(LLAMA, tmp_path, dp=2, stage=2, bf16=bf16)
    ckpt = open_path(root)
    assert (ckpt.parallel.tp, ckpt.parallel.pp, ckpt.parallel.dp) == (1, 1, 2)
    assert ckpt.metadata["zero_stage"] == 2 and ckpt.metadata["dp_world_size"] == 2
    assert ckpt.metadata["param_shapes"] == {"groups": 1, "params": 21, "numel": 220480}
    names = hf_names(LLAMA)
    assert [t.name for t in ckpt.tensors] == list(names)
    dtype = torch.bfloat16 if bf16 else torch.float32
    for name, canon in names.items():
        assert torch.equal(ckpt.load(name), LLAMA.tensor(canon).to(dtype))
    optim = [f for f in ckpt.files if f.role == "optimizer"]
    prefix = "bf16_" if bf16 else ""
    assert [f.rel for f in optim] == [f"{prefix}zero_pp_rank_{d}_mp_rank_00_optim_states.pt" for d in range(2)]
    assert all(f.size == f.path.stat().st_size > 0 for f in optim)
    assert [f.ranks.dp for f in optim] == [0, 1]
    # the flat fp32 partitions, concatenated, are the spec weights in param_shapes order
    flat = torch.cat([fp32_partition(f.path) for f in optim])
    expected = torch.cat([LLAMA.tensor(c).float().reshape(-1) for c in names.values()])
    assert torch.equal(flat, expected)


def fp32_partition(path: Path) -> torch.Tensor:
    state = open_torch_file(path).obj["optimizer_state_dict"]
    return state["single_partition_of_fp32_groups"][0].load()


def test_zero_partitions_pad_last_rank(tmp_path: Path) -> None:
    spec = SampleSpec(layers=1, hidden=6, heads=2, kv_heads=1, ffn=5, vocab=7)
    root = write_deepspeed_zero(spec, tmp_path, dp=4)
    files = sorted((root / "global_step2").glob("*optim_states.pt"))
    states = [open_torch_file(f).obj["optimizer_state_dict"] for f in files]
    total = sum(s["single_partition_of_fp32_groups"][0].numel for s in states)
    assert total == sum(t.numel() for t in (spec.tensor(c) for c in hf_names(spec).values()))
    assert states[-1]["group_paddings"] == [(-total) % 8]
    assert all(s["group_paddings"] == [0] for s in states[:-1])


def test_single_model_states_file(tmp_path: Path) -> None:
    root = write_deepspeed_zero(LLAMA, tmp_path)
    ckpt = open_path(root / "global_step2" / "mp_rank_00_model_states.pt")
    assert [f.rel for f in ckpt.files] == ["mp_rank_00_model_states.pt"]
    assert len(ckpt.tensors) == 21 and ckpt.metadata["ds_version"] == "0.19.8"


def test_tag_folder_entry(tmp_path: Path) -> None:
    root = write_deepspeed_zero(LLAMA, tmp_path, step=5)
    ckpt = open_path(root / "global_step5")
    assert ckpt.iteration == 5 and ckpt.root is None and len(ckpt.tensors) == 21


def test_bad_latest_names_the_latest_file(tmp_path: Path) -> None:
    root = write_deepspeed_zero(LLAMA, tmp_path)
    (root / "latest").write_text("global_step99")
    with pytest.raises(CheckpointError) as err:
        READER.probe(root)
    assert err.value.path == str(root / "latest")
    assert "global_step99" in err.value.problem


def test_stale_latest_is_reported(tmp_path: Path) -> None:
    write_deepspeed_zero(LLAMA, tmp_path, step=2)
    write_deepspeed_zero(LLAMA, tmp_path, step=4)
    (tmp_path / "latest").write_text("global_step2")
    probe = READER.probe(tmp_path)
    assert probe is not None and probe.iteration == 2 and probe.iterations == [2, 4]
    assert any("global_step4" in p for p in probe.problems)


def test_zero3_placeholders_warn(tmp_path: Path) -> None:
    tag = tmp_path / "global_step1"
    tag.mkdir()
    shapes = [{"w": torch.Size([4, 4]), "b": torch.Size([4])}]
    for dp in range(2):
        state = {"module": {"w": torch.empty(0), "b": torch.empty(0)}, "param_shapes": shapes,
                 "ds_config": {"zero_optimization": {"stage": 3}}, "ds_version": "0.19.8", "dp_world_size": 2}
        torch.save(state, tag / f"zero_pp_rank_{dp}_mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {}}, tag / f"zero_pp_rank_{dp}_mp_rank_00_optim_states.pt")
    (tmp_path / "latest").write_text("global_step1")
    ckpt = open_path(tmp_path)
    assert not ckpt.tensors
    assert {o.name for o in ckpt.objects} == {"w", "b"}
    assert any("--from-optimizer-fp32" in w and "ZeRO-3" in w for w in ckpt.warnings)
    assert ckpt.metadata["zero_stage"] == 3 and ckpt.parallel.dp == 2


def test_unrelated_paths_are_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "latest").write_text("something else")
    (other / "notes.txt").write_text("x")
    (tmp_path / "model.pt").write_bytes(b"x")
    for path in (tmp_path / "empty", other, tmp_path / "model.pt", tmp_path / "missing"):
        assert READER.probe(path) is None


def test_detect_finds_megatron_deepspeed_root(tmp_path: Path) -> None:
    try:
        from ckptscope.inspectors.detect import detect
        from ckptscope.inspectors.formats import READERS  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"formats package not importable yet: {exc}")
    root = write_deepspeed_pipeline(SPEC, tmp_path, tp=2, pp=2)
    assert detect(root).kind == "deepspeed"


# ----- real DeepSpeed 0.19.8 checkpoints ------------------------------------------------------
def trusted_load(path: Path) -> Any:
    """Corpus files are trusted test data; torch.load(weights_only=False) is fine here only."""
    return torch.load(path, map_location="cpu", weights_only=False)


def listed(ckpt: Checkpoint, file: str) -> dict[str, tuple[tuple[int, ...], str]]:
    return {t.name: (t.shape, t.dtype) for t in ckpt.tensors if t.file == file}


def test_corpus_zero2_bf16(corpus: Path) -> None:
    item = corpus / "deepspeed" / "zero2_bf16"
    if not item.is_dir():
        pytest.skip(f"corpus item {item} missing")
    ckpt = open_path(item)
    tag = item / "global_step2"
    module = trusted_load(tag / "mp_rank_00_model_states.pt")["module"]
    expected = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.items()}
    assert listed(ckpt, "mp_rank_00_model_states.pt") == expected
    assert [t.name for t in ckpt.tensors] == list(module)
    for name, value in module.items():
        assert torch.equal(ckpt.load(name), value)
    optim = {f.rel: f.size for f in ckpt.files if f.role == "optimizer"}
    assert optim == {p.name: p.stat().st_size for p in tag.glob("bf16_zero_pp_rank_*_optim_states.pt")}
    assert len(optim) == 2
    assert ckpt.metadata["ds_version"] == "0.19.8"
    assert ckpt.metadata["zero_stage"] == 2 and ckpt.metadata["global_steps"] == 2
    assert (ckpt.parallel.tp, ckpt.parallel.pp, ckpt.parallel.dp) == (1, 1, 2)
    assert not ckpt.warnings


def test_corpus_zero2_partitions_match_writer_layout(corpus: Path, tmp_path: Path) -> None:
    """Our ZeRO writer produces the same keys and partition layout as DeepSpeed 0.19.8."""
    item = corpus / "deepspeed" / "zero2_bf16"
    if not item.is_dir():
        pytest.skip(f"corpus item {item} missing")
    ours = write_deepspeed_zero(LLAMA, tmp_path, dp=2) / "global_step2"
    for name in ("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        real = open_torch_file(item / "global_step2" / name).obj
        mine = open_torch_file(ours / name).obj
        assert list(real) == list(mine)
        assert list(real["optimizer_state_dict"]) == list(mine["optimizer_state_dict"])
        real_map = {k: v.state for k, v in real["optimizer_state_dict"]["param_slice_mappings"][0].items()}
        mine_map = {k: v.state for k, v in mine["optimizer_state_dict"]["param_slice_mappings"][0].items()}
        assert real_map == mine_map
    real_model = trusted_load(item / "global_step2" / "mp_rank_00_model_states.pt")
    mine_model = trusted_load(ours / "mp_rank_00_model_states.pt")
    assert list(real_model) == list(mine_model)


def test_corpus_pipe2_mp(corpus: Path) -> None:
    item = corpus / "deepspeed" / "pipe2_mp"
    if not item.is_dir():
        pytest.skip(f"corpus item {item} missing")
    ckpt = open_path(item)
    tag = item / "global_step2"
    assert (ckpt.parallel.pp, ckpt.parallel.tp) == (2, 1)
    assert ckpt.metadata["ds_version"] == "0.19.8"
    assert ckpt.metadata["module_is_none"] is True
    assert not ckpt.warnings
    layer_files = sorted(tag.glob("layer_*-model_*-model_states.pt"))
    assert len(layer_files) == 6
    for path in layer_files:
        number = int(path.name.split("-")[0].removeprefix("layer_"))
        state = trusted_load(path)
        expected = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
        assert listed(ckpt, path.name) == expected  # `name` as stored in the file (issue 14)
        assert {t.global_name for t in ckpt.tensors if t.file == path.name} == {f"{number}.{k}" for k in state}
        for key, value in state.items():
            assert torch.equal(ckpt.load(f"{number}.{key}", {"tp": 0}), value)
    mp = {f.rel: (f.ranks.tp, f.ranks.pp) for f in ckpt.files if f.rel.startswith("mp_rank_")}
    assert mp == {"mp_rank_00_model_states.pt": (0, 0), "mp_rank_01_model_states.pt": (0, 1)}
    assert "embed_tokens.weight" in {t.name for t in ckpt.tensors}
    assert "0.embed_tokens.weight" in {t.global_name for t in ckpt.tensors}


def test_corpus_single_file_and_copy_with_bad_latest(corpus: Path, tmp_path: Path) -> None:
    item = corpus / "deepspeed" / "zero2_bf16"
    if not item.is_dir():
        pytest.skip(f"corpus item {item} missing")
    copy = tmp_path / "copy"
    shutil.copytree(item, copy)
    (copy / "latest").chmod(0o644)
    (copy / "latest").write_text("global_step3")
    with pytest.raises(CheckpointError) as err:
        READER.probe(copy)
    assert err.value.path.endswith("latest")
    ckpt = open_path(item / "global_step2" / "mp_rank_00_model_states.pt")
    assert len(ckpt.tensors) == 21


@pytest.mark.parametrize("model_axis", [True, False], ids=["layer_XX-model_YY", "layer_XX"])
def test_inspect_json_names_pipeline_tensors_as_stored(tmp_path: Path, model_axis: bool) -> None:
    """Issue 14: `inspect --json` said `0.embed_tokens.weight` where the layer file holds
    `embed_tokens.weight`; `name` is the stored key and `global_name` the PipelineModule's."""
    import json

    from ckptscope.app.cli import app
    from ckptscope.converters.samples import deepspeed as dss
    from ckptscope.converters.samples.spec import SampleSpec
    from typer.testing import CliRunner

    root = dss.write_deepspeed_pipeline(SampleSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=64),
                                        tmp_path / "ds", pp=2, model_axis=model_axis)
    result = CliRunner().invoke(app, ["inspect", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = [t for t in json.loads(result.stdout)["tensors"] if t["file"].startswith("layer_")]
    assert rows
    for row in rows:
        stored = trusted_load(root / "global_step2" / row["file"])
        number = int(row["file"].split("-")[0].removeprefix("layer_"))
        assert row["name"] in stored and row["global_name"] == f"{number}.{row['name']}"
