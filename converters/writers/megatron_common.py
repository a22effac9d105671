"""Pieces shared by the rank-file writers (Megatron, NxD): target vocab padding, stages, args, units."""

from __future__ import annotations

from ..megatron_args import megatron_args_from_spec
from ..spec import ModelSpec, SpecError
from collections.abc import Callable

from .base import TargetOptions, Unit


def target_padded_vocab(spec: ModelSpec, opts: TargetOptions) -> int:
    return spec.padded_for(opts.tp, opts.make_vocab_size_divisible_by)


def stage_of(spec: ModelSpec, opts: TargetOptions, group: int) -> int:
    """Pipeline stage holding a group (embeddings on the first, head on the last)."""
    if group < 0:
        return 0
    if group >= spec.layers:
        return opts.pp - 1
    for stage, layers in enumerate(spec.stage_layers(opts.pp, opts.pp_layers)):
        if group in layers:
            return stage
    raise ValueError(group)


def latent_cut_problem(spec: ModelSpec, opts: TargetOptions) -> str | None:
    """megatron-core's local spec cuts MLA's down-projections over TP (TE duplicates them)."""
    if not spec.mla or opts.megatron_spec == "te":
        return None
    rows = {"q_lora_rank": spec.q_lora_rank, "kv_lora_rank + qk_pos_emb_head_dim": spec.kv_lora_rank + spec.head_dim}
    uneven = [f"{name} {n}" for name, n in rows.items() if n % opts.tp]
    return (f"the local spec cuts the latent down-projections over TP={opts.tp}, and {', '.join(uneven)} do not split "
            "(--megatron-spec te keeps them whole)") if uneven else None


def target_args(spec: ModelSpec, opts: TargetOptions, ckpt_format: str) -> dict:
    if problem := latent_cut_problem(spec, opts):
        raise SpecError(problem)
    args = megatron_args_from_spec(
        spec.with_(dtype=opts.dtype or spec.dtype), tp=opts.tp, pp=opts.pp, ep=opts.ep,
        padded_vocab=target_padded_vocab(spec, opts), pp_layers=opts.pp_layers, iteration=opts.iteration,
        ckpt_format=ckpt_format, transformer_impl="transformer_engine" if opts.megatron_spec == "te" else "local",
    )
    if opts.make_vocab_size_divisible_by:
        args["make_vocab_size_divisible_by"] = opts.make_vocab_size_divisible_by
    args.update(opts.extra_args)
    return args


def stage_units(spec: ModelSpec, opts: TargetOptions, groups: list[int], rank_file: Callable[[int, int, int], str],
                *, tied_copy: bool) -> list[Unit]:
    """One unit per pipeline stage: every rank file of the stage and the groups it holds. With
    `tied_copy` (Megatron, tied embeddings, PP > 1) the last stage copies stage 0's embedding
    shards, so the two stages are one unit."""
    stages: dict[int, set[int]] = {}
    for g in groups:
        stages.setdefault(stage_of(spec, opts, g), set()).add(g)
    if tied_copy and (spec.tied or spec.mtp) and opts.pp > 1:  # MTP: the last stage's embedding copy
        stages[0] |= stages.pop(opts.pp - 1)
    units = []
    for stage, held in sorted(stages.items()):
        pps = [stage, opts.pp - 1] if stage == 0 and opts.pp - 1 not in stages else [stage]
        files = tuple(rank_file(tp, pp, ep) for pp in pps for tp in range(opts.tp) for ep in range(opts.ep))
        units.append(Unit("torch", files, frozenset(held)))
    return units
