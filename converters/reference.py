"""Plain-PyTorch reference forward pass over canonical tensors.

Formats that `transformers` cannot load (Megatron, NxD, DeepSpeed) are verified by converting them
to canonical tensors and comparing the logits computed here with those of the source or target
model. The maths follows Hugging Face's Llama / Mistral / Qwen2 / Qwen3 / Mixtral modelling code
op for op, so fp32 results agree to round-off.

Weights are fetched through `get(name)` only when needed and dropped right after use, so a caller
can stream a checkpoint from disk layer by layer. Every name is requested at most once, in model
order, except `embed` of a tied model, which is requested again for the output head instead of
being held across all layers; an MoE expert that no token is routed to is never requested.

Sliding-window attention is applied to every layer when `spec.sliding_window` is set (Qwen2's
`max_window_layers` is not modelled). Supported RoPE scalings: default, linear, llama3.

Other families (issue 6) follow their HF modelling code: GPT-2 (learned positions, LayerNorm,
GELU-tanh MLP with biases, tied head), BLOOM (embedding LayerNorm, ALiBi), Falcon (parallel
attention with one or two norms, multi-query / grouped KV, exact GELU) and Apertus (xIELU MLP
without gate, QK-norm).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .spec import MLA_LATENT_EPS, ModelSpec, SpecError

Getter = Callable[[str], torch.Tensor]
Tap = Callable[[int, str, torch.Tensor], None]


def _no_tap(layer: int, block: str, output: torch.Tensor) -> None:
    """No observer: the default of `reference_logits(tap=...)`."""


def reference_logits(spec: ModelSpec, get: Getter, input_ids: torch.Tensor, *,
                     dtype: torch.dtype = torch.float32, tap: Tap | None = None) -> torch.Tensor:
    """[batch, seq] int64 -> [batch, seq, vocab] logits computed in `dtype`.

    `get(name)` returns one canonical tensor; it is called lazily, layer by layer, so a caller can
    stream weights from disk and the function never holds more than one layer's weights plus
    activations. `tap(layer, block, output)` sees each layer's attention and MLP branch outputs (as
    they join the residual) and its hidden state (`verify --layers`); layer -1 is the embedding.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    w = _loader(get, dtype)
    x = F.embedding(input_ids, w("embed"))
    if spec.embedding_multiplier != 1.0:
        x = x * spec.embedding_multiplier
    seq = input_ids.shape[1]
    if spec.position == "learned":
        x = x + w("pos_embed")[:seq]
    if spec.embed_norm:
        x = norm(spec, w, "embed_norm", x)
    rope = {local: rope_cos_sin(spec, seq, dtype, local=local) for local in (False, True)} if spec.position == "rope" else {}
    masks: dict[tuple[int | None, int | None], torch.Tensor] = {}
    see = tap or _no_tap
    see(-1, "hidden", x)
    for i in range(spec.layers):
        p = f"layers.{i}."
        window, chunk = spec.window_of(i), spec.chunk_of(i)
        mask = masks.setdefault((window, chunk), causal_mask(seq, window, chunk))
        cos, sin = rope.get(window is not None and spec.rope_local_theta is not None, (None, None))
        if i in spec.nope_layers:  # Llama 4's NoPE layers
            cos, sin = None, None
        h = norm(spec, w, p + "input_norm", x) if spec.pre_norms else x
        a = (mla_attention if spec.mla else attention)(spec, w, p, h, cos, sin, mask)
        if spec.parallel_attn:  # Falcon: both branches read the layer input
            m_in = norm(spec, w, p + "post_attn_norm", x) if spec.parallel_norms == 2 else h
            m = mlp(spec, w, p + "mlp.", m_in)
            see(i, "attention", a)
            see(i, "mlp", m)
            x = x + (m + a)
            see(i, "hidden", x)
            continue
        a = _branch_out(spec, w, p + "attn_out_norm", a)
        see(i, "attention", a)
        x = x + a
        h = norm(spec, w, p + "post_attn_norm", x) if spec.pre_norms else x
        layer = spec.layer_spec(i)  # a dense layer of a MoE model (DeepSeek's first_k_dense_replace)
        m = _branch_out(spec, w, p + "mlp_out_norm", moe(layer, w, p, h) if layer.moe else mlp(layer, w, p + "mlp.", h))
        see(i, "mlp", m)
        x = x + m
        see(i, "hidden", x)
    x = norm(spec, w, "final_norm", x)
    logits = F.linear(x, w("embed" if spec.tied else "lm_head"))
    if spec.logits_scaling != 1.0:
        logits = logits / spec.logits_scaling
    return softcap(logits, spec.final_softcap)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's soft-capping: cap * tanh(x / cap) (nothing without a cap)."""
    return x if not cap else torch.tanh(x / cap) * cap


def _branch_out(spec: ModelSpec, w: Getter, norm_name: str, y: torch.Tensor) -> torch.Tensor:
    """A branch's output as it joins the residual: its own norm (OLMo2, GLM4), Granite's multiplier."""
    if spec.out_norms:
        y = norm(spec, w, norm_name, y)
    return y * spec.residual_multiplier if spec.residual_multiplier != 1.0 else y


def _loader(get: Getter, dtype: torch.dtype) -> Getter:
    """`get` with every tensor cast to the compute dtype."""
    return lambda name: get(name).to(dtype)


# ----- norms -------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: statistics in fp32, cast back, then scaled by gamma."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def norm(spec: ModelSpec, w: Getter, name: str, x: torch.Tensor) -> torch.Tensor:
    """The model's hidden-size norm (RMSNorm, or LayerNorm with `<name>.bias`)."""
    if spec.norm == "layernorm":  # Nemotron's LayerNorm1P stores w and normalises with w + 1
        gamma = w(name) + 1.0 if spec.norm_zero_centered else w(name)
        return F.layer_norm(x, x.shape[-1:], gamma, w(name + ".bias"), spec.norm_eps)
    if spec.norm_zero_centered:
        return gemma_rms_norm(x, w(name), spec.norm_eps)
    return rms_norm(x, w(name), spec.norm_eps)


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: statistics and (1 + w) in fp32, cast back last."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (1.0 + weight.to(torch.float32))).to(x.dtype)


# ----- rotary embeddings -------------------------------------------------------------------------
def rotary_dim(spec: ModelSpec) -> int:
    return int(spec.head_dim * spec.rotary_percent)


def inv_freq(spec: ModelSpec, local: bool = False) -> torch.Tensor:
    """Inverse frequencies as transformers' `modeling_rope_utils` computes them (`local`: the
    sliding layers' own base, unscaled, where the model has one)."""
    dim = rotary_dim(spec)
    theta = spec.rope_local_theta if local and spec.rope_local_theta is not None else spec.rope_theta
    freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if local and spec.rope_local_theta is not None:
        return freq
    scaling = spec.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return freq
    if kind == "linear":
        return freq / scaling["factor"]
    if kind == "llama3":
        return _llama3(freq, scaling, spec.max_position_embeddings)
    if kind == "yarn":
        return _yarn(freq, scaling, dim, theta, spec.max_position_embeddings)
    raise SpecError(f"RoPE scaling {kind!r} is not supported by the reference forward (default, linear, llama3, yarn)")


def _yarn(freq: torch.Tensor, s: dict, dim: int, theta: float, max_pos: int) -> torch.Tensor:
    """YaRN: frequencies below the correction range interpolated by `factor`, above it kept, a
    linear ramp between (the range from beta_fast / beta_slow rotations over the original length)."""
    old_len = s.get("original_max_position_embeddings") or max_pos
    factor = s.get("factor") or max_pos / old_len

    def correction_dim(rotations: float) -> float:
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.get("beta_fast") or 32), correction_dim(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp
    return freq / factor * (1 - keep) + freq * keep


def rope_attention_factor(spec: ModelSpec) -> float:
    """YaRN's scale on cos / sin (`attention_factor`, else from `factor` and `mscale`s); 1 otherwise."""
    s = spec.rope_scaling or {}
    if s.get("rope_type", s.get("type")) != "yarn":
        return 1.0
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    factor = s.get("factor") or spec.max_position_embeddings / (s.get("original_max_position_embeddings") or spec.max_position_embeddings)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.get("mscale") and s.get("mscale_all_dim"):
        return mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
    return mscale(factor)


def _llama3(freq: torch.Tensor, s: dict, max_pos: int) -> torch.Tensor:
    """Llama 3.1 frequency smoothing: long wavelengths slowed by `factor`, a ramp in between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s.get("original_max_position_embeddings", max_pos)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(spec: ModelSpec, seq: int, dtype: torch.dtype, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq, rotary_dim], computed in fp32 then cast (as HF does)."""
    freqs = torch.arange(seq).float()[:, None] * inv_freq(spec, local)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = 1.0 if local and spec.rope_local_theta is not None else rope_attention_factor(spec)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first `rotary_dim` dims of [b, heads, s, d]; the rest pass through."""
    rot, rest = x[..., : cos.shape[-1]], x[..., cos.shape[-1]:]
    half = rot.shape[-1] // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


# ----- attention ---------------------------------------------------------------------------------
def causal_mask(seq: int, window: int | None, chunk: int | None = None) -> torch.Tensor:
    """Boolean [seq, seq], True where query i may attend key j (j <= i, within the window, and in
    the same chunk of `chunk` positions: Llama 4's chunked attention)."""
    q, k = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    allowed = k <= q
    if chunk:
        allowed = allowed & (k // chunk == q // chunk)
    return allowed & (k > q - window) if window else allowed


def _proj(w: Getter, name: str, x: torch.Tensor, bias: bool) -> torch.Tensor:
    return F.linear(x, w(name), w(name + ".bias") if bias else None)


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi head slopes as BLOOM computes them (geometric; extra odd powers for non-powers of 2)."""
    closest = 2 ** math.floor(math.log2(heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != heads:
        extra = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, heads - closest)
        slopes = torch.cat([slopes, torch.pow(extra, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))])
    return slopes


def attention(spec: ModelSpec, w: Getter, p: str, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
              mask: torch.Tensor) -> torch.Tensor:
    """GQA self-attention, eager-style: fp32 softmax, scale 1/sqrt(head_dim), optional qk-norm."""
    b, s, _ = x.shape
    d = spec.head_dim
    heads = {n: _proj(w, p + f"attn.{n}", x, spec.qkv_bias) for n in "qkv"}
    if spec.qk_norm and spec.qk_norm_full:  # over all heads' width, before RoPE (OLMo2)
        heads["q"], heads["k"] = (_head_norm(spec, w(p + f"attn.{n}_norm"), heads[n]) for n in "qk")
    q, k, v = (heads[n].view(b, s, -1, d) for n in "qkv")
    if spec.qk_norm and not spec.qk_norm_full:  # per head, before RoPE (Qwen3 / Megatron qk_layernorm)
        q, k = _head_norm(spec, w(p + "attn.q_norm"), q), _head_norm(spec, w(p + "attn.k_norm"), k)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if cos is not None and sin is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k = llama4_qk(spec, q, k, rotated=cos is not None)
    group = spec.heads // spec.kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = spec.attention_multiplier if spec.attention_multiplier is not None else d ** -0.5
    scores = softcap(torch.matmul(q, k.transpose(2, 3)) * scale, spec.attn_softcap)
    if spec.position == "alibi":  # bias by key position (softmax is shift-invariant per query)
        scores = scores + (alibi_slopes(spec.heads)[:, None] * torch.arange(s)[None, :]).to(scores.dtype)[None, :, None, :]
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    if spec.attn_sinks:  # a per-head sink logit joins the softmax, its share dropped (gpt-oss)
        sink = w(p + "attn.sinks").to(scores.dtype).reshape(1, -1, 1, 1).expand(b, -1, s, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1, dtype=torch.float32)[..., :-1].to(q.dtype)
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, -1)
    return _proj(w, p + "attn.o", out, spec.o_bias)


def llama4_qk(spec: ModelSpec, q: torch.Tensor, k: torch.Tensor, *, rotated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama 4 after RoPE ([b, heads, s, d]): RoPE layers RMS-normalise q and k per head with no
    weight (`use_qk_norm`); NoPE layers scale queries by 1 + scale * log1p(floor((pos + 1) / floor))
    (`attn_temperature_tuning`). Other models pass through."""
    if spec.qk_l2_norm and rotated:
        ones = torch.ones((), dtype=q.dtype)
        q, k = rms_norm(q, ones, spec.norm_eps), rms_norm(k, ones, spec.norm_eps)
    if spec.temperature_tuning and not rotated and spec.nope_layers:
        pos = torch.arange(q.shape[2], dtype=torch.float32)
        scale = torch.log1p(torch.floor((pos + 1.0) / spec.temperature_floor)) * spec.temperature_scale + 1.0
        q = (q * scale.view(1, 1, -1, 1)).to(q.dtype)
    return q, k




def mla_softmax_scale(spec: ModelSpec) -> float:
    """MLA's softmax scale: 1/sqrt(nope + rope dims), times mscale(factor, mscale_all_dim)² when
    the RoPE is scaled and says `mscale_all_dim` (DeepSeek's `yarn_apply_mscale`)."""
    scale = (spec.qk_nope_dim + spec.head_dim) ** -0.5
    s = spec.rope_scaling or {}
    if s.get("rope_type", s.get("type", "default")) != "default" and s.get("mscale_all_dim") and s["factor"] > 1:
        m = 0.1 * s["mscale_all_dim"] * math.log(s["factor"]) + 1.0
        scale = scale * m * m
    return scale


def apply_rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs (x0, x1), (x2, x3)... (DeepSeek's `rope_interleave`), output in
    rotate-half order: the same dot products as rotating the de-interleaved vector."""
    cos, sin = cos[..., : cos.shape[-1] // 2], sin[..., : sin.shape[-1] // 2]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def mla_attention(spec: ModelSpec, w: Getter, p: str, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                  mask: torch.Tensor) -> torch.Tensor:
    """Multi-head latent attention (DeepSeek-V2/V3): queries from a normed latent (or one plain
    projection), keys and values expanded from a normed KV latent, plus one RoPE key shared by
    every head; the RoPE dims of q and k rotate, the rest do not."""
    b, s, _ = x.shape
    nope, rope, heads = spec.qk_nope_dim, spec.head_dim, spec.heads
    if spec.q_lora_rank:
        latent = rms_norm(F.linear(x, w(p + "attn.q_down")), w(p + "attn.q_down_norm"), MLA_LATENT_EPS)
        q = F.linear(latent, w(p + "attn.q_up"))
    else:
        q = F.linear(x, w(p + "attn.q"))
    q_pass, q_rot = torch.split(q.view(b, s, heads, nope + rope).transpose(1, 2), [nope, rope], dim=-1)
    kv_latent, k_rot = torch.split(F.linear(x, w(p + "attn.kv_down")), [spec.kv_lora_rank, rope], dim=-1)
    kv_latent = rms_norm(kv_latent, w(p + "attn.kv_down_norm"), MLA_LATENT_EPS)
    k_rot = k_rot.view(b, 1, s, rope)
    if cos is not None and sin is not None:
        turn = apply_rope_pairs if spec.rope_interleave else apply_rope
        q_rot, k_rot = turn(q_rot, cos, sin), turn(k_rot, cos, sin)
    kv = F.linear(kv_latent, w(p + "attn.kv_up")).view(b, s, heads, nope + spec.v_head_dim).transpose(1, 2)
    k_nope, v = torch.split(kv, [nope, spec.v_head_dim], dim=-1)
    q = torch.cat((q_pass, q_rot), dim=-1)
    k = torch.cat((k_nope, k_rot.expand(-1, heads, -1, -1)), dim=-1)
    scores = torch.matmul(q, k.transpose(2, 3)) * mla_softmax_scale(spec)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, -1)
    return _proj(w, p + "attn.o", out, spec.o_bias)


def _head_norm(spec: ModelSpec, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """qk-norm over the last dim (head_dim, or all heads' width); the vocabulary has no bias for it."""
    if spec.norm == "layernorm":
        return F.layer_norm(x, x.shape[-1:], weight, None, spec.norm_eps)
    if spec.norm_zero_centered:
        return gemma_rms_norm(x, weight, spec.norm_eps)
    return rms_norm(x, weight, spec.norm_eps)


# ----- feed-forward ------------------------------------------------------------------------------
def mlp(spec: ModelSpec, w: Getter, p: str, x: torch.Tensor, bias: bool | None = None) -> torch.Tensor:
    """SwiGLU: down(silu(gate(x)) * up(x)); otherwise down(act(up(x)))."""
    bias = spec.mlp_bias if bias is None else bias
    if spec.activation == "clamped_swiglu":  # gpt-oss
        gate = _proj(w, p + "gate", x, bias).clamp(max=spec.glu_limit)
        up = _proj(w, p + "up", x, bias).clamp(-spec.glu_limit, spec.glu_limit)
        return _proj(w, p + "down", (up + 1) * gate * torch.sigmoid(gate * spec.glu_alpha), bias)
    if spec.gated:
        gate = _proj(w, p + "gate", x, bias)
        gate = F.silu(gate) if spec.activation == "swiglu" else F.gelu(gate, approximate="tanh" if spec.activation == "geglu_tanh" else "none")
        return _proj(w, p + "down", gate * _proj(w, p + "up", x, bias), bias)
    up = _proj(w, p + "up", x, bias)
    if spec.activation == "gelu":
        act = F.gelu(up)
    elif spec.activation == "gelu_tanh":
        act = F.gelu(up, approximate="tanh")
    elif spec.activation == "relu2":  # squared ReLU (Nemotron)
        act = torch.square(F.relu(up))
    elif spec.activation == "xielu":
        act = xielu(up, w(p + "act.alpha_p"), w(p + "act.alpha_n"))
    else:
        raise SpecError(f"activation {spec.activation!r} is not supported by the reference forward")
    return _proj(w, p + "down", act, bias)


def xielu(x: torch.Tensor, alpha_p: torch.Tensor, alpha_n: torch.Tensor, beta: float = 0.5, eps: float = -1e-6) -> torch.Tensor:
    """xIELU (Apertus): stored alphas are softplus-inverse; quadratic for x > 0, ELU-like below."""
    ap = F.softplus(alpha_p)
    an = beta + F.softplus(alpha_n)
    eps_t = torch.tensor(eps, dtype=x.dtype)
    return torch.where(x > 0, ap * x * x + beta * x, (torch.expm1(torch.min(x, eps_t)) - x) * an + beta * x)


def moe(spec: ModelSpec, w: Getter, p: str, x: torch.Tensor) -> torch.Tensor:
    """Mixtral MoE: softmax router, top-k, renormalised weights, weighted sum of expert SwiGLUs.

    Experts are fetched one at a time and run only on the tokens routed to them."""
    flat = x.reshape(-1, x.shape[-1])
    top_w, top_i = route(spec, w, p, flat)
    out = torch.zeros_like(flat)
    for e in range(spec.experts):
        token, slot = torch.where(top_i == e)
        if token.numel() == 0:
            continue  # unused expert: its weights are never fetched
        y = expert(spec, w, p + f"experts.{e}.", flat[token], top_w[token, slot, None])
        out.index_add_(0, token, y.to(out.dtype))
    if spec.shared_expert_ffn:  # Qwen2-MoE: every token also goes through the shared expert
        shared = mlp(spec, w, p + "shared.", flat, bias=False)
        if spec.shared_expert_gate:
            shared = torch.sigmoid(F.linear(flat, w(p + "shared_gate"))) * shared
        out = out + shared.to(out.dtype)
    return out.view_as(x)


def expert(spec: ModelSpec, w: Getter, p: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One expert on its tokens, its routed weight on the output (Llama 4: on the input)."""
    if spec.router_on_input:
        return mlp(spec, w, p, (x * weight).to(x.dtype), bias=spec.expert_bias)
    return mlp(spec, w, p, x, bias=spec.expert_bias) * weight


def route(spec: ModelSpec, w: Getter, p: str, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k experts and their weights [tokens, k]: softmax (or sigmoid) scores; the
    choice may add a score-correction bias and keep only the best `router_group_topk` of
    `router_groups` groups (a group scores its best expert, or its best two summed when sigmoid:
    DeepSeek-V2 / V3); weights are the chosen scores, renormalised if asked, times `routed_scaling`."""
    logits = _proj(w, p + "router", flat, spec.router_bias).float()
    if spec.router_score == "softmax" and not spec.router_score_bias and spec.router_groups == 1:
        top_w, top_i = torch.topk(torch.softmax(logits, dim=-1), spec.topk, dim=-1)
    else:
        scores = torch.sigmoid(logits) if spec.router_score == "sigmoid" else torch.softmax(logits, dim=-1)
        choice = scores + w(p + "router.score_bias").float() if spec.router_score_bias else scores
        if spec.router_groups > 1:
            grouped = choice.view(-1, spec.router_groups, spec.experts // spec.router_groups)
            best = grouped.topk(2, dim=-1)[0].sum(dim=-1) if spec.router_score == "sigmoid" else grouped.max(dim=-1).values
            keep = torch.zeros_like(best).scatter_(1, torch.topk(best, spec.router_group_topk, dim=-1)[1], 1.0).bool()
            choice = choice.masked_fill(~keep.repeat_interleave(spec.experts // spec.router_groups, dim=1), float("-inf"))
        top_i = torch.topk(choice, spec.topk, dim=-1)[1]
        top_w = scores.gather(1, top_i)
    if spec.norm_topk_prob:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return (top_w * spec.routed_scaling if spec.routed_scaling != 1.0 else top_w), top_i
