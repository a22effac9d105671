"""`ConvertRequest` and the option tables (issue 12): one place validates every option, each
problem one line naming the option; both faces hand the engine the same request."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckptscope.converters.formats import FORMATS, TARGETS
from ckptscope.converters.options import ALL_OPTIONS, parse_size
from ckptscope.converters.request import ConvertRequest


@pytest.mark.parametrize(("options", "flag"), [
    ({"max_shard_size": "abc"}, "--max-shard-size"),
    ({"true_vocab": "-24"}, "--true-vocab-size"),
    ({"iteration": "1" * 300}, "--iteration"),
    ({"iteration": "١"}, "--iteration"),
    ({"dtype": "fp8"}, "--dtype"),
    ({"tp": "3"}, "--tp"),  # an HF target holds the full model
    ({"rotary_layout": "sideways"}, "--rotary-layout"),
    ({"workers": "0"}, "--workers"),
])
def test_bad_option_is_one_line_naming_it(options: dict, flag: str) -> None:
    errors = ConvertRequest("src", "dst", "hf", options).errors()
    assert len(errors) == 1 and errors[0].startswith(flag) and "\n" not in errors[0], errors


def test_options_apply_only_to_their_formats() -> None:
    assert ConvertRequest("s", "d", "nxd", {"tp": 2, "xser": True, "fuse_qkv": "yes"}).errors() == []
    misplaced = ConvertRequest("s", "d", "megatron", {"xser": True, "max_shard_size": "5GB"})  # 5GB is the default
    assert misplaced.errors() == [] and misplaced.warnings() == ["--xser applies to nxd targets; ignored for --to megatron"]
    assert ConvertRequest("s", "d", "safetensors").errors()[0].startswith("--to safetensors: unknown target format")


def test_typed_values_and_target_options() -> None:
    request = ConvertRequest("s", "d", "megatron", {"tp": "2", "pp_layers": "3,1", "pp": 2, "dtype": "bf16", "ignore": ["x.*"]})
    target = request.target_options()
    assert (target.format, target.tp, target.pp, target.pp_layers, str(target.dtype)) == ("megatron", 2, 2, [3, 1], "torch.bfloat16")
    assert request.plan_kwargs()["ignore"] == ("x.*",)
    assert parse_size("2GiB") == 2**31 and parse_size("500MB") == 5 * 10**8


def test_request_survives_json(tmp_path: Path) -> None:
    request = ConvertRequest(str(tmp_path), str(tmp_path / "out"), "nxd", {"tp": 2, "config": str(tmp_path / "c.json"),
                                                                          "from_optimizer_fp32": True, "strict": True})
    assert ConvertRequest.from_json(request.to_json()) == request


def test_registry_lists_every_target_with_its_options() -> None:
    assert list(TARGETS) == ["hf", "megatron", "megatron-dist", "nxd"]
    assert {"deepspeed", "meta"} <= set(FORMATS) - set(TARGETS)
    assert {o.name for o in TARGETS["nxd"].target_options} >= {"xser", "fuse_qkv", "kv_size_multiplier", "tp", "pp", "ep"}
    assert not any(o.name in ("tp", "pp", "ep") for o in TARGETS["hf"].target_options)
    assert all(o.help and o.label for o in ALL_OPTIONS.values())
