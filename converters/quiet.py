"""transformers, used to load HF models for logits, prints a "Loading weights" progress bar and a
load report on the process's terminal: over the CLI's report, or onto the app's screen. Loads go
through `quiet_transformers()`, which silences both for that call and restores the settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Errors only, no progress bar, for the duration of one load."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
