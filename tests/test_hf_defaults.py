"""config.json without transformers (issue 17): for every registered family and its sample
configs, the config.json built from the defaults table equals, field by field, the one
transformers' own config class writes; the table equals a fresh regeneration from the
installed transformers (an upgrade is caught here); and building one imports no transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import transformers as t

from ckptscope.converters import families
from ckptscope.converters.families import hf_defaults

from .test_families_registry import CASES

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
# the families tests/test_families_registry.py does not cover (tests/test_families.py's kinds), and variants
MORE = {
    "gpt2": lambda t: t.GPT2Config(vocab_size=300, n_embd=64, n_layer=4, n_head=8, n_positions=128, bos_token_id=0, eos_token_id=0),
    "gpt2-inner": lambda t: t.GPT2Config(vocab_size=300, n_embd=64, n_layer=4, n_head=8, n_inner=96, tie_word_embeddings=False),
    "bloom": lambda t: t.BloomConfig(vocab_size=300, hidden_size=64, n_layer=4, n_head=8),
    "falcon-7b": lambda t: t.FalconConfig(num_hidden_layers=4, multi_query=True, vocab_size=300, hidden_size=64, num_attention_heads=8),
    "falcon-40b": lambda t: t.FalconConfig(num_hidden_layers=4, new_decoder_architecture=True, num_kv_heads=2, vocab_size=300,
                                           hidden_size=64, num_attention_heads=8),
    "falcon-seq": lambda t: t.FalconConfig(num_hidden_layers=4, multi_query=False, parallel_attn=False, bias=True,
                                           tie_word_embeddings=False, vocab_size=300, hidden_size=64, num_attention_heads=8),
    "llama": lambda t: t.LlamaConfig(num_key_value_heads=2, **SMALL),
    "llama3": lambda t: t.LlamaConfig(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                                       "rope_theta": 5e5}, **SMALL),
    "apertus": lambda t: t.ApertusConfig(num_key_value_heads=2, **SMALL),
    "qwen2": lambda t: t.Qwen2Config(num_key_value_heads=2, **SMALL),
    "qwen2-window": lambda t: t.Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1, **SMALL),
    "mixtral": lambda t: t.MixtralConfig(num_key_value_heads=2, num_local_experts=4, **SMALL),
    "mistral-yarn": lambda t: t.MistralConfig(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                                               "original_max_position_embeddings": 64}, **SMALL),
}
ALL = {**{kind: make for kind, (make, _) in CASES.items()}, **MORE}


def _json(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True))  # as the HF writer writes it


@pytest.fixture(scope="module")
def specs() -> dict:
    return {kind: families.spec_from_hf_config(make(t).to_dict()) for kind, make in ALL.items()}


def test_every_family_has_a_sample(specs: dict) -> None:
    assert {spec.family for spec in specs.values()} == set(families.FAMILIES)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_config_json_equals_transformers_own(specs: dict, kind: str) -> None:
    spec = specs[kind]
    ours = _json(families.hf_config_from_spec(spec))
    with hf_defaults.from_transformers():
        theirs = _json(families.hf_config_from_spec(spec))
    assert ours.keys() == theirs.keys(), sorted(ours.keys() ^ theirs.keys())
    for key in theirs:
        assert ours[key] == theirs[key], key


def test_table_is_current_for_the_installed_transformers() -> None:
    assert hf_defaults.TABLE.read_text() == hf_defaults.render(hf_defaults.generate()), \
        "rerun `python -m ckptscope.converters.families.hf_defaults --write`"


def test_config_json_imports_no_transformers() -> None:
    code = ("import sys, json\nfrom ckptscope.converters import families\n"
            f"spec = families.spec_from_hf_config(json.loads({json.dumps(json.dumps(t.Qwen3Config(**SMALL).to_dict()))}))\n"
            "config = families.hf_config_from_spec(spec)\n"
            "print(json.dumps([config['model_type'], [m for m in ('transformers', 'torch') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    assert json.loads(out) == ["qwen3", []]
