"""Plain torch DCP checkpoints from FSDP trainers (issue 14), written by torch's own
`torch.distributed.checkpoint.save`: Accelerate's SHARDED_STATE_DICT layout (`{"model": sd}`,
HF names) and torchtitan's (its own Llama names beside optimizer and train state). Both convert
to HF with the logits of the model they were saved from, the architecture taken from a
config.json beside them or from --config."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from ckptscope.converters.plan import make_plan
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.summary import logical_param_count

from .helpers import convert_to, hf_state, logits_diff
from .test_families_registry import CASES as REGISTRY_CASES
from .test_families_registry import VOCAB as REGISTRY_VOCAB
from .test_families_registry import _build

VOCAB = 128


def _model(kind: str) -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    config = t.Qwen3Config(head_dim=32, tie_word_embeddings=kind == "qwen3-tied", **small) if kind.startswith("qwen3") \
        else t.LlamaConfig(**small)
    model = t.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _save(state: dict, folder: Path) -> Path:
    dcp.save(state, checkpoint_id=str(folder))  # torch's own writer: .metadata written last
    return folder


def test_accelerate_fsdp_sharded_state_dict(tmp_path: Path) -> None:
    model = _model("llama")
    run = tmp_path / "run"
    folder = _save({"model": {k: v.clone() for k, v in model.state_dict().items()}}, run / "pytorch_model_fsdp_0")
    model.config.to_json_file(run / "config.json")  # the Trainer keeps the model config in the run folder
    ckpt = detect(folder)
    assert ckpt.kind == "dcp" and ckpt.complete and not ckpt.warnings
    plan = make_plan(folder, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert "DCP naming: hf (under `model`)" in plan.notes and f"architecture: from {run / 'config.json'}" in plan.notes
    out = convert_to(folder, tmp_path / "hf", "hf")
    assert logits_diff(out, model, VOCAB) <= 1e-5
    # torch's .metadata records the checkpoint_id as a PosixPath: read as its text, no warning on every DCP folder
    from ckptscope.app.cli import app
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, ["inspect", str(folder)], terminal_width=200)
    assert shown.exit_code == 0 and "warnings" not in shown.stdout and not detect(folder).placeholders


# torchtitan's own state_dict_adapter maps (HF -> torchtitan, `{}` for layer then expert), re-derived from its
# source: the spellings of today and those before its 2026 renames (qkv_linear, lm_head, w1_EFD, routed_experts)
TITAN_COMMON = {
    "model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attention.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attention.k_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.gate.weight": "layers.{}.moe.router.gate.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",  # DeepSeek without a q latent
    "model.layers.{}.self_attn.q_a_proj.weight": "layers.{}.attention.wq_a.weight",
    "model.layers.{}.self_attn.q_a_layernorm.weight": "layers.{}.attention.q_norm.weight",
    "model.layers.{}.self_attn.q_b_proj.weight": "layers.{}.attention.wq_b.weight",
    "model.layers.{}.self_attn.kv_a_proj_with_mqa.weight": "layers.{}.attention.wkv_a.weight",
    "model.layers.{}.self_attn.kv_a_layernorm.weight": "layers.{}.attention.kv_norm.weight",
    "model.layers.{}.self_attn.kv_b_proj.weight": "layers.{}.attention.wkv_b.weight",
    "model.layers.{}.mlp.shared_experts.gate_proj.weight": "layers.{}.moe.shared_experts.w1.weight",
    "model.layers.{}.mlp.shared_experts.up_proj.weight": "layers.{}.moe.shared_experts.w3.weight",
    "model.layers.{}.mlp.shared_experts.down_proj.weight": "layers.{}.moe.shared_experts.w2.weight",
}
TITAN = {
    "now": {**TITAN_COMMON, "lm_head.weight": "lm_head.weight",
            **{f"model.layers.{{}}.self_attn.{n}_proj.weight": f"layers.{{}}.attention.qkv_linear.w{n}.weight" for n in "kv"},
            "model.layers.{}.mlp.experts.{}.gate_proj.weight": "layers.{}.moe.routed_experts.inner_experts.w1_EFD",
            "model.layers.{}.mlp.experts.{}.up_proj.weight": "layers.{}.moe.routed_experts.inner_experts.w3_EFD",
            "model.layers.{}.mlp.experts.{}.down_proj.weight": "layers.{}.moe.routed_experts.inner_experts.w2_EDF",
            "model.layers.{}.mlp.gate.e_score_correction_bias": "layers.{}.moe.expert_bias_E"},
    "before": {**TITAN_COMMON, "lm_head.weight": "output.weight",
               **{f"model.layers.{{}}.self_attn.{n}_proj.weight": f"layers.{{}}.attention.w{n}.weight" for n in "kv"},
               "model.layers.{}.mlp.experts.{}.gate_proj.weight": "layers.{}.moe.experts.w1",
               "model.layers.{}.mlp.experts.{}.up_proj.weight": "layers.{}.moe.experts.w3",
               "model.layers.{}.mlp.experts.{}.down_proj.weight": "layers.{}.moe.experts.w2",
               "model.layers.{}.mlp.gate.e_score_correction_bias": "layers.{}.moe.expert_bias"},
}


# gpt-oss's routed experts as torchtitan's model holds them (its adapter maps only the MXFP4 release's `*_blocks`):
# HF's stacked tensors in nn.Linear's orientation ([E, 2f, dim], gate / up still interleaved) - HF stem: (today, before, transpose)
TITAN_GPT_OSS = {"gate_up_proj": ("mlp1_weight_EGD", "mlp1_weight", True), "gate_up_proj_bias": ("mlp1_bias_EG", "mlp1_bias", False),
                 "down_proj": ("mlp2_weight_EDF", "mlp2_weight", True), "down_proj_bias": ("mlp2_bias_ED", "mlp2_bias", False)}
TITAN_LLAMA4_LAYER = {f"model.layers.{{}}.feed_forward.{p}.weight": f"layers.{{}}.feed_forward.{w}.weight"
                      for p, w in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))} | {
    f"model.layers.{{}}.feed_forward.shared_expert.{p}.weight": f"layers.{{}}.moe.shared_experts.{w}.weight"
    for p, w in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))} | {
    "model.layers.{}.feed_forward.router.weight": "layers.{}.moe.router.gate.weight"}
TITAN_GPT_OSS_LAYER = {"model.layers.{}.self_attn.o_proj.bias": "layers.{}.attention.wo.bias",
                       "model.layers.{}.self_attn.sinks": "layers.{}.attention.sinks",
                       "model.layers.{}.mlp.router.weight": "layers.{}.moe.router.gate.weight",
                       "model.layers.{}.mlp.router.bias": "layers.{}.moe.router.gate.bias"}


def _llama_q_or_k(w: torch.Tensor, heads: int) -> torch.Tensor:
    """torchtitan's Llama 3 adapter, HF -> torchtitan (`_reverse_permute`): its RoPE rotates adjacent pairs."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def torchtitan_state(model: torch.nn.Module, folder: Path, generation: str) -> dict[str, torch.Tensor]:
    """The model's state as torchtitan's `from_hf` builds it: its names, experts stacked on dim 0
    (expert order), Llama's q/k permuted to adjacent-pair RoPE, and a training run's optimizer state."""
    model.save_pretrained(folder)  # per-expert HF names, as the adapter reads them
    mapping, config = TITAN[generation], model.config
    # only a Llama-style attention's q_proj is torchtitan's `qkv_linear.wq` (DeepSeek's is `attention.wq`)
    q_name = "layers.{}.attention.qkv_linear.wq.weight" if generation == "now" else "layers.{}.attention.wq.weight"
    mapping = {**mapping, **({} if getattr(config, "kv_lora_rank", None) else {"model.layers.{}.self_attn.q_proj.weight": q_name})}
    mapping.update({f"model.layers.{{}}.self_attn.{n}_proj.bias": q_name.replace("wq.weight", f"w{n}.bias") for n in "qkv"})
    mapping.update(TITAN_GPT_OSS_LAYER | TITAN_LLAMA4_LAYER)
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in hf_state(folder).items():
        numbers = re.findall(r"\d+", key)
        if ".feed_forward.experts." in key:  # Llama 4: HF [E, dim, 2f] = [gate | up], down [E, f, dim]
            w = "_EFD" if generation == "now" else ""  # torchtitan retired llama4 before routed_experts.inner_experts
            if key.endswith("gate_up_proj"):
                gate, up = value.chunk(2, dim=-1)
                out[f"layers.{numbers[0]}.moe.experts.w1{w}"] = gate.transpose(-1, -2).contiguous()
                out[f"layers.{numbers[0]}.moe.experts.w3{w}"] = up.transpose(-1, -2).contiguous()
            else:
                out[f"layers.{numbers[0]}.moe.experts.w2{'_EDF' if w else ''}"] = value.transpose(-1, -2).contiguous()
            continue
        if (stem := key.rsplit(".", 1)[-1]) in TITAN_GPT_OSS and ".mlp.experts." in key:  # gpt-oss: stacked already
            now, before, transpose = TITAN_GPT_OSS[stem]
            name = f"moe.routed_experts.inner_experts.{now}" if generation == "now" else f"moe.experts.{before}"
            out[f"layers.{numbers[0]}.{name}"] = (value.transpose(1, 2) if transpose else value).contiguous()
            continue
        abstract = re.sub(r"\d+", "{}", key, count=2 if ".experts." in key and "shared" not in key else 1)
        target = mapping[abstract].format(numbers[0]) if numbers else mapping[abstract]
        if config.model_type == "llama" and abstract.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in key else config.num_key_value_heads
            value = _llama_q_or_k(value, heads)
        if ".experts." in key and "shared" not in key:
            experts.setdefault(target, {})[int(numbers[1])] = value
        else:
            out[target] = value.clone()
    out.update({name: torch.stack([by_e[e] for e in sorted(by_e)]) for name, by_e in experts.items()})
    shutil.rmtree(folder)
    out["optimizer.state.tok_embeddings.weight.exp_avg"] = torch.zeros_like(out["tok_embeddings.weight"])
    return out


@pytest.mark.parametrize("generation", ["now", "before"])
@pytest.mark.parametrize("kind", ["llama", "qwen3", "qwen3-tied"])
def test_torchtitan_step_folder(tmp_path: Path, kind: str, generation: str) -> None:
    model = _model(kind)
    state = torchtitan_state(model, tmp_path / "hf-src", generation)
    if model.config.tie_word_embeddings:  # torchtitan's weight tying keeps the head's key too (the same tensor)
        state["lm_head.weight" if generation == "now" else "output.weight"] = state["tok_embeddings.weight"]
    state["train_state"] = {"step": 10}
    folder = _save(state, tmp_path / "checkpoint" / "step-10")
    with pytest.raises(CheckpointError, match="--config"):
        make_plan(folder, TargetOptions("hf"))
    model.config.to_json_file(tmp_path / "config.json")
    out = convert_to(folder, tmp_path / "hf", "hf", config=tmp_path / "config.json")
    assert logits_diff(out, model, VOCAB) <= 1e-5
    plan = make_plan(folder, TargetOptions("megatron", tp=2), config=tmp_path / "config.json")
    assert plan.ok and "DCP naming: torchtitan" in plan.notes and not plan.accounting.unmatched
    assert any(n.startswith("older torchtitan spellings") for n in plan.notes) == (generation == "before")


@pytest.mark.parametrize("generation", ["now", "before"])
@pytest.mark.parametrize("kind", ["deepseek_v3", "deepseek_v2-lite", "qwen3_moe", "gpt_oss", "llama4"])
def test_torchtitan_moe_step_folder(tmp_path: Path, kind: str, generation: str) -> None:
    """torchtitan's DeepSeek-V3 model (latent attention with or without a q latent, dense first
    layer, stacked routed experts, shared experts, its load-balancing bias as the correction bias)
    Qwen3-MoE and gpt-oss (biases, sinks, interleaved gate / up): HF logits equal the model's; an MTP module and the routing counters are dropped by
    named rules, and a family whose HF router has no bias takes torchtitan's zero bias and drops it."""
    if kind not in REGISTRY_CASES:
        pytest.skip(f"no {kind} family in this tree")
    model = _build(kind)
    experts = next(getattr(model.config, a) for a in ("n_routed_experts", "num_local_experts", "num_experts")
                   if getattr(model.config, a, None))
    state = torchtitan_state(model, tmp_path / "hf-src", generation)
    bias = "expert_bias_E" if generation == "now" else "expert_bias"
    for i in sorted({int(k.split(".")[1]) for k in state if k.endswith(".moe.router.gate.weight")}):  # the MoE layers
        state.setdefault(f"layers.{i}.moe.{bias}", torch.zeros(experts))
        state[f"layers.{i}.moe.tokens_per_expert"] = torch.ones(state[f"layers.{i}.moe.{bias}"].shape)
    if kind == "deepseek_v3":
        state["mtp_layers.0.enorm.weight"] = torch.ones(model.config.hidden_size)
    folder = _save(state, tmp_path / "step-20")
    model.config.to_json_file(tmp_path / "config.json")  # a config.json beside the run
    plan = make_plan(folder, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert "DCP naming: torchtitan" in plan.notes and not plan.accounting.unmatched and not plan.accounting.missing
    assert any("multi-token-prediction" in r for r in plan.accounting.ignored.values()) == (kind == "deepseek_v3")
    out = convert_to(folder, tmp_path / "hf", "hf")
    assert logits_diff(out, model, REGISTRY_VOCAB) <= 1e-5
    ckpt = detect(folder)  # parameters as torchtitan's model counts them (its MTP module too); bias and counters apart
    mtp = sum(v.numel() for k, v in state.items() if k.startswith("mtp_layers."))
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters()) + mtp
    assert logical_param_count(ckpt, buffers=True) == sum(v.numel() for k, v in state.items() if "_per_expert" in k or "expert_bias" in k)
    stacked = [v for k, v in state.items() if k.startswith("layers.1.moe.") and v.dim() == 3]
    assert stacked and all(v.shape[0] == experts for v in stacked)  # every expert in one tensor


def test_torchtitan_without_load_balancing_reads_a_zero_correction_bias(tmp_path: Path) -> None:
    """A run without load balancing has no `expert_bias`: DeepSeek-V3's correction bias is zero then."""
    model = _build("deepseek_v3")
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.zero_()
    state = {k: v for k, v in torchtitan_state(model, tmp_path / "hf-src", "now").items() if "expert_bias" not in k}
    folder = _save(state, tmp_path / "step-1")
    model.config.to_json_file(tmp_path / "config.json")
    out = convert_to(folder, tmp_path / "hf", "hf")
    assert logits_diff(out, model, REGISTRY_VOCAB) <= 1e-5


def test_torchtitan_nonzero_bias_without_a_place_is_refused(tmp_path: Path) -> None:
    """Qwen3-MoE in HF routes without a bias: torchtitan's own export drops a trained one and so
    changes the expert choice; ckptscope refuses it in one line instead."""
    model = _build("qwen3_moe")
    state = torchtitan_state(model, tmp_path / "hf-src", "now")
    state["layers.2.moe.expert_bias_E"] = torch.full((model.config.num_experts,), 0.01)
    folder = _save(state, tmp_path / "step-1")
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(folder))}: layers\.2\.moe\.expert_bias_E is not zero"):
        make_plan(folder, TargetOptions("hf"))


def test_torchtitan_before_its_hf_adapter_is_refused_by_shape(tmp_path: Path) -> None:
    """torchtitan's first DeepSeek-V3 (July 2025) stored experts as [E, dim, ffn]: never misread."""
    model = _build("deepseek_v3")
    state = torchtitan_state(model, tmp_path / "hf-src", "before")
    for w in ("w1", "w2", "w3"):
        for i in range(1, model.config.num_hidden_layers):
            state[f"layers.{i}.moe.experts.{w}"] = state[f"layers.{i}.moe.experts.{w}"].transpose(1, 2).contiguous()
    folder = _save(state, tmp_path / "step-1")
    model.config.to_json_file(tmp_path / "config.json")
    e, d, f = model.config.n_routed_experts, model.config.hidden_size, model.config.moe_intermediate_size
    with pytest.raises(CheckpointError, match=rf"layers\.1\.moe\.experts\.w1 is \[{e}, {d}, {f}\], the model needs \[{e}, {f}, {d}\] "
                                              r"\(each expert \[in, out\]"):
        make_plan(folder, TargetOptions("hf"))


def test_megatron_torch_dist_is_not_taken_for_plain_dcp(tmp_path: Path) -> None:
    model = _model("llama")
    model.save_pretrained(tmp_path / "src")
    dist = convert_to(tmp_path / "src", tmp_path / "dist", "megatron-dist", tp=2)
    assert detect(dist).kind == "megatron-dist"
    shutil.rmtree(tmp_path / "src")


def test_torchtitan_fsdp_sharded_step_folder(tmp_path: Path) -> None:
    """A DeepSeek-V3 step folder as a two-rank FSDP2 run writes it (every tensor a DTensor sharded
    on dim 0, the stacked experts split over experts, one .distcp per rank): the chunks assemble
    into the model, HF logits equal."""
    import subprocess
    import sys

    model = _build("deepseek_v3")
    state = torchtitan_state(model, tmp_path / "hf-src", "now")
    torch.save(state, tmp_path / "state.pt")
    folder = tmp_path / "checkpoint" / "step-30"
    done = subprocess.run([sys.executable, "-m", "tests.dcp_sharded", str(tmp_path / "state.pt"), str(folder)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    ckpt = detect(folder)
    assert ckpt.kind == "dcp" and ckpt.complete and not ckpt.warnings
    experts = [t for t in ckpt.model_tensors() if ".inner_experts." in t.name]
    assert experts and all(len(t.chunks) == 2 for t in experts)  # each rank holds half the experts
    model.config.to_json_file(tmp_path / "checkpoint" / "config.json")
    out = convert_to(folder, tmp_path / "hf", "hf")
    assert logits_diff(out, model, REGISTRY_VOCAB) <= 1e-5
