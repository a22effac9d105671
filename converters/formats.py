"""The format registry: every checkpoint format the converter reads or writes, declared once.

A format names the inspector kinds its source reads, its source and writer (by module path, so
that the faces can list formats without importing the engine), the target options
(`options.TARGET_OPTIONS`) that apply to it, and whether it holds the whole model. The CLI's
`--to` choices and help, `check --to`, the wizard's target list and option fields come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptscope.inspectors.lazy import attribute

from .options import TARGET_OPTIONS, Option


@dataclass(frozen=True)
class Format:
    name: str  # the `--to` name
    label: str
    doc: str
    writer: str = ""  # "module:Class" under converters.writers ("": read only)
    reads: tuple[str, ...] = ()  # inspector kinds whose source this format is
    whole_model: bool = False  # one copy of the model: no TP / PP / EP
    holds_mtp: bool = False  # multi-token-prediction modules are written (else dropped by a named rule)

    @property
    def target_options(self) -> tuple[Option, ...]:
        return tuple(o for o in TARGET_OPTIONS if o.applies_to(self.name))

    def writer_class(self) -> Any:
        return attribute(f"{__package__}.writers", self.writer)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("hf", "Hugging Face (safetensors)", "sharded safetensors + index, config.json, generation_config.json, tokenizer",
           "hf:HfWriter", reads=("hf",), whole_model=True, holds_mtp=True),
    Format("megatron", "Megatron-LM torch", "iter_*/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt (local, TE or Megatron-LLM names)",
           "megatron_torch:MegatronTorchWriter", reads=("megatron-torch",), holds_mtp=True),
    Format("megatron-dist", "Megatron-Core torch_dist", "metadata.json, .metadata, common.pt, __R_N.distcp",
           "megatron_dist:MegatronDistWriter", reads=("megatron-dist",), holds_mtp=True),
    Format("nxd", "NxD Training (Neuron)", "<tag>/model/dp_rank_00_tp_rank_TT_pp_rank_PP.pt, plain or xser",
           "nxd:NxdWriter", reads=("nxd",)),
    Format("deepspeed", "DeepSpeed / Megatron-DeepSpeed", "global_stepN/ model states, pipeline layer files, ZeRO partitions; "
           "universal checkpoints (zero/<param>/fp32.pt)", reads=("deepspeed", "deepspeed-universal")),
    Format("meta", "Meta original", "consolidated.NN.pth + params.json", reads=("meta",)),
    Format("dcp", "PyTorch DCP (FSDP / Accelerate / torchtitan)", ".metadata + __R_N.distcp, HF or torchtitan names",
           reads=("dcp",)),
)}

TARGETS: dict[str, Format] = {name: f for name, f in FORMATS.items() if f.writer}
