"""Every checksum algorithm against an independent, plain Python statement of the
canonical form (the library's hash fed the canonical stream built here), the
native XXH3 segments included, so that manifests written by earlier versions
keep verifying and damage is found with each."""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.backup import _hash
from synfast.backup import checksum as cks
from tests.conftest import write_layout

BLOCK = cks.BLOCK
U64 = struct.Struct("<Q")


HASHES = {
    cks.XXH3: lambda: _hash.XXH3(),
    cks.SHA256: hashlib.sha256,
    cks.BLAKE2B_V2: lambda: hashlib.blake2b(digest_size=32),
}


def reference_segment(data: bytes, start: int, end: int, algorithm: str = cks.XXH3) -> bytes:
    """The canonical stream of data[start:end], hashed with the algorithm's
    library: blocks aligned to BLOCK, zero blocks folded into runs."""
    h = HASHES[algorithm]()
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


def reference_file(path: Path, algorithm: str = cks.XXH3) -> str:
    data = path.read_bytes()
    h = HASHES[algorithm]()
    for s0 in range(0, max(1, len(data)), cks.SEGMENT):
        h.update(b"S" + reference_segment(data, s0, min(len(data), s0 + cks.SEGMENT),
                                          algorithm))
    h.update(b"E" + U64.pack(len(data)))
    return h.hexdigest()


def test_the_xxh3_is_the_librarys() -> None:
    """Known XXH3-128 values (xxHash's own test vectors, canonical big-endian)."""
    h = _hash.XXH3()
    assert h.hexdigest() == "99aa06d3014798d86001c324468d497f"   # the empty input
    h.update(b"abc")
    assert h.hexdigest() == "06b05ab6733a618578af5f94892f3950"
    big = os.urandom(3 << 20)
    one, parts = _hash.XXH3(), _hash.XXH3()
    one.update(big)
    for i in range(0, len(big), 1000):
        parts.update(memoryview(big)[i:i + 1000])
    assert one.digest() == parts.digest()


# A file as pieces of data (random or zero) at block-ish offsets, cut into
# small segments so that one call runs many segments.
pieces = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 3 * BLOCK), st.booleans()),
                  max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=pieces, tail=st.integers(0, 3 * BLOCK), seg_blocks=st.sampled_from([1, 2, 3, 5]))
def test_segment_digests_equal_the_definition(tmp_path: Path, pieces, tail: int,
                                              seg_blocks: int) -> None:
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
        got = _hash.segment_digests(fd, segments)
    finally:
        os.close(fd)
    assert got == [reference_segment(data, s0, s1) for s0, s1, _ in segments]


@pytest.mark.parametrize("algorithm", list(cks.ALGORITHMS))
def test_checksum_file_equals_the_definition(tmp_path: Path, algorithm: str) -> None:
    """Sparse, dense, punched and empty files; segment boundaries and a short tail;
    each algorithm (blake2b-256-sparse-v2 is the format earlier versions wrote)."""
    # three 64 MiB segments: data, zero blocks written as data, a hole, a short tail
    path = tmp_path / "f"
    size = (128 << 20) + 12345
    write_layout(path, size, [(5, os.urandom(300_000)), (70 << 20, bytes(3 * BLOCK)),
                              ((70 << 20) + 3 * BLOCK, os.urandom(BLOCK + 1)),
                              (size - 100, os.urandom(100)),
                              ((64 << 20) - 1000, os.urandom(2000))])
    want = reference_file(path, algorithm)
    assert cks.checksum_file(path, algorithm) == want
    # the same content dense, and with its zero blocks punched out: the same checksum
    dense = tmp_path / "dense"
    dense.write_bytes(path.read_bytes())
    assert cks.checksum_file(dense, algorithm) == want
    punched = tmp_path / "punched"
    subprocess.run(["cp", "--sparse=always", str(dense), str(punched)], check=True)
    assert punched.stat().st_blocks < dense.stat().st_blocks
    assert cks.checksum_file(punched, algorithm) == want
    empty = tmp_path / "empty"
    empty.touch()
    assert cks.checksum_file(empty, algorithm) == reference_file(empty, algorithm)


@pytest.mark.parametrize("algorithm", list(cks.ALGORITHMS))
@pytest.mark.parametrize("damage", ["byte", "hole", "truncated"])
def test_damage_changes_every_algorithms_checksum(tmp_path: Path, algorithm: str,
                                                  damage: str) -> None:
    path = tmp_path / "f"
    write_layout(path, 3 << 20, [(1 << 20, os.urandom(200_000))])
    before = cks.checksum_file(path, algorithm)
    with open(path, "r+b") as f:
        if damage == "byte":
            f.seek((1 << 20) + 777)
            f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
        elif damage == "hole":
            f.seek(2 << 20)                  # data where a hole was
            f.write(b"\x01")
        else:
            f.truncate((3 << 20) - 4096)
    assert cks.checksum_file(path, algorithm) != before


def test_long_ranges_are_hashed_through_a_mapping_as_defined(tmp_path: Path) -> None:
    """Ranges of 1 MiB and more are hashed from a mapping of the file, shorter
    ones read: both, side by side in a segment, against the definition."""
    path = tmp_path / "f"
    size = (2 * cks.SEGMENT) + 3 * BLOCK + 4321          # EOF inside a page
    zeros_inside = os.urandom(2 << 20) + bytes(3 * BLOCK) + os.urandom(BLOCK + 17)
    write_layout(path, size, [
        (BLOCK, zeros_inside),                             # mapped, zero blocks inside
        (8 << 20, os.urandom(100_000)),                    # read: shorter than 1 MiB
        (cks.SEGMENT - (1 << 20), os.urandom(3 << 20)),    # mapped, split by the segment end
        (size - (5 << 20), os.urandom(5 << 20)),           # mapped up to the unaligned end
    ])
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        segments = cks.segments_of(fd, size)
        assert any(e - s >= 1 << 20 for _, _, r in segments for s, e in r)
        assert any(e - s < 1 << 20 for _, _, r in segments for s, e in r)
        got = _hash.segment_digests(fd, segments)
    finally:
        os.close(fd)
    assert got == [reference_segment(data, s0, s1) for s0, s1, _ in segments]
    assert cks.checksum_file(path) == reference_file(path)


@pytest.mark.parametrize("length", [3 * BLOCK, 4 << 20])
def test_a_file_that_shrinks_is_an_error(tmp_path: Path, length: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(length))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, BLOCK)
        with pytest.raises(OSError, match="shrank"):
            _hash.segment_digests(fd, [(0, length, [(0, length)])])
    finally:
        os.close(fd)


def test_a_file_cut_short_while_mapped_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A cached range is hashed through a mapping; a file truncated while that
    happens raises SIGBUS on the pages past its new end, which is caught and
    becomes the same error as a short read.  Another thread cuts and refills
    the file while it is hashed, in a child with faulthandler on: a SIGBUS let
    through ends the child and fails the test.  Every run of a correct build
    passes; a build without the guard fails as soon as a cut lands inside a
    hash, which in 300 hashes it does."""
    path = tmp_path / "f"
    child = f"""
import faulthandler, os, threading
from synfast.backup import _hash
faulthandler.enable()
path, n = {str(path)!r}, 8 << 20
data = os.urandom(n)
with open(path, "wb") as f:
    f.write(data)
done = threading.Event()
def cut():
    wfd = os.open(path, os.O_WRONLY)
    while not done.is_set():
        os.truncate(path, {BLOCK})
        os.pwrite(wfd, data, 0)
    os.close(wfd)
t = threading.Thread(target=cut)
t.start()
fd = os.open(path, os.O_RDONLY)
errors = 0
try:
    for _ in range(300):
        try:
            _hash.segment_digests(fd, [(0, n, [(0, n)])])
        except OSError as err:
            assert "shrank" in str(err), err
            errors += 1
finally:
    done.set()
    t.join()
print("ok", errors)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_a_sigbus_elsewhere_still_reaches_faulthandler(tmp_path: Path) -> None:
    """The guard catches SIGBUS only inside a hash of a mapping; anywhere else
    the handler that was there before runs (here faulthandler's, which names
    the fault and ends the process)."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(4 << 20))
    child = f"""
import faulthandler, mmap, os
from synfast.backup import _hash
faulthandler.enable()
fd = os.open({str(path)!r}, os.O_RDONLY)
_hash.segment_digests(fd, [(0, 4 << 20, [(0, 4 << 20)])])
m = mmap.mmap(fd, 4 << 20, prot=mmap.PROT_READ)
os.truncate({str(path)!r}, 0)
print(m[3 << 20])
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGBUS
    assert "Bus error" in proc.stderr
    # without faulthandler, a SIGBUS sent by kill() still ends the process
    path.write_bytes(os.urandom(4 << 20))
    child = f"""
import os, signal
from synfast.backup import _hash
fd = os.open({str(path)!r}, os.O_RDONLY)
_hash.segment_digests(fd, [(0, 4 << 20, [(0, 4 << 20)])])
os.kill(os.getpid(), signal.SIGBUS)
print("survived")
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGBUS and "survived" not in proc.stdout


@pytest.mark.parametrize("algorithm", list(cks.ALGORITHMS))
@pytest.mark.parametrize("threads", [0, 2])
def test_a_streamed_checksum_equals_the_files(tmp_path: Path, threads: int,
                                              algorithm: str) -> None:
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
            (lambda i, fn, *a: pools[i % threads].submit(fn, *a)) if threads else None,
            algorithm)
        fd = os.open(path, os.O_RDONLY)
        futures = []
        try:
            batch: list = []
            for off, length in extents(fd):
                while length:
                    n = min(length, rng.choice([1000, 1 << 16, 1 << 20, 3 << 20]))
                    piece = os.pread(fd, n, off)
                    if rng.random() < 0.5:      # one piece, or a batch of several
                        futures += hasher.data_many(batch) + hasher.data(off, piece)
                        batch = []
                    else:
                        batch.append((off, memoryview(piece)))
                    off, length = off + n, length - n
            futures += hasher.data_many(batch)
        finally:
            os.close(fd)
        for f in futures:
            f.result()
        assert hasher.finish(size) == cks.checksum_file(path, algorithm)
        (tmp_path / "empty").touch()
        assert cks.StreamChecksum(algorithm=algorithm).finish(0) == cks.checksum_file(
            tmp_path / "empty", algorithm)
    finally:
        for p in pools:
            p.shutdown()


def test_a_backup_written_before_xxh3_still_verifies_and_its_damage_is_found(
        tmp_path: Path) -> None:
    """tests/fixtures/backup-v2.tar.gz: a backup made by synfast before the
    checksum moved to XXH3 (blake2b-256-sparse-v2), as GNU tar packed it."""
    import tarfile

    from tests.conftest import run_cli

    fixture = Path(__file__).parent.parent / "fixtures" / "backup-v2.tar.gz"
    bk = tmp_path / "bk"
    with tarfile.open(fixture) as tar:
        tar.extractall(bk, filter="fully_trusted")
    assert '"checksum": "blake2b-256-sparse-v2"' in (bk / ".synfast" / "manifest.json").read_text()
    proc = run_cli("verify", bk, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"checksums_checked": 3' in proc.stdout
    with open(bk / "sparse.bin", "r+b") as f:
        f.seek((1 << 20) + 10)
        f.write(b"\x00\x00\x00")
    proc = run_cli("verify", bk)
    assert proc.returncode == 1 and "checksum mismatch" in proc.stdout
