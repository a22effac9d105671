"""Write a synthetic Megatron-Core `torch_dist` checkpoint laid out exactly as megatron-core does.

The layout was checked against `shared/corpus/megatron/*/dist` (megatron-core 0.16.1):

- keys are ShardedTensor keys without a `model.` prefix; decoder layers are stacked on a
  leading axis (`decoder.layers.self_attention.linear_qkv.weight` is `[L, (nq+2nkv)·d, h]`),
  experts on a second one (`decoder.layers.mlp.experts.experts.linear_fc1.weight`
  `[L, E, 2·ffn, h]`); the local layer spec's norms appear as `linear_qkv.layer_norm_weight`
  and `linear_fc1.layer_norm_weight` (also for MoE layers, as in the corpus);
- one chunk per layer (and per expert), cut into TP chunks along the parallel axis
  (column-parallel: param dim 0, row-parallel: param dim 1); SwiGLU fc1 is cut into 2·TP
  chunks so the global tensor is `cat(full gate, full up)`; the vocab is padded to
  `spec.padded_vocab(tp)` rows;
- `_extra_state` ShardedObjects are bytes entries `<module>._extra_state/shard_<i>_<L>`
  (`shard_<i>.<e>_<L>.<E>` for experts) holding `torch.save([None])`;
- every chunk is a `torch.save` of the chunk tensor inside `__<rank>_<n>.distcp`, two files per
  writing rank, indexed by a pickled `torch.distributed.checkpoint.metadata.Metadata`.

No process group is needed: the writer builds the write plan that the ranks would have made.
`per_layer_keys` / `split_swiglu` reproduce the `singleton_local_shards` variant
(`decoder.layers.<i>.…` keys, `linear_fc1.weight_w` / `weight_v`).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .spec import SampleSpec

CHECKPOINT_VERSION = 3.0
_FILES_PER_RANK = 2
# Order of a layer's linears in its state dict (where their `_extra_state` entries come from).
_MODULE_ORDER = ("linear_proj", "linear_qkv", "linear_fc1", "linear_fc2")


@dataclass(frozen=True, eq=False)
class _Param:
    """One sharded tensor: its global value and how megatron-core chunks it."""

    key: str
    value: torch.Tensor
    axes: tuple[str, ...] = ()  # leading stacked axes: "layers" and/or "experts"
    tp_axis: int | None = None  # axis of the unstacked param split across TP
    glu: bool = False  # swiglu fc1: 2·TP chunks, rank r writes chunks r and TP + r
    layer: int | None = None  # fixed global layer for per-layer keys
    stage: str = "layer"  # first | last | layer: which pipeline stage owns it


@dataclass(frozen=True)
class _Layout:
    """Parallel degrees and the rank numbering (tp fastest, then dp = ep, then pp)."""

    tp: int
    pp: int
    ep: int
    layers: int
    experts: int

    def rank(self, tp_rank: int, pp_rank: int, ep_rank: int = 0) -> int:
        return tp_rank + self.tp * (ep_rank + self.ep * pp_rank)

    def pp_of(self, layer: int | None, stage: str) -> int:
        if stage == "first":
            return 0
        if stage == "last" or layer is None:
            return self.pp - 1
        return layer // (self.layers // self.pp)

    def ep_of(self, expert: int | None) -> int:
        return 0 if expert is None else expert // (self.experts // self.ep)

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.ep


@dataclass
class _WriteItem:
    key: str
    rank: int
    offsets: tuple[int, ...] | None  # None: bytes entry
    data: torch.Tensor | bytes
    order: tuple[int, ...] = ()  # state-dict position of bytes entries (layer-major, like Megatron)


# ----- global tensors ----------------------------------------------------------------------
def fused_qkv(spec: SampleSpec, layer: int) -> torch.Tensor:
    """Megatron's grouped QKV `[(nq+2nkv)·d, h]`: per KV group, its g query heads, then k, then v."""
    nkv, d, h = spec.kv_heads, spec.d, spec.hidden
    g = spec.heads // nkv
    q = spec.tensor(f"layers.{layer}.attn.q").reshape(nkv, g * d, h)
    k = spec.tensor(f"layers.{layer}.attn.k").reshape(nkv, d, h)
    v = spec.tensor(f"layers.{layer}.attn.v").reshape(nkv, d, h)
    return torch.cat([q, k, v], dim=1).reshape((spec.heads + 2 * nkv) * d, h)


def _padded(spec: SampleSpec, name: str, tp: int) -> torch.Tensor:
    """Embedding / output rows padded with zeros to the vocab size Megatron uses at this TP."""
    value = spec.tensor(name)
    pad = spec.padded_vocab(tp) - value.shape[0]
    return torch.cat([value, value.new_zeros(pad, value.shape[1])]) if pad else value


def _layer_values(spec: SampleSpec, i: int, split_swiglu: bool) -> dict[str, tuple[torch.Tensor, str, int | None, bool]]:
    """Per-layer values by key suffix: (tensor, 'dense'|'experts', tp axis, glu)."""
    p = f"layers.{i}."
    out: dict[str, tuple[torch.Tensor, str, int | None, bool]] = {
        "self_attention.linear_qkv.layer_norm_weight": (spec.tensor(p + "input_norm"), "dense", None, False),
        "self_attention.linear_qkv.weight": (fused_qkv(spec, i), "dense", 0, False),
        "self_attention.linear_proj.weight": (spec.tensor(p + "attn.o"), "dense", 1, False),
        "mlp.linear_fc1.layer_norm_weight": (spec.tensor(p + "post_attn_norm"), "dense", None, False),
    }
    if spec.experts:
        experts = range(spec.experts)
        gate = torch.stack([spec.tensor(p + f"experts.{e}.gate") for e in experts])
        up = torch.stack([spec.tensor(p + f"experts.{e}.up") for e in experts])
        down = torch.stack([spec.tensor(p + f"experts.{e}.down") for e in experts])
        out["mlp.router.weight"] = (spec.tensor(p + "router"), "dense", None, False)
        fc1, fc2, kind = "mlp.experts.experts.linear_fc1", "mlp.experts.experts.linear_fc2.weight", "experts"
        dim = 1
    else:
        gate, up, down = (spec.tensor(p + f"mlp.{n}") for n in ("gate", "up", "down"))
        fc1, fc2, kind = "mlp.linear_fc1", "mlp.linear_fc2.weight", "dense"
        dim = 0
    if split_swiglu:
        out[fc1 + ".weight_w"] = (gate, kind, 0, False)
        out[fc1 + ".weight_v"] = (up, kind, 0, False)
    else:
        out[fc1 + ".weight"] = (torch.cat([gate, up], dim=dim), kind, 0, True)
    out[fc2] = (down, kind, 1, False)
    return out


def _params(spec: SampleSpec, tp: int, per_layer_keys: bool, split_swiglu: bool) -> list[_Param]:
    """Every sharded tensor of the model in megatron-core's order."""
    params = [_Param("embedding.word_embeddings.weight", _padded(spec, "embed", tp), tp_axis=0, stage="first")]
    per_layer = [_layer_values(spec, i, split_swiglu) for i in range(spec.layers)]
    if per_layer_keys:
        for i, values in enumerate(per_layer):
            for suffix, (value, kind, tp_axis, glu) in values.items():
                axes = ("experts",) if kind == "experts" else ()
                params.append(_Param(f"decoder.layers.{i}.{suffix}", value, axes, tp_axis, glu, layer=i))
    else:
        for suffix, (_, kind, tp_axis, glu) in per_layer[0].items():
            axes = ("layers", "experts") if kind == "experts" else ("layers",)
            stacked = torch.stack([values[suffix][0] for values in per_layer])
            params.append(_Param(f"decoder.layers.{suffix}", stacked, axes, tp_axis, glu))
    params.append(_Param("decoder.final_layernorm.weight", spec.tensor("final_norm"), stage="last"))
    if not spec.tied:
        params.append(_Param("output_layer.weight", _padded(spec, "lm_head", tp), tp_axis=0, stage="last"))
    return params


def _optimizer_params(spec: SampleSpec, params: list[_Param]) -> list[_Param]:
    """Adam moments shaped and chunked like their params (fp32), as the distributed optimizer saves them."""
    out = []
    for state in ("exp_avg", "exp_avg_sq"):
        for p in params:
            value = spec.tensor(f"optimizer:{state}:{p.key}", tuple(p.value.shape)).float()
            out.append(_Param(f"optimizer.state.{state}.{p.key}", value, p.axes, p.tp_axis, p.glu, p.layer, p.stage))
    return out


def expected_dist_tensors(
    spec: SampleSpec,
    *,
    tp: int = 1,
    per_layer_keys: bool = False,
    split_swiglu: bool = False,
    with_optimizer: bool = False,
) -> dict[str, torch.Tensor]:
    """The global tensors `write_megatron_dist` stores, by DCP key (what a reader must return)."""
    params = _params(spec, tp, per_layer_keys, split_swiglu)
    if with_optimizer:
        params += _optimizer_params(spec, params)
    return {p.key: p.value for p in params}


# ----- chunking ------------------------------------------------------------------------------
def _chunks(param: _Param, lay: _Layout) -> Iterator[_WriteItem]:
    """Chunks of one param as megatron-core writes them: per stacked index, then per TP piece."""
    lead = len(param.axes)
    inner = tuple(param.value.shape[lead:])
    for index in itertools.product(*(range(n) for n in param.value.shape[:lead])):
        named = dict(zip(param.axes, index))
        layer = named.get("layers", param.layer)
        pp_rank, ep_rank = lay.pp_of(layer, param.stage), lay.ep_of(named.get("experts"))
        for tp_rank, start, size, axis in _tp_pieces(param, inner, lay.tp):
            offsets = [*index] + [0] * len(inner)
            sizes = [1] * lead + list(inner)
            if axis is not None:
                offsets[lead + axis], sizes[lead + axis] = start, size
            box = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
            data = param.value[box].clone()
            yield _WriteItem(param.key, lay.rank(tp_rank, pp_rank, ep_rank), tuple(offsets), data)


def _tp_pieces(param: _Param, inner: tuple[int, ...], tp: int) -> list[tuple[int, int, int, int | None]]:
    """(tp rank, start, size, axis) of each piece along the TP axis (2·TP pieces for swiglu)."""
    if param.tp_axis is None:
        return [(0, 0, 0, None)]
    n = inner[param.tp_axis]
    pieces = 2 * tp if param.glu else tp
    if n % pieces:
        raise ValueError(f"{param.key}: dim {param.tp_axis} ({n}) does not split into {pieces} TP chunks")
    size = n // pieces
    return [(j % tp, j * size, size, param.tp_axis) for j in range(pieces)]


def _extra_states(param: _Param, lay: _Layout) -> Iterator[_WriteItem]:
    """Empty TE/local `_extra_state` ShardedObjects next to each linear weight, like the corpus."""
    module = param.key.rsplit(".", 1)[0]
    payload = io.BytesIO()
    torch.save([None], payload)
    data = payload.getvalue()
    rank_in_layer = next(n for n, name in enumerate(_MODULE_ORDER) if module.endswith(name))
    lead = param.value.shape[: len(param.axes)]
    if not lead:
        rank = lay.rank(0, lay.pp_of(param.layer, param.stage))
        yield _WriteItem(f"{module}._extra_state/shard_0_1", rank, None, data, (param.layer or 0, 0, 0, rank_in_layer))
        return
    shape = ".".join(str(n) for n in lead)
    for index in itertools.product(*(range(n) for n in lead)):
        named = dict(zip(param.axes, index))
        layer, expert = named.get("layers", param.layer) or 0, named.get("experts")
        rank = lay.rank(0, lay.pp_of(layer, param.stage), lay.ep_of(expert))
        order = (layer, expert is not None, expert or 0, rank_in_layer)
        yield _WriteItem(f"{module}._extra_state/shard_{'.'.join(map(str, index))}_{shape}", rank, None, data, order)


def _has_extra_state(param: _Param) -> bool:
    """Decoder linears carry one `_extra_state` per module (fc1 once, even when split into _w/_v)."""
    parts = param.key.rsplit(".", 2)
    return len(parts) == 3 and parts[1].startswith("linear_") and parts[2] in ("weight", "weight_w") and "layers." in param.key


# ----- files ---------------------------------------------------------------------------------
def _args(spec: SampleSpec, lay: _Layout, iteration: int) -> argparse.Namespace:
    """Megatron `args` as `pretrain_gpt` would save them for this spec (names from arguments.py)."""
    return argparse.Namespace(
        num_layers=spec.layers, hidden_size=spec.hidden, ffn_hidden_size=spec.ffn,
        num_attention_heads=spec.heads, group_query_attention=spec.kv_heads != spec.heads,
        num_query_groups=spec.kv_heads, kv_channels=spec.d, max_position_embeddings=4096, seq_length=16,
        position_embedding_type="rope", use_rotary_position_embeddings=True, rotary_base=10000,
        rotary_percent=1.0, normalization="RMSNorm", norm_epsilon=1e-5, swiglu=True,
        untie_embeddings_and_output_weights=not spec.tied, add_bias_linear=False, add_qkv_bias=False,
        vocab_size=spec.vocab, padded_vocab_size=spec.padded_vocab(lay.tp),
        make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
        tensor_model_parallel_size=lay.tp, pipeline_model_parallel_size=lay.pp,
        expert_model_parallel_size=lay.ep, data_parallel_size=lay.ep,
        virtual_pipeline_model_parallel_size=None, sequence_parallel=False,
        num_experts=spec.experts or None, moe_router_topk=spec.topk,
        moe_ffn_hidden_size=spec.moe_ffn if spec.experts else None, moe_grouped_gemm=False,
        params_dtype=spec.dtype, fp16=spec.dtype == torch.float16, bf16=spec.dtype == torch.bfloat16,
        transformer_impl="local", use_dist_ckpt=True, ckpt_format="torch_dist", iteration=iteration,
        consumed_train_samples=0, tokenizer_type="NullTokenizer", world_size=lay.world, rank=0,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.02, apply_query_key_layer_scaling=False,
        seed=spec.seed,
    )


def _common_state(spec: SampleSpec, lay: _Layout, iteration: int, singleton: bool) -> dict[str, object]:
    common: dict[str, object] = {
        "args": _args(spec, lay, iteration), "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration,
    }
    if singleton:
        common["content_metadata"] = {"singleton_local_shards": True}
    return common


def _buckets(items: list[_WriteItem]) -> dict[str, list[_WriteItem]]:
    """Per rank, FileSystemWriter's split into files: bytes round-robin, tensors to the lightest file."""
    files: dict[str, list[_WriteItem]] = {}
    for rank in sorted({item.rank for item in items}):
        mine = [item for item in items if item.rank == rank]
        bins: list[list[_WriteItem]] = [[] for _ in range(_FILES_PER_RANK)]
        sizes = [0] * _FILES_PER_RANK
        for n, item in enumerate(sorted((i for i in mine if i.offsets is None), key=lambda i: i.order)):
            bins[n % _FILES_PER_RANK].append(item)
        tensors = sorted((i for i in mine if i.offsets is not None), key=lambda i: -i.data.nbytes)  # type: ignore[union-attr]
        for item in tensors:
            target = sizes.index(min(sizes))
            bins[target].append(item)
            sizes[target] += item.data.nbytes  # type: ignore[union-attr]
        for n, members in enumerate(bins):
            if members:
                files[f"__{rank}_{n}.distcp"] = members
    return files


def _payload(item: _WriteItem) -> bytes:
    if isinstance(item.data, bytes):
        return item.data
    buf = io.BytesIO()
    torch.save(item.data, buf)
    return buf.getvalue()


def _write_dcp(folder: Path, params: list[_Param], items: list[_WriteItem]) -> None:
    """Write the .distcp files and the pickled DCP Metadata indexing them."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    storage: dict[MetadataIndex, _StorageInfo] = {}
    for name, members in _buckets(items).items():
        with open(folder / name, "wb") as fh:
            for item in members:
                offset = fh.tell()
                fh.write(_payload(item))
                index = MetadataIndex(item.key, None if item.offsets is None else torch.Size(item.offsets))
                storage[index] = _StorageInfo(name, offset, fh.tell() - offset)
    chunks: dict[str, list[ChunkStorageMetadata]] = {}
    for item in items:
        if item.offsets is not None:
            sizes = torch.Size(item.data.shape)  # type: ignore[union-attr]
            chunks.setdefault(item.key, []).append(ChunkStorageMetadata(torch.Size(item.offsets), sizes))
    by_key = {p.key: p for p in params}
    state: dict[str, object] = {}
    for item in items:
        if item.key in state:
            continue
        if item.offsets is None:
            state[item.key] = BytesStorageMetadata()
        else:
            value = by_key[item.key].value
            state[item.key] = TensorStorageMetadata(TensorProperties(dtype=value.dtype), torch.Size(value.shape), chunks[item.key])
    meta = Metadata(
        state_dict_metadata=state, planner_data=None, storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=str(folder), save_id="ckptscope-sample", load_id=None, modules=[]),
    )
    if hasattr(meta, "version"):
        meta.version = "1.0.0"
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


def write_megatron_dist(
    spec: SampleSpec,
    out_dir: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    iteration: int = 10,
    per_layer_keys: bool = False,
    split_swiglu: bool = False,
    with_common_pt: bool = True,
    with_metadata_json: bool = True,
    with_optimizer: bool = False,
) -> Path:
    """Write a Megatron root (`latest_checkpointed_iteration.txt`, `iter_XXXXXXX/`) and return it.

    `with_common_pt=False` stores the common state inside the .distcp files as the
    `common_state/shard_0_1` ShardedObject (current Megatron); `with_metadata_json=False`
    leaves out the marker Megatron writes last (an interrupted async save).
    """
    if spec.layers % pp:
        raise ValueError(f"{spec.layers} layers do not split into {pp} pipeline stages")
    if ep > 1 and (not spec.experts or spec.experts % ep):
        raise ValueError(f"expert parallel {ep} needs a MoE spec whose experts divide by it")
    lay = _Layout(tp, pp, ep, spec.layers, spec.experts)
    root = Path(out_dir)
    folder = root / f"iter_{iteration:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    model_params = _params(spec, tp, per_layer_keys, split_swiglu)
    params = model_params + (_optimizer_params(spec, model_params) if with_optimizer else [])
    items: list[_WriteItem] = []
    common = _common_state(spec, lay, iteration, per_layer_keys or split_swiglu)
    if not with_common_pt:
        payload = io.BytesIO()
        torch.save([common], payload)
        items.append(_WriteItem("common_state/shard_0_1", 0, None, payload.getvalue(), (-1,)))
    for n, param in enumerate(params):
        items.extend(_chunks(param, lay))
        if n < len(model_params) and _has_extra_state(param):
            items.extend(_extra_states(param, lay))
    _write_dcp(folder, params, items)
    if with_common_pt:
        torch.save(common, folder / "common.pt")
    if with_metadata_json:
        marker: dict[str, object] = {"sharded_backend": "torch_dist", "sharded_backend_version": 1}
        if with_common_pt:
            marker.update(common_backend="torch", common_backend_version=1)
        (folder / "metadata.json").write_text(json.dumps(marker))
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return root
