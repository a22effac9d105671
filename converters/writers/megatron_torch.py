"""Megatron-LM `torch` writer: `iter_XXXXXXX/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`.

Each rank file holds `args` (argparse.Namespace with Megatron's names), `checkpoint_version`
3.0, `iteration` and `model` in Megatron-Core names (local or Transformer-Engine spec), or, with
`megatron_spec="megatron-llm"`, in epfLLM Megatron-LLM's nested names and layouts
(`rules/megatron_llm.py`: interleaved q/k, `[up; gate]` SwiGLU, its arg names as well). Rank
files of one pipeline stage are open together and filled layer by layer (tensor bytes go to
disk as they are made); the tracker `latest_checkpointed_iteration.txt` is written last.
"""

from __future__ import annotations

import argparse
import io
import math
from collections import OrderedDict

import torch

from ckptscope.inspectors.megatron_common import TRACKER, iteration_folder_name, rank_folder_name

from .. import vocab
from ..row import scatter
from ..rules import megatron as mg
from ..rules import megatron_llm as mllm
from ..row_runs import RowRuns
from ..shards import Geometry
from ..spec import SpecError
from ..sources import PRE, group_canon
from .base import PlannedFile, StagedWriter, Unit
from .megatron_common import stage_of, stage_units, target_args, target_padded_vocab
from .torchzip import TorchZipWriter

TE_EXTRA_STATE = ("self_attention.linear_qkv", "self_attention.linear_proj", "self_attention.core_attention")
TE_EXTRA_STATE_MLA = ("self_attention.linear_kv_down_proj", "self_attention.linear_kv_up_proj", "self_attention.linear_proj",
                      "self_attention.core_attention")
TE_EXTRA_STATE_MLA_Q = {True: ("self_attention.linear_q_down_proj", "self_attention.linear_q_up_proj"),
                        False: ("self_attention.linear_q_proj",)}  # by q_lora_rank > 0
TE_EXTRA_STATE_DENSE = ("mlp.linear_fc1", "mlp.linear_fc2")


class MegatronTorchWriter(StagedWriter):
    def __init__(self, spec, opts) -> None:  # type: ignore[no-untyped-def]
        if opts.megatron_spec == mllm.TRAIN:
            if problems := mllm.problems(spec, opts.tp):
                raise SpecError("; ".join(problems))
            spec = spec.with_(rotary_interleaved=spec.position == "rope")  # Megatron-LLM applies RoPE to interleaved pairs
        super().__init__(spec, opts)
        self.variant = opts.megatron_spec if opts.megatron_spec in ("te", mllm.TRAIN) else "local"
        self.rules = mllm if self.variant == mllm.TRAIN else mg
        self.padded = target_padded_vocab(spec, opts)
        self.geo = Geometry(spec.with_(padded_vocab=self.padded), opts.tp)  # what the rows cut to
        args = target_args(spec, opts, "torch")
        if self.rules is mllm:
            args.update(mllm.args_from_spec(spec))
        self.args = argparse.Namespace(**args)
        self.stages = spec.stage_layers(opts.pp, opts.pp_layers)
        self.iter_dir = iteration_folder_name(opts.iteration)
        self._writers: dict[tuple[int, int], TorchZipWriter] = {}
        self._models: dict[tuple[int, int], OrderedDict] = {}
        self._tied_embed: list[torch.Tensor] | None = None

    # ----- planning ------------------------------------------------------------------------
    def _rank_file(self, tp: int, pp: int, ep: int) -> str:
        return f"{self.iter_dir}/{rank_folder_name(tp, pp, ep, pp_size=self.opts.pp, ep_size=self.opts.ep)}/model_optim_rng.pt"

    def resume_units(self, groups: list[int]) -> list[Unit]:
        """One unit per stage; with tied embeddings and PP > 1 the last stage needs stage 0's
        embedding shards in memory, so stage 0 is always redone."""
        units = stage_units(self.spec, self.opts, groups, self._rank_file, tied_copy=False)
        return units[1:] if (self.spec.tied or self.spec.mtp) and self.opts.pp > 1 else units

    def ownership_units(self, groups: list[int]) -> list[Unit]:
        return stage_units(self.spec, self.opts, groups, self._rank_file, tied_copy=True)

    def files(self) -> list[PlannedFile]:
        spec, opts = self.spec, self.opts
        out = []
        shapes = spec.canonical_shapes()
        for pp in range(opts.pp):
            last = list(range(spec.layers, spec.layers + 1 + spec.mtp))  # head, then the MTP modules
            groups = ([PRE] if pp == 0 else []) + list(self.stages[pp]) + (last if pp == opts.pp - 1 else [])
            for ep in range(opts.ep):
                names = [c for g in groups for c in group_canon(spec, g)
                         if ".experts." not in c or int(c.split(".")[3]) // (spec.experts // opts.ep) == ep]
                numel = sum(math.prod(shapes[c]) for c in names)  # approximate: replicated norms counted once
                for tp in range(opts.tp):
                    out.append(PlannedFile(self._rank_file(tp, pp, ep), len(names), numel * self.dtype.itemsize // opts.tp))
        out.append(PlannedFile(TRACKER, 0, 0))
        return out

    # ----- streaming -----------------------------------------------------------------------
    def _open_stage(self, stage: int) -> None:
        assert self.folder is not None
        for tp in range(self.opts.tp):
            for ep in range(self.opts.ep):
                # one writer thread per rank file: the stage's files are written concurrently
                self._writers[(tp, ep)] = TorchZipWriter(self.folder / self._rank_file(tp, stage, ep), background=True)
                self._models[(tp, ep)] = OrderedDict()

    def _finish_stage(self) -> None:
        for key, writer in self._writers.items():
            model = mllm.nest(self._models[key]) if self.rules is mllm else self._models[key]
            state = {"args": self.args, "checkpoint_version": 3.0, "iteration": self.opts.iteration,
                     "model": model, "num_floating_point_operations_so_far": 0}
            writer.finish(state)
        self._writers.clear()
        self._models.clear()

    def _put(self, name: str, shards: list[torch.Tensor | RowRuns], ep_ranks: range | list[int], fp32: bool = False) -> None:
        dtype = torch.float32 if fp32 else self.dtype  # a buffer megatron-core keeps in fp32 (expert_bias)
        for tp, shard in enumerate(shards):
            if shard.dtype != dtype:  # `to` on a tensor already in the dtype still costs a dispatch (3,072 pieces at 256 experts)
                shard = shard.to(dtype)
            for ep in ep_ranks:
                self._models[(tp, ep)][name] = self._writers[(tp, ep)].add(shard)

    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        self._write_group(group, tensors)
        for writer in self._writers.values():
            writer.flush()  # the group's records leave with it

    def _write_group(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        spec, opts = self.spec, self.opts
        self._enter_stage(stage_of(spec, opts, group))
        all_ep = range(opts.ep)
        if group == PRE or group == spec.layers:
            stage = "first" if group == PRE else "last"
            for param, where in self.rules.global_params(spec):
                if where == stage:
                    shards = scatter(param, [tensors[c] for c in param.canon], self.geo, runs=True)
                    self._put(param.name_for(self.variant, spec), shards, all_ep)  # te has no global names: local
                    if param.canon == ("embed",) and (spec.tied or spec.mtp) and opts.pp > 1:
                        self._tied_embed = shards
            if group == spec.layers and spec.tied and opts.pp > 1 and self._tied_embed is not None:
                self._put(self.rules.TIED_HEAD_COPY.get(self.variant, mg.TIED_HEAD_COPY["local"]), self._tied_embed, all_ep)
            if group == spec.layers and spec.mtp and opts.pp > 1 and self._tied_embed is not None:
                self._put(mg.GLOBAL_PARAMS[0][0].name, self._tied_embed, all_ep)  # the MTP stage's embedding
            return
        if group > spec.layers:  # MTP module k: its own rows, then its layer (the embedding and head are shared)
            k = group - spec.layers - 1
            prefix = mg.MTP_PREFIX.format(k=k)
            for param in mg.MTP_PARAMS:
                self._put(prefix + param.name, scatter(param, [tensors[f"mtp.{k}." + c] for c in param.canon], self.geo, runs=True), all_ep)
            self._write_layer(prefix + mg.MTP_LAYER, spec.mtp_spec(), f"mtp.{k}.", tensors)
            if self.variant == "te":  # eh_proj is a TEColumnParallelLinear
                for model in self._models.values():
                    model[f"{prefix}eh_proj._extra_state"] = io.BytesIO()
            return
        local = group - self.stages[self._stage].start
        prefix = (self.rules.LAYER_PREFIX[self.variant] if self.rules is mllm else "decoder.layers.{i}.").format(i=local)
        self._write_layer(prefix, spec.layer_spec(group), f"layers.{group}.", tensors)

    def _write_layer(self, prefix: str, layer, at: str, tensors: dict[str, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
        """One transformer layer's rank tensors (`layer`: a dense layer of a MoE model has no expert rows)."""
        spec, opts, all_ep = self.spec, self.opts, range(self.opts.ep)
        e_local = layer.experts // opts.ep if layer.moe else 0
        for param in self.rules.layer_params(layer, self.variant):
            if param.expert:  # names spelled once per row, not per expert
                name, canon = prefix + param.name_for(self.variant, layer), [at + c for c in param.canon]
                for e in range(layer.experts):
                    parts = [tensors[c.format(e=e)] for c in canon]
                    self._put(name.format(e=e % e_local), scatter(param, parts, self.geo, runs=True), [e // e_local])
                continue
            self._put(prefix + param.name_for(self.variant, layer), scatter(param, [tensors[at + c] for c in param.canon], self.geo, runs=True), all_ep,
                      fp32=all(vocab.kept_fp32(c) for c in param.canon))
        if self.variant == "te":
            attention = TE_EXTRA_STATE_MLA + TE_EXTRA_STATE_MLA_Q[spec.q_lora_rank > 0] if spec.mla else TE_EXTRA_STATE
            for module in attention + (() if layer.moe else TE_EXTRA_STATE_DENSE):
                for model in self._models.values():
                    model[f"{prefix}{module}._extra_state"] = io.BytesIO()

    def close(self) -> None:
        assert self.folder is not None
        self._finish_stage()
        if self.finalize:
            (self.folder / TRACKER).write_text(f"{self.opts.iteration}\n")  # marker last

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()
