"""gpt-oss checkpoints as released: experts stored as MXFP4 (`*_blocks` + `*_scales`).

The fixture quantizes a tiny random gpt-oss with an OCP MXFP4 encoder written here (scale =
2^ceil(log2(amax / 6)) per 32 values, nearest E2M1 code), saves it with the release's names and
`quantization_config`, and checks that ckptscope's dequantization agrees with transformers' own:
transformers loads the quantized folder (`Mxfp4Config(dequantize=True)`), ckptscope converts it to
a plain bf16 HF folder, and the two models hold the same bits and give the same logits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ckptscope.converters.mxfp4 import dequantize
from safetensors.torch import save_file

from .helpers import convert_to, hf_state

E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
QUANTIZED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, in, out] -> (blocks [E, out, in/32, 16], scales [E, out, in/32]), groups along `in`."""
    rows = weight.transpose(1, 2).float()
    *lead, k = rows.shape
    groups = rows.reshape(*lead, k // 32, 32)
    exp = torch.ceil(torch.log2(groups.abs().amax(-1, keepdim=True).clamp(min=2.0 ** -120) / 6.0))
    scaled = groups / torch.exp2(exp)
    code = (scaled.abs()[..., None] - E2M1_MAGNITUDES).abs().argmin(-1) + 8 * (scaled < 0)
    code = code.to(torch.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).contiguous()
    return blocks, (exp.squeeze(-1) + 127).to(torch.uint8).contiguous()


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A tiny gpt-oss saved as the release is: MXFP4 experts, bf16 elsewhere."""
    import transformers as t

    torch.manual_seed(0)
    config = t.GptOssConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, sliding_window=5,
                            dtype="bfloat16")
    model = t.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    state: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if name.endswith(QUANTIZED):
            state[name + "_blocks"], state[name + "_scales"] = quantize(value)
        else:
            state[name] = value.contiguous()
    folder = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _transformers_dequantized(folder: Path) -> torch.nn.Module:
    import transformers as t

    return t.AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=t.Mxfp4Config(dequantize=True),
                                                  dtype=torch.bfloat16).eval()


def test_dequantize_matches_transformers_bit_for_bit() -> None:
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    torch.manual_seed(1)
    blocks = torch.randint(0, 256, (3, 8, 4, 16), dtype=torch.uint8)
    scales = torch.randint(100, 150, (3, 8, 4), dtype=torch.uint8)
    for dtype in (torch.bfloat16, torch.float32):
        assert torch.equal(dequantize(blocks, scales, dtype), convert_moe_packed_tensors(blocks, scales, dtype=dtype))


def test_released_gpt_oss_converts_to_bf16_hf_as_transformers_reads_it(released: Path, tmp_path: Path) -> None:
    reference = _transformers_dequantized(released)
    out = convert_to(released, tmp_path / "bf16", "hf")
    state = hf_state(out)
    assert not any(n.endswith(("_blocks", "_scales")) for n in state)
    for name, value in reference.state_dict().items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], value), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "gpt_oss"
    import transformers as t

    plain = t.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    ids = torch.arange(24).reshape(1, 24) % 256
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, reference(ids).logits)


def test_inspect_counts_mxfp4_parameters_as_the_model_has_them(released: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "inspect", str(released), "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["totals"]["parameters"] == sum(p.numel() for p in _transformers_dequantized(released).parameters())
    assert "4 weights stored as MXFP4 (_blocks + _scales, 32-value groups), dequantized on read" in report["quirks"]


@pytest.mark.parametrize("fmt", ["megatron", "megatron-dist"])
def test_released_gpt_oss_converts_to_megatron_as_transformers_reads_it(released: Path, tmp_path: Path, fmt: str) -> None:
    """MXFP4 release -> Megatron (experts dequantized to bf16 on the way) -> HF: the same bits as
    transformers' own dequantized model, so the same logits."""
    reference = _transformers_dequantized(released)
    layout = dict(tp=2, pp=2, ep=2) if fmt == "megatron" else dict(tp=2)
    back = convert_to(convert_to(released, tmp_path / "mt", fmt, **layout), tmp_path / "hf", "hf")
    state = hf_state(back)
    for name, value in reference.state_dict().items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], value), name
    import transformers as t

    plain = t.AutoModelForCausalLM.from_pretrained(str(back), dtype=torch.bfloat16).eval()
    ids = torch.arange(24).reshape(1, 24) % 256
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, reference(ids).logits)
