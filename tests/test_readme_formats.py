"""README's format table names every source ckptscope converts from, with the layout a user
would recognise on disk (issue 14: the new sources are listed with their layouts)."""

from __future__ import annotations

from pathlib import Path

from ckptscope.converters.sources import SOURCES

README = Path(__file__).resolve().parents[1] / "README.md"

# source kind -> the on-disk layouts its README row must name (each a layout real runs produce)
LAYOUTS: dict[str, tuple[str, ...]] = {
    "hf": ("model*.safetensors",),
    "megatron-torch": ("iter_*/mp_rank_TT",),
    "megatron-dist": ("metadata.json", "run_config.yaml", "context/model.yaml"),  # Megatron-Core, Bridge, NeMo 2
    "nxd": ("dp_rank_00_",),
    "deepspeed": ("global_stepN/", "layer_XX-model_YY-model_states.pt", "layer_XX-model_states.pt", "checkpoint-N/"),
    "meta": ("consolidated.NN.pth",),
    "dcp": ("pytorch_model_fsdp_0/", "step-N/", "DeepSeek-V3", "Qwen3-MoE"),  # Accelerate, torchtitan
    "deepspeed-universal": ("zero/<param>/fp32.pt", "latest_universal"),
}


def _format_table() -> str:
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| format | read | convert from"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[start:end])


def test_every_source_is_in_the_format_table_with_its_layouts() -> None:
    assert set(LAYOUTS) == set(SOURCES), "a new source needs its README row and layouts here"
    table = _format_table()
    missing = [f"{kind}: {layout}" for kind, layouts in LAYOUTS.items() for layout in layouts if layout not in table]
    assert not missing
