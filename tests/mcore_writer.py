"""Write a tiny MoE GPT checkpoint with megatron-core itself, on CPU: N gloo processes, any TP /
EP / expert TP, saved as megatron/training saves it (the legacy `torch` rank files, only on
expert-data-parallel rank 0, named by TP / PP / EP rank) and as `torch_dist`
(`dist_checkpointing.save` of the model's `sharded_state_dict`), plus the model's own logits.

    python -m tests.mcore_writer OUT --tp 2 --ep 2 --etp 1 --world 2

megatron-core runs on a CPU with four shims, none of which touches what is saved: CUDA
synchronisation and the current device around a save, the CUDA RNG tracker's fork (eval has no
dropout), and `moe_utils.te_general_gemm`, which 0.16.1 names only when Transformer Engine
imports. Sequence parallelism is off: its norms need Apex or TE.
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


def probe_ids() -> torch.Tensor:
    return (torch.arange(PROBE).view(1, PROBE) * 7) % VOCAB


def _args(a: Namespace, fmt: str) -> Namespace:
    """What megatron/training keeps as `args` (the fields a reader of the checkpoint needs)."""
    return Namespace(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, group_query_attention=True,
        num_query_groups=GROUPS, kv_channels=HIDDEN // HEADS, ffn_hidden_size=FFN, num_experts=EXPERTS,
        moe_ffn_hidden_size=EXPERT_FFN, moe_router_topk=TOPK, moe_grouped_gemm=False, swiglu=True,
        normalization="RMSNorm", norm_epsilon=1e-5, add_bias_linear=False, position_embedding_type="rope",
        rotary_base=10000, rotary_percent=1.0, untie_embeddings_and_output_weights=True, padded_vocab_size=VOCAB,
        vocab_size=VOCAB, max_position_embeddings=SEQ, seq_length=SEQ, tensor_model_parallel_size=a.tp,
        pipeline_model_parallel_size=a.pp, expert_model_parallel_size=a.ep, expert_tensor_parallel_size=a.etp,
        params_dtype=torch.float32, bf16=False, fp16=False, transformer_impl="local", sequence_parallel=False,
        ckpt_format=fmt,
    )


def _worker(rank: int, a: Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=a.world)
    torch.cuda.synchronize = lambda *_, **__: None  # megatron-core calls these around a save
    torch.cuda.current_device = lambda: "cpu"
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.tensor_parallel.mappings import (
        gather_from_tensor_model_parallel_region,
    )
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.moe import moe_utils

    ps.initialize_model_parallel(tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp,
                                 expert_model_parallel_size=a.ep, expert_tensor_parallel_size=a.etp)
    torch.manual_seed(1234)
    config = TransformerConfig(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=GROUPS, ffn_hidden_size=FFN,
        num_moe_experts=EXPERTS, moe_ffn_hidden_size=EXPERT_FFN, moe_router_topk=TOPK, moe_token_dispatcher_type="allgather",
        gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm", add_bias_linear=False,
        tensor_model_parallel_size=a.tp, pipeline_model_parallel_size=a.pp, expert_model_parallel_size=a.ep,
        expert_tensor_parallel_size=a.etp, sequence_parallel=False, use_cpu_initialization=True,
        params_dtype=torch.float32, pipeline_dtype=torch.float32, init_method_std=0.05)
    model = GPTModel(config, get_gpt_layer_local_spec(num_experts=EXPERTS, normalization="RMSNorm"), vocab_size=VOCAB,
                     max_sequence_length=SEQ, position_embedding_type="rope", share_embeddings_and_output_weights=False,
                     pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())
    out = Path(a.out)
    if ps.get_expert_data_parallel_rank() == 0:  # megatron/training/checkpointing.py: who saves the torch format
        name = f"mp_rank_{ps.get_tensor_model_parallel_rank():02d}"
        name += f"_{ps.get_pipeline_model_parallel_rank():03d}" if a.pp > 1 else ""
        name += f"_{ps.get_expert_model_parallel_rank():03d}" if a.ep > 1 else ""
        path = out / "legacy" / "iter_0000001" / name / "model_optim_rng.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"args": _args(a, "torch"), "checkpoint_version": 3.0, "iteration": 1,
                    "model": model.state_dict_for_save_checkpoint()}, path)
    dist = out / "dist" / "iter_0000001"
    if rank == 0:
        dist.mkdir(parents=True)
        for kind in ("legacy", "dist"):
            (out / kind / "latest_checkpointed_iteration.txt").write_text("1")
    torch.distributed.barrier()
    dist_checkpointing.save({"args": _args(a, "torch_dist"), "checkpoint_version": 3.0, "iteration": 1,
                             "model": model.sharded_state_dict()}, str(dist))
    if a.pp == 1:  # the model's own forward (one stage holds it all)
        tracker = tp_random.get_cuda_rng_tracker()
        tracker.fork = lambda *_, **__: contextlib.nullcontext()
        moe_utils.te_general_gemm = getattr(moe_utils, "te_general_gemm", None)
        model.eval()
        mask = torch.triu(torch.ones(PROBE, PROBE), diagonal=1).bool().view(1, 1, PROBE, PROBE)
        with torch.no_grad():
            logits = gather_from_tensor_model_parallel_region(model(probe_ids(), torch.arange(PROBE).view(1, PROBE), mask))
        if rank == 0:
            torch.save(logits, out / "reference_logits.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    for axis in ("tp", "pp", "ep", "etp", "world"):
        parser.add_argument(f"--{axis}", type=int, default=1)
    a = parser.parse_args(argv)
    with socket.socket() as s:  # a free port on the loopback for gloo's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(a, port), nprocs=a.world)


if __name__ == "__main__":
    main()
