"""MXFP4 weights as gpt-oss checkpoints store them, dequantized on read.

OCP microscaling FP4: each group of 32 values shares one power-of-two scale (E8M0, bias 127), and
each value is FP4 E2M1, two to a byte (the even element in the low nibble). A weight `W` stored
this way is the pair `W_blocks` (uint8 [..., rows, K/32, 16]) and `W_scales` (uint8
[..., rows, K/32]), grouped along the last dim of `W` transposed (gpt-oss keeps experts as
`[E, in, out]` and quantizes rows of `[E, out, in]`). Every FP4 value times a power of two in the
E8M0 range is exact in bf16 and fp32, so dequantizing loses nothing.
"""

from __future__ import annotations
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from ckptscope.inspectors.lazy import torch  # imported on first tensor use: `inspect` opens sources too

BLOCKS, SCALES = "_blocks", "_scales"
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
ROWS_PER_STEP = 1 << 20  # bounds the fp32 temporaries to a few tens of MB per step


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`W_blocks`, `W_scales` -> `W` in `dtype` ([E, rows, K/32, 16] -> [E, K, rows], as stored unquantized)."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16 \
            or blocks.dim() != 4:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} / scales {tuple(scales.shape)} are not uint8 [E, rows, K/32, 16] / "
                         "[E, rows, K/32]")
    lut = torch.tensor(E2M1, dtype=torch.float32)
    flat_blocks, flat_scales = blocks.reshape(-1, 16), scales.reshape(-1, 1).to(torch.int32) - 127
    out = torch.empty(flat_blocks.shape[0], 32, dtype=dtype)
    for start in range(0, flat_blocks.shape[0], ROWS_PER_STEP):
        block, exp = flat_blocks[start:start + ROWS_PER_STEP], flat_scales[start:start + ROWS_PER_STEP]
        values = torch.empty(block.shape[0], 32, dtype=torch.float32)
        values[:, 0::2], values[:, 1::2] = lut[(block & 0x0F).long()], lut[(block >> 4).long()]
        out[start:start + ROWS_PER_STEP] = torch.ldexp(values, exp.float()).to(dtype)
    experts, rows, groups = scales.shape
    return out.reshape(experts, rows, groups * 32).transpose(1, 2).contiguous()


def quantized_pairs(names: set[str] | dict[str, object]) -> dict[str, tuple[str, str]]:
    """Weight name -> its (`_blocks`, `_scales`) names, for every weight stored as MXFP4."""
    return {n[: -len(BLOCKS)]: (n, n[: -len(BLOCKS)] + SCALES) for n in names
            if n.endswith(BLOCKS) and n[: -len(BLOCKS)] + SCALES in names}
