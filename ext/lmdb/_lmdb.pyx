# cython: language_level=3
"""LMDB environment primitives over the system's liblmdb (mechanism only).

Every environment is opened read-only *with* its lock file (never MDB_NOLOCK):
the read transaction that a copy runs in is then registered in the lock file's
reader table, and a live writer will not reuse any page that the copy can still
reach.  Blocking calls (open, copy, tree walks) run with the GIL released.

Rule for callers: never open, with this module or with py-lmdb, an environment
that this process already has open.  POSIX record locks belong to the process,
and closing either handle drops the other's locks.
"""

from libc.string cimport memset
from libc.errno cimport errno

from clmdb cimport (
    MDB_env, MDB_txn, MDB_cursor, MDB_dbi, MDB_val, MDB_stat, MDB_envinfo,
    MDB_FIRST, MDB_NEXT, MDB_NEXT_NODUP,
    MDB_RDONLY, MDB_CP_COMPACT,
    MDB_REVERSEKEY, MDB_DUPSORT, MDB_INTEGERKEY, MDB_DUPFIXED, MDB_INTEGERDUP, MDB_REVERSEDUP,
    MDB_NOTFOUND, MDB_INCOMPATIBLE, MDB_INVALID, MDB_CORRUPTED, MDB_PAGE_NOTFOUND,
    MDB_VERSION_MISMATCH, MDB_PANIC, MDB_READERS_FULL,
    mdb_version, mdb_strerror,
    mdb_env_close, mdb_env_copyfd2,
    mdb_env_stat, mdb_env_info, mdb_reader_list,
    mdb_txn_begin, mdb_txn_abort, mdb_txn_id,
    mdb_dbi_open, mdb_dbi_close, mdb_stat,
    mdb_cursor_open, mdb_cursor_close, mdb_cursor_get,
)
from cunistd cimport SEEK_SET, close as c_close
from cfcntl cimport O_RDONLY, O_CLOEXEC, F_GETLK, F_WRLCK, F_UNLCK, flock, fcntl, open as c_open
from cstat cimport stat, fstat

include "pyos.pxi"
include "errors.pxi"
include "dbstats.pxi"
include "readenv.pxi"


class LmdbError(Exception):
    """An LMDB call failed.  Carries the environment's path, LMDB's error code and
    LMDB's own message (mdb_strerror), so the user sees what LMDB saw."""

    def __init__(self, path, code, message, operation=""):
        super().__init__(path, code, message, operation)
        self.path = path
        self.code = code
        self.message = message
        self.operation = operation

    def __str__(self):
        if self.operation:
            return f"{self.path}: {self.operation}: {self.message}"
        return f"{self.path}: {self.message}"


# Slots for named database handles: the walks here open one named database at a
# time and close it before the next (_open_named, mdb_dbi_close), so one slot
# serves any number of them.  LMDB sizes per-environment and per-transaction
# arrays by this number: 32767 slots cost 3.4 MB of address space per
# environment and read transaction, 130 KB of it touched, and about 0.2 ms.
cdef unsigned int NAMED_DB_SLOTS = 1

# Error codes callers may want to tell apart.
INVALID = MDB_INVALID
CORRUPTED = MDB_CORRUPTED
PAGE_NOTFOUND = MDB_PAGE_NOTFOUND
VERSION_MISMATCH = MDB_VERSION_MISMATCH
PANIC = MDB_PANIC
READERS_FULL = MDB_READERS_FULL

# Database flags, as mdb_dbi_flags reports them.
DB_FLAGS = {
    "reverse_key": MDB_REVERSEKEY,
    "dupsort": MDB_DUPSORT,
    "integer_key": MDB_INTEGERKEY,
    "dupfixed": MDB_DUPFIXED,
    "integer_dup": MDB_INTEGERDUP,
    "reverse_dup": MDB_REVERSEDUP,
}


def version():
    """The linked liblmdb's version as (major, minor, patch, banner)."""
    cdef int major, minor, patch
    cdef char *banner = mdb_version(&major, &minor, &patch)
    return major, minor, patch, banner.decode("ascii", "replace")


def strerror(int code):
    return mdb_strerror(code).decode("utf-8", "replace")


cdef class _ReadEnv:
    """An environment opened read-only with its lock file; closed on close() or GC."""
    cdef MDB_env *env
    cdef object path

    def __cinit__(self):
        self.env = NULL

    def __dealloc__(self):
        if self.env != NULL:
            mdb_env_close(self.env)
            self.env = NULL

    cdef int open(self, path, bint subdir, unsigned int maxdbs, bint nolock=False) except -1:
        # nolock (MDB_NOLOCK) is only for a private copy no other process
        # writes (a backup); never for a live environment.
        self.path = path
        return open_read_only(&self.env, path, subdir, maxdbs, nolock)

    cdef int begin_read(self, MDB_txn **txn, MDB_dbi *main_dbi) except -1:
        """Begin a read transaction and open the main database in it.  On
        failure nothing is left open; on success the caller aborts ``txn``."""
        cdef int rc
        with nogil:
            rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, txn)
        if rc:
            txn[0] = NULL
            raise_lmdb(self.path, rc, "txn_begin")
        rc = mdb_dbi_open(txn[0], NULL, 0, main_dbi)
        if rc:
            mdb_txn_abort(txn[0])
            txn[0] = NULL
            raise_lmdb(self.path, rc, "open main database")
        return 0

    cdef int check_not_truncated(self) except -1:
        """Refuse a data file shorter than its meta page says: mapping pages past
        the end of a file would kill the process with SIGBUS, not raise."""
        cdef MDB_envinfo info
        cdef MDB_stat mst
        mdb_env_info(self.env, &info)
        mdb_env_stat(self.env, &mst)
        err = truncation_error(self.env, self.path, &info, &mst)
        if err is not None:
            raise err
        return 0


cdef int _collect_reader(const char *msg, void *ctx) noexcept nogil:
    # mdb_reader_list is called with the GIL held (see _readers); one line per
    # live reader slot.
    with gil:
        (<list>ctx).append(<bytes>msg)
    return 0


cdef list _readers(MDB_env *env):
    cdef list lines = []
    mdb_reader_list(env, _collect_reader, <void *>lines)
    readers = []
    for raw in lines:
        parts = raw.decode("ascii", "replace").split()
        if len(parts) == 3 and parts[0].isdigit():
            readers.append({
                "pid": int(parts[0]),
                "thread": int(parts[1], 16),
                "txnid": None if parts[2] == "-" else int(parts[2]),
            })
    return readers


def env_info(path, bint subdir=True):
    """Map size, page size, last page, last txn, main-db stats and reader slots."""
    cdef _ReadEnv e = _ReadEnv()
    cdef MDB_envinfo info
    cdef MDB_stat st
    e.open(path, subdir, 0)
    mdb_env_info(e.env, &info)
    mdb_env_stat(e.env, &st)
    readers = _readers(e.env)
    return {
        "map_size": info.me_mapsize,
        "page_size": st.ms_psize,
        "last_pgno": info.me_last_pgno,
        "last_txnid": info.me_last_txnid,
        "max_readers": info.me_maxreaders,
        "reader_slots_used": info.me_numreaders,
        "readers": readers,
        "entries": st.ms_entries,
        "depth": st.ms_depth,
        "branch_pages": st.ms_branch_pages,
        "leaf_pages": st.ms_leaf_pages,
        "overflow_pages": st.ms_overflow_pages,
    }


cdef list _named_databases(path, MDB_env *env, MDB_txn *txn, MDB_dbi main_dbi):
    """(label, name) of every named database of ``txn``, in key order; none is
    left open (open each with _open_named, close it with mdb_dbi_close).

    Named databases are the keys of the main database whose values are database
    records; other keys of the main database are plain data.  Names that are
    not valid UTF-8 are labelled ``"0x<hex>"``; names holding NUL bytes cannot
    be opened through LMDB's API and are passed over.
    """
    cdef MDB_cursor *cur = NULL
    cdef MDB_val key, val
    cdef MDB_dbi dbi
    cdef int rc
    cdef bytes name
    rc = mdb_cursor_open(txn, main_dbi, &cur)
    if rc:
        raise_lmdb(path, rc, "cursor_open")
    names = []
    rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST)
    while rc == 0:
        names.append((<char *>key.mv_data)[:key.mv_size])
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT_NODUP)
    mdb_cursor_close(cur)
    if rc != MDB_NOTFOUND:
        raise_lmdb(path, rc, "walk main database")
    found = []
    for name in names:
        if b"\0" in name:
            continue
        rc = mdb_dbi_open(txn, name, 0, &dbi)
        if rc == MDB_INCOMPATIBLE or rc == MDB_NOTFOUND:
            continue          # a plain key of the main database
        if rc:
            raise_lmdb(path, rc, f"open database {name!r}")
        mdb_dbi_close(env, dbi)
        try:
            label = name.decode("utf-8")
        except UnicodeDecodeError:
            label = "0x" + name.hex()
        found.append((label, name))
    return found


cdef MDB_dbi _open_named(path, MDB_txn *txn, bytes name) except? 0:
    """Open the named database ``name`` (one _named_databases found) in ``txn``;
    the caller closes the handle with mdb_dbi_close before opening another."""
    cdef MDB_dbi dbi = 0
    cdef int rc = mdb_dbi_open(txn, name, 0, &dbi)
    if rc:
        raise_lmdb(path, rc, f"open database {name!r}")
    return dbi


cdef dict _db_summary(dict st):
    """env_databases' view of one database's _dbstat (dbstats.pxi): the names of
    its flags (DB_FLAGS are all layout flags, so none is masked away), entries,
    depth and pages of every kind."""
    return {
        "flags": [name for name, bit in DB_FLAGS.items() if st["flags"] & bit],
        "entries": st["entries"],
        "depth": st["depth"],
        "pages": st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"],
    }


def env_databases(path, bint subdir=True):
    """Stats of the main database and of every named database, in one read txn.

    Named databases are the keys of the main database whose values are database
    records; other keys of the main database are plain data.  Returns
    ``{"txnid": N, "main": {...}, "named": {name: {...}}}``.  Names that are not
    valid UTF-8 or hold NUL bytes are reported with the key ``"0x<hex>"``.
    """
    cdef _ReadEnv e = _ReadEnv()
    cdef MDB_txn *txn = NULL
    cdef MDB_dbi dbi, main_dbi
    e.open(path, subdir, NAMED_DB_SLOTS)
    e.begin_read(&txn, &main_dbi)
    try:
        result = {"txnid": mdb_txn_id(txn), "main": _db_summary(_dbstat(txn, main_dbi)),
                  "named": {}}
        for label, name in _named_databases(path, e.env, txn, main_dbi):
            dbi = _open_named(path, txn, name)
            try:
                result["named"][label] = _db_summary(_dbstat(txn, dbi))
            finally:
                mdb_dbi_close(e.env, dbi)
        result["main_plain_keys"] = result["main"]["entries"] - len(result["named"])
        return result
    finally:
        mdb_txn_abort(txn)


def env_copy(path, int fd, bint subdir=True, bint compact=True):
    """Copy the environment at ``path`` into the empty, writable file ``fd`` with
    mdb_env_copyfd2 (MDB_CP_COMPACT when ``compact``).

    LMDB takes its own read transaction when the copy starts, so the copy is a
    consistent snapshot.  Returns the page size, the environment's last page and
    last txn id seen just before and just after the copy (the snapshot lies
    between them), and the bytes written.
    """
    cdef _ReadEnv e = _ReadEnv()
    cdef MDB_envinfo before, after
    cdef MDB_stat st
    cdef stat out
    cdef int rc
    cdef unsigned int flags = MDB_CP_COMPACT if compact else 0
    e.open(path, subdir, 0)
    e.check_not_truncated()
    mdb_env_stat(e.env, &st)
    mdb_env_info(e.env, &before)
    with nogil:
        rc = mdb_env_copyfd2(e.env, fd, flags)
    if rc:
        raise_lmdb(path, rc, "compacting copy" if compact else "copy")
    mdb_env_info(e.env, &after)
    if fstat(fd, &out) != 0:
        raise OSError(errno, "cannot stat copy")
    return {
        "page_size": st.ms_psize,
        "map_size": before.me_mapsize,
        "last_pgno_before": before.me_last_pgno,
        "txnid_before": before.me_last_txnid,
        "last_pgno_after": after.me_last_pgno,
        "txnid_after": after.me_last_txnid,
        "bytes_written": out.st_size,
        "compact": bool(compact),
    }


def lock_holder(lock_path):
    """PID of a process holding LMDB's shared lock on ``lock_path``, else 0.

    Every process that has an environment open holds a read lock on byte 0 of its
    lock file; F_GETLK asks whether a write lock there would conflict.  Our own
    process's locks never conflict with us, so this only sees other processes.
    Closing the descriptor drops this process's locks on the file, so never call
    it for an environment this process has open.
    """
    return lock_state(lock_path)[1]


cdef int _walk_count(MDB_txn *txn, MDB_dbi dbi, size_t *count, size_t *value_bytes) noexcept nogil:
    """Visit every entry (duplicates included) of one database with a cursor,
    touching each value's first and last byte so that an overflow page that
    points outside the file, or a damaged page, is found now.  Returns an LMDB
    code (0 when the walk reached the end)."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val key, val
    cdef int rc
    cdef volatile unsigned char sink = 0
    count[0] = 0
    value_bytes[0] = 0
    rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        return rc
    rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST)
    while rc == 0:
        count[0] += 1
        value_bytes[0] += val.mv_size
        if val.mv_size:
            sink ^= (<unsigned char *>val.mv_data)[0]
            sink ^= (<unsigned char *>val.mv_data)[val.mv_size - 1]
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)
    mdb_cursor_close(cur)
    if rc == MDB_NOTFOUND:
        return 0
    return rc


def env_walk(path, bint subdir=True, bint nolock=True, bint walk=True):
    """Open the environment at ``path`` read-only and count the entries of the
    main database and of every named database.

    ``nolock`` opens it with MDB_NOLOCK: only for a private copy that no other
    process writes (a backup), never a live environment; no lock file is
    created.  With ``walk`` every entry is visited with a cursor (a full check
    that every page is reachable and readable) and the counts are those of the
    walk; without it they come from the database records (cheap).  A data
    file shorter than its meta page says is refused before anything is mapped.

    Returns ``{"txnid", "page_size", "map_size", "last_pgno", "main": {"entries",
    "value_bytes"}, "named": {label: {"entries", "value_bytes"}}}``; labels as
    env_databases makes them.
    """
    cdef _ReadEnv e = _ReadEnv()
    cdef MDB_txn *txn = NULL
    cdef MDB_dbi dbi, main_dbi
    cdef MDB_stat st
    cdef MDB_envinfo info
    cdef int rc
    cdef size_t n = 0, vbytes = 0
    e.open(path, subdir, NAMED_DB_SLOTS, nolock)
    e.check_not_truncated()
    mdb_env_info(e.env, &info)
    mdb_env_stat(e.env, &st)
    e.begin_read(&txn, &main_dbi)
    try:
        result = {"txnid": mdb_txn_id(txn), "page_size": st.ms_psize,
                  "map_size": info.me_mapsize, "last_pgno": info.me_last_pgno, "named": {}}
        if walk:
            with nogil:
                rc = _walk_count(txn, main_dbi, &n, &vbytes)
            if rc:
                raise_lmdb(path, rc, "walk main database")
            result["main"] = {"entries": n, "value_bytes": vbytes}
        else:
            mdb_stat(txn, main_dbi, &st)
            result["main"] = {"entries": st.ms_entries, "value_bytes": None}
        for label, name in _named_databases(path, e.env, txn, main_dbi):
            dbi = _open_named(path, txn, name)
            if walk:
                with nogil:
                    rc = _walk_count(txn, dbi, &n, &vbytes)
                mdb_dbi_close(e.env, dbi)
                if rc:
                    raise_lmdb(path, rc, f"walk database {label!r}")
                result["named"][label] = {"entries": n, "value_bytes": vbytes}
            else:
                mdb_stat(txn, dbi, &st)
                mdb_dbi_close(e.env, dbi)
                result["named"][label] = {"entries": st.ms_entries, "value_bytes": None}
        return result
    finally:
        mdb_txn_abort(txn)


def lock_state(lock_path):
    """Whether another process holds LMDB's shared lock on ``lock_path``, and
    its pid: ``(held, pid)``.  Unlike lock_holder this tells "held by a process
    the kernel will not name" (pid 0: another PID namespace, e.g. a service in
    a container sharing the directory) from "not held".  Same caveat: never
    call it for an environment this process has open."""
    cdef bytes b = _fs(lock_path)
    cdef const char *p = b
    cdef flock fl
    cdef int fd, rc
    with nogil:
        fd = c_open(p, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        raise OSError(errno, "cannot open lock file", lock_path)
    memset(&fl, 0, sizeof(fl))
    fl.l_type = F_WRLCK
    fl.l_whence = SEEK_SET
    fl.l_start = 0
    fl.l_len = 1
    rc = fcntl(fd, F_GETLK, &fl)
    err = errno
    c_close(fd)
    if rc != 0:
        raise OSError(err, "F_GETLK failed", lock_path)
    if fl.l_type == F_UNLCK:
        return False, 0
    return True, fl.l_pid
