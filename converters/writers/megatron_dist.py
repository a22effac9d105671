"""Megatron-Core `torch_dist` writer: stacked layer / expert keys, chunked per layer and TP rank.

Keys and chunking follow megatron-core (checked against the real checkpoints in the corpus):
layer tensors are stacked under `decoder.layers.<name>` with a leading layer axis (and an expert
axis for `mlp.experts.experts.*`), each layer's slice cut into TP pieces (SwiGLU fc1 into 2·TP:
gate pieces then up pieces), TE `_extra_state` byte entries, `common.pt` with `args`.
`metadata.json`, which Megatron takes as "this checkpoint is complete", is written last, then
the root tracker.
"""

from __future__ import annotations

import argparse
import json

import torch

from ckptscope.inspectors.megatron_common import TRACKER, iteration_folder_name

from .. import vocab
from ..rules import megatron as mg
from ..row import Row, stored_boxes, stored_shape
from ..spec import ModelSpec
from ..sources import PRE
from .base import PlannedFile, Writer
from .dcp import DcpStreamWriter, torch_bytes
from .megatron_common import target_args, target_padded_vocab
from .output import save_to

METADATA_JSON = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                 "common_backend_version": 1}
EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv")
EXTRA_STATE_MLA = ("self_attention.linear_proj", "self_attention.linear_kv_down_proj", "self_attention.linear_kv_up_proj")
EXTRA_STATE_MLA_Q = {True: ("self_attention.linear_q_down_proj", "self_attention.linear_q_up_proj"),
                     False: ("self_attention.linear_q_proj",)}  # by q_lora_rank > 0
EXTRA_STATE_DENSE = ("mlp.linear_fc1", "mlp.linear_fc2")
EXTRA_STATE_EXPERTS = ("mlp.experts.experts.linear_fc1", "mlp.experts.experts.linear_fc2")
EXTRA_STATE_SHARED = ("mlp.shared_experts.linear_fc1", "mlp.shared_experts.linear_fc2")


def extra_state_modules(layer: ModelSpec) -> tuple[str, ...]:
    """The layer's modules (routed experts aside) whose `_extra_state` megatron-core's
    `sharded_state_dict` holds, one entry each: a load fails on any that is missing."""
    attention = (EXTRA_STATE_MLA + EXTRA_STATE_MLA_Q[layer.q_lora_rank > 0]) if layer.mla else EXTRA_STATE_MODULES
    mlp = (EXTRA_STATE_SHARED if layer.shared_expert_ffn else ()) if layer.moe else EXTRA_STATE_DENSE
    return attention + mlp


class MegatronDistWriter(Writer):
    def __init__(self, spec, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec, opts)
        self.padded = target_padded_vocab(spec, opts)
        self.row_spec = spec.with_(padded_vocab=self.padded)  # what the rows pad the vocabulary to
        self.args = argparse.Namespace(**target_args(spec, opts, "torch_dist"))
        self.iter_dir = iteration_folder_name(opts.iteration)
        self.dcp: DcpStreamWriter | None = None
        # layers that differ (dense among MoE: moe_layer_freq a list) are megatron-core's
        # `non_homogeneous_layers`: one key per layer (`decoder.layers.{i}.<name>`), no layer axis
        self.per_layer = bool(spec.dense_layers)
        # megatron-core's latent-attention layers have no keys map: their keys are the spec's own module
        # names (the experts' keys are the grouped ones all the same)
        self.mla_naming = "te" if opts.megatron_spec == "te" else "local"

    def _naming(self, param: Row, layer: ModelSpec) -> str:
        return self.mla_naming if layer.mla and not param.expert else "dist"

    def _layer_key(self, param: Row, layer: ModelSpec, i: int) -> str:
        rel = param.name_for(self._naming(param, layer), layer).replace("{e}", "")
        return f"decoder.layers.{i}.{rel}" if self.per_layer else f"decoder.layers.{rel}"

    def _layer_shape(self, param: Row, layer: ModelSpec) -> tuple[int, ...]:
        lead = (layer.experts,) if param.expert else ()
        return (*(() if self.per_layer else (self.spec.layers,)), *lead, *stored_shape(param, self.row_spec))

    def _dtype(self, param: Row) -> torch.dtype:
        """The stored dtype: a buffer megatron-core keeps in fp32 (expert_bias) stays fp32."""
        return torch.float32 if all(vocab.kept_fp32(c) for c in param.canon) else self.dtype

    def files(self) -> list[PlannedFile]:
        numel = sum(torch.Size(s).numel() for s in self.spec.canonical_shapes().values())
        ranks = self.opts.tp
        return [PlannedFile(f"{self.iter_dir}/__{r}_0.distcp", 0, numel * self.dtype.itemsize // ranks) for r in range(ranks)] + [
            PlannedFile(f"{self.iter_dir}/.metadata", 0, 0), PlannedFile(f"{self.iter_dir}/common.pt", 0, 0),
            PlannedFile(f"{self.iter_dir}/metadata.json", 0, 0), PlannedFile(TRACKER, 0, 0)]

    def open(self, folder) -> None:  # type: ignore[no-untyped-def]
        super().open(folder)
        (folder / self.iter_dir).mkdir(parents=True)
        self.dcp = DcpStreamWriter(folder / self.iter_dir)
        spec = self.spec
        for param, _ in mg.global_params(spec):
            self.dcp.declare(param.name_for("local", spec), self.dtype, stored_shape(param, self.row_spec))
        for i in range(spec.layers) if self.per_layer else [0]:
            layer = spec.layer_spec(i)
            for param in mg.layer_params(layer, self.mla_naming if layer.mla else "dist"):
                self.dcp.declare(self._layer_key(param, layer, i), self._dtype(param), self._layer_shape(param, layer))
        for k in range(spec.mtp):  # one key per MTP module and tensor (no layer axis), experts grouped
            top, layer = mg.MTP_PREFIX.format(k=k), spec.mtp_spec()
            for param in mg.MTP_PARAMS:
                self.dcp.declare(top + param.name, self.dtype, stored_shape(param, self.row_spec))
            for param in mg.layer_params(layer, self.mla_naming if layer.mla else "dist"):
                lead = (layer.experts,) if param.expert else ()
                self.dcp.declare(self._mtp_key(param, layer, k), self._dtype(param), (*lead, *stored_shape(param, self.row_spec)))

    def _mtp_key(self, param: Row, layer: ModelSpec, k: int) -> str:
        return mg.MTP_PREFIX.format(k=k) + mg.MTP_LAYER + param.name_for(self._naming(param, layer), layer).replace("{e}", "")

    def _chunks(self, key: str, param: Row, canon: list[torch.Tensor], lead: tuple[int, ...]) -> None:
        assert self.dcp is not None
        for b, ((offsets, _), piece) in enumerate(stored_boxes(param, canon, self.row_spec, self.opts.tp)):
            piece = piece.reshape((1,) * len(lead) + tuple(piece.shape))
            self.dcp.add_chunk(key, (*lead, *offsets), piece.to(self._dtype(param)), rank=b % self.opts.tp)

    def write(self, group: int, tensors: dict[str, torch.Tensor]) -> None:
        assert self.dcp is not None
        spec = self.spec
        if group == PRE or group == spec.layers:
            stage = "first" if group == PRE else "last"
            for param, where in mg.global_params(spec):
                if where == stage:
                    self._chunks(param.name_for("local", spec), param, [tensors[c] for c in param.canon], ())
            return
        if group > spec.layers:
            self._write_mtp(group - spec.layers - 1, tensors)
            return
        i, L = group, spec.layers
        layer = spec.layer_spec(i)
        at = () if self.per_layer else (i,)
        for param in mg.layer_params(layer, self.mla_naming if layer.mla else "dist"):
            for e in range(layer.experts) if param.expert else [None]:
                canon = [tensors[f"layers.{i}." + c.format(e=e)] for c in param.canon]
                self._chunks(self._layer_key(param, layer, i), param, canon, at if e is None else (*at, e))
        empty = torch_bytes([None])
        prefix, where = (f"decoder.layers.{i}.", ("0", "1")) if self.per_layer else ("decoder.layers.", (str(i), str(L)))
        for module in extra_state_modules(layer):
            self.dcp.add_bytes(f"{prefix}{module}._extra_state/shard_{where[0]}_{where[1]}", empty)
        if layer.moe:
            for module in EXTRA_STATE_EXPERTS:
                for e in range(layer.experts):
                    offsets, sizes = (str(e), str(layer.experts)) if self.per_layer else (f"{i}.{e}", f"{L}.{layer.experts}")
                    self.dcp.add_bytes(f"{prefix}{module}._extra_state/shard_{offsets}_{sizes}", empty)

    def _write_mtp(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        """MTP module k: its norms and projection, then its layer (the embedding and head are the model's)."""
        top, layer, at = mg.MTP_PREFIX.format(k=k), self.spec.mtp_spec(), f"mtp.{k}."
        for param in mg.MTP_PARAMS:
            self._chunks(top + param.name, param, [tensors[at + c] for c in param.canon], ())
        for param in mg.layer_params(layer, self.mla_naming if layer.mla else "dist"):
            for e in range(layer.experts) if param.expert else [None]:
                canon = [tensors[at + c.format(e=e)] for c in param.canon]
                self._chunks(self._mtp_key(param, layer, k), param, canon, () if e is None else (e,))
        assert self.dcp is not None
        empty, inner = torch_bytes([None]), top + mg.MTP_LAYER
        for module in extra_state_modules(layer):
            self.dcp.add_bytes(f"{inner}{module}._extra_state/shard_0_1", empty)
        self.dcp.add_bytes(f"{top}eh_proj._extra_state/shard_0_1", empty)
        for module in EXTRA_STATE_EXPERTS if layer.moe else ():
            for e in range(layer.experts):
                self.dcp.add_bytes(f"{inner}{module}._extra_state/shard_{e}_{layer.experts}", empty)

    def close(self) -> None:
        assert self.dcp is not None and self.folder is not None
        self.dcp.finish()
        folder = self.folder / self.iter_dir
        save_to({"args": self.args, "checkpoint_version": 3.0, "iteration": self.opts.iteration}, folder / "common.pt")
        (folder / "metadata.json").write_text(json.dumps(METADATA_JSON))  # completion marker
        (self.folder / TRACKER).write_text(f"{self.opts.iteration}\n")

    def abort(self) -> None:
        if self.dcp is not None:
            self.dcp.close_files()
