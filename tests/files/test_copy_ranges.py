"""``copy_ranges`` and ``shares_blocks`` on real filesystems: ext4 (tmp_path),
where nothing can be shared, and a loop-mounted XFS with reflinks.

Where data landed is read back with SEEK_DATA/SEEK_HOLE (``lseek_extents``) and
whether blocks are shared with FIEMAP (``filefrag -v``), never from the report.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from synfast.files.sparse import CLONE_MODES, copy_ranges, shares_blocks
from tests.conftest import fiemap, lseek_extents, write_layout

K = 1024
SIZE = 1 << 20


def pack(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("=qq", off, length) for off, length in pairs)


def run(src: Path, dst: Path, ranges: list[tuple[int, int]], size: int = SIZE,
        **options) -> dict:
    """Copy ``ranges`` of ``src`` into the new file ``dst`` of ``size`` bytes."""
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(dfd, size)
            return copy_ranges(sfd, dfd, pack(*ranges), **options)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def read_at(path: Path, off: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(length)


# Apart from each other, block-aligned, the first at 0 and the last at the end.
RANGES = [(0, 4 * K), (12 * K, 8 * K), (64 * K, 192 * K), (SIZE - 4 * K, 4 * K)]


@pytest.mark.parametrize("clone", CLONE_MODES)
def test_ranges_land_at_their_offsets_and_the_rest_stays_a_hole(tmp_path: Path,
                                                                clone: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(SIZE))
    r = run(src, dst, RANGES, clone=clone)
    assert lseek_extents(dst) == RANGES
    for off, length in RANGES:
        assert read_at(dst, off, length) == read_at(src, off, length)
    assert os.path.getsize(dst) == SIZE
    # ext4 shares nothing: every byte of the ranges was written, none cloned
    assert r["bytes_written"] == sum(length for _, length in RANGES)
    assert r["bytes_cloned"] == 0 and r["method"] != "reflink"
    assert r["ranges"] == len(RANGES) and not r["short_read"]
    assert (r["clone_refused"] != 0) == (clone != "never")


@pytest.mark.parametrize("clone", CLONE_MODES)
def test_a_hole_inside_a_range_is_never_read(tmp_path: Path, clone: str) -> None:
    # data at [0, 64K) and [192K, 256K); a hole between and after
    src, dst = tmp_path / "src", tmp_path / "dst"
    a, b = os.urandom(64 * K), os.urandom(64 * K)
    write_layout(src, SIZE, [(0, a), (192 * K, b)])
    ranges = [(16 * K, 224 * K),          # from inside the first extent to inside the second
              (320 * K, 64 * K)]          # entirely in the source's hole
    r = run(src, dst, ranges, clone=clone)
    # only the data inside the ranges came across; the hole stayed a hole
    assert lseek_extents(dst) == [(16 * K, 48 * K), (192 * K, 48 * K)]
    assert read_at(dst, 16 * K, 48 * K) == a[16 * K:]
    assert read_at(dst, 192 * K, 48 * K) == b[:48 * K]
    assert read_at(dst, 64 * K, 128 * K) == bytes(128 * K)
    assert r["bytes_written"] == r["data_bytes"] == 96 * K


@pytest.mark.parametrize("ranges", [
    [(8 * K, 4 * K), (0, 4 * K)],             # unsorted
    [(0, 8 * K), (4 * K, 8 * K)],             # overlapping
    [(0, 8 * K), (4 * K, 1 * K)],             # the second inside the first
    [(-4 * K, 8 * K)],                        # negative offset
    [(0, 0)],                                 # empty
    [(4 * K, -4 * K)],                        # negative length
], ids=["unsorted", "overlapping", "inside", "negative-offset", "empty", "negative-length"])
def test_bad_ranges_are_refused_before_anything_is_written(tmp_path: Path, ranges) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(64 * K))
    with pytest.raises(ValueError, match="sorted, positive and not overlapping"):
        run(src, dst, ranges, size=64 * K)
    assert lseek_extents(dst) == []


def test_unknown_clone_mode_is_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(64 * K))
    with pytest.raises(ValueError):
        run(src, dst, [(0, 4 * K)], size=64 * K, clone="sometimes")
    assert lseek_extents(dst) == []


def test_no_ranges_copy_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(64 * K))
    r = run(src, dst, [], size=64 * K)
    assert lseek_extents(dst) == [] and r["bytes_written"] == r["bytes_cloned"] == 0


# ------------------------------------------------------------------ XFS with reflinks

def xfs_source(path: Path) -> None:
    """4 MiB of data with a hole in the middle, fsynced (so that its blocks exist)."""
    write_layout(path, 8 << 20, [(0, os.urandom(2 << 20)), (4 << 20, os.urandom(2 << 20))])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


XFS_RANGES = [(4 * K, 60 * K), (1 << 20, 512 * K), (3 << 20, 2 << 20), (7 << 20, 64 * K)]
# what is data in the source within those ranges
XFS_DATA = [(4 * K, 60 * K), (1 << 20, 512 * K), (4 << 20, 1 << 20)]


@pytest.mark.parametrize("clone", ["ranges"])
def test_clone_shares_the_ranges_on_xfs(on_xfs: Path, clone: str) -> None:
    src, dst = on_xfs / "src", on_xfs / "dst"
    xfs_source(src)
    r = run(src, dst, XFS_RANGES, size=8 << 20, clone=clone)
    assert r["method"] == "reflink" and r["bytes_written"] == 0
    assert r["bytes_cloned"] == sum(length for _, length in XFS_RANGES)
    # every data extent of the copy is shared, and only the source's data in
    # the ranges is there
    extents = fiemap(dst)
    assert extents and all(shared for _, _, shared in extents)
    assert lseek_extents(dst) == XFS_DATA
    for off, length in XFS_DATA:
        assert read_at(dst, off, length) == read_at(src, off, length)
    # shared, not linked: writing the copy leaves the source alone
    before = read_at(src, 1 << 20, 4 * K)
    with open(dst, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"changed")
    assert read_at(src, 1 << 20, 4 * K) == before


@pytest.mark.parametrize("copy_file_range", [False])
def test_never_clone_writes_its_own_blocks_on_xfs(on_xfs: Path, copy_file_range: bool) -> None:
    src, dst = on_xfs / "src", on_xfs / "dst"
    xfs_source(src)
    r = run(src, dst, XFS_RANGES, size=8 << 20, clone="never",
            copy_file_range=copy_file_range)
    assert r["method"] != "reflink" and r["bytes_cloned"] == 0
    assert r["bytes_written"] == sum(length for _, length in XFS_DATA)
    assert lseek_extents(dst) == XFS_DATA
    for off, length in XFS_DATA:
        assert read_at(dst, off, length) == read_at(src, off, length)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)                        # FIEMAP reports delayed allocation as no flags
    finally:
        os.close(fd)
    assert not any(shared for _, _, shared in fiemap(dst))


def test_shares_blocks_only_on_one_reflink_filesystem(on_xfs: Path, tmp_path: Path) -> None:
    on_x, on_t = on_xfs / "src", tmp_path / "src"
    xfs_source(on_x)
    write_layout(on_t, 1 << 20, [(0, os.urandom(64 * K))])
    here = {d: sorted(os.listdir(d)) for d in (on_xfs, tmp_path)}
    for path, where, expect in [(on_x, on_xfs, True),        # one XFS with reflinks
                                (on_t, tmp_path, False),     # ext4: no reflinks
                                (on_x, tmp_path, False),     # across filesystems
                                (on_t, on_xfs, False)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            assert shares_blocks(fd, where) is expect, (path, where)
        finally:
            os.close(fd)
    # the probe's file had no name and is gone
    assert {d: sorted(os.listdir(d)) for d in (on_xfs, tmp_path)} == here
