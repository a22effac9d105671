"""CLI conventions (issue 16): `-h` everywhere, `--version`, shell completion, readable metavars,
examples in every command's help, refusals before the plan, honest verify / diff messages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptscope.app.cli import app

runner = CliRunner()
COMMANDS = ("inspect", "demo", "convert", "verify", "diff", "check")


def _script() -> str:
    """The installed console script (completion is keyed to the program name `ckptscope`)."""
    beside = Path(sys.executable).parent / "ckptscope"
    found = str(beside) if beside.exists() else shutil.which("ckptscope")
    if not found:
        pytest.skip("the ckptscope console script is not installed")
    return found


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_dash_h_is_help_everywhere(command: str) -> None:
    args = [command, "-h"] if command else ["-h"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: ckptscope {command}".rstrip() + " ")
    assert "Examples:" in result.stdout and (f"ckptscope {command}" in result.stdout.split("Examples:")[1])


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"ckptscope {version('ckptscope')}"


def test_top_level_help_says_path_opens_the_app() -> None:
    out = runner.invoke(app, ["--help"]).stdout
    assert "Usage: ckptscope [OPTIONS] [PATH] | COMMAND [ARGS]..." in out
    assert "`ckptscope PATH` opens it at PATH" in out.replace("\n  ", " ")
    assert "--install-completion" in out and "--show-completion" in out


def test_metavars_read_like_placeholders() -> None:
    out = runner.invoke(app, ["convert", "--help"], terminal_width=200).stdout
    assert "Usage: ckptscope convert [OPTIONS] SRC DST" in out
    for shown in ("--tp N", "--dtype DTYPE", "--tokenizer PATH", "--ignore GLOB", "--to FORMAT", "--max-shard-size SIZE",
                  "--override-special-tokens NAME=TOKEN", "--config FILE"):
        assert shown in out, shown
    assert not re.search(r"\{\w+\}|<(int|str|path|float|list\[str\])( range)?>", out), out
    assert "Usage: ckptscope inspect [OPTIONS] PATH" in runner.invoke(app, ["inspect", "-h"]).stdout
    assert "Usage: ckptscope demo [OPTIONS] [DIR]" in runner.invoke(app, ["demo", "-h"]).stdout


def test_missing_argument_names_the_metavar() -> None:
    result = runner.invoke(app, ["convert"])
    assert result.exit_code == 2 and "Missing argument 'SRC'" in result.output


def test_shell_completion_completes_commands_and_options() -> None:
    env = {**os.environ, "_CKPTSCOPE_COMPLETE": "complete_bash", "COMP_WORDS": "ckptscope conv", "COMP_CWORD": "1"}
    done = subprocess.run([_script()], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["convert"], done
    env.update(COMP_WORDS="ckptscope convert --dty", COMP_CWORD="2")
    done = subprocess.run([_script()], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["--dtype"], done
    env.update(COMP_WORDS="ckptscope convert a b --to ", COMP_CWORD="5")  # choices from the core's tables
    done = subprocess.run([_script()], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["hf", "megatron", "megatron-dist", "nxd"], done
    env.update(COMP_WORDS="ckptscope convert a b --dtype b", COMP_CWORD="5")
    done = subprocess.run([_script()], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["bf16"], done
    fixed_shell = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # typer's switch: name the shell
    shown = subprocess.run([_script(), "--show-completion", "bash"], capture_output=True, text=True, timeout=120, env=fixed_shell)
    assert shown.returncode == 0 and "_CKPTSCOPE_COMPLETE=complete_bash" in shown.stdout


@pytest.fixture(scope="module")
def small_megatron(tmp_path_factory) -> Path:
    from ckptscope.converters.samples.megatron_torch import write_megatron_torch
    from ckptscope.converters.samples.spec import SampleSpec

    root = tmp_path_factory.mktemp("mt")
    write_megatron_torch(SampleSpec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300), root, tp=1, pp=1)
    return root


def test_convert_refuses_before_printing_the_plan(small_megatron: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(small_megatron), str(tmp_path / "out"), "--to", "megatron", "--tp", "3"])
    assert result.exit_code == 2
    assert result.stdout == "", result.stdout  # no plan above the refusal
    assert "ckptscope: error: target layout: 8 attention heads do not split over TP=3" in result.stderr
    assert not (tmp_path / "out").exists()
    planned = runner.invoke(app, ["convert", str(small_megatron), str(tmp_path / "out"), "--to", "megatron", "--tp", "3", "--plan-only"])
    assert planned.exit_code == 2 and "Output files" in planned.stdout  # asked for: the whole plan, errors included
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    result = runner.invoke(app, ["convert", str(small_megatron), str(tmp_path / "full"), "--to", "hf"])
    assert result.exit_code == 2 and result.stdout == "" and "exists and is not empty" in result.stderr


@pytest.mark.parametrize("command", ("convert", "check"))
def test_unknown_target_names_the_option_and_the_choices(small_megatron: Path, tmp_path: Path, command: str) -> None:
    args = [command, str(small_megatron), *([str(tmp_path / "out")] if command == "convert" else []), "--to", "safetensors"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith("ckptscope: error: --to safetensors: unknown target format") and str(small_megatron) not in line
    assert all(name in line for name in ("hf", "megatron", "megatron-dist", "nxd"))


SMALL = {"layers": 2, "hidden": 64, "heads": 8, "kv_heads": 2, "ffn": 96, "vocab": 300}


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory) -> Path:
    from ckptscope.converters.samples.hf import write_hf
    from ckptscope.converters.samples.spec import SampleSpec

    return write_hf(SampleSpec(**SMALL), tmp_path_factory.mktemp("hf") / "model")


def test_verify_after_a_dtype_change_counts_casts_apart(small_megatron: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    result = runner.invoke(app, ["convert", str(small_megatron), str(out), "--to", "hf", "--dtype", "bf16", "--verify"],
                           terminal_width=300)
    line = next(x for x in result.stdout.splitlines() if x.startswith("tensors") and "compared" in x)
    compared = int(re.search(r"(\d+) compared", line).group(1))
    assert compared > 0
    assert (f"{compared} compared: 0 differ, {compared} differ only in dtype "
            "(float32 -> bfloat16, equal after casting to bfloat16), 0 only in A, 0 only in B") in line, line
    assert "largest diff" not in result.stdout
    logits = next(x for x in result.stdout.splitlines() if x.startswith("logits"))
    assert "both with weights rounded to bfloat16) OK" in logits and result.exit_code == 0, result.stdout
    from ckptscope.converters.verify import verify

    doc = verify(small_megatron, out, logits=False).to_json()
    assert doc["tensors_dtype_only"] == compared
    assert all(t["dtype_only"] and t["max_abs_after_cast"] == 0.0 for t in doc["tensors_different"])


def test_verify_reports_a_real_difference_after_casting(small_megatron: Path, tmp_path: Path) -> None:
    """A cast plus a changed value is still a difference, measured after the cast."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "bf16"
    assert runner.invoke(app, ["convert", str(small_megatron), str(out), "--to", "hf", "--dtype", "bf16"]).exit_code == 0
    shard = next(out.glob("*.safetensors"))
    tensors = load_file(str(shard))
    name = next(n for n in tensors if n.endswith("layers.1.mlp.down_proj.weight"))
    tensors[name][0, 0] += 1.0
    save_file(tensors, str(shard), metadata={"format": "pt"})
    result = runner.invoke(app, ["verify", str(small_megatron), str(out), "--no-logits"], terminal_width=300)
    assert result.exit_code == 1
    assert re.search(r"compared: 1 differ, \d+ differ only in dtype", result.stdout), result.stdout
    assert "largest diff  layers.1.mlp.down after casting" not in result.stdout
    assert re.search(r"largest diff\s+layers\.1\.mlp\.down: .* after casting both to bfloat16", result.stdout), result.stdout
    from ckptscope.converters.verify import logits_cast, verify

    assert logits_cast(verify(small_megatron, out, logits=False)) is None  # a real change: logits compared as stored


def test_transformers_load_bar_stays_off_the_output(small_hf: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """`verify` through the core (the app's wizard calls it too) prints nothing of transformers' own."""
    from ckptscope.converters.verify import verify

    report = verify(small_hf, small_hf)
    out, err = capfd.readouterr()
    assert report.logits_ok and "Loading weights" not in err + out and "it/s" not in err + out, err


def _with_tty_stderr(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout piped): (status, stdout, terminal bytes)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ckptscope.app.cli", *args], stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, stdout, seen.decode(errors="replace")


@pytest.mark.parametrize("command", (("verify",), ("diff", "--numeric")))
def test_progress_on_a_terminal_stderr_only(small_hf: Path, command: tuple[str, ...]) -> None:
    code, stdout, terminal = _with_tty_stderr(command[0], str(small_hf), str(small_hf), *command[1:])
    assert code == 0, stdout + terminal
    assert re.search(r"(comparing tensors|logits of [AB]) .*\d+/\d+", terminal), terminal
    assert "comparing tensors" not in stdout and "Loading weights" not in terminal
    piped = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", command[0], str(small_hf), str(small_hf), *command[1:]],
                           capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_diff_json_names_the_stored_tensor_on_each_side(small_megatron: Path, small_hf: Path) -> None:
    import json

    result = runner.invoke(app, ["diff", str(small_megatron), str(small_hf), "--json"])
    assert result.exit_code == 0, result.output
    entries = {e["name"]: e for e in json.loads(result.stdout)["entries"]}
    q = entries["layers.1.attn.q"]
    assert q["stored_a"] == ["decoder.layers.1.self_attention.linear_qkv.weight"]
    assert q["stored_b"] == ["model.layers.1.self_attn.q_proj.weight"]
    assert entries["embed"]["stored_b"] == ["model.embed_tokens.weight"]


def _without(src: Path, dst: Path, drop: str) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    shard = next(dst.glob("*.safetensors"))
    tensors = load_file(str(shard))
    del tensors[drop]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return dst


def test_numeric_diff_says_what_it_did_not_compare(small_hf: Path, tmp_path: Path) -> None:
    import json

    broken = _without(small_hf, tmp_path / "broken", "model.layers.1.self_attn.k_proj.weight")
    result = runner.invoke(app, ["diff", str(small_hf), str(broken), "--numeric"], terminal_width=300)
    summary = result.stdout.splitlines()[0]
    doc = json.loads(runner.invoke(app, ["diff", str(small_hf), str(broken), "--numeric", "--json"]).stdout)
    skipped = doc["not_compared"]
    assert skipped and all(n.startswith("layers.1.") for n in skipped) and not doc["identical"]
    compared = sum(e["max_abs"] is not None for e in doc["entries"])
    assert f"max abs diff 0 over {compared} tensor(s) compared, {len(skipped)} not compared (unreadable, see notes)" in summary
    assert "layer 1 of B not compared" in result.stdout


def test_piped_diff_keeps_each_long_name_on_one_line(small_hf: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    long_name = "model.layers.1.mlp.up_proj.weight_" + "x" * 200
    odd = tmp_path / "odd"
    shutil.copytree(small_hf, odd)
    shard = next(odd.glob("*.safetensors"))
    tensors = load_file(str(shard))
    tensors[long_name] = tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run([sys.executable, "-m", "ckptscope.app.cli", "diff", str(small_hf), str(odd)],
                           capture_output=True, text=True, timeout=300, env=env)
    assert piped.returncode == 1
    assert any(long_name in line for line in piped.stdout.splitlines()), piped.stdout
    code, shown = _on_terminal(["diff", str(small_hf), str(odd)], columns=230)
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", x) for x in shown.splitlines()]
    assert code == 1 and max(len(x) for x in lines) == 230, shown  # the terminal's width, all of it
    assert long_name not in shown and long_name[:150] in "".join(lines)


def _on_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal `columns` wide."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "ckptscope.app.cli", *args], stdout=slave, stderr=slave,
                            env={**env, "TERM": "xterm-256color"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace").replace("\r", "")


def test_inspect_draws_the_rank_layout(tmp_path: Path) -> None:
    """TP2×PP2: each rank file, its size, the layers it holds and the stages with embedding / head."""
    import json

    from ckptscope.converters.samples.megatron_torch import write_megatron_torch
    from ckptscope.converters.samples.spec import SampleSpec

    root = tmp_path / "mt"
    write_megatron_torch(SampleSpec(layers=4, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=300), root, tp=2, pp=2)
    result = runner.invoke(app, ["inspect", str(root)], terminal_width=200)
    lines = result.stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("Rank layout (TP2×PP2)"))
    grid = "\n".join(lines[start:start + 14])
    assert re.search(r"┃ rank ┃ tp0\s+┃ tp1\s+┃", grid), grid
    assert re.search(r"│ pp0\s+│ mp_rank_00_000\s+│ mp_rank_01_000\s+│\n│\s+│ layers 0-1\s+│ layers 0-1\s+│", grid), grid
    assert re.search(r"│ pp1\s+│ mp_rank_00_001\s+│ mp_rank_01_001\s+│\n│\s+│ layers 2-3\s+│ layers 2-3\s+│", grid), grid
    assert grid.count("+ embedding") == 2 and grid.count("+ final norm, output head") == 2
    doc = json.loads(runner.invoke(app, ["inspect", str(root), "--json"]).stdout)
    cells = {tuple(c["key"]): c for c in doc["rank_map"]["cells"]}
    assert set(cells) == {(0, 0, None), (0, 1, None), (1, 0, None), (1, 1, None)} and not doc["rank_map"]["missing"]
    files = {f["path"]: f["size"] for f in doc["files"]}
    assert cells[(1, 1, None)]["files"] == ["mp_rank_01_001/model_optim_rng.pt"]
    assert cells[(1, 1, None)]["size"] == files["mp_rank_01_001/model_optim_rng.pt"] and cells[(1, 1, None)]["layers"] == [2, 3]


def test_rank_map_of_experts_chunks_and_shards(tmp_path: Path) -> None:
    from ckptscope.converters.samples.demo import write_demo
    from ckptscope.inspectors import detect
    from ckptscope.inspectors.rankmap import rank_map

    demo = write_demo(tmp_path / "demo")
    moe = rank_map(detect(demo["megatron-moe-ep2"]))
    assert moe.axes == ("tp", "pp", "ep") and [sorted(c.experts) for c in moe.cells.values()] == [[0, 1], [2, 3]]
    dist = rank_map(detect(demo["megatron-dist"]))  # torch_dist: chunk files, layers from the stacked axis
    assert dist.by_file and all(c.layers == {0, 1, 2, 3} for c in dist.cells.values())
    assert {k[0] for k in dist.cells} == {f.rel for f in detect(demo["megatron-dist"]).files if f.rel.endswith(".distcp")}
    hf = rank_map(detect(demo["hf-mixtral"]))
    assert hf.by_file and sum(c.tensors for c in hf.cells.values()) == len(detect(demo["hf-mixtral"]).model_tensors())


def test_inspect_header_names_the_model(small_megatron: Path) -> None:
    import json

    from ckptscope.inspectors import detect
    from ckptscope.inspectors.summary import logical_param_count

    params = logical_param_count(detect(small_megatron))
    result = runner.invoke(app, ["inspect", str(small_megatron)], terminal_width=200)
    model = next(x for x in result.stdout.splitlines() if x.startswith("model"))
    assert model.split(None, 1)[1].rstrip() == f"llama · 2 layers · hidden 64 · heads 8 / 2 KV · {params:,} parameters · float32"
    doc = json.loads(runner.invoke(app, ["inspect", str(small_megatron), "--json"]).stdout)
    assert doc["architecture"] == "llama · 2 layers · hidden 64 · heads 8 / 2 KV"


def test_rank_map_lists_pipeline_layer_files_one_by_one(corpus: Path) -> None:
    """DeepSpeed pipeline files of one TP rank: a one-cell grid says nothing, so each file is a row."""
    from ckptscope.inspectors import detect
    from ckptscope.inspectors.rankmap import rank_map

    rmap = rank_map(detect(corpus / "deepspeed" / "pipe2_mp"))
    assert rmap.by_file and [sorted(c.modules) for c in rmap.cells.values()] == [[0], [1], [2], [3], [4], [5]]
    assert "embedding" in rmap.cells[("layer_00-model_00-model_states.pt",)].parts
