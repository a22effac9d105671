"""HF families beyond the Llama style, one rules module each; importing registers them.

A family module holds its HF name table (`HfParam` rows with typed layouts) and the two
functions between its config.json and `ModelSpec`. `rules/hf.py` dispatches on `spec.family`.
"""

from __future__ import annotations

from ..hf import HF_FAMILIES, HfFamily
from . import apertus, bloom, falcon, gpt2  # noqa: F401 - registration
from .common import one_of, rope_parameters


def family_for_model_type(model_type: str) -> HfFamily | None:
    for family in HF_FAMILIES.values():
        if model_type in family.model_types:
            return family
    return None


__all__ = ["HF_FAMILIES", "HfFamily", "family_for_model_type", "one_of", "rope_parameters"]
