"""The torch_dist (DCP) writer: each `.distcp` file is written by a thread of its own, every chunk
`torch.save`d straight into the file from the storage slice of the view it was cut from.

What must hold: the bytes at each `.metadata` offset are exactly the `torch.save` of the chunk
(torch's random `serialization_id` aside) and `torch.load` back to it; the files load with
torch's own `FileSystemReader` and with ours; a write the kernel refuses on a writer thread
reaches the caller as one line, and nothing is left behind.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers.dcp import DcpStreamWriter, torch_bytes
from ckptscope.converters.writers.writer_thread import QUEUE_BYTES
from ckptscope.inspectors.dcp import DcpReader

EXTRA = {"format": "te", "values": [1, 2, 3]}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "rows": torch.randn(12, 10, generator=g).to(torch.bfloat16),
        "cols": torch.randn(6, 8, generator=g),
        "stacked": torch.randn(3, 4, 6, generator=g).to(torch.bfloat16),
        # one chunk larger than a thread's queue: it waits for an empty queue instead of being refused
        "big": torch.randn(QUEUE_BYTES // 4 + 1024, generator=g),
    }


def _write(folder: Path) -> dict[tuple[str, tuple[int, ...]], torch.Tensor]:
    """Every kind of chunk the Megatron writer makes, over two rank files; returns chunk by box."""
    full = _tensors()
    folder.mkdir()
    w = DcpStreamWriter(folder)
    chunks: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def add(key: str, offsets: tuple[int, ...], chunk: torch.Tensor, rank: int) -> None:
        chunks[(key, offsets)] = chunk.clone()
        w.add_chunk(key, offsets, chunk, rank=rank)

    for key, t in full.items():
        w.declare(key, t.dtype, tuple(t.shape))
    for r in range(2):  # row blocks: views into the middle of one storage
        add("rows", (6 * r, 0), full["rows"][6 * r:6 * r + 6], r)
        w.add_bytes(f"extra/shard_{r}_2", torch_bytes(EXTRA), rank=r)
    for r in range(2):  # column blocks: strided, made contiguous by the thread
        add("cols", (0, 4 * r), full["cols"][:, 4 * r:4 * r + 4], r)
    for i in range(3):  # a layer axis in front, as stacked layer keys have
        for r in range(2):
            piece = full["stacked"][i, 2 * r:2 * r + 2]
            add("stacked", (i, 2 * r, 0), piece.reshape(1, *piece.shape), r)
    add("big", (0,), full["big"], 0)
    w.finish()
    return chunks


def _without_id(payload: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        sid = z.read(next(n for n in z.namelist() if n.endswith("serialization_id")))
    return payload.replace(sid, b"-" * len(sid))


def test_each_payload_is_the_torch_save_of_its_chunk(tmp_path: Path) -> None:
    chunks = _write(tmp_path / "dcp")
    meta = pickle.loads((tmp_path / "dcp" / ".metadata").read_bytes())
    files = {p.name: p.read_bytes() for p in (tmp_path / "dcp").glob("*.distcp")}
    assert sorted(files) == ["__0_0.distcp", "__1_0.distcp"]
    ranges: dict[str, list[tuple[int, int]]] = {name: [] for name in files}
    for index, info in meta.storage_data.items():
        payload = files[info.relative_path][info.offset:info.offset + info.length]
        ranges[info.relative_path].append((info.offset, info.length))
        if index.offset is None:
            assert torch.load(io.BytesIO(payload), weights_only=True) == EXTRA
            continue
        chunk = chunks[(index.fqn, tuple(index.offset))]
        loaded = torch.load(io.BytesIO(payload), weights_only=True)
        assert loaded.dtype == chunk.dtype and torch.equal(loaded, chunk), index
        reference = io.BytesIO()
        torch.save(chunk.contiguous().clone(), reference)
        assert _without_id(payload) == _without_id(reference.getvalue()), index
    for name, spans in ranges.items():  # payloads tile each file, in the order they were added
        at = 0
        for offset, length in sorted(spans):
            assert offset == at
            at += length
        assert at == len(files[name])


def test_torch_and_our_reader_load_the_files(tmp_path: Path) -> None:
    _write(tmp_path / "dcp")
    full = _tensors()
    state: dict[str, object] = {k: torch.zeros_like(t) for k, t in full.items()}
    state["extra/shard_1_2"] = io.BytesIO()
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(tmp_path / "dcp")), no_dist=True)
    for key, t in full.items():
        assert torch.equal(state[key], t), key  # type: ignore[arg-type]
    assert state["extra/shard_1_2"] == EXTRA  # DCP torch.loads a bytes entry in place of the BytesIO
    ours = DcpReader(tmp_path / "dcp")
    for key, t in full.items():
        assert torch.equal(ours.read_tensor(key), t), key


CLI_WITH_FILE_SIZE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))  # writes past it fail (EFBIG)
from ckptscope.app.cli import main
sys.argv = ["ckptscope", *sys.argv[2:]]
main()
"""


def test_a_write_refused_on_a_writer_thread_reaches_the_caller(tmp_path: Path) -> None:
    """The kernel refuses a `.distcp` write past RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write
    fails with EFBIG) on the file's thread: the conversion stops with one line naming the cause,
    and the partial output is removed."""
    spec = SampleSpec(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=4000, dtype=torch.bfloat16)
    src = write_hf(spec, tmp_path / "hf")
    limit = 200_000  # each rank file gets ≈ 0.5 MB; .metadata and the rest stay under it
    proc = subprocess.run([sys.executable, "-c", CLI_WITH_FILE_SIZE_LIMIT, str(limit), "convert", str(src), str(tmp_path / "out"),
                           "--to", "megatron-dist", "--tp", "2", "--json"], capture_output=True, text=True, timeout=300, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "File too large" in lines[0] and "partial output removed" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".ckptscope-partial-" in p.name]
