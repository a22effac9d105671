"""Write synthetic NxD (Neuron) checkpoints exactly as NxD's converter/trainer lay them out.

`<out>/<tag>/{checkpoint, model/dp_rank_00_[ep_rank_EE_]tp_rank_TT_pp_rank_PP.pt, done}`:
the `checkpoint` marker first and `done` last, as NxD does, so a torn save is recognisable.
Partitioning follows NxD's `CheckpointConverterBase` (reference 1.3-1.5): GQA QKV as
`qkv_proj.weight_q/k/v` (or `weight_qkv` = per-rank `[q_r; k_r; v_r]`), KV heads tiled
`kv_size_multiplier` times before the contiguous TP split and Q heads (and `o_proj` columns)
reordered so every rank's Q heads pair with the KV head it holds; `gate_up_proj` per rank
`[gate_r; up_r]`; embed/lm_head split on dim 0; o/down on dim 1; norms replicated. Layers are
spread evenly over PP ranks, remainder to the last stages, keeping global layer numbers.

MoE (Mixtral-like spec) uses NxD's fused expert layers `[E, in, out]`:
`mlp.expert_mlps.mlp_op.gate_up_proj.weight` `[E_local, hidden, 2*ffn/tp]` (per rank
`[gate_r | up_r]` on dim 2) and `mlp.expert_mlps.mlp_op.down_proj.weight` `[E_local, ffn/tp, hidden]`,
router `mlp.router.linear_router.weight`; experts split over EP ranks on dim 0 and every
non-expert tensor only in the ep_rank_00 files. (Orientation inferred from the converter's
partition dims 2/1; not checked against a real Trainium checkpoint.)

xser is written without torch_xla: tensors go to `<file>.pt.tensors/tensor_<tid>.pt` and the
structure holds objects that pickle as `torch_xla.utils.serialization.TensorReference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..shards import HeadMap
from ..rules.nxd import MEGATRON_RENAMES, layer_stages, megatron_name, shard_file_name
from ..writers.xser import TensorReference, pickled_as, save_xser, stub_class
from .spec import SampleSpec

STYLES = ("hf", "megatron")
__all__ = ["MEGATRON_RENAMES", "TensorReference", "layer_stages", "megatron_name", "pickled_as", "save_xser",
           "shard_file_name", "stub_class", "write_nxd"]


@dataclass(frozen=True)
class NxdLayout:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    style: str = "hf"
    fuse_qkv: bool = False
    kv_size_multiplier: int = 1


@dataclass(frozen=True)
class Rank:
    tp: int
    pp: int
    ep: int


def _chunk(tensor: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    size = tensor.shape[dim]
    if size % parts:
        raise ValueError(f"dimension {dim} of size {size} is not divisible by {parts}")
    step = size // parts
    return tensor.narrow(dim, index * step, step)


def qkv_heads_for_rank(spec: SampleSpec, tp: int, kv_mult: int, rank: int) -> tuple[list[int], list[int]]:
    """(Q heads, KV heads) held by TP rank `rank` after NxD's KV tiling and Q reordering."""
    heads = HeadMap.build(spec.heads, spec.kv_heads, tp, kv_mult)
    return list(heads.q[rank]), list(heads.kv[rank])


def _head_rows(tensor: torch.Tensor, heads: list[int], d: int, dim: int = 0) -> torch.Tensor:
    return torch.cat([tensor.narrow(dim, h * d, d) for h in heads], dim=dim)


# ----- per-rank state -------------------------------------------------------------------------
Entry = tuple[torch.Tensor, bool]  # (tensor, expert_model_parallel)


def _attention(spec: SampleSpec, lay: NxdLayout, r: Rank, i: int) -> dict[str, Entry]:
    q_heads, kv_heads = qkv_heads_for_rank(spec, lay.tp, lay.kv_size_multiplier, r.tp)
    p, d = f"layers.{i}.attn.", spec.d
    q = _head_rows(spec.tensor(p + "q"), q_heads, d)
    k = _head_rows(spec.tensor(p + "k"), kv_heads, d)
    v = _head_rows(spec.tensor(p + "v"), kv_heads, d)
    o = _head_rows(spec.tensor(p + "o"), q_heads, d, dim=1)
    pre = f"model.layers.{i}.self_attn."
    if lay.style == "megatron":
        if spec.heads == spec.kv_heads:
            qkv = {pre + "query_key_value.weight": torch.cat([q, k, v])}
        else:
            qkv = {pre + "query.weight": q, pre + "key_value.weight": torch.cat([k, v])}
    elif lay.fuse_qkv:
        qkv = {pre + "qkv_proj.weight_qkv": torch.cat([q, k, v])}
    else:
        qkv = {pre + "qkv_proj.weight_q": q, pre + "qkv_proj.weight_k": k, pre + "qkv_proj.weight_v": v}
    return {name: (t, False) for name, t in {**qkv, pre + "o_proj.weight": o}.items()}


def _dense_mlp(spec: SampleSpec, lay: NxdLayout, r: Rank, i: int) -> dict[str, Entry]:
    p, pre = f"layers.{i}.mlp.", f"model.layers.{i}.mlp."
    gate_up = torch.cat([_chunk(spec.tensor(p + "gate"), 0, lay.tp, r.tp), _chunk(spec.tensor(p + "up"), 0, lay.tp, r.tp)])
    return {
        pre + "gate_up_proj.weight": (gate_up, False),
        pre + "down_proj.weight": (_chunk(spec.tensor(p + "down"), 1, lay.tp, r.tp), False),
    }


def _moe_mlp(spec: SampleSpec, lay: NxdLayout, r: Rank, i: int) -> dict[str, Entry]:
    if spec.experts % lay.ep:
        raise ValueError(f"experts={spec.experts} not divisible by ep={lay.ep}")
    per = spec.experts // lay.ep
    local = range(r.ep * per, (r.ep + 1) * per)
    p, pre = f"layers.{i}.", f"model.layers.{i}.mlp."
    gate_up = torch.stack([
        torch.cat([_chunk(spec.tensor(f"{p}experts.{e}.{w}").t(), 1, lay.tp, r.tp) for w in ("gate", "up")], dim=1)
        for e in local
    ])
    down = torch.stack([_chunk(spec.tensor(f"{p}experts.{e}.down").t(), 0, lay.tp, r.tp) for e in local])
    out: dict[str, Entry] = {}
    if r.ep == 0:
        out[pre + "router.linear_router.weight"] = (spec.tensor(p + "router"), False)
    out[pre + "expert_mlps.mlp_op.gate_up_proj.weight"] = (gate_up, True)
    out[pre + "expert_mlps.mlp_op.down_proj.weight"] = (down, True)
    return out


def _layer(spec: SampleSpec, lay: NxdLayout, r: Rank, i: int) -> dict[str, Entry]:
    pre = f"model.layers.{i}."
    out: dict[str, Entry] = {}
    if r.ep == 0:
        out[pre + "input_layernorm.weight"] = (spec.tensor(f"layers.{i}.input_norm"), False)
        out.update(_attention(spec, lay, r, i))
        out[pre + "post_attention_layernorm.weight"] = (spec.tensor(f"layers.{i}.post_attn_norm"), False)
    out.update(_moe_mlp(spec, lay, r, i) if spec.experts else _dense_mlp(spec, lay, r, i))
    return out


def rank_state(spec: SampleSpec, lay: NxdLayout, r: Rank) -> dict[str, Entry]:
    """Everything one (tp, pp, ep) model file holds, in HF module order, with NxD names."""
    stages = layer_stages(spec.layers, lay.pp)
    out: dict[str, Entry] = {}
    shared = r.ep == 0
    if r.pp == 0 and shared:
        out["model.embed_tokens.weight"] = (_chunk(spec.tensor("embed"), 0, lay.tp, r.tp), False)
    for i, stage in enumerate(stages):
        if stage == r.pp:
            out.update(_layer(spec, lay, r, i))
    if r.pp == lay.pp - 1 and shared:
        out["model.norm.weight"] = (spec.tensor("final_norm"), False)
        if not spec.tied:
            out["lm_head.weight"] = (_chunk(spec.tensor("lm_head"), 0, lay.tp, r.tp), False)
    if lay.style == "megatron":
        out = {megatron_name(name): entry for name, entry in out.items()}
    return out


# ----- saving ---------------------------------------------------------------------------------
def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A compact copy, so torch.save does not write the whole storage behind a view."""
    return tensor.contiguous().clone()


def save_plain(state: dict[str, Entry], path: Path) -> None:
    torch.save({name: _owned(t) for name, (t, _) in state.items()}, path)


def write_nxd(
    spec: SampleSpec,
    out_dir: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    tag: str = "step_10",
    xser: bool = False,
    style: str = "hf",
    fuse_qkv: bool = False,
    kv_size_multiplier: int = 1,
    complete: bool = True,
    with_info: bool = True,
) -> Path:
    """Write one NxD tag under `out_dir` and return the tag folder."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style == "megatron" and spec.experts:
        raise ValueError("megatron-style names for MoE models are not modelled; use style='hf'")
    if ep > 1 and not spec.experts:
        raise ValueError("ep > 1 needs an MoE spec (experts > 0)")
    lay = NxdLayout(tp, pp, ep, style, fuse_qkv, kv_size_multiplier)
    tag_dir = Path(out_dir) / tag
    model_dir = tag_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (tag_dir / "checkpoint").write_text("1")
    for e in range(ep):
        for t in range(tp):
            for p in range(pp):
                state = rank_state(spec, lay, Rank(t, p, e))
                path = model_dir / shard_file_name(t, p, e if ep > 1 else None)
                if xser:
                    save_xser(state, path, with_info=with_info)
                else:
                    save_plain(state, path)
    if complete:
        (tag_dir / "done").write_text("1")
    return tag_dir
