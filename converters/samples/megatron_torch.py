"""Write a synthetic Megatron-LM `torch`-format checkpoint root from a SampleSpec.

Layout (reference §1.1-1.4): `latest_checkpointed_iteration.txt`, `iter_XXXXXXX/` and
`mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt` holding `args` (argparse.Namespace with Megatron's
argument names), `checkpoint_version` 3.0, `iteration`, and `model` (or `model0..` under virtual
pipeline) in Megatron-Core names for the TE or local layer spec, or the legacy nested
`language_model` dicts. Weights come from `spec.tensor(...)`, sharded with the real layouts.
"""

from __future__ import annotations

import argparse
import io
from collections import OrderedDict
from pathlib import Path

import torch

from ckptscope.inspectors.megatron_common import rank_folder_name

from ..ops import fuse_qkv, pack_swiglu, pad_rows, split
from .spec import SampleSpec


def megatron_args(spec: SampleSpec, *, tp: int, pp: int, ep: int, vpp: int, iteration: int, te: bool) -> argparse.Namespace:
    """The Namespace Megatron pickles, restricted to fields that matter (with Megatron's names)."""
    return argparse.Namespace(
        num_layers=spec.layers,
        hidden_size=spec.hidden,
        ffn_hidden_size=spec.ffn,
        num_attention_heads=spec.heads,
        group_query_attention=spec.kv_heads != spec.heads,
        num_query_groups=spec.kv_heads,
        kv_channels=spec.d,
        seq_length=128,
        max_position_embeddings=4096,
        padded_vocab_size=spec.padded_vocab(tp),
        vocab_size=spec.vocab,
        make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
        normalization="RMSNorm",
        norm_epsilon=1e-5,
        swiglu=True,
        apply_layernorm_1p=False,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=False,
        untie_embeddings_and_output_weights=not spec.tied,
        position_embedding_type="rope",
        rotary_base=10000,
        rotary_percent=1.0,
        rotary_interleaved=False,
        use_rope_scaling=False,
        num_experts=spec.experts or None,
        moe_router_topk=spec.topk,
        moe_ffn_hidden_size=spec.moe_ffn if spec.experts else None,
        moe_grouped_gemm=False,
        params_dtype=spec.dtype,
        bf16=spec.dtype == torch.bfloat16,
        fp16=spec.dtype == torch.float16,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
        transformer_impl="transformer_engine" if te else "local",
        tokenizer_type="NullTokenizer",
        ckpt_format="torch",
        iteration=iteration,
        consumed_train_samples=0,
    )


def _layer_tensors(spec: SampleSpec, i: int, tp: int, ep: int, tp_rank: int, ep_rank: int, te: bool) -> dict[str, torch.Tensor]:
    """One layer's tensors for rank (tp_rank, ep_rank), keys relative to `layers.{local}.`."""
    c = f"layers.{i}."
    out: dict[str, torch.Tensor] = {}
    qkv = fuse_qkv(spec.tensor(c + "attn.q"), spec.tensor(c + "attn.k"), spec.tensor(c + "attn.v"), spec.heads, spec.kv_heads)
    in_norm = spec.tensor(c + "input_norm")
    out["self_attention.linear_qkv.layer_norm_weight" if te else "input_layernorm.weight"] = in_norm
    out["self_attention.linear_qkv.weight"] = split(qkv, 0, tp)[tp_rank]
    out["self_attention.linear_proj.weight"] = split(spec.tensor(c + "attn.o"), 1, tp)[tp_rank]
    if te:
        out["self_attention.linear_qkv._extra_state"] = io.BytesIO()
        out["self_attention.linear_proj._extra_state"] = io.BytesIO()
    post_norm = spec.tensor(c + "post_attn_norm")
    if spec.experts:
        out["pre_mlp_layernorm.weight"] = post_norm
        out["mlp.router.weight"] = spec.tensor(c + "router")
        local = spec.experts // ep
        for j in range(local):
            e = ep_rank * local + j
            gate, up, down = (spec.tensor(c + f"experts.{e}.{w}") for w in ("gate", "up", "down"))
            out[f"mlp.experts.local_experts.{j}.linear_fc1.weight"] = pack_swiglu(gate, up, tp)[tp_rank]
            out[f"mlp.experts.local_experts.{j}.linear_fc2.weight"] = split(down, 1, tp)[tp_rank]
    else:
        out["mlp.linear_fc1.layer_norm_weight" if te else "pre_mlp_layernorm.weight"] = post_norm
        out["mlp.linear_fc1.weight"] = pack_swiglu(spec.tensor(c + "mlp.gate"), spec.tensor(c + "mlp.up"), tp)[tp_rank]
        out["mlp.linear_fc2.weight"] = split(spec.tensor(c + "mlp.down"), 1, tp)[tp_rank]
        if te:
            out["mlp.linear_fc1._extra_state"] = io.BytesIO()
            out["mlp.linear_fc2._extra_state"] = io.BytesIO()
    return out


def _stage_layers(spec: SampleSpec, pp: int, vpp: int, pp_rank: int, v: int) -> range:
    per = spec.layers // (pp * vpp)
    start = (v * pp + pp_rank) * per
    return range(start, start + per)


def _model_chunk(spec: SampleSpec, *, tp: int, pp: int, ep: int, vpp: int, tp_rank: int, pp_rank: int, ep_rank: int, v: int, te: bool) -> OrderedDict:
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    first = pp_rank == 0 and v == 0
    last = pp_rank == pp - 1 and v == vpp - 1
    padded = spec.padded_vocab(tp)
    embed = pad_rows(spec.tensor("embed"), padded)
    if first:
        sd["embedding.word_embeddings.weight"] = split(embed, 0, tp)[tp_rank]
    for local, i in enumerate(_stage_layers(spec, pp, vpp, pp_rank, v)):
        for key, value in _layer_tensors(spec, i, tp, ep, tp_rank, ep_rank, te).items():
            sd[f"decoder.layers.{local}.{key}"] = value
    if last:
        sd["decoder.final_layernorm.weight"] = spec.tensor("final_norm")
        if not spec.tied:
            sd["output_layer.weight"] = split(pad_rows(spec.tensor("lm_head"), padded), 0, tp)[tp_rank]
        elif pp > 1:  # tied + PP: the last stage keeps its own synced copy of the embedding
            sd["output_layer.weight"] = split(embed, 0, tp)[tp_rank]
    return sd


# Megatron-Core local-spec name -> legacy GPT name inside `language_model.encoder` (reference §3.1)
LEGACY_LAYER_NAMES = {
    "input_layernorm.weight": "input_norm.weight",
    "self_attention.linear_qkv.weight": "self_attention.query_key_value.weight",
    "self_attention.linear_proj.weight": "self_attention.dense.weight",
    "pre_mlp_layernorm.weight": "post_attention_norm.weight",
    "mlp.linear_fc1.weight": "mlp.dense_h_to_4h.weight",
    "mlp.linear_fc2.weight": "mlp.dense_4h_to_h.weight",
}


def to_legacy(sd: OrderedDict, tied_head: bool) -> dict:
    """Nest a local-spec chunk the way legacy (non-mcore) GPT models saved it."""
    lm: dict = {}
    encoder: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        if key == "embedding.word_embeddings.weight":
            lm["embedding"] = {"word_embeddings": {"weight": value}}
        elif key.startswith("decoder.layers."):
            _, _, n, rest = key.split(".", 3)
            encoder[f"layers.{n}.{LEGACY_LAYER_NAMES[rest]}"] = value
        elif key == "decoder.final_layernorm.weight":
            encoder["final_norm.weight"] = value
    lm["encoder"] = encoder
    out: dict = {"language_model": lm}
    if "output_layer.weight" in sd:
        if tied_head:
            out["word_embeddings_for_head"] = {"weight": sd["output_layer.weight"]}
        else:
            lm["output_layer"] = {"weight": sd["output_layer.weight"]}
    return out


def write_megatron_torch(
    spec: SampleSpec,
    out_dir: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    vpp: int = 1,
    iterations: tuple[int, ...] = (10,),
    te: bool = False,
    legacy: bool = False,
    with_optimizer: bool = False,
) -> Path:
    """Write a root with one folder per iteration; the tracker points at the last one.

    `te` picks the Transformer-Engine layer spec names, `legacy` the nested pre-mcore layout.
    """
    if legacy and spec.experts:
        raise ValueError("the legacy nested layout sample has no MoE variant")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for iteration in iterations:
        folder = root / f"iter_{iteration:07d}"
        args = megatron_args(spec, tp=tp, pp=pp, ep=ep, vpp=vpp, iteration=iteration, te=te)
        for pp_rank in range(pp):
            for tp_rank in range(tp):
                for ep_rank in range(ep):
                    kw = dict(tp=tp, pp=pp, ep=ep, vpp=vpp, tp_rank=tp_rank, pp_rank=pp_rank, ep_rank=ep_rank, te=te and not legacy)
                    state: dict = {"args": args, "checkpoint_version": 3.0, "iteration": iteration}
                    if vpp > 1:
                        for v in range(vpp):
                            state[f"model{v}"] = _model_chunk(spec, v=v, **kw)
                    else:
                        state["model"] = _model_chunk(spec, v=0, **kw)
                    if legacy:
                        for key in [k for k in state if k.startswith("model")]:
                            state[key] = to_legacy(state[key], spec.tied)
                    if with_optimizer:
                        state["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
                        state["opt_param_scheduler"] = {"num_steps": iteration}
                    state["rng_state"] = [{"random_rng_state": (3, tuple(range(5)), None), "torch_rng_state": torch.zeros(8, dtype=torch.uint8)}]
                    target = folder / rank_folder_name(tp_rank, pp_rank, ep_rank, pp_size=pp, ep_size=ep) / "model_optim_rng.pt"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(state, target)
    (root / "latest_checkpointed_iteration.txt").write_text(str(iterations[-1]))
    return root
