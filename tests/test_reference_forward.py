"""The reference forward pass agrees with transformers' own models on tiny random weights."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ckptscope.converters.reference import reference_logits
from ckptscope.converters.families import spec_from_hf_config
from ckptscope.converters.spec import ModelSpec

TOL = 1e-5
SMALL = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 64}

# HF module path (after `model.layers.{i}.`) -> canonical name (after `layers.{i}.`)
LAYER_NAMES = {
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "self_attn.q_norm": "attn.q_norm",
    "self_attn.k_norm": "attn.k_norm",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
    "mlp.gate": "router",  # Mixtral's router
}
TOP_NAMES = {"model.embed_tokens": "embed", "model.norm": "final_norm", "lm_head": "lm_head"}


def canonical(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF state_dict -> canonical tensors (Mixtral's fused experts split per expert; no head when tied)."""
    out: dict[str, torch.Tensor] = {}
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        assert torch.equal(state.pop("lm_head.weight"), state["model.embed_tokens.weight"])
    for key, t in state.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
        if m and m.group(2).startswith("mlp.experts."):
            _split_experts(out, f"layers.{m.group(1)}.", m.group(2).removeprefix("mlp.experts."), t)
            continue
        module, _, leaf = (m.group(2) if m else key).rpartition(".")
        name = f"layers.{m.group(1)}.{LAYER_NAMES[module]}" if m else TOP_NAMES[module]
        out[name if leaf == "weight" else f"{name}.{leaf}"] = t
    return out


def _split_experts(out: dict[str, torch.Tensor], prefix: str, what: str, t: torch.Tensor) -> None:
    """transformers 5 keeps experts fused: gate_up_proj [E, 2f, h] = cat(gate, up), down_proj [E, h, f]."""
    for e in range(t.shape[0]):
        if what == "gate_up_proj":
            gate, up = t[e].chunk(2, dim=0)
            out[f"{prefix}experts.{e}.gate"], out[f"{prefix}experts.{e}.up"] = gate, up
        else:
            out[f"{prefix}experts.{e}.down"] = t[e]


def randomize(model: torch.nn.Module) -> None:
    """Give norms, biases and matrices non-trivial values so every term shows up in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)


def build(config_cls: str, model_cls: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**SMALL, **kwargs})
    model = getattr(transformers, model_cls)(config).eval()
    randomize(model)
    return model


def input_ids(vocab: int, batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))


def check(model: torch.nn.Module, spec: ModelSpec, *, dtype: torch.dtype = torch.float32, tol: float = TOL) -> None:
    tensors = canonical(model)
    assert set(tensors) == set(spec.canonical_shapes()), "test mapping and spec disagree on names"
    for name, shape in spec.canonical_shapes().items():
        assert tuple(tensors[name].shape) == shape, name
    ids = input_ids(spec.vocab)
    with torch.no_grad():
        expected = model(ids).logits
        got = reference_logits(spec, tensors.__getitem__, ids, dtype=dtype)
    assert got.shape == (2, 16, spec.vocab) and got.dtype == dtype
    assert expected.abs().max() > 0.5, "logits too small for the comparison to mean anything"
    diff = (got - expected).abs().max().item()
    print(f"max abs diff {diff:.3g}")
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"


def hf_spec(model: torch.nn.Module) -> ModelSpec:
    return spec_from_hf_config(model.config.to_dict())


# ----- dense families ----------------------------------------------------------------------------
CASES: dict[str, tuple[str, str, dict]] = {
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    "llama_mha_tied": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 2, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8}}),
    "linear_rope": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 2, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "llama_biases": ("LlamaConfig", "LlamaForCausalLM",
                     {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2, "head_dim": 16}),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": 5}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case: str) -> None:
    config_cls, model_cls, kwargs = CASES[case]
    model = build(config_cls, model_cls, **kwargs)
    spec = hf_spec(model)
    if case == "llama3_rope":  # the scaling must really change the frequencies at this size
        assert spec.rope_scaling and spec.rope_scaling["rope_type"] == "llama3"
    if case == "mistral_window":
        assert spec.sliding_window == 5
    check(model, spec)


@pytest.mark.parametrize("case, change", [("llama3_rope", {"rope_scaling": None}),
                                          ("linear_rope", {"rope_scaling": None}),
                                          ("mistral_window", {"sliding_window": None})])
def test_feature_changes_logits(case: str, change: dict) -> None:
    """The cases above would catch a wrong or missing feature: dropping it moves the logits a lot."""
    config_cls, model_cls, kwargs = CASES[case]
    model = build(config_cls, model_cls, **kwargs)
    spec, ids = hf_spec(model), input_ids(model.config.vocab_size)
    with torch.no_grad():
        expected = model(ids).logits
        without = reference_logits(spec.with_(**change), canonical(model).__getitem__, ids)
    assert (without - expected).abs().max() > 1e-2


def test_qwen3_qk_norm() -> None:
    model = build("Qwen3Config", "Qwen3ForCausalLM", num_key_value_heads=2, head_dim=16)
    c = model.config
    spec = ModelSpec(family="qwen2", layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
                     kv_heads=c.num_key_value_heads, head_dim=c.head_dim, ffn=c.intermediate_size, vocab=c.vocab_size,
                     norm_eps=c.rms_norm_eps, rope_theta=c.rope_parameters["rope_theta"], tied=c.tie_word_embeddings,
                     qkv_bias=c.attention_bias, o_bias=c.attention_bias, qk_norm=True)
    check(model, spec)


def test_layernorm_partial_rotary_stablelm() -> None:
    """StableLM: LayerNorm with bias, q/k/v biases and rotate-half RoPE on the first 25% of head dims."""
    model = build("StableLmConfig", "StableLmForCausalLM", num_key_value_heads=2, use_qkv_bias=True,
                  partial_rotary_factor=0.25)
    c = model.config
    percent = c.rope_parameters["partial_rotary_factor"]
    assert percent == 0.25
    spec = ModelSpec(family="llama", layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
                     kv_heads=c.num_key_value_heads, head_dim=c.hidden_size // c.num_attention_heads,
                     ffn=c.intermediate_size, vocab=c.vocab_size, norm="layernorm", norm_eps=c.layer_norm_eps,
                     rope_theta=c.rope_parameters["rope_theta"], rotary_percent=percent, qkv_bias=True)
    check(model, spec)


def test_mixtral_moe() -> None:
    model = build("MixtralConfig", "MixtralForCausalLM", num_key_value_heads=2, num_local_experts=4,
                  num_experts_per_tok=2)
    spec = hf_spec(model)
    assert spec.experts == 4 and spec.topk == 2
    check(model, spec)


def test_float64_compute() -> None:
    """`dtype` sets the compute precision; against HF's eager attention in fp64 the ops agree one for one.

    (HF's RMSNorm keeps its statistics in fp32 even for fp64 input, which rounds away any fp64-level
    difference such as SDPA's; with eager attention there is none to round.)"""
    model = build("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2, attn_implementation="eager").double()
    check(model, hf_spec(model), dtype=torch.float64, tol=1e-12)


def test_unsupported_rope_scaling() -> None:
    model = build("LlamaConfig", "LlamaForCausalLM")
    spec = hf_spec(model).with_(rope_scaling={"rope_type": "longrope", "factor": 4.0})
    with pytest.raises(ValueError, match="longrope"):
        reference_logits(spec, canonical(model).__getitem__, input_ids(spec.vocab))


# ----- laziness ----------------------------------------------------------------------------------
def _recording(tensors: dict[str, torch.Tensor]) -> tuple[Callable[[str], torch.Tensor], list[str]]:
    calls: list[str] = []

    def get(name: str) -> torch.Tensor:
        calls.append(name)
        return tensors[name]

    return get, calls


def _layer(name: str) -> int | None:
    m = re.match(r"layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("case", ["llama_biases", "llama_mha_tied", "mixtral"])
def test_get_is_lazy_and_in_layer_order(case: str) -> None:
    if case == "mixtral":
        model = build("MixtralConfig", "MixtralForCausalLM", num_key_value_heads=2, num_local_experts=4)
    else:
        config_cls, model_cls, kwargs = CASES[case]
        model = build(config_cls, model_cls, **kwargs)
    spec = hf_spec(model)
    get, calls = _recording(canonical(model))
    reference_logits(spec, get, input_ids(spec.vocab))

    layers = [n for n in map(_layer, calls) if n is not None]
    assert layers == sorted(layers), "a layer's tensor was requested after a later layer's"
    assert calls[0] == "embed" and _layer(calls[-1]) is None
    # every tensor once, except a tied `embed`, re-read for the head instead of held across layers
    repeats = sorted({n for n in calls if calls.count(n) > 1})
    assert repeats == (["embed"] if spec.tied else [])
    if spec.tied:
        assert calls.count("embed") == 2 and calls[-1] == "embed"
    # all weights are used (with 32 tokens routed top-2 over 4 experts, every expert is hit)
    assert set(calls) == set(spec.canonical_shapes())
