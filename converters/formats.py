"""The format registry: every checkpoint format the converter reads or writes, declared once.

A format names the inspector kinds its source reads, its source and writer classes, the target
options (`options.TARGET_OPTIONS`) that apply to it, and what it cannot hold. The CLI's `--to`
choices, `check --to`, the wizard's target list and option fields are rendered from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import TARGET_OPTIONS, Option
from .sources import SOURCES
from .sources.base import CanonicalSource
from .writers import WRITERS
from .writers.base import Writer


@dataclass(frozen=True)
class Format:
    name: str  # the `--to` name
    label: str
    doc: str
    writer: type[Writer] | None  # None: read only
    reads: tuple[str, ...] = ()  # inspector kinds whose source this format is
    whole_model: bool = False  # one copy of the model: no TP / PP / EP

    @property
    def target_options(self) -> tuple[Option, ...]:
        return tuple(o for o in TARGET_OPTIONS if o.applies_to(self.name))

    def sources(self) -> list[type[CanonicalSource]]:
        return [SOURCES[k] for k in self.reads if k in SOURCES]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("hf", "Hugging Face (safetensors)", "sharded safetensors + index, config.json, generation_config.json, tokenizer",
           WRITERS["hf"], reads=("hf",), whole_model=True),
    Format("megatron", "Megatron-LM torch", "iter_*/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt (local, TE or Megatron-LLM names)",
           WRITERS["megatron"], reads=("megatron-torch",)),
    Format("megatron-dist", "Megatron-Core torch_dist", "metadata.json, .metadata, common.pt, __R_N.distcp",
           WRITERS["megatron-dist"], reads=("megatron-dist",)),
    Format("nxd", "NxD Training (Neuron)", "<tag>/model/dp_rank_00_tp_rank_TT_pp_rank_PP.pt, plain or xser", WRITERS["nxd"],
           reads=("nxd",)),
    Format("deepspeed", "DeepSpeed / Megatron-DeepSpeed", "global_stepN/ model states, pipeline layer files, ZeRO partitions",
           None, reads=("deepspeed",)),
    Format("meta", "Meta original", "consolidated.NN.pth + params.json", None, reads=("meta",)),
)}

TARGETS: dict[str, Format] = {name: f for name, f in FORMATS.items() if f.writer is not None}


def target(name: str) -> Format:
    """The target format `name`; `KeyError` lists the choices."""
    if name not in TARGETS:
        raise KeyError(f"unknown target format {name!r} (choose from {', '.join(TARGETS)})")
    return TARGETS[name]
