"""More model families (issue 6): GPT-2, BLOOM, Falcon, CodeLlama, Apertus (and its old SwissAI
name), legacy QKV orderings, and rotary layouts (Meta consolidated shards, interleaved Megatron).

Each family: a tiny random `transformers` model -> Megatron torch (TP2, PP2) and torch_dist
(TP2) -> HF is bit-identical, the converted folder's logits match the source's, and the
intermediate Megatron checkpoint gives the same logits through the reference forward.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from ckptscope.converters.ops import (
    qkv_from_version,
    qkv_to_version,
    rotary_to_half,
    rotary_to_interleaved,
    split,
)
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.verify import verify
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect

from .helpers import (
    assert_same_hf_state,
    convert_to,
    hf_state,
    logits_diff,
    saved_models,
)

VOCAB = 300


def _build(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    small = {"vocab_size": VOCAB, "hidden_size": 64, "num_attention_heads": 8}
    if kind == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=8, n_positions=128,
                                               bos_token_id=0, eos_token_id=0))
    elif kind == "bloom":
        model = t.BloomForCausalLM(t.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=4, n_head=8))
    elif kind == "falcon-7b":  # multi-query, one norm feeding both parallel branches
        model = t.FalconForCausalLM(t.FalconConfig(num_hidden_layers=4, multi_query=True, **small))
    elif kind == "falcon-40b":  # new_decoder_architecture: grouped KV, ln_attn + ln_mlp
        model = t.FalconForCausalLM(t.FalconConfig(num_hidden_layers=4, new_decoder_architecture=True, num_kv_heads=2,
                                                   **small))
    elif kind == "falcon-seq":  # classic sequential block with biases, untied head
        model = t.FalconForCausalLM(t.FalconConfig(num_hidden_layers=4, multi_query=False, parallel_attn=False, bias=True,
                                                   tie_word_embeddings=False, **small))
    elif kind == "codellama":  # a Llama config with rope base 1e6
        model = t.LlamaForCausalLM(t.LlamaConfig(num_hidden_layers=4, intermediate_size=96, num_key_value_heads=2,
                                                 rope_theta=1e6, max_position_embeddings=128, **small))
    elif kind == "apertus":
        model = t.ApertusForCausalLM(t.ApertusConfig(num_hidden_layers=4, intermediate_size=96, num_key_value_heads=2,
                                                     max_position_embeddings=128, rope_parameters={"rope_type": "default",
                                                                                                   "rope_theta": 5e5},
                                                     **small))
    else:
        raise ValueError(kind)
    with torch.no_grad():  # non-trivial norms, biases and xIELU alphas so every term shows in the logits
        for name, p in model.named_parameters():
            if any(k in name for k in ("norm", "ln", "alpha")) or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


FAMILIES = ("gpt2", "bloom", "falcon-7b", "falcon-40b", "falcon-seq", "codellama", "apertus")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    return saved_models(tmp_path_factory, FAMILIES, _build)


_state = hf_state


_convert = convert_to
_assert_same_state = assert_same_hf_state


def _logits_diff(folder: Path, model: torch.nn.Module) -> float:
    return logits_diff(folder, model, VOCAB)


@pytest.mark.parametrize("kind", FAMILIES)
def test_family_megatron_round_trip(models, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2, pp=2)
    ckpt = detect(mt)
    assert (ckpt.parallel.tp, ckpt.parallel.pp) == (2, 2)
    back = _convert(mt, tmp_path / "hf", "hf")
    _assert_same_state(src, back)
    assert _logits_diff(back, model) <= 1e-5
    report = verify(src, mt)  # the Megatron checkpoint itself, through the reference forward
    assert report.identical and report.logits_ok, report.to_json()


@pytest.mark.parametrize("kind", ["gpt2", "bloom", "falcon-40b", "apertus"])
def test_family_torch_dist_round_trip(models, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    dist = _convert(src, tmp_path / "dist", "megatron-dist", tp=2, megatron_spec="te")
    assert detect(dist).kind == "megatron-dist"
    back = _convert(dist, tmp_path / "hf", "hf")
    _assert_same_state(src, back)
    assert _logits_diff(back, model) <= 1e-5


def test_family_is_detected_from_megatron_args(models, tmp_path: Path) -> None:
    expected = {"gpt2": "gpt2", "bloom": "bloom", "falcon-7b": "falcon", "apertus": "apertus", "codellama": "llama"}
    for kind, family in expected.items():
        mt = _convert(models[kind][0], tmp_path / kind, "megatron", tp=2)
        plan = make_plan(mt, TargetOptions("hf"))
        assert plan.spec.family == family and any(f"model family: {family}" in n for n in plan.notes)
    args = detect(tmp_path / "codellama").metadata["args"]
    assert args["rotary_base"] == 1000000 and args["swiglu"] is True
    gpt2 = detect(tmp_path / "gpt2").metadata["args"]
    assert gpt2["position_embedding_type"] == "learned_absolute" and gpt2["openai_gelu"] is True and not gpt2["swiglu"]


def test_gpt2_conv1d_is_transposed_and_split(models, tmp_path: Path) -> None:
    src, model = models["gpt2"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    ckpt = detect(mt)
    c_attn = model.transformer.h[0].attn.c_attn.weight.detach()  # Conv1D [in, 3*out]: [Q | K | V] columns
    q, k, v = (c_attn[:, i * 64:(i + 1) * 64].t() for i in range(3))
    fc1 = ckpt.load("decoder.layers.0.mlp.linear_fc1.weight", {"tp": 0})
    assert torch.equal(fc1, model.transformer.h[0].mlp.c_fc.weight.detach().t()[:128])  # up only, no gate
    heads = [torch.cat([q[8 * h:8 * h + 8], k[8 * h:8 * h + 8], v[8 * h:8 * h + 8]]) for h in range(8)]
    assert torch.equal(ckpt.load("decoder.layers.0.self_attention.linear_qkv.weight", {"tp": 1}), torch.cat(heads[4:]))
    pos = ckpt.load("embedding.position_embeddings.weight", {"tp": 1})  # learned positions: replicated over TP
    assert torch.equal(pos, model.transformer.wpe.weight.detach())


def test_swissai_name_reads_as_apertus(models, tmp_path: Path) -> None:
    src, model = models["apertus"]
    old = tmp_path / "swissai"
    shutil.copytree(src, old)
    config = json.loads((old / "config.json").read_text())
    config.update(model_type="swissai", architectures=["SwissAIForCausalLM"])
    (old / "config.json").write_text(json.dumps(config))
    plan = make_plan(old, TargetOptions("hf"))
    assert plan.ok and plan.spec.family == "apertus" and any("SwissAI" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["ApertusForCausalLM"]
    _assert_same_state(src, tmp_path / "hf")
    assert _logits_diff(tmp_path / "hf", model) <= 1e-5


# ----- legacy QKV orderings ----------------------------------------------------------------------
def test_qkv_version_ops_are_inverse() -> None:
    t = torch.randn(3 * 4 * 8, 5)
    for version in (0, 1):
        assert torch.equal(qkv_from_version(qkv_to_version(t, version, 4), version, 4), t)
    v0 = torch.arange(3 * 2 * 2).float()  # [3, heads=2, d=2]: q0 q1 | k0 k1 | v0 v1
    assert qkv_from_version(v0, 0, 2).tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]


@pytest.mark.parametrize("version", [0, 1])
def test_legacy_checkpoint_version_qkv(models, tmp_path: Path, version: int) -> None:
    """Megatron GPT checkpoints before checkpoint_version 2 stored QKV as [3, heads, d] (0) or
    [heads, d, 3] (1), per TP rank; reading them must undo that."""
    src, _ = models["gpt2"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)  # our own fixture
        state["checkpoint_version"] = float(version)
        for name in state["model"]:
            if "linear_qkv" in name:
                state["model"][name] = qkv_to_version(state["model"][name], version, 4)  # 4 heads per rank
        torch.save(state, rank_file)
    plan = make_plan(mt, TargetOptions("hf"))
    assert any("checkpoint_version" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    _assert_same_state(src, tmp_path / "hf")


# ----- rotary layouts ----------------------------------------------------------------------------
def test_rotary_permutation_is_meta_to_hf() -> None:
    """Per head, interleaved pairs (x0, x1), (x2, x3) become halves x0 x2 | x1 x3."""
    w = torch.arange(2 * 4).float().reshape(8, 1)  # 2 heads of d=4
    assert rotary_to_half(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    t = torch.randn(16, 3)
    assert torch.equal(rotary_to_interleaved(rotary_to_half(t, 2), 2), t)
    assert torch.equal(rotary_to_half(rotary_to_interleaved(t, 2, 4), 2, 4), t)


def _write_meta(model: torch.nn.Module, folder: Path, mp: int) -> None:
    """Meta consolidated shards of an HF Llama: q/k interleaved, Llama-2 splits (embedding by dim)."""
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    meta = {"tok_embeddings.weight": (sd["model.embed_tokens.weight"], 1), "norm.weight": (sd["model.norm.weight"], None),
            "output.weight": (sd["lm_head.weight"], 0), "rope.freqs": (torch.zeros(4), None)}
    for i in range(cfg.num_hidden_layers):
        p, m = f"model.layers.{i}.", f"layers.{i}."
        meta.update({
            m + "attention.wq.weight": (rotary_to_interleaved(sd[p + "self_attn.q_proj.weight"], heads), 0),
            m + "attention.wk.weight": (rotary_to_interleaved(sd[p + "self_attn.k_proj.weight"], kv), 0),
            m + "attention.wv.weight": (sd[p + "self_attn.v_proj.weight"], 0),
            m + "attention.wo.weight": (sd[p + "self_attn.o_proj.weight"], 1),
            m + "feed_forward.w1.weight": (sd[p + "mlp.gate_proj.weight"], 0),
            m + "feed_forward.w3.weight": (sd[p + "mlp.up_proj.weight"], 0),
            m + "feed_forward.w2.weight": (sd[p + "mlp.down_proj.weight"], 1),
            m + "attention_norm.weight": (sd[p + "input_layernorm.weight"], None),
            m + "ffn_norm.weight": (sd[p + "post_attention_layernorm.weight"], None),
        })
    folder.mkdir()
    for r in range(mp):
        shard = {n: (t if dim is None else split(t, dim, mp)[r]) for n, (t, dim) in meta.items()}
        torch.save(shard, folder / f"consolidated.{r:02d}.pth")
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": heads, "n_kv_heads": kv,
              "vocab_size": -1, "norm_eps": cfg.rms_norm_eps, "rope_theta": 1e6, "multiple_of": 32}
    (folder / "params.json").write_text(json.dumps(params))


def test_meta_consolidated_source_needs_the_permutation(models, tmp_path: Path) -> None:
    _, model = models["codellama"]
    _write_meta(model, tmp_path / "meta", mp=2)
    ckpt = detect(tmp_path / "meta")
    assert ckpt.kind == "meta" and ckpt.parallel.tp == 2
    plan = make_plan(tmp_path / "meta", TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert plan.spec.vocab == VOCAB and plan.spec.rope_theta == 1e6 and plan.accounting.ignored == {"rope.freqs": r"^rope\.freqs$"}
    run_to_end(plan, tmp_path / "hf")
    assert _logits_diff(tmp_path / "hf", model) <= 1e-5
    _assert_same_state(models["codellama"][0], tmp_path / "hf")
    # skipping the permutation (the weights claimed to be rotate-half already) breaks the model
    wrong = _convert(tmp_path / "meta", tmp_path / "wrong", "hf", rotary_layout="half")
    assert _logits_diff(wrong, model) > 100 * 1e-5  # orders of magnitude past the tolerance
    # Meta -> Megatron writes the standard (rotate-half) layout and says so in args
    mt = _convert(tmp_path / "meta", tmp_path / "mt", "megatron", tp=2)
    assert detect(mt).metadata["args"]["rotary_interleaved"] is False
    assert verify(tmp_path / "hf", mt).logits_ok


def test_interleaved_megatron_run_is_permuted_to_hf(models, tmp_path: Path) -> None:
    """A `--rotary-interleaved` Megatron run stores q/k interleaved inside the fused QKV."""
    from ckptscope.converters.ops import fuse_qkv, split_qkv

    src, model = models["codellama"]  # 8 heads, 2 query groups
    mt = _convert(src, tmp_path / "mt", "megatron", tp=1)
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)  # our own fixture
        state["args"] = argparse.Namespace(**{**vars(state["args"]), "rotary_interleaved": True})
        for name in state["model"]:
            if name.endswith("linear_qkv.weight"):
                q, k, v = split_qkv(state["model"][name], 8, 2)
                state["model"][name] = fuse_qkv(rotary_to_interleaved(q, 8), rotary_to_interleaved(k, 2), v, 8, 2)
        torch.save(state, rank_file)
    plan = make_plan(mt, TargetOptions("hf"))
    assert plan.spec.rotary_interleaved and any("interleaved rotary" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    _assert_same_state(src, tmp_path / "hf")
    assert _logits_diff(tmp_path / "hf", model) <= 1e-5
    assert verify(src, mt).logits_ok  # the reference forward reads it permuted too
    wrong = _convert(mt, tmp_path / "wrong", "hf", rotary_layout="half")  # the override, misused
    assert _logits_diff(wrong, model) > 100 * 1e-5  # orders of magnitude past the tolerance
    # Megatron -> Megatron keeps the run's layout (and its args flag)
    again = _convert(mt, tmp_path / "again", "megatron", tp=2)
    assert detect(again).metadata["args"]["rotary_interleaved"] is True
    assert verify(src, again).identical


def test_hf_source_refuses_interleaved_override(models) -> None:
    from ckptscope.inspectors.errors import CheckpointError

    with pytest.raises(CheckpointError, match="rotate-half"):
        make_plan(models["codellama"][0], TargetOptions("megatron"), rotary_layout="interleaved")


def test_diff_and_canonical_view_name_family_and_quirks(models, tmp_path: Path) -> None:
    from ckptscope.converters.canonical_view import canonical_view
    from ckptscope.converters.diff import diff_checkpoints

    src, _ = models["gpt2"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    view = canonical_view(detect(mt))
    assert view.family == "gpt2" and any("padded vocab" in q for q in view.quirks) and any("tied" in q for q in view.quirks)
    report = diff_checkpoints(src, mt)
    assert report.identical and report.a.model.startswith("gpt2:") and "learned positions" in report.b.model
