"""The native checksum (synfast.backup._hash) against hashlib and against a plain
Python statement of the canonical form (blake2b-256-sparse-v2), so manifests
written by earlier versions keep verifying."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.backup import _hash
from synfast.backup import checksum as cks
from tests.conftest import write_layout

BLOCK = cks.BLOCK
U64 = struct.Struct("<Q")


def reference_segment(data: bytes, start: int, end: int) -> bytes:
    """The canonical stream of data[start:end], hashed with hashlib: blocks
    aligned to BLOCK, zero blocks folded into runs."""
    h = hashlib.blake2b(digest_size=32)
    zero_run = 0
    for b0 in range(start, end, BLOCK):
        block = data[b0:min(end, b0 + BLOCK)]
        if block.count(0) == len(block):
            zero_run += len(block)
            continue
        if zero_run:
            h.update(b"Z" + U64.pack(zero_run))
            zero_run = 0
        h.update(b"D" + block)
    if zero_run:
        h.update(b"Z" + U64.pack(zero_run))
    h.update(b"E" + U64.pack(end - start))
    return h.digest()


def reference_file(path: Path) -> str:
    data = path.read_bytes()
    h = hashlib.blake2b(digest_size=32)
    for s0 in range(0, max(1, len(data)), cks.SEGMENT):
        h.update(b"S" + reference_segment(data, s0, min(len(data), s0 + cks.SEGMENT)))
    h.update(b"E" + U64.pack(len(data)))
    return h.hexdigest()


@given(st.binary(max_size=1200) | st.integers(0, 5000).map(os.urandom))
def test_own_blake2b_equals_hashlib(data: bytes) -> None:
    assert _hash.blake2b_256(data) == hashlib.blake2b(data, digest_size=32).digest()


# A file as pieces of data (random or zero) at block-ish offsets, cut into
# small segments so that one call runs many segments through the four lanes.
pieces = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 3 * BLOCK), st.booleans()),
                  max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=pieces, tail=st.integers(0, 3 * BLOCK), seg_blocks=st.sampled_from([1, 2, 3, 5]),
       mode=st.sampled_from([_hash.FOUR_LANES, _hash.FOUR_LANES_PORTABLE, _hash.ONE_LANE]))
def test_segment_digests_equal_the_definition(tmp_path: Path, pieces, tail: int,
                                              seg_blocks: int, mode: int) -> None:
    path = tmp_path / "f"
    if path.exists():
        path.unlink()
    chunks = [(slot * BLOCK // 2 + 7 * slot, os.urandom(n) if rnd else bytes(n))
              for slot, n, rnd in pieces]
    size = max([off + len(c) for off, c in chunks] + [0]) + tail
    write_layout(path, size, chunks)
    data = path.read_bytes()
    seg = seg_blocks * BLOCK
    fd = os.open(path, os.O_RDONLY)
    try:
        from synfast.files import _sparse

        extents = _sparse.extents(fd)
        segments = []
        for s0 in range(0, max(1, size), seg):
            s1 = min(size, s0 + seg)
            ranges = []
            for off, n in extents:
                first = max(s0, off // BLOCK * BLOCK)
                end = min(s1, -(-(off + n) // BLOCK) * BLOCK)
                if first < end:
                    if ranges and first <= ranges[-1][1]:
                        ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
                    else:
                        ranges.append((first, end))
            segments.append((s0, s1, ranges))
        got = _hash.segment_digests(fd, segments, mode)
    finally:
        os.close(fd)
    assert got == [reference_segment(data, s0, s1) for s0, s1, _ in segments]


@pytest.mark.parametrize("mode", [_hash.FOUR_LANES, _hash.FOUR_LANES_PORTABLE])
@pytest.mark.parametrize("nseg", [2, 3, 6, 7])
def test_two_or_three_busy_lanes_use_the_four_lane_kernel(tmp_path: Path, nseg: int,
                                                          mode: int) -> None:
    # Segments of different lengths, so that lanes run out at different times
    # and the last round has two or three lanes busy and the rest idle.
    sizes = [(2 + i % 3) * BLOCK + 1000 * i for i in range(nseg)]
    data = os.urandom(sum(sizes))
    path = tmp_path / "f"
    path.write_bytes(data)
    segments, start = [], 0
    for n in sizes:
        segments.append((start, start + n, [(start, start + n)]))
        start += n
    fd = os.open(path, os.O_RDONLY)
    try:
        got = _hash.segment_digests(fd, segments, mode)
    finally:
        os.close(fd)
    assert got == [reference_segment(data, s0, s1) for s0, s1, _ in segments]


def test_checksum_file_keeps_the_v2_format(tmp_path: Path) -> None:
    # three 64 MiB segments: data, zero blocks written as data, a hole, a short tail
    path = tmp_path / "f"
    size = (128 << 20) + 12345
    write_layout(path, size, [(5, os.urandom(300_000)), (70 << 20, bytes(3 * BLOCK)),
                              ((70 << 20) + 3 * BLOCK, os.urandom(BLOCK + 1)),
                              (size - 100, os.urandom(100))])
    assert cks.checksum_file(path) == reference_file(path)
    empty = tmp_path / "empty"
    empty.touch()
    assert cks.checksum_file(empty) == reference_file(empty)


def test_a_file_that_shrinks_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * BLOCK))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, BLOCK)
        with pytest.raises(OSError, match="shrank"):
            _hash.segment_digests(fd, [(0, 3 * BLOCK, [(0, 3 * BLOCK)])])
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", [0, 2])
def test_a_streamed_checksum_equals_the_files(tmp_path: Path, threads: int) -> None:
    """StreamChecksum, fed a file's data extents in pieces of any size (on two
    hashing threads by segment, or inline), agrees with checksum_fd of the file:
    data across segment boundaries, zero blocks inside data, a partial last
    block, a file ending in a hole."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from synfast.files.sparse import extents

    rng = random.Random(7)
    seg = cks.SEGMENT
    path = tmp_path / "f"
    size = 3 * seg + 12345
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in [(seg - 70000, os.urandom(150000)), (seg + 4096, bytes(200000)),
                          (2 * seg + 5, os.urandom(3 << 20)), (size - 12000, os.urandom(11000)),
                          (100, b"x")]:
            f.seek(off)
            f.write(data)
    pools = [ThreadPoolExecutor(1) for _ in range(threads)]
    try:
        hasher = cks.StreamChecksum(
            (lambda i, fn, *a: pools[i % threads].submit(fn, *a)) if threads else None)
        fd = os.open(path, os.O_RDONLY)
        futures = []
        try:
            for off, length in extents(fd):
                while length:
                    n = min(length, rng.choice([1000, 1 << 16, 1 << 20, 3 << 20]))
                    futures += hasher.data(off, os.pread(fd, n, off))
                    off, length = off + n, length - n
        finally:
            os.close(fd)
        for f in futures:
            f.result()
        assert hasher.finish(size) == cks.checksum_file(path)
        (tmp_path / "empty").touch()
        assert cks.StreamChecksum().finish(0) == cks.checksum_file(tmp_path / "empty")
    finally:
        for p in pools:
            p.shutdown()
