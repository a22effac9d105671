"""The family registry: one module per model family, listed in `MODULES`.

Adding a family is a module that defines `FAMILY` (see `base.Family`) plus its name here. The
rest of the converter asks this registry: which family a config.json or Megatron args describe,
the HF tensor table of a spec, the config.json to write, what Megatron cannot express.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import Family, FusedExperts, HfEntry, MegatronTraits
from .base import hf_entries as _entries
from .common import finish_hf_config

MODULES = (
    "llama", "mistral", "qwen2", "mixtral", "gpt2", "bloom", "falcon", "apertus",
    "qwen3", "qwen3_moe", "qwen2_moe", "phi3", "starcoder2", "olmo2", "granite", "glm4",
    "gemma", "gemma2", "gemma3", "nemotron", "gpt_oss", "deepseek_v2", "deepseek_v3",
    "llama4",
)

FAMILIES: dict[str, Family] = {}
for _module in MODULES:
    _family: Family = importlib.import_module(f"{__name__}.{_module}").FAMILY
    FAMILIES[_family.name] = _family

# HF entries that never carry weights in any family (old checkpoints keep rotary buffers)
HF_IGNORED = (r"\.rotary_emb\.inv_freq$", r"\.attn\.(masked_)?bias$")


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SpecError(f"model family {name!r} is not supported (supported: {', '.join(FAMILIES)})") from None


def for_model_type(model_type: str) -> Family | None:
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def spec_from_hf_config(config: dict[str, Any]) -> ModelSpec:
    """Architecture from an HF config.json, by its `model_type`."""
    model_type = str(config.get("model_type", ""))
    found = for_model_type(model_type)
    if found is None:
        raise SpecError(f"HF model_type {model_type!r} is not supported yet (supported: {', '.join(supported_model_types())})")
    return found.spec_from_config(config)


def hf_config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    """config.json built by transformers' own config class for the family (loadable as is)."""
    return finish_hf_config(family(spec.family).config_from_spec(spec), spec)


def supported_model_types() -> list[str]:
    return [t for f in FAMILIES.values() for t in f.model_types]


def recognise_megatron(args: dict[str, Any], spec: ModelSpec) -> str:
    """The family of a Megatron checkpoint: the model type ckptscope wrote into its args, else
    the most specific registered family whose traits match the architecture."""
    written = for_model_type(str(args.get("hf_model_type") or ""))
    if written is not None:
        return written.name
    ranked = sorted(FAMILIES.values(), key=lambda f: -f.megatron.rank)
    for candidate in ranked:
        if candidate.megatron.match is not None and candidate.megatron.match(args, spec):
            return candidate.name
    raise SpecError("no supported model family has this architecture (Megatron args); pass --config with an HF config.json")


def megatron_problems(spec: ModelSpec) -> list[str]:
    """Features of this model that megatron-core cannot express (the plan refuses such targets)."""
    return family(spec.family).megatron.problems(spec)


def hf_entries(spec: ModelSpec) -> list[HfEntry]:
    """Every stored HF tensor of the model, in model order."""
    return _entries(family(spec.family), spec)


def hf_ignored(spec: ModelSpec) -> tuple[str, ...]:
    """Regexes of stored HF entries that carry no weights for this model's family."""
    found = family(spec.family)
    return HF_IGNORED + found.ignored + found.ignored_for(spec)


__all__ = ["FAMILIES", "Family", "FusedExperts", "HfEntry", "MegatronTraits", "Row", "family", "for_model_type",
           "hf_config_from_spec", "hf_entries", "hf_ignored", "megatron_problems", "recognise_megatron",
           "spec_from_hf_config", "supported_model_types"]
