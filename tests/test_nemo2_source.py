"""NeMo 2 checkpoints (issue 14): `<ckpt>/weights/` is megatron-core torch_dist with every key under
MegatronParallel's `module.` prefix, `<ckpt>/context/model.yaml` holds the model's config under
`config:` (NeMo saves no Megatron-LM args). Such a checkpoint converts to HF with nothing else.

The fixture is the corpus's real megatron-core save (TP2 torch_dist) laid out as NeMo 2 writes it:
the DCP `.metadata` keys renamed under `module.` (the data files untouched), the args dropped from
`common.pt`, and `context/model.yaml` with the GPTConfig fields NeMo serialises.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from ckptscope.inspectors import detect
from ckptscope.inspectors.summary import logical_param_count

from .helpers import convert_to


def _prefix_metadata(folder: Path, prefix: str) -> None:
    from torch.distributed.checkpoint.metadata import MetadataIndex

    meta = pickle.loads((folder / ".metadata").read_bytes())
    meta.state_dict_metadata = {prefix + k: v for k, v in meta.state_dict_metadata.items()}
    meta.storage_data = {MetadataIndex(prefix + i.fqn, i.offset, i.index): v for i, v in meta.storage_data.items()}
    if getattr(meta, "planner_data", None):
        meta.planner_data = {prefix + k: v for k, v in meta.planner_data.items()}
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


@pytest.fixture(scope="module")
def nemo2(corpus: Path, tmp_path_factory) -> Path:
    item = corpus / "megatron" / "gpt_tp2pp1"
    ckpt = tmp_path_factory.mktemp("nemo2") / "checkpoints" / "model-step=10"
    shutil.copytree(item / "dist" / "iter_0000010", ckpt / "weights")
    _prefix_metadata(ckpt / "weights", "module.")
    common = torch.load(ckpt / "weights" / "common.pt", weights_only=False)
    common.pop("args", None)
    torch.save(common, ckpt / "weights" / "common.pt")
    config = {
        "_target_": "nemo.collections.llm.gpt.model.llama.LlamaConfig", "num_layers": 4, "hidden_size": 128,
        "ffn_hidden_size": 352, "num_attention_heads": 8, "num_query_groups": 2, "kv_channels": 16,
        "normalization": "RMSNorm", "layernorm_epsilon": 1e-5, "gated_linear_unit": True,
        "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False}, "position_embedding_type": "rope",
        "rotary_base": 10000, "rotary_percent": 1.0, "seq_length": 4096, "share_embeddings_and_output_weights": False,
        "add_bias_linear": False, "add_qkv_bias": False, "vocab_size": 1024, "make_vocab_size_divisible_by": 128,
        "tensor_model_parallel_size": 2,
    }
    (ckpt / "context").mkdir()
    (ckpt / "context" / "model.yaml").write_text(yaml.safe_dump({
        "_target_": "nemo.collections.llm.gpt.model.llama.LlamaModel", "config": config,
        "tokenizer": {"_target_": "nemo.collections.common.tokenizers.huggingface.auto_tokenizer.AutoTokenizer"}}))
    (ckpt / "context" / "io.json").write_text("{}")
    return ckpt


def test_nemo2_checkpoint_converts_to_hf_with_the_corpus_logits(nemo2: Path, corpus: Path, tmp_path: Path) -> None:
    import transformers as t

    ckpt = detect(nemo2)  # the checkpoint folder itself: weights/ + context/
    assert (ckpt.kind, ckpt.path.name, ckpt.root) == ("megatron-dist", "weights", nemo2)
    original = detect(corpus / "megatron" / "gpt_tp2pp1" / "dist")  # megatron-core's own save of the same model
    assert logical_param_count(ckpt) == logical_param_count(original) > 0
    out = convert_to(nemo2, tmp_path / "hf", "hf")
    model = t.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    item = corpus / "megatron" / "gpt_tp2pp1"
    with torch.no_grad():
        logits = model(torch.load(item / "input_ids.pt")).logits
    assert (logits - torch.load(item / "reference_logits.pt")).abs().max().item() <= 1e-4


def test_nemo2_without_context_asks_for_the_architecture(nemo2: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    bare = tmp_path / "bare"
    shutil.copytree(nemo2 / "weights", bare / "weights")
    out = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "convert", str(bare / "weights"), str(tmp_path / "hf")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len((out.stdout + out.stderr).strip().splitlines()) == 1
