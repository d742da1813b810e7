"""The ``pages`` engine: one snapshot copied page for page, free pages as holes.

Algorithm (the argument that it is exactly the snapshot is in
docs/internals.md, "The pages engine"):

1. The snapshot is begun with the others (:func:`~synfast.lmdb.snapshot.begin_together`),
   and as its read transaction begins, the meta page of that transaction is
   captured and proven untorn (``ext/lmdb/pages.pxi``): no writer lock is taken,
   so a service writing several environments in one step is never blocked.
2. :meth:`Snapshot.page_plan <synfast.lmdb.snapshot.Snapshot>` checks that meta
   page against the snapshot's own statistics, reads the snapshot's free
   database, checks that free and used pages add up to the last page, and
   returns the runs of pages in use.
3. A new data file is created at the source's size, the runs are copied to the
   same offsets by :func:`synfast.files.sparse.copy_ranges` (cloned where the
   destination shares blocks with the source, else copy_file_range, splice or
   pread/pwrite, never reading a hole), the two meta pages are written for the
   snapshot's transaction, and the file is fsynced.

Every page keeps its number, so two copies of a service that changed a little
differ only in the pages that changed: what deduplicating stores and reflinks
need.  Pages free at the snapshot and everything past its last page stay holes,
so the copy allocates about what a compacting copy writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synfast.errors import (
    DESTINATION_ERRNOS,
    CopyFailed,
    CorruptEnvironment,
    SynfastError,
    convert_error,
)
from synfast.files.durable import new_file
from synfast.files.sparse import (
    copy_ranges,
    reflink_refused,
    shares_blocks,
    use_copy_file_range,
)
from synfast.lmdb.env import LmdbError
from synfast.lmdb.meta import snapshot_meta_pages
from synfast.lmdb.snapshot import Snapshot

#: A free gap between two runs of pages in use shorter than this many pages is
#: copied with them rather than left as a hole: one copy call instead of two
#: (docs/bench/lmdb-engines.md, "The pages engine").  Where the copy shares
#: blocks with the source a merged gap allocates nothing, and fewer, longer
#: clones are what make the copy nearly free.
MERGE_PAGES_COPY = 1
MERGE_PAGES_CLONE = 8

#: Start the output's writeback after every so many bytes copied, so that the
#: fsync at the end finds little left to write.
WRITEBACK_BYTES = 64 << 20

#: The plan's checks whose failure means a damaged free database or meta page.
_CHECKS = ("check meta", "read free pages")


def copy_pages(snap: Snapshot, out: Path, display: Path, source: str | os.PathLike[str], *,
               mode: int = 0o600, reflink: str = "auto", merge_pages: int | None = None,
               copy_file_range: str = "auto", writeback: bool = True,
               shares: bool | None = None, sync: bool = True) -> dict[str, Any]:
    """Copy the begun snapshot ``snap`` page for page into the new data file
    ``out`` (created with ``mode``, fsynced unless ``sync`` is false, for a
    caller that fsyncs it afterwards anyway), then close the snapshot.

    Errors name ``display`` (the output's final name) for the destination and
    ``source`` for the environment.  On any failure ``out`` is removed.
    ``shares`` says whether ``out``'s directory can share blocks with the
    source, for a caller that has already found out (else it is probed).
    Returns the plan's facts (``txnid``, ``page_size``, ``map_size``,
    ``last_pgno``, ``used_pages``, ``free_pages``...) with the copy's
    (``method``, ``bytes_written``, ``bytes_cloned``, ``size``).
    """
    try:
        src_fd = snap.fileno()
        if shares is None:
            shares = reflink != "never" and shares_blocks(src_fd, out.parent)
        clones = reflink != "never" and shares
        if reflink == "always" and not clones:
            raise reflink_refused(source, display, "the destination's filesystem cannot "
                                  "share blocks with it")
        if merge_pages is None:
            merge_pages = MERGE_PAGES_CLONE if clones else MERGE_PAGES_COPY
        plan = snapshot_plan(snap, merge_pages, source)
        size = max(os.fstat(src_fd).st_size, (plan["last_pgno"] + 1) * plan["page_size"])
        with new_file(out, mode & 0o7777, display=display) as fd:
            os.fchmod(fd, mode & 0o7777)        # the mode asked for, whatever the umask
            moved = _fill(src_fd, fd, plan, size, reflink, copy_file_range, writeback,
                          display, source, sync)
    finally:
        snap.close()
    del plan["ranges"], plan["meta"]
    return {**plan, **moved, "size": size}


def snapshot_plan(snap: Snapshot, merge_pages: int,
                  source: str | os.PathLike[str]) -> dict[str, Any]:
    """The snapshot's page plan, its failures worded for the command line."""
    try:
        return snap.page_plan(merge_pages)
    except LmdbError as err:
        if err.operation == "capture meta":
            raise CopyFailed(source, str(err.message),
                             "copy it with --lmdb-engine rebuild, which needs no meta "
                             "page") from err
        if err.operation in _CHECKS:
            raise CorruptEnvironment(
                source, f"{err.operation}: {err.message}",
                "the pages engine relies on the free database and meta page; copy it "
                "with --lmdb-engine rebuild, which reads only the trees, and check it "
                "with mdb_stat") from err
        raise convert_error(err, source) from err
    except OSError as err:
        raise convert_error(err, source) from err


def _fill(src_fd: int, fd: int, plan: dict[str, Any], size: int, reflink: str, cfr: str,
          writeback: bool, display: Path, source: str | os.PathLike[str],
          sync: bool = True) -> dict[str, Any]:
    """Size the new file, copy the plan's runs and write its meta pages, fsynced
    when ``sync``."""
    try:
        os.ftruncate(fd, size)
        moved = copy_ranges(src_fd, fd, plan["ranges"],
                            clone="never" if reflink == "never" else "ranges",
                            copy_file_range=use_copy_file_range(cfr, reflink, fd),
                            writeback_every=WRITEBACK_BYTES if writeback else 0)
    except OSError as err:
        raise _side(err, display, source) from err
    if moved["short_read"]:
        raise CorruptEnvironment(source, "the data file ended before the snapshot's last page",
                                 "the environment is damaged; check it with mdb_stat")
    try:
        os.pwrite(fd, snapshot_meta_pages(plan["meta"], plan["page_size"]), 0)
        if sync:
            os.fsync(fd)
    except OSError as err:
        raise convert_error(err, display) from err
    return {"method": moved["method"], "bytes_written": moved["bytes_written"],
            "bytes_cloned": moved["bytes_cloned"], "runs": moved["ranges"]}


def _side(err: OSError, display: Path, source: str | os.PathLike[str]) -> SynfastError:
    """An error of the copy, naming the side it belongs to."""
    return convert_error(err, display if err.errno in DESTINATION_ERRNOS else source)
