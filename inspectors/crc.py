"""CRC-32 of tensor bytes at memory speed.

Every torch zip record read whole is checked against its CRC-32, so the checksum runs over
every byte a conversion reads from a Megatron / NxD / DeepSpeed file. zlib's `crc32` does
≈1.9 GiB/s on this project's machines, which made it the largest CPU item of a Megatron
source (py-spy, docs/performance.md); ISA-L's (`isal`, same polynomial, same value) does
≈9 GiB/s. zlib stays the fallback where the wheel is missing.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; a source install may lack its wheel
    from zlib import crc32

__all__ = ["crc32"]
