"""Small helpers shared by the conversion tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF safetensors folder, by name."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def convert_to(src: Path, dst: Path, fmt: str, **kw) -> Path:
    """Plan and run one conversion; plan options (`config`, `rotary_layout`, `true_vocab`) are split off."""
    from ckptscope.converters.plan import make_plan
    from ckptscope.converters.run import run_to_end
    from ckptscope.converters.writers import TargetOptions

    plan_kw = {k: kw.pop(k) for k in ("config", "rotary_layout", "true_vocab") if k in kw}
    plan = make_plan(src, TargetOptions(fmt, **kw), **plan_kw)
    assert plan.ok, plan.errors
    run_to_end(plan, dst)
    return dst


def logits_diff(folder: Path, model: torch.nn.Module, vocab: int) -> float:
    """Max |logits| difference between an HF folder (run with transformers) and `model`."""
    from ckptscope.converters.verify import fixed_tokens
    from transformers import AutoModelForCausalLM

    ids = fixed_tokens(vocab)
    converted = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return (converted(ids).logits - model(ids).logits).abs().max().item()


def assert_same_hf_state(a: Path, b: Path) -> None:
    """Same names, dtypes and bits in two HF safetensors folders."""
    sa, sb = hf_state(a), hf_state(b)
    assert sa.keys() == sb.keys(), set(sa) ^ set(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


def saved_models(factory, kinds, build, **save_kw) -> dict[str, tuple[Path, torch.nn.Module]]:  # type: ignore[no-untyped-def]
    """Tiny transformers models built by `build(kind)`, each saved to its own folder."""
    out = {}
    for kind in kinds:
        folder = factory.mktemp(kind)
        model = build(kind)
        model.save_pretrained(folder, **save_kw)
        out[kind] = (folder, model)
    return out
