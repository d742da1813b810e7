"""Sparse-safe file copies through every method, on real filesystems."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.errors import CopyFailed, DestinationExists, SourceChanged, UsageError
from synfast.files import _sparse
from synfast.files import sparse as files
from tests.conftest import allocated, files_equal, leftovers, write_layout

BLOCK = 4096
# Extents are allocated in filesystem blocks; a copy may round a partial block.
SLACK = 2 * BLOCK

layouts = st.tuples(
    st.lists(st.tuples(st.integers(0, 48), st.integers(1, 12), st.integers(0, 4095)),
             max_size=10),
    st.integers(0, 48),
    st.booleans(),
)


def build(path: Path, layout) -> None:
    """Random data runs (odd lengths included) between holes, optional trailing
    hole; with ``big`` the whole layout is shifted past 4 GiB."""
    runs, tail, big = layout
    base = (4 << 30) + 123 * BLOCK if big else 0
    chunks, pos = [], base
    for gap, blocks, odd in runs:
        pos += gap * BLOCK
        data = os.urandom(blocks * BLOCK - odd)
        chunks.append((pos, data))
        pos += len(data)
    write_layout(path, pos + tail * BLOCK, chunks)


def check_copy(src: Path, dst: Path, result: files.FileCopyResult) -> None:
    assert files_equal(src, dst)
    assert os.path.getsize(dst) == os.path.getsize(src) == result.size
    assert allocated(dst) <= allocated(src) + SLACK
    assert result.data_bytes + result.hole_bytes == result.size


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts, method=st.sampled_from(["copy_file_range", "splice", "read-write"]))
def test_generated_sparse_files_copy_exactly(tmp_path: Path, layout, method: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for p in (src, dst):
        if p.exists():
            p.unlink()
    build(src, layout)
    if method == "read-write":
        # the last resort, below the Python API: no copy_file_range, no splice
        with open(src, "rb") as s, open(dst, "xb") as d:
            raw = _sparse.copy_fd(s.fileno(), d.fileno(), reflink=_sparse.NEVER,
                                  allow_copy_file_range=False, allow_splice=False)
        result = files.FileCopyResult(source=src, destination=dst, **{
            k: raw[k] for k in ("size", "method", "extents", "data_bytes", "hole_bytes",
                                "bytes_written", "bytes_cloned", "zero_bytes_skipped")})
    else:
        result = files.copy_file(src, dst, reflink="never" if method == "splice" else "auto",
                                 copy_file_range="never" if method == "splice" else "always")
    check_copy(src, dst, result)
    if method == "splice" and result.size <= 1 << 20:
        method = "read-write"   # a file that fits the 1 MiB buffer needs no pipe
    if result.data_bytes:
        assert result.method == method
        assert result.bytes_written == result.data_bytes
    else:
        assert result.method == "none"


def test_destination_refusing_splice_gets_the_pipe_drained(tmp_path: Path) -> None:
    # splice(2) into a file opened O_APPEND fails with EINVAL after the source's
    # bytes are already in the pipe: they must reach the destination anyway.
    src, dst = tmp_path / "s", tmp_path / "d"
    src.write_bytes(os.urandom(3 << 20))
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            raw = _sparse.copy_fd(s.fileno(), fd, reflink=_sparse.NEVER,
                                  allow_copy_file_range=False)
        finally:
            os.close(fd)
    assert raw["method"] == "read-write" and raw["bytes_written"] == 3 << 20
    assert files_equal(src, dst)


def test_empty_and_all_hole_files(tmp_path: Path) -> None:
    empty, hole = tmp_path / "empty", tmp_path / "hole"
    empty.touch()
    write_layout(hole, 3 << 30, [])
    for src in (empty, hole):
        r = files.copy_file(src, tmp_path / (src.name + ".copy"))
        check_copy(src, tmp_path / (src.name + ".copy"), r)
        assert r.bytes_written == 0 and r.extents == 0


def test_copy_over_4gib_apparent_keeps_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "big", tmp_path / "big.copy"
    chunks = [(0, b"head" * 1024), ((4 << 30) - 2, b"straddle"), (6 << 30, os.urandom(1 << 20))]
    write_layout(src, (8 << 30) + 17, chunks)
    r = files.copy_file(src, dst)
    check_copy(src, dst, r)
    assert allocated(dst) < 8 << 20


def test_copy_file_range_never_moves_data_by_splice(tmp_path: Path) -> None:
    src, dst = tmp_path / "s", tmp_path / "d"
    write_layout(src, 1 << 24, [(1 << 20, os.urandom(300_000)), (9 << 20, os.urandom(5000))])
    r = files.copy_file(src, dst, copy_file_range="never")
    check_copy(src, dst, r)
    assert r.method == "splice"


def test_copy_file_range_refused_across_filesystems_falls_back(tmpfs: Path, tmp_path: Path) -> None:
    # tmpfs -> ext4: the kernel refuses copy_file_range across filesystem types
    # (EXDEV); the copy must still be exact, through splice.
    src, dst = tmpfs / "s", tmp_path / "d"
    write_layout(src, 1 << 24, [(BLOCK, os.urandom(70_000)), (5 << 20, os.urandom(BLOCK))])
    r = files.copy_file(src, dst, copy_file_range="always")
    check_copy(src, dst, r)
    assert r.method == "splice"


def test_sparse_always_punches_zero_runs(tmp_path: Path) -> None:
    src, dst = tmp_path / "dense", tmp_path / "punched"
    data = bytearray(os.urandom(8 << 20))
    for start in (1 << 20, 5 << 20):
        data[start:start + (2 << 20)] = bytes(2 << 20)
    src.write_bytes(bytes(data))
    assert allocated(src) >= len(data)
    r = files.copy_file(src, dst, sparse="always")
    assert files_equal(src, dst)
    assert r.zero_bytes_skipped == 4 << 20
    assert allocated(dst) <= len(data) - (4 << 20) + SLACK


def test_sparse_never_writes_every_byte(tmp_path: Path) -> None:
    src, dst = tmp_path / "sparse", tmp_path / "dense"
    write_layout(src, 16 << 20, [(3 << 20, os.urandom(BLOCK))])
    r = files.copy_file(src, dst, sparse="never")
    assert files_equal(src, dst)
    assert r.bytes_written == 16 << 20
    assert allocated(dst) >= 16 << 20


def test_reflink_on_xfs(xfs_reflink: Path) -> None:
    src, dst = xfs_reflink / "src", xfs_reflink / "dst"
    write_layout(src, 64 << 20, [(0, os.urandom(1 << 20)), (40 << 20, os.urandom(3 * BLOCK))])
    r = files.copy_file(src, dst, reflink="always")
    assert r.method == "reflink"
    assert r.bytes_cloned == r.data_bytes
    check_copy(src, dst, r)
    # The blocks are shared: writing to the copy must leave the source alone.
    before = src.read_bytes()[: 1 << 20]
    with open(dst, "r+b") as f:
        f.write(b"changed")
    assert src.read_bytes()[: 1 << 20] == before
    dst.unlink()
    src.unlink()


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts)
def test_generated_sparse_files_reflink_auto_on_xfs(xfs_reflink: Path, layout) -> None:
    src, dst = xfs_reflink / "gen-src", xfs_reflink / "gen-dst"
    for p in (src, dst):
        if p.exists():
            p.unlink()
    runs, tail, _ = layout
    build(src, (runs, tail, False))
    r = files.copy_file(src, dst)
    check_copy(src, dst, r)
    assert r.method == "reflink"


def test_reflink_always_where_unsupported_is_a_clear_error(tmpfs: Path) -> None:
    src = tmpfs / "s"
    write_layout(src, 1 << 20, [(0, b"x" * BLOCK)])
    with pytest.raises(CopyFailed, match="cannot reflink"):
        files.copy_file(src, tmpfs / "d", reflink="always")
    assert not (tmpfs / "d").exists() and leftovers(tmpfs) == []


def test_copy_file_range_only_where_asked_or_server_side(tmp_path: Path, tmpfs: Path) -> None:
    src = tmp_path / "s"
    write_layout(src, 1 << 22, [(0, os.urandom(100_000))])
    # local filesystems: splice through a 1 MiB pipe, measured faster than
    # copy_file_range's own splice through a 64 KiB one
    for where in (tmp_path, tmpfs):
        r = files.copy_file(src, where / "a")
        check_copy(src, where / "a", r)
        assert r.method == "splice"
    r = files.copy_file(src, tmp_path / "b", copy_file_range="always")
    check_copy(src, tmp_path / "b", r)
    assert r.method == "copy_file_range"
    # copy_file_range may share blocks on XFS/btrfs, which --reflink=never forbids
    assert not files.use_copy_file_range("auto", "never", 0)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        # the filesystem type as stat(1) reads it, independently
        magic = subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], check=True,
                               capture_output=True, text=True).stdout.strip()
        assert _sparse.fs_magic(fd) == int(magic, 16)
        assert not files.use_copy_file_range("auto", "auto", fd)
    finally:
        os.close(fd)


def test_reflink_always_with_sparse_never_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.write_bytes(b"x")
    with pytest.raises(UsageError):
        files.copy_file(src, tmp_path / "d", reflink="always", sparse="never")


def test_source_that_changed_since_planning_is_reported(tmp_path: Path) -> None:
    src, dst = tmp_path / "grows", tmp_path / "copy"
    write_layout(src, 1 << 20, [(0, b"a" * BLOCK)])
    planned = os.stat(src)
    with open(src, "ab") as f:  # a writer appends after we looked
        f.write(b"more")
    with pytest.raises(SourceChanged, match="changed while being copied"):
        files.copy_file_new(src, dst, planned)
    assert not dst.exists()


def test_existing_destination_is_kept_unless_forced(tmp_path: Path) -> None:
    src, dst = tmp_path / "s", tmp_path / "d"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(DestinationExists):
        files.copy_file(src, dst)
    assert dst.read_bytes() == b"old"
    files.copy_file(src, dst, force=True)
    assert dst.read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def test_metadata_is_preserved(tmp_path: Path) -> None:
    src, dst = tmp_path / "s", tmp_path / "d"
    src.write_bytes(b"data")
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_000_000_123, 2_000_000_456))
    if os.geteuid() == 0:
        os.chown(src, 1234, 5678)
    files.copy_file(src, dst)
    s, d = os.stat(src), os.stat(dst)
    assert (d.st_mode, d.st_mtime_ns) == (s.st_mode, s.st_mtime_ns)
    if os.geteuid() == 0:
        assert (d.st_uid, d.st_gid) == (1234, 5678)
