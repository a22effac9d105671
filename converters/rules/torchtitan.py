"""torchtitan's names for each family's model: the naming style of its `step-N/` DCP folders.

Families: Llama (torchtitan's llama3), Qwen3, Qwen3-MoE (its qwen3), DeepSeek-V3 / V2 (its
deepseek_v3, which also builds V2-Lite-like models), gpt-oss, Llama 4 (its llama4, whose table
applies where the llama4 family is registered).

torchtitan trains its own module trees (`tok_embeddings`, `layers.{i}.attention.*`,
`feed_forward.w1/w2/w3`, `moe.*`, `norm`, `lm_head`), and its `state_dict_adapter.py` per model
maps them to HF. These tables hold the same facts as `Row`s over the canonical vocabulary, one
block per model part, so a family's torchtitan table is a few blocks (`TABLES`).

What the adapters say, learned from torchtitan's history:
- Llama 3 uses complex RoPE (adjacent pairs): its adapter permutes `wq` / `wk` to HF's
  rotate-half (`InterleavedRotary`). Qwen3 uses cos/sin RoPE (rotate-half) and DeepSeek's latent
  attention rotates adjacent pairs in HF too (`rope_interleave`): stored as HF stores them.
- Routed experts are one tensor per projection, every expert stacked on dim 0 in nn.Linear's
  orientation: w1 / w3 `[E, ffn, dim]`, w2 `[E, dim, ffn]` (`Stacked`). gpt-oss's `mlp1_weight`
  is `[E, 2 ffn, dim]` with gate / up rows interleaved as in HF's `gate_up_proj` (which HF keeps
  `[E, dim, 2 ffn]`); its adapter maps only the MXFP4 release, so its model is the reference.
- Spellings changed over time; each row's `aliases` are the older ones (a reader takes the
  first on disk, row by row, since the renames landed separately):
  `attention.wq` -> `attention.qkv_linear.wq` (2026-04), `output` -> `lm_head` (2026-04),
  `moe.experts.w1` -> `moe.experts.w1_EFD` and `moe.expert_bias` -> `moe.expert_bias_E` (2026-05),
  `moe.experts.*` -> `moe.routed_experts.inner_experts.*` (2026-07).
- Not read: DeepSeek-V3 saves of July-August 2025 (before torchtitan had an HF adapter), whose
  experts were `[E, dim, ffn]` and shared expert a one-expert `moe.shared_expert.w1`: refused by
  their shapes and names, never misread.

Multi-token-prediction modules (`mtp_layers.{k}.*`) and torchtitan's token counters are dropped
by named rules; a load-balancing `expert_bias` on a family whose HF router has no such bias
(Qwen3-MoE, DeepSeek-V2) moves the expert choice, so it is read and must be zero (`ZERO_ONLY`).
"""

from __future__ import annotations

import re
from dataclasses import replace

from .. import families
from ..families import Family, HfEntry
from ..families.base import hf_entries
from ..layouts import IDENTITY, Interleave, InterleavedRotary, Layout, Stacked
from ..row import Row
from ..spec import ModelSpec

LAYER_PREFIX = "layers.{i}."
LAYER_RE = re.compile(r"^layers\.\d+\.")


def _dense(s: ModelSpec) -> bool:
    return not s.moe


def _moe(s: ModelSpec) -> bool:
    return s.moe


def _q_down(s: ModelSpec) -> bool:
    return s.q_lora_rank > 0


def _shared(s: ModelSpec) -> bool:
    return s.moe and s.shared_expert_ffn > 0


PRE = (Row("tok_embeddings.weight", ("embed",)),)
POST = (Row("norm.weight", ("final_norm",)), Row("lm_head.weight", ("lm_head",), when=lambda s: not s.tied, aliases=("output.weight",)))

NORMS = (Row("attention_norm.weight", ("input_norm",)), Row("ffn_norm.weight", ("post_attn_norm",)))


def _qkv(n: str, op: Layout = IDENTITY) -> Row:
    """`attention.qkv_linear.w{q,k,v}` (`attention.w{q,k,v}` before 2026-04)."""
    return Row(f"attention.qkv_linear.w{n}.weight", (f"attn.{n}",), op, aliases=(f"attention.w{n}.weight",))


LLAMA_ATTENTION = (_qkv("q", InterleavedRotary()), _qkv("k", InterleavedRotary(keys=True)), _qkv("v"),
                   Row("attention.wo.weight", ("attn.o",)))
QWEN3_ATTENTION = (_qkv("q"), _qkv("k"), _qkv("v"), Row("attention.wo.weight", ("attn.o",)),
                   Row("attention.q_norm.weight", ("attn.q_norm",)), Row("attention.k_norm.weight", ("attn.k_norm",)))
LATENT_ATTENTION = (
    Row("attention.wq.weight", ("attn.q",), when=lambda s: not _q_down(s)),
    Row("attention.wq_a.weight", ("attn.q_down",), when=_q_down),
    Row("attention.q_norm.weight", ("attn.q_down_norm",), when=_q_down),
    Row("attention.wq_b.weight", ("attn.q_up",), when=_q_down),
    Row("attention.wkv_a.weight", ("attn.kv_down",)),
    Row("attention.kv_norm.weight", ("attn.kv_down_norm",)),
    Row("attention.wkv_b.weight", ("attn.kv_up",)),
    Row("attention.wo.weight", ("attn.o",)),
)

FEED_FORWARD = tuple(Row(f"feed_forward.{w}.weight", (f"mlp.{p}",), when=_dense) for w, p in (("w1", "gate"), ("w3", "up"),
                                                                                                 ("w2", "down")))


def _experts(w: str, proj: str, shape: str) -> Row:
    """A routed-expert projection: every expert stacked on dim 0, HF's per-expert orientation."""
    return Row(f"moe.routed_experts.inner_experts.{w}_{shape}", (f"experts.{{e}}.{proj}",), Stacked(), _moe, stacked=True,
               aliases=(f"moe.experts.{w}_{shape}", f"moe.experts.{w}"))


ROUTED_EXPERTS = (Row("moe.router.gate.weight", ("router",), when=_moe),
                  _experts("w1", "gate", "EFD"), _experts("w3", "up", "EFD"), _experts("w2", "down", "EDF"))
SHARED_EXPERTS = tuple(Row(f"moe.shared_experts.{w}.weight", (f"shared.{p}",), when=_shared)
                       for w, p in (("w1", "gate"), ("w3", "up"), ("w2", "down")))
# DeepSeek-V3's correction bias is torchtitan's load-balancing bias (a buffer)
SCORE_BIAS = (Row("moe.expert_bias_E", ("router.score_bias",), when=lambda s: s.moe and s.router_score_bias,
                  aliases=("moe.expert_bias",)),)



def _biased(n: str) -> Row:
    """A q / k / v bias (gpt-oss)."""
    return Row(f"attention.qkv_linear.w{n}.bias", (f"attn.{n}.bias",), when=lambda s: s.qkv_bias,
               aliases=(f"attention.w{n}.bias",))


def _gpt_oss_experts(w: str, shape: str, canon: tuple[str, ...], op: Layout) -> Row:
    """gpt-oss's stacked experts: `mlp1` rows interleave gate (even) and up (odd) like HF's
    `gate_up_proj`, but in nn.Linear's orientation ([E, 2f, dim], HF keeps [E, dim, 2f])."""
    return Row(f"moe.routed_experts.inner_experts.{w}_{shape}", canon, op, _moe, stacked=True,
               aliases=(f"moe.experts.{w}_{shape}", f"moe.experts.{w}"))


GPT_OSS_ATTENTION = (_qkv("q"), _qkv("k"), _qkv("v"), _biased("q"), _biased("k"), _biased("v"),
                     Row("attention.wo.weight", ("attn.o",)), Row("attention.wo.bias", ("attn.o.bias",), when=lambda s: s.o_bias),
                     Row("attention.sinks", ("attn.sinks",), when=lambda s: s.attn_sinks))
GPT_OSS_EXPERTS = (
    Row("moe.router.gate.weight", ("router",), when=_moe), Row("moe.router.gate.bias", ("router.bias",), when=_moe),
    _gpt_oss_experts("mlp1_weight", "EGD", ("experts.{e}.gate", "experts.{e}.up"), Stacked(Interleave(), 2)),
    _gpt_oss_experts("mlp1_bias", "EG", ("experts.{e}.gate.bias", "experts.{e}.up.bias"), Stacked(Interleave(), 2)),
    _gpt_oss_experts("mlp2_weight", "EDF", ("experts.{e}.down",), Stacked()),
    _gpt_oss_experts("mlp2_bias", "ED", ("experts.{e}.down.bias",), Stacked()),
)

# family -> its torchtitan layer rows (torchtitan's llama3, qwen3, deepseek_v3 and gpt_oss models)
TABLES: dict[str, tuple[Row, ...]] = {
    "llama": (*NORMS, *LLAMA_ATTENTION, *FEED_FORWARD),
    "qwen3": (*NORMS, *QWEN3_ATTENTION, *FEED_FORWARD),
    "qwen3_moe": (*NORMS, *QWEN3_ATTENTION, *ROUTED_EXPERTS),
    "deepseek_v3": (*NORMS, *LATENT_ATTENTION, *FEED_FORWARD, *ROUTED_EXPERTS, *SHARED_EXPERTS, *SCORE_BIAS),
    "deepseek_v2": (*NORMS, *LATENT_ATTENTION, *FEED_FORWARD, *ROUTED_EXPERTS, *SHARED_EXPERTS),
    "gpt_oss": (*NORMS, *GPT_OSS_ATTENTION, *GPT_OSS_EXPERTS),
    # Llama 4 (torchtitan's llama4, deprecated there in 2026-06): complex RoPE like HF's own, dense
    # layers between MoE ones, HF's `gate_up_proj` [E, dim, 2f] = [gate | up] stored as w1 / w3 [E, f, dim]
    "llama4": (*NORMS, *LLAMA_ATTENTION, *FEED_FORWARD, *ROUTED_EXPERTS, *SHARED_EXPERTS),
}

# canonical tensors torchtitan leaves out when the feature is off (no load balancing: no bias), zero then
ZERO_WHEN_ABSENT = frozenset({"router.score_bias"})

# stored tensors that must be zero when the HF family has no place for them (read and checked, then dropped)
ZERO_ONLY = r"(^|\.)moe\.expert_bias(_E)?$(?# torchtitan's load-balancing bias: this HF router has none; must be zero)"


def ignored(spec: ModelSpec) -> tuple[str, ...]:
    """Stored torchtitan tensors the HF model does not carry, each rule saying why."""
    rules = [r"^mtp_layers\.(?# multi-token-prediction module: the causal LM never loads it; not carried)",
             r"(^|\.)moe\.tokens_per_expert(_E)?$(?# torchtitan's routing counter, not a weight)"]
    if spec.tied:
        rules.append(r"^(lm_head|output)\.weight$(?# tied to tok_embeddings: the same tensor)")
    if spec.moe and not spec.router_score_bias:
        rules.append(ZERO_ONLY)
    return tuple(rules)


def table(spec: ModelSpec) -> Family | None:
    """The family seen through torchtitan's names (None: torchtitan has no model of this family)."""
    layer = TABLES.get(spec.family)
    if layer is None:
        return None
    return replace(families.family(spec.family), layer_prefix=LAYER_PREFIX, pre=PRE, layer=layer, post=POST, ignored=(),
                   ignored_for=ignored)


def entries(spec: ModelSpec) -> list[tuple[HfEntry, tuple[str, ...]]]:
    """Every stored torchtitan tensor of the model with every spelling it has had, newest first."""
    found = table(spec)
    if found is None:
        return []
    rows = {row.name: row for row in (*found.pre, *found.layer, *found.post)}
    out = []
    for entry in hf_entries(found, spec):
        prefix = m.group(0) if (m := LAYER_RE.match(entry.name)) else ""
        out.append((entry, tuple(prefix + n for n in rows[entry.name[len(prefix):]].read_names())))
    return out
