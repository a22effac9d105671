"""DeepSeek-V3 beyond the registry's cases: multi-token-prediction layers as the release stores
them (`model.layers.{num_hidden_layers}.*`) are carried to HF and to megatron-core's `mtp.layers.{k}`
bit for bit, and dropped by a rule the plan names where the target cannot hold them;
the correction bias is a buffer, so inspect counts parameters as the model does. Through Megatron:
megatron-core's TE names and fp32 `expert_bias`, `moe_layer_freq` forms, runs from elsewhere, and
one-line refusals of what megatron-core would route, rotate or normalise otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.errors import CheckpointError
from ckptscope.inspectors.model import logical_param_count
from ckptscope.inspectors.rankmap import rank_map
from safetensors.torch import load_file, save_file

from .helpers import assert_same_hf_state, convert_to, logits_diff
from .test_families_registry import VOCAB, _build

def test_inspect_counts_parameters_and_the_correction_bias_apart(tmp_path: Path) -> None:
    model = _build("deepseek_v3")
    model.save_pretrained(tmp_path / "src")
    ckpt = detect(tmp_path / "src")
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    biases = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert len(biases) == 3 and logical_param_count(ckpt, buffers=True) == sum(b.numel() for b in biases)  # layer 0 is dense


def _with_mtp_layer(folder: Path, layers: int) -> list[str]:
    """Add one MTP module as the release stores it: the last layer's block copied to index
    `layers`, plus its own norms, projection, head and embedding."""
    state = load_file(str(folder / "model.safetensors"))
    last, mtp = f"model.layers.{layers - 1}.", f"model.layers.{layers}."
    added = {mtp + n[len(last):]: t.clone() for n, t in state.items() if n.startswith(last)}
    hidden = state["model.norm.weight"].shape[0]
    added.update({mtp + "enorm.weight": torch.randn(hidden), mtp + "hnorm.weight": torch.randn(hidden),
                  mtp + "eh_proj.weight": torch.randn(hidden, 2 * hidden), mtp + "shared_head.norm.weight": torch.randn(hidden),
                  mtp + "shared_head.head.weight": state["lm_head.weight"].clone(),
                  mtp + "embed_tokens.weight": state["model.embed_tokens.weight"].clone()})
    save_file({**state, **added}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    return sorted(added)


def _mtp_source(tmp_path: Path) -> tuple[Path, torch.nn.Module, list[str]]:
    model = _build("deepseek_v3")
    src = tmp_path / "src"
    model.save_pretrained(src)
    return src, model, _with_mtp_layer(src, model.config.num_hidden_layers)


def test_mtp_layers_are_carried_to_hf(tmp_path: Path) -> None:
    """HF -> HF keeps the MTP module bit for bit and declares it; transformers ignores it, so the
    logits are the model's own."""
    src, model, added = _mtp_source(tmp_path)
    layers = model.config.num_hidden_layers
    plan = make_plan(src, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert not plan.accounting.ignored and all(plan.accounting.mapped[n][0].startswith("mtp.0.") for n in added)
    assert any("multi-token-prediction: 1 module(s) carried" in n for n in plan.notes), plan.notes
    out = convert_to(src, tmp_path / "hf", "hf")
    assert_same_hf_state(src, out)
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 1
    assert logits_diff(out, model, VOCAB) == 0.0
    quirks = make_plan(out, TargetOptions("hf")).spec.quirks()
    assert f"1 multi-token-prediction module(s) after the {layers} layers" in quirks


def test_mtp_declared_but_not_stored_is_written_as_none(tmp_path: Path) -> None:
    """A config that declares MTP modules whose tensors were stripped: nothing is missing, the
    output declares none."""
    model = _build("deepseek_v3")
    src = tmp_path / "src"
    model.save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 1}))
    plan = make_plan(src, TargetOptions("megatron", tp=2, ep=2))
    assert plan.ok and any("the files hold none" in n for n in plan.notes), (plan.errors, plan.notes)
    out = convert_to(src, tmp_path / "hf", "hf")
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 0


def test_mtp_layers_through_megatron_keep_every_bit(tmp_path: Path) -> None:
    """HF -> Megatron torch TP2×PP2×EP2 -> HF and HF -> torch_dist -> HF: every tensor, the MTP
    module's included, bit for bit. megatron-core's names: `mtp.layers.0.{enorm,hnorm,eh_proj,
    final_layernorm}` and `mtp.layers.0.mtp_model_layer.*` on the last stage, which also stores the
    embedding it shares (torch); eh_proj cut by rows over TP; `mtp_num_layers` 1 in the args; the
    embedding and head copies stored once. Checkpoints of megatron-core before 0.16
    (`transformer_layer.`) read the same."""
    from torch.distributed.checkpoint import FileSystemReader

    src, model, _ = _mtp_source(tmp_path)
    hidden = model.config.hidden_size
    plan = make_plan(src, TargetOptions("megatron", tp=2, pp=2, ep=2))
    assert plan.ok and any("carried as megatron-core's mtp.layers" in n for n in plan.notes), (plan.errors, plan.notes)
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, pp=2, ep=2)
    last = torch.load(next(mt.rglob("mp_rank_01_001_001/model_optim_rng.pt")), weights_only=False)
    names = last["model"]
    assert vars(last["args"])["mtp_num_layers"] == 1
    assert names["mtp.layers.0.eh_proj.weight"].shape == (hidden // 2, 2 * hidden)
    for name in ("mtp.layers.0.enorm.weight", "mtp.layers.0.hnorm.weight", "mtp.layers.0.final_layernorm.weight",
                 "mtp.layers.0.mtp_model_layer.self_attention.linear_kv_up_proj.weight", "mtp.layers.0.mtp_model_layer.mlp.router.expert_bias",
                 "mtp.layers.0.mtp_model_layer.mlp.experts.local_experts.0.linear_fc1.weight", "embedding.word_embeddings.weight"):
        assert name in names, name
    assert not any("embed_tokens" in n or "shared_head" in n for n in names)
    back = convert_to(mt, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    assert json.loads((back / "config.json").read_text())["num_nextn_predict_layers"] == 1
    assert logits_diff(back, model, VOCAB) <= 1e-5
    assert "MTP modules" in str(rank_map(detect(mt)).cells)
    from ckptscope.converters.diff import diff_checkpoints

    diff = diff_checkpoints(src, mt, numeric=True)  # the shared embedding and head serve as the MTP copies
    assert diff.mode == "canonical" and diff.identical, diff.problems()
    for rank_file in mt.rglob("model_optim_rng.pt"):  # megatron-core before 0.16: `transformer_layer.`
        state = torch.load(rank_file, weights_only=False)
        state["model"] = {k.replace(".mtp_model_layer.", ".transformer_layer."): v for k, v in state["model"].items()}
        torch.save(state, rank_file)
    assert_same_hf_state(src, convert_to(mt, tmp_path / "hf_old", "hf"))

    dist = convert_to(src, tmp_path / "dist", "megatron-dist", tp=2)
    meta = FileSystemReader(str(next(dist.glob("iter_*")))).read_metadata().state_dict_metadata
    assert "mtp.layers.0.mtp_model_layer.mlp.experts.experts.linear_fc1.weight" in meta
    assert len(meta["mtp.layers.0.eh_proj.weight"].chunks) == 2
    assert not any("embed" in k for k in meta if k.startswith("mtp."))
    back = convert_to(dist, tmp_path / "hf_dist", "hf")
    assert_same_hf_state(src, back)


def test_mtp_layers_in_fused_expert_form(tmp_path: Path) -> None:
    """Files holding transformers-5's fused experts (`mlp.experts.gate_up_proj` / `down_proj`) for
    every MoE layer, the MTP module's included: read as the per-expert form, bit for bit."""
    import re

    src, _, _ = _mtp_source(tmp_path)
    state, per_expert = load_file(str(src / "model.safetensors")), re.compile(r"(.+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight")
    fused: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name in [n for n in state if per_expert.match(n)]:
        m = per_expert.match(name)
        fused.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = state.pop(name)
    for prefix, experts in fused.items():
        state[prefix + ".gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate"], experts[e]["up"]]) for e in sorted(experts)])
        state[prefix + ".down_proj"] = torch.stack([experts[e]["down"] for e in sorted(experts)])
    assert "model.layers.4.mlp.experts.gate_up_proj" in state
    folder = tmp_path / "fused"
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    mt = convert_to(folder, tmp_path / "mt", "megatron", tp=2, ep=2)
    assert_same_hf_state(src, convert_to(mt, tmp_path / "hf", "hf"))


def test_mtp_copies_that_differ_are_refused_for_megatron(tmp_path: Path) -> None:
    """megatron-core stores one embedding and head for the model and its MTP modules: copies that
    differ are refused at plan time in one line (an HF target keeps them as they are)."""
    src, _, _ = _mtp_source(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    state["model.layers.4.shared_head.head.weight"] = state["model.layers.4.shared_head.head.weight"] + 1
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    for fmt in ("megatron", "megatron-dist"):
        plan = make_plan(src, TargetOptions(fmt, tp=2, ep=2))
        errors = [e for e in plan.errors if "multi-token-prediction" in e]
        assert len(errors) == 1 and "\n" not in errors[0] and "model.layers.4.shared_head.head.weight differs from lm_head.weight" in errors[0]
    assert make_plan(src, TargetOptions("hf")).ok


def test_mtp_layers_are_dropped_by_name_where_the_target_cannot_hold_them(tmp_path: Path) -> None:
    """NxD and Megatron-LLM have no MTP modules: the plan ignores them by a rule it names, from HF
    and from megatron-core's `mtp.layers`."""
    src, _, added = _mtp_source(tmp_path)
    plan = make_plan(src, TargetOptions("megatron", tp=2, megatron_spec="megatron-llm"))
    assert sorted(n for n in plan.accounting.ignored if n.startswith("model.layers.4.")) == added
    assert all("multi-token-prediction" in plan.accounting.ignored[n] for n in added)
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, ep=2)
    plan = make_plan(mt, TargetOptions("nxd", tp=2))
    dropped = [n for n in plan.accounting.ignored if n.startswith("mtp.layers.")]
    assert dropped and all("multi-token-prediction" in plan.accounting.ignored[n] for n in dropped)
    assert not any(n.startswith("mtp.layers.") for n in plan.accounting.mapped)


def test_a_release_style_config_reads_as_transformers_reads_it(tmp_path: Path) -> None:
    """The releases' config.json: v4 `rope_scaling` (type yarn, mscale / mscale_all_dim) beside a
    top-level `rope_theta`, and the original code's keys (scoring_func, topk_method, moe_layer_freq)."""
    from ckptscope.converters.reference import reference_logits
    from ckptscope.converters.sources import open_source
    from ckptscope.converters.verify import fixed_tokens
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    _build("deepseek_v3").save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    params = config.pop("rope_parameters")
    config.update(rope_theta=params.pop("rope_theta"), rope_scaling={**params, "type": params.pop("rope_type")},
                  scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1)
    config["rope_scaling"].pop("rope_type", None)
    (src / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    source = open_source(detect(src))
    ids = fixed_tokens(VOCAB, length=24)
    with torch.no_grad():
        assert (reference_logits(source.spec, source.get, ids) - model(ids).logits).abs().max().item() <= 1e-5
    assert logits_diff(convert_to(src, tmp_path / "hf", "hf"), model, VOCAB) == 0.0
    config["moe_layer_freq"] = 2  # the original code's MoE on every other layer: transformers' model has no such thing
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="moe_layer_freq 2 is not supported"):
        make_plan(src, TargetOptions("hf"))


def test_kimi_k2_config_reads_as_deepseek_v3(tmp_path: Path) -> None:
    """Kimi K2's config.json says `kimi_k2` for DeepSeek-V3's architecture (its remote code is V3's):
    read as deepseek_v3, written as transformers' own class, same logits."""
    model = _build("deepseek_v3")
    src = tmp_path / "src"
    model.save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "kimi_k2"
    (src / "config.json").write_text(json.dumps(config))
    out = convert_to(src, tmp_path / "hf", "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "deepseek_v3"
    assert logits_diff(out, model, VOCAB) == 0.0


# ----- through Megatron -----------------------------------------------------------------------------
def _saved(tmp_path: Path, kind: str = "deepseek_v3", **config) -> tuple[Path, torch.nn.Module]:
    """A tiny random model of a registry case, its config edited (rebuilt so the weights match it)."""
    import transformers as t

    from .test_families_registry import CASES

    base = CASES[kind][0](t)
    for key, value in config.items():
        setattr(base, key, value)
    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(base).eval()
    src = tmp_path / "src"
    model.save_pretrained(src)
    return src, model


@pytest.mark.parametrize(("edit", "reason"), [
    (dict(num_experts_per_tok=2), "this group-limited top-k"),  # top-2 in 2 groups: megatron-core sums a group's top 1
    (dict(norm_topk_prob=False), "sigmoid router weights renormalised otherwise"),
    (dict(rope_interleave=False), "latent attention rotating RoPE halves"),
    (dict(rms_norm_eps=1e-5), "norm epsilon other than 1e-06"),
])
def test_megatron_refuses_what_megatron_core_would_run_differently(tmp_path: Path, edit: dict, reason: str) -> None:
    """Megatron targets of a V3 that megatron-core routes, rotates or normalises otherwise are refused in
    one line naming the feature (the HF target still takes it); `check --to megatron` says the same."""
    from ckptscope.app.cli import app
    from typer.testing import CliRunner

    src, _ = _saved(tmp_path, **edit)
    assert make_plan(src, TargetOptions("hf")).ok
    for fmt in ("megatron", "megatron-dist"):
        plan = make_plan(src, TargetOptions(fmt, tp=2))
        assert not plan.ok and any(reason in e and "megatron-core cannot express" in e and "\n" not in e
                                   for e in plan.errors), plan.errors
    result = CliRunner().invoke(app, ["check", str(src), "--to", "megatron", "--tp", "2"])
    assert result.exit_code == 1 and result.stdout.startswith("NOT CONVERTIBLE") and reason in result.stdout


def test_megatron_te_names_and_moe_layer_freq_forms(tmp_path: Path) -> None:
    """Under the TE spec the latent norms are fused into the up-projections, the input norm stands
    alone, the dense layer's pre-MLP norm is fused into fc1 and a MoE layer's is not; the
    correction bias is `mlp.router.expert_bias` in fp32 whatever the dtype. Megatron's other
    spellings of `moe_layer_freq` (the CLI's list expression) read as the same layers."""
    src, _ = _saved(tmp_path)
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, pp=2, ep=2, megatron_spec="te", dtype=torch.bfloat16)
    first = torch.load(next(mt.rglob("mp_rank_00_000_000/model_optim_rng.pt")), weights_only=False)
    names = first["model"]
    for name in ("decoder.layers.0.input_layernorm.weight", "decoder.layers.0.self_attention.linear_q_up_proj.layer_norm_weight",
                 "decoder.layers.0.self_attention.linear_kv_up_proj.layer_norm_weight",
                 "decoder.layers.0.mlp.linear_fc1.layer_norm_weight", "decoder.layers.1.pre_mlp_layernorm.weight"):
        assert name in names, name
    assert names["decoder.layers.1.mlp.router.expert_bias"].dtype == torch.float32
    assert names["decoder.layers.1.mlp.router.weight"].dtype == torch.bfloat16
    # TE's duplicated down-projections: whole on every TP rank
    second = torch.load(next(mt.rglob("mp_rank_01_000_000/model_optim_rng.pt")), weights_only=False)["model"]
    key = "decoder.layers.0.self_attention.linear_kv_down_proj.weight"
    assert torch.equal(names[key], second[key]) and names[key].shape[0] == 16 + 8
    args = vars(first["args"])
    assert args["moe_layer_freq"] == [0, 1, 1, 1] and args["multi_latent_attention"] and args["mtp_num_layers"] is None
    reference = convert_to(mt, tmp_path / "hf", "hf")
    for rank_file in mt.rglob("model_optim_rng.pt"):  # the same layers in the CLI's list-expression form
        state = torch.load(rank_file, weights_only=False)
        state["args"].moe_layer_freq = "([0]*1+[1]*3)"
        torch.save(state, rank_file)
    assert_same_hf_state(reference, convert_to(mt, tmp_path / "hf2", "hf"))


def test_local_spec_refuses_latent_rows_that_do_not_split(tmp_path: Path) -> None:
    """megatron-core's local spec cuts the down-projections over TP (TE keeps them whole): rows that
    do not split are refused at plan time for the local spec only."""
    src, _ = _saved(tmp_path, "deepseek_v2-lite", kv_lora_rank=18)  # 18 + 8 RoPE rows
    plan = make_plan(src, TargetOptions("megatron-dist", tp=4))
    assert not plan.ok and any("kv_lora_rank + qk_pos_emb_head_dim 26 do not split" in e for e in plan.errors), plan.errors
    assert make_plan(src, TargetOptions("megatron-dist", tp=4, megatron_spec="te")).ok


@pytest.mark.parametrize("kind", ["deepseek_v3", "deepseek_v2-lite"])
def test_megatron_run_from_elsewhere_reads_as_deepseek(tmp_path: Path, kind: str) -> None:
    """Megatron args carry no model type: a run whose args lack ckptscope's `hf_model_type` is
    recognised by its architecture (latent attention; sigmoid router: V3, softmax: V2)."""
    src, model = _saved(tmp_path, kind)
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, ep=2)
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)
        del state["args"].hf_model_type
        torch.save(state, rank_file)
    back = convert_to(mt, tmp_path / "hf", "hf")
    assert json.loads((back / "config.json").read_text())["model_type"] == kind.split("-")[0]
    assert logits_diff(back, model, VOCAB) <= 1e-5


def test_torch_dist_local_spec_keys_per_layer(tmp_path: Path) -> None:
    """torch_dist of a V2-Lite in the local spec: one key per layer (dense and MoE layers differ:
    megatron-core's non_homogeneous_layers), the local spec's own latent names (no keys map for
    MLA), the down-projection cut over TP; back to HF bit for bit."""
    from torch.distributed.checkpoint import FileSystemReader

    src, model = _saved(tmp_path, "deepseek_v2-lite")
    dist = convert_to(src, tmp_path / "dist", "megatron-dist", tp=2)
    meta = FileSystemReader(str(next(dist.glob("iter_*")))).read_metadata().state_dict_metadata
    for key in ("decoder.layers.0.input_layernorm.weight", "decoder.layers.0.self_attention.linear_q_proj.weight",
                "decoder.layers.0.self_attention.kv_layernorm.weight", "decoder.layers.0.pre_mlp_layernorm.weight",
                "decoder.layers.0.mlp.linear_fc1.weight", "decoder.layers.1.mlp.router.weight",
                "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"):
        assert key in meta, key
    assert not any(k.startswith("decoder.layers.mlp.") for k in meta)  # nothing stacked over layers
    assert len(meta["decoder.layers.1.self_attention.linear_kv_down_proj.weight"].chunks) == 2  # column-cut
    back = convert_to(dist, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    assert logits_diff(back, model, VOCAB) <= 1e-5


def test_megatron_reshard_chain_keeps_every_bit(tmp_path: Path) -> None:
    """Megatron -> Megatron between layouts (EP4 under TE with an uneven PP split putting the dense
    layer alone on stage 0, torch_dist at TP4, torch PP4 × EP2): back in HF bit for bit."""
    src, _ = _saved(tmp_path)
    mt = convert_to(src, tmp_path / "ep4", "megatron", tp=2, pp=2, ep=4, megatron_spec="te", pp_layers=[1, 3])
    dist = convert_to(mt, tmp_path / "dist", "megatron-dist", tp=4)
    pp4 = convert_to(dist, tmp_path / "pp4", "megatron", pp=4, ep=2)
    assert_same_hf_state(src, convert_to(pp4, tmp_path / "hf", "hf"))


def test_grouped_gemm_expert_names_read_as_per_expert_ones(tmp_path: Path) -> None:
    """megatron-core's TEGroupedMLP (`moe_grouped_gemm`) stores a rank's experts as
    `mlp.experts.linear_fc1.weight{j}`: read like SequentialMLP's `local_experts.{j}`, with dense
    layers among them, bit for bit."""
    import re

    src, _ = _saved(tmp_path)
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, pp=2, ep=2, megatron_spec="te")
    grouped = re.compile(r"mlp\.experts\.local_experts\.(\d+)\.(linear_fc[12])\.weight")
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)
        state["model"] = {grouped.sub(r"mlp.experts.\2.weight\1", k): v for k, v in state["model"].items()}
        state["args"].moe_grouped_gemm = True
        torch.save(state, rank_file)
    assert any(k.endswith("mlp.experts.linear_fc1.weight0") for k in state["model"])
    assert_same_hf_state(src, convert_to(mt, tmp_path / "hf", "hf"))


def test_megatron_mtp_of_a_family_without_hf_mtp_names_is_dropped_by_name(tmp_path: Path) -> None:
    """megatron-core can give any GPT MTP modules (`mtp_num_layers`); an HF family with no names for
    them (Qwen3) drops them by the named rule instead of writing orphan layers."""
    model = _build("qwen3")
    model.save_pretrained(tmp_path / "src")
    mt = convert_to(tmp_path / "src", tmp_path / "mt", "megatron")
    rank_file = next(mt.rglob("model_optim_rng.pt"))
    state = torch.load(rank_file, weights_only=False)
    state["args"].mtp_num_layers = 1
    state["model"]["mtp.layers.0.enorm.weight"] = torch.ones(model.config.hidden_size)
    torch.save(state, rank_file)
    plan = make_plan(mt, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert "multi-token-prediction" in plan.accounting.ignored["mtp.layers.0.enorm.weight"]
    back = convert_to(mt, tmp_path / "hf", "hf")
    assert logits_diff(back, model, VOCAB) <= 1e-5
