"""HF folders written by transformers itself: every tensor listed exactly, loads equal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptscope.inspectors import CheckpointError, detect


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


def _expect(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight" or not model.config.tie_word_embeddings}


def _check(ckpt, expected: dict[str, torch.Tensor]) -> None:
    listed = {t.name: t for t in ckpt.tensors}
    assert set(listed) == set(expected)
    for name, value in expected.items():
        assert listed[name].shape == tuple(value.shape)
        assert listed[name].dtype == str(value.dtype).removeprefix("torch.")
        assert torch.equal(ckpt.load(name), value)


def test_single_safetensors_with_tokenizer(tmp_path: Path, tiny_llama) -> None:
    tiny_llama.save_pretrained(tmp_path)
    _tokenizer(tmp_path)
    ckpt = detect(tmp_path)
    assert ckpt.kind == "hf" and ckpt.format_detail.startswith("safetensors, 1 shard")
    _check(ckpt, _expect(tiny_llama))
    assert ckpt.metadata["config"]["num_hidden_layers"] == 3
    assert "tokenizer.json" in ckpt.metadata["tokenizer_files"]
    assert {f.role for f in ckpt.files} >= {"model", "config", "tokenizer"}
    # a single file works too
    assert detect(tmp_path / "model.safetensors").kind == "hf"


def test_sharded_safetensors(tmp_path: Path, tiny_llama) -> None:
    tiny_llama.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ckpt = detect(tmp_path)
    assert len([f for f in ckpt.files if f.role == "model"]) > 2
    _check(ckpt, _expect(tiny_llama))


def test_pytorch_bin_single_and_sharded(tmp_path: Path, tiny_llama) -> None:
    sd = _expect(tiny_llama)
    single = tmp_path / "single"
    single.mkdir()
    tiny_llama.config.save_pretrained(single)
    torch.save(sd, single / "pytorch_model.bin")
    ckpt = detect(single)
    assert ckpt.format_detail.startswith("pytorch .bin")
    _check(ckpt, sd)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tiny_llama.config.save_pretrained(sharded)
    names = sorted(sd)
    weight_map = {}
    for i in range(3):
        file = f"pytorch_model-{i + 1:05d}-of-00003.bin"
        part = {k: sd[k] for k in names[i::3]}
        torch.save(part, sharded / file)
        weight_map.update({k: file for k in part})
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _check(detect(sharded), sd)


def test_index_naming_a_missing_shard(tmp_path: Path, tiny_llama) -> None:
    tiny_llama.save_pretrained(tmp_path, max_shard_size="20KB")
    victim = sorted(tmp_path.glob("model-0000*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match="missing shard") as err:
        detect(tmp_path)
    assert victim.name in str(err.value)


@pytest.mark.parametrize("item", ["llama_gqa_sharded", "mixtral_moe_sharded", "llama_gqa_pytorch_bin_sharded"])
def test_real_corpus_hf(corpus: Path, item: str) -> None:
    folder = corpus / "hf" / item
    ckpt = detect(folder)
    index = next(folder.glob("*.index.json"))
    weight_map = json.loads(index.read_text())["weight_map"]
    expected: dict[str, torch.Tensor] = {}
    for file in sorted(set(weight_map.values())):
        path = folder / file
        expected.update(load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True))
    _check(ckpt, expected)
    assert ckpt.metadata["config"]["architectures"]
