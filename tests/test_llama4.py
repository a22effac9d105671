"""Llama 4 text (issue 13): tiny random `Llama4ForCausalLM`s with every feature on survive HF -> HF
bit for bit and field by field; the plain-torch reference forward equals transformers on a probe
longer than the attention chunk, and each Llama 4 feature shows in its logits; inspect / check /
diff name the family and its quirks and count parameters as transformers does; Megatron and NxD
targets are refused in one line naming what they cannot hold.

Models: "step2" has MoE on every 2nd layer (dense `intermediate_size_mlp` elsewhere), top-1,
8-token chunks on the RoPE layers, NoPE layer 3 with temperature tuning (floor 4, so the probe's
positions change the scale), L2 QK-norm and llama3 RoPE; "listed" has explicit `moe_layers`,
top-2, attention biases, its own `no_rope_layers`, 5-token chunks and a tied head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.app.cli import app
from ckptscope.converters.families import llama4
from ckptscope.converters.megatron_args import _llama4_args, _llama4_from_args
from ckptscope.converters.plan import make_plan
from ckptscope.converters.reference import reference_logits
from ckptscope.converters.sources import open_source
from ckptscope.converters.spec import SpecError
from ckptscope.converters.verify import fixed_tokens, verify
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.summary import logical_param_count
from typer.testing import CliRunner

from .helpers import assert_same_hf_state, convert_to, logits_diff, saved_models

VOCAB = 256
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=32, intermediate_size_mlp=96, num_local_experts=4, max_position_embeddings=256, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)
CASES = {
    "step2": dict(interleave_moe_layer_step=2, attention_chunk_size=8, floor_scale=4, attn_scale=0.5,
                  rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16, "rope_theta": 500000.0}),
    "listed": dict(moe_layers=[0, 3], num_experts_per_tok=2, attention_bias=True, no_rope_layers=[1, 0, 1, 1],
                   attention_chunk_size=5, floor_scale=3, attn_scale=2.0, tie_word_embeddings=True),
}
runner = CliRunner()


def _build(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(t.Llama4TextConfig(**SMALL, **CASES[kind]))
    with torch.no_grad():  # non-trivial norms and biases so every term shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    return saved_models(tmp_path_factory, tuple(CASES), _build)


def _config(folder: Path) -> dict:
    from transformers import AutoConfig

    out = AutoConfig.from_pretrained(str(folder)).to_dict()
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        out.pop(key, None)
    return out


def _cli(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("kind", CASES)
def test_hf_round_trip_is_bit_identical_with_equal_logits(models, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    back = convert_to(src, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    a, b = _config(src), _config(back)
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert logits_diff(back, model, VOCAB) <= 1e-5  # 16 tokens: past both chunk sizes


@pytest.mark.parametrize("kind", CASES)
def test_reference_forward_equals_transformers_past_the_chunk(models, kind: str) -> None:
    src, model = models[kind]
    source = open_source(detect(src))
    spec = source.spec
    assert spec.family == "llama4" and spec.attention_chunk < 24
    ids = fixed_tokens(VOCAB, length=24)
    with torch.no_grad():
        want = model(ids).logits
        assert (reference_logits(spec, source.get, ids) - want).abs().max().item() <= 1e-5
        # each Llama 4 feature changes the logits: the probe exercises all of them
        for dropped in (dict(chunked_layers=()), dict(nope_layers=()), dict(qk_l2_norm=False),
                        dict(temperature_tuning=False), dict(router_on_input=False)):
            assert (reference_logits(spec.with_(**dropped), source.get, ids) - want).abs().max().item() > 1e-4, dropped


def test_spec_reads_the_layer_pattern(models) -> None:
    step2 = open_source(detect(models["step2"][0])).spec
    assert (step2.dense_layers, step2.nope_layers, step2.chunked_layers) == ((0, 2), (3,), (0, 1, 2))
    assert (step2.ffn, step2.expert_ffn, step2.shared_expert_ffn, step2.topk) == (96, 32, 32, 1)
    assert step2.router_score == "sigmoid" and not step2.norm_topk_prob and step2.router_on_input
    listed = open_source(detect(models["listed"][0])).spec
    assert (listed.dense_layers, listed.nope_layers, listed.chunked_layers) == ((1, 2), (1,), (0, 2, 3))
    assert listed.qkv_bias and listed.o_bias and listed.tied and listed.topk == 2


@pytest.mark.parametrize("kind", CASES)
def test_parameters_count_as_transformers_does(models, kind: str) -> None:
    src, model = models[kind]
    assert logical_param_count(detect(src)) == sum(p.numel() for p in model.parameters())


def test_inspect_diff_and_check_name_the_family_and_its_quirks(models, tmp_path: Path) -> None:
    src, model = models["step2"]
    doc = json.loads(_cli("inspect", str(src), "--json").stdout)
    assert doc["family"] == "llama4"
    assert doc["totals"]["parameters"] == sum(p.numel() for p in model.parameters())
    for quirk in ("dense MLP on 2 of 4 layers", "L2 qk-norm (no weight) on the RoPE layers", "no RoPE on 1 of 4 layers",
                  "chunked attention (8 tokens) on 3 of 4 layers", "routed weight scales the expert input", "shared expert",
                  "attention temperature tuning on NoPE layers (floor 4, scale 0.5)"):
        assert quirk in doc["quirks"], doc["quirks"]
    back = convert_to(src, tmp_path / "hf", "hf")
    diff = _cli("diff", str(src), str(back))
    assert diff.exit_code == 0, diff.output
    text = " ".join(diff.stdout.split())
    assert "llama4: 4 layers" in text[text.index(" B: "):] and "chunked attention" in text
    check = _cli("check", str(src), "--to", "hf")
    assert check.exit_code == 0 and "model llama4:" in " ".join(check.stdout.split())


@pytest.mark.parametrize("fmt", ["megatron", "megatron-dist", "nxd"])
def test_megatron_and_nxd_targets_are_refused_in_one_line(models, fmt: str) -> None:
    src, _ = models["step2"]
    plan = make_plan(src, TargetOptions(fmt, tp=2))
    assert not plan.ok and all("\n" not in e for e in plan.errors)
    if fmt == "nxd":
        assert any("NoPE or chunked-attention layers" in e for e in plan.errors), plan.errors
        return
    error = next(e for e in plan.errors if "megatron-core cannot express this llama4 model" in e)
    for reason in ("chunked local attention (8-token chunks on 3 layers", "attention temperature tuning on the NoPE layers",
                   "an L2 QK-norm on the RoPE layers only"):
        assert reason in error, error
    check = _cli("check", str(src), "--to", fmt, "--tp", "2")
    assert check.exit_code != 0 and "chunked local attention" in " ".join(check.stdout.split())


def test_top2_with_input_scaled_experts_is_refused_for_megatron_by_name(models) -> None:
    plan = make_plan(models["listed"][0], TargetOptions("megatron", tp=1))
    assert any("moe_apply_probs_on_input needs moe_router_topk 1" in e for e in plan.errors), plan.errors


def test_verify_probes_into_a_second_chunk(models, tmp_path: Path) -> None:
    src, _ = models["step2"]
    back = convert_to(src, tmp_path / "hf", "hf")
    report = verify(src, back, tokens=4)
    assert report.probe_tokens == 17 and report.logits_ok and report.identical
    assert any("8-token attention chunk" in n for n in report.notes), report.notes


def test_megatron_args_carry_l2_norm_nope_layers_and_input_scaling(models) -> None:
    """megatron-core's names for what it can hold: `qk_l2_norm`, `no_rope_freq` (1 = NoPE, or every
    N-th layer), `moe_apply_probs_on_input`; read back to the same fields."""
    spec = open_source(detect(models["step2"][0])).spec
    args = _llama4_args(spec)
    assert args == {"qk_l2_norm": True, "moe_apply_probs_on_input": True, "no_rope_freq": [0, 0, 0, 1],
                    # carried beside the args (as hf_model_type) for the config.json round trip
                    "hf_attention_chunk_size": 8, "hf_attn_temperature_tuning": True, "hf_floor_scale": 4, "hf_attn_scale": 0.5}
    back = _llama4_from_args(args, spec.layers, spec.experts)
    assert back == {"qk_l2_norm": True, "nope_layers": (3,), "router_on_input": True, "attention_chunk": 8,
                    "temperature_tuning": True, "temperature_floor": 4, "temperature_scale": 0.5}
    assert _llama4_from_args({"no_rope_freq": 2}, 4, 0)["nope_layers"] == (1, 3)
    assert _llama4_from_args({}, 4, 0) == {"qk_l2_norm": False, "nope_layers": (), "router_on_input": False}
    with pytest.raises(SpecError, match="no_rope_freq"):
        _llama4_from_args({"no_rope_freq": [1, 0]}, 4, 0)


def test_multimodal_checkpoint_converts_its_text_model(tmp_path: Path) -> None:
    """A `Llama4ForConditionalGeneration` folder (model_type `llama4`, text under `language_model.`):
    the plan ignores the vision tower by a named rule and advises the rename; renamed, its text model
    converts to a `llama4_text` folder whose logits equal the multimodal model's language model."""
    import transformers as t
    from ckptscope.converters.renames import Renames, parse_rules
    from ckptscope.converters.run import run_to_end

    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vision_output_dim=64,
                  image_size=28, patch_size=14, projector_input_dim=64, projector_output_dim=64)
    model = t.Llama4ForConditionalGeneration(t.Llama4Config(text_config={**SMALL, **CASES["step2"]}, vision_config=vision)).eval()
    model.save_pretrained(tmp_path / "mm")
    plan = make_plan(tmp_path / "mm", TargetOptions("hf"))
    assert not plan.ok and any("--rename '^language_model\\.='" in e for e in plan.errors), plan.errors
    renames = Renames(rules=parse_rules([r"^language_model\.="]))
    plan = make_plan(tmp_path / "mm", TargetOptions("hf"), renames=renames)
    assert plan.ok, plan.errors
    tower = {name for name, rule in plan.accounting.ignored.items() if "(?# Llama 4 vision tower" in rule}
    assert tower and all(n.startswith(("vision_model.", "multi_modal_projector.")) for n in tower)
    assert tower == set(plan.accounting.ignored)  # nothing of the text model is dropped
    run_to_end(plan, tmp_path / "text")
    text = t.AutoModelForCausalLM.from_pretrained(str(tmp_path / "text")).eval()
    assert type(text).__name__ == "Llama4ForCausalLM" and text.config.model_type == "llama4_text"
    ids = fixed_tokens(VOCAB)
    with torch.no_grad():
        assert (text(ids).logits - model.language_model(input_ids=ids).logits).abs().max().item() <= 1e-5


# What megatron-core can hold of Llama 4: no chunked attention, no NoPE layers (so no temperature
# tuning and an L2 QK-norm on every layer), top-1; dense and MoE layers interleaved.
MEGATRON_CASE = dict(interleave_moe_layer_step=2, attention_chunk_size=None, no_rope_layers=[1, 1, 1, 1])


@pytest.mark.parametrize("fmt", ["megatron", "megatron-dist"])
def test_megatron_round_trip_of_what_megatron_core_can_hold(tmp_path: Path, fmt: str) -> None:
    import transformers as t

    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(t.Llama4TextConfig(**SMALL, **MEGATRON_CASE)).eval()
    model.save_pretrained(tmp_path / "src")
    assert not make_plan(tmp_path / "src", TargetOptions(fmt, tp=2)).errors
    layout = dict(tp=2, pp=2, ep=2) if fmt == "megatron" else dict(tp=2)
    mt = convert_to(tmp_path / "src", tmp_path / "mt", fmt, **layout)
    back = convert_to(mt, tmp_path / "hf", "hf")
    assert_same_hf_state(tmp_path / "src", back)
    assert _config(tmp_path / "src") == _config(back)
    assert logits_diff(back, model, VOCAB) <= 1e-5
    report = verify(tmp_path / "src", mt)  # the Megatron checkpoint itself, through the reference forward
    assert report.identical and report.logits_ok and not report.config_differences, report.to_json()


def test_foreign_megatron_args_with_input_scaled_experts_read_as_llama4() -> None:
    """Args with no `hf_model_type` (a Megatron run of Llama 4): input-scaled experts name the family,
    before Qwen2-MoE whose shared experts they also have; L2 norm and NoPE layers are read."""
    from ckptscope.converters.megatron_args import spec_from_megatron_args

    args = dict(num_layers=4, hidden_size=64, num_attention_heads=4, group_query_attention=True, num_query_groups=2,
                kv_channels=16, ffn_hidden_size=96, swiglu=True, normalization="RMSNorm", position_embedding_type="rope",
                add_bias_linear=False, num_experts=4, moe_router_topk=1, moe_ffn_hidden_size=32,
                moe_shared_expert_intermediate_size=32, moe_apply_probs_on_input=True, qk_l2_norm=True, no_rope_freq=4,
                vocab_size=VOCAB, padded_vocab_size=VOCAB, untie_embeddings_and_output_weights=True)
    spec = spec_from_megatron_args(args)
    assert (spec.family, spec.qk_l2_norm, spec.nope_layers, spec.router_on_input) == ("llama4", True, (3,), True)
    assert not spec.temperature_tuning and spec.attention_chunk is None  # megatron-core has neither
