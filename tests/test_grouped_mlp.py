"""megatron-core's legacy GroupedMLP (`--moe-grouped-gemm` without TE) in the `torch` format:
each rank's experts as `mlp.experts.weight1` / `weight2`, read per expert.

GroupedMLP needs the CUDA-only `grouped_gemm` package, so these rank files are ours (written by
the engine as SequentialMLP) rewritten the way GroupedMLP lays out its parameters
(`converters/sources/grouped_mlp.py` cites megatron-core). That layout is held to GroupedMLP's
own forward (`x @ weight1.view(E, h, -1)[j]`, GLU chunk, `@ weight2.view(E, -1, h)[j]`) against
the transformers expert it came from, so a wrong reading of the layout fails here too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ckptscope.converters.plan import make_plan
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect
from ckptscope.inspectors.model import global_shape, logical_param_count

from .helpers import assert_same_hf_state, convert_to, logits_diff
from .test_families_registry import SMALL, VOCAB

EXPERT_RE = re.compile(r"^(?P<stem>.*\.mlp\.experts\.)local_experts\.(?P<j>\d+)\.linear_fc(?P<which>[12])\.weight$")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    import transformers as t

    torch.manual_seed(0)
    config = t.MixtralConfig(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, **SMALL)
    model = t.AutoModelForCausalLM.from_config(config).eval()
    src = tmp_path_factory.mktemp("mixtral")
    model.save_pretrained(src)
    return src, model


def to_grouped_mlp(folder: Path) -> int:
    """Rewrite every rank file of a SequentialMLP Megatron checkpoint as GroupedMLP stores it:
    weight1 = the experts' fc1 transposed, stacked `[E, h, X]`, kept as `[h, E*X]`; weight2 = fc2
    transposed, stacked `[E, F, h]`, kept as `[E*F, h]`. Returns the rank files rewritten."""
    files = sorted(folder.rglob("model_optim_rng.pt"))
    for rank_file in files:
        state = torch.load(rank_file, weights_only=False)
        experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
        model = {}
        for name, value in state["model"].items():
            m = EXPERT_RE.match(name)
            if m:
                experts.setdefault((m["stem"], m["which"]), {})[int(m["j"])] = value
            else:
                model[name] = value
        for (stem, which), by_j in experts.items():
            blocks = torch.stack([by_j[j].t() for j in sorted(by_j)])  # [E, h, X] or [E, F, h]
            hidden = blocks.shape[1] if which == "1" else blocks.shape[2]
            model[f"{stem}weight{which}"] = blocks.reshape(hidden, -1) if which == "1" else blocks.reshape(-1, hidden)
        state["model"] = model
        state["args"].moe_grouped_gemm = True
        torch.save(state, rank_file)
    return len(files)


def grouped_forward(weight1: torch.Tensor, weight2: torch.Tensor, experts: int, x: torch.Tensor) -> list[torch.Tensor]:
    """GroupedMLP.forward per expert (megatron-core: gmm(x, w1), glu = silu(chunk 0) * chunk 1, gmm(., w2))."""
    hidden = x.shape[-1]
    w1, w2 = weight1.view(experts, hidden, -1), weight2.view(experts, -1, hidden)
    out = []
    for j in range(experts):
        gate, up = torch.chunk(x @ w1[j], 2, dim=-1)
        out.append((F.silu(gate) * up) @ w2[j])
    return out


def test_the_layout_is_grouped_mlps_own(mixtral: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """At TP1 the rewritten weight1 / weight2, run through GroupedMLP's forward, give each
    transformers expert's output."""
    src, model = mixtral
    mt = convert_to(src, tmp_path / "mt", "megatron", ep=2)
    assert to_grouped_mlp(mt) == 2
    x = torch.randn(5, SMALL["hidden_size"])
    for ep, rank_file in enumerate(sorted(mt.rglob("model_optim_rng.pt"))):
        state = torch.load(rank_file, weights_only=False)["model"]
        w1, w2 = state["decoder.layers.1.mlp.experts.weight1"], state["decoder.layers.1.mlp.experts.weight2"]
        assert w1.shape == (SMALL["hidden_size"], 2 * 2 * 48) and w2.shape == (2 * 48, SMALL["hidden_size"])
        ours = grouped_forward(w1, w2, 2, x)
        for j in range(2):
            experts = model.model.layers[1].mlp.experts  # transformers' own expert code, one expert for every token
            with torch.no_grad():
                want = experts(x, torch.full((len(x), 1), ep * 2 + j), torch.ones(len(x), 1))
            assert torch.allclose(ours[j], want, atol=1e-5), (ep, j)


@pytest.mark.parametrize("layout", [{"tp": 2, "pp": 2, "ep": 2}, {"tp": 2, "ep": 2, "megatron_spec": "te"}, {"ep": 4}],
                         ids=["tp2pp2ep2-local", "tp2ep2-te", "ep4"])
def test_grouped_mlp_checkpoint_converts_to_hf_bit_for_bit(mixtral: tuple[Path, torch.nn.Module], tmp_path: Path,
                                                           layout: dict) -> None:
    src, model = mixtral
    mt = convert_to(src, tmp_path / "mt", "megatron", **layout)
    to_grouped_mlp(mt)
    ckpt = detect(mt)
    assert any(t.name.endswith("mlp.experts.weight1") for t in ckpt.tensors)  # inspect shows what is stored
    assert logical_param_count(ckpt) == sum(p.numel() for p in model.parameters())
    shapes = {t.global_name: global_shape([s for s in ckpt.tensors if s.global_name == t.global_name]) for t in ckpt.tensors}
    experts_local = 4 // layout["ep"]
    assert shapes["decoder.layers.1.mlp.experts.weight1"] == (SMALL["hidden_size"], experts_local * 2 * 48)
    assert shapes["decoder.layers.1.mlp.experts.weight2"] == (experts_local * 48, SMALL["hidden_size"])
    plan = make_plan(mt, TargetOptions("hf"))
    assert plan.ok, plan.errors
    assert not plan.accounting.unmatched and not plan.accounting.missing and not plan.accounting.ignored
    assert any(".local_experts.3.linear_fc2.weight" in n for n in plan.accounting.mapped)
    assert any("GroupedMLP" in n for n in plan.notes)
    back = convert_to(mt, tmp_path / "hf", "hf")
    assert_same_hf_state(src, back)
    assert logits_diff(back, model, VOCAB) <= 1e-5


def test_grouped_mlp_reshards_to_sequential_megatron(mixtral: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """GroupedMLP TP2 EP2 -> Megatron TP1 EP4 (SequentialMLP names) -> HF: every bit."""
    src, _ = mixtral
    mt = convert_to(src, tmp_path / "mt", "megatron", tp=2, ep=2)
    to_grouped_mlp(mt)
    ep4 = convert_to(mt, tmp_path / "ep4", "megatron", ep=4)
    assert_same_hf_state(src, convert_to(ep4, tmp_path / "hf", "hf"))


def test_a_weight1_that_is_not_whole_expert_blocks_is_refused_naming_the_file(mixtral: tuple[Path, torch.nn.Module],
                                                                             tmp_path: Path) -> None:
    from ckptscope.inspectors.errors import CheckpointError

    src, _ = mixtral
    mt = convert_to(src, tmp_path / "mt", "megatron", ep=2)
    to_grouped_mlp(mt)
    key = "decoder.layers.0.mlp.experts.weight1"
    for rank_file in mt.rglob("model_optim_rng.pt"):  # every EP rank alike: they must agree on the shape
        state = torch.load(rank_file, weights_only=False)
        state["model"][key] = state["model"][key][:, :-1].contiguous()  # one column short of 2 blocks
        torch.save(state, rank_file)
    with pytest.raises(CheckpointError) as err:
        make_plan(mt, TargetOptions("hf"))
    assert "model_optim_rng.pt" in str(err.value) and "not 2 contiguous expert blocks" in str(err.value)
