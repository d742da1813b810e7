# cython: language_level=3
"""The "rebuild" LMDB engine: a read snapshot of a live environment, rewritten in
key order into a new environment (mechanism only; the policy lives in the
synfast.lmdb package).  The job itself, run without the GIL, is in
rebuild_job.pxi; per-database statistics in dbstats.pxi.

Why a rebuild instead of LMDB's own compacting copy: mdb_env_copyfd2 with
MDB_CP_COMPACT hands every overflow value from its tree-walking thread to its
writer thread one at a time, which makes it many times slower than a plain file
copy on environments with many values larger than a page.  Reading every
database with a cursor and writing a fresh environment with MDB_APPEND keeps
everything in one thread, and appending fills every page completely, so the
output is also smaller than a compacting copy (which keeps the source's fill).

Snapshot rules:
- The source is opened read-only WITH its lock file (never MDB_NOLOCK): the read
  transaction is registered in the reader table, so a live writer in another
  process will not reuse any page the snapshot can still reach.
- The read transaction is begun by the caller's schedule (at construction, or by
  begin_all() for several snapshots at once): a backup begins the snapshots of
  all its environments first and copies them afterwards, so every copy reflects
  (nearly) one moment.
- Never open, with this module or py-lmdb, an environment this process already
  has open: POSIX record locks belong to the process, and closing either handle
  drops the other's locks.

Output rules: the new environment is private until the caller renames it into
place, so it is opened with MDB_NOLOCK (no lock file is created) and MDB_NOSYNC
(no fsync per commit), without MDB_WRITEMAP (its file then holds only written
pages), and it is fsynced once (mdb_env_sync force) before rebuild() returns,
unless the caller fsyncs the file itself (sync=False: one fsync per output,
not two, for a caller that fsyncs every file it writes anyway).

Custom comparators cannot be seen through LMDB's API: an environment whose
databases were written with mdb_set_compare/mdb_set_dupsort must not be rebuilt
(its order differs from the default one, and MDB_APPEND would refuse it or the
copy would be unreadable by its owner).  py-lmdb, and so Synapse, cannot set
custom comparators; the physical engines (raw, compact) remain for such cases.
"""

from libc.stdlib cimport malloc, free
from libc.errno cimport errno

from clmdb cimport (
    MDB_env, MDB_txn, MDB_stat, MDB_envinfo, MDB_RDONLY, MDB_BAD_TXN,
    mdb_env_close, mdb_env_stat, mdb_env_info, mdb_env_get_fd,
    mdb_txn_begin, mdb_txn_abort, mdb_txn_id, mdb_dbi_open, mdb_dbi_flags,
)
from cstat cimport stat, fstat

from synfast.lmdb._lmdb import LmdbError

include "pyos.pxi"
include "errors.pxi"
include "dbstats.pxi"
include "readenv.pxi"
include "rebuild_job.pxi"
include "pages.pxi"

# Default bounds of one write transaction of the output (see rebuild_job.pxi).
DEFAULT_TXN_BYTES = DEFAULT_TXN_BYTES_C
DEFAULT_TXN_ENTRIES = DEFAULT_TXN_ENTRIES_C

# Slots for named database handles in a snapshot's environment.  A snapshot
# opens the named databases one at a time and closes each handle before the
# next (rebuild_job.pxi, _open_named/_close_named), so one slot serves any
# number of them.  LMDB sizes per-environment and per-read-transaction arrays
# by this number: with 32767 slots every snapshot cost 3.4 MB of address
# space, 130 KB of it touched, and about 0.2 ms to set up and tear down, which
# a service of thousands of small environments paid thousands of times.
NAMED_DB_SLOTS = 1


cdef class Snapshot:
    """One read transaction on an LMDB environment, opened read-only with its
    lock file.  ``begin=False`` opens the environment without beginning the
    transaction, so that several snapshots can be begun together (begin_all)."""

    cdef MDB_env *env
    cdef MDB_txn *txn
    cdef readonly object path
    cdef readonly bint subdir
    cdef readonly size_t txnid
    cdef readonly unsigned int page_size
    cdef readonly size_t map_size
    cdef readonly size_t last_pgno
    cdef readonly unsigned int maxdbs
    # The meta page of the transaction's txnid, captured as it began (pages.pxi).
    cdef unsigned char meta_buf[META_BYTES]
    cdef int meta_state

    def __cinit__(self):
        self.env = NULL
        self.txn = NULL
        self.meta_state = 0

    def __init__(self, path, bint subdir=True, bint begin=True,
                 unsigned int maxdbs=NAMED_DB_SLOTS):
        import os
        self.path = os.fspath(path)
        self.subdir = subdir
        self.maxdbs = maxdbs if maxdbs else 1
        open_read_only(&self.env, self.path, subdir, self.maxdbs, False)
        if begin:
            self.begin()

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        if self.txn != NULL:
            mdb_txn_abort(self.txn)
            self.txn = NULL
        if self.env != NULL:
            mdb_env_close(self.env)
            self.env = NULL

    cdef int _begun(self) except -1:
        """Record the snapshot's facts once its transaction exists, and refuse a
        data file shorter than its meta page says (mapping pages past the end
        of a file kills the process with SIGBUS instead of raising)."""
        cdef MDB_envinfo info
        cdef MDB_stat st
        self.txnid = mdb_txn_id(self.txn)
        mdb_env_info(self.env, &info)
        mdb_env_stat(self.env, &st)
        self.page_size = st.ms_psize
        self.map_size = info.me_mapsize
        self.last_pgno = info.me_last_pgno
        err = truncation_error(self.env, self.path, &info, &st)
        if err is not None:
            self.close()
            raise err
        return 0

    def begin(self):
        """Begin the read transaction (once).  Returns its txn id."""
        cdef int rc
        if self.env == NULL:
            raise ValueError("snapshot is closed")
        if self.txn != NULL:
            raise ValueError("snapshot already begun")
        with nogil:
            rc = begin_captured(self.env, &self.txn, self.meta_buf, &self.meta_state)
        if rc:
            self.txn = NULL
            raise_lmdb(self.path, rc, "txn_begin")
        self._begun()
        return self.txnid

    @property
    def meta_captured(self):
        """Whether the meta page of the snapshot's own transaction was captured
        as it began (False: the environment committed faster than a
        transaction could be begun and its meta page read, every time tried)."""
        return self.meta_state == 1

    def fileno(self):
        """The data file's descriptor, LMDB's own (valid until close())."""
        cdef int fd
        if self.env == NULL:
            raise ValueError("snapshot is closed")
        rc = mdb_env_get_fd(self.env, &fd)
        if rc:
            raise_lmdb(self.path, rc, "get_fd")
        return fd

    def page_plan(self, size_t merge_pages=0):
        """The pages engine's plan for this snapshot: its meta page checked
        against the snapshot's statistics, its free database read, and the
        runs of pages in use from page 2 to its last page.

        Returns ``{"txnid", "page_size", "map_size", "last_pgno", "used_pages",
        "free_pages", "free_records", "dupsort", "ranges", "holes", "meta"}``:
        ``ranges`` is the (offset, length) byte pairs of the runs as native
        int64s, a free gap shorter than ``merge_pages`` copied with its
        neighbours; ``meta`` the captured bytes of the meta page (page header
        and MDB_meta).  Raises LmdbError (MDB_CORRUPTED) when the meta page or
        the free database does not match the snapshot.
        """
        cdef Job j
        cdef stat fst
        self._check_ready()
        if self.meta_state > 1:
            raise OSError(self.meta_state - 1, "cannot read the meta page", self.path)
        if self.meta_state != 1:
            raise LmdbError(self.path, MDB_BAD_TXN,
                            f"the meta page of txn {self.txnid} was not in its slot in any "
                            f"of {CAPTURE_ATTEMPTS} tries: a writer committing without "
                            f"pause, or a damaged meta page", "capture meta")
        fd = self.fileno()
        if fstat(fd, &fst) != 0:
            raise OSError(errno, "cannot stat data file", self.path)
        _job_init(&j)
        try:
            self._find_databases(&j)
            return plan_pages(self.txn, self.path, self.page_size, self.meta_buf, &j,
                              merge_pages, fd, fst.st_size)
        finally:
            _job_free(&j)

    @property
    def begun(self):
        return self.txn != NULL

    @property
    def closed(self):
        return self.env == NULL

    def close(self):
        """End the read transaction and close the environment (idempotent)."""
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        state = "closed" if self.env == NULL else (
            f"txnid={self.txnid}" if self.txn != NULL else "not begun")
        return f"<Snapshot {self.path!r} {state}>"

    cdef int _check_ready(self) except -1:
        if self.env == NULL:
            raise ValueError("snapshot is closed")
        if self.txn == NULL:
            raise ValueError("snapshot not begun")
        return 0

    cdef int _find_databases(self, Job *j) except -1:
        """Open the main database in the snapshot's transaction and list its
        named databases in ``j``, with their layout flags and the main one's.
        No named database is left open: each use opens and closes it
        (_open_named, _close_named)."""
        cdef unsigned int mflags = 0
        cdef int rc
        j.src_env = self.env
        j.src_txn = self.txn
        rc = mdb_dbi_open(self.txn, NULL, 0, &j.src_main)
        if rc:
            raise_lmdb(self.path, rc, "open main database")
        mdb_dbi_flags(self.txn, j.src_main, &mflags)
        j.main_flags = mflags & DB_LAYOUT_FLAGS
        with nogil:
            rc = _find_named(j)
        if rc:
            raise_lmdb(self.path, rc, j.op.decode())
        return 0

    def stats(self, size_t sample=0):
        """Page and entry counts of the main database and of every named database
        as seen by this snapshot (cheap: read from the database records).

        Returns ``{"txnid", "page_size", "map_size", "last_pgno", "main": {...},
        "named": {name_bytes: {...}}}``; each inner dict has ``flags`` (the raw
        LMDB flag bits), ``entries``, ``depth``, ``branch_pages``,
        ``leaf_pages`` and ``overflow_pages``.  With ``sample`` > 0, the first
        ``sample`` entries of each non-DUPSORT database are read to estimate
        how many leaf pages a rebuild would fill (``sampled_entries``,
        ``sampled_node_bytes``: the leaf room those entries take,
        ``sampled_node_sq``: the sum of its squares).
        """
        cdef Job j
        cdef size_t i
        cdef MDB_dbi dbi
        cdef int rc
        self._check_ready()
        _job_init(&j)
        try:
            self._find_databases(&j)
            main = _dbstat(self.txn, j.src_main, sample, self.page_size)
            named = {}
            for i in range(j.n_named):
                rc = _open_named(&j, i, &dbi)
                if rc:
                    raise_lmdb(self.path, rc, "open database")
                try:
                    named[j.named[i].name[:j.named[i].len]] = _dbstat(
                        self.txn, dbi, sample, self.page_size)
                finally:
                    _close_named(&j, dbi)
            return {
                "txnid": self.txnid,
                "page_size": self.page_size,
                "map_size": self.map_size,
                "last_pgno": self.last_pgno,
                "main": main,
                "named": named,
            }
        finally:
            _job_free(&j)

    def rebuild(self, dst_path, subdir=None, *, size_t txn_bytes=DEFAULT_TXN_BYTES,
                size_t txn_entries=DEFAULT_TXN_ENTRIES, bint writeback=True,
                int trim_threshold=-1, size_t release_bytes=0, bint sync=True):
        """Write a new environment at ``dst_path`` holding this snapshot's data.

        ``dst_path`` must not exist: it becomes a directory holding ``data.mdb``
        (``subdir`` true; default: the source's layout) or a single file.  The
        output has the source's map size and database flags, is written in write
        transactions of at most about ``txn_bytes`` bytes or ``txn_entries``
        entries (this bounds private memory), and is fsynced before returning
        (``sync``; false leaves that to a caller that fsyncs the file itself).
        On error the partial output is left for the caller to remove.

        ``release_bytes`` > 0 unmaps the source's pages (MADV_DONTNEED) after
        every so many bytes read, which bounds the resident size the map adds.
        Off by default: the kernel maps a whole large page-cache folio (up to
        2 MiB) per fault, so the pages the key-order walk comes back to are
        mapped again and again; on dataset A releasing every 8 MiB made the
        rebuild 2.5-3x slower (5.6-5.8 s against 2.0-2.3 s).  The pages are
        the page cache's, clean and reclaimable, not private memory.
        """
        import os
        cdef Job j
        cdef int rc
        cdef MDB_env *dst = NULL
        cdef bytes bdst
        cdef double t0 = _now()
        cdef int dfd
        cdef stat fst
        cdef MDB_envinfo dinfo
        cdef list box = []
        self._check_ready()
        if subdir is None:
            subdir = self.subdir
        dst_path = os.fspath(dst_path)
        bdst = os.fsencode(dst_path)
        _job_setup(&j, self.env, txn_bytes, txn_entries, release_bytes, box)
        j.sync = sync
        try:
            self._find_databases(&j)
            _open_output(&dst, dst_path, bdst, subdir, self.map_size, j.n_named)
            j.dst_env = dst
            if writeback:
                rc = mdb_env_get_fd(dst, &dfd)
                if rc:
                    raise_lmdb(dst_path, rc, "get_fd")
                j.writeback_fd = dfd
            _keep_freed_heap(trim_threshold, j.txn_bytes)
            with nogil:
                rc = _rebuild(&j)
            if box:
                raise box[0]
            if rc:
                _raise_job_error(&j, rc, self.path, dst_path)
            rc = mdb_env_get_fd(dst, &dfd)
            if rc:
                raise_lmdb(dst_path, rc, "get_fd")
            if fstat(dfd, &fst) != 0:
                raise OSError(errno, "cannot stat output", dst_path)
            mdb_env_info(dst, &dinfo)
            return {
                "engine": "rebuild",
                "txnid": self.txnid,
                "page_size": self.page_size,
                "map_size": self.map_size,
                "entries": j.entries,
                "data_bytes": j.data_bytes,
                "named_databases": j.n_named,
                "commits": j.commits,
                "bytes_written": fst.st_size,
                "last_pgno": dinfo.me_last_pgno,
                "subdir": bool(subdir),
                "sync_seconds": j.sync_seconds,
                "elapsed": _now() - t0,
            }
        finally:
            if dst != NULL:
                mdb_env_close(dst)
            # The output's dbi handles were closed with it; the source's were
            # closed after each database was copied.
            _job_free(&j)


def begin_all(snapshots):
    """Begin the read transactions of several opened snapshots back to back,
    without the GIL, so that they reflect one moment as closely as separate
    environments allow (opening environments is slow; beginning is not).
    Returns their txn ids in order."""
    cdef list snaps = list(snapshots)
    cdef Py_ssize_t n = len(snaps), i
    cdef MDB_env **envs = <MDB_env **>malloc((n + 1) * sizeof(MDB_env *))
    cdef MDB_txn **txns = <MDB_txn **>malloc((n + 1) * sizeof(MDB_txn *))
    cdef unsigned char **bufs = <unsigned char **>malloc((n + 1) * sizeof(unsigned char *))
    cdef int **states = <int **>malloc((n + 1) * sizeof(int *))
    cdef int rc = 0
    cdef Py_ssize_t failed = -1
    cdef Snapshot s
    if envs == NULL or txns == NULL or bufs == NULL or states == NULL:
        free(envs)
        free(txns)
        free(bufs)
        free(states)
        raise MemoryError()
    try:
        for i in range(n):
            s = <Snapshot?>snaps[i]
            if s.env == NULL:
                raise ValueError(f"snapshot of {s.path!r} is closed")
            if s.txn != NULL:
                raise ValueError(f"snapshot of {s.path!r} already begun")
            envs[i] = s.env
            txns[i] = NULL
            bufs[i] = s.meta_buf
            states[i] = &s.meta_state
        with nogil:
            for i in range(n):
                rc = begin_captured(envs[i], &txns[i], bufs[i], states[i])
                if rc:
                    txns[i] = NULL
                    failed = i
                    break
        if failed >= 0:
            for i in range(failed):
                mdb_txn_abort(txns[i])
            s = snaps[failed]
            raise_lmdb(s.path, rc, "txn_begin")
        for i in range(n):
            s = snaps[i]
            s.txn = txns[i]
        for i in range(n):
            s = snaps[i]
            s._begun()
        return [(<Snapshot>x).txnid for x in snaps]
    finally:
        free(envs)
        free(txns)
        free(bufs)
        free(states)
