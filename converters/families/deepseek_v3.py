"""DeepSeek-V3 / R1 (and Moonlight, and Kimi K2 whose `kimi_k2` config names the same
`DeepseekV3ForCausalLM` code: read as this family, written as transformers' own `deepseek_v3`):
DeepSeek-V2's latent attention and dense-first MoE (`deepseek_v2.py` rows), with a sigmoid router
whose choice adds `e_score_correction_bias` (a buffer, canonical `router.score_bias`) and is
limited to the best `topk_group` of `n_group` groups (a group scored by its best two experts);
the chosen sigmoid scores are renormalised (`norm_topk_prob`) and scaled by
`routed_scaling_factor`. `rope_interleave` rotates adjacent pairs of the RoPE dims; YaRN's
`mscale_all_dim` scales the softmax by mscale².

Multi-token-prediction modules (`num_nextn_predict_layers`) are stored as
`model.layers.{num_hidden_layers + k}.*` (which transformers' causal LM never loads): their own
`enorm`, `hnorm`, `eh_proj`, `shared_head.norm`, copies of the embedding and head
(`embed_tokens`, `shared_head.head`) and one decoder layer. They are carried (canonical
`mtp.{k}.*`) to HF and to megatron-core's `mtp.layers.{k}.*`; a target that cannot hold them
drops them by the rule `mtp_layers()` names, which the plan shows.
"""

from __future__ import annotations

from typing import Any

from ..row import Row
from ..spec import ModelSpec
from .base import FusedExperts, MegatronTraits
from .common import finish_hf_config, llama_family, llama_spec, need, refuse_features
from .hf_defaults import hf_config
from .deepseek_v2 import FEATURES, MLA_ROWS, MOE_ROWS, common_kwargs, mla_fields, moe_fields


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    experts = int(config.get("n_routed_experts") or 0)
    return llama_spec(config, "deepseek_v3", **mla_fields(config), **moe_fields(config, "sigmoid"),
                      rope_interleave=bool(config.get("rope_interleave", True)), router_score="sigmoid",
                      router_score_bias=experts > 0, norm_topk_prob=bool(config.get("norm_topk_prob", True)),
                      router_groups=int(config.get("n_group") or 1), router_group_topk=int(config.get("topk_group") or 1),
                      mtp_layers=int(config.get("num_nextn_predict_layers", config.get("num_mtp_layers")) or 0))


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    refuse_features(spec, "DeepSeek-V3", FEATURES)
    need(spec.router_score == "sigmoid" and spec.router_score_bias, "HF DeepSeek-V3 has a sigmoid router with a correction bias")
    config = hf_config("DeepseekV3Config", **common_kwargs(spec), norm_topk_prob=spec.norm_topk_prob, n_group=spec.router_groups,
                                           topk_group=spec.router_group_topk, rope_interleave=spec.rope_interleave,
                                           num_nextn_predict_layers=spec.mtp)  # the MTP modules carried
    return finish_hf_config(config, spec, "DeepseekV3ForCausalLM")


def mtp_layers(spec: ModelSpec) -> tuple[str, ...]:
    """The multi-token-prediction modules beyond the last layer, when the target cannot hold them:
    dropped by a rule the plan shows."""
    if not spec.mtp_layers or not spec.mtp_dropped:
        return ()
    indices = "|".join(str(spec.layers + k) for k in range(spec.mtp_layers))
    return (rf"^model\.layers\.({indices})\.(?# multi-token-prediction module: the target cannot hold it; not carried)",)


MTP_ROWS = (  # an MTP module's own tensors (then one decoder layer's), as the V3 release stores them
    Row("embed_tokens.weight", ("embed",)),
    Row("enorm.weight", ("enorm",)),
    Row("hnorm.weight", ("hnorm",)),
    Row("eh_proj.weight", ("eh_proj",)),
    Row("shared_head.norm.weight", ("final_norm",)),
    Row("shared_head.head.weight", ("lm_head",), when=lambda s: not s.tied),
)


FAMILY = llama_family(
    name="deepseek_v3",
    model_types=("deepseek_v3", "kimi_k2"),
    layer=(*MLA_ROWS, *MOE_ROWS),
    spec_from_config=spec_from_config,
    config_from_spec=config_from_spec,
    ignored_for=mtp_layers,
    fused_experts=FusedExperts(),
    mtp=MTP_ROWS,
    megatron=MegatronTraits(match=lambda args, s: s.mla and s.router_score == "sigmoid", rank=5),
    doc="DeepSeek-V3 / R1: MLA, sigmoid group-limited router with correction bias, shared experts, dense first, MTP carried",
)
