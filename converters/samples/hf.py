"""Write a SampleSpec as a Hugging Face Llama / Mixtral folder that `transformers` loads.

The config comes from transformers' own config classes; the weights are the spec's canonical
tensors under HF names, written as safetensors (single or sharded with an index) or as
`pytorch_model*.bin` through `torch.save` of the state dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .spec import SampleSpec

# canonical name template -> HF name template (Llama family; Mixtral experts below)
HF_NAMES: dict[str, str] = {
    "embed": "model.embed_tokens.weight",
    "layers.{i}.input_norm": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.attn.q": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attn.k": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attn.v": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attn.o": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.post_attn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.gate": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.router": "model.layers.{i}.block_sparse_moe.gate.weight",
    "layers.{i}.experts.{e}.gate": "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
    "layers.{i}.experts.{e}.up": "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight",
    "layers.{i}.experts.{e}.down": "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}


def hf_name(canonical: str) -> str:
    parts = canonical.split(".")
    key_parts, values = [], {}
    for idx, part in enumerate(parts):
        if part.isdigit():
            slot = "i" if idx == 1 else "e"
            key_parts.append("{" + slot + "}")
            values[slot] = part
        else:
            key_parts.append(part)
    return HF_NAMES[".".join(key_parts)].format(**values)


def hf_config(spec: SampleSpec) -> dict:
    """config.json content from transformers' own config class."""
    from transformers import LlamaConfig, MixtralConfig

    common = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.moe_ffn if spec.experts else spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.d,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=spec.tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    if spec.experts:
        config = MixtralConfig(num_local_experts=spec.experts, num_experts_per_tok=spec.topk, **common)
        config.architectures = ["MixtralForCausalLM"]
    else:
        config = LlamaConfig(**common)
        config.architectures = ["LlamaForCausalLM"]
    config.dtype = str(spec.dtype).removeprefix("torch.")
    return config.to_dict()


def hf_state_dict(spec: SampleSpec) -> dict[str, torch.Tensor]:
    return {hf_name(name): spec.tensor(name, shape) for name, shape in spec.canonical_shapes().items()}


def write_hf(spec: SampleSpec, out_dir: str | Path, *, shards: int = 1, fmt: str = "safetensors") -> Path:
    """Write config.json, generation_config.json and weights (`fmt`: safetensors | bin)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(spec), indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n")
    state = hf_state_dict(spec)
    names = list(state)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    base, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map: dict[str, str] = {}
    for n, group in enumerate(groups, start=1):
        file = f"{base}.{ext}" if shards == 1 else f"{base}-{n:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k].contiguous() for k in sorted(group)}
        if fmt == "safetensors":
            save_file(part, str(out / file), metadata={"format": "pt"})
        else:
            torch.save(part, out / file)
        weight_map.update({k: file for k in group})
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / f"{base}.{ext}.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out
