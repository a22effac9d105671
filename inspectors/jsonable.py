"""Turn metadata (pickled args, configs, placeholders) into plain JSON values."""

from __future__ import annotations

import math
from typing import Any

from .megatron_common import plain_value


def jsonable(value: Any) -> Any:
    """Recursively convert to JSON-safe values; non-finite floats become strings."""
    value = plain_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
