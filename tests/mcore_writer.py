"""Write a tiny MoE GPT checkpoint with megatron-core itself, on CPU: N gloo processes, any TP /
EP / expert TP, saved as megatron/training saves it (the legacy `torch` rank files, only on
expert-data-parallel rank 0, named by TP / PP / EP rank) and as `torch_dist`
(`dist_checkpointing.save` of the model's `sharded_state_dict`), plus the model's own logits.

    python -m tests.mcore_writer OUT [--model NAME (MODELS)] --tp 2 --ep 2 --etp 1 --world 2
    python -m tests.mcore_writer OUT --model M --tp 2 --world 2 --load CKPT [--load CKPT2]  # megatron-core loads each, strictly

The second form builds the same model, loads a checkpoint into it the way megatron/training
does (strict), and writes its logits: how our Megatron writers are held to megatron-core.

Each model (`MODELS`) is a set of TransformerConfig fields, the same fields in `args` under
Megatron's argument names (what megatron/training saves), and GPTModel's options.

megatron-core runs on a CPU with five shims, none of which touches what is saved: CUDA
synchronisation and the current device around a save, the CUDA RNG tracker's fork (eval has no
dropout), the sliding-window mask made on the CPU, and `moe_utils.te_general_gemm`, which 0.16.1
names only when Transformer Engine imports. Sequence parallelism is off: its norms need Apex or TE.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
from argparse import Namespace
from pathlib import Path

import torch
import torch.nn.functional as F

HIDDEN, HEADS, GROUPS, FFN, EXPERTS, EXPERT_FFN, TOPK, LAYERS, VOCAB, SEQ = 64, 4, 2, 96, 4, 32, 2, 2, 256, 64
PROBE = 16

# model: (TransformerConfig fields beyond the base, args beyond the base, GPTModel options)
MOE = {"num_moe_experts": EXPERTS, "moe_ffn_hidden_size": EXPERT_FFN, "moe_router_topk": TOPK}
MOE_ARGS = {"num_experts": EXPERTS, "moe_ffn_hidden_size": EXPERT_FFN, "moe_router_topk": TOPK}
MODELS: dict[str, tuple[dict, dict, dict]] = {
    "mixtral": (MOE, MOE_ARGS, {}),
    "qwen3_moe": ({**MOE, "qk_layernorm": True}, {**MOE_ARGS, "qk_layernorm": True}, {}),  # top-k renormalised
    "qwen3": ({"qk_layernorm": True, "kv_channels": 24}, {"qk_layernorm": True, "kv_channels": 24}, {}),
    "qwen2": ({"add_qkv_bias": True}, {"add_qkv_bias": True}, {}),
    # shared experts behind a sigmoid gate, the first layer dense
    "qwen2_moe": ({**MOE, "moe_shared_expert_intermediate_size": 48, "moe_shared_expert_gate": True, "moe_layer_freq": [0, 1]},
                  {**MOE_ARGS, "moe_shared_expert_intermediate_size": 48, "moe_shared_expert_gate": True,
                   "moe_layer_freq": [0, 1]}, {}),
    # DeepSeek-V3's router (sigmoid scores with the score-correction bias, group-limited, scaled) and shared
    # experts, the first layer dense; no latent attention: megatron-core 0.16.1's local MLA needs TE's attention
    "deepseek_moe": ({**MOE, "num_moe_experts": 8, "moe_router_topk": 4, "moe_shared_expert_intermediate_size": 32,
                      "moe_layer_freq": [0, 1], "moe_router_score_function": "sigmoid", "moe_router_enable_expert_bias": True,
                      "moe_router_num_groups": 4, "moe_router_group_topk": 2, "moe_router_topk_scaling_factor": 2.5,
                      "moe_router_dtype": "fp32"},
                     {**MOE_ARGS, "num_experts": 8, "moe_router_topk": 4, "moe_shared_expert_intermediate_size": 32,
                      "moe_layer_freq": [0, 1], "moe_router_score_function": "sigmoid", "moe_router_enable_expert_bias": True,
                      "moe_router_num_groups": 4, "moe_router_group_topk": 2, "moe_router_topk_scaling_factor": 2.5,
                      "moe_router_dtype": "fp32"}, {}),
    # a sliding window of 4 keys (HF sliding_window 4), every layer
    "mistral": ({"window_size": (3, 0)}, {"window_size": (3, 0)}, {}),
    # Llama 3.1's RoPE scaling (factor 8; low / high frequency factors 1 / 4 over 8192 positions), base 500000
    "llama31": ({}, {"use_rope_scaling": True, "rope_scaling_factor": 8.0, "rotary_base": 500000},
                {"rope_scaling": True, "rope_scaling_factor": 8.0, "rotary_base": 500000}),
    # RoPE on adjacent pairs of q / k channels
    "interleaved": ({"rotary_interleaved": True}, {"rotary_interleaved": True}, {}),
    # LayerNorm, GELU through the fused bias-GELU (tanh form: Megatron-LM's default), biases, learned positions, tied embeddings
    "gpt2": ({"normalization": "LayerNorm", "gated_linear_unit": False, "activation_func": F.gelu, "add_bias_linear": True,
              "bias_activation_fusion": True, "num_query_groups": HEADS, "ffn_hidden_size": 4 * HIDDEN},
             {"normalization": "LayerNorm", "swiglu": False, "add_bias_linear": True, "bias_gelu_fusion": True,
              "bias_activation_fusion": True, "group_query_attention": False,
              "num_query_groups": HEADS, "ffn_hidden_size": 4 * HIDDEN, "position_embedding_type": "learned_absolute",
              "untie_embeddings_and_output_weights": False},
             {"position_embedding_type": "learned_absolute", "share_embeddings_and_output_weights": True}),
}


def probe_ids() -> torch.Tensor:
    return (torch.arange(PROBE).view(1, PROBE) * 7) % VOCAB


def _args(a: Namespace, fmt: str) -> Namespace:
    """What megatron/training keeps as `args` (the fields a reader of the checkpoint needs)."""
    base = dict(
        num_layers=a.layers, hidden_size=HIDDEN, num_attention_heads=HEADS, group_query_attention=True,
        num_query_groups=GROUPS, kv_channels=HIDDEN // HEADS, ffn_hidden_size=FFN, swiglu=True,
        normalization="RMSNorm", norm_epsilon=1e-5, add_bias_linear=False, position_embedding_type="rope",
        rotary_base=10000, rotary_percent=1.0, untie_embeddings_and_output_weights=True, padded_vocab_size=VOCAB,
        vocab_size=VOCAB, max_position_embeddings=SEQ, seq_length=SEQ, tensor_model_parallel_size=a.tp,
        pipeline_model_parallel_size=a.pp, expert_model_parallel_size=a.ep, expert_tensor_parallel_size=a.etp,
        virtual_pipeline_model_parallel_size=a.vpp if a.vpp > 1 else None, params_dtype=torch.float32, bf16=False, fp16=False, transformer_impl="local", sequence_parallel=False,
        moe_grouped_gemm=False, ckpt_format=fmt,
    )
    if a.bf16:
        base.update(params_dtype=torch.bfloat16, bf16=True)
    if a.first_stage_layers:
        base["decoder_first_pipeline_num_layers"] = a.first_stage_layers
    return Namespace(**{**base, **MODELS[a.model][1]})


def _worker(rank: int, a: Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=a.world)
    torch.cuda.synchronize = lambda *_, **__: None  # megatron-core calls these around a save
    torch.cuda.current_device = lambda: "cpu"
    from megatron.core import parallel_state as ps
    from megatron.core.fusions import fused_softmax
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.tensor_parallel.mappings import (
        gather_from_tensor_model_parallel_region,
    )
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.moe import moe_utils

    vpp = a.vpp if a.vpp > 1 else None
    ps.initialize_model_parallel(tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp,
                                 expert_model_parallel_size=a.ep, expert_tensor_parallel_size=a.etp,
                                 virtual_pipeline_model_parallel_size=vpp)
    torch.manual_seed(1234)
    fields, _, options = MODELS[a.model]
    base = dict(
        num_layers=a.layers, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=GROUPS, ffn_hidden_size=FFN,
        virtual_pipeline_model_parallel_size=vpp, moe_token_dispatcher_type="allgather", gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm",
        add_bias_linear=False, tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp,
        expert_model_parallel_size=a.ep, expert_tensor_parallel_size=a.etp, sequence_parallel=False,
        use_cpu_initialization=True, params_dtype=torch.float32, pipeline_dtype=torch.float32, init_method_std=0.05)
    if a.bf16:  # parameters in bf16, as mixed-precision runs keep the model
        base.update(params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16, bf16=True)
    if a.first_stage_layers:  # an uneven pipeline: this many layers on the first stage, the rest split evenly
        base["num_layers_in_first_pipeline_stage"] = a.first_stage_layers
    config = TransformerConfig(**{**base, **fields})
    gpt = {"position_embedding_type": "rope", "share_embeddings_and_output_weights": False, **options}
    chunks = [GPTModel(config, get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization=config.normalization,
                                                          vp_stage=v if vpp else None),
                       vocab_size=VOCAB, max_sequence_length=SEQ, vp_stage=v if vpp else None,
                       pre_process=ps.is_pipeline_first_stage(ignore_virtual=not vpp, vp_stage=v if vpp else None),
                       post_process=ps.is_pipeline_last_stage(ignore_virtual=not vpp, vp_stage=v if vpp else None), **gpt)
              for v in range(a.vpp)]
    if vpp:  # virtual stages: saved as `model0`, `model1`, ... (megatron/training generate_state_dict); no forward here
        _save(chunks, a, Path(a.out), rank)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        return
    model = chunks[0]
    if config.moe_router_enable_expert_bias:  # a trained-looking score-correction bias (zeros at init)
        for name, buffer in model.named_buffers():
            if name.endswith("expert_bias"):
                buffer.copy_(torch.randn(buffer.shape, generator=torch.Generator().manual_seed(7)) * 0.1)
    out = Path(a.out)
    if not a.load:
        _save([model], a, out, rank)
    tracker = tp_random.get_cuda_rng_tracker()
    tracker.fork = lambda *_, **__: contextlib.nullcontext()
    moe_utils.te_general_gemm = getattr(moe_utils, "te_general_gemm", None)
    fused_softmax.get_sliding_window_causal_mask = _sliding_window_mask
    model.eval()
    for k, ckpt in enumerate(a.load or [None]):
        if ckpt is not None:
            _load(model, Path(ckpt), a)
        if a.pp == 1:  # the model's own forward (one stage holds it all)
            mask = torch.triu(torch.ones(PROBE, PROBE), diagonal=1).bool().view(1, 1, PROBE, PROBE)
            with torch.no_grad():
                logits = gather_from_tensor_model_parallel_region(model(probe_ids(), torch.arange(PROBE).view(1, PROBE), mask))
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                torch.save(logits, out / (f"loaded_logits_{k}.pt" if ckpt else "reference_logits.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _sliding_window_mask(sq: int, skv: int, window_size: tuple[int, int]) -> torch.Tensor:
    """megatron/core/transformer/utils.py's mask, made on the CPU (its own asks for CUDA)."""
    keep = torch.ones(sq, skv, dtype=torch.bool).triu(diagonal=skv - sq - window_size[0]).tril(diagonal=skv - sq + window_size[1])
    return ~keep


def _rank_folder(a: Namespace) -> str:
    """This rank's folder name in the torch format (megatron/training/checkpointing.py get_checkpoint_name)."""
    from megatron.core import parallel_state as ps

    name = f"mp_rank_{ps.get_tensor_model_parallel_rank():02d}"
    name += f"_{ps.get_pipeline_model_parallel_rank():03d}" if a.pp > 1 else ""
    return name + (f"_{ps.get_expert_model_parallel_rank():03d}" if a.ep > 1 else "")


def _save(chunks: list[torch.nn.Module], a: Namespace, out: Path, rank: int) -> None:
    """As megatron/training's save_checkpoint: the model under `model`, or virtual stages under `model{i}`."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    keys = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
    if ps.get_expert_data_parallel_rank() == 0:  # megatron/training/checkpointing.py: who saves the torch format
        path = out / "legacy" / "iter_0000001" / _rank_folder(a) / "model_optim_rng.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"args": _args(a, "torch"), "checkpoint_version": 3.0, "iteration": 1}
        torch.save({**state, **{k: m.state_dict_for_save_checkpoint() for k, m in zip(keys, chunks)}}, path)
    dist = out / "dist" / "iter_0000001"
    if rank == 0:
        dist.mkdir(parents=True)
        for kind in ("legacy", "dist"):
            (out / kind / "latest_checkpointed_iteration.txt").write_text("1")
    torch.distributed.barrier()
    state = {"args": _args(a, "torch_dist"), "checkpoint_version": 3.0, "iteration": 1}
    dist_checkpointing.save({**state, **{k: m.sharded_state_dict() for k, m in zip(keys, chunks)}}, str(dist))


def _load(model: torch.nn.Module, folder: Path, a: Namespace) -> None:
    """Load a checkpoint into the model as megatron/training's load_checkpoint does, strictly: a
    torch_dist folder through `dist_checkpointing.load` of the model's sharded state dict, a torch
    one from this rank's own file. Every key the model has must be there, and no other."""
    from megatron.core import dist_checkpointing

    iteration = next(p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.startswith(("iter_", "release")))
    if (iteration / "metadata.json").is_file():
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(iteration))["model"]
    else:
        state = torch.load(iteration / _rank_folder(a) / "model_optim_rng.pt", weights_only=False)["model"]
    model.load_state_dict(state, strict=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", choices=sorted(MODELS), default="mixtral")
    for axis in ("tp", "pp", "vpp", "ep", "world"):
        parser.add_argument(f"--{axis}", type=int, default=1)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--bf16", action="store_true", help="bf16 parameters (--bf16 runs)")
    parser.add_argument("--first-stage-layers", type=int, default=0, help="layers on the first pipeline stage (uneven PP)")
    parser.add_argument("--etp", type=int, default=None, help="the experts' own TP (default: --tp, as megatron-core's)")
    parser.add_argument("--load", action="append", help="instead of saving: load this checkpoint (strictly) and write "
                                                         "OUT/loaded_logits_K.pt, K counting the --load options from 0")
    a = parser.parse_args(argv)
    a.etp = a.etp or a.tp
    with socket.socket() as s:  # a free port on the loopback for gloo's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import megatron.core.dist_checkpointing
    import megatron.core.models.gpt  # noqa: F401 - imported once here, before the ranks fork (~6 s a process)

    torch.multiprocessing.start_processes(_worker, args=(a, port), nprocs=a.world, start_method="fork")


if __name__ == "__main__":
    main()
