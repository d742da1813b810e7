"""LMDB meta pages, and recognising environments by their content.

An environment is recognised by its first meta page (the LMDB magic number and
the meta page flag), never by its name: services name their stores freely, and
a copy that treated a live ``data.mdb`` as plain bytes would be torn.  Reading
a meta page takes two small preads; the environment is never opened, so no
lock file is created and no reader slot is taken (safe on a live service, and
what ``scan`` and the tree walk use).

A meta page holds the environment's map size, page size, last page used and
the transaction id that wrote it; of the two meta pages the one with the
larger transaction id is current.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from synfast.errors import CorruptEnvironment, NotAnEnvironment, SourceMissing, convert_error

MAGIC = 0xBEEFC0DE

P_META = 0x08

#: Where the fields of LMDB 0.9's meta page sit on a 64-bit little-endian host
#: (16-byte page header, then MDB_meta).
_META = struct.Struct("<QHHI II Q Q 48x IHH QQQQQ QQ")

META_LEN = _META.size  # 152

#: The smallest file that can hold an environment: its two meta pages.  LMDB
#: pages are the OS page size, at least 4 KiB on every Linux architecture, and
#: a new environment's data file starts with both meta pages written.  Smaller
#: files are not opened to be recognised: in a tree of many small files that
#: probe was a third of the walk.
MIN_ENV_FILE = 2 * 4096


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


def parse_meta(page: bytes) -> tuple[int, Meta] | None:
    """``(page size, Meta)`` from the start of a meta page, or None if it is not one."""
    if len(page) < META_LEN:
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


#: Where the txnid sits in a meta page (16-byte page header, MDB_meta's last field).
_TXNID_AT = 16 + 128


def snapshot_meta_pages(captured: bytes, page_size: int) -> bytes:
    """Both meta pages of a page-for-page copy of one snapshot.

    ``captured`` is the snapshot's own meta page (page header and MDB_meta, as
    :meth:`~synfast.lmdb.snapshot.Snapshot.page_plan` returns it).  Its slot
    (txnid & 1) gets it unchanged; the other slot gets the same roots and last
    page under the txnid before, so that LMDB, which opens the newer of the
    two, finds the snapshot, and the copy's first commit overwrites the older.
    """
    txnid = struct.unpack_from("<Q", captured, _TXNID_AT)[0]
    pages = bytearray(2 * page_size)
    for slot in (0, 1):
        base = slot * page_size
        pages[base:base + len(captured)] = captured
        struct.pack_into("<Q", pages, base, slot)
        struct.pack_into("<Q", pages, base + _TXNID_AT,
                         txnid if slot == txnid & 1 else max(txnid - 1, 0))
    return bytes(pages)


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
        first = os.pread(fd, META_LEN, 0)
        parsed = parse_meta(first)
        if parsed is None:
            return None
        psize, meta0 = parsed
        if psize < 512 or psize > 65536 or psize & (psize - 1):
            return None
        second = parse_meta(os.pread(fd, META_LEN, psize))
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


def require_location(path: str | os.PathLike[str]) -> EnvLocation:
    """:func:`locate`, or an error saying that ``path`` is not an environment."""
    loc = locate(path)
    if loc is None:
        raise NotAnEnvironment(path, "is not an LMDB environment (no LMDB meta page)")
    return loc


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
        if _strict_meta(data) is None:
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


def env_layout(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Return ``(path, subdir)`` for the environment at ``path``.

    A directory environment holds ``data.mdb`` (and ``lock.mdb``); a single-file
    (``MDB_NOSUBDIR``) environment is the data file itself, with its lock file
    beside it as ``NAME-lock``.  A file is accepted only when it starts with an
    LMDB meta page, so a wrong path fails here with a clear message instead of
    LMDB creating a lock file next to something that is not an environment.
    """
    p = Path(path)
    if not p.exists():
        raise SourceMissing(p, "no such environment", "check the path")
    if p.is_dir():
        data = p / "data.mdb"
        if not data.is_file():
            raise NotAnEnvironment(
                p, "directory holds no data.mdb, so it is not an LMDB environment",
                "give the environment's directory (the one holding data.mdb)")
        _require_meta(data)
        return p, True
    if p.is_file():
        _require_meta(p)
        return p, False
    raise NotAnEnvironment(p, "not a directory or a regular file",
                           "give an LMDB environment directory or data file")


def _strict_meta(data: Path) -> Meta | None:
    """:func:`read_meta` where a file that cannot be read is an error naming it
    (an unreadable environment is not a damaged one)."""
    try:
        return read_meta(data, strict=True)
    except OSError as err:
        raise convert_error(err, data) from None


def _require_meta(data: Path) -> None:
    if _strict_meta(data) is None:
        raise NotAnEnvironment(data, "not an LMDB data file (no LMDB meta page)",
                               "give an LMDB environment directory or data file")
