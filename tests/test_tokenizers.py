"""Tokenizers into the converted HF folder (issue 6): a sentencepiece `tokenizer.model`, a GPT-2
BPE `vocab.json` + `merges.txt`, the tokenizer named in Megatron args (resolved in a folder the
user names), `--vocab-extra-ids`, `--override-special-tokens`, and vocab trim / pad.

Tokenizers are trained here from a few sentences; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.tokenizers import parse_overrides
from ckptscope.converters.writers import TargetOptions

TEXT = ["The quick brown fox jumps over the lazy dog.", "Checkpoints convert between Megatron and Hugging Face.",
        "Tokenizers travel with the weights so the folder is usable at once.", "Pack my box with five dozen liquor jugs!"]
SENTENCE = "The lazy fox converts checkpoints, quickly!"
VOCAB = 300


def _model(kind: str, folder: Path) -> Path:
    import transformers as t

    torch.manual_seed(0)
    if kind == "llama":
        model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, max_position_embeddings=64))
    else:
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                               bos_token_id=0, eos_token_id=0))
    model.save_pretrained(folder)
    return folder


def _megatron(kind: str, tmp_path: Path, **kw) -> Path:
    src = _model(kind, tmp_path / f"{kind}-src")
    plan = make_plan(src, TargetOptions("megatron", tp=2, **kw))
    run_to_end(plan, tmp_path / f"{kind}-mt")
    return tmp_path / f"{kind}-mt"


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> Path:
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")  # transformers needs protobuf to convert tokenizer.model
    folder = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 20), model_prefix=str(folder / "tokenizer"), vocab_size=VOCAB,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=2)
    return folder / "tokenizer.model"


@pytest.fixture(scope="module")
def gpt2_bpe(tmp_path_factory) -> Path:
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("bpe")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXT * 20, vocab_size=VOCAB, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save_model(str(folder))
    assert tok.get_vocab_size() == VOCAB
    return folder / "vocab.json"


def test_sentencepiece_tokenizer_into_hf_output(sentencepiece_model: Path, tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    mt = _megatron("llama", tmp_path)
    plan = make_plan(mt, TargetOptions("hf", tokenizer=sentencepiece_model))
    assert plan.ok and plan.spec.vocab == VOCAB
    assert any("trimmed from 512 stored rows to the tokenizer's 300" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    source = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))
    assert loaded(SENTENCE, add_special_tokens=False)["input_ids"] == source.encode(SENTENCE)


def test_gpt2_bpe_tokenizer_into_hf_output(gpt2_bpe: Path, tmp_path: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer

    mt = _megatron("gpt2", tmp_path)
    run_to_end(make_plan(mt, TargetOptions("hf", tokenizer=gpt2_bpe)), tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    source = ByteLevelBPETokenizer(str(gpt2_bpe), str(gpt2_bpe.parent / "merges.txt"))
    assert loaded(SENTENCE)["input_ids"] == source.encode(SENTENCE).ids
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == VOCAB


def test_tokenizer_named_in_megatron_args_is_found_under_a_root(gpt2_bpe: Path, tmp_path: Path) -> None:
    """Args point at the training machine (/data/...); the user names where the files are now."""
    from transformers import AutoTokenizer

    mt = _megatron("gpt2", tmp_path)
    for rank_file in mt.rglob("model_optim_rng.pt"):
        state = torch.load(rank_file, weights_only=False)  # our own fixture
        state["args"] = argparse.Namespace(**{**vars(state["args"]), "tokenizer_type": "GPT2BPETokenizer",
                                              "vocab_file": "/data/run7/tok/vocab.json", "merge_file": "/data/run7/tok/merges.txt"})
        torch.save(state, rank_file)
    root = tmp_path / "copied"
    (root / "tok").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (root / "tok" / name).write_bytes((gpt2_bpe.parent / name).read_bytes())
    plan = make_plan(mt, TargetOptions("hf", tokenizer_root=root))
    assert plan.ok and any("Megatron args" in n or "gpt2-bpe" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "hf"))) == VOCAB
    with pytest.raises(Exception, match="not found"):
        make_plan(mt, TargetOptions("hf", tokenizer_root=tmp_path / "hf"))


def test_extra_ids_and_special_token_overrides_pad_the_vocab(sentencepiece_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mt = _megatron("llama", tmp_path, make_vocab_size_divisible_by=1)  # stored rows = 300 exactly
    opts = TargetOptions("hf", tokenizer=sentencepiece_model, vocab_extra_ids=3, special_tokens=parse_overrides(["eos=<|im_end|>"]))
    plan = make_plan(mt, opts)
    assert plan.ok and plan.spec.vocab == VOCAB + 4
    assert any("padded from 300 stored rows to the tokenizer's 304" in n for n in plan.notes)
    run_to_end(plan, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert len(tok) == VOCAB + 4 and tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<extra_id_2>") < VOCAB + 4
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 4


def test_override_parsing() -> None:
    assert parse_overrides(["eos=<|im_end|>", "bos_token=<s>"]) == {"eos": "<|im_end|>", "bos": "<s>"}
    with pytest.raises(ValueError):
        parse_overrides(["eos"])
    with pytest.raises(ValueError):
        parse_overrides(["foo=<x>"])
