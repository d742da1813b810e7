"""Being gentle with a live service: a shared copy rate (``--bwlimit``), a lower
I/O priority (``--ionice``), and the paced, chunked copy that ``--bwlimit`` needs.

The native copy of :mod:`synfast.files.sparse` moves a file inside the kernel
and cannot be paced, so with ``--bwlimit`` (and under the ``mid-file`` test
hook) regular files are copied here instead, a chunk of data extents at a time
(holes stay holes), each chunk charged to one :class:`Throttle` that all copy
threads share, and the run's :class:`~synfast.workers.Cancel` checked between
chunks so that Ctrl-C stops even a slow copy at once.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from synfast.errors import CopyFailed, SourceChanged, convert_error
from synfast.files import sparse as files
from synfast.workers import Cancel

_CHUNK = 1 << 20


class Throttle:
    """A token bucket shared by all copy threads: callers ``consume`` the bytes
    they wrote and sleep as long as it takes to keep to ``rate`` bytes/s on
    average (bursts of up to a quarter of a second are allowed).  A cancelled
    run ends the sleep with :class:`~synfast.workers.Cancelled`."""

    def __init__(self, rate: float, cancel: Cancel) -> None:
        self.rate = float(rate)
        self.cancel = cancel
        self.lock = threading.Lock()
        self.clock = time.monotonic()

    def consume(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.clock = max(self.clock, now - 0.25) + n / self.rate
            delay = self.clock - now
        if delay > 0:
            self.cancel.sleep(delay)


def set_ionice(level: str) -> None:
    """Lower this process's I/O priority (inherited by threads created later):
    ``idle`` (class 3) or ``low`` (best effort, level 7).  Uses the ioprio_set
    system call, which Python's os module does not wrap."""
    value = (3 << 13) if level == "idle" else ((2 << 13) | 7)
    nr = {"x86_64": 251, "aarch64": 30, "i686": 289, "i386": 289}.get(platform.machine())
    if nr is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(nr, 1, 0, value) == 0:
            return
    proc = subprocess.run(["ionice", "-c", "3" if level == "idle" else "2",
                           *(() if level == "idle" else ("-n", "7")), "-p", str(os.getpid())],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CopyFailed(None, f"cannot set the I/O priority: {proc.stderr.strip()}",
                         "run without --ionice")


def copy_file_chunked(src: Path, dst: Path, st: os.stat_result, *, throttle: Throttle | None,
                      cancel: Cancel, display_dst: Path,
                      on_chunk: Callable[[int], None] | None = None) -> int:
    """Copy a regular file chunk by chunk, data extents only (holes stay holes),
    charging ``throttle`` for every chunk.  Used when ``--bwlimit`` is set (the
    native copy cannot be paced); creates ``dst`` exclusively and removes it on
    failure; raises :class:`SourceChanged` when the source changed meanwhile.
    Returns the data bytes copied."""
    done = 0
    with files.new_copy_fds(src, dst, display_dst, job="backup") as (sfd, dfd):
        for off, length in files.extents(sfd):
            end = off + length
            while off < end:
                try:
                    chunk = os.pread(sfd, min(_CHUNK, end - off), off)
                except OSError as err:
                    raise convert_error(err, src) from err
                if not chunk:
                    break
                try:
                    view = memoryview(chunk)
                    pos = off
                    while view:
                        n = os.pwrite(dfd, view, pos)
                        view, pos = view[n:], pos + n
                except OSError as err:
                    raise convert_error(err, display_dst) from err
                off += len(chunk)
                done += len(chunk)
                cancel.check()
                if throttle is not None:
                    throttle.consume(len(chunk))
                if on_chunk is not None:
                    on_chunk(done)
        after = os.fstat(sfd)
        if after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
            raise SourceChanged(src, f"changed while being copied (size {st.st_size} -> "
                                f"{after.st_size})", "run the backup again when it is quiet")
        try:
            os.ftruncate(dfd, st.st_size)
        except OSError as err:
            raise convert_error(err, display_dst) from err
    return done
