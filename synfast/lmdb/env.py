"""LMDB environments: recognise them by content, describe them, copy them safely.

An environment is recognised by its first meta page (the LMDB magic number and
the meta page flag), never by its name: services name their stores freely, and
a copy that treated a live ``data.mdb`` as plain bytes would be torn.

Copies go through the LMDB C library (``mdb_env_copyfd2``) with the source
opened read-only *with* its lock file, so a live writer sees our reader and
does not reuse pages we are still copying.  ``lock.mdb`` is never copied.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from synfast.errors import (
    CorruptEnvironment,
    NotAnEnvironment,
    convert_error,
)

MAGIC = 0xBEEFC0DE
P_META = 0x08
#: Where the fields of LMDB 0.9's meta page sit on a 64-bit little-endian host
#: (16-byte page header, then MDB_meta).
_META = struct.Struct("<QHHI II Q Q 48x IHH QQQQQ QQ")
_META_LEN = _META.size  # 152
#: The smallest file that can hold an environment: two meta pages of 512 bytes.
MIN_ENV_FILE = 1024

ENGINES = ("compact", "raw")


@dataclass(frozen=True)
class Meta:
    """The newer of an environment's two meta pages."""

    page_size: int
    map_size: int
    last_pgno: int
    txnid: int
    version: int
    main_entries: int
    main_depth: int
    main_pages: int

    @property
    def used_size(self) -> int:
        """Bytes of the data file that hold pages (the rest of the map is unused)."""
        return (self.last_pgno + 1) * self.page_size


def _parse_meta(page: bytes) -> tuple[int, Meta] | None:
    if len(page) < _META_LEN:
        return None
    (_pgno, _pad, flags, _lower, magic, version, _addr, mapsize,
     main_pad, main_flags, main_depth, branch, leaf, overflow, entries, _root,
     last_pg, txnid) = _META.unpack_from(page)
    if magic != MAGIC or not flags & P_META:
        return None
    psize = struct.unpack_from("<I", page, 40)[0]
    return psize, Meta(
        page_size=psize, map_size=mapsize, last_pgno=last_pg, txnid=txnid, version=version,
        main_entries=entries, main_depth=main_depth, main_pages=branch + leaf + overflow,
    )


def read_meta(path: str | os.PathLike[str], *, strict: bool = False) -> Meta | None:
    """Return the current meta page of an LMDB data file, or None if it is not one.

    Reads two small blocks; never opens the environment, so it creates no lock
    file and takes no reader slot.  A file that cannot be opened or read is
    "not one" too, unless ``strict``: then the OSError is raised, so that an
    unreadable environment is not mistaken for a damaged one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        if strict:
            raise
        return None
    try:
        first = os.pread(fd, _META_LEN, 0)
        parsed = _parse_meta(first)
        if parsed is None:
            return None
        psize, meta0 = parsed
        if psize < 512 or psize > 65536 or psize & (psize - 1):
            return None
        second = _parse_meta(os.pread(fd, _META_LEN, psize))
        if second is not None and second[1].txnid > meta0.txnid:
            return second[1]
        return meta0
    except OSError:
        if strict:
            raise
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class EnvLocation:
    """Where an environment's files are.

    ``path`` is what LMDB opens: the directory for a directory environment, the
    data file itself for a single-file (MDB_NOSUBDIR) one.
    """

    path: Path
    subdir: bool

    @property
    def data_path(self) -> Path:
        return self.path / "data.mdb" if self.subdir else self.path

    @property
    def lock_path(self) -> Path:
        return self.path / "lock.mdb" if self.subdir else Path(f"{self.path}-lock")


def locate(path: str | os.PathLike[str]) -> EnvLocation | None:
    """Decide by content whether ``path`` is (part of) an LMDB environment.

    A directory is an environment when its ``data.mdb`` carries an LMDB meta
    page.  A file with a meta page is a single-file environment, except a
    ``data.mdb`` that belongs to a directory environment (a ``lock.mdb`` beside
    it, or no ``data.mdb-lock``): opening that one as a single file would use
    the wrong lock file and hide us from the live writer.
    """
    p = Path(path)
    try:
        st = os.lstat(p)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        data = p / "data.mdb"
        if data.is_file() and not data.is_symlink() and read_meta(data) is not None:
            return EnvLocation(p, True)
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size < MIN_ENV_FILE or read_meta(p) is None:
        return None
    if p.name == "data.mdb" and not Path(f"{p}-lock").exists():
        return EnvLocation(p.parent, True)
    return EnvLocation(p, False)


def check_environment_dir(path: str | os.PathLike[str]) -> EnvLocation | None:
    """Classify a directory met while walking a tree, raising on a broken store.

    Returns the location when the directory is an environment, None when it is
    an ordinary directory.  A ``data.mdb`` without an LMDB meta page, or a
    directory named ``*.lmdb`` that holds no environment, is an error: copying
    either as plain files would hide a damaged store.
    """
    p = Path(path)
    data = p / "data.mdb"
    try:
        st = os.lstat(data)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as err:
        # The directory itself cannot be searched: name it, not a file in it.
        raise convert_error(err, p) from err
    if st is not None and stat.S_ISREG(st.st_mode):
        if Path(f"{data}-lock").exists() and not (p / "lock.mdb").exists():
            return None  # data.mdb is a single-file environment of its own
        try:
            meta = read_meta(data, strict=True)
        except OSError as err:
            raise convert_error(err, data) from err
        if meta is None:
            raise CorruptEnvironment(
                data, "is not an LMDB data file (no LMDB meta page at its start)",
                "restore it from a backup, or check it with mdb_stat",
            )
        return EnvLocation(p, True)
    if p.name.endswith(".lmdb"):
        raise NotAnEnvironment(
            p, "is named like an LMDB environment but holds none (no data.mdb)",
            "restore its data.mdb, or rename the directory if it is not meant to be one",
        )
    return None


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
    from synfast.lmdb import _lmdb

    loc = locate(path)
    if loc is None:
        raise NotAnEnvironment(path, "is not an LMDB environment (no LMDB meta page)")
    try:
        raw = _lmdb.env_info(os.fspath(loc.path), loc.subdir)
    except (_lmdb.LmdbError, OSError) as err:
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


DEST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def destination_errno(code: int | None, out: str | os.PathLike[str]) -> int | None:
    """The errno to report for an LMDB failure while writing ``out``.

    LMDB turns a short write into EIO, and a write that fills the disk is
    usually short; so an EIO with (almost) no space left where ``out`` is
    written is reported as ENOSPC, with its fix.  Returns None when the
    failure is not the destination's.
    """
    if code in DEST_ERRNOS:
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


@contextmanager
def _writeback_while(fd: int, enabled: bool, every: float = 0.05) -> Iterator[None]:
    """Start writeback of ``fd``'s dirty pages every ``every`` seconds while the
    body runs (in a thread: LMDB's copy runs without the GIL)."""
    if not enabled:
        yield
        return
    import threading

    from synfast.files.durable import start_writeback

    stop = threading.Event()

    def kick() -> None:
        while not stop.wait(every):
            try:
                start_writeback(fd)
            except OSError:
                return      # only a head start; the caller's fsync reports errors

    t = threading.Thread(target=kick, name="synfast-writeback", daemon=True)
    t.start()
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

    from synfast.lmdb import _lmdb

    if engine not in ENGINES:
        raise ValueError(f"unknown LMDB engine {engine!r}")
    dst = Path(dst_file)
    data_st = os.stat(src.data_path)
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o7777)
    try:
        try:
            with _writeback_while(fd, writeback):
                raw = _lmdb.env_copy(os.fspath(src.path), fd, src.subdir, engine == "compact")
        except (_lmdb.LmdbError, OSError) as err:
            code = destination_errno(
                getattr(err, "code", None) or getattr(err, "errno", None), dst)
            if code is not None:
                raise convert_error(OSError(code, os.strerror(code)),
                                   display_dst or dst) from err
            raise convert_error(err, src.data_path) from err
        head = os.pread(fd, raw["page_size"] + _META_LEN, 0)
    except BaseException:
        os.close(fd)
        os.unlink(dst)
        raise
    os.close(fd)
    metas = [m for m in (_parse_meta(head), _parse_meta(head[raw["page_size"]:])) if m]
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
        source_apparent=data_st.st_size,
    )


def databases(path: str | os.PathLike[str]) -> dict:
    """Entry counts and flags of the main database and every named database."""
    from synfast.lmdb import _lmdb

    loc = locate(path)
    if loc is None:
        raise NotAnEnvironment(path, "is not an LMDB environment (no LMDB meta page)")
    try:
        return _lmdb.env_databases(os.fspath(loc.path), loc.subdir)
    except (_lmdb.LmdbError, OSError) as err:
        raise convert_error(err, loc.data_path) from err
