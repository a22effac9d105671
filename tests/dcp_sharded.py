"""Save a state dict as an FSDP2 run does: two gloo ranks on 127.0.0.1, every tensor a DTensor
sharded on dim 0 over a two-rank CPU mesh (FSDP's `Shard(0)`; torchtitan's stacked experts are
sharded over experts the same way), written by torch's `dcp.save` - one `__R_0.distcp` per rank
and a `.metadata` of chunks. Run as `python -m tests.dcp_sharded STATE.pt FOLDER`."""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

WORLD = 2


def _rank(rank: int, port: int, state_file: str, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        state = torch.load(state_file, weights_only=False)
        sharded = {k: distribute_tensor(v, mesh, [Shard(0)]) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] >= WORLD
                   else v for k, v in state.items()}
        dcp.save(sharded, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


def main(state_file: str, folder: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, state_file, folder), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
