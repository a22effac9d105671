"""Vocab trim / pad to the tokenizer's size, for every source (model families issue).

With `--tokenizer`, the output's embedding and untied LM head (and config `vocab_size`) take the
tokenizer's size: rows beyond it are dropped (Megatron's padding included), missing rows are
added as the mean of the trained rows, and the plan says which. Tokenizers are word-level
vocabularies built here; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import convert, find_partial, fingerprint, run_to_end
from ckptscope.converters.verify import fixed_tokens
from ckptscope.converters.writers import TargetOptions
from typer.testing import CliRunner

from .helpers import hf_state

VOCAB = 100
TOL = 1e-5


def _tokenizer(folder: Path, size: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)
    return folder


def _llama(folder: Path, tied: bool) -> tuple[Path, torch.nn.Module]:
    import transformers as t

    torch.manual_seed(0)
    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                             tie_word_embeddings=tied)).eval()
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    return {kind: _llama(tmp_path_factory.mktemp(kind), kind == "tied") for kind in ("untied", "tied")}


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[int, Path]:
    return {n: _tokenizer(tmp_path_factory.mktemp(f"tok{n}"), n) for n in (90, 100, 110)}


def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(ids).logits


def _run(src: Path, dst: Path, fmt: str = "hf", **kw) -> tuple[Path, list[str]]:
    plan_kw = {k: kw.pop(k) for k in ("config",) if k in kw}
    plan = make_plan(src, TargetOptions(fmt, **kw), **plan_kw)
    assert plan.ok, plan.errors
    run_to_end(plan, dst)
    return dst, plan.notes


@pytest.mark.parametrize("kind", ["untied", "tied"])
def test_hf_source_trimmed_to_a_smaller_tokenizer(models, toks, tmp_path: Path, kind: str) -> None:
    src, model = models[kind]
    out, notes = _run(src, tmp_path / "hf", tokenizer=toks[90])
    assert any("vocab: trimmed from 100 stored rows to the tokenizer's 90" in n for n in notes), notes
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 90
    state, source = hf_state(out), hf_state(src)
    assert torch.equal(state["model.embed_tokens.weight"], source["model.embed_tokens.weight"][:90])
    assert ("lm_head.weight" in state) == (kind == "untied")
    ids = fixed_tokens(90)
    with torch.no_grad():
        expected = model(ids).logits[..., :90]
    assert (_hf_logits(out, ids) - expected).abs().max().item() <= TOL


def test_hf_source_padded_to_a_bigger_tokenizer_with_mean_rows(models, toks, tmp_path: Path) -> None:
    src, model = models["untied"]
    out, notes = _run(src, tmp_path / "hf", tokenizer=toks[110])
    assert any("vocab: padded from 100 stored rows to the tokenizer's 110" in n and "mean" in n for n in notes), notes
    state, source = hf_state(out), hf_state(src)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert state[name].shape == (110, 32) and torch.equal(state[name][:100], source[name])
        mean = source[name].mean(dim=0)
        assert torch.allclose(state[name][100:], mean.expand(10, -1), atol=0, rtol=0)  # every new row is the mean row
    ids = fixed_tokens(VOCAB)
    logits = _hf_logits(out, ids)
    with torch.no_grad():
        expected = model(ids).logits
    assert logits.shape[-1] == 110 and (logits[..., :VOCAB] - expected).abs().max().item() <= TOL
    new_ids = torch.tensor([[5, 104, 7, 109]])  # the new tokens embed as the mean row
    assert torch.isfinite(_hf_logits(out, new_ids)).all()


def test_megatron_padded_vocab_trimmed_to_the_tokenizer(models, toks, tmp_path: Path) -> None:
    src, model = models["untied"]
    mt, _ = _run(src, tmp_path / "mt", "megatron", tp=2)  # 100 rows padded to 256 (128 x TP2)
    for size in (100, 90):
        out, notes = _run(mt, tmp_path / f"hf{size}", tokenizer=toks[size])
        assert any(f"vocab: trimmed from 256 stored rows to the tokenizer's {size}" in n for n in notes), notes
        assert json.loads((out / "config.json").read_text())["vocab_size"] == size
        assert torch.equal(hf_state(out)["lm_head.weight"], hf_state(src)["lm_head.weight"][:size])
        ids = fixed_tokens(size)
        with torch.no_grad():
            expected = model(ids).logits[..., :size]
        assert (_hf_logits(out, ids) - expected).abs().max().item() <= TOL


def test_nxd_source_is_resized_too(models, toks, tmp_path: Path) -> None:
    """NxD files carry no architecture; its embedding rows are the config's, resized like any other."""
    src, _ = models["untied"]
    nxd, _ = _run(src, tmp_path / "nxd", "nxd", tp=2)
    out, notes = _run(nxd, tmp_path / "hf", tokenizer=toks[110], config=src / "config.json")
    assert any("padded from 100 stored rows to the tokenizer's 110" in n for n in notes), notes
    state, source = hf_state(out), hf_state(src)
    assert torch.equal(state["model.embed_tokens.weight"][:100], source["model.embed_tokens.weight"])
    assert state["model.embed_tokens.weight"].shape[0] == 110


def test_hf_to_megatron_pads_to_the_tokenizer_then_to_the_tp_multiple(models, toks, tmp_path: Path) -> None:
    src, _ = models["untied"]
    mt, _ = _run(src, tmp_path / "mt", "megatron", tp=2, tokenizer=toks[110])
    from ckptscope.inspectors import detect

    args = detect(mt).metadata["args"]
    assert args["vocab_size"] == 110 and args["padded_vocab_size"] == 256
    back, _ = _run(mt, tmp_path / "hf")
    assert json.loads((back / "config.json").read_text())["vocab_size"] == 110
    assert torch.equal(hf_state(back)["lm_head.weight"][:100], hf_state(src)["lm_head.weight"])


def test_resume_with_a_resized_vocab_matches_a_clean_run(models, toks, tmp_path: Path) -> None:
    """The resize happens as groups stream, so a resumed run's shards equal a clean run's."""
    import hashlib

    src, _ = models["untied"]
    opts = {"tokenizer": toks[90], "max_shard_bytes": 30_000}
    plan = make_plan(src, TargetOptions("hf", **opts))
    dst = tmp_path / "out"
    events = convert(plan, dst, resume=True)
    for n, _ in enumerate(events):
        if n == 3:
            break
    events.close()  # stopped early: with resume=True the partial folder stays
    again = make_plan(src, TargetOptions("hf", **opts))
    assert find_partial(dst, fingerprint(again)) is not None
    final = run_to_end(again, dst, resume=True)
    assert final.skipped > 0
    clean = run_to_end(make_plan(src, TargetOptions("hf", **opts)), tmp_path / "clean")

    def digest(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}

    assert digest(dst) == digest(Path(clean.output))


def test_cli_plan_says_trimmed_or_padded(models, toks, tmp_path: Path) -> None:
    from ckptscope.app.cli import app

    src, _ = models["untied"]
    runner = CliRunner()
    trimmed = runner.invoke(app, ["convert", str(src), str(tmp_path / "a"), "--tokenizer", str(toks[90]), "--plan-only"])
    assert trimmed.exit_code == 0, trimmed.output
    assert "vocab: trimmed from 100 stored rows to the tokenizer's 90" in trimmed.stdout
    padded = runner.invoke(app, ["convert", str(src), str(tmp_path / "b"), "--tokenizer", str(toks[110]), "--plan-only",
                                 "--json"])
    assert padded.exit_code == 0, padded.output
    doc = json.loads(padded.stdout)
    assert doc["spec"]["vocab"] == 110
    assert any(n.startswith("vocab: padded from 100 stored rows to the tokenizer's 110") for n in doc["notes"])
    same = runner.invoke(app, ["convert", str(src), str(tmp_path / "c"), "--tokenizer", str(toks[100]), "--plan-only"])
    assert "vocab: 100 rows, the tokenizer's size" in same.stdout


def test_padded_vocab_boxes_are_the_padded_tensors_boxes() -> None:
    """PadVocab.cut (TP pieces and torch_dist chunks of a padded embedding, cut from the real rows)
    gives exactly the boxes of the padded tensor, trimmed vocabularies and column boxes included."""
    from types import SimpleNamespace

    from ckptscope.converters.layouts import PadVocab
    from ckptscope.converters.ops import pad_rows

    t = torch.randn(1000, 8)
    cases = {1024: [(0, 256, 0, 8), (768, 1024, 0, 8), (992, 1024, 2, 6), (1000, 1024, 0, 8), (0, 1024, 0, 8)], 900: [(450, 900, 0, 8)]}
    for padded, boxes in cases.items():
        spec = SimpleNamespace(padded_vocab=padded)
        for r0, r1, c0, c1 in boxes:
            box = (slice(r0, r1), slice(c0, c1))
            assert torch.equal(PadVocab().cut([t], spec, [box])[0], pad_rows(t, padded)[box]), (padded, box)
