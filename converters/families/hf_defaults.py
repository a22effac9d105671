"""config.json without `import transformers` (about 2 s): each config class's defaults as
transformers writes them (`hf_defaults.json`, one entry per class), merged with a family's
keyword arguments and the few fields a class's `__init__` derives from others.

`hf_config("LlamaConfig", **kwargs).to_dict()` equals `transformers.LlamaConfig(**kwargs).to_dict()`
for every family and sample spec (tests/test_hf_defaults.py builds both and compares field by
field, and checks the table against a fresh `--write`, so an upgrade of transformers is caught).
Regenerate with `python -m ckptscope.converters.families.hf_defaults --write`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("hf_defaults.json")

# The config classes the families build (converters/families/*.py).
CLASSES = ("ApertusConfig", "BloomConfig", "DeepseekV2Config", "DeepseekV3Config", "FalconConfig", "GPT2Config",
           "GemmaConfig", "Gemma2Config", "Gemma3TextConfig", "Glm4Config", "GptOssConfig", "GraniteConfig", "LlamaConfig",
           "Llama4TextConfig",
           "MistralConfig", "MixtralConfig", "NemotronConfig", "Olmo2Config", "Phi3Config", "Qwen2Config", "Qwen2MoeConfig",
           "Qwen3Config", "Qwen3MoeConfig", "Starcoder2Config")

_reference = threading.local()  # `from_transformers()`: build with transformers' own classes (tests)


class HFConfig:
    """What a family gets instead of a transformers config object: attributes to set
    (`architectures`, `dtype`) and `to_dict()`, the config.json fields."""

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._values[key] = value

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._values)


@functools.cache
def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


def hf_config(class_name: str, **kwargs: Any) -> Any:
    """`transformers.<class_name>(**kwargs)`, as the fields its `to_dict()` writes."""
    if getattr(_reference, "on", False):
        import transformers

        return getattr(transformers, class_name)(**kwargs)
    entry = _table()["classes"].get(class_name)
    if entry is None:
        raise KeyError(f"{class_name} is not in {TABLE.name}: add it to CLASSES and rerun "
                       "`python -m ckptscope.converters.families.hf_defaults --write`")
    values = copy.deepcopy(entry["defaults"])
    aliases = entry["attribute_map"]
    given = {aliases.get(k, k): v for k, v in kwargs.items()}
    for derive in (*DERIVED, *CLASS_RULES.get(class_name, ())):
        derive(values, given, entry)
    values.update(given)
    return HFConfig(values)


@contextlib.contextmanager
def from_transformers() -> Iterator[None]:
    """Inside: `hf_config` builds transformers' own config objects (what the table must equal)."""
    _reference.on = True
    try:
        yield
    finally:
        _reference.on = False


# ----- what the classes' __init__ derive --------------------------------------------------------------
def _head_dim(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """head_dim defaults to hidden_size // num_attention_heads where the class has the field."""
    if "head_dim" in values and given.get("head_dim") is None and entry.get("derived_head_dim"):
        hidden = given.get("hidden_size", values.get("hidden_size"))
        heads = given.get("num_attention_heads", values.get("num_attention_heads"))
        given["head_dim"] = hidden // heads


def _kv_heads(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """num_key_value_heads defaults to num_attention_heads (MHA) when not given."""
    if "num_key_value_heads" in values and given.get("num_key_value_heads") is None and entry.get("derived_kv_heads"):
        given["num_key_value_heads"] = given.get("num_attention_heads", values.get("num_attention_heads"))


def _rope(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """transformers 5 keeps RoPE in `rope_parameters`: a `rope_theta` / `rope_scaling` keyword
    lands there (theta beside the scaling's own keys)."""
    if "rope_parameters" not in values or "rope_parameters" in given:
        if "rope_parameters" in given and isinstance(given["rope_parameters"], dict) and "rope_theta" in given:
            given["rope_parameters"] = {**given["rope_parameters"], "rope_theta": given.pop("rope_theta")}
        return
    params = dict(values["rope_parameters"] or {})
    scaling = given.pop("rope_scaling", None)
    if scaling:
        params = {**dict(scaling), "rope_theta": params.get("rope_theta")}
        params.setdefault("rope_type", params.pop("type", "default"))
    if "rope_theta" in given:
        params["rope_theta"] = given.pop("rope_theta")
    given["rope_parameters"] = params


Rule = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], None]
DERIVED: tuple[Rule, ...] = (_head_dim, _kv_heads, _rope)


def _get(values: dict[str, Any], given: dict[str, Any], key: str) -> Any:
    return given[key] if key in given else values.get(key)


def _qwen_window(moe: bool) -> Rule:
    """Qwen2 / Qwen3: the window only with `use_sliding_window` (else None; Qwen2-MoE: 0), and
    `layer_types` from it: sliding from `max_window_layers` on (Qwen2-MoE: odd layers below it)."""

    def rule(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
        use, window = _get(values, given, "use_sliding_window"), _get(values, given, "sliding_window")
        given["sliding_window"] = window if use else (0 if moe else None)
        if given.get("layer_types") is None:
            n, top = _get(values, given, "num_hidden_layers"), _get(values, given, "max_window_layers")
            sliding = [bool((i + 1) % 2) and i < top and use for i in range(n)] if moe else \
                [given["sliding_window"] is not None and i >= top for i in range(n)]
            given["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]

    return rule


def _alternating(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """Gemma 2, gpt-oss: sliding and full layers alternate unless `layer_types` is given."""
    if given.get("layer_types") is None:
        given["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                                for i in range(_get(values, given, "num_hidden_layers"))]


def _gemma3(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """Gemma 3: one full layer every `sliding_window_pattern` (6); a bidirectional model halves the window."""
    if _get(values, given, "use_bidirectional_attention"):
        given["sliding_window"] = _get(values, given, "sliding_window") // 2 + 1
    if given.get("layer_types") is None:
        pattern = given.get("sliding_window_pattern", 6)
        given["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                for i in range(_get(values, given, "num_hidden_layers"))]


def _deepseek(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """DeepSeek V2 / V3: a query/key head is nope + rope dims; `head_dim` is the rope part."""
    rope = _get(values, given, "qk_rope_head_dim")
    given["qk_head_dim"] = _get(values, given, "qk_nope_head_dim") + rope
    given["head_dim"] = rope if rope is not None else _get(values, given, "hidden_size") // _get(values, given, "num_attention_heads")


def _falcon(values: dict[str, Any], given: dict[str, Any], entry: dict[str, Any]) -> None:
    """Falcon: `num_kv_heads` defaults to the attention heads."""
    if given.get("num_kv_heads") is None:
        given["num_kv_heads"] = _get(values, given, "num_attention_heads")


CLASS_RULES: dict[str, tuple[Rule, ...]] = {
    "Qwen2Config": (_qwen_window(False),), "Qwen3Config": (_qwen_window(False),), "Qwen2MoeConfig": (_qwen_window(True),),
    "Gemma2Config": (_alternating,), "GptOssConfig": (_alternating,), "Gemma3TextConfig": (_gemma3,),
    "DeepseekV2Config": (_deepseek,), "DeepseekV3Config": (_deepseek,), "FalconConfig": (_falcon,),
}


# ----- the generator ----------------------------------------------------------------------------------
def generate() -> dict[str, Any]:
    """The table from the installed transformers: each class's default `to_dict()`, its aliases,
    and which fields its __init__ derives (probed with two shapes)."""
    import transformers

    classes: dict[str, Any] = {}
    for name in CLASSES:
        cls = getattr(transformers, name)
        defaults = cls().to_dict()
        probe = cls(hidden_size=96, num_attention_heads=3).to_dict() if "num_attention_heads" in defaults or "n_head" in defaults else {}
        classes[name] = {
            "defaults": defaults,
            "attribute_map": dict(getattr(cls, "attribute_map", {}) or {}),
            "derived_head_dim": probe.get("head_dim") == 32 and defaults.get("head_dim") != 32,
            "derived_kv_heads": probe.get("num_key_value_heads") == 3,
        }
    return {"transformers_version": transformers.__version__, "classes": classes}


def render(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(generate())
    if "--write" in argv:
        TABLE.write_text(text)
        print(f"wrote {TABLE}")
    elif "--check" in argv:
        same = TABLE.exists() and TABLE.read_text() == text
        print("hf_defaults.json is current" if same else "hf_defaults.json differs from the installed transformers: rerun --write")
        return 0 if same else 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
