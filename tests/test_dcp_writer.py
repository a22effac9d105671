"""The torch_dist (DCP) writer: each `.distcp` file is written by a thread of its own, every chunk
`torch.save`d straight into the file from the storage slice of the view it was cut from, and
the chunks cut from the canonical tensors without packing the whole stored tensor where the
op allows it (SwiGLU's `[gate; up]`).

What must hold: the bytes at each `.metadata` offset are exactly the `torch.save` of the chunk
(torch's random `serialization_id` aside) and `torch.load` back to it; the files load with
torch's own `FileSystemReader` and with ours; a write the kernel refuses on a writer thread
reaches the caller as one line, and nothing is left behind; every row's chunks are the boxes of
its packed tensor.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from ckptscope.converters.layouts import ConcatRows
from ckptscope.converters.row import stored_boxes, to_stored
from ckptscope.converters.rules import megatron
from ckptscope.converters.samples.hf import write_hf
from ckptscope.converters.samples.spec import SampleSpec
from ckptscope.converters.writers.dcp import DcpStreamWriter, torch_bytes
from ckptscope.converters.writers.writer_thread import QUEUE_BYTES
from ckptscope.inspectors.dcp import DcpReader

from .test_tables import SPECS, _canon_tensors

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


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("kind", list(SPECS))
def test_every_megatron_rows_chunks_are_boxes_of_its_packed_tensor(kind: str, tp: int) -> None:
    spec = SPECS[kind].with_(padded_vocab=SPECS[kind].padded_for(tp))
    for param in [*megatron.layer_params(spec), *(p for p, _ in megatron.global_params(spec))]:
        canon = tuple(c if c.startswith(("embed", "pos_embed", "final_norm", "lm_head")) else "layers.0." + c.format(e=1)
                      for c in param.canon)
        parts = _canon_tensors(spec, canon)
        whole = to_stored(param, parts, spec)
        cut = stored_boxes(param, parts, spec, tp)
        assert len(cut) == len(param.shard.boxes(tuple(whole.shape), tp)), (kind, param.name)
        for (offsets, sizes), piece in cut:
            box = tuple(slice(o, o + n) for o, n in zip(offsets, sizes))
            assert piece.dtype == whole.dtype and torch.equal(piece, whole[box]), (kind, tp, param.name, offsets)


def test_concat_rows_cuts_views_of_its_parts() -> None:
    """A box inside one part is a view of it (no [gate; up] copy); one across parts, or empty, is
    still exactly that box of the concatenation."""
    parts = [torch.arange(15.0).reshape(5, 3), 100 + torch.arange(21.0).reshape(7, 3)]
    boxes = [(slice(0, 5), slice(0, 3)), (slice(5, 12), slice(1, 3)), (slice(3, 9), slice(0, 3)), (slice(4, 4), slice(0, 3)),
             (slice(0, 12), slice(0, 2))]
    pieces = ConcatRows().cut(parts, None, boxes)  # type: ignore[arg-type]
    whole = torch.cat(parts)
    for box, piece in zip(boxes, pieces):
        assert piece.shape == whole[box].shape and torch.equal(piece, whole[box]), box
    assert pieces[0].data_ptr() == parts[0].data_ptr() and pieces[1].untyped_storage().data_ptr() == parts[1].data_ptr()
    bias = [torch.arange(4.0), torch.arange(4.0, 10.0)]
    assert torch.equal(ConcatRows().cut(bias, None, [(slice(2, 7),)])[0], torch.arange(2.0, 7.0))  # type: ignore[arg-type]
