"""The family registry: one module per model family, declared in `MODEL_TYPES`.

Adding a family is a module that defines `FAMILY` (see `base.Family`) plus its line here. The
rest of the converter asks this registry: which family a config.json or Megatron args describe,
the HF tensor table of a spec, the config.json to write, what Megatron cannot express. A family's
module is imported when the family is first used: recognising an HF config reads only this
table, so a conversion loads the one family it converts (issue 17: start-up).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from ..row import Row
from ..spec import ModelSpec, SpecError
from .base import Family, FusedExperts, HfEntry, MegatronTraits
from .base import hf_entries as _entries
from .common import finish_hf_config

# family name (= its module's name) -> the config.json model_type values read as it (first: the one
# written); the module's `FAMILY` declares the same name and model types (tests/test_lazy_registries.py).
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "llama": ("llama", "codellama"),
    "mistral": ("mistral",),
    "qwen2": ("qwen2",),
    "mixtral": ("mixtral",),
    "gpt2": ("gpt2",),
    "bloom": ("bloom",),
    "falcon": ("falcon", "RefinedWeb", "RefinedWebModel"),
    "apertus": ("apertus", "swissai"),
    "qwen3": ("qwen3",),
    "qwen3_moe": ("qwen3_moe",),
    "qwen2_moe": ("qwen2_moe",),
    "phi3": ("phi3",),
    "starcoder2": ("starcoder2",),
    "olmo2": ("olmo2",),
    "granite": ("granite",),
    "glm4": ("glm4",),
    "gemma": ("gemma",),
    "gemma2": ("gemma2",),
    "gemma3": ("gemma3_text",),
    "nemotron": ("nemotron",),
    "gpt_oss": ("gpt_oss",),
    "deepseek_v2": ("deepseek_v2",),
    "deepseek_v3": ("deepseek_v3", "kimi_k2"),
    "llama4": ("llama4_text", "llama4"),
}


def __getattr__(name: str) -> Any:
    """`FAMILIES`: every family by name, in table order (imports them all: the tests, Megatron recognition)."""
    if name == "FAMILIES":
        return {family_name: family(family_name) for family_name in MODEL_TYPES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# HF entries that never carry weights in any family (old checkpoints keep rotary buffers)
HF_IGNORED = (r"\.rotary_emb\.inv_freq$", r"\.attn\.(masked_)?bias$")


@functools.cache
def family(name: str) -> Family:
    """The family's `FAMILY`, its module imported on first use."""
    if name not in MODEL_TYPES:
        raise SpecError(f"model family {name!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    found: Family = importlib.import_module(f"{__name__}.{name}").FAMILY
    return found


def for_model_type(model_type: str) -> Family | None:
    name = next((name for name, types in MODEL_TYPES.items() if model_type in types), None)
    return None if name is None else family(name)


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
    return [t for types in MODEL_TYPES.values() for t in types]


def recognise_megatron(args: dict[str, Any], spec: ModelSpec) -> str:
    """The family of a Megatron checkpoint: the model type ckptscope wrote into its args, else
    the most specific registered family whose traits match the architecture."""
    written = for_model_type(str(args.get("hf_model_type") or ""))
    if written is not None:
        return written.name
    ranked = sorted(map(family, MODEL_TYPES), key=lambda f: -f.megatron.rank)
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


__all__ = ["MODEL_TYPES", "Family", "FusedExperts", "HfEntry", "MegatronTraits", "Row", "family", "for_model_type",
           "hf_config_from_spec", "hf_entries", "hf_ignored", "megatron_problems", "recognise_megatron",
           "spec_from_hf_config", "supported_model_types"]
