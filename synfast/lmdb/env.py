"""Environments opened through LMDB, read-only and *with* their lock file.

Every open here registers us in the environment's reader table, so a live
writer sees our read transaction and does not reuse a page we may still read.
``MDB_NOLOCK`` is used only on private copies (a backup being verified), never
on a source.  Never open, with this module or with py-lmdb, an environment this
process already has open: POSIX record locks belong to the process, and closing
either handle drops the other's locks.

- :func:`environment_info`, :func:`databases`, :func:`walk`: what LMDB reports;
- :func:`copy_environment`: LMDB's own copy (``mdb_env_copyfd2``), compacting
  or raw, which takes its snapshot when it starts;
- :func:`lock_state` and :func:`environments_in_use`: who has an environment
  open, from the lock file's record locks (a dead process holds none).

This module is the only importer of the extension :mod:`synfast.lmdb._lmdb`.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from synfast.errors import DESTINATION_ERRNOS, CopyFailed, convert_error
from synfast.files.durable import new_file
from synfast.lmdb import _lmdb
from synfast.lmdb.meta import META_LEN, EnvLocation, parse_meta, require_location

#: An LMDB call failed (raised by the native layer; word it with convert_error).
LmdbError = _lmdb.LmdbError


def version() -> tuple[int, int, int, str]:
    """The linked liblmdb's version: (major, minor, patch, banner)."""
    return _lmdb.version()


@dataclass(frozen=True)
class EnvInfo:
    """What LMDB itself reports about an environment, without copying it."""

    path: Path
    subdir: bool
    map_size: int
    page_size: int
    last_pgno: int
    last_txnid: int
    max_readers: int
    readers: list[dict]
    entries: int
    open_by_pid: int

    @property
    def used_size(self) -> int:
        return (self.last_pgno + 1) * self.page_size


def environment_info(path: str | os.PathLike[str]) -> EnvInfo:
    """Open the environment read-only (with its lock file) and report on it."""
    loc = require_location(path)
    try:
        raw = _lmdb.env_info(os.fspath(loc.path), loc.subdir)
    except (LmdbError, OSError) as err:
        raise convert_error(err, loc.data_path) from err
    holder = 0
    if loc.lock_path.exists():
        try:
            holder = _lmdb.lock_holder(os.fspath(loc.lock_path))
        except OSError:
            holder = 0
    return EnvInfo(
        path=loc.path, subdir=loc.subdir, map_size=raw["map_size"], page_size=raw["page_size"],
        last_pgno=raw["last_pgno"], last_txnid=raw["last_txnid"], max_readers=raw["max_readers"],
        readers=raw["readers"], entries=raw["entries"], open_by_pid=holder,
    )

def destination_errno(code: int | None, out: str | os.PathLike[str]) -> int | None:
    """The errno to report for an LMDB failure while writing ``out``.

    LMDB turns a short write into EIO, and a write that fills the disk is
    usually short; so an EIO with (almost) no space left where ``out`` is
    written is reported as ENOSPC, with its fix.  Returns None when the
    failure is not the destination's.
    """
    if code in DESTINATION_ERRNOS:
        return code
    if code == errno.EIO:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(out)))
        except OSError:
            return None
        if st.f_bavail * st.f_frsize < (1 << 20):
            return errno.ENOSPC
    return None


@dataclass(frozen=True)
class EnvCopyResult:
    """What an environment copy produced.

    ``txnid`` is the snapshot's transaction id when it is known exactly
    (``txnid_exact``): a raw copy records it in the copy's meta page; a compact
    copy does not, so it is known only to lie in ``[txnid_min, txnid_max]``, the
    last transactions seen just before and just after the copy.
    ``snapshot_time`` is when the snapshot was taken (wall clock, seconds): a
    copy through LMDB takes it as the copy starts.
    """

    source: Path
    destination: Path
    engine: str
    page_size: int
    map_size: int
    last_pgno: int
    txnid: int
    txnid_exact: bool
    txnid_min: int
    txnid_max: int
    bytes_written: int
    source_allocated: int
    source_apparent: int
    snapshot_time: float = 0.0


@contextmanager
def _writeback_while(fd: int, enabled: bool, every: float = 0.05) -> Iterator[None]:
    """Start writeback of ``fd``'s dirty pages every ``every`` seconds while the
    body runs (in a thread: LMDB's copy runs without the GIL)."""
    if not enabled:
        yield
        return
    import threading

    from synfast.files.durable import start_writeback
    from synfast.workers import start_thread

    stop = threading.Event()

    def kick() -> None:
        while not stop.wait(every):
            try:
                start_writeback(fd)
            except OSError:
                return      # only a head start; the caller's fsync reports errors

    t = start_thread(kick, "synfast-writeback")
    try:
        yield
    finally:
        stop.set()
        t.join()


def copy_environment(
    src: EnvLocation, dst_file: str | os.PathLike[str], *, engine: str = "compact",
    mode: int = 0o644, display_dst: str | os.PathLike[str] | None = None,
    writeback: bool = False,
) -> EnvCopyResult:
    """Copy the environment ``src`` into the new file ``dst_file`` (its data file).

    ``dst_file`` must not exist: it is created exclusively, and removed again if
    the copy fails, so a failed copy never leaves a file behind.  Errors on the
    destination side name ``display_dst`` (the final name) when given.

    ``writeback``: for a copy that will be fsynced, start writing the output to
    disk while LMDB is still copying (every 50 ms), as the rebuild engine does
    after each commit, so that the fsync finds little left to do.
    """

    if engine not in ("compact", "raw"):
        raise ValueError(f"unknown LMDB engine {engine!r}")
    dst = Path(dst_file)
    data_st = os.stat(src.data_path)
    started = time.time()
    with new_file(dst, mode & 0o7777) as fd:
        try:
            with _writeback_while(fd, writeback):
                raw = _lmdb.env_copy(os.fspath(src.path), fd, src.subdir, engine == "compact")
        except (LmdbError, OSError) as err:
            code = destination_errno(
                getattr(err, "code", None) or getattr(err, "errno", None), dst)
            if code is not None:
                raise convert_error(OSError(code, os.strerror(code)),
                                   display_dst or dst) from err
            raise convert_error(err, src.data_path) from err
        head = os.pread(fd, raw["page_size"] + META_LEN, 0)
    metas = [m for m in (parse_meta(head), parse_meta(head[raw["page_size"]:])) if m]
    out_meta = max((m[1] for m in metas), key=lambda m: m.txnid)
    if engine == "raw":
        txnid, exact = out_meta.txnid, True
    else:
        exact = raw["txnid_before"] == raw["txnid_after"]
        txnid = raw["txnid_before"]
    return EnvCopyResult(
        source=src.path, destination=dst, engine=engine, page_size=raw["page_size"],
        map_size=raw["map_size"], last_pgno=out_meta.last_pgno, txnid=txnid, txnid_exact=exact,
        txnid_min=raw["txnid_before"], txnid_max=raw["txnid_after"],
        bytes_written=raw["bytes_written"], source_allocated=data_st.st_blocks * 512,
        source_apparent=data_st.st_size, snapshot_time=started,
    )


def databases(path: str | os.PathLike[str]) -> dict:
    """Entry counts and flags of the main database and every named database."""
    loc = require_location(path)
    try:
        return _lmdb.env_databases(os.fspath(loc.path), loc.subdir)
    except (LmdbError, OSError) as err:
        raise convert_error(err, loc.data_path) from err


def walk(path: str | os.PathLike[str], subdir: bool, *, nolock: bool = True,
         full: bool = True) -> dict:
    """Open the environment at ``path`` read-only and count every database's
    entries, walking every page when ``full`` (what proves a copy readable).
    ``nolock`` is for private copies only (a backup being verified, or a copy
    just written): it creates no lock file there.  Raises :class:`LmdbError`
    or OSError for the caller to word."""
    return _lmdb.env_walk(os.fspath(path), subdir, nolock, full)


def lock_state(lock_path: str | os.PathLike[str]) -> tuple[bool, int]:
    """Whether a live process holds LMDB's shared lock on ``lock_path``, and its
    pid (0 when it is in another PID namespace)."""
    return _lmdb.lock_state(os.fspath(lock_path))


def _other_holder(lock_path: Path) -> int | None:
    """The pid of another live process that has the environment of
    ``lock_path`` open (0: one in another PID namespace), else None.  A lock is
    released when its process dies, so a held lock means a live process."""
    try:
        held, pid = lock_state(lock_path)
    except OSError:
        return None
    return pid if held and pid != os.getpid() else None


def require_reader_slot(loc: EnvLocation) -> None:
    """Refuse to copy an environment whose lock file is on a read-only
    filesystem while a live process has it open.

    LMDB opens such an environment without its reader table (it gives up on
    the lock file only for a read-only filesystem), so a read transaction is
    not registered and a writer elsewhere may reuse the pages being copied.
    With no process holding the environment open nobody writes it, and the
    copy is safe."""
    lock_path = loc.lock_path
    try:
        # The lock file's own mount: a lock file bind-mounted read-write over a
        # read-only tree (a Kubernetes volume mounted read-only) is writable.
        where = lock_path if lock_path.exists() else lock_path.parent
        read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        return
    pid = _other_holder(lock_path) if read_only and lock_path.exists() else None
    if pid is not None:
        who = f"process {pid}" if pid else "a process in another PID namespace"
        raise CopyFailed(
            loc.path, f"{who} has it open, and its lock file {lock_path} is on a read-only "
            "filesystem, so a copy cannot register as a reader and the writer may reuse "
            "the pages being copied",
            "mount it so that its lock file is writable, or stop the service first")


def environments_in_use(root: Path) -> list[tuple[Path, int]]:
    """LMDB environments under ``root`` that another live process has open, with
    that process's pid.  Found by their lock files: every process that has an
    environment open holds LMDB's shared lock on it, and a dead process holds
    none, so stale reader slots never count."""
    found: list[tuple[Path, int]] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name == "lock.mdb" or name.endswith("-lock"):
                lock_path = Path(dirpath) / name
                if name.endswith("-lock") and not (Path(dirpath) / name[:-5]).is_file():
                    continue
                pid = _other_holder(lock_path)
                if pid is not None:
                    env = lock_path.parent if name == "lock.mdb" else lock_path.with_name(name[:-5])
                    found.append((env, pid))
    return found
