"""Our torch zip layout writer against torch's own (PyTorchFileWriter): the same bytes.

Small archives are compared as files. Archives past 4 GiB (zip64 offsets, a record of 4 GiB
or more) are compared as the stream of writes each writer makes, with the data of the large
records left out: their memory is an untouched allocation (the kernel's zero page, no RSS), so
the test needs neither the disk nor the memory of a 9 GiB file, and the CRCs of those
records still appear in the descriptors and the central directory that are compared.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from ckptscope.converters.writers.dcp import saved_as_is
from ckptscope.converters.writers.torchzip import save_tensor
from ckptscope.converters.writers.zip_layout import ZipLayoutWriter, archive_name

GiB = 2**30


def _torch_file(path: Path, records: list[tuple[str, bytes]]) -> bytes:
    w = torch._C.PyTorchFileWriter(str(path))
    for name, data in records:
        w.write_record(name, data, len(data))
    w.write_end_of_file()
    del w
    return path.read_bytes()


def _ours(archive: str, records: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    w = ZipLayoutWriter(out.write, archive)
    for name, data in records:
        w.write_record(name, data)
    w.write_end_of_file()
    return out.getvalue()


def _like_torch_save(pickle_bytes: bytes, tensors: list[bytes]) -> list[tuple[str, bytes]]:
    return [(f"data/{i}", t) for i, t in enumerate(tensors)] + [
        ("data.pkl", pickle_bytes), (".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little"),
    ]


CASES = {
    "torch.save-like": _like_torch_save(b"\x80\x02}q\x00." * 30, [bytes(range(256)) * 40, b"\x01" * 30, b"", b"x" * 70_000]),
    "a record that starts like a data descriptor": _like_torch_save(b"p", [b"PK\x07\x08\x12\x34\x56\x78rest", b"PK\x07\x08abc"]),
    "every padding length": [(f"data/{'n' * k}", b"v" * k) for k in range(70)],
    "torch's own end records given": [("data/0", b"abcd"), ("version", b"5\n"), ("byteorder", b"big")],
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("file_name", ["model_optim_rng.pt", "tensor_3.pt", "x.tar.pt"])
def test_same_bytes_as_torchs_writer(tmp_path: Path, case: str, file_name: str) -> None:
    records = CASES[case]
    theirs = _torch_file(tmp_path / file_name, records)
    assert _ours(archive_name(file_name), records) == theirs
    with zipfile.ZipFile(io.BytesIO(theirs)) as z:
        assert z.testzip() is None


def test_more_records_than_the_end_record_counts(tmp_path: Path) -> None:
    """Past 65,535 records the classic end record holds 0xFFFF; the zip64 one the count."""
    records = [(f"data/{i}", bytes([i % 251])) for i in range(66_000)]
    assert _ours("many", records) == _torch_file(tmp_path / "many.pt", records)


def test_torch_loads_what_we_write(tmp_path: Path) -> None:
    """A torch.save payload rewritten through our layout loads with torch.load, weights_only and mmap."""
    obj = {"w": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.bfloat16)}
    torch.save(obj, tmp_path / "ref.pt")
    with zipfile.ZipFile(tmp_path / "ref.pt") as z:
        records = [(i.filename.split("/", 1)[1], z.read(i)) for i in z.infolist()]
    kept = [r for r in records if r[0] not in ("version", ".data/serialization_id")]
    (tmp_path / "ours.pt").write_bytes(_ours("ours", kept))
    for kwargs in ({}, {"weights_only": True}, {"mmap": True, "weights_only": True}):
        got = torch.load(tmp_path / "ours.pt", **kwargs)
        assert all(torch.equal(got[k], obj[k]) for k in obj)
    (tmp_path / "torch").mkdir()
    assert (tmp_path / "ours.pt").read_bytes() == _torch_file(tmp_path / "torch" / "ours.pt", kept)


class _WriteLog:
    """The writes a writer makes, with the bytes of large ones left out; adjacent small writes
    are joined, since the two writers split their header bytes differently."""

    LARGE = 2**20

    def __init__(self) -> None:
        self.items: list[bytes | int] = []

    def write(self, data) -> int:  # noqa: ANN001 - a buffer
        view = memoryview(data).cast("B")
        if view.nbytes >= self.LARGE:
            self.items.append(view.nbytes)
        elif self.items and isinstance(self.items[-1], bytes):
            self.items[-1] += bytes(view)
        else:
            self.items.append(bytes(view))
        return view.nbytes


def test_zip64_offsets_and_sizes_as_torch_writes_them() -> None:
    """Records at and past 4 GiB, one record of 4 GiB or more starting below 4 GiB and one
    past it: headers, descriptors, central directory and end records as torch's writer's."""
    huge = torch.empty(int(4.05 * GiB), dtype=torch.uint8)  # never written to: no memory used
    big = huge[: int(1.3 * GiB)]
    plan: list[tuple[str, torch.Tensor | bytes]] = [
        ("data/0", huge), ("data/1", b"abc"), ("data/2", big), ("data/3", b"PK\x07\x08zzzz"), ("data/4", huge), ("data/5", b""),
        ("data.pkl", b"p" * 100), (".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little"),
    ]
    theirs, ours = _WriteLog(), _WriteLog()
    w = torch._C.PyTorchFileWriter(theirs)
    for name, data in plan:
        if isinstance(data, torch.Tensor):
            w.write_record(name, data.untyped_storage() if data is huge else huge.untyped_storage()[: data.nbytes], data.nbytes)
        else:
            w.write_record(name, data, len(data))
    w.write_end_of_file()
    ours_writer = ZipLayoutWriter(ours.write, "archive")
    for name, data in plan:
        ours_writer.write_record(name, data.numpy() if isinstance(data, torch.Tensor) else data)
    ours_writer.write_end_of_file()
    assert [x if isinstance(x, int) else x.hex() for x in ours.items] == [x if isinstance(x, int) else x.hex() for x in theirs.items]
    tail = theirs.items[-1]
    assert isinstance(tail, bytes) and b"PK\x06\x06" in tail and b"\xff\xff\xff\xff" in tail  # the zip64 case was reached


def test_archive_name_is_torchs() -> None:
    assert archive_name("/a/b.c/model_optim_rng.pt") == "model_optim_rng"
    assert archive_name("x.tar.pt") == "x.tar"
    assert archive_name("a..b") == "a."
    assert archive_name("noext") == "noext"
    with pytest.raises(ValueError):
        archive_name("/a/.hidden")


TENSORS = {
    "bf16 matrix": lambda: torch.randn(33, 65).to(torch.bfloat16),
    "fp32 scalar": lambda: torch.tensor(3.5),
    "empty": lambda: torch.empty(0, 7),
    "int64": lambda: torch.arange(1000),
    "bool": lambda: torch.rand(17) > 0.5,
    "a row block of a larger tensor": lambda: saved_as_is(torch.randn(64, 48)[16:40]),
    "a column block (made contiguous)": lambda: saved_as_is(torch.randn(64, 48)[:, 8:24]),
    "starts like a data descriptor": lambda: torch.frombuffer(bytearray(b"PK\x07\x08" + bytes(60)), dtype=torch.uint8),
}


@pytest.mark.parametrize("case", TENSORS)
def test_save_tensor_writes_what_torch_save_writes(case: str) -> None:
    """A DCP chunk's payload: torch.save's bytes to a stream, byte for byte."""
    t = TENSORS[case]()
    theirs, ours = io.BytesIO(), io.BytesIO()
    torch.save(t, theirs)
    save_tensor(t, ours.write)
    assert ours.getvalue() == theirs.getvalue()
    assert torch.equal(torch.load(io.BytesIO(ours.getvalue()), weights_only=True), t)


@pytest.mark.parametrize("split", [
    "small",       # below SMALL: the runs join the pending header bytes
    "large",       # above: one write per run
    "empty-runs",  # empty runs among them
    "sig-split",   # the data starts like a data descriptor, split inside its first 8 bytes
])
def test_a_record_written_in_runs_is_the_record_of_their_concatenation(split: str) -> None:
    """A rank's piece whose rows were never joined (`RowRuns`) is written run after run: the
    archive is byte for byte the one its concatenation makes (CRC, padding, serialization id)."""
    g = torch.Generator().manual_seed(3)
    if split == "sig-split":
        data = b"PK\x07\x08" + bytes(torch.randint(0, 256, (300,), generator=g, dtype=torch.uint8).tolist())
        runs = [data[:3], data[3:6], data[6:]]
    else:
        n = 1 << (10 if split == "small" else 20)
        data = bytes(torch.randint(0, 256, (3 * n + 17,), generator=g, dtype=torch.uint8).numpy())
        runs = [data[:n], data[n:2 * n + 5], data[2 * n + 5:]]
        if split == "empty-runs":
            runs = [b"", *runs[:2], b"", runs[2]]
    whole = [("data/0", b"x" * 7), ("data/1", data), ("data/2", b"tail")]
    pieces = [("data/0", b"x" * 7), ("data/1", runs), ("data/2", b"tail")]
    assert _ours("archive", pieces) == _ours("archive", whole)


def test_row_runs_stand_in_for_the_joined_piece_in_a_rank_file(tmp_path: Path) -> None:
    """`Cut.join(..., runs=True)` leaves a dim-0 join unjoined; the rank file the torch zip
    writer makes from it, and its dtype, shape and size, are the joined tensor's."""
    from ckptscope.converters.shards import Cut, RowRuns
    from ckptscope.converters.writers.torchzip import TorchZipWriter

    gate, up = torch.randn(8, 6, dtype=torch.bfloat16), torch.randn(8, 6, dtype=torch.bfloat16)
    pieces = [gate[:4], gate[4:], up[:4], up[4:]]  # box b belongs to rank b % 2: rank 0 gets gate[:4], up[:4]
    joined = Cut(0).join(pieces, 2)
    runs = Cut(0).join(pieces, 2, runs=True)
    assert all(isinstance(r, RowRuns) for r in runs)
    for r, j in zip(runs, joined):
        assert (r.shape, r.dtype, r.nbytes, r.numel()) == (j.shape, j.dtype, j.nbytes, j.numel())
        assert torch.equal(r.join(), j)
        assert torch.equal(r.to(torch.float32), j.to(torch.float32))
    assert not any(isinstance(r, RowRuns) for r in Cut(1).join([gate[:, :3], gate[:, 3:]], 2, runs=True))  # columns: joined

    files = []
    for name, piece in (("joined", joined[1]), ("runs", runs[1])):
        for background in (False, True):
            path = tmp_path / f"{name}-{background}" / "model_optim_rng.pt"  # the archive is named after the file
            w = TorchZipWriter(path, background=background)
            w.finish({"w": w.add(piece)})
            files.append(path.read_bytes())
    assert len(set(files)) == 1
    assert torch.equal(torch.load(tmp_path / "runs-True" / "model_optim_rng.pt")["w"], joined[1])
