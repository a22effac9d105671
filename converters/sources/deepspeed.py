"""DeepSpeed and Megatron-DeepSpeed checkpoints as canonical tensors.

Three places hold the weights, one view over them:
- pipeline layer files `layer_LL-model_TT-model_states.pt` (files classified by content, so the
  microsoft, bigscience and plain `PipelineModule` index maps all work; TP shards gathered per
  parameter with the Megatron rules);
- the `module` of `mp_rank_XX_model_states.pt`, with HF names (plain DeepSpeed on an HF model:
  read as an HF folder) or Megatron names (read as Megatron `torch` legacy names);
- with `from_optimizer_fp32`, the fp32 master weights rebuilt from the ZeRO-1/2/3 optimizer
  partitions (`deepspeed_zero.py`), under the same names as the module / layer files.
The architecture comes from `--config` (an HF config.json) or the Megatron-DeepSpeed `args`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ckptscope.inspectors.dtypes import DTYPES, DType
from ckptscope.inspectors.formats.deepspeed import REBUILD_HINT
from ckptscope.inspectors.model import Checkpoint, TensorInfo

from ..rules import deepspeed as ds
from ..row import Row, gather
from ..shards import Geometry
from ..megatron_args import spec_from_megatron_args
from ..spec import ModelSpec, SpecError
from .base import PRE, Accounting, CanonicalSource, groups
from .deepspeed_zero import rebuild_fp32
from .hf import HfSource
from .megatron_torch import MegatronTorchSource

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

ZERO3_NEEDS_OPTION = ("ZeRO-3 checkpoint: the model-states files hold only partitioned placeholders; rebuild the weights "
                      "from the optimizer partitions with --from-optimizer-fp32")
LAYER_KEY_RE = re.compile(r"^(\d+|tied_modules\.[^.]+)\.(.+)$")
Expected = tuple[Row, str, str, list[str]]  # row, layer key, stored name within the layer, canonical names


def megatron_deepspeed_args(args: dict[str, Any]) -> dict[str, Any]:
    """Megatron-DeepSpeed `args` in Megatron-LM's names (GQA is `num_key_value_heads` there)."""
    out = dict(args)
    for old, new in ds.MDS_ARG_RENAMES.items():
        if out.get(old) is not None and out.get(new) is None:
            out[new] = out[old]
    if out.get("num_query_groups") and out["num_query_groups"] != out.get("num_attention_heads"):
        out.setdefault("group_query_attention", True)
    return out


def _stored_dtype(tensors: list[TensorInfo]) -> DType | None:
    for t in tensors:
        dtype = DTYPES.get(t.dtype)
        if dtype is not None and dtype.is_floating_point:
            return dtype
    return None


class DeepSpeedSource(CanonicalSource):
    kind = "deepspeed"

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec | None = None, *, true_vocab: int | None = None,
                 vocab_note: str = "", from_optimizer_fp32: bool = False) -> None:
        self.ckpt = ckpt
        folder = ckpt.path.parent if ckpt.path.is_file() else ckpt.path
        if from_optimizer_fp32:
            view = replace(ckpt, tensors=rebuild_fp32(ckpt, folder))
        elif any(o.kind == "zero3 partitioned param" for o in ckpt.objects):
            raise SpecError(ZERO3_NEEDS_OPTION)
        else:
            view = ckpt
        if not view.model_tensors():
            raise SpecError(f"no module weights and no pipeline layer files (module=None); {REBUILD_HINT}")
        self.view, self.from_optimizer = view, from_optimizer_fp32
        self.pipeline = all(LAYER_KEY_RE.match(t.global_name) for t in view.model_tensors())
        spec = spec or self._spec_from_args(true_vocab, vocab_note)
        dtype = _stored_dtype(view.model_tensors())
        self.spec = spec.with_(dtype=dtype) if dtype else spec
        self.inner: CanonicalSource | None = None
        if self.pipeline:
            self._index_pipeline()
        else:
            self.inner = self._module_source()

    # ----- architecture -------------------------------------------------------------------
    def _spec_from_args(self, true_vocab: int | None, vocab_note: str) -> ModelSpec:
        args = self.ckpt.metadata.get("args")
        if not args:
            what = "module=None" if self.ckpt.metadata.get("module_is_none") else "a plain module state_dict"
            raise SpecError(f"this DeepSpeed checkpoint carries no architecture ({what}, no Megatron-DeepSpeed args): "
                            "pass --config with the model's HF config.json")
        return spec_from_megatron_args(megatron_deepspeed_args(args), true_vocab=true_vocab, vocab_note=vocab_note)

    # ----- module in mp_rank_XX_model_states.pt --------------------------------------------
    def _module_source(self) -> CanonicalSource:
        names = [t.name for t in self.view.model_tensors()]
        if any(n.startswith("language_model.") for n in names):  # Megatron-DeepSpeed without a pipeline engine
            if self.view.parallel.pp > 1:
                raise SpecError("Megatron-named modules with PP > 1 are not supported (pipeline runs save layer files)")
            return MegatronTorchSource(self.view, self.spec)
        if self.view.parallel.tp > 1:
            raise SpecError(f"HF-named module split over {self.view.parallel.tp} model-parallel ranks: no TP rule for HF names")
        return HfSource(self.view, self.spec)

    # ----- pipeline layer files -------------------------------------------------------------
    def _index_pipeline(self) -> None:
        self.layers: dict[str, dict[str, dict[int, TensorInfo]]] = {}
        for t in self.view.model_tensors():
            key, rel = LAYER_KEY_RE.match(t.global_name).groups()  # type: ignore[union-attr]
            self.layers.setdefault(key, {}).setdefault(rel, {})[t.ranks.tp or 0] = t
        rels = [rel for layer in self.layers.values() for rel in layer]
        self.naming = "megatron" if any(m in rel for rel in rels for m in ds.MEGATRON_MARKERS) else "hf"
        roles: dict[str, list[str]] = {role: [] for role in ds.ROLE_MARKERS}
        for key, layer in self.layers.items():
            for role, markers in ds.ROLE_MARKERS.items():
                if any(m in layer for m in markers):
                    roles[role].append(key)
        self.blocks = sorted(roles["block"], key=_layer_order)
        if len(self.blocks) != self.spec.layers:
            raise SpecError(f"found {len(self.blocks)} transformer-block layer files; the architecture has {self.spec.layers} layers")
        for role in ("embed", "final_norm"):
            if len(roles[role]) != 1:
                raise SpecError(f"expected one {role} layer file, found {len(roles[role])} ({', '.join(roles[role]) or 'none'})")
        self.embed, self.final_norm = roles["embed"][0], roles["final_norm"][0]
        self.head = roles["head"][0] if roles["head"] else self.final_norm
        self.index_map = next((name for name, m in ds.LAYER_INDEX_MAPS.items()
                               if (str(m.embed), str(m.first_block)) == (self.embed, self.blocks[0] if self.blocks else "")), "custom")

    def _stored(self, param: Row, key: str) -> str:
        layer = self.layers.get(key, {})
        candidates = (param.name, *param.aliases)
        return next((c for c in candidates if c in layer), candidates[0])

    def _expected(self, group: int) -> list[Expected]:
        spec, naming = self.spec, self.naming
        if group == PRE:
            return [(p, self.embed, self._stored(p, self.embed), list(p.canon)) for p in ds.EMBED_ROWS[naming] if p.when(spec)]
        if group == spec.layers:
            rows = [(p, self.final_norm) for p in ds.FINAL_NORM_ROWS[naming] if p.when(spec)]
            rows += [(p, self.head) for p in ds.HEAD_ROWS[naming] if p.when(spec)]
            return [(p, key, self._stored(p, key), list(p.canon)) for p, key in rows]
        key = self.blocks[group]
        return [(p, key, self._stored(p, key), [f"layers.{group}.{c}" for c in p.canon])
                for p in ds.BLOCK_ROWS[naming] if p.when(spec)]

    # ----- CanonicalSource ------------------------------------------------------------------
    def read(self, group: int) -> dict[str, torch.Tensor]:
        if self.inner is not None:
            return self.inner.read(group)
        out: dict[str, torch.Tensor] = {}
        for param, key, rel, canon in self._expected(group):
            by_tp = self.layers.get(key, {}).get(rel)
            if not by_tp:
                raise SpecError(f"{self.ckpt.path}: layer file {key} has no {rel}")
            shards = [self.view.load(by_tp[tp]) for tp in sorted(by_tp)]
            out.update(zip(canon, gather(param, shards, Geometry(self.spec, len(shards)))))
        return out

    def account(self, user_ignores: Iterable[str] = ()) -> Accounting:
        if self.inner is not None:
            return self.inner.account(user_ignores)
        expected = {f"{key}.{rel}": canon for g in groups(self.spec) for _, key, rel, canon in self._expected(g)}
        acc = Accounting()
        acc.settle((t.global_name for t in self.view.model_tensors()), expected, ds.IGNORED_PATTERNS, user_ignores)
        return acc

    def notes(self) -> list[str]:
        out = ["weights rebuilt in fp32 from the ZeRO optimizer partitions" if self.from_optimizer else "module / layer-file weights"]
        if self.inner is not None:
            out += self.inner.notes()
        else:
            known = ds.LAYER_INDEX_MAPS.get(self.index_map)
            out.append(f"pipeline layer files, {self.naming} names; index map: {known.note if known else 'custom'} "
                       f"(embedding {self.embed}, blocks {self.blocks[0]}..{self.blocks[-1]}, final norm {self.final_norm})")
        return out


def _layer_order(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (-1, key)
