"""Writing the members of a backup stream: each file's data read once, written
to the stream's fd and hashed on the way (:mod:`synfast.backup.stream` and
:mod:`synfast.backup.export` use it; the headers come from
:mod:`synfast.backup.tarformat`)."""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from synfast import workers
from synfast.backup import checksum as cks
from synfast.backup import tarformat as tf
from synfast.errors import SynfastError, convert_error
from synfast.files.sparse import extents

#: Bytes read and written per call.
CHUNK = 1 << 20

class StreamBroken(SynfastError):
    """The program reading the stream stopped reading it."""


class Sink:
    """Everything written to the stream's fd, counted; a reader that went away
    is one :class:`StreamBroken`."""

    def __init__(self, fd: int, label: str) -> None:
        self.fd, self.label, self.bytes = fd, label, 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        try:
            while len(mv):
                n = os.write(self.fd, mv)
                mv = mv[n:]
                self.bytes += n
        except BrokenPipeError as err:
            raise StreamBroken(self.label, "the program reading the backup stream stopped "
                               "reading (broken pipe)",
                               "check the command the stream is piped into") from err
        except OSError as err:
            if err.errno == errno.EPIPE:
                raise StreamBroken(self.label, "the stream's reader went away",
                                   "check the command the stream is piped into") from err
            raise convert_error(err, self.label) from err


class MemberWriter:
    """The members of one stream, written to its sink.

    A file's bytes are hashed on other threads while the main thread reads
    the next piece and writes this one (hashlib releases the GIL): segments of
    the checksum are independent, and segment ``i`` goes to hashing thread
    ``i % threads`` (one per core but one), which keeps each segment's bytes
    in order.
    The runs of a file fill a buffer back to back; each full buffer is one
    write and one hashing task.  Buffers rotate (:data:`BUFFERS`), and a
    buffer is reused only once its hashing is done.  :meth:`close` stops the threads."""

    BUFFERS = 6

    def __init__(self, sink: Sink, algorithm: str | None) -> None:
        self.sink, self.algorithm = sink, algorithm
        self.bufs = [memoryview(bytearray(CHUNK)) for _ in range(self.BUFFERS)]
        self.pending: list[list[Any]] = [[] for _ in range(self.BUFFERS)]
        self.pools: list[Any] = []

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools = []

    def _run(self, index: int, fn: Any, *args: Any) -> Any:
        return self.pools[index % len(self.pools)].submit(fn, *args)

    def directory(self, rel: str, st: os.stat_result) -> None:
        self.sink.write(tf.header(rel + "/", tf.DIR, mode=st.st_mode, uid=st.st_uid,
                                  gid=st.st_gid, mtime_ns=st.st_mtime_ns))

    def symlink(self, rel: str, target: str, st: os.stat_result) -> None:
        self.sink.write(tf.header(rel, tf.SYMLINK, mode=st.st_mode, uid=st.st_uid,
                                  gid=st.st_gid, mtime_ns=st.st_mtime_ns, linkname=target))

    def small(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        now = time.time_ns()
        self.sink.write(tf.header(rel, tf.REG, mode=mode, uid=os.getuid(), gid=os.getgid(),
                                  mtime_ns=now, size=len(data)))
        self.sink.write(data)
        self.sink.write(tf.padding(len(data)))

    def _wait(self, k: int) -> None:
        """Until buffer ``k`` is hashed (its hashing's failure raised here)."""
        futures, self.pending[k] = self.pending[k], []
        for f in futures:
            f.result()

    def file(self, rel: str, fd: int, st: os.stat_result, runs: list[tuple[int, int]],
             size: int, overlay: bytes = b"") -> tuple[str | None, bool]:
        """Stream ``runs`` of ``fd`` as the member ``rel`` of ``size`` bytes (a
        sparse member when the runs leave holes); ``overlay`` replaces the
        file's first bytes (an environment's meta pages).  Returns the
        checksum of what was streamed and whether the file ended early (the
        missing bytes are streamed as zeros, so the stream stays well-formed)."""
        data = sum(n for _, n in runs)
        dense = runs == [(0, size)] or (size == 0 and not runs)
        self.sink.write(tf.header(rel, tf.REG, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
                                  mtime_ns=st.st_mtime_ns, size=data,
                                  sparse_map=None if dense else runs, realsize=size))
        hasher = None
        if self.algorithm:
            if data > CHUNK and not self.pools:
                # one core reads and writes, the others hash (measured on 2
                # cores: a second hashing thread slowed the stream by 10%)
                self.pools = [workers.executor(1, f"synfast-hash{i}")
                              for i in range(max(1, (os.cpu_count() or 1) - 1))]
            hasher = cks.StreamChecksum(self._run if data > CHUNK else None, self.algorithm)
        short = False
        k, used = 0, 0
        pieces: list[tuple[int, memoryview]] = []

        def flush() -> None:
            # One write and one hashing task per buffer, however many runs it holds.
            nonlocal k, used, pieces
            if hasher is not None:
                self.pending[k] = hasher.data_many(pieces)
            self.sink.write(self.bufs[k][:used])
            k, used, pieces = (k + 1) % self.BUFFERS, 0, []
            self._wait(k)

        try:
            self._wait(k)
            for off, length in runs:
                end = off + length
                while off < end:
                    want = min(CHUNK - used, end - off)
                    mv = self.bufs[k][used:used + want]
                    got = os.preadv(fd, [mv], off) if not short else 0
                    if got < want:
                        short = True
                        mv[got:want] = bytes(want - got)
                    if off < len(overlay):
                        n = min(len(overlay) - off, want)
                        mv[:n] = overlay[off:off + n]
                    pieces.append((off, mv))
                    used += want
                    off += want
                    if used == CHUNK:
                        flush()
            if used:
                flush()
        finally:
            for i in range(self.BUFFERS):
                self._wait(i)
        self.sink.write(tf.padding(data))
        return (hasher.finish(size) if hasher is not None else None), short


def file_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """The file's data extents, clipped to ``size`` (what is streamed of it)."""
    out = []
    for off, length in extents(fd):
        if off >= size:
            break
        out.append((off, min(length, size - off)))
    return out
