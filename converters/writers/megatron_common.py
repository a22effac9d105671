"""Pieces shared by the two Megatron writers: target vocab padding, stages, args."""

from __future__ import annotations

from ..megatron_args import megatron_args_from_spec
from ..spec import ModelSpec
from .base import TargetOptions


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


def target_args(spec: ModelSpec, opts: TargetOptions, ckpt_format: str) -> dict:
    args = megatron_args_from_spec(
        spec.with_(dtype=opts.dtype or spec.dtype), tp=opts.tp, pp=opts.pp, ep=opts.ep,
        padded_vocab=target_padded_vocab(spec, opts), pp_layers=opts.pp_layers, iteration=opts.iteration,
        ckpt_format=ckpt_format, transformer_impl="transformer_engine" if opts.megatron_spec == "te" else "local",
    )
    if opts.make_vocab_size_divisible_by:
        args["make_vocab_size_divisible_by"] = opts.make_vocab_size_divisible_by
    args.update(opts.extra_args)
    return args
