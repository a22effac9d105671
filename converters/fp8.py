"""Block-scaled FP8 weights as DeepSeek-V3 / R1 releases store them, dequantized on read.

A linear weight `W` [rows, cols] is stored as `float8_e4m3fn` under its own name, beside
`<module>.weight_scale_inv` (float32 [ceil(rows / bm), ceil(cols / bn)]): one multiplier per
block of `quantization_config.weight_block_size` [bm, bn] (`quant_method: fp8`, [128, 128] in
the releases), the last block row / column partial when a size is not a multiple (V3's
`kv_a_proj_with_mqa` has 576 rows). `W = fp32(fp8) × scale`, rounded once to the model's dtype
(config `torch_dtype`, bf16 in the releases), as transformers' `Fp8Dequantize` (its
`dequantize=True` loading) and DeepSeek's own `weight_dequant` compute it. Rounding a few block
rows at a time keeps the temporaries small: a layer of 256 experts is never held in fp32.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ckptscope.inspectors.dtypes import DTYPES

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

SCALE = "_scale_inv"  # `<module>.weight` -> `<module>.weight_scale_inv`
DEFAULT_BLOCK = (128, 128)
ELEMENTS_PER_STEP = 1 << 22  # bounds the fp32 temporaries to a few tens of MB per step
FP8 = (DTYPES["float8_e4m3fn"], DTYPES["float8_e5m2"])  # torch-free; equal to torch's own


def block_size(config: dict[str, Any] | None) -> tuple[int, int]:
    """The scale block [bm, bn] a config.json declares (`quant_method: fp8`), else DeepSeek's 128×128."""
    quant = (config or {}).get("quantization_config") or {}
    block = quant.get("weight_block_size") if quant.get("quant_method") == "fp8" else None
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        return DEFAULT_BLOCK
    return int(block[0]), int(block[1])


def quantized_pairs(names: set[str] | dict[str, object]) -> dict[str, tuple[str, str]]:
    """Weight name -> (weight, scale) names, for every weight stored with block scales."""
    return {n[: -len(SCALE)]: (n[: -len(SCALE)], n) for n in names
            if n.endswith(".weight" + SCALE) and n[: -len(SCALE)] in names}


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """FP8 `weight` [rows, cols] and its block scales -> `weight × scale` (in fp32) rounded to `dtype`."""
    bm, bn = block
    if weight.dim() != 2 or weight.dtype not in FP8 or not scale_inv.dtype.is_floating_point:
        raise ValueError(f"FP8 weight {tuple(weight.shape)} {weight.dtype} / scale {scale_inv.dtype} is not a float8 matrix "
                         "with floating-point block scales")
    rows, cols = weight.shape
    grid = (math.ceil(rows / bm), math.ceil(cols / bn))
    if tuple(scale_inv.shape) != grid:
        raise ValueError(f"FP8 weight {rows}×{cols} in {bm}×{bn} blocks needs scales {grid[0]}×{grid[1]}, "
                         f"found {'×'.join(map(str, scale_inv.shape))}")
    out = torch.empty(rows, cols, dtype=dtype)
    step = max(1, ELEMENTS_PER_STEP // max(cols * bm, 1)) * bm  # whole block rows per step
    for start in range(0, rows, step):
        chunk = weight[start:start + step].to(torch.float32)
        scale = scale_inv[start // bm:(start + chunk.shape[0] + bm - 1) // bm].to(torch.float32)
        scale = scale.repeat_interleave(bm, dim=0)[:chunk.shape[0]].repeat_interleave(bn, dim=1)[:, :cols]
        out[start:start + chunk.shape[0]] = (chunk * scale).to(dtype)
    return out
