"""Conversion under `torchrun`: every rank converts its share of the output, rank 0 finishes it.

    torchrun --nproc-per-node N -m ckptscope.app.cli convert SRC DST --to hf --distributed

The same `run.convert` loop runs on every rank; what differs is which groups a rank reads and
which files it writes. Output files are grouped into units that one writer fills as a whole -
an HF shard, or all rank files of one pipeline stage of a Megatron / NxD target - and each unit
gets exactly one owner (largest first, to the least loaded rank), so no file is ever written by
two processes. A rank reads only the groups its units need (a group feeding two HF shards of
different owners is read by both). Targets without such units (torch_dist, DeepSpeed, ...) are
one unit: rank 0 writes them alone. Rank 0 creates the temporary output folder and tells the
others its path; after every rank has finished its files, rank 0 writes what declares the output
complete (index, config, tracker, `done` marker) and renames the folder into place.

Ranks agree through two votes (gloo `all_gather_object`): "my files are written" and "the
output is committed"; a rank that fails casts its remaining votes as failures, so no rank waits
forever and rank 0 never commits an output another rank could not finish.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import Plan
    from .writers.base import Unit

VOTES = 2  # "my files are written", "the output is committed"


@dataclass
class DistContext:
    """This process's rank in a gloo process group (from torchrun's environment variables)."""

    rank: int
    world: int
    owns_group: bool = False  # we called init_process_group, so we tear it down
    _votes: int = field(default=0, repr=False)

    @classmethod
    def from_env(cls) -> DistContext:
        import torch.distributed as dist

        if not dist.is_initialized():
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise RuntimeError("--distributed needs torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set)")
            dist.init_process_group("gloo")
            return cls(dist.get_rank(), dist.get_world_size(), owns_group=True)
        return cls(dist.get_rank(), dist.get_world_size())

    def close(self) -> None:
        """Destroy a group we created: gloo threads left running abort the process at exit."""
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def vote(self, ok: bool) -> list[bool]:
        """Every rank's answer, in rank order (a collective: all ranks must call it)."""
        import torch.distributed as dist

        answers: list[Any] = [None] * self.world
        dist.all_gather_object(answers, bool(ok))
        self._votes += 1
        return [bool(a) for a in answers]

    def fail(self) -> None:
        """Cast every vote this rank still owes as a failure (called while an error propagates)."""
        while self._votes < VOTES:
            try:
                self.vote(False)
            except Exception:  # noqa: BLE001 - the group itself broke: nothing left to agree on
                return


def ownership_units(plan: Plan) -> list[Unit]:
    """Units of output files that one rank writes whole, with the groups that feed them (the
    writer declares them: HF shards, Megatron / NxD pipeline stages, or the whole output)."""
    return plan.writer.ownership_units(plan.groups)


def assign(weights: list[int], world: int) -> list[int]:
    """Owner rank of each unit: largest first to the least loaded rank (deterministic)."""
    load = [0] * world
    owner = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += weights[i]
    return owner


def share(plan: Plan, ctx: DistContext) -> tuple[set[int], set[str]]:
    """(groups this rank reads, planned files other ranks own and this rank must not write)."""
    units = ownership_units(plan)
    sizes = _group_bytes(plan)
    owner = assign([sum(sizes[g] for g in u.groups) for u in units], ctx.world)
    mine = [u for u, r in zip(units, owner) if r == ctx.rank]
    groups = {g for u in mine for g in u.groups}
    foreign = {f for u, r in zip(units, owner) if r != ctx.rank for f in u.files}
    return groups, foreign


def _group_bytes(plan: Plan) -> dict[int, int]:
    from .sources import group_canon

    shapes = plan.spec.canonical_shapes()
    return {g: sum(math.prod(shapes[c]) for c in group_canon(plan.spec, g) if c in shapes) for g in plan.groups}
