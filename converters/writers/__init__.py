"""Target writers; which writer serves which `--to` name is the format registry's (formats.py)."""

from __future__ import annotations

from .base import PlannedFile, TargetOptions, Writer

__all__ = ["PlannedFile", "TargetOptions", "Writer"]
