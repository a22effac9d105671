"""Megatron-Core torch_dist: the DCP reader, the format reader and the sample writer.

Synthetic checkpoints come from `write_megatron_dist`; the real ones from
`shared/corpus/megatron/*/dist` (megatron-core 0.16.1), cross-checked against the legacy
`torch` files of the same run and against PyTorch's own DCP loader.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from ckptscope.converters.samples.megatron_dist import (
    expected_dist_tensors,
    fused_qkv,
    write_megatron_dist,
)
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.inspectors.dcp import DcpReader, safe_torch_loads
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.formats.megatron_dist import (
    READER,
    load_stacked_slice,
    stacked_axes,
    tensor_group,
)
from ckptscope.inspectors.model import Checkpoint

DENSE = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)
MOE = SampleSpec(layers=4, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=200, experts=4, expert_ffn=24)
ITER = "iter_0000010"


def open_dist(path: Path) -> Checkpoint:
    probe = READER.probe(Path(path))
    assert probe is not None, f"not recognised: {path}"
    return READER.open(probe)


def corpus_root() -> Path:
    override = os.environ.get("CKPTSCOPE_CORPUS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_item(name: str) -> Path:
    path = corpus_root() / "megatron" / name
    if not (path / "dist").is_dir():
        pytest.skip(f"real-checkpoint corpus not found at {path} (set CKPTSCOPE_CORPUS)")
    return path


def check_matches_writer(ckpt: Checkpoint, expected: dict[str, torch.Tensor]) -> None:
    assert {t.name for t in ckpt.tensors} == set(expected)
    for info in ckpt.tensors:
        want = expected[info.name]
        assert info.shape == tuple(want.shape), info.name
        assert info.dtype == str(want.dtype).removeprefix("torch."), info.name
        assert torch.equal(ckpt.load(info), want), info.name


def record_chunk_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...]]]:
    reads: list[tuple[str, tuple[int, ...]]] = []
    original = DcpReader.copy_chunk  # every chunk a box read touches, read straight or decoded

    def spy(self: DcpReader, key: str, chunk, *rest):  # type: ignore[no-untyped-def]
        reads.append((key, chunk.offsets))
        return original(self, key, chunk, *rest)

    monkeypatch.setattr(DcpReader, "copy_chunk", spy)
    return reads


# ----- the writer, read back ---------------------------------------------------------------
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("pp", [1, 2])
def test_dense_round_trip(tmp_path: Path, tp: int, pp: int) -> None:
    root = write_megatron_dist(DENSE, tmp_path, tp=tp, pp=pp)
    ckpt = open_dist(root)
    assert ckpt.kind == "megatron-dist"
    assert ckpt.root == root and ckpt.path == root / ITER
    assert ckpt.iteration == 10 and ckpt.iterations == [10]
    assert ckpt.complete and not ckpt.warnings
    assert (ckpt.parallel.tp, ckpt.parallel.pp) == (tp, pp)
    assert "TP/PP independent" in ckpt.format_detail
    args = ckpt.metadata["args"]
    assert (args["num_layers"], args["hidden_size"], args["num_query_groups"]) == (4, 64, 2)
    assert args["padded_vocab_size"] == DENSE.padded_vocab(tp)
    assert ckpt.metadata["checkpoint_version"] == 3.0 and ckpt.metadata["iteration"] == 10
    assert ckpt.metadata["dist"]["sharded_backend"] == "torch_dist"
    check_matches_writer(ckpt, expected_dist_tensors(DENSE, tp=tp))

    L, h, ffn = DENSE.layers, DENSE.hidden, DENSE.ffn
    qkv = ckpt.tensor("decoder.layers.self_attention.linear_qkv.weight")
    assert qkv.shape == (L, (DENSE.heads + 2 * DENSE.kv_heads) * DENSE.d, h)
    assert qkv.stacked == ("layers",) and len(qkv.chunks) == L * tp
    fc1 = ckpt.tensor("decoder.layers.mlp.linear_fc1.weight")
    assert fc1.shape == (L, 2 * ffn, h) and len(fc1.chunks) == L * 2 * tp
    piece = ffn // tp
    assert sorted({c.offsets[1] for c in fc1.chunks}) == [j * piece for j in range(2 * tp)]
    proj = ckpt.tensor("decoder.layers.self_attention.linear_proj.weight")
    assert {c.sizes for c in proj.chunks} == {(1, h, DENSE.heads * DENSE.d // tp)}  # row-parallel: dim 1
    emb = ckpt.tensor("embedding.word_embeddings.weight")
    assert emb.shape == (DENSE.padded_vocab(tp), h) and emb.stacked == () and len(emb.chunks) == tp
    assert ckpt.tensor("decoder.final_layernorm.weight").chunks[0].sizes == (h,)

    distcp = [f for f in ckpt.files if f.role == "tensors"]
    assert len(distcp) == 2 * tp * pp and all(f.rel.endswith(".distcp") for f in distcp)
    assert {c.file for t in ckpt.tensors for c in t.chunks} <= {f.rel for f in distcp}
    extra = [o for o in ckpt.objects if o.kind == "extra_state"]
    assert len(extra) == 4 * L and not any("_extra_state" in t.name for t in ckpt.tensors)


def test_values_are_the_canonical_weights(tmp_path: Path) -> None:
    """Fused QKV is grouped per KV head and fc1 is cat(gate, up): check against the spec directly."""
    ckpt = open_dist(write_megatron_dist(DENSE, tmp_path, tp=2))
    qkv = load_stacked_slice(ckpt.tensor("decoder.layers.self_attention.linear_qkv.weight"), 1)
    d, g = DENSE.d, DENSE.heads // DENSE.kv_heads
    group0 = qkv[: (g + 2) * d]
    assert torch.equal(group0[: g * d], DENSE.tensor("layers.1.attn.q")[: g * d])
    assert torch.equal(group0[g * d: (g + 1) * d], DENSE.tensor("layers.1.attn.k")[:d])
    assert torch.equal(group0[(g + 1) * d:], DENSE.tensor("layers.1.attn.v")[:d])
    assert torch.equal(qkv, fused_qkv(DENSE, 1))
    fc1 = load_stacked_slice(ckpt.tensor("decoder.layers.mlp.linear_fc1.weight"), 2)
    assert torch.equal(fc1, torch.cat([DENSE.tensor("layers.2.mlp.gate"), DENSE.tensor("layers.2.mlp.up")]))
    emb = ckpt.load("embedding.word_embeddings.weight")
    assert torch.equal(emb[: DENSE.vocab], DENSE.tensor("embed")) and not emb[DENSE.vocab:].any()


@pytest.mark.parametrize("tp", [1, 2])
def test_moe_expert_parallel(tmp_path: Path, tp: int) -> None:
    root = write_megatron_dist(MOE, tmp_path, tp=tp, ep=2)
    ckpt = open_dist(root)
    assert (ckpt.parallel.tp, ckpt.parallel.ep) == (tp, 2)
    assert ckpt.metadata["args"]["num_experts"] == 4
    check_matches_writer(ckpt, expected_dist_tensors(MOE, tp=tp))
    fc1 = ckpt.tensor("decoder.layers.mlp.experts.experts.linear_fc1.weight")
    assert fc1.shape == (MOE.layers, MOE.experts, 2 * MOE.moe_ffn, MOE.hidden)
    assert fc1.stacked == ("layers", "experts") and len(fc1.chunks) == MOE.layers * MOE.experts * 2 * tp
    fc2 = ckpt.tensor("decoder.layers.mlp.experts.experts.linear_fc2.weight")
    assert fc2.shape == (MOE.layers, MOE.experts, MOE.hidden, MOE.moe_ffn)
    router = ckpt.tensor("decoder.layers.mlp.router.weight")
    assert router.shape == (MOE.layers, MOE.experts, MOE.hidden) and router.stacked == ("layers",)
    expert = load_stacked_slice(fc1, 2, 3)
    assert torch.equal(expert, torch.cat([MOE.tensor("layers.2.experts.3.gate"), MOE.tensor("layers.2.experts.3.up")]))
    # experts 0-1 are written by EP rank 0, experts 2-3 by EP rank 1
    ranks = {int(c.file.split("_")[2]) // tp for c in fc1.chunks if c.offsets[1] >= 2}
    assert ranks == {1}
    assert sum(o.kind == "extra_state" for o in ckpt.objects) == MOE.layers * (2 + 2 * MOE.experts)


@pytest.mark.parametrize("spec", [DENSE, MOE], ids=["dense", "moe"])
def test_per_layer_keys_and_split_swiglu(tmp_path: Path, spec: SampleSpec) -> None:
    root = write_megatron_dist(spec, tmp_path, tp=2, per_layer_keys=True, split_swiglu=True)
    ckpt = open_dist(root)
    check_matches_writer(ckpt, expected_dist_tensors(spec, tp=2, per_layer_keys=True, split_swiglu=True))
    assert ckpt.metadata["content_metadata"] == {"singleton_local_shards": True}
    qkv = ckpt.tensor("decoder.layers.3.self_attention.linear_qkv.weight")
    assert qkv.stacked == () and len(qkv.chunks) == 2
    prefix = "decoder.layers.1.mlp.experts.experts.linear_fc1" if spec.experts else "decoder.layers.1.mlp.linear_fc1"
    gate, up = ckpt.tensor(prefix + ".weight_w"), ckpt.tensor(prefix + ".weight_v")
    if spec.experts:
        assert gate.stacked == ("experts",)
        assert torch.equal(load_stacked_slice(up, 2), spec.tensor("layers.1.experts.2.up"))
    else:
        assert torch.equal(ckpt.load(gate), spec.tensor("layers.1.mlp.gate"))
        assert torch.equal(ckpt.load(up), spec.tensor("layers.1.mlp.up"))
    assert not any(t.name.startswith("decoder.layers.mlp") for t in ckpt.tensors)


def test_per_layer_keys_only(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path, per_layer_keys=True)
    ckpt = open_dist(root)
    check_matches_writer(ckpt, expected_dist_tensors(DENSE, per_layer_keys=True))
    assert ckpt.tensor("decoder.layers.0.mlp.linear_fc1.weight").shape == (2 * DENSE.ffn, DENSE.hidden)


def test_common_state_inside_distcp(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path, with_common_pt=False)
    assert not (root / ITER / "common.pt").exists()
    ckpt = open_dist(root)
    assert ckpt.metadata["common_source"] == "common_state/shard_0_1"
    assert ckpt.metadata["args"]["num_layers"] == 4 and ckpt.metadata["checkpoint_version"] == 3.0
    assert "common_backend" not in ckpt.metadata["dist"]
    kinds = {o.name: o.kind for o in ckpt.objects}
    assert kinds["common_state/shard_0_1"] == "common_state"
    check_matches_writer(ckpt, expected_dist_tensors(DENSE))


def test_optimizer_keys_are_grouped(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path, tp=2, with_optimizer=True)
    ckpt = open_dist(root)
    check_matches_writer(ckpt, expected_dist_tensors(DENSE, tp=2, with_optimizer=True))
    opt = [t for t in ckpt.tensors if t.group == "optimizer"]
    assert opt and all(t.name.startswith("optimizer.state.") for t in opt)
    assert len(ckpt.model_tensors()) == len(expected_dist_tensors(DENSE, tp=2))
    assert tensor_group("chained_0.optimizer.distributed.dp_group_idx_0.exp_avg") == "optimizer"


def test_stacked_axes_naming() -> None:
    assert stacked_axes("decoder.layers.mlp.linear_fc1.weight") == ("layers",)
    assert stacked_axes("decoder.layers.mlp.experts.experts.linear_fc2.weight") == ("layers", "experts")
    assert stacked_axes("decoder.layers.3.mlp.experts.experts.linear_fc2.weight") == ("experts",)
    assert stacked_axes("decoder.layers.3.self_attention.linear_qkv.weight") == ()
    assert stacked_axes("embedding.word_embeddings.weight") == ()


# ----- slices read only their chunks --------------------------------------------------------
def test_layer_slice_reads_only_its_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = open_dist(write_megatron_dist(DENSE, tmp_path, tp=2))
    reads = record_chunk_reads(monkeypatch)
    info = ckpt.tensor("decoder.layers.mlp.linear_fc1.weight")
    layer = load_stacked_slice(info, 2)
    assert torch.equal(layer, expected_dist_tensors(DENSE, tp=2)[info.name][2])
    assert len(reads) == 4 and all(offsets[0] == 2 for _, offsets in reads)


def test_expert_slice_reads_only_its_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = open_dist(write_megatron_dist(MOE, tmp_path, tp=2, ep=2))
    reads = record_chunk_reads(monkeypatch)
    info = ckpt.tensor("decoder.layers.mlp.experts.experts.linear_fc2.weight")
    value = load_stacked_slice(info, 1, 3)
    assert torch.equal(value, MOE.tensor("layers.1.experts.3.down"))
    assert len(reads) == 2 and all(offsets[:2] == (1, 3) for _, offsets in reads)
    reads.clear()
    box = info.source.reader.read_box(info.name, (3, 0, 0, 0), (1, 4, 5, MOE.moe_ffn))  # type: ignore[union-attr]
    assert torch.equal(box[0, :, :5], expected_dist_tensors(MOE, tp=2)[info.name][3, :, :5])
    assert all(offsets[0] == 3 and offsets[2] == 0 for _, offsets in reads)


def test_slice_index_errors(tmp_path: Path) -> None:
    ckpt = open_dist(write_megatron_dist(DENSE, tmp_path))
    with pytest.raises(CheckpointError, match="outside"):
        load_stacked_slice(ckpt.tensor("decoder.layers.mlp.linear_fc1.weight"), 4)
    with pytest.raises(CheckpointError, match="too long"):
        load_stacked_slice(ckpt.tensor("decoder.layers.mlp.linear_fc1.weight"), 1, 0)


# ----- incomplete, unsupported and broken folders -------------------------------------------
def test_incomplete_async_save(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path, with_metadata_json=False)
    probe = READER.probe(root)
    assert probe is not None and probe.complete is False and "INCOMPLETE" in probe.label()
    ckpt = READER.open(probe)
    assert ckpt.complete is False
    assert any("metadata.json" in w for w in ckpt.warnings)
    check_matches_writer(ckpt, expected_dist_tensors(DENSE))


def test_zarr_backend_is_rejected(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path)
    (root / ITER / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr", "sharded_backend_version": 1}))
    with pytest.raises(CheckpointError, match="zarr.*not supported") as err:
        open_dist(root)
    assert "\n" not in str(err.value)


def test_zarr_folder_without_dcp_metadata_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / ITER
    (folder / "decoder.final_layernorm.weight").mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    (folder / "common.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="zarr"):
        open_dist(folder)


def test_missing_dcp_metadata(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path)
    (root / ITER / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="missing DCP metadata") as err:
        open_dist(root)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("junk", [b"", b"not a pickle at all", pickle.dumps({"a": 1}), pickle.dumps([1, 2])[:5]])
def test_garbled_dcp_metadata(tmp_path: Path, junk: bytes) -> None:
    root = write_megatron_dist(DENSE, tmp_path)
    (root / ITER / ".metadata").write_bytes(junk)
    with pytest.raises(CheckpointError) as err:
        open_dist(root)
    assert ".metadata" in str(err.value) and "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch pwned",))


def test_metadata_pickle_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_megatron_dist(DENSE, tmp_path)
    (root / ITER / ".metadata").write_bytes(pickle.dumps(_Evil()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="garbled"):
        open_dist(root)
    assert not (tmp_path / "pwned").exists()


def test_storage_path_cannot_escape_the_folder(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    root = write_megatron_dist(DENSE, tmp_path)
    meta = _trusted_metadata(root / ITER)  # our own fixture: trusted
    index = next(iter(meta.storage_data))
    meta.storage_data[index] = _StorageInfo("../../outside.bin", 0, 10)
    (root / ITER / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        open_dist(root)


def test_reformulated_optimizer_shapes_are_flagged(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path)
    meta = _trusted_metadata(root / ITER)
    meta.mcore_data = {"optimizer.state.exp_avg.x": {"nd_reformulated_orig_global_shape": (4, 8)}}
    (root / ITER / ".metadata").write_bytes(pickle.dumps(meta))
    ckpt = open_dist(root)
    assert any("reformulated" in w for w in ckpt.warnings)


def test_missing_chunk_file(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path, tp=2)
    (root / ITER / "__1_0.distcp").unlink()
    ckpt = open_dist(root)
    assert ckpt.complete is False and any("__1_0.distcp is missing" in w for w in ckpt.warnings)
    broken = [t for t in ckpt.tensors if any(c.file == "__1_0.distcp" for c in t.chunks)]
    assert broken
    with pytest.raises(CheckpointError, match="missing") as err:
        ckpt.load(broken[0])
    assert "\n" not in str(err.value)
    intact = [t for t in ckpt.tensors if all(c.file != "__1_0.distcp" for c in t.chunks)]
    assert intact and torch.equal(ckpt.load(intact[0]), expected_dist_tensors(DENSE, tp=2)[intact[0].name])


def test_truncated_chunk_file(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path)
    path = root / ITER / "__0_0.distcp"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ckpt = open_dist(root)
    assert ckpt.complete is False and any("truncated" in w for w in ckpt.warnings)
    failures = 0
    for info in ckpt.tensors:
        try:
            ckpt.load(info)
        except CheckpointError as exc:
            failures += 1
            assert "truncated" in str(exc) and "\n" not in str(exc)
    assert failures


def test_key_not_present(tmp_path: Path) -> None:
    reader = DcpReader(write_megatron_dist(DENSE, tmp_path) / ITER)
    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        reader.read_tensor("decoder.layers.nope.weight")
    with pytest.raises(CheckpointError, match="bytes entry"):
        reader.read_tensor(next(iter(reader.objects)))
    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        reader.read_bytes("nope")


def test_probe_ignores_unrelated_paths(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "metadata.json").write_text("{}")  # alone, it says nothing
    for path in (tmp_path, tmp_path / "a.txt", tmp_path / "sub", tmp_path / "hf", tmp_path / "missing"):
        assert READER.probe(path) is None
    legacy = tmp_path / "legacy"
    (legacy / ITER / "mp_rank_00").mkdir(parents=True)
    (legacy / "latest_checkpointed_iteration.txt").write_text("10")
    assert READER.probe(legacy) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "latest_checkpointed_iteration.txt").write_text("7")
    assert READER.probe(tmp_path / "broken") is None


def test_probe_accepts_folder_and_metadata_files(tmp_path: Path) -> None:
    root = write_megatron_dist(DENSE, tmp_path, iteration=20)
    for path in (root / "iter_0000020", root / "iter_0000020" / ".metadata", root / "iter_0000020" / "metadata.json"):
        probe = READER.probe(path)
        assert probe is not None and probe.path == root / "iter_0000020" and probe.iteration == 20
    assert READER.probe(root / "iter_0000020" / "__0_0.distcp") is None


def test_tracker_and_iterations(tmp_path: Path) -> None:
    write_megatron_dist(DENSE, tmp_path, iteration=5)
    write_megatron_dist(DENSE, tmp_path, iteration=10)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("5")
    ckpt = open_dist(tmp_path)
    assert ckpt.iteration == 5 and ckpt.iterations == [5, 10]
    assert any("newer folder" in w for w in ckpt.warnings)


def test_to_json(tmp_path: Path) -> None:
    ckpt = open_dist(write_megatron_dist(MOE, tmp_path, ep=2))
    data = json.loads(json.dumps(ckpt.to_json()))
    assert data["format"] == "megatron-dist"
    fc1 = next(t for t in data["tensors"] if t["name"].endswith("experts.experts.linear_fc1.weight"))
    assert fc1["stacked"] == ["layers", "experts"] and fc1["chunks"][0]["file"].endswith(".distcp")


# ----- DCP edge cases: raw payloads, torch's own writer, bytes entries ------------------------
def _write_raw_dcp(folder: Path, value: torch.Tensor, pieces: list[tuple[int, int]]) -> None:
    """A hand-made DCP folder whose chunks are raw little-endian bytes (no torch.save)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    folder.mkdir()
    storage, chunks, blob = {}, [], b""
    for start, size in pieces:
        data = value[start: start + size].contiguous().numpy().tobytes()
        offsets = torch.Size([start, 0])
        storage[MetadataIndex("w", offsets)] = _StorageInfo("__0_0.distcp", len(blob), len(data))
        chunks.append(ChunkStorageMetadata(offsets, torch.Size([size, value.shape[1]])))
        blob += data
    (folder / "__0_0.distcp").write_bytes(blob)
    meta = Metadata({"w": TensorStorageMetadata(TensorProperties(dtype=value.dtype), value.shape, chunks)}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


def test_raw_byte_chunks(tmp_path: Path) -> None:
    value = torch.arange(24, dtype=torch.int32).reshape(6, 4)
    _write_raw_dcp(tmp_path / "raw", value, [(0, 2), (2, 4)])
    reader = DcpReader(tmp_path / "raw")
    assert torch.equal(reader.read_tensor("w"), value)
    assert torch.equal(reader.read_box("w", (1, 1), (3, 2)), value[1:4, 1:3])


def test_chunks_that_do_not_cover_the_tensor(tmp_path: Path) -> None:
    value = torch.arange(24, dtype=torch.int32).reshape(6, 4)
    _write_raw_dcp(tmp_path / "gap", value, [(0, 2)])
    reader = DcpReader(tmp_path / "gap")
    assert torch.equal(reader.read_index("w", [1]), value[1])
    with pytest.raises(CheckpointError, match="cover 8 of the 24"):
        reader.read_tensor("w")


@pytest.mark.parametrize("fmt", ["torch_save", "safetensors"])
def test_reads_what_torch_dcp_save_writes(tmp_path: Path, fmt: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import (
        FileSystemWriter,
        SerializationFormat,
    )

    state = {
        "a": torch.arange(12.0).reshape(3, 4),
        "b": torch.arange(6, dtype=torch.int64),
        "n": {"x": torch.ones(2, dtype=torch.bfloat16)},
    }
    if fmt == "torch_save":  # torch's safetensors serialization mis-indexes files that mix in bytes
        state["blob"] = io.BytesIO(b"raw bytes entry")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=FileSystemWriter(tmp_path, serialization_format=SerializationFormat(fmt)))
    reader = DcpReader(tmp_path)
    assert torch.equal(reader.read_tensor("a"), state["a"])
    assert torch.equal(reader.read_tensor("b"), state["b"])
    assert torch.equal(reader.read_tensor("n.x"), state["n"]["x"])
    if fmt == "torch_save":
        blob = reader.read_object("blob")  # DCP torch.saves the BytesIO object itself
        assert isinstance(blob, io.BytesIO) and blob.getvalue() == b"raw bytes entry"


def test_safe_torch_loads_keeps_unknown_classes_inert() -> None:
    import argparse

    buf = io.BytesIO()
    torch.save([{"args": argparse.Namespace(num_layers=2), "t": torch.arange(3), "evil": _Evil()}], buf)
    seen: set[str] = set()
    value = safe_torch_loads(buf.getvalue(), seen)
    assert value[0]["args"].num_layers == 2 and torch.equal(value[0]["t"], torch.arange(3))
    assert "posix.system" in seen or "nt.system" in seen


# ----- the real megatron-core checkpoints ---------------------------------------------------
CORPUS_ITEMS = ["gpt_tp2pp1", "moe_ep2"]


def _trusted_metadata(folder: Path):  # type: ignore[no-untyped-def]
    """Reference only: PyTorch's own (plain pickle) metadata reader, on the trusted corpus."""
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(folder)).read_metadata()


@pytest.mark.parametrize("item", CORPUS_ITEMS)
def test_corpus_lists_every_key(item: str) -> None:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    dist = corpus_item(item) / "dist"
    ckpt = open_dist(dist)
    meta = _trusted_metadata(dist / ITER)
    listed = {t.name: t for t in ckpt.tensors}
    objects = {o.name for o in ckpt.objects}
    assert set(listed) | objects == set(meta.state_dict_metadata)
    for key, entry in meta.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            assert listed[key].shape == tuple(entry.size), key
            assert listed[key].dtype == str(entry.properties.dtype).removeprefix("torch."), key
            assert len(listed[key].chunks) == len(entry.chunks), key
        else:
            assert key in objects and key not in listed
    assert ckpt.complete and not ckpt.warnings and not ckpt.placeholders
    assert ckpt.iteration == 10 and ckpt.metadata["checkpoint_version"] == 3.0
    args = ckpt.metadata["args"]
    assert (args["num_layers"], args["hidden_size"], args["num_attention_heads"]) == (4, 128, 8)
    assert (args["num_query_groups"], args["kv_channels"], args["padded_vocab_size"]) == (2, 16, 1024)
    assert ckpt.tensor("decoder.layers.self_attention.linear_qkv.weight").shape == (4, 192, 128)
    assert all(o.kind == "extra_state" for o in ckpt.objects)


@pytest.mark.parametrize("item", CORPUS_ITEMS)
def test_corpus_values_match_torch_dcp_loader(item: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    folder = corpus_item(item) / "dist" / ITER
    ckpt = open_dist(folder)
    state = {t.name: torch.empty(t.shape, dtype=getattr(torch, t.dtype)) for t in ckpt.tensors}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, storage_reader=FileSystemReader(str(folder)), no_dist=True)
    for info in ckpt.tensors:
        assert torch.equal(ckpt.load(info), state[info.name]), info.name


def _legacy_model(item: str, rank_dir: str) -> dict[str, torch.Tensor]:
    path = corpus_item(item) / "legacy" / ITER / rank_dir / "model_optim_rng.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["model"]  # trusted corpus only


def test_corpus_tp2_embedding_matches_legacy() -> None:
    ckpt = open_dist(corpus_item("gpt_tp2pp1") / "dist")
    shards = [_legacy_model("gpt_tp2pp1", f"mp_rank_0{r}")["embedding.word_embeddings.weight"] for r in (0, 1)]
    assert torch.equal(ckpt.load("embedding.word_embeddings.weight"), torch.cat(shards, dim=0))
    fc2 = [_legacy_model("gpt_tp2pp1", f"mp_rank_0{r}")["decoder.layers.2.mlp.linear_fc2.weight"] for r in (0, 1)]
    layer2 = load_stacked_slice(ckpt.tensor("decoder.layers.mlp.linear_fc2.weight"), 2)
    assert torch.equal(layer2, torch.cat(fc2, dim=1))


def test_corpus_moe_expert_matches_legacy() -> None:
    ckpt = open_dist(corpus_item("moe_ep2") / "dist")
    legacy = _legacy_model("moe_ep2", "mp_rank_00_001")  # expert rank 1 holds global experts 2, 3
    want = legacy["decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight"]
    info = ckpt.tensor("decoder.layers.mlp.experts.experts.linear_fc1.weight")
    assert torch.equal(load_stacked_slice(info, 0, 3), want)
    assert torch.equal(ckpt.load(info)[0, 3], want)


@pytest.mark.parametrize(
    ("item", "spec", "kwargs"),
    [
        ("gpt_tp2pp1", SampleSpec(layers=4, hidden=128, heads=8, kv_heads=2, head_dim=16, ffn=352, vocab=1024), {"tp": 2}),
        ("moe_ep2", SampleSpec(layers=4, hidden=128, heads=8, kv_heads=2, head_dim=16, ffn=128, vocab=1024,
                               experts=4, expert_ffn=128), {"ep": 2}),
    ],
)
def test_writer_layout_matches_megatron_core(tmp_path: Path, item: str, spec: SampleSpec, kwargs: dict[str, int]) -> None:
    """Same keys, shapes, chunk boxes, files and byte ranges as megatron-core 0.16.1 wrote."""
    real = DcpReader(corpus_item(item) / "dist" / ITER)
    ours = DcpReader(write_megatron_dist(spec, tmp_path, **kwargs) / ITER)
    assert set(ours.keys()) == set(real.keys())

    def placement(reader: DcpReader) -> dict[object, tuple[object, ...]]:
        out: dict[object, tuple[object, ...]] = {k: (o.file, o.byte_offset, o.length) for k, o in reader.objects.items()}
        for key, tensor in reader.tensors.items():
            out[key] = (tensor.shape, tensor.dtype)
            for c in tensor.chunks:
                out[(key, c.offsets)] = (c.sizes, c.file, c.byte_offset, c.length)
        return out

    assert placement(ours) == placement(real)
    assert sorted(ours.files()) == sorted(real.files())
    real_common = safe_torch_loads((corpus_item(item) / "dist" / ITER / "common.pt").read_bytes())
    our_common = safe_torch_loads((tmp_path / ITER / "common.pt").read_bytes())
    assert set(vars(our_common["args"])) == set(vars(real_common["args"]))
    assert {k: v for k, v in our_common.items() if k != "args"} == {k: v for k, v in real_common.items() if k != "args"}
    assert json.loads((tmp_path / ITER / "metadata.json").read_text()) == json.loads(
        (corpus_item(item) / "dist" / ITER / "metadata.json").read_text()
    )


# ----- through detect() -----------------------------------------------------------------------
def test_detect_finds_torch_dist(tmp_path: Path) -> None:
    try:
        readers = importlib.import_module("ckptscope.inspectors.formats").READERS
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"format registry not importable yet: {exc}")
    assert any(r.kind == "megatron-dist" for r in readers)
    from ckptscope.inspectors.detect import detect

    root = write_megatron_dist(MOE, tmp_path, ep=2)
    ckpt = detect(root)
    assert ckpt.kind == "megatron-dist" and ckpt.iteration == 10
    assert detect(root / ITER / ".metadata").kind == "megatron-dist"
    incomplete = write_megatron_dist(DENSE, tmp_path / "async", with_metadata_json=False)
    assert detect(incomplete).complete is False
