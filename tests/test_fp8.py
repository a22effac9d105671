"""DeepSeek-V3 checkpoints as released: linear weights stored as float8_e4m3fn with one float32
multiplier per block (`weight_scale_inv`, `quantization_config.weight_block_size`).

The fixture quantizes a tiny random DeepSeek-V3 with a block encoder written here (scale = block
amax / 448, the E4M3 maximum; `W_fp8 = W / scale`), saves it with the release's names and
`quantization_config`, and checks ckptscope's dequantization against transformers' own:
transformers loads the quantized folder (`FineGrainedFP8Config(dequantize=True)`), ckptscope
converts it to a plain bf16 HF folder, and the two models hold the same bits and give the same
logits. Partial edge blocks (V3's 576-row `kv_a_proj_with_mqa` in 128-blocks) follow DeepSeek's
definition: each block's scale covers the rows and columns that exist.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ckptscope.converters.fp8 import dequantize
from safetensors.torch import load_file, save_file

from .helpers import convert_to, hf_state

BLOCK = (8, 8)  # every tiny dimension below is a multiple, as 128 divides most of V3's
QUANTIZED = re.compile(r"\.(self_attn\.\w+_proj(_with_mqa)?|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj)\.weight$")
E4M3_MAX = 448.0


def quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, cols] -> (float8_e4m3fn weight, float32 scales [ceil(rows/bm), ceil(cols/bn)])."""
    bm, bn = block
    rows, cols = weight.shape
    scales = torch.empty(math.ceil(rows / bm), math.ceil(cols / bn))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    w = weight.float()
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            part = w[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            scales[i, j] = part.abs().amax().clamp(min=1e-12) / E4M3_MAX
            q[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn] = (part / scales[i, j]).to(torch.float8_e4m3fn)
    return q, scales


def _model() -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    config = t.DeepseekV3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16,
                                v_head_dim=16, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
                                n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, num_mtp_layers=0,
                                dtype="bfloat16")
    model = t.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.add_(0.1 * torch.randn_like(b))
    return model.to(torch.bfloat16).eval()


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A tiny DeepSeek-V3 saved as the release is: FP8 linears with block scales, bf16 elsewhere."""
    folder = tmp_path_factory.mktemp("deepseek-v3-fp8")
    _model().save_pretrained(folder)
    state: dict[str, torch.Tensor] = {}
    for name, value in load_file(str(folder / "model.safetensors")).items():
        if QUANTIZED.search(name):
            state[name], state[name + "_scale_inv"] = quantize(value, BLOCK)
        elif name.endswith("e_score_correction_bias"):  # the release keeps it in fp32, finer than bf16
            state[name] = value.float() + 1e-4 * torch.randn(value.shape)
        else:
            state[name] = value
    assert sum(n.endswith("_scale_inv") for n in state) > 40
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(BLOCK)}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _transformers_dequantized(folder: Path) -> torch.nn.Module:
    import transformers as t

    return t.AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=t.FineGrainedFP8Config(dequantize=True),
                                                  dtype=torch.bfloat16).eval()


def test_dequantize_matches_transformers_bit_for_bit() -> None:
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    torch.manual_seed(1)
    weight = (torch.randn(256, 384) * 100).to(torch.float8_e4m3fn)
    scales = torch.rand(2, 3) * 1e-2
    for dtype in (torch.bfloat16, torch.float32):
        ours = dequantize(weight, scales, (128, 128), dtype)
        assert ours.dtype == dtype and torch.equal(ours, Fp8Dequantize(None)._dequantize_one(weight, scales, output_dtype=dtype))


def test_partial_edge_blocks_follow_deepseek() -> None:
    """576 rows in 128-blocks: 5 block rows, the last covering 64 (transformers derives the block
    from the scale grid and cannot read these; DeepSeek's weight_dequant scales what exists)."""
    torch.manual_seed(2)
    weight, scales = (torch.randn(576, 200) * 50).to(torch.float8_e4m3fn), torch.rand(5, 2)
    expected = weight.float().clone()
    for i in range(5):
        for j in range(2):
            expected[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scales[i, j]
    assert torch.equal(dequantize(weight, scales, (128, 128), torch.float32), expected)
    with pytest.raises(ValueError, match="needs scales 5×2"):
        dequantize(weight, scales[:4], (128, 128), torch.float32)


def test_released_deepseek_converts_to_bf16_hf_as_transformers_reads_it(released: Path, tmp_path: Path) -> None:
    reference = _transformers_dequantized(released)
    out = convert_to(released, tmp_path / "bf16", "hf")
    state = hf_state(out)
    assert not any(n.endswith("_scale_inv") for n in state)
    for name, value in state.items():  # the correction bias is a buffer transformers keeps in fp32: never rounded to bf16
        assert value.dtype == (torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "deepseek_v3"
    import transformers as t

    plain = t.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    theirs, ours = reference.state_dict(), plain.state_dict()
    assert theirs.keys() == ours.keys()
    for name, value in theirs.items():
        assert value.dtype == ours[name].dtype and torch.equal(ours[name], value), name
    ids = torch.arange(24).reshape(1, 24) % 256
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, reference(ids).logits)


def test_inspect_names_the_quantization_and_counts_fp8_weights_not_their_scales(released: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "inspect", str(released), "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["totals"]["parameters"] == sum(p.numel() for p in _model().parameters())
    quantized = sum(bool(QUANTIZED.search(n)) for n in load_file(str(released / "model.safetensors")))
    assert f"{quantized} weights stored as float8_e4m3fn with 8×8 block scales (weight_scale_inv), dequantized on read" \
        in report["quirks"], report["quirks"]


def test_a_float8_weight_without_scales_is_refused(released: Path, tmp_path: Path) -> None:
    state = load_file(str(released / "model.safetensors"))
    del state["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    folder = tmp_path / "broken"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text((released / "config.json").read_text())
    run = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "convert", str(folder), str(tmp_path / "out"),
                          "--to", "hf"], capture_output=True, text=True)
    assert run.returncode == 2 and "o_proj.weight is stored as float8_e4m3fn without a weight_scale_inv" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize("fmt", ["megatron", "megatron-dist"])
def test_released_deepseek_converts_to_megatron_as_transformers_reads_it(released: Path, tmp_path: Path, fmt: str) -> None:
    """FP8 release -> Megatron (weights dequantized to bf16 on the way, the correction bias kept fp32)
    -> HF: the same bits as transformers' own dequantized model, so the same logits."""
    reference = _transformers_dequantized(released)
    layout = dict(tp=2, ep=2) if fmt == "megatron" else dict(tp=2)
    back = convert_to(convert_to(released, tmp_path / "mt", fmt, **layout), tmp_path / "hf", "hf")
    import transformers as t

    plain = t.AutoModelForCausalLM.from_pretrained(str(back), dtype=torch.bfloat16).eval()
    theirs, ours = reference.state_dict(), plain.state_dict()  # the models' own (fused-expert) names
    assert theirs.keys() == ours.keys()
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype and torch.equal(ours[name], value), name
    ids = torch.arange(24).reshape(1, 24) % 256
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, reference(ids).logits)
