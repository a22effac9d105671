"""Pieces the family modules share: config.json readers, the Llama-style HF rows most decoder
families reuse, and the finishing of a transformers config (dtype, token ids)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..layouts import IDENTITY, InterleavedRotary
from ..row import Row
from ..spec import DTYPES, ModelSpec, SpecError
from .base import Family

LLAMA_PREFIX = "model.layers.{i}."


# ----- config.json readers -----------------------------------------------------------------------
def first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of several spellings a config may use (e.g. `n_embd` / `hidden_size`)."""
    for name in names:
        if config.get(name) is not None:
            return config[name]
    if default is None:
        raise SpecError(f"config.json lacks {' / '.join(names)}")
    return default


def one_of(value: Any, table: dict[str, str], what: str) -> str:
    """Translate a config string through `table`, refusing what the converter cannot model."""
    if value not in table:
        raise SpecError(f"{what} {value!r} is not supported (supported: {', '.join(table)})")
    return table[value]


def hf_dtype(config: dict[str, Any]) -> Any:
    dtype_name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(str(dtype_name).removeprefix("torch."), DTYPES["fp32"])


def _token_id(value: Any) -> int | None:
    """A token id as config.json holds it (a list of eos ids keeps its first)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def hf_common(config: dict[str, Any]) -> dict[str, Any]:
    """ModelSpec fields every family reads the same way from config.json."""
    return {"dtype": hf_dtype(config), "bos_token_id": _token_id(config.get("bos_token_id")),
            "eos_token_id": _token_id(config.get("eos_token_id")), "pad_token_id": _token_id(config.get("pad_token_id")),
            "vocab_note": "from config.json", "model_type": str(config.get("model_type") or "")}


def rope_from_config(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from transformers-5 `rope_parameters` or the v4 top-level keys."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per layer type (Gemma 3 style)
        params = params["full_attention"]
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        scaling = None if rope_type == "default" else {
            k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        return theta, scaling
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(config.get("rope_theta", 10000.0)), scaling


def rope_parameters(spec: ModelSpec) -> dict[str, Any]:
    """transformers-5 `rope_parameters` for a spec (default type unless it carries a scaling)."""
    params: dict[str, Any] = {"rope_type": "default"}
    if spec.rope_scaling:
        params.update(spec.rope_scaling)
        params["rope_type"] = params.pop("type", params.get("rope_type", "default"))
    params["rope_theta"] = spec.rope_theta
    if spec.rotary_percent != 1.0:
        params["partial_rotary_factor"] = spec.rotary_percent
    return params


def partial_rotary(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params.get("partial_rotary_factor") is not None:
        return float(params["partial_rotary_factor"])
    return float(config.get("partial_rotary_factor") or 1.0)


def sliding_layers(config: dict[str, Any]) -> tuple[int | None, tuple[str, ...] | None]:
    """(window, per-layer types): no window, a window on every layer (types None), or a pattern."""
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return None, None
    types = config.get("layer_types")
    if not isinstance(types, list) or not types:
        return int(window), None
    if set(types) - {"sliding_attention", "full_attention"}:
        raise SpecError(f"{config.get('model_type')}: layer_types {sorted(set(types))} are not supported "
                        "(sliding_attention, full_attention)")
    if "sliding_attention" not in types:
        return None, None
    return int(window), None if "full_attention" not in types else tuple(types)


def qwen_window_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """Qwen config fields of the sliding window: `use_sliding_window`, `sliding_window`, and
    `max_window_layers` (layers below it attend fully) when it states the pattern: 0 for a window
    on every layer, k for k full layers then sliding ones. Any other pattern is `layer_types`
    alone (written by `llama_config_kwargs`), `max_window_layers` left at the class default."""
    window = spec.sliding_window
    out: dict[str, Any] = {"use_sliding_window": window is not None, "sliding_window": window}
    if window is None:
        return out
    types = spec.layer_types or ("sliding_attention",) * spec.layers
    full = types.index("sliding_attention")
    if all(t == "sliding_attention" for t in types[full:]):
        out["max_window_layers"] = full
    return out


def llama_spec(config: dict[str, Any], family: str, **fields: Any) -> ModelSpec:
    """The Llama-style fields of config.json (RMSNorm, RoPE, GQA, SwiGLU); `fields` override."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    theta, scaling = rope_from_config(config)
    base: dict[str, Any] = dict(
        family=family, layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=int(config.get("head_dim") or hidden // heads),
        ffn=int(config.get("intermediate_size") or 4 * hidden), vocab=int(config["vocab_size"]), norm="rmsnorm",
        norm_eps=float(first(config, "rms_norm_eps", "layer_norm_eps", "norm_epsilon", "norm_eps", default=1e-6)),
        activation=fields.pop("activation", None) or one_of(config.get("hidden_act", "silu"), {"silu": "swiglu", "swish": "swiglu"},
                                                          f"{family} hidden_act"),
        rope_theta=theta, rope_scaling=scaling, rotary_percent=partial_rotary(config),
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        tied=bool(config.get("tie_word_embeddings", False)), **dict(zip(("sliding_window", "layer_types"), sliding_layers(config))),
        **hf_common(config))
    base.update(fields)
    return ModelSpec(**base)


def llama_config_kwargs(spec: ModelSpec, *, derived_head_dim: str = "", optional_head_dim: bool = False,
                        **extra: Any) -> dict[str, Any]:
    """Keyword arguments of a Llama-style transformers config class for the spec. A class that
    derives head_dim from hidden / heads (`derived_head_dim` names it) gets none, and a spec
    whose head_dim differs is refused; a class that has no head_dim field but reads one when set
    (`optional_head_dim`: Qwen2) gets it only when it differs."""
    out: dict[str, Any] = dict(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings, rms_norm_eps=spec.norm_eps, tie_word_embeddings=spec.tied,
        rope_theta=spec.rope_theta)
    if spec.rope_scaling:
        out["rope_scaling"] = dict(spec.rope_scaling)
    if spec.layer_types is not None:
        out["layer_types"] = list(spec.layer_types)
    if derived_head_dim:
        need(spec.head_dim * spec.heads == spec.hidden, f"HF {derived_head_dim} needs head_dim = hidden / heads")
        del out["head_dim"]
    elif optional_head_dim and spec.head_dim * spec.heads == spec.hidden:
        del out["head_dim"]
    out.update(extra)
    return out


# Features a ModelSpec can carry beyond the Llama block. A family's config codec names the ones its
# HF class holds; any other present is refused, never dropped (a silent drop is a wrong model).
FEATURES: dict[str, Callable[[ModelSpec], bool]] = {
    "QK-norm": lambda s: s.qk_norm,
    "full-width QK-norm": lambda s: s.qk_norm_full,
    "experts": lambda s: s.moe,
    "a shared expert": lambda s: s.shared_expert_ffn > 0,
    "un-renormalised top-k": lambda s: s.moe and not s.norm_topk_prob,
    "a sliding window": lambda s: s.sliding_window is not None,
    "a per-layer sliding pattern": lambda s: s.layer_types is not None,
    "a second RoPE base": lambda s: s.rope_local_theta is not None,
    "partial rotary": lambda s: s.rotary_percent != 1.0,
    "zero-centred norms": lambda s: s.norm_zero_centered,
    "soft-capping": lambda s: bool(s.attn_softcap or s.final_softcap),
    "embedding / residual / attention / logits multipliers": lambda s: (
        s.embedding_multiplier, s.residual_multiplier, s.logits_scaling) != (1.0, 1.0, 1.0) or s.attention_multiplier is not None,
    "norms on the branch outputs": lambda s: s.out_norms,
    "a block without pre-norms": lambda s: not s.pre_norms,
    "a GeGLU MLP": lambda s: s.activation in ("geglu_tanh", "geglu"),
    "a squared-ReLU MLP": lambda s: s.activation == "relu2",
    "attention sinks": lambda s: s.attn_sinks,
    "router / expert biases": lambda s: s.router_bias or s.expert_bias,
    "a clamped SwiGLU": lambda s: s.activation == "clamped_swiglu",
    "multi-head latent attention": lambda s: s.mla,
    "RoPE on adjacent pairs": lambda s: s.rope_interleave,
    "a sigmoid / biased-choice / group-limited / scaled router": lambda s: s.moe and (
        s.router_score != "softmax" or s.router_score_bias or s.router_groups > 1 or s.routed_scaling != 1.0),
    "dense layers among MoE layers": lambda s: bool(s.dense_layers),
    "an L2 QK-norm": lambda s: s.qk_l2_norm,
    "NoPE layers": lambda s: bool(s.nope_layers),
    "chunked attention": lambda s: bool(s.chunked_layers),
    "attention temperature tuning": lambda s: s.temperature_tuning and bool(s.nope_layers),
    "routed weights on the expert inputs": lambda s: s.moe and s.router_on_input,
}


def refuse_features(spec: ModelSpec, holds: str, supported: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, every feature of the spec that the HF class `holds` cannot hold."""
    extra = [name for name, present in FEATURES.items() if name not in supported and present(spec)]
    if extra:
        raise SpecError(f"HF {holds} cannot hold {', '.join(extra)}")


def need(ok: bool, message: str) -> None:
    """Refuse a spec the HF class cannot hold, in one line."""
    if not ok:
        raise SpecError(message)


def finish_hf_config(config: Any, spec: ModelSpec, architecture: str | None = None) -> dict[str, Any]:
    """A transformers config object -> config.json dict with the spec's dtype and token ids.

    Token ids are the spec's, None where the source did not say: a class default such as GPT-2's
    50256 is never invented for a model whose source carried no id."""
    if isinstance(config, dict):
        out = dict(config)
    else:
        if architecture:
            config.architectures = [architecture]
        config.dtype = str(spec.dtype).removeprefix("torch.")
        out = config.to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(spec, key)
        out[key] = value
    # transformers 4.x reads the top-level RoPE keys; 5.x reads `rope_parameters`
    if spec.position == "rope" and out.get("rope_theta") is None:
        out["rope_theta"] = spec.rope_theta
    if spec.rope_scaling and out.get("rope_scaling") is None:
        out["rope_scaling"] = dict(spec.rope_scaling)
    out.setdefault("torch_dtype", out.get("dtype"))
    return out


def lm_head(spec: ModelSpec) -> bool:
    return not spec.tied


def norm_rows(name: str, canon: str, when: Callable[[ModelSpec], bool] = lambda s: True) -> tuple[Row, Row]:
    """A norm's weight and, for LayerNorm models, its bias (`name` without `.weight`)."""
    return (Row(f"{name}.weight", (canon,), when=when),
            Row(f"{name}.bias", (f"{canon}.bias",), when=lambda s: when(s) and s.norm_bias))


def _qkv_bias(s: ModelSpec) -> bool:
    return s.qkv_bias


def llama_attention(input_norm: str = "input_layernorm", post_norm: str = "post_attention_layernorm") -> tuple[Row, ...]:
    """`self_attn.{q,k,v,o}_proj` with optional biases and per-head QK-norm, and the two norms."""
    return (
        Row(f"{input_norm}.weight", ("input_norm",), when=lambda s: s.pre_norms),
        *(row for n in "qkv" for row in (Row(f"self_attn.{n}_proj.weight", (f"attn.{n}",)),
                                         Row(f"self_attn.{n}_proj.bias", (f"attn.{n}.bias",), when=_qkv_bias))),
        Row("self_attn.o_proj.weight", ("attn.o",)),
        Row("self_attn.o_proj.bias", ("attn.o.bias",), when=lambda s: s.o_bias),
        Row("self_attn.q_norm.weight", ("attn.q_norm",), when=lambda s: s.qk_norm),
        Row("self_attn.k_norm.weight", ("attn.k_norm",), when=lambda s: s.qk_norm),
        Row(f"{post_norm}.weight", ("post_attn_norm",), when=lambda s: s.pre_norms),
    )


def interleaved_qkv() -> tuple[Row, ...]:
    """`self_attn.{q,k,v}_proj` (optional biases) whose q / k rows hold RoPE on adjacent (complex)
    pairs, read to rotate-half order (GLM4, Llama 4)."""
    ops = {"q": InterleavedRotary(keys=False), "k": InterleavedRotary(keys=True), "v": IDENTITY}
    return tuple(row for n, op in ops.items() for row in (
        Row(f"self_attn.{n}_proj.weight", (f"attn.{n}",), op),
        Row(f"self_attn.{n}_proj.bias", (f"attn.{n}.bias",), op, when=_qkv_bias)))


def swiglu_mlp(prefix: str = "mlp.") -> tuple[Row, ...]:
    """`{prefix}gate_proj / up_proj / down_proj`, biases after the weights."""
    return (
        Row(f"{prefix}gate_proj.weight", ("mlp.gate",), when=lambda s: not s.moe),
        Row(f"{prefix}up_proj.weight", ("mlp.up",), when=lambda s: not s.moe),
        Row(f"{prefix}down_proj.weight", ("mlp.down",), when=lambda s: not s.moe),
        Row(f"{prefix}gate_proj.bias", ("mlp.gate.bias",), when=lambda s: not s.moe and s.mlp_bias),
        Row(f"{prefix}up_proj.bias", ("mlp.up.bias",), when=lambda s: not s.moe and s.mlp_bias),
        Row(f"{prefix}down_proj.bias", ("mlp.down.bias",), when=lambda s: not s.moe and s.mlp_bias),
    )


def experts(router: str, expert: str, gate: str = "gate_proj", up: str = "up_proj", down: str = "down_proj") -> tuple[Row, ...]:
    """A router and per-expert SwiGLU rows (`expert` holds `{e}`)."""
    return (
        Row(router, ("router",), when=lambda s: s.moe),
        Row(f"{expert}.{gate}.weight", ("experts.{e}.gate",), when=lambda s: s.moe),
        Row(f"{expert}.{up}.weight", ("experts.{e}.up",), when=lambda s: s.moe),
        Row(f"{expert}.{down}.weight", ("experts.{e}.down",), when=lambda s: s.moe),
    )


LLAMA_PRE = (Row("model.embed_tokens.weight", ("embed",)),)
LLAMA_POST = (Row("model.norm.weight", ("final_norm",)), Row("lm_head.weight", ("lm_head",), when=lm_head))
LLAMA_IGNORED = (r"\.rotary_emb\.inv_freq$",)

# The end of a `transformer.h`-style model (GPT-2, BLOOM, Falcon): final LayerNorm with bias and
# the LM head unless it is tied to the embedding.
LN_F_AND_HEAD = (
    Row("transformer.ln_f.weight", ("final_norm",)),
    Row("transformer.ln_f.bias", ("final_norm.bias",)),
    Row("lm_head.weight", ("lm_head",), when=lm_head),
)


def llama_family(**fields: Any) -> Family:
    """A family with Llama's file layout (`model.layers.{i}.`, embed_tokens, norm, lm_head) and,
    unless `layer` says otherwise, Llama's attention and SwiGLU rows."""
    defaults: dict[str, Any] = dict(layer_prefix=LLAMA_PREFIX, pre=LLAMA_PRE, layer=(*llama_attention(), *swiglu_mlp()),
                                    post=LLAMA_POST, ignored=LLAMA_IGNORED)
    return Family(**{**defaults, **fields})
