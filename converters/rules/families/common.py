"""Helpers shared by the family rules modules."""

from __future__ import annotations

from typing import Any

from ...spec import ModelSpec, SpecError, hf_dtype
from ..hf import HfParam


def rope_parameters(spec: ModelSpec) -> dict[str, Any]:
    """transformers-5 `rope_parameters` for a spec (default type unless it carries a scaling)."""
    params: dict[str, Any] = {"rope_type": "default"}
    if spec.rope_scaling:
        params.update(spec.rope_scaling)
        params["rope_type"] = params.pop("type", params.get("rope_type", "default"))
    params["rope_theta"] = spec.rope_theta
    return params


def one_of(value: Any, table: dict[str, str], what: str) -> str:
    """Translate a config string through `table`, refusing what the converter cannot model."""
    if value not in table:
        raise SpecError(f"{what} {value!r} is not supported (supported: {', '.join(table)})")
    return table[value]


def hf_common(config: dict[str, Any]) -> dict[str, Any]:
    """ModelSpec fields every family reads the same way from config.json."""
    return {"dtype": hf_dtype(config), "bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id"),
            "vocab_note": "from config.json"}


def lm_head(spec: ModelSpec) -> bool:
    return not spec.tied


def first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of several spellings a config may use (e.g. `n_embd` / `hidden_size`)."""
    for name in names:
        if config.get(name) is not None:
            return config[name]
    if default is None:
        raise SpecError(f"config.json lacks {' / '.join(names)}")
    return default


__all__ = ["first", "hf_common", "lm_head", "one_of", "rope_parameters"]


# The end of a `transformer.h`-style model (GPT-2, BLOOM, Falcon): final LayerNorm with bias and
# the LM head unless it is tied to the embedding.
LN_F_AND_HEAD = (
    HfParam("transformer.ln_f.weight", ("final_norm",)),
    HfParam("transformer.ln_f.bias", ("final_norm.bias",)),
    HfParam("lm_head.weight", ("lm_head",), when=lm_head),
)
