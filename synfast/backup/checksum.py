"""The canonical checksum of a file's content, whatever its holes.

A checksum is a hash over a canonical form of a file's content that does not
depend on where its holes are, so a sparse source, a dense copy and a copy
with zero blocks punched out all agree, and a 16 GiB sparse file is hashed by
reading only its data:

- the file is cut into aligned segments of :data:`SEGMENT` bytes (64 MiB; the
  last may be shorter), and each segment into aligned blocks of :data:`BLOCK`
  bytes (64 KiB; the last may be shorter);
- a block that lies wholly in a hole, or whose bytes are all zero, is a *zero
  block*; it is never fed to the hash by content;
- a segment's digest is the hash of: for every maximal run of zero blocks
  ``b"Z" + <run length in bytes, u64 LE>``, for every other block
  ``b"D" + <its bytes>``, in order, then ``b"E" + <segment length, u64 LE>``;
- the file's checksum is the hash of ``b"S" + <segment digest>`` for every
  segment in order, then ``b"E" + <file size, u64 LE>``.

The manifest names the hash (:data:`ALGORITHMS`): ``xxh3-128-sparse-v3``, the
default (XXH3-128 from the system's libxxhash, about 20 GB/s per core here:
it finds damage, not tampering), ``sha256-sparse-v3`` (SHA-256 from OpenSSL
through hashlib, for manifests that are signed or published) and
``blake2b-256-sparse-v2`` (what earlier versions wrote; still verified).

Only blocks that touch a data extent (SEEK_DATA/SEEK_HOLE) are read.  Segments
are hashed on every core, natively for XXH3 (:mod:`synfast.backup._hash`, the
only importer of which is this module) and through hashlib (which releases the
GIL) for the others.  The definition is in docs/reference/manifest.md.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from typing import Any

from synfast import workers
from synfast.files.small import SMALL_MAX
from synfast.files.sparse import extents

XXH3 = "xxh3-128-sparse-v3"
SHA256 = "sha256-sparse-v3"
BLAKE2B_V2 = "blake2b-256-sparse-v2"


def _xxh3() -> Any:
    from synfast.backup import _hash

    return _hash.XXH3()


#: Every checksum algorithm, by the name the manifest records, and its hash.
ALGORITHMS: dict[str, Callable[[], Any]] = {
    XXH3: _xxh3,
    SHA256: hashlib.sha256,
    BLAKE2B_V2: lambda: hashlib.blake2b(digest_size=32),
}
#: What ``--checksum`` offers by short name (blake2b stays readable, not offered).
CHOICES = {"xxh3": XXH3, "sha256": SHA256}
#: The default: the fastest that finds damage.
CHECKSUM_ALGORITHM = XXH3
BLOCK = 1 << 16
SEGMENT = 1 << 26
#: Bytes read per call by the hashlib path.
READ = 1 << 20

_U64 = struct.Struct("<Q")


def segments_of(fd: int, size: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The file's segments as ``(start, end, ranges)``: ``ranges`` are the
    block-aligned ranges inside the segment that touch a data extent (merged,
    in order); only they are read."""
    merged: list[tuple[int, int]] = []
    for off, length in extents(fd):
        first = off // BLOCK * BLOCK
        end = min(size, -(-(off + length) // BLOCK) * BLOCK)
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    per_seg: dict[int, list[tuple[int, int]]] = {}
    for first, end in merged:
        while first < end:
            seg = first // SEGMENT
            cut = min(end, (seg + 1) * SEGMENT)
            per_seg.setdefault(seg, []).append((first, cut))
            first = cut
    return [(seg * SEGMENT, min(size, (seg + 1) * SEGMENT), per_seg.get(seg, []))
            for seg in range(max(1, -(-size // SEGMENT)))]


def checksum_fd(fd: int, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """The canonical checksum of the open regular file ``fd`` with ``algorithm``
    (see the module docstring).

    Segments are dealt out round-robin to one thread per core: XXH3's are
    hashed by :mod:`synfast.backup._hash` without the GIL, the others read
    here and fed to hashlib (which releases the GIL on large updates).
    """
    new = ALGORITHMS[algorithm]
    size = os.fstat(fd).st_size
    segments = segments_of(fd, size)
    with_data = sum(1 for s in segments if s[2])
    threads = min(os.cpu_count() or 1, max(1, with_data))
    if algorithm == XXH3:
        from synfast.backup import _hash

        def part(segs: list) -> list[bytes]:
            return _hash.segment_digests(fd, segs)
    else:
        def part(segs: list) -> list[bytes]:
            return [_read_segment(fd, seg, new) for seg in segs]
    if threads <= 1:
        digests = part(segments)
    else:
        parts = [segments[i::threads] for i in range(threads)]
        pool = workers.shared_executor()
        futures = [pool.submit(part, p) for p in parts]
        digests = [b""] * len(segments)
        for i, f in enumerate(futures):
            digests[i::threads] = f.result()
    return _file_checksum(new, digests, size)


def _file_checksum(new: Callable[[], Any], digests: Iterable[bytes], size: int) -> str:
    """The file's checksum from its segments' digests, in order: ``S`` +
    each digest, then ``E`` + the file's size."""
    h = new()
    for d in digests:
        h.update(b"S" + d)
    h.update(b"E" + _U64.pack(size))
    return h.hexdigest()


def checksum_contents(contents: list[memoryview], algorithm: str = CHECKSUM_ALGORITHM,
                      ) -> list[str]:
    """The checksums of whole small files already in memory (each at most one
    segment), as :func:`checksum_fd` would give for files holding them: the
    small files a backup copies in batches are hashed from the bytes it read,
    all of a batch in one native call for XXH3."""
    if algorithm == XXH3:
        from synfast.backup import _hash

        return [d.hex() for d in _hash.whole_digests(contents)]
    new = ALGORITHMS[algorithm]
    out = []
    for data in contents:
        s = _Segment(0, new)
        s.data(0, data)
        out.append(_file_checksum(new, [s.finish(len(data))], len(data)))
    return out


def checksum_small_files(directory: str | os.PathLike[str], names: list[str],
                         algorithm: str = CHECKSUM_ALGORITHM) -> list[str | OSError]:
    """The checksums of the small files ``names`` in ``directory``, each read
    whole (holes read as zeros: the canonical form does not tell them apart),
    a file's failure returned in its place.  For XXH3 the whole list is read
    and hashed in one native call: verify's per-file cost for a tree of small
    files.  Files larger than :data:`synfast.files.small.SMALL_MAX` are
    hashed by :func:`checksum_file`."""
    got: list[str | int]
    if algorithm == XXH3:
        from synfast.backup import _hash

        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            got = [r.hex() if isinstance(r, bytes) else r for r in
                   _hash.file_digests(fd, [os.fsencode(n) for n in names], SMALL_MAX)]
        finally:
            os.close(fd)
    else:
        got = []
        for name in names:
            try:
                with open(os.path.join(directory, name), "rb", buffering=0,
                          opener=_no_follow) as f:
                    data = f.read(SMALL_MAX + 1)
            except OSError as err:
                got.append(err.errno or errno.EIO)
                continue
            got.append(errno.EFBIG if len(data) > SMALL_MAX else
                       checksum_contents([memoryview(data)], algorithm)[0])
    out: list[str | OSError] = []
    for name, r in zip(names, got, strict=True):
        if isinstance(r, str):
            out.append(r)
        elif r == errno.EFBIG:
            try:
                out.append(checksum_file(os.path.join(directory, name), algorithm))
            except OSError as err:
                out.append(err)
        else:
            out.append(OSError(r, os.strerror(r)))
    return out


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _read_segment(fd: int, seg: tuple[int, int, list[tuple[int, int]]],
                  new: Callable[[], Any]) -> bytes:
    """One segment's digest with a hashlib hash: its data ranges read here."""
    start, end, ranges = seg
    s = _Segment(start, new)
    for first, last in ranges:
        off = first
        while off < last:
            data = os.pread(fd, min(READ, last - off), off)
            if not data:
                raise OSError(5, "file shrank while being checksummed")
            s.data(off, memoryview(data))
            off += len(data)
    return s.finish(end)


def checksum_file(path: str | os.PathLike[str], algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """The canonical checksum of the regular file at ``path`` (not followed if a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return checksum_fd(fd, algorithm)
    finally:
        os.close(fd)


class _Segment:
    """The digest of one segment starting at ``start`` whose bytes arrive in
    order, anything not given being a hole, with a hashlib hash (XXH3's is
    native: :class:`synfast.backup._hash.Canonical`)."""

    _ZERO = bytes(BLOCK)

    def __init__(self, start: int, new: Callable[[], Any]) -> None:
        self.start, self.pos, self.end = start, start, start
        self.block = bytearray()        # the current block's bytes, when partial
        self.zrun = 0                   # zero bytes not yet fed to the hash
        self.h = new()

    def data(self, offset: int, mv: memoryview) -> None:
        self._zeros(offset - self.pos)
        while len(mv):
            room = BLOCK - len(self.block)
            if self.block or len(mv) < room:
                take = min(room, len(mv))
                self.block += mv[:take]
                mv = mv[take:]
                self.pos += take
                if len(self.block) == BLOCK:
                    self._block(self.block)
                    self.block = bytearray()
            else:
                n = len(mv) // BLOCK * BLOCK
                for i in range(0, n, BLOCK):
                    self.pos += BLOCK
                    self._block(mv[i:i + BLOCK])
                mv = mv[n:]

    def _zeros(self, n: int) -> None:
        if n and self.block:
            take = min(n, BLOCK - len(self.block))
            self.block += bytes(take)
            self.pos += take
            n -= take
            if len(self.block) == BLOCK:
                self._block(self.block)
                self.block = bytearray()
        whole = n // BLOCK * BLOCK
        self.zrun += whole
        self.pos += whole
        if n - whole:
            self.block += bytes(n - whole)
            self.pos += n - whole

    def _block(self, b: bytes | bytearray | memoryview) -> None:
        # bytes against bytes is one memcmp; a memoryview compares byte by byte
        if (bytes(b) if isinstance(b, memoryview) else b) == (
                self._ZERO if len(b) == BLOCK else bytes(len(b))):
            self.zrun += len(b)
        else:
            if self.zrun:
                self.h.update(b"Z" + _U64.pack(self.zrun))
                self.zrun = 0
            self.h.update(b"D")
            self.h.update(b)

    def finish(self, end: int) -> bytes:
        self.end = end
        self._zeros(self.end - self.pos)
        if self.block:
            self.block, last = bytearray(), self.block
            self._block(last)
        if self.zrun:
            self.h.update(b"Z" + _U64.pack(self.zrun))
        self.h.update(b"E" + _U64.pack(self.end - self.start))
        return self.h.digest()


def _feed(seg: Any, items: list[tuple[int, memoryview]]) -> None:
    for offset, buf in items:
        seg.data(offset, buf)


class StreamChecksum:
    """The canonical checksum of a file whose content arrives in order, as a
    stream writes or reads it: :meth:`data` for bytes at an offset, anything
    skipped being a hole; :meth:`finish` with the file's size.  Same result as
    :func:`checksum_fd` of the file, computed from bytes already in memory, so
    a stream never reads its data twice.

    Segments are independent, so with ``run`` (a callable ``run(segment_index,
    fn, *args)`` returning a future, e.g. one single-thread executor per core
    chosen by the index) :meth:`data` hashes on other threads and returns the
    futures; the bytes given must stay unchanged until they are done."""

    def __init__(self, run: Any = None, algorithm: str = CHECKSUM_ALGORITHM) -> None:
        self.run = run
        if algorithm == XXH3:
            from synfast.backup import _hash

            self.segment: Callable[[int], Any] = _hash.Canonical
        else:
            new = ALGORITHMS[algorithm]
            self.segment = lambda start: _Segment(start, new)
        self.new = ALGORITHMS[algorithm]
        self.segments: dict[int, Any] = {}
        self.pos = 0

    def data(self, offset: int, buf: bytes | bytearray | memoryview) -> list[Any]:
        """Account ``buf`` at ``offset`` (at or after everything given before)."""
        if offset < self.pos:
            raise ValueError("stream checksum fed out of order")
        mv = memoryview(buf).cast("B")
        futures = []
        while len(mv):
            index = offset // SEGMENT
            take = min(len(mv), (index + 1) * SEGMENT - offset)
            seg = self.segments.get(index)
            if seg is None:
                seg = self.segments[index] = self.segment(index * SEGMENT)
            if self.run is None:
                seg.data(offset, mv[:take])
            else:
                futures.append(self.run(index, seg.data, offset, mv[:take]))
            offset += take
            mv = mv[take:]
        self.pos = offset
        return futures

    def data_many(self, pieces: list[tuple[int, memoryview]]) -> list[Any]:
        """:meth:`data` for several ``(offset, bytes)`` pieces in order: one
        hashing task per segment they touch, not one per piece."""
        if self.run is None:
            for offset, buf in pieces:
                self.data(offset, buf)
            return []
        groups: dict[int, list[tuple[int, memoryview]]] = {}
        for offset, buf in pieces:
            if offset < self.pos:
                raise ValueError("stream checksum fed out of order")
            mv = memoryview(buf).cast("B")
            while len(mv):
                index = offset // SEGMENT
                take = min(len(mv), (index + 1) * SEGMENT - offset)
                groups.setdefault(index, []).append((offset, mv[:take]))
                offset += take
                mv = mv[take:]
            self.pos = offset
        futures = []
        for index, items in groups.items():
            seg = self.segments.get(index)
            if seg is None:
                seg = self.segments[index] = self.segment(index * SEGMENT)
            futures.append(self.run(index, _feed, seg, items))
        return futures

    def finish(self, size: int) -> str:
        """The checksum of the file, ``size`` bytes long (the rest is a hole);
        every future :meth:`data` returned must be done."""
        if size < self.pos:
            raise ValueError("stream checksum given more bytes than the file's size")
        return _file_checksum(self.new, (
            (self.segments.get(index) or self.segment(index * SEGMENT)).finish(
                min(size, (index + 1) * SEGMENT))
            for index in range(max(1, -(-size // SEGMENT)))), size)
