"""Checkpoints where they live (issue 18): every corpus format inspected, diffed and converted
straight from a real S3 server (moto's, on 127.0.0.1) and a real HTTP server with Range support,
both started here; the bytes and requests are counted by the servers, and faults (503s, a
connection dropped mid-object) either heal through retries or fail in one line with no
complete-looking output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fsspec", reason="remote paths need fsspec (pip install 'ckptscope[s3]')")
pytest.importorskip("aiohttp", reason="http:// paths need aiohttp (pip install 'ckptscope[s3]')")

from ckptscope.converters.diff import diff_checkpoints
from ckptscope.converters.plan import make_plan
from ckptscope.converters.run import run_to_end
from ckptscope.converters.writers import TargetOptions
from ckptscope.inspectors import detect, storage
from ckptscope.inspectors.errors import CheckpointError, NotACheckpoint

from .remote_servers import RangeHTTPServer, S3Server
from .test_tui import until

BUCKET = "ckpt"
CREDS = {"key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}

# corpus item -> (target format, target options) for the conversion check
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "hf/llama_gqa_sharded": ("megatron", {"tp": 2}),
    "hf/mixtral_moe_sharded": ("megatron", {"ep": 2}),
    "hf/llama_gqa_pytorch_bin_sharded": ("hf", {}),
    "megatron/gpt_tp2pp1/dist": ("hf", {}),
    "megatron/gpt_tp2pp1/legacy": ("hf", {}),
    "megatron/moe_ep2/dist": ("hf", {}),
    "megatron/moe_ep2/legacy": ("hf", {}),
    "deepspeed/zero2_bf16": ("hf", {}),
    "deepspeed/pipe2_mp": ("hf", {}),  # needs --config: written from its hparams.json
}


def _budget(folder: Path) -> float:
    """The issue's inspect budget: 1 MiB plus 0.5 % of the checkpoint."""
    return (1 << 20) + 0.005 * sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def s3(corpus: Path) -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
    pytest.importorskip("s3fs", reason="s3:// paths need s3fs (pip install 'ckptscope[s3]')")
    server = S3Server().start()
    server.client().create_bucket(Bucket=BUCKET)
    server.upload_tree(BUCKET, corpus, "corpus")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(corpus: Path) -> Iterator[RangeHTTPServer]:
    server = RangeHTTPServer(corpus).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No listing or byte cached from an earlier test; options set per test."""
    monkeypatch.setattr(storage, "_options", {})
    monkeypatch.setattr(storage, "SETTINGS", dict(storage.SETTINGS))
    storage.forget()
    yield
    storage.forget()


def _remote(kind: str, item: str, request: pytest.FixtureRequest) -> tuple[str, Any]:
    """URL of a corpus item on the S3 or HTTP server (configured), and that server."""
    if kind == "s3":
        server = request.getfixturevalue("s3")
        storage.configure({"s3.endpoint_url": server.endpoint, **{f"s3.{k}": v for k, v in CREDS.items()}})
        return f"s3://{BUCKET}/corpus/{item}", server
    server = request.getfixturevalue("http")
    return f"{server.url}/{item}", server


def _normalised(doc: dict[str, Any], path: str) -> str:
    return json.dumps(doc, sort_keys=True, default=str).replace(path, "<ckpt>")


_local_outputs: dict[str, Path] = {}


def _config_for(item: str, corpus: Path, tmp: Path) -> Path | None:
    if item != "deepspeed/pipe2_mp":
        return None
    import transformers

    h = json.loads((corpus / item / "hparams.json").read_text())
    config = transformers.LlamaConfig(
        vocab_size=h["vocab_size"], hidden_size=h["hidden_size"], intermediate_size=h["intermediate_size"],
        num_hidden_layers=h["num_layers"], num_attention_heads=h["num_attention_heads"],
        num_key_value_heads=h["num_key_value_heads"], rms_norm_eps=h["rms_norm_eps"], rope_theta=h["rope_theta"],
        tie_word_embeddings=h["tie_word_embeddings"])
    out = tmp / "config.json"
    out.write_text(config.to_json_string())
    return out


def _convert(src: str | Path, dst: Path, item: str, config: Path | None) -> Path:
    fmt, options = CASES[item]
    plan = make_plan(src, TargetOptions(fmt, **options), config=config)
    assert plan.ok, plan.errors
    run_to_end(plan, dst)
    return dst


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- inspect: the same index, within the byte budget ----------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "http"])
@pytest.mark.parametrize("item", list(CASES))
def test_inspect_matches_local_within_budget(corpus: Path, item: str, kind: str, request: pytest.FixtureRequest) -> None:
    url, server = _remote(kind, item, request)
    local = detect(corpus / item).to_json()
    server.counter.reset()
    remote = detect(url).to_json()
    sent, requests = server.counter.body_bytes, server.counter.requests
    print(f"{kind} {item}: {requests} requests, {sent} bytes (budget {_budget(corpus / item):.0f})")
    assert _normalised(remote, url) == _normalised(local, str(corpus / item))
    assert sent <= _budget(corpus / item)
    assert requests <= 40  # a listing per folder and a few ranged reads per file


# ----- convert: the same output bytes as from local disk --------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "http"])
@pytest.mark.parametrize("item", list(CASES))
def test_convert_matches_local_bytes(corpus: Path, tmp_path: Path, item: str, kind: str, request: pytest.FixtureRequest,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    config = _config_for(item, corpus, tmp_path)
    if item not in _local_outputs:
        _local_outputs[item] = _convert(corpus / item, tmp_path_factory.mktemp("local") / "out", item, config)
    url, _server = _remote(kind, item, request)
    out = _convert(url, tmp_path / "out", item, config)
    local, remote = _files(_local_outputs[item]), _files(out)
    assert sorted(remote) == sorted(local)
    differ = [name for name in local if local[name] != remote[name]]
    assert differ == [], f"output files differ from the local conversion: {differ}"


# ----- diff ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "http"])
def test_diff_remote_against_local_is_identical(corpus: Path, kind: str, request: pytest.FixtureRequest) -> None:
    item = "megatron/gpt_tp2pp1/dist"
    url, _server = _remote(kind, item, request)
    report = diff_checkpoints(corpus / "megatron/gpt_tp2pp1/legacy", url, numeric=True)
    assert report.identical, report.problems()[:3]
    assert report.counts["same"] > 0


# ----- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "http"])
def test_503s_are_retried(corpus: Path, kind: str, request: pytest.FixtureRequest) -> None:
    item = "hf/llama_gqa_sharded"
    url, server = _remote(kind, item, request)
    server.faults.status_503 = 2
    remote = detect(url).to_json()
    assert server.faults.status_503 == 0  # the server did fail the first reads
    assert _normalised(remote, url) == _normalised(detect(corpus / item).to_json(), str(corpus / item))


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_dropped_connection_is_retried_and_the_output_is_exact(corpus: Path, tmp_path: Path, request: pytest.FixtureRequest,
                                                               kind: str) -> None:
    item = "megatron/gpt_tp2pp1/legacy"
    url, server = _remote(kind, item, request)
    plan = make_plan(url, TargetOptions("hf"))
    server.faults.drop_after, server.faults.drops = 4096, 2  # the next two tensor reads die mid-body
    run_to_end(plan, tmp_path / "out")
    assert server.faults.drops == 0
    local = _convert(corpus / item, tmp_path / "local", item, None)
    assert _files(tmp_path / "out") == _files(local)


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_connection_that_keeps_dropping_fails_in_one_line_without_output(tmp_path: Path, request: pytest.FixtureRequest,
                                                                         monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(storage, "BACKOFF", 0.01)
    url, server = _remote(kind, "megatron/gpt_tp2pp1/legacy", request)
    plan = make_plan(url, TargetOptions("hf"))
    storage.forget()  # nothing cached: every read goes to the failing server
    server.faults.drop_after, server.faults.drops = 100, 10_000
    try:
        with pytest.raises(CheckpointError) as err:
            run_to_end(plan, tmp_path / "out")
    finally:
        server.faults.drops = 0
    message = str(err.value)
    assert "\n" not in message and "attempts" in message and "rerun" in message
    assert not (tmp_path / "out").exists()  # nothing that looks like a finished conversion


# ----- one-line errors ------------------------------------------------------------------------------
def test_missing_bucket_key_and_not_a_checkpoint(request: pytest.FixtureRequest) -> None:
    url, _server = _remote("s3", "hf/llama_gqa_sharded", request)
    with pytest.raises(CheckpointError, match="no such"):
        detect("s3://no-such-bucket-here/ckpt")
    with pytest.raises(CheckpointError, match="no such"):
        detect(url + "-missing")
    with pytest.raises(NotACheckpoint, match="not a recognised checkpoint"):
        detect(f"s3://{BUCKET}/corpus")


def test_no_credentials_is_one_line(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = request.getfixturevalue("s3")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup
    storage.configure({"s3.endpoint_url": server.endpoint, "s3.skip_instance_cache": True})
    with pytest.raises(CheckpointError, match="no credentials") as err:
        detect(f"s3://{BUCKET}/corpus/hf/llama_gqa_sharded")
    assert "\n" not in str(err.value)


def test_http_404_is_one_line(request: pytest.FixtureRequest) -> None:
    url, _server = _remote("http", "hf/llama_gqa_sharded", request)
    with pytest.raises(CheckpointError, match="no such"):
        detect(url + "/nope.safetensors")


# ----- the command line -------------------------------------------------------------------------------
def test_cli_inspect_and_convert_from_s3(corpus: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("s3")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    base = [sys.executable, "-m", "ckptscope.app.cli", "--storage-option", f"endpoint_url={server.endpoint}"]
    url = f"s3://{BUCKET}/corpus/hf/llama_gqa_sharded"
    done = subprocess.run([*base, "inspect", "--json", url], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == url
    done = subprocess.run([*base, "convert", url, str(tmp_path / "mt"), "--to", "megatron", "--tp", "2", "--json"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    local = _convert(corpus / "hf/llama_gqa_sharded", tmp_path / "local", "hf/llama_gqa_sharded", None)
    assert _files(tmp_path / "mt") == _files(local)
    done = subprocess.run([*base, "inspect", f"s3://{BUCKET}/nope"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# ----- s3:// destinations: a multipart upload per file, markers last, nothing left on failure -------------
def _objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    client = server.client()
    found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found}


def _configure_s3(server: S3Server) -> None:
    storage.configure({"s3.endpoint_url": server.endpoint, **{f"s3.{k}": v for k, v in CREDS.items()}})


def test_convert_to_s3_streams_multipart_and_publishes_the_index_last(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from ckptscope.converters.samples.hf import write_hf
    from ckptscope.converters.samples.spec import SampleSpec

    server = request.getfixturevalue("s3")
    _configure_s3(server)
    src = write_hf(SampleSpec(layers=2, hidden=256, ffn=512, vocab=8000), tmp_path / "src", shards=1)  # ~20 MB of weights
    storage.configure({"write_part": 5 << 20})  # S3's smallest part: a 12 MB shard goes up in three
    server.counter.reset()
    plan = make_plan(src, TargetOptions("hf", max_shard_bytes=12 * 10**6))
    run_to_end(plan, "s3://ckpt/out/hf-big")
    local = run_to_end(make_plan(src, TargetOptions("hf", max_shard_bytes=12 * 10**6)), tmp_path / "local")
    assert _objects(server, "out/hf-big") == _files(Path(local.output))
    writes = server.counter.writes
    assert any("uploads" in q for _m, _p, q in writes) and any("partNumber=2" in q for _m, _p, q in writes)  # multipart, 2+ parts
    index_at = max(i for i, (_m, p, _q) in enumerate(writes) if p.endswith("model.safetensors.index.json"))
    shard_ends = [i for i, (_m, p, _q) in enumerate(writes) if ".safetensors" in p and not p.endswith(".json")]
    assert len([p for p in _objects(server, "out/hf-big") if p.endswith(".safetensors")]) >= 2
    assert shard_ends and max(shard_ends) < index_at  # the index, the completion marker, is the last write


def test_convert_to_s3_megatron_tracker_last_and_loadable(corpus: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("s3")
    _configure_s3(server)
    server.counter.reset()
    run_to_end(make_plan(corpus / "hf/llama_gqa_sharded", TargetOptions("megatron", tp=2)), "s3://ckpt/out/mt")
    writes = [p for m, p, _q in server.counter.writes if m in ("PUT", "POST")]
    assert writes[-1].endswith("latest_checkpointed_iteration.txt")
    storage.forget()
    remote = detect("s3://ckpt/out/mt")  # reads back from the bucket, same index as the local conversion
    local = detect(run_to_end(make_plan(corpus / "hf/llama_gqa_sharded", TargetOptions("megatron", tp=2)), tmp_path / "mt").output)
    assert [t.to_json() for t in remote.tensors] == [t.to_json() for t in local.tensors]


def test_convert_to_s3_torch_dist_streams_its_distcp_files(corpus: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """torch_dist into a bucket: each `.distcp` object is streamed by its file's writer thread; the
    tracker is the last write, and every tensor reads back as the local conversion's."""
    server = request.getfixturevalue("s3")
    _configure_s3(server)
    server.counter.reset()
    target = TargetOptions("megatron-dist", tp=2)
    run_to_end(make_plan(corpus / "hf/llama_gqa_sharded", target), "s3://ckpt/out/dist")
    writes = [p for m, p, _q in server.counter.writes if m in ("PUT", "POST")]
    assert writes[-1].endswith("latest_checkpointed_iteration.txt")
    storage.forget()
    remote = detect("s3://ckpt/out/dist")
    local = detect(run_to_end(make_plan(corpus / "hf/llama_gqa_sharded", target), tmp_path / "dist").output)
    assert [t.to_json() for t in remote.tensors] == [t.to_json() for t in local.tensors]
    assert all(torch.equal(remote.load(t.name), local.load(t.name)) for t in local.tensors)


def test_failed_conversion_to_s3_leaves_no_object_and_no_open_upload(tmp_path: Path, request: pytest.FixtureRequest,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF", 0.01)
    s3server = request.getfixturevalue("s3")
    url, http_server = _remote("http", "megatron/moe_ep2/dist", request)
    _configure_s3(s3server)
    plan = make_plan(url, TargetOptions("hf", max_shard_bytes=2 * 10**6))
    storage.forget()
    http_server.faults.drop_after, http_server.faults.drops = 100, 10_000  # the source dies mid-conversion
    try:
        with pytest.raises(CheckpointError):
            run_to_end(plan, "s3://ckpt/out/failed")
    finally:
        http_server.faults.drops = 0
    assert _objects(s3server, "out/failed") == {}
    assert not s3server.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_convert_to_a_non_empty_prefix_is_refused(corpus: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("s3")
    _configure_s3(server)
    with pytest.raises(CheckpointError, match="not empty"):
        run_to_end(make_plan(corpus / "hf/llama_gqa_sharded", TargetOptions("hf")), f"s3://{BUCKET}/corpus/hf")


# ----- the app --------------------------------------------------------------------------------------
async def test_app_opens_a_remote_checkpoint(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ckptscope s3://…` opens the inspect screen on the bucket's checkpoint."""
    from ckptscope.app.tui.app import CkptscopeApp
    from ckptscope.app.tui.inspect import InspectScreen

    url, _server = _remote("s3", "megatron/moe_ep2/dist", request)
    app = CkptscopeApp(url)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        for _ in range(40):  # let the screen finish mounting its tabs
            await pilot.pause(0.05)
        assert app.screen.ckpt.path == storage.as_path(url + "/iter_0000010")


def test_cli_diff_check_verify_over_http(corpus: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("http")
    cli = [sys.executable, "-m", "ckptscope.app.cli"]
    url = f"{server.url}/megatron/gpt_tp2pp1/legacy"
    for args in (["diff", str(corpus / "megatron/gpt_tp2pp1/dist"), url, "--json"],
                 ["check", url, "--to", "hf", "--json"],
                 ["verify", url, str(corpus / "megatron/gpt_tp2pp1/dist"), "--json"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, (args[0], done.stderr)
        doc = json.loads(done.stdout)
        assert doc.get("identical", doc.get("ok", True)) is not False, (args[0], doc)


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_dropped_source_resumes_where_it_stopped(corpus: Path, tmp_path: Path, request: pytest.FixtureRequest,
                                                  monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The connection to the source dies for good while the last pipeline stage is read: the run
    fails in one line, keeps the finished stage for --resume, and the rerun reads only what is
    left and writes the same bytes as a local conversion."""
    monkeypatch.setattr(storage, "BACKOFF", 0.01)
    item = "hf/llama_gqa_sharded"
    url, server = _remote(kind, item, request)
    target = TargetOptions("megatron", tp=2, pp=2)
    local = tmp_path / "local"
    plan = make_plan(corpus / item, target)
    run_to_end(plan, local)
    plan = make_plan(url, target)
    storage.forget()
    server.faults.only, server.faults.drop_after, server.faults.drops = "model-00004-of-00004", 100, 10_000  # lm_head's shard
    try:
        with pytest.raises(CheckpointError) as err:
            run_to_end(plan, tmp_path / "out", resume=True)
    finally:
        server.faults.only, server.faults.drops = "", 0
    assert "\n" not in str(err.value) and "rerun" in str(err.value)
    assert not (tmp_path / "out").exists()  # only a hidden partial folder, kept for --resume
    storage.forget()
    done = run_to_end(make_plan(url, target), tmp_path / "out", resume=True)
    assert done.skipped > 0  # the first stage was not read or written again
    assert _files(tmp_path / "out") == _files(local)


async def test_app_browses_a_bucket_prefix(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ckptscope s3://bucket/prefix/` browses the prefix: its checkpoints are labelled from names
    (as local folders are), and Enter on one opens it."""
    from ckptscope.app.tui.app import CkptscopeApp
    from ckptscope.app.tui.browse import BrowseScreen, CheckpointTree
    from ckptscope.app.tui.inspect import InspectScreen

    url, _server = _remote("s3", "megatron/gpt_tp2pp1", request)
    dist = storage.as_path(url + "/dist")
    app = CkptscopeApp(url)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, BrowseScreen) and dist in app.screen.query_one(CheckpointTree).labels)
        tree = app.screen.query_one(CheckpointTree)
        assert tree.labels[dist].kind == "megatron-dist" and tree.labels[storage.as_path(url + "/legacy")].kind == "megatron-torch"
        node = next(n for n in tree.root.children if n.data is not None and n.data.path == dist)
        tree.move_cursor(node)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        assert app.screen.ckpt.path == storage.as_path(url + "/dist/iter_0000010")


@pytest.mark.parametrize("kind", ["hf-folder", "bpe"])
def test_convert_to_s3_carries_the_tokenizer(tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """--tokenizer into an s3:// output: an HF tokenizer folder is copied file by file, a built one
    (GPT-2 BPE files made into an HF tokenizer) saved and uploaded; the objects are the local output's."""
    from tokenizers import ByteLevelBPETokenizer

    from ckptscope.converters.samples.hf import write_hf
    from ckptscope.converters.samples.spec import SampleSpec

    server = request.getfixturevalue("s3")
    _configure_s3(server)
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["a tiny corpus of text for a tiny tokenizer"] * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    tok.save_model(str(bpe))
    src = write_hf(SampleSpec(layers=1, hidden=64, ffn=128, vocab=tok.get_vocab_size()), tmp_path / "src", shards=1)
    tokenizer = bpe / "vocab.json"
    if kind == "hf-folder":  # an HF folder holding the tokenizer files
        hf_tok = tmp_path / "hf-tok"
        local = run_to_end(make_plan(src, TargetOptions("hf", tokenizer=tokenizer)), hf_tok)
        tokenizer = Path(local.output)
    target = TargetOptions("hf", tokenizer=tokenizer)
    run_to_end(make_plan(src, target), f"s3://ckpt/out/tok-{kind}")
    local = run_to_end(make_plan(src, TargetOptions("hf", tokenizer=tokenizer)), tmp_path / "local")
    objects, files = _objects(server, f"out/tok-{kind}"), _files(Path(local.output))
    assert "tokenizer.json" in files and objects.keys() == files.keys()
    assert objects == files
