"""Tiny-to-realistic synthetic Llama/Mixtral-shaped checkpoints for tests, the demo and bench.

`SampleSpec` holds the architecture; `canonical_shapes()` lists every full (unsharded, unfused)
tensor; `tensor(name, shape)` makes deterministic random weights so every writer of the same
spec produces the same values. Writers in this package lay those tensors out exactly as each
format does on disk (see ../shared/reference/).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleSpec:
    layers: int = 4
    hidden: int = 64
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 0  # 0 -> hidden // heads
    ffn: int = 160
    vocab: int = 1000
    experts: int = 0  # 0 = dense; otherwise Mixtral-style MoE with `topk`
    topk: int = 2
    expert_ffn: int = 0  # 0 -> ffn
    tied: bool = False
    dtype: torch.dtype = torch.float32
    make_vocab_size_divisible_by: int = 128
    seed: int = 0

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def moe_ffn(self) -> int:
        return self.expert_ffn or self.ffn

    def padded_vocab(self, tp: int) -> int:
        """Megatron pads the vocab to a multiple of make_vocab_size_divisible_by × TP."""
        multiple = self.make_vocab_size_divisible_by * tp
        return int(math.ceil(self.vocab / multiple) * multiple)

    def canonical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Full tensors by canonical name (see DESIGN.md): embed, layers.{i}.*, final_norm, lm_head."""
        h, d = self.hidden, self.d
        shapes: dict[str, tuple[int, ...]] = {"embed": (self.vocab, h)}
        for i in range(self.layers):
            p = f"layers.{i}."
            shapes[p + "input_norm"] = (h,)
            shapes[p + "attn.q"] = (self.heads * d, h)
            shapes[p + "attn.k"] = (self.kv_heads * d, h)
            shapes[p + "attn.v"] = (self.kv_heads * d, h)
            shapes[p + "attn.o"] = (h, self.heads * d)
            shapes[p + "post_attn_norm"] = (h,)
            if self.experts:
                shapes[p + "router"] = (self.experts, h)
                for e in range(self.experts):
                    shapes[p + f"experts.{e}.gate"] = (self.moe_ffn, h)
                    shapes[p + f"experts.{e}.up"] = (self.moe_ffn, h)
                    shapes[p + f"experts.{e}.down"] = (h, self.moe_ffn)
            else:
                shapes[p + "mlp.gate"] = (self.ffn, h)
                shapes[p + "mlp.up"] = (self.ffn, h)
                shapes[p + "mlp.down"] = (h, self.ffn)
        shapes["final_norm"] = (h,)
        if not self.tied:
            shapes["lm_head"] = (self.vocab, h)
        return shapes

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Deterministic weights for a canonical name (norms near 1, others small)."""
        shape = shape or self.canonical_shapes()[name]
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)
        gen = torch.Generator().manual_seed(seed)
        if name.endswith("norm"):
            value = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:
            value = 0.05 * torch.randn(shape, generator=gen)
        return value.to(self.dtype)

    def nbytes(self) -> int:
        return sum(math.prod(s) for s in self.canonical_shapes().values()) * self.dtype.itemsize
