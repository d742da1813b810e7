"""The LMDB copy engines, and the one place where they plug into a copy or a backup.

Every engine copies a live environment from a consistent read snapshot, opened
with the environment's lock file, into a new data file:

``rebuild``
    the native engine (:mod:`synfast.lmdb.snapshot`): every database read with a
    cursor and written into a new environment in key order with ``MDB_APPEND``.
    Pages come out full, so the output is the smallest, and on overflow-heavy
    data it is many times faster than LMDB's ``mdb_copy -c``.  Its snapshot can
    be begun together with the other environments' (one moment).
``compact``
    ``mdb_env_copyfd2`` with ``MDB_CP_COMPACT``: only reachable pages,
    renumbered, keeping the source's fill.  Slow on environments with many
    values larger than a page (LMDB hands each one between two threads).
``raw``
    ``mdb_env_copyfd2`` without compaction: every page up to the last one used,
    free pages included, page numbers kept.
``pages``
    the snapshot copied page for page (:mod:`synfast.lmdb.pages`): every page in
    use keeps its number, pages free at the snapshot stay holes, and the data
    moves at extent-copy speed, or is shared with the source on a reflink
    filesystem.  Its snapshot is begun with the others (one moment).
``auto``
    ``pages`` where the destination can share blocks with the source (one
    reflink filesystem); otherwise, in ``synfast copy``, chosen per environment
    by :mod:`synfast.lmdb.choose` (rebuild or compact), and in a backup
    ``rebuild`` for every environment, so that all snapshots are begun together.

``compact`` and ``raw`` take their snapshot when their copy starts: stock LMDB
cannot copy from a read transaction we hold.

:class:`EnvironmentCopier` is the adapter both ``synfast copy`` and ``synfast
backup`` use: :meth:`~EnvironmentCopier.prepare` opens and begins the snapshots
the chosen engine needs before anything is copied, :meth:`~EnvironmentCopier.copy`
copies one environment into a new data file and reports an
:class:`~synfast.lmdb.env.EnvCopyResult`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from synfast.files.sparse import shares_blocks
from synfast.lmdb import SNAPSHOT_ENGINES, check_engine
from synfast.lmdb.env import EnvCopyResult, copy_environment, require_reader_slot
from synfast.lmdb.meta import EnvLocation
from synfast.lmdb.pages import copy_pages
from synfast.lmdb.snapshot import Snapshot, begin_together, open_snapshot, rebuild_data_file


class EnvironmentCopier:
    """Copies the LMDB environments of one copy or backup with one engine.

    ``together`` is the backup's mode: ``auto`` means ``rebuild`` for every
    environment, so that every snapshot is begun in one moment.  Without it
    (``synfast copy``), ``auto`` keeps the rebuild only where
    :func:`synfast.lmdb.choose.choose_engine` predicts it pays, and the other
    environments take a fresh snapshot when their copy starts.

    ``writeback`` is for a caller that fsyncs every copy afterwards (a backup):
    a ``compact``/``raw`` copy is written to disk while LMDB is still copying,
    and the ``rebuild`` and ``pages`` engines leave the fsync to the caller.  ``destination``
    is the directory the copies are written under: ``auto`` picks ``pages``
    where it can share blocks with the source.  ``reflink`` ``"never"`` keeps
    the pages engine from sharing blocks (and ``auto`` from choosing it for that).
    """

    def __init__(self, engine: str, *, together: bool, writeback: bool = False,
                 destination: Path | None = None, reflink: str = "auto") -> None:
        self.engine = check_engine(engine)
        self.together = together
        self.writeback = writeback
        self.destination = destination if reflink != "never" else None
        self.reflink = reflink
        self.snapshots: dict[str, Snapshot] = {}
        self.chosen: dict[str, str] = {}
        #: Environments whose destination was found to share blocks with them.
        self.shares: set[str] = set()
        #: Whether the destination shares blocks with a source filesystem, by st_dev.
        self._shares_dev: dict[int, bool] = {}
        #: Wall-clock bounds of the moment the snapshots were begun in, if any were.
        self.snapshot_time: float | None = None
        self.snapshot_bound: float | None = None

    def prepare(self, envs: Sequence[tuple[str, EnvLocation]]) -> None:
        """Open and begin, back to back, the snapshots of the environments
        ``(key, location)`` that the engine copies from a snapshot; decide
        every other one's engine.  On failure every snapshot opened is closed."""
        for key, loc in envs:
            require_reader_slot(loc)
            self.chosen[key] = self.engine
        if self.engine not in (*SNAPSHOT_ENGINES, "auto") or not envs:
            return
        try:
            for key, loc in envs:
                self.snapshots[key] = open_snapshot(loc, begin=False)
            self.snapshot_time, self.snapshot_bound = begin_together(
                [self.snapshots[key] for key, _ in envs])
        except BaseException:
            self.close()
            raise
        if self.engine != "auto":
            return
        for key, _ in envs:
            self.chosen[key] = self._auto(key, self.snapshots[key])
            if self.chosen[key] not in SNAPSHOT_ENGINES:
                self.snapshots.pop(key).close()

    def _auto(self, key: str, snap: Snapshot) -> str:
        """``auto``'s engine for the begun snapshot of environment ``key``."""
        if self.destination is not None:
            where = self.destination if self.destination.is_dir() else self.destination.parent
            # One probe per source filesystem: each probe makes a file in the
            # destination (O_TMPFILE) and copies a block into it.
            st = os.fstat(snap.fileno())
            shares = self._shares_dev.get(st.st_dev)
            if shares is None:
                shares = shares_blocks(snap.fileno(), where)
                if st.st_size >= 4096:     # a smaller file proves nothing
                    self._shares_dev[st.st_dev] = shares
            if shares:
                self.shares.add(key)
                return "pages"
        if self.together:
            return "rebuild"
        from synfast.lmdb.choose import choose_engine

        return choose_engine(snap)

    def close(self) -> None:
        """Close every snapshot not yet used."""
        for snap in self.snapshots.values():
            snap.close()
        self.snapshots.clear()

    def copy(self, key: str, loc: EnvLocation, out: Path, display: Path,
             mode: int) -> EnvCopyResult:
        """Copy the environment ``key`` at ``loc`` into the new data file ``out``
        (created with ``mode``; removed again on failure).  Errors name
        ``display``, the final name of the output, or the source."""
        snap = self.snapshots.pop(key, None)
        if snap is None:
            return copy_environment(loc, out, engine=self.chosen[key], mode=mode,
                                    display_dst=display, writeback=self.writeback)
        data_st = os.stat(loc.data_path)
        if self.chosen[key] == "pages":
            return self._copy_pages(key, snap, loc, out, display, mode, data_st)
        raw = rebuild_data_file(snap, out, display, loc.data_path, sync=not self.writeback)
        os.chmod(out, mode & 0o7777)
        return EnvCopyResult(
            source=loc.path, destination=out, engine="rebuild", page_size=raw["page_size"],
            map_size=raw["map_size"], last_pgno=raw["last_pgno"],
            txnid=raw["txnid"], txnid_exact=True, txnid_min=raw["txnid"],
            txnid_max=raw["txnid"], bytes_written=raw["bytes_written"],
            source_allocated=data_st.st_blocks * 512, source_apparent=data_st.st_size,
            snapshot_time=self.snapshot_time or 0.0,
        )

    def _copy_pages(self, key: str, snap: Snapshot, loc: EnvLocation, out: Path,
                    display: Path, mode: int, data_st: os.stat_result) -> EnvCopyResult:
        raw = copy_pages(snap, out, display, loc.data_path, mode=mode, reflink=self.reflink,
                         shares=True if key in self.shares else None, sync=not self.writeback)
        return EnvCopyResult(
            source=loc.path, destination=out, engine="pages", page_size=raw["page_size"],
            map_size=raw["map_size"], last_pgno=raw["last_pgno"], txnid=raw["txnid"],
            txnid_exact=True, txnid_min=raw["txnid"], txnid_max=raw["txnid"],
            bytes_written=raw["bytes_written"] + raw["bytes_cloned"] + 2 * raw["page_size"],
            source_allocated=data_st.st_blocks * 512, source_apparent=data_st.st_size,
            snapshot_time=self.snapshot_time or 0.0,
        )
