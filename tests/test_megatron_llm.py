"""epfLLM Megatron-LLM checkpoints (model families issue): read at any TP/PP, written as a target.

The fixtures are written here the way Megatron-LLM writes them, independently of ckptscope's
own ops: `weights_conversion/hf_to_megatron.py` (release, TP1: `language_model.transformer`,
`attention`, q/k per head permuted half -> interleaved, `dense_h_to_4h = cat(up, gate)`) and
`tools/checkpoint_saver_megatron.py` (TP/PP shards: `language_model.encoder`, `self_attention`,
QKV chunked over TP, `dense_h_to_4h` per rank `[up_r; gate_r]`, embedding and `lm_head` padded
by repeating the last row and chunked by vocab rows). `position_embedding_type` is pickled as
Megatron-LLM's enum, which the safe reader keeps as a placeholder.
"""

from __future__ import annotations

import argparse
import enum
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.verify import verify
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from typer.testing import CliRunner

from .helpers import assert_same_hf_state, convert_to, logits_diff

VOCAB = 250  # padded to 256 at TP2 with make_vocab_size_divisible_by 16
TOL = 1e-5


def _llama() -> torch.nn.Module:
    import transformers as t

    torch.manual_seed(0)
    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
                                             num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128,
                                             tie_word_embeddings=False))
    with torch.no_grad():  # non-trivial norms so every term shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ----- Megatron-LLM's layout, written from its conversion code (not from ckptscope) ------------
def _to_interleaved(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """permute_qkv for one head: rows in halves (x0..x_{d/2-1} | x_{d/2}..) -> pairs (x0, x_{d/2}), ..."""
    return w.view(2, head_dim // 2, w.shape[1]).transpose(0, 1).reshape(head_dim, w.shape[1])


def _mllm_qkv(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, heads: int, kv: int) -> torch.Tensor:
    """hf_to_megatron's rearrange_qkv + permute_qkv: per KV group [q.., k, v], q and k permuted."""
    d = wq.shape[0] // heads
    q, k, v = wq.split(d), wk.split(d), wv.split(d)
    per = heads // kv
    rows = []
    for g in range(kv):
        rows += [_to_interleaved(q[g * per + j], d) for j in range(per)] + [_to_interleaved(k[g], d), v[g]]
    return torch.cat(rows)


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """checkpoint_saver_megatron: expand by replicating the final entry."""
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], -1)]) if rows > t.shape[0] else t


class _Enums:
    """`megatron.model.enums.PositionEmbeddingType` importable while the fixture is pickled, so
    the file holds the real global reference (the reader never imports it)."""

    def __enter__(self) -> type:
        class PositionEmbeddingType(enum.Enum):
            rotary = 1
            absolute = 2

        mod = types.ModuleType("megatron.model.enums")
        PositionEmbeddingType.__module__ = mod.__name__
        PositionEmbeddingType.__qualname__ = "PositionEmbeddingType"
        mod.PositionEmbeddingType = PositionEmbeddingType  # type: ignore[attr-defined]
        self.names = ["megatron", "megatron.model", "megatron.model.enums"]
        self.saved = {n: sys.modules.get(n) for n in self.names}
        sys.modules.update({"megatron": types.ModuleType("megatron"), "megatron.model": types.ModuleType("megatron.model"),
                            "megatron.model.enums": mod})
        return PositionEmbeddingType

    def __exit__(self, *exc: object) -> None:
        for name, old in self.saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def write_mllm_sharded(model: torch.nn.Module, root: Path, tp: int, pp: int, *, swap_up_gate: bool = False) -> Path:
    """A Megatron-LLM llama checkpoint as its trainer / checkpoint_util saves it at TP x PP."""
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    heads, kv, h, layers = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.num_hidden_layers
    divisible = 16
    padded = math.ceil(VOCAB / (divisible * tp)) * divisible * tp
    per_stage = layers // pp
    it = root / "iter_0000007"
    with _Enums() as PositionEmbeddingType:
        args = argparse.Namespace(
            num_layers=layers, encoder_num_layers=layers, hidden_size=h, ffn_hidden_size=cfg.intermediate_size,
            num_attention_heads=heads, num_attention_heads_kv=kv, kv_channels=h // heads, max_position_embeddings=128,
            seq_length=128, padded_vocab_size=padded, make_vocab_size_divisible_by=divisible, glu_activation="swiglu",
            use_rms_norm=True, use_bias=False, tie_embed_logits=False, layernorm_epsilon=cfg.rms_norm_eps,
            rope_theta=10000.0, rope_scaling_factor=1.0, parallel_attn=False, parallel_layernorm=False, use_post_ln=False,
            position_embedding_type=PositionEmbeddingType.rotary, tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp, params_dtype=torch.float32, bf16=False, fp16=False, iteration=7,
            tokenizer_type="SentencePieceTokenizer", bias_gelu_fusion=False, use_flash_attn=False)
        embed = _pad(sd["model.embed_tokens.weight"], padded).chunk(tp)
        head = _pad(sd["lm_head.weight"], padded).chunk(tp)
        for stage in range(pp):
            for r in range(tp):
                encoder: dict[str, torch.Tensor] = {}
                for local in range(per_stage):
                    i = stage * per_stage + local
                    p, m = f"model.layers.{i}.", f"layers.{local}."
                    qkv = _mllm_qkv(sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"],
                                    sd[p + "self_attn.v_proj.weight"], heads, kv)
                    up, gate = sd[p + "mlp.up_proj.weight"].chunk(tp)[r], sd[p + "mlp.gate_proj.weight"].chunk(tp)[r]
                    encoder.update({
                        m + "input_layernorm.weight": sd[p + "input_layernorm.weight"],
                        m + "self_attention.query_key_value.weight": qkv.chunk(tp)[r].clone(),
                        m + "self_attention.dense.weight": sd[p + "self_attn.o_proj.weight"].chunk(tp, dim=1)[r].clone(),
                        m + "post_attention_layernorm.weight": sd[p + "post_attention_layernorm.weight"],
                        m + "mlp.dense_h_to_4h.weight": torch.cat([gate, up] if swap_up_gate else [up, gate]),
                        m + "mlp.dense_4h_to_h.weight": sd[p + "mlp.down_proj.weight"].chunk(tp, dim=1)[r].clone(),
                    })
                lm: dict[str, object] = {"encoder": encoder}
                if stage == 0:
                    lm["embedding"] = {"word_embeddings": {"weight": embed[r].clone()}}
                if stage == pp - 1:
                    encoder["final_layernorm.weight"] = sd["model.norm.weight"]
                    lm["lm_head"] = head[r].clone()
                folder = it / (f"mp_rank_{r:02d}" + (f"_{stage:03d}" if pp > 1 else ""))
                folder.mkdir(parents=True)
                torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 7, "model": {"language_model": lm}},
                           folder / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("7")
    return root


def write_mllm_release(model: torch.nn.Module, root: Path) -> Path:
    """hf_to_megatron.py's output: release, TP1, `transformer` / `attention`, minimal args."""
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    transformer = {"final_layernorm.weight": sd["model.norm.weight"]}
    for i in range(cfg.num_hidden_layers):
        p, m = f"model.layers.{i}.", f"layers.{i}."
        transformer.update({
            m + "attention.dense.weight": sd[p + "self_attn.o_proj.weight"],
            m + "post_attention_layernorm.weight": sd[p + "post_attention_layernorm.weight"],
            m + "input_layernorm.weight": sd[p + "input_layernorm.weight"],
            m + "mlp.dense_4h_to_h.weight": sd[p + "mlp.down_proj.weight"],
            m + "mlp.dense_h_to_4h.weight": torch.cat([sd[p + "mlp.up_proj.weight"], sd[p + "mlp.gate_proj.weight"]]),
            m + "attention.query_key_value.weight": _mllm_qkv(sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"],
                                                              sd[p + "self_attn.v_proj.weight"], heads, kv),
        })
    weights = {"embedding": {"word_embeddings.weight": sd["model.embed_tokens.weight"]}, "transformer": transformer,
               "lm_head": sd["lm_head.weight"]}
    args = argparse.Namespace(num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size, num_attention_heads=heads,
                              num_attention_heads_kv=kv, ffn_hidden_size=cfg.intermediate_size, parallel_attn=False,
                              make_vocab_size_divisible_by=16, glu_activation="swiglu", padded_vocab_size=VOCAB,
                              use_rms_norm=True, tie_embed_logits=False, tokenizer_type="SentencePieceTokenizer",
                              max_position_embeddings=128, seq_length=128, layernorm_epsilon=cfg.rms_norm_eps,
                              tensor_model_parallel_size=1, pipeline_model_parallel_size=1, iteration="release",
                              bias_gelu_fusion=False, bias_droput_fusion=False, position_embedding_type="rotary")
    (root / "release" / "mp_rank_00").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("release")
    torch.save({"iteration": "release", "model": {"language_model": weights}, "checkpoint_version": 3.0, "args": args},
               root / "release" / "mp_rank_00" / "model_optim_rng.pt")
    return root


# ----- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("llama")
    model = _llama()
    model.save_pretrained(folder)
    return folder, model


def _to(src: Path, dst: Path, fmt: str, true_vocab: int | None = None, **kw) -> Path:
    return convert_to(src, dst, fmt, true_vocab=true_vocab, **kw)


def _logits_diff(folder: Path, model: torch.nn.Module) -> float:
    return logits_diff(folder, model, VOCAB)


_assert_same_state = assert_same_hf_state


# ----- reading ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("tp", "pp"), [(2, 2), (2, 1), (1, 2)])
def test_megatron_llm_shards_to_hf_match_the_source_logits(llama, tmp_path: Path, tp: int, pp: int) -> None:
    src, model = llama
    mt = write_mllm_sharded(model, tmp_path / "mllm", tp, pp)
    ckpt = detect(mt)
    assert (ckpt.parallel.tp, ckpt.parallel.pp) == (tp, pp) and "language_model.lm_head" in {t.global_name for t in ckpt.tensors}
    plan = make_plan(mt, TargetOptions("hf"), true_vocab=VOCAB)
    assert plan.ok, plan.errors
    assert plan.spec.family == "llama" and plan.spec.rotary_interleaved and plan.spec.kv_heads == 2 and not plan.spec.o_bias
    assert any("Megatron naming: megatron-llm" in n and "[up; gate]" in n for n in plan.notes)
    assert any("Megatron-LLM layout (SwiGLU fc1 packed [up; gate])" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    diff = _logits_diff(tmp_path / "hf", model)
    print(f"Megatron-LLM TP{tp} PP{pp} -> HF: max |logits diff| = {diff:.3g}")
    assert diff <= TOL
    _assert_same_state(src, tmp_path / "hf")  # only permutations and concatenations: bit-identical
    assert verify(src, mt, true_vocab=VOCAB).logits_ok  # the Megatron-LLM files through the reference forward


def test_megatron_llm_release_layout_from_hf_to_megatron(llama, tmp_path: Path) -> None:
    src, model = llama
    mt = write_mllm_release(model, tmp_path / "release")
    plan = make_plan(mt, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert any("megatron-llm-release" in n for n in plan.notes) and plan.spec.vocab == VOCAB
    run_to_end(plan, tmp_path / "hf")
    assert _logits_diff(tmp_path / "hf", model) <= TOL
    _assert_same_state(src, tmp_path / "hf")


def test_up_before_gate_order_matters(llama, tmp_path: Path) -> None:
    """Megatron-LLM's GLU activates the SECOND half of dense_h_to_4h: read as Megatron-LM's
    [gate; up] (or stored swapped), the MLP computes silu(up) * gate and the logits break."""
    _, model = llama
    swapped = write_mllm_sharded(model, tmp_path / "swapped", 2, 2, swap_up_gate=True)
    assert _logits_diff(_to(swapped, tmp_path / "hf", "hf", VOCAB), model) > 100 * TOL
    # the same halves, in Megatron-LLM's order, are right
    good = write_mllm_sharded(model, tmp_path / "good", 2, 2)
    assert _logits_diff(_to(good, tmp_path / "hf-good", "hf", VOCAB), model) <= TOL


def test_rotary_layout_override_applies_to_megatron_llm(llama, tmp_path: Path) -> None:
    _, model = llama
    mt = write_mllm_sharded(model, tmp_path / "mllm", 2, 1)
    plan = make_plan(mt, TargetOptions("hf"), true_vocab=VOCAB, rotary_layout="half")  # wrongly claims rotate-half storage
    assert plan.ok and not plan.spec.rotary_interleaved
    run_to_end(plan, tmp_path / "hf")
    assert _logits_diff(tmp_path / "hf", model) > 100 * TOL


# ----- writing ---------------------------------------------------------------------------------
def test_hf_to_megatron_llm_writes_its_layout_and_round_trips(llama, tmp_path: Path) -> None:
    src, model = llama
    out = _to(src, tmp_path / "out", "megatron", tp=2, pp=2, megatron_spec="megatron-llm", make_vocab_size_divisible_by=16)
    ref = write_mllm_sharded(model, tmp_path / "ref", 2, 2)
    a, b = detect(out), detect(ref)
    shards_a = {(t.global_name, t.ranks.tp): t for t in a.model_tensors()}
    assert set(shards_a) == {(t.global_name, t.ranks.tp) for t in b.model_tensors()}
    for t in b.model_tensors():  # every shard equals the one Megatron-LLM's own converter layout gives
        assert torch.equal(a.load(shards_a[(t.global_name, t.ranks.tp)]), b.load(t)), t.global_name
    args = a.metadata["args"]
    assert args["glu_activation"] == "swiglu" and args["use_rms_norm"] is True and args["tie_embed_logits"] is False
    assert args["num_attention_heads_kv"] == 2 and args["use_bias"] is False and args["rotary_interleaved"] is True
    # nested as Megatron-LLM's load_state_dict expects
    state = torch.load(next(out.rglob("mp_rank_00_000/model_optim_rng.pt")), weights_only=False)  # our own output
    lm = state["model"]["language_model"]
    assert set(lm) == {"embedding", "encoder"} and set(lm["embedding"]) == {"word_embeddings"}
    assert "layers.0.self_attention.query_key_value.weight" in lm["encoder"]
    plan = make_plan(out, TargetOptions("hf"))
    assert plan.spec.vocab == VOCAB  # vocab_size in args: padding dropped
    back = _to(out, tmp_path / "hf", "hf")
    _assert_same_state(src, back)
    assert _logits_diff(back, model) <= TOL


def test_tied_parallel_falcon_round_trips_through_megatron_llm(tmp_path: Path) -> None:
    """Falcon-40B style (parallel attention, ln_attn + ln_mlp -> mlp_layernorm, grouped KV, tied
    head): detected as Megatron-LLM by its args alone; PP2 keeps `word_embeddings_for_head`."""
    import transformers as t

    torch.manual_seed(0)
    model = t.FalconForCausalLM(t.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_attention_heads=8, num_hidden_layers=4,
                                               new_decoder_architecture=True, num_kv_heads=2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "src")
    out = _to(tmp_path / "src", tmp_path / "mllm", "megatron", tp=2, pp=2, megatron_spec="megatron-llm")
    names = {t.global_name for t in detect(out).model_tensors()}
    assert "word_embeddings_for_head.weight" in names and "language_model.lm_head" not in names
    assert any(n.endswith("layers.0.mlp_layernorm.weight") for n in names)
    plan = make_plan(out, TargetOptions("hf"))
    assert plan.ok and plan.spec.family == "falcon" and plan.spec.megatron_llm and plan.spec.parallel_norms == 2
    run_to_end(plan, tmp_path / "hf")
    _assert_same_state(tmp_path / "src", tmp_path / "hf")
    assert _logits_diff(tmp_path / "hf", model) <= TOL


def test_megatron_llm_target_refusals(llama, tmp_path: Path) -> None:
    src, _ = llama
    plan = make_plan(src, TargetOptions("megatron", tp=4, megatron_spec="megatron-llm"))  # 2 KV heads over TP4
    assert not plan.ok and any("whole query groups" in e for e in plan.errors)
    plan = make_plan(src, TargetOptions("megatron-dist", megatron_spec="megatron-llm"))
    assert not plan.ok and any("--to megatron" in e for e in plan.errors)
    from ckptscope.app.cli import app

    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "o"), "--to", "megatron-dist", "--megatron-spec",
                                      "megatron-llm"])
    assert result.exit_code == 2 and "use --to megatron" in result.stderr and "Traceback" not in result.output


def test_variant_detection_by_names_and_args() -> None:
    from ckptscope.converters.rules.megatron_llm import detect_variant

    legacy = ["language_model.embedding.word_embeddings.weight", "language_model.encoder.layers.0.mlp.dense_h_to_4h.weight"]
    assert detect_variant(legacy) == "legacy"
    assert detect_variant(legacy, {"glu_activation": "swiglu"}) == "legacy"  # bigscience Megatron-DeepSpeed has it too
    assert detect_variant(legacy, {"tie_embed_logits": True, "glu_activation": None}) == "megatron-llm"
    assert detect_variant([*legacy, "language_model.lm_head"]) == "megatron-llm"
    assert detect_variant(["language_model.transformer.layers.0.attention.dense.weight"]) == "megatron-llm-release"
    assert detect_variant(["decoder.layers.0.self_attention.linear_qkv.weight"]) == "local"
