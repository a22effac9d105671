"""The family registry (issue 12): every registered family is one module; the families added with
it (Qwen3, Qwen3-MoE, Qwen2-MoE, Phi-3, OLMo2, Granite, StarCoder2, GLM4) and Mistral's sliding
window survive every path their features allow, bit for bit and field by field.

Each model is a tiny random `transformers` model with every feature switched on (head_dim !=
hidden / heads, partial rotary, a window shorter than the probe, shared expert, non-trivial
norms and biases). Paths: HF -> Megatron `torch` TP2×PP2 (EP2 for MoE) -> HF and HF ->
`torch_dist` -> HF bit-identical, transformers logits <= 1e-5, config.json equal in every field;
the reference forward agrees with transformers; megatron-core-inexpressible models are refused
at plan time in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.converters import families, vocab
from ckptscope.converters.layouts import ConcatRows, InterleavedRotary
from ckptscope.converters.plan import make_plan
from ckptscope.converters.reference import reference_logits
from ckptscope.converters.sources import open_source
from ckptscope.converters.spec import ModelSpec
from ckptscope.converters.verify import fixed_tokens, verify
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect

from .helpers import assert_same_hf_state, convert_to, logits_diff, saved_models

VOCAB = 256
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SMALL_MHA = {**SMALL, "num_key_value_heads": SMALL["num_attention_heads"]}  # latent attention: kv heads = heads
DEEPSEEK = dict(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, moe_intermediate_size=16,
                n_routed_experts=8, num_experts_per_tok=2)
# V3 scores a group by its best two experts: megatron-core sums a group's top topk / group_topk, so 4 of 16 in 2 of 4 groups
DEEPSEEK_V3 = {**DEEPSEEK, "n_routed_experts": 16, "num_experts_per_tok": 4}


# kind: (transformers config with every feature on, why a Megatron target is refused or None)
CASES: dict[str, tuple] = {
    "mistral": (lambda t: t.MistralConfig(intermediate_size=96, sliding_window=6, **SMALL), None),
    "qwen3": (lambda t: t.Qwen3Config(intermediate_size=96, head_dim=32, **SMALL), None),
    "qwen3_moe": (lambda t: t.Qwen3MoeConfig(intermediate_size=96, head_dim=32, num_local_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=32, norm_topk_prob=True, **SMALL), None),
    "qwen2_moe": (lambda t: t.Qwen2MoeConfig(intermediate_size=96, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=48, norm_topk_prob=False, **SMALL), None),
    # dense MLPs among the MoE layers: listed (`mlp_only_layers`) or off the sparse step (layers 0 and 2 dense)
    "qwen3_moe-dense": (lambda t: t.Qwen3MoeConfig(intermediate_size=96, head_dim=32, num_local_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=32, norm_topk_prob=True, mlp_only_layers=[0], **SMALL), None),
    "qwen2_moe-step": (lambda t: t.Qwen2MoeConfig(intermediate_size=96, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                  shared_expert_intermediate_size=48, decoder_sparse_step=2, **SMALL), None),
    "phi3": (lambda t: t.Phi3Config(intermediate_size=96, partial_rotary_factor=0.5, **SMALL), None),
    "starcoder2": (lambda t: t.Starcoder2Config(intermediate_size=96, sliding_window=5, **SMALL), None),
    "olmo2": (lambda t: t.Olmo2Config(intermediate_size=96, **SMALL), "norms on the attention and MLP outputs"),
    "granite": (lambda t: t.GraniteConfig(intermediate_size=96, embedding_multiplier=6.0, residual_multiplier=0.5,
                                          attention_multiplier=0.1, logits_scaling=4.0, **SMALL), "multipliers"),
    "glm4": (lambda t: t.Glm4Config(intermediate_size=96, head_dim=16, **SMALL), "norms on the attention and MLP outputs"),
    "gemma": (lambda t: t.GemmaConfig(intermediate_size=96, head_dim=16, **SMALL), "GeGLU"),
    "gemma2": (lambda t: t.Gemma2Config(intermediate_size=96, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                                        **SMALL), "soft-capping"),
    "gemma3": (lambda t: t.Gemma3TextConfig(intermediate_size=96, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                                            layer_types=["sliding_attention", "full_attention"] * 2,
                                            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                                "rope_theta": 1e6},
                                                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                                            **SMALL), "a separate RoPE base for the sliding layers"),
    "nemotron": (lambda t: t.NemotronConfig(intermediate_size=96, head_dim=16, **SMALL), None),
    "gpt_oss": (lambda t: t.GptOssConfig(intermediate_size=32, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                         sliding_window=5, rope_parameters={
                                             "rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                             "truncate": False, "original_max_position_embeddings": 64, "rope_theta": 150000.0},
                                         **SMALL), None),
    # DeepSeek: latent attention (q latent, or one q_proj like V2-Lite), YaRN with mscale_all_dim, a dense first layer,
    # routed + shared experts; V3's sigmoid router with correction bias and top-2 of 4 groups, V2's group-limited softmax
    "deepseek_v3": (lambda t: t.DeepseekV3Config(intermediate_size=96, **DEEPSEEK_V3, n_shared_experts=2, n_group=4, topk_group=2,
                                                 first_k_dense_replace=1, routed_scaling_factor=2.5, q_lora_rank=24,
                                                 num_mtp_layers=0, rope_parameters={
                                                     "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                                     "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.707,
                                                     "rope_theta": 10000.0}, **SMALL_MHA), None),
    "deepseek_v2-lite": (lambda t: t.DeepseekV2Config(intermediate_size=96, **DEEPSEEK, n_shared_experts=2, first_k_dense_replace=1,
                                                      q_lora_rank=None, **SMALL_MHA), None),
    "deepseek_v2-grouped": (lambda t: t.DeepseekV2Config(intermediate_size=96, **DEEPSEEK, n_shared_experts=1, q_lora_rank=24,
                                                         topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                                         routed_scaling_factor=16.0, **SMALL_MHA), None),
    # Llama 4: MoE every 2nd layer (shared expert, input-scaled top-1 sigmoid router), NoPE layer 3 with temperature tuning,
    # L2 QK-norm, 8-token chunks on the RoPE layers (the 24-token probe crosses them), llama3 RoPE
    "llama4": (lambda t: t.Llama4TextConfig(intermediate_size=32, intermediate_size_mlp=96, head_dim=16, num_local_experts=4,
                                            interleave_moe_layer_step=2, attention_chunk_size=8, floor_scale=4, attn_scale=0.5,
                                            rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                                             "rope_theta": 500000.0}, **SMALL), "chunked local attention"),
}
MEGATRON_OK = tuple(k for k, (_, refused) in CASES.items() if refused is None)
MEGATRON_REFUSED = {k: refused for k, (_, refused) in CASES.items() if refused}
KINDS = tuple(CASES)
MOE = tuple(k for k in CASES if k.split("-")[0].endswith("_moe") or k.startswith("deepseek")) + ("gpt_oss",)


def _build(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(CASES[kind][0](t))
    with torch.no_grad():  # non-trivial norms and biases so every term shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():  # DeepSeek-V3's correction bias changes which experts are chosen
            if name.endswith("e_score_correction_bias"):
                b.add_(0.1 * torch.randn_like(b))
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    return saved_models(tmp_path_factory, KINDS, _build)


def _config(folder: Path) -> dict:
    """The config as transformers loads it (defaults filled in), version stamp and dtype aside."""
    from transformers import AutoConfig

    out = AutoConfig.from_pretrained(str(folder)).to_dict()
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        out.pop(key, None)
    return out


def assert_same_config(src: Path, back: Path) -> None:
    """config.json equal in every field (the version stamp and dtype spelling aside)."""
    a, b = _config(src), _config(back)
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("kind", MEGATRON_OK)
def test_megatron_torch_round_trip(models, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    ep = 2 if kind in MOE else 1
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, pp=2, ep=ep)
    assert (detect(mt).parallel.tp, detect(mt).parallel.pp) == (2, 2)
    back = convert_to(mt, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    assert_same_config(src, back)
    assert logits_diff(back, model, VOCAB) <= 1e-5
    report = verify(src, mt)  # the Megatron checkpoint itself, through the reference forward
    assert report.identical and report.logits_ok and not report.config_differences, report.to_json()


@pytest.mark.parametrize("kind", MEGATRON_OK)
def test_torch_dist_round_trip(models, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    dist = convert_to(src, tmp_path / "dist", "megatron-dist", tp=2, megatron_spec="te")
    back = convert_to(dist, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    assert_same_config(src, back)
    assert logits_diff(back, model, VOCAB) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_hf_round_trip_and_reference_forward(models, tmp_path: Path, kind: str) -> None:
    """HF -> HF keeps every bit and field; the plain-torch reference forward equals transformers."""
    src, model = models[kind]
    back = convert_to(src, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    assert_same_config(src, back)
    source = open_source(detect(src))
    assert source.spec.family == kind.split("-")[0]  # `family-variant` cases
    ids = fixed_tokens(VOCAB, length=24)  # longer than every window above
    with torch.no_grad():
        diff = (reference_logits(source.spec, source.get, ids) - model(ids).logits).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("kind", list(MEGATRON_REFUSED))
@pytest.mark.parametrize("fmt", ["megatron", "megatron-dist"])
def test_megatron_refuses_what_it_cannot_express(models, kind: str, fmt: str) -> None:
    src, _ = models[kind]
    plan = make_plan(src, TargetOptions(fmt, tp=2))
    assert not plan.ok and any(MEGATRON_REFUSED[kind] in e and "megatron-core cannot express" in e for e in plan.errors), plan.errors


@pytest.mark.parametrize("kind", KINDS)
def test_nxd_takes_or_refuses_in_one_line(models, kind: str) -> None:
    src, _ = models[kind]
    plan = make_plan(src, TargetOptions("nxd", tp=2))
    assert plan.ok or all("\n" not in e for e in plan.errors)


def test_mistral_window_survives_megatron_and_verify_sees_it(models, tmp_path: Path) -> None:
    """Mistral's window (6) through Megatron comes back as Mistral with its window; verify probes past it."""
    src, _ = models["mistral"]
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2)
    spec = open_source(detect(mt)).spec
    assert (spec.family, spec.sliding_window) == ("mistral", 6)
    report = verify(src, mt, tokens=4)
    assert report.probe_tokens >= 13 and report.logits_ok
    # a Megatron copy whose args lost the window is caught field by field, not by a short probe
    args_file = next(mt.rglob("model_optim_rng.pt"))
    state = torch.load(args_file, weights_only=False)
    state["args"].window_size = None
    torch.save(state, args_file)
    report = verify(src, mt, tokens=4)
    assert any(d.startswith("sliding_window") for d in report.config_differences) and not report.logits_ok


def test_token_ids_are_carried_and_never_invented(tmp_path: Path) -> None:
    """GPT-2's class default eos 50256 never appears for a model whose source carried no id."""
    import transformers as t

    model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                           bos_token_id=5, eos_token_id=7))
    model.save_pretrained(tmp_path / "src")
    back = convert_to(convert_to(tmp_path / "src", tmp_path / "mt", "megatron", tp=2), tmp_path / "hf", "hf")
    config = json.loads((back / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["model_type"]) == (5, 7, "gpt2")


# ----- the registry itself ----------------------------------------------------------------------
def test_every_row_names_declared_canonical_tensors() -> None:
    for family in families.FAMILIES.values():
        for row in (*family.pre, *family.layer, *family.post):
            for canon in row.canon:
                assert vocab.is_declared(canon), (family.name, row.name, canon)


def test_every_family_reads_its_own_config_back(models) -> None:
    """config_from_spec then spec_from_config gives the same spec, for each family built above."""
    for kind in KINDS:
        spec = open_source(detect(models[kind][0])).spec
        again = families.spec_from_hf_config(families.hf_config_from_spec(spec))
        assert again.summary() == spec.summary(), kind


@pytest.mark.parametrize("layout", [ConcatRows(), InterleavedRotary(keys=False), InterleavedRotary(keys=True)])
def test_layouts_pack_unpack_are_inverse(layout) -> None:
    spec = ModelSpec(family="llama", layers=1, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=32, vocab=32, rotary_percent=0.5)
    rows = 32 if getattr(layout, "keys", False) else 64
    parts = [torch.randn(rows, 64)] if isinstance(layout, InterleavedRotary) else [torch.randn(8, 4), torch.randn(6, 4)]
    shapes = [tuple(p.shape) for p in parts]
    stored = layout.pack(parts, spec)
    back = layout.unpack(stored, shapes, spec)
    assert tuple(stored.shape) == layout.shape(shapes, spec)
    assert all(torch.equal(a, b) for a, b in zip(parts, back))
    if isinstance(layout, InterleavedRotary):
        assert not torch.equal(stored, parts[0])  # the rotary half of each head really moved


# Sliding window on some layers only: megatron-core's `window_attn_skip_freq` (an int N: every N-th
# layer full; or one 0/1 flag per layer) carries the pattern through Megatron.
PATTERNS = {
    "periodic": (lambda t: t.Qwen2Config(intermediate_size=96, use_sliding_window=True, sliding_window=5,
                                         layer_types=["sliding_attention", "full_attention"] * 2, **SMALL), 2),
    "listed": (lambda t: t.Qwen3Config(intermediate_size=96, head_dim=32, use_sliding_window=True, sliding_window=5,
                                       max_window_layers=2, **SMALL), [0, 0, 1, 1]),
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_sliding_pattern_survives_megatron(tmp_path: Path, pattern: str) -> None:
    import transformers as t

    make, skip_freq = PATTERNS[pattern]
    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(make(t)).eval()
    assert len(set(model.config.layer_types)) == 2
    src = tmp_path / "src"
    model.save_pretrained(src)
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, pp=2)
    args = detect(mt).metadata["args"]
    assert (tuple(args["window_size"]), args["window_attn_skip_freq"]) == ((4, 0), skip_freq)
    dist = convert_to(src, tmp_path / "dist", "megatron-dist", tp=2)
    for i, stored in enumerate((mt, dist)):
        back = convert_to(stored, tmp_path / f"hf{i}", "hf")
        assert_same_hf_state(src, back)
        assert_same_config(src, back)
        assert logits_diff(back, model, VOCAB) <= 1e-5
    report = verify(src, mt)
    assert report.identical and report.logits_ok and not report.config_differences, report.to_json()
