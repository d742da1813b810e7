# The rebuild's job (_rebuild.pyx's Snapshot.rebuild and Snapshot.stats): a
# Job struct that carries one rebuild's inputs, progress and error report; the
# source's named databases; the output environment; and the copy itself, every
# database in key order with MDB_APPEND, in bounded write transactions, run
# without the GIL.  Included textually by _rebuild.pyx only, after errors.pxi
# and dbstats.pxi (raise_lmdb, DB_LAYOUT_FLAGS).

from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memchr, memcmp
from cpython.exc cimport PyErr_CheckSignals
from posix.time cimport clock_gettime, timespec as c_timespec, CLOCK_MONOTONIC

from clmdb cimport (
    MDB_env, MDB_txn, MDB_cursor, MDB_dbi, MDB_val,
    MDB_FIRST, MDB_NEXT_DUP, MDB_NEXT_NODUP,
    MDB_NOSUBDIR, MDB_NOLOCK, MDB_NOSYNC,
    MDB_DUPSORT, MDB_CREATE, MDB_APPEND, MDB_APPENDDUP, MDB_NOTFOUND, MDB_INCOMPATIBLE,
    mdb_env_create, mdb_env_open, mdb_env_set_mapsize, mdb_env_set_maxdbs, mdb_env_get_fd,
    mdb_env_sync, mdb_txn_begin, mdb_txn_commit, mdb_txn_abort, mdb_dbi_open, mdb_dbi_flags,
    mdb_dbi_close, mdb_cursor_open, mdb_cursor_close, mdb_cursor_get, mdb_cursor_put,
)
from cfcntl cimport SYNC_FILE_RANGE_WRITE, sync_file_range
from cstat cimport stat, fstat
from cmalloc cimport M_TRIM_THRESHOLD, mallopt
from cmman cimport MADV_DONTNEED, madvise

# A named database's record in the main database is a node whose data is an
# MDB_db struct (LMDB-internal): 4 + 2 + 2 bytes of header fields and five
# pgno_t/size_t words.  Only keys with data of this size can be named databases,
# so other keys of the main database are never looked up as database names.
cdef size_t DB_RECORD_SIZE = 8 + 5 * sizeof(size_t)

# Where an error happened, for the message.
cdef enum Side:
    SIDE_SRC = 0
    SIDE_DST = 1


cdef struct NamedDB:
    char *name          # NUL-terminated copy of the key
    size_t len
    MDB_dbi dst         # the output's handle (the source's is opened when used)
    unsigned int flags


cdef struct Job:
    # inputs
    MDB_env *src_env
    MDB_txn *src_txn
    MDB_env *dst_env
    size_t txn_bytes
    size_t txn_entries
    int writeback_fd        # >= 0: start writeback of the output after each commit
    bint sync               # fsync the output once it is complete
    void *src_map           # the source's read-only map, released as the copy goes
    size_t src_map_len
    size_t since_release    # bytes read from the source since the last release
    size_t release_bytes    # release after this many bytes read
    void *signal_box        # a Python list; an interrupt exception lands in it
    # named databases found in the source's main database, in key order
    NamedDB *named
    size_t n_named
    size_t cap_named
    MDB_dbi src_main
    unsigned int main_flags
    # progress
    MDB_txn *dst_txn
    size_t entries
    size_t data_bytes
    size_t pending_bytes
    size_t pending_entries
    size_t commits
    double sync_seconds
    # error report
    int rc
    int side
    const char *op
    long db_index           # -1: the main database; -2: none


# Default bounds of one write transaction of the output.  Dirty pages of a
# transaction live in private memory until it commits (the output is not
# opened with MDB_WRITEMAP), so these bound the engine's memory.
cdef size_t DEFAULT_TXN_BYTES_C = 32 << 20
cdef size_t DEFAULT_TXN_ENTRIES_C = 200_000


cdef void _job_init(Job *j) noexcept nogil:
    j.src_env = NULL
    j.src_map = NULL
    j.src_map_len = 0
    j.since_release = 0
    j.release_bytes = 0
    j.src_txn = NULL
    j.dst_env = NULL
    j.txn_bytes = DEFAULT_TXN_BYTES_C
    j.txn_entries = DEFAULT_TXN_ENTRIES_C
    j.writeback_fd = -1
    j.sync = True
    j.signal_box = NULL
    j.named = NULL
    j.n_named = 0
    j.cap_named = 0
    j.src_main = 0
    j.main_flags = 0
    j.dst_txn = NULL
    j.entries = 0
    j.data_bytes = 0
    j.pending_bytes = 0
    j.pending_entries = 0
    j.commits = 0
    j.sync_seconds = 0
    j.rc = 0
    j.side = SIDE_SRC
    j.op = ""
    j.db_index = -2


cdef void _job_free(Job *j) noexcept nogil:
    cdef size_t i
    if j.dst_txn != NULL:
        mdb_txn_abort(j.dst_txn)
        j.dst_txn = NULL
    for i in range(j.n_named):
        free(j.named[i].name)
    free(j.named)
    j.named = NULL
    j.n_named = 0
    j.cap_named = 0


cdef int _job_setup(Job *j, MDB_env *src_env, size_t txn_bytes, size_t txn_entries,
                    size_t release_bytes, list box) except -1:
    """Initialise ``j`` for Snapshot.rebuild: write transactions of at most
    ``txn_bytes`` bytes or ``txn_entries`` entries (at least 1 each); the
    source's map released after every ``release_bytes`` read (0: never); and
    ``box``, the list an interrupt's exception lands in."""
    _job_init(j)
    span = _source_map(src_env) if release_bytes else None
    j.release_bytes = release_bytes
    if span is not None:
        j.src_map = <void *><size_t>span[0]
        j.src_map_len = <size_t>span[1]
    j.txn_bytes = txn_bytes if txn_bytes >= 1 else 1
    j.txn_entries = txn_entries if txn_entries >= 1 else 1
    j.signal_box = <void *>box
    return 0


cdef double _now() noexcept nogil:
    cdef c_timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int _fail(Job *j, int rc, int side, const char *op, long db) noexcept nogil:
    j.rc = rc
    j.side = side
    j.op = op
    j.db_index = db
    return rc


cdef _raise_job_error(Job *j, int rc, src_path, dst_path):
    """Raise the LmdbError that ``j`` recorded, naming the database it happened
    in and the environment (source or output) whose call failed."""
    where = ""
    if j.db_index == -1:
        where = " (main database)"
    elif j.db_index >= 0:
        name = j.named[j.db_index].name[:j.named[j.db_index].len]
        where = f" (database {name.decode('utf-8', 'backslashreplace')!r})"
    op = j.op.decode() + where
    if j.side == SIDE_SRC:
        raise_lmdb(src_path, rc, op)
    raise_lmdb(dst_path, rc, op)


cdef bint _interrupted(void *box) noexcept nogil:
    """Take the GIL briefly to run Python's signal handlers (Ctrl-C).  An
    exception they raise is stored in ``box`` and re-raised by the caller."""
    cdef bint hit = False
    with gil:
        try:
            PyErr_CheckSignals()
        except BaseException as exc:
            (<list>box).append(exc)
            hit = True
    return hit


cdef inline int _open_named(Job *j, size_t i, MDB_dbi *dbi) noexcept nogil:
    """Open the source's named database ``i`` in its one slot: close it before the next."""
    return mdb_dbi_open(j.src_txn, j.named[i].name, 0, dbi)


cdef inline void _close_named(Job *j, MDB_dbi dbi) noexcept nogil:
    mdb_dbi_close(j.src_env, dbi)       # frees the slot; a read txn wrote nothing


cdef int _find_named(Job *j) noexcept nogil:
    """Walk the source's main database and record which keys are named databases,
    with their flags (each opened in the snapshot's transaction and closed again)."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val key, val
    cdef MDB_dbi dbi
    cdef unsigned int flags
    cdef char *name
    cdef NamedDB *grown
    cdef int rc = mdb_cursor_open(j.src_txn, j.src_main, &cur)
    if rc:
        return _fail(j, rc, SIDE_SRC, "cursor_open", -1)
    rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST)
    while rc == 0:
        if (val.mv_size == DB_RECORD_SIZE and key.mv_size > 0
                and memchr(key.mv_data, 0, key.mv_size) == NULL):
            name = <char *>malloc(key.mv_size + 1)
            if name == NULL:
                rc = _fail(j, 12, SIDE_SRC, "out of memory", -1)   # ENOMEM
                break
            memcpy(name, key.mv_data, key.mv_size)
            name[key.mv_size] = 0
            rc = mdb_dbi_open(j.src_txn, name, 0, &dbi)
            if rc == MDB_INCOMPATIBLE or rc == MDB_NOTFOUND:
                free(name)          # a plain key whose value happens to be 48 bytes
            elif rc:
                free(name)
                _fail(j, rc, SIDE_SRC, "open database", -1)
                break
            else:
                flags = 0
                mdb_dbi_flags(j.src_txn, dbi, &flags)
                _close_named(j, dbi)
                if j.n_named == j.cap_named:
                    j.cap_named = j.cap_named * 2 if j.cap_named else 64
                    grown = <NamedDB *>realloc(j.named, j.cap_named * sizeof(NamedDB))
                    if grown == NULL:
                        free(name)
                        rc = _fail(j, 12, SIDE_SRC, "out of memory", -1)
                        break
                    j.named = grown
                j.named[j.n_named].name = name
                j.named[j.n_named].len = key.mv_size
                j.named[j.n_named].dst = 0
                j.named[j.n_named].flags = flags & DB_LAYOUT_FLAGS
                j.n_named += 1
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT_NODUP)
    mdb_cursor_close(cur)
    if rc == MDB_NOTFOUND:
        return 0
    if j.rc == 0:
        _fail(j, rc, SIDE_SRC, "walk main database", -1)
    return j.rc


cdef int _commit_and_renew(Job *j, MDB_cursor **dcur, MDB_dbi ddbi, long db) noexcept nogil:
    """Commit the output's write transaction and begin the next one (with a new
    cursor on the same database when ``dcur`` is given)."""
    cdef int rc
    if dcur != NULL and dcur[0] != NULL:
        mdb_cursor_close(dcur[0])
        dcur[0] = NULL
    rc = mdb_txn_commit(j.dst_txn)
    j.dst_txn = NULL
    if rc:
        return _fail(j, rc, SIDE_DST, "commit", db)
    j.commits += 1
    j.pending_bytes = 0
    j.pending_entries = 0
    if j.writeback_fd >= 0:
        # Start writing the committed pages to disk now, without waiting, so
        # that the final fsync has little left to do.
        sync_file_range(j.writeback_fd, 0, 0, SYNC_FILE_RANGE_WRITE)
    if j.signal_box != NULL and _interrupted(j.signal_box):
        return _fail(j, -1, SIDE_DST, "interrupted", db)
    rc = mdb_txn_begin(j.dst_env, NULL, 0, &j.dst_txn)
    if rc:
        j.dst_txn = NULL
        return _fail(j, rc, SIDE_DST, "txn_begin", db)
    if dcur != NULL:
        rc = mdb_cursor_open(j.dst_txn, ddbi, dcur)
        if rc:
            return _fail(j, rc, SIDE_DST, "cursor_open", db)
    return 0


cdef inline bint _is_named_record(Job *j, MDB_val *key, size_t *next_named) noexcept nogil:
    """Whether ``key`` of the main database is the next named database's record.
    The named list was gathered in the same transaction in the same key order,
    so one index that advances with the walk suffices."""
    cdef size_t i = next_named[0]
    if i >= j.n_named:
        return False
    if key.mv_size == j.named[i].len and memcmp(key.mv_data, j.named[i].name, key.mv_size) == 0:
        next_named[0] = i + 1
        return True
    return False


cdef int _copy_db(Job *j, MDB_dbi sdbi, MDB_dbi ddbi, unsigned int flags, long db) noexcept nogil:
    """Copy every entry of source database ``sdbi`` into output database ``ddbi``
    in key order with MDB_APPEND (new keys) and MDB_APPENDDUP (further duplicates
    of a DUPSORT key).  For the main database (db == -1) the records of named
    databases are skipped: the output writes its own when they are created."""
    cdef MDB_cursor *scur = NULL
    cdef MDB_cursor *dcur = NULL
    cdef MDB_val key, val
    cdef int rc
    cdef size_t next_named = 0
    cdef bint dupsort = (flags & MDB_DUPSORT) != 0
    cdef bint main = db == -1
    cdef unsigned int put_flags

    rc = mdb_cursor_open(j.src_txn, sdbi, &scur)
    if rc:
        return _fail(j, rc, SIDE_SRC, "cursor_open", db)
    rc = mdb_cursor_open(j.dst_txn, ddbi, &dcur)
    if rc:
        mdb_cursor_close(scur)
        return _fail(j, rc, SIDE_DST, "cursor_open", db)

    rc = mdb_cursor_get(scur, &key, &val, MDB_FIRST)
    while rc == 0:
        if main and _is_named_record(j, &key, &next_named):
            rc = mdb_cursor_get(scur, &key, &val, MDB_NEXT_NODUP)
            continue
        # first (or only) value of this key
        put_flags = MDB_APPEND
        while True:
            rc = mdb_cursor_put(dcur, &key, &val, put_flags)
            if rc:
                _fail(j, rc, SIDE_DST, "put", db)
                break
            j.entries += 1
            j.pending_entries += 1
            j.data_bytes += key.mv_size + val.mv_size
            j.pending_bytes += key.mv_size + val.mv_size + 16
            j.since_release += key.mv_size + val.mv_size + 16
            if j.since_release >= j.release_bytes and j.src_map != NULL:
                # Unmap the source pages read so far (they stay in the page
                # cache; touching one again is a minor fault), or the resident
                # size grows by the whole source.  Safe: the source is a
                # read-only shared file mapping.
                madvise(j.src_map, j.src_map_len, MADV_DONTNEED)
                j.since_release = 0
            if j.pending_bytes >= j.txn_bytes or j.pending_entries >= j.txn_entries:
                rc = _commit_and_renew(j, &dcur, ddbi, db)
                if rc:
                    break
            if not dupsort:
                break
            rc = mdb_cursor_get(scur, &key, &val, MDB_NEXT_DUP)
            if rc == MDB_NOTFOUND:
                rc = 0
                break
            if rc:
                _fail(j, rc, SIDE_SRC, "read", db)
                break
            put_flags = MDB_APPENDDUP
        if rc:
            break
        rc = mdb_cursor_get(scur, &key, &val, MDB_NEXT_NODUP)

    mdb_cursor_close(scur)
    if dcur != NULL:
        mdb_cursor_close(dcur)
    if j.rc:
        return j.rc
    if rc == MDB_NOTFOUND or rc == 0:
        return 0
    return _fail(j, rc, SIDE_SRC, "read", db)


cdef int _rebuild(Job *j) noexcept nogil:
    """Body of Snapshot.rebuild: runs without the GIL.  On error j.rc is set and
    the output's transaction is aborted; the caller closes the output env."""
    cdef int rc
    cdef MDB_dbi ddbi, sdbi
    cdef size_t i
    rc = mdb_txn_begin(j.dst_env, NULL, 0, &j.dst_txn)
    if rc:
        j.dst_txn = NULL
        return _fail(j, rc, SIDE_DST, "txn_begin", -2)
    # The main database first, while it holds no named-database records yet:
    # MDB_APPEND needs every new key to sort after the last one.
    rc = mdb_dbi_open(j.dst_txn, NULL, j.main_flags, &ddbi)
    if rc:
        _fail(j, rc, SIDE_DST, "open database", -1)
    else:
        rc = _copy_db(j, j.src_main, ddbi, j.main_flags, -1)
    i = 0
    while rc == 0 and i < j.n_named:
        rc = mdb_dbi_open(j.dst_txn, j.named[i].name, j.named[i].flags | MDB_CREATE,
                          &j.named[i].dst)
        if rc:
            _fail(j, rc, SIDE_DST, "create database", <long>i)
            break
        rc = _open_named(j, i, &sdbi)
        if rc:
            _fail(j, rc, SIDE_SRC, "open database", <long>i)
            break
        rc = _copy_db(j, sdbi, j.named[i].dst, j.named[i].flags, <long>i)
        _close_named(j, sdbi)
        # Many small databases: count each one's record so that thousands of
        # them do not pile up in one transaction.
        j.pending_entries += 1
        i += 1
    if rc == 0:
        rc = mdb_txn_commit(j.dst_txn)
        j.dst_txn = NULL
        if rc:
            return _fail(j, rc, SIDE_DST, "commit", -2)
        j.commits += 1
        if not j.sync:
            return 0
        j.sync_seconds = _now()
        rc = mdb_env_sync(j.dst_env, 1)
        j.sync_seconds = _now() - j.sync_seconds
        if rc:
            return _fail(j, rc, SIDE_DST, "sync", -2)
        return 0
    if j.dst_txn != NULL:
        mdb_txn_abort(j.dst_txn)
        j.dst_txn = NULL
    return j.rc


cdef int _open_output(MDB_env **dst, dst_path, bytes bdst, bint subdir, size_t map_size,
                      size_t n_named) except -1:
    """Create the output's place exclusively (it must not exist yet: a directory
    when ``subdir``, else an empty file) and open a new environment there in
    ``dst[0]``: private (MDB_NOLOCK), without an fsync per commit (MDB_NOSYNC),
    with the source's map size and room for its named databases.  ``dst[0]`` is
    the caller's to close, also when this raises."""
    import os
    cdef const char *cdst = bdst
    cdef unsigned int oflags = MDB_NOLOCK | MDB_NOSYNC
    cdef int rc
    if subdir:
        os.mkdir(dst_path, 0o755)
    else:
        os.close(os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644))
        oflags |= MDB_NOSUBDIR
    rc = mdb_env_create(dst)
    if rc:
        dst[0] = NULL
        raise_lmdb(dst_path, rc, "create")
    rc = mdb_env_set_mapsize(dst[0], map_size)
    if rc:
        raise_lmdb(dst_path, rc, "set_mapsize")
    rc = mdb_env_set_maxdbs(dst[0], <MDB_dbi>(n_named + 2))
    if rc:
        raise_lmdb(dst_path, rc, "set_maxdbs")
    with nogil:
        rc = mdb_env_open(dst[0], cdst, oflags, 0o644)
    if rc:
        raise_lmdb(dst_path, rc, "open")
    return 0


cdef void _keep_freed_heap(int trim_threshold, size_t txn_bytes) noexcept:
    """LMDB mallocs the dirty pages of each write transaction and frees them at
    commit; with glibc's default trim threshold the freed heap goes back to the
    kernel and the next transaction faults in (and zeroes) fresh pages.  Keeping
    about two transactions' worth cut the rebuild of dataset A by ~15%.
    Process-wide, and bounded by the transaction size; ``trim_threshold`` 0
    leaves glibc's setting, < 0 picks one from ``txn_bytes``."""
    if trim_threshold < 0:
        trim_threshold = (1 << 30) if txn_bytes > (400 << 20) else <int>(
            2 * txn_bytes + (16 << 20))
    if trim_threshold > 0:
        mallopt(M_TRIM_THRESHOLD, trim_threshold)


cdef object _source_map(MDB_env *env):
    """(address, length) of the process's mapping of ``env``'s data file, from
    /proc/self/maps, or None.  LMDB does not expose where it mapped a file
    (mdb_env_info's me_mapaddr is only set for MDB_FIXEDMAP), and the rebuild
    needs it to release source pages it has finished with."""
    cdef int fd
    cdef stat st
    if mdb_env_get_fd(env, &fd) != 0 or fstat(fd, &st) != 0:
        return None
    import os
    want_dev = (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) < 6 or int(parts[4]) != st.st_ino:
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if (major, minor) != want_dev:
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                return start, end - start
    except (OSError, ValueError):
        return None
    return None
