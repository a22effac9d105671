"""Write synthetic DeepSpeed checkpoints: a Megatron-DeepSpeed pipeline and an HF ZeRO-1/2 run.

`write_deepspeed_pipeline` lays out a `GPTModelPipe` the way Megatron-DeepSpeed saves it
(reference 2.1-2.3): one `layer_LL-model_TT-model_states.pt` per pipeline spec entry that is
a module and per TP rank, with `LL` following the spec list of either fork (bigscience has a
transpose lambda before the blocks and an `undo` fn before the final norm), plus engine
`mp_rank_XX_model_states.pt` files (`module=None`, XX = pp * tp_size + tp), `latest` and
Megatron's `latest_checkpointed_iteration.txt`.

`write_deepspeed_zero` mirrors the corpus item `deepspeed/zero2_bf16` (DeepSpeed 0.19.8): the
HF-named module in `mp_rank_00_model_states.pt` with `param_shapes`, and per data-parallel
rank an optimizer file holding its slice of the flat fp32 master weights
(`single_partition_of_fp32_groups`, padding removed) and `param_slice_mappings`.
DeepSpeed's own classes (`fragment_address`, `LossScaler`, `ZeroStageEnum`) are written as
stubs that pickle under the same names, so readers see what a real file holds.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .nxd import pickled_as, stub_class
from .spec import SampleSpec

DS_VERSION = "0.19.8"
PIPELINE_STYLES = ("microsoft", "bigscience")


# ----- DeepSpeed classes, as stubs pickled under their real names ----------------------------
def _set_state(self: Any, **state: Any) -> None:
    self.__dict__.update(state)


def _enum_reduce(self: Any) -> tuple[Any, tuple[int]]:
    return type(self), (self.value,)


FragmentAddress = stub_class("deepspeed.utils.tensor_fragment", "fragment_address", {"__init__": _set_state})
LossScaler = stub_class("deepspeed.runtime.fp16.loss_scaler", "LossScaler", {"__init__": _set_state})
ZeroStageEnum = stub_class(
    "deepspeed.runtime.zero.config", "ZeroStageEnum",
    {"__init__": lambda self, value: setattr(self, "value", value), "__reduce__": _enum_reduce},
)
DS_STUBS = (FragmentAddress, LossScaler, ZeroStageEnum)


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().clone()


def _chunk(tensor: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    size = tensor.shape[dim]
    if size % parts:
        raise ValueError(f"dimension {dim} of size {size} is not divisible by {parts}")
    return tensor.narrow(dim, index * (size // parts), size // parts)


def _tag(out_dir: Path, step: int) -> Path:
    tag = out_dir / f"global_step{step}"
    tag.mkdir(parents=True, exist_ok=True)
    return tag


# ----- pipeline (Megatron-DeepSpeed GPTModelPipe) ---------------------------------------------
@dataclass(frozen=True)
class PipeIndexMap:
    """Where GPTModelPipe's modules sit in its spec list (= layer file numbers)."""

    embed: int
    first_block: int
    final_norm_gap: int  # spec entries between the last block and the final norm
    head_key: str

    def blocks(self, layers: int) -> list[int]:
        return list(range(self.first_block, self.first_block + layers))

    def final_norm(self, layers: int) -> int:
        return self.first_block + layers + self.final_norm_gap

    def head(self, layers: int) -> int:
        return self.final_norm(layers) + 1


PIPE_INDEX_MAPS: dict[str, PipeIndexMap] = {
    # 0 _to_float16, 1 embedding, 2.. blocks, norm, LMHeadPipe (own file when untied)
    "microsoft": PipeIndexMap(embed=1, first_block=2, final_norm_gap=0, head_key="lm_head.weight"),
    # 0 _to_float16, 1 embedding, 2 transpose, 3.. blocks, undo fn, norm, (tied logits)
    "bigscience": PipeIndexMap(embed=1, first_block=3, final_norm_gap=1, head_key="final_linear.weight"),
}


def megatron_qkv(spec: SampleSpec, layer: int, tp: int, rank: int) -> torch.Tensor:
    """Megatron(-DeepSpeed) fused QKV of one TP shard: per KV group `[q x group, k, v]` heads."""
    if spec.kv_heads % tp:
        raise ValueError(f"kv_heads={spec.kv_heads} not divisible by tp={tp}")
    d, group = spec.d, spec.heads // spec.kv_heads
    p = f"layers.{layer}.attn."
    q, k, v = (spec.tensor(p + w).view(-1, d, spec.hidden) for w in ("q", "k", "v"))
    per = spec.kv_heads // tp
    blocks = []
    for j in range(rank * per, (rank + 1) * per):
        blocks += [q[j * group : (j + 1) * group], k[j : j + 1], v[j : j + 1]]
    return torch.cat(blocks).reshape(-1, spec.hidden)


def padded(spec: SampleSpec, name: str, tp: int) -> torch.Tensor:
    """Megatron pads vocab rows with zeros up to make_vocab_size_divisible_by × TP."""
    full = spec.tensor(name)
    pad = spec.padded_vocab(tp) - full.shape[0]
    return torch.cat([full, full.new_zeros(pad, full.shape[1])]) if pad else full


def block_state(spec: SampleSpec, layer: int, tp: int, rank: int) -> dict[str, torch.Tensor]:
    p = f"layers.{layer}."
    gate_up = torch.cat([_chunk(spec.tensor(p + "mlp.gate"), 0, tp, rank), _chunk(spec.tensor(p + "mlp.up"), 0, tp, rank)])
    return {
        "input_layernorm.weight": spec.tensor(p + "input_norm"),
        "self_attention.query_key_value.weight": megatron_qkv(spec, layer, tp, rank),
        "self_attention.dense.weight": _chunk(spec.tensor(p + "attn.o"), 1, tp, rank),
        "post_attention_layernorm.weight": spec.tensor(p + "post_attn_norm"),
        "mlp.dense_h_to_4h.weight": gate_up,
        "mlp.dense_4h_to_h.weight": _chunk(spec.tensor(p + "mlp.down"), 1, tp, rank),
    }


def pipeline_layer_files(spec: SampleSpec, tp: int, style: str) -> dict[int, Any]:
    """Layer file number -> function(tp_rank) giving that file's state_dict."""
    idx = PIPE_INDEX_MAPS[style]
    files: dict[int, Any] = {
        idx.embed: lambda r: {"word_embeddings.weight": _chunk(padded(spec, "embed", tp), 0, tp, r)},
    }
    for layer, number in enumerate(idx.blocks(spec.layers)):
        files[number] = lambda r, layer=layer: block_state(spec, layer, tp, r)
    files[idx.final_norm(spec.layers)] = lambda r: {"weight": spec.tensor("final_norm")}
    if not spec.tied:
        files[idx.head(spec.layers)] = lambda r: {idx.head_key: _chunk(padded(spec, "lm_head", tp), 0, tp, r)}
    return files


def megatron_args(spec: SampleSpec, tp: int, pp: int, step: int) -> argparse.Namespace:
    return argparse.Namespace(
        num_layers=spec.layers, hidden_size=spec.hidden, ffn_hidden_size=spec.ffn,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, kv_channels=spec.d,
        seq_length=128, max_position_embeddings=128, padded_vocab_size=spec.padded_vocab(tp),
        make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by, swiglu=True,
        normalization="rmsnorm", untie_embeddings_and_output_weights=not spec.tied,
        add_bias_linear=False, position_embedding_type="rope",
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, iteration=step,
        params_dtype=spec.dtype, bf16=spec.dtype == torch.bfloat16, fp16=spec.dtype == torch.float16,
        deepspeed=True,
    )


def engine_state(*, step: int, dp: int, mp: int, tp: int, pp: int, ds_config: dict[str, Any]) -> dict[str, Any]:
    """Keys DeepSpeed 0.19.8's `_save_checkpoint` writes around `module` (order as on disk)."""
    return {
        "module": None, "buffer_names": [], "optimizer": None, "param_shapes": None,
        "frozen_param_shapes": None, "shared_params": None, "frozen_param_fragments": None,
        "lr_scheduler": None, "data_sampler": None, "random_ltd": None, "skipped_steps": 0,
        "global_steps": step, "global_samples": step * dp, "dp_world_size": dp, "mp_world_size": mp,
        "checkpoint_parallel_dimensions": {"pp_degree": pp, "tp_degree": tp},
        "ds_config": ds_config, "ds_version": DS_VERSION,
    }


def write_deepspeed_pipeline(
    spec: SampleSpec, out_dir: str | Path, *, tp: int = 1, pp: int = 2, style: str = "microsoft", step: int = 2,
    model_axis: bool = True,
) -> Path:
    """Write a Megatron-DeepSpeed pipeline checkpoint root; returns the root. Without a
    model-parallel axis in the topology (`model_axis=False`, TP 1), DeepSpeed's
    `PipelineModule.ckpt_layer_path` names layer files `layer_LL-model_states.pt`."""
    if not model_axis and tp != 1:
        raise ValueError("a topology without a model axis has TP 1")
    if style not in PIPE_INDEX_MAPS:
        raise ValueError(f"style must be one of {PIPELINE_STYLES}, got {style!r}")
    if spec.experts:
        raise ValueError("MoE pipeline checkpoints are not modelled")
    root = Path(out_dir)
    tag = _tag(root, step)
    for number, make in sorted(pipeline_layer_files(spec, tp, style).items()):
        for rank in range(tp):
            state = {k: _owned(v) for k, v in make(rank).items()}
            rank_repr = f"-model_{rank:02d}" if model_axis else ""
            torch.save(state, tag / f"layer_{number:02d}{rank_repr}-model_states.pt")
    _pipeline_engine_files(tag, megatron_args(spec, tp, pp, step), tp=tp, pp=pp, step=step, bf16=spec.dtype == torch.bfloat16)
    return root


def _pipeline_engine_files(tag: Path, args: argparse.Namespace, *, tp: int, pp: int, step: int, bf16: bool) -> None:
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 0}, "bf16": {"enabled": bf16}}
    for p in range(pp):
        for t in range(tp):
            state = engine_state(step=step, dp=1, mp=tp * pp, tp=tp, pp=pp, ds_config=ds_config)
            state.update(args=args, checkpoint_version=3.0, iteration=step, tokens=step * 128)
            torch.save(state, tag / f"mp_rank_{p * tp + t:02d}_model_states.pt")
    root = tag.parent
    (root / "latest").write_text(tag.name)
    (root / "latest_checkpointed_iteration.txt").write_text(str(step))


def repack_megatron_as_pipeline(
    megatron_root: str | Path, out_dir: str | Path, *, pp: int = 2, style: str = "bigscience", step: int = 2
) -> Path:
    """Re-pack a Megatron `torch` checkpoint (Megatron-Core local names, PP=1, any TP) into
    Megatron-DeepSpeed pipeline files; returns the root.

    Any family the Megatron writer handles (GPT-2 / BLOOM blocks: LayerNorm with bias, plain GELU
    MLP, learned positions, embedding norm) comes out with real Megatron-DeepSpeed per-layer
    names. The names come from the Megatron-DeepSpeed rows of `rules/deepspeed.py` (each keeps its
    Megatron-Core name), so the tensors are the Megatron writer's TP shards, bit for bit. `pp` only
    sets the engine files (layer files carry the TP rank alone) and the `args`.
    """
    from ..rules import deepspeed as ds

    if style not in PIPE_INDEX_MAPS:
        raise ValueError(f"style must be one of {PIPELINE_STYLES}, got {style!r}")
    src = Path(megatron_root)
    iter_dir = max(src.glob("iter_*"))
    rank_dirs = sorted(iter_dir.glob("mp_rank_*"))
    if any(len(d.name.split("_")) != 3 for d in rank_dirs):
        raise ValueError("re-packing needs a Megatron checkpoint with PP=1 and no expert parallelism")
    states = [torch.load(d / "model_optim_rng.pt", weights_only=False) for d in rank_dirs]
    tp, args = len(states), argparse.Namespace(**vars(states[0]["args"]))
    idx = PIPE_INDEX_MAPS[style]
    layers = int(args.num_layers)

    def pick(model: dict[str, Any], rows: tuple[Any, ...], prefix: str = "") -> dict[str, torch.Tensor]:
        return {row.name: _owned(model[prefix + row.variants["mcore"]])
                for row in rows if prefix + row.variants["mcore"] in model}

    root = Path(out_dir)
    tag = _tag(root, step)
    for rank, state in enumerate(states):
        model = state["model"]
        files = {idx.embed: pick(model, ds.EMBED_ROWS["megatron"]),
                 idx.final_norm(layers): pick(model, ds.FINAL_NORM_ROWS["megatron"])}
        for layer, number in enumerate(idx.blocks(layers)):
            files[number] = pick(model, ds.BLOCK_ROWS["megatron"], f"decoder.layers.{layer}.")
        if "output_layer.weight" in model:  # untied head: LMHeadPipe's own file
            files[idx.head(layers)] = {idx.head_key: _owned(model["output_layer.weight"])}
        for number, tensors in sorted(files.items()):
            torch.save(tensors, tag / f"layer_{number:02d}-model_{rank:02d}-model_states.pt")
    args.pipeline_model_parallel_size, args.iteration, args.deepspeed = pp, step, True
    dtype = next(iter(states[0]["model"].values())).dtype
    _pipeline_engine_files(tag, args, tp=tp, pp=pp, step=step, bf16=dtype == torch.bfloat16)
    return root


# ----- ZeRO-1/2 (HF module) -------------------------------------------------------------------
HF_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.weight", "attn.q"),
    ("self_attn.k_proj.weight", "attn.k"),
    ("self_attn.v_proj.weight", "attn.v"),
    ("self_attn.o_proj.weight", "attn.o"),
    ("mlp.gate_proj.weight", "mlp.gate"),
    ("mlp.up_proj.weight", "mlp.up"),
    ("mlp.down_proj.weight", "mlp.down"),
    ("input_layernorm.weight", "input_norm"),
    ("post_attention_layernorm.weight", "post_attn_norm"),
)


def hf_names(spec: SampleSpec) -> dict[str, str]:
    """HF LlamaForCausalLM parameter name -> canonical name, in `named_parameters()` order."""
    if spec.experts:
        raise ValueError("the ZeRO sample models a dense Llama; MoE is not modelled")
    out = {"model.embed_tokens.weight": "embed"}
    for i in range(spec.layers):
        out.update({f"model.layers.{i}.{hf}": f"layers.{i}.{canon}" for hf, canon in HF_LAYER_NAMES})
    out["model.norm.weight"] = "final_norm"
    if not spec.tied:
        out["lm_head.weight"] = "lm_head"
    return out


@dataclass(frozen=True)
class Partition:
    """One data-parallel rank's slice of the flat fp32 group."""

    flat: torch.Tensor  # without padding
    padded_numel: int
    padding: int
    mappings: OrderedDict[str, tuple[int, int]]  # name -> (start in partition, numel)


def zero_partitions(params: dict[str, torch.Tensor], dp: int, alignment: int = 2) -> list[Partition]:
    """Stage 1/2: concatenate params in order, pad to `alignment * dp`, cut into dp equal slices."""
    flat = torch.cat([t.reshape(-1).float() for t in params.values()])
    multiple = alignment * dp
    total = -(-flat.numel() // multiple) * multiple
    size = total // dp
    offsets, at = {}, 0
    for name, t in params.items():
        offsets[name] = (at, t.numel())
        at += t.numel()
    parts = []
    for rank in range(dp):
        lo, hi = rank * size, (rank + 1) * size
        mappings: OrderedDict[str, tuple[int, int]] = OrderedDict()
        for name, (start, numel) in offsets.items():
            a, b = max(start, lo), min(start + numel, hi)
            if a < b:
                mappings[name] = (a - lo, b - a)
        real = flat[lo:min(hi, flat.numel())]
        parts.append(Partition(real.clone(), size, size - real.numel(), mappings))
    return parts


def optimizer_state(part: Partition, *, stage: int, dp: int, step: int, params: int) -> dict[str, Any]:
    """`optimizer_state_dict` of a ZeRO-1/2 rank as DeepSpeed 0.19.8 writes it."""
    moments = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(part.padded_numel),
               "exp_avg_sq": torch.zeros(part.padded_numel)}
    group = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
             "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
             "fused": None, "decoupled_weight_decay": True, "params": [0]}
    return {
        "loss_scaler": LossScaler(cur_scale=1.0, dynamic=False),
        "dynamic_loss_scale": False,
        "overflow": False,
        "clip_grad": 1.0,
        "base_optimizer_state": {"state": {0: moments}, "param_groups": [group]},
        "single_partition_of_fp32_groups": [part.flat],
        "zero_stage": ZeroStageEnum(stage),
        "group_paddings": [part.padding],
        "param_alignment_paddings": [[0] * params],  # one entry per param of the group
        "partition_count": [dp],
        "ds_version": DS_VERSION,
        "param_slice_mappings": [
            OrderedDict((name, FragmentAddress(numel=numel, start=start)) for name, (start, numel) in part.mappings.items())
        ],
    }


def write_deepspeed_zero(
    spec: SampleSpec, out_dir: str | Path, *, dp: int = 2, stage: int = 2, bf16: bool = True, step: int = 2
) -> Path:
    """Write an HF-module ZeRO-1/2 DeepSpeed checkpoint root; returns the root.

    The module holds the weights in bf16 (or the spec dtype); the optimizer partitions hold
    the same `spec.tensor` values in fp32, so rebuilding from them gives them back exactly.
    """
    if stage not in (1, 2):
        raise ValueError("only ZeRO stages 1 and 2 are modelled (stage 3 partitions every param)")
    root = Path(out_dir)
    tag = _tag(root, step)
    names = hf_names(spec)
    master = {name: spec.tensor(canon).float() for name, canon in names.items()}
    dtype = torch.bfloat16 if bf16 else spec.dtype
    ds_config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": stage}, "bf16": {"enabled": bf16}}
    state = engine_state(step=step, dp=dp, mp=1, tp=1, pp=1, ds_config=ds_config)
    # ZeRO engines fill these with empty containers (None for pipeline engines), as in the corpus
    state.update(frozen_param_shapes=OrderedDict(), shared_params={}, frozen_param_fragments=OrderedDict())
    state["module"] = OrderedDict((name, _owned(t.to(dtype))) for name, t in master.items())
    state["param_shapes"] = [OrderedDict((name, t.shape) for name, t in master.items())]
    torch.save(state, tag / "mp_rank_00_model_states.pt")
    prefix = "bf16_" if bf16 else ""
    with pickled_as(*DS_STUBS):
        for rank, part in enumerate(zero_partitions(master, dp)):
            optim = {"optimizer_state_dict": optimizer_state(part, stage=stage, dp=dp, step=step, params=len(master)),
                     "ds_config": ds_config, "ds_version": DS_VERSION}
            torch.save(optim, tag / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (root / "latest").write_text(tag.name)
    return root
