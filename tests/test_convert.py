"""Conversion engine: bit-identical round trips through every Megatron layout, and logits.

Sources are tiny random `transformers` models saved with `save_pretrained`; every converted HF
folder is loaded back with `transformers` and its logits compared with the source model's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ckptscope.converters.ops import split
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import PlanRefused, run_to_end
from ckptscope.converters.verify import verify
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect

from .helpers import (
    convert_to,
    hf_state,
    logits_diff,
    saved_models,
)

COMMON = dict(vocab_size=300, hidden_size=64, num_hidden_layers=4, num_attention_heads=8, max_position_embeddings=128)


def _build(kind: str):
    import transformers

    torch.manual_seed(0)
    if kind == "llama-gqa":
        config = transformers.LlamaConfig(intermediate_size=96, num_key_value_heads=2, **COMMON)
    elif kind == "llama-tied":
        config = transformers.LlamaConfig(intermediate_size=96, num_key_value_heads=8, tie_word_embeddings=True, **COMMON)
    elif kind == "mistral":
        config = transformers.MistralConfig(intermediate_size=96, num_key_value_heads=4, sliding_window=None, **COMMON)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=False, **COMMON)
    elif kind == "mixtral":
        config = transformers.MixtralConfig(intermediate_size=32, num_key_value_heads=2, num_local_experts=4,
                                            num_experts_per_tok=2, **COMMON)
    else:
        raise ValueError(kind)
    model = getattr(transformers, config.architectures[0] if config.architectures else {
        "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
        "mixtral": "MixtralForCausalLM"}[config.model_type])(config).eval()
    with torch.no_grad():  # non-trivial norms and biases so every term shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    return saved_models(tmp_path_factory, ("llama-gqa", "llama-tied", "mistral", "qwen2", "mixtral"), _build, max_shard_size="100KB")


_state = hf_state


_convert = convert_to


def _assert_hf_logits(folder: Path, model: torch.nn.Module, tol: float = 1e-5) -> None:
    diff = logits_diff(folder, model, model.config.vocab_size)
    assert diff <= tol, diff


ROUND_TRIPS = [
    ("llama-gqa", dict(tp=1, pp=1, megatron_spec="local")),
    ("llama-gqa", dict(tp=2, pp=2, megatron_spec="te")),
    ("llama-gqa", dict(tp=4, pp=1, megatron_spec="local")),  # TP > query groups
    ("llama-gqa", dict(tp=2, pp=2, pp_layers=[1, 3], megatron_spec="local")),  # uneven pipeline
    ("llama-tied", dict(tp=2, pp=2, megatron_spec="local")),
    ("llama-tied", dict(tp=4, pp=1, megatron_spec="te")),
    ("mistral", dict(tp=2, pp=1, megatron_spec="te")),
    ("qwen2", dict(tp=2, pp=2, megatron_spec="local")),
    ("mixtral", dict(tp=2, pp=2, ep=2, megatron_spec="te")),
    ("mixtral", dict(tp=1, pp=1, ep=4, megatron_spec="local")),
    ("mixtral", dict(tp=4, pp=1, ep=1, megatron_spec="local")),
]


@pytest.mark.parametrize(("kind", "layout"), ROUND_TRIPS, ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{v}" for k, v in v.items()))
def test_hf_megatron_hf_round_trip(models, tmp_path: Path, kind: str, layout: dict) -> None:
    src, model = models[kind]
    mt = _convert(src, tmp_path / "mt", "megatron", **layout)
    ckpt = detect(mt)
    assert (ckpt.parallel.tp, ckpt.parallel.pp, ckpt.parallel.ep) == (layout["tp"], layout["pp"], layout.get("ep", 1))
    back = _convert(mt, tmp_path / "hf", "hf")
    a, b = _state(src), _state(back)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    _assert_hf_logits(back, model)
    # the intermediate Megatron checkpoint itself gives the same logits (reference forward)
    report = verify(src, mt, tolerance=1e-5)
    assert report.identical and report.logits_ok, report.to_json()


@pytest.mark.parametrize("kind", ["llama-gqa", "llama-tied", "qwen2", "mixtral"])
def test_hf_dist_hf_round_trip(models, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    dist = _convert(src, tmp_path / "dist", "megatron-dist", tp=2)
    assert detect(dist).kind == "megatron-dist"
    back = _convert(dist, tmp_path / "hf", "hf")
    a, b = _state(src), _state(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _assert_hf_logits(back, model)


def test_megatron_reshard_chain(models, tmp_path: Path) -> None:
    src, _ = models["llama-gqa"]
    first = _convert(src, tmp_path / "tp2pp2", "megatron", tp=2, pp=2)
    second = _convert(first, tmp_path / "tp4pp1", "megatron", tp=4, pp=1)
    third = _convert(second, tmp_path / "tp1pp2", "megatron", tp=1, pp=2, megatron_spec="te")
    assert detect(third).parallel.label() == "TP1×PP2"
    report = verify(src, third, logits=False)
    assert report.identical and len(report.tensors) == len(_state(src))


def test_torch_and_torch_dist_both_ways(models, tmp_path: Path) -> None:
    src, _ = models["mixtral"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2, ep=2)
    dist = _convert(mt, tmp_path / "dist", "megatron-dist", tp=1)
    mt2 = _convert(dist, tmp_path / "mt2", "megatron", tp=1, pp=2, ep=4)
    for target in (dist, mt2):
        report = verify(src, target, logits=False)
        assert report.identical, report.to_json()


def test_swiglu_per_rank_packing_is_not_a_plain_concatenation(models, tmp_path: Path) -> None:
    src, model = models["llama-gqa"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    ckpt = detect(mt)
    shards = [ckpt.load("decoder.layers.1.mlp.linear_fc1.weight", {"tp": r}) for r in range(2)]
    gate = model.model.layers[1].mlp.gate_proj.weight.detach()
    up = model.model.layers[1].mlp.up_proj.weight.detach()
    # what the file holds per rank: [gate_r; up_r]
    for r in range(2):
        assert torch.equal(shards[r], torch.cat([split(gate, 0, 2)[r], split(up, 0, 2)[r]]))
    naive_gate, naive_up = torch.chunk(torch.cat(shards), 2)
    assert not torch.equal(naive_gate, gate)  # a naive merge would silently break the model
    back = _convert(mt, tmp_path / "hf", "hf")
    assert torch.equal(_state(back)["model.layers.1.mlp.gate_proj.weight"], gate)


def test_gqa_fused_qkv_layout_with_tp(models, tmp_path: Path) -> None:
    src, model = models["llama-gqa"]  # 8 heads, 2 query groups, head dim 8
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    ckpt = detect(mt)
    attn = model.model.layers[0].self_attn
    q, k, v = (w.weight.detach().reshape(-1, 8, 64) for w in (attn.q_proj, attn.k_proj, attn.v_proj))
    for r in range(2):  # rank r holds query group r: its 4 query heads, then k_r, then v_r
        expected = torch.cat([q[4 * r: 4 * r + 4], k[r: r + 1], v[r: r + 1]]).reshape(-1, 64)
        assert torch.equal(ckpt.load("decoder.layers.0.self_attention.linear_qkv.weight", {"tp": r}), expected)


def test_plan_refuses_unmatched_and_accepts_ignore(models, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    src, _ = models["llama-gqa"]
    odd = tmp_path / "odd"
    shutil.copytree(src, odd)
    index = odd / "model.safetensors.index.json"
    import json

    data = json.loads(index.read_text())
    save_file({"model.layers.0.self_attn.q_proj.weight_scale_inv": torch.ones(1)}, str(odd / "extra.safetensors"))
    data["weight_map"]["model.layers.0.self_attn.q_proj.weight_scale_inv"] = "extra.safetensors"
    index.write_text(json.dumps(data))
    plan = make_plan(odd, TargetOptions("megatron"))
    assert not plan.ok and "q_proj.weight_scale_inv" in plan.errors[0] and "nearest rule" in plan.errors[0]
    with pytest.raises(PlanRefused):
        run_to_end(plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    plan = make_plan(odd, TargetOptions("megatron"), ignore=("*weight_scale_inv",))
    assert plan.ok and plan.accounting.ignored


def test_vocab_padding_and_true_vocab(models, tmp_path: Path) -> None:
    src, model = models["llama-gqa"]  # vocab 300 -> padded 512 at TP2 (128 x 2)
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    ckpt = detect(mt)
    assert ckpt.metadata["args"]["padded_vocab_size"] == 512
    assert ckpt.tensor("embedding.word_embeddings.weight", {"tp": 0}).shape == (256, 64)
    # drop the stored true vocab to simulate a run that did not record it
    plan = make_plan(mt, TargetOptions("hf"), true_vocab=300)
    assert plan.spec.vocab == 300 and plan.ok
    run_to_end(plan, tmp_path / "hf")
    _assert_hf_logits(tmp_path / "hf", model)


def test_output_refuses_non_empty_folder(models, tmp_path: Path) -> None:
    src, _ = models["llama-gqa"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    plan = make_plan(src, TargetOptions("megatron"))
    with pytest.raises(FileExistsError):
        run_to_end(plan, out)
    assert (out / "keep.txt").read_text() == "mine"
    run_to_end(plan, out, force=True)
    assert not (out / "keep.txt").exists() and detect(out).kind == "megatron-torch"
    assert not [p for p in tmp_path.iterdir() if "ckptscope-partial" in p.name]


@pytest.mark.parametrize("fmt", ["legacy", "dist"])
@pytest.mark.parametrize("item", ["gpt_tp2pp1", "moe_ep2"])
def test_real_megatron_corpus_to_hf_logits(corpus: Path, tmp_path: Path, item: str, fmt: str) -> None:
    from transformers import AutoModelForCausalLM

    folder = corpus / "megatron" / item
    out = _convert(folder / fmt, tmp_path / "hf", "hf")
    ids = torch.load(folder / "input_ids.pt")
    ref = torch.load(folder / "reference_logits.pt")
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max().item() <= 1e-4


def test_layernorm_1p_offset_is_undone(models, tmp_path: Path) -> None:
    """A run with --apply-layernorm-1p stores gamma - 1; the HF side must see gamma."""
    import argparse

    src, model = models["llama-gqa"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=1)
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)  # our own fixture
        state["args"] = argparse.Namespace(**{**vars(state["args"]), "apply_layernorm_1p": True})
        for name in state["model"]:
            if name.endswith("layernorm.weight"):
                state["model"][name] = state["model"][name] - 1
        torch.save(state, rank_file)
    back = _convert(mt, tmp_path / "hf", "hf")
    a, b = _state(src), _state(back)
    assert torch.allclose(a["model.norm.weight"], b["model.norm.weight"], atol=1e-6)
    _assert_hf_logits(back, model, tol=1e-4)
    again = _convert(back, tmp_path / "mt2", "megatron", tp=1)
    assert detect(again).metadata["args"]["apply_layernorm_1p"] is False


def test_virtual_pipeline_source(tmp_path: Path) -> None:
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch
    from ckptscope.converters.samples.spec import SampleSpec

    spec = SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300)
    write_megatron_torch(spec, tmp_path / "vpp", tp=2, pp=2, vpp=2)
    back = _convert(tmp_path / "vpp", tmp_path / "hf", "hf")
    state = _state(back)
    for i in range(4):
        assert torch.equal(state[f"model.layers.{i}.self_attn.q_proj.weight"], spec.tensor(f"layers.{i}.attn.q"))
        assert torch.equal(state[f"model.layers.{i}.mlp.up_proj.weight"], spec.tensor(f"layers.{i}.mlp.up"))


@pytest.mark.parametrize("item", ["gpt_tp2pp1", "moe_ep2"])
def test_torch_dist_output_matches_megatron_core_layout(corpus: Path, tmp_path: Path, item: str) -> None:
    """Our torch_dist writer produces the keys, global shapes and chunk boxes megatron-core wrote."""
    from ckptscope.inspectors.dcp import DcpReader

    real = corpus / "megatron" / item / "dist"
    hp = __import__("json").loads((corpus / "megatron" / item / "hparams.json").read_text())
    ours = _convert(corpus / "megatron" / item / "legacy", tmp_path / "dist", "megatron-dist",
                    tp=hp["tensor_model_parallel_size"], ep=1, iteration=10)
    a = DcpReader(real / "iter_0000010")
    b = DcpReader(ours / "iter_0000010")
    assert a.tensors.keys() == b.tensors.keys()
    for key, t in a.tensors.items():
        assert tuple(t.shape) == tuple(b.tensors[key].shape) and t.dtype == b.tensors[key].dtype, key
        assert sorted((c.offsets, c.sizes) for c in t.chunks) == sorted((c.offsets, c.sizes) for c in b.tensors[key].chunks), key
        assert torch.equal(a.read_tensor(key), b.read_tensor(key)), key
    assert {k.split("/")[0] for k in a.objects} == {k.split("/")[0] for k in b.objects}


def test_tokenizer_is_copied_and_sizes_the_vocab(models, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(300)}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_dir = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(tok_dir)
    src, model = models["llama-gqa"]
    mt = _convert(src, tmp_path / "mt", "megatron", tp=2)
    plan = make_plan(mt, TargetOptions("hf", tokenizer=tok_dir))
    plan_vocab = plan.spec.vocab
    run_to_end(plan, tmp_path / "hf")
    assert plan_vocab == 300
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert loaded("w5 w7")["input_ids"] == [5, 7]


def test_llama3_rope_scaling_survives_megatron(tmp_path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(intermediate_size=96, num_key_value_heads=2, rope_theta=500000.0,
                                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                      **COMMON)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "src")
    mt = _convert(tmp_path / "src", tmp_path / "mt", "megatron", tp=2)
    args = detect(mt).metadata["args"]
    assert args["use_rope_scaling"] is True and args["rope_scaling_factor"] == 8.0 and args["rotary_base"] == 500000
    back = _convert(mt, tmp_path / "hf", "hf")
    _assert_hf_logits(back, model)
