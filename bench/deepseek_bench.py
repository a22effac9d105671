"""A DeepSeek-shaped release converted in bounded memory.

    python -m bench.deepseek_bench [--quick] [--workdir DIR] [--keep] [--workers N] [--json OUT]

Generates, one layer at a time, a DeepSeek-V3-shaped HF folder stored as the release is: FP8
e4m3 linears with 128×128 block scales (`weight_scale_inv`), bf16 norms, router and embeddings,
an fp32 correction bias; 64 routed experts and a shared one per MoE layer, the first layer dense;
one safetensors file per layer plus the index. Then measures `convert --to hf` (FP8 -> bf16, each
weight dequantized as it is read) in its own process, cold cache, against the bench's budget:
peak RSS <= 3 × the largest layer (bf16, dequantized) + 400 MB. Names and shapes come from the
family table (`families.hf_entries`), so the folder is what ckptscope and transformers read.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bench.run import MB, RSS_LAYERS, RSS_SLACK, child, data_bytes, run_measured
from ckptscope.converters import families
from ckptscope.converters.spec import ModelSpec

QUANTIZED = re.compile(r"\.(self_attn\.\w+_proj(_with_mqa)?|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj)\.weight$")
BLOCK = 128


def config(quick: bool) -> dict[str, Any]:
    hidden = 1024 if quick else 2048
    return {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 32000, "hidden_size": hidden,
            "intermediate_size": 4 * hidden, "moe_intermediate_size": hidden // 4 if quick else 512, "num_hidden_layers": 3 if quick else 5,
            "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": 384, "kv_lora_rank": 256, "qk_rope_head_dim": 64,
            "qk_nope_head_dim": 128, "v_head_dim": 128, "n_routed_experts": 64, "num_experts_per_tok": 6, "n_shared_experts": 1,
            "n_group": 8, "topk_group": 4, "first_k_dense_replace": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
            "num_nextn_predict_layers": 0, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "rope_interleave": True, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": [BLOCK, BLOCK]}}


def _quantized(shape: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = (torch.randn(shape, generator=gen) * 0.5).to(torch.float8_e4m3fn)
    scales = torch.rand(math.ceil(shape[0] / BLOCK), math.ceil(shape[1] / BLOCK), generator=gen) * 0.02
    return weight, scales


def generate(folder: Path, cfg: dict[str, Any]) -> ModelSpec:
    """The release-shaped folder, one file per streaming group (embedding, each layer, head)."""
    spec = families.spec_from_hf_config(cfg)
    shapes = spec.canonical_shapes()
    gen = torch.Generator().manual_seed(0)
    by_group: dict[int, dict[str, torch.Tensor]] = {}
    weight_map: dict[str, str] = {}
    entries = families.hf_entries(spec)
    last = max(e.group for e in entries)
    for entry in entries + [None]:  # type: ignore[operator]
        group = entry.group if entry is not None else last + 1
        for done in [g for g in by_group if g < group]:  # a group is complete: write it and free it
            name = f"model-{done + 1:05d}.safetensors"
            save_file(by_group.pop(done), str(folder / name), metadata={"format": "pt"})
        if entry is None:
            break
        shape = entry.op.shape([shapes[c] for c in entry.canon], spec)
        tensors = by_group.setdefault(entry.group, {})
        if QUANTIZED.search(entry.name):
            tensors[entry.name], tensors[entry.name + "_scale_inv"] = _quantized(shape, gen)
        elif entry.name.endswith("e_score_correction_bias"):
            tensors[entry.name] = torch.randn(shape, generator=gen) * 0.01
        else:
            tensors[entry.name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        for n in tensors:
            weight_map[n] = f"model-{entry.group + 1:05d}.safetensors"
    total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return spec


def largest_layer_bytes(spec: ModelSpec) -> int:
    """The largest streaming group as written (bf16, dequantized)."""
    return max(sum(math.prod(s) for s in spec.layer_shapes(i).values()) for i in range(spec.layers)) * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hidden 1024, 3 layers (≈0.2 GB FP8)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-drop-caches", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/deepseek[-quick].json")
    opts = parser.parse_args()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="ckptscope-deepseek-bench-"))
    src, out = work / "release", work / "out"
    try:
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        cfg = config(opts.quick)
        spec = generate(src, cfg)
        layer = largest_layer_bytes(spec)
        shutil.rmtree(out, ignore_errors=True)
        ours = run_measured(child("ours", str(src), str(out), "hf", "--workers", str(opts.workers)), not opts.no_drop_caches)
        budget = RSS_LAYERS * layer + RSS_SLACK
        result = {"command": "python -m bench.deepseek_bench" + (" --quick" if opts.quick else ""),
                  "model": {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "n_routed_experts", "moe_intermediate_size",
                                                "first_k_dense_replace")},
                  "source_bytes": data_bytes(src), "output_bytes": data_bytes(out), "largest_layer_bytes": layer,
                  "seconds": ours["seconds"], "peak_rss": ours["peak_rss"], "base_rss": ours.get("base_rss"),
                  "cold_cache": ours["cold_cache"], "peak_budget_bytes": budget, "within_budget": ours["peak_rss"] <= budget}
        print(f"DeepSeek-shaped FP8 release -> bf16 HF: {result['source_bytes'] / MB:.0f} MiB -> {result['output_bytes'] / MB:.0f} MiB "
              f"in {ours['seconds']:.1f} s; peak RSS {ours['peak_rss'] / MB:.0f} MiB, largest layer {layer / MB:.0f} MiB, "
              f"budget {budget / MB:.0f} MiB: {'ok' if result['within_budget'] else 'MISS'}")
        target = opts.json or Path(__file__).parent / "results" / ("deepseek-quick.json" if opts.quick else "deepseek.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if opts.workdir is None and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
