# The pages engine's reading of a snapshot (_rebuild.pyx's Snapshot): the meta
# page of the snapshot's own transaction, captured right after the read
# transaction begins and proven untorn, and the page plan, the runs of pages in
# use up to the snapshot's last page, from its free database.  Included
# textually by _rebuild.pyx only, after rebuild_job.pxi (Job, _find_named).
#
# Why the capture is the snapshot's meta (docs/internals.md has the argument):
# a read transaction with txnid S reads meta slot S & 1, which the writer only
# writes again when it commits S + 2, and it writes that slot only after commit
# S + 1 has stored its own txnid in the other slot.  So a copy of slot S & 1
# that says S, followed (after a full barrier) by a read of the other slot that
# does not yet say S + 1, was taken before any write to the slot could begin.

from libc.stdint cimport uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset
from libc.errno cimport errno, EIO, ENOMEM
from posix.types cimport off_t
from cunistd cimport pread, usleep
from clmdb cimport (
    MDB_env, MDB_txn, MDB_cursor, MDB_val, MDB_stat, MDB_FIRST, MDB_NEXT, MDB_RDONLY,
    MDB_DUPSORT, MDB_NOTFOUND, MDB_CORRUPTED, MDB_INCOMPATIBLE,
    mdb_stat, mdb_env_stat, mdb_env_get_fd, mdb_txn_begin, mdb_txn_abort, mdb_txn_id,
    mdb_dbi_flags, mdb_cursor_open, mdb_cursor_close, mdb_cursor_get, mdb_get,
)

cdef extern from *:
    void full_barrier "__sync_synchronize"() nogil

# The bytes captured from a meta page: the 16-byte page header and MDB_meta
# (LMDB 0.9 on a 64-bit host: magic, version, address, map size, the free and
# main databases' records, last page, txnid).
cdef enum:
    META_BYTES = 152
    MM_MAPSIZE = 16 + 16
    MM_DBS = 16 + 24
    MM_LAST_PG = 16 + 120
    MM_TXNID = 16 + 128
    DB_REC = 48

# How many times a read transaction is begun again when a commit lands
# between its beginning and the capture of its meta page (about a second in
# all, with the pauses of begin_captured).
cdef enum:
    CAPTURE_ATTEMPTS = 1000

cdef inline uint64_t _u64(const unsigned char *p) noexcept nogil:
    return (<const uint64_t *>p)[0]


cdef int capture_meta(MDB_env *env, size_t txnid, unsigned char *buf) noexcept nogil:
    """Copy meta slot ``txnid & 1`` into ``buf``.  Returns 0 when the copy is
    the meta of ``txnid`` and provably untorn, 1 when a later commit may have
    written the slot (begin again), or a positive errno."""
    cdef MDB_stat st
    cdef int fd, rc
    cdef uint64_t other = 0
    cdef ssize_t n
    rc = mdb_env_get_fd(env, &fd)
    if rc:
        return rc
    mdb_env_stat(env, &st)
    n = pread(fd, buf, META_BYTES, <off_t>((txnid & 1) * st.ms_psize))
    if n < 0:
        return errno
    if n != META_BYTES:
        return EIO
    full_barrier()
    n = pread(fd, &other, 8, <off_t>(((txnid + 1) & 1) * st.ms_psize + MM_TXNID))
    if n < 0:
        return errno
    if n != 8:
        return EIO
    if _u64(buf + MM_TXNID) != txnid or other > txnid:
        return 1
    return 0


cdef int begin_captured(MDB_env *env, MDB_txn **txn, unsigned char *buf,
                        int *state) noexcept nogil:
    """Begin a read transaction in ``env`` and capture its meta page into
    ``buf``, beginning again while a commit races the capture.  ``state`` ends
    1 (captured), -1 (the slot never held the transaction's meta page in
    CAPTURE_ATTEMPTS tries) or the errno of a failed read (the snapshot stays
    usable by engines that need no meta page).  Returns mdb_txn_begin's code."""
    cdef int rc, k, c
    state[0] = 0
    for k in range(CAPTURE_ATTEMPTS):
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, txn)
        if rc:
            txn[0] = NULL
            return rc
        c = capture_meta(env, mdb_txn_id(txn[0]), buf)
        if c == 0:
            state[0] = 1
            return 0
        if c != 1:
            state[0] = c + 1 if c > 0 else c
            return 0
        if k + 1 < CAPTURE_ATTEMPTS:
            mdb_txn_abort(txn[0])
            # A writer that syncs its meta page (msync, fsync) leaves its new
            # meta in the other slot for milliseconds before readers begin at
            # it: spread the tries over that time instead of spending them
            # all inside it (1, 2, 4 ... up to 1024 microseconds apart).
            if k >= 2:
                usleep(1u << (k - 2 if k < 12 else 10))
    state[0] = -1
    return 0


cdef struct FreeList:
    uint64_t *bits      # one bit per page up to the last page: free at the snapshot
    size_t npages       # last page + 1
    size_t count        # free pages
    size_t records      # records of the free database


cdef int read_free_db(MDB_txn *txn, FreeList *fl, size_t *bad) noexcept nogil:
    """Mark every page listed in the snapshot's free database (dbi 0: keys are
    txn ids, values are page lists: a count, then that many page numbers).
    Returns an LMDB code, ENOMEM, or -1 for a damaged record (``bad`` holds the
    offending page number, or the count for a malformed value)."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val key, val
    cdef int rc
    cdef size_t i, n, pg
    cdef const size_t *ids
    rc = mdb_cursor_open(txn, 0, &cur)
    if rc:
        return rc
    rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST)
    while rc == 0:
        fl.records += 1
        if val.mv_size < sizeof(size_t) or val.mv_size % sizeof(size_t):
            bad[0] = val.mv_size
            rc = -1
            break
        ids = <const size_t *>val.mv_data
        n = ids[0]
        if n != val.mv_size // sizeof(size_t) - 1:
            bad[0] = n
            rc = -1
            break
        for i in range(1, n + 1):
            pg = ids[i]
            if pg < 2 or pg >= fl.npages or (fl.bits[pg >> 6] >> (pg & 63)) & 1:
                bad[0] = pg
                rc = -2
                break
            fl.bits[pg >> 6] |= (<uint64_t>1) << (pg & 63)
            fl.count += 1
        if rc:
            break
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)
    mdb_cursor_close(cur)
    return 0 if rc == MDB_NOTFOUND else rc


cdef inline bint _free(const FreeList *fl, size_t pg) noexcept nogil:
    return (fl.bits[pg >> 6] >> (pg & 63)) & 1


cdef int used_runs(const FreeList *fl, size_t psize, size_t merge, int64_t **out,
                   size_t *nout, size_t *gaps) noexcept nogil:
    """The runs of pages in use from page 2 to the last page, as (offset,
    length) byte pairs; a free gap shorter than ``merge`` pages between two
    runs is copied with them.  ``gaps`` counts the free gaps left as holes."""
    cdef size_t pg = 2, start, end, cap = 1024, n = 0
    cdef int64_t *v = <int64_t *>malloc(cap * 2 * sizeof(int64_t))
    cdef int64_t *nv
    if v == NULL:
        return ENOMEM
    gaps[0] = 0
    while pg < fl.npages:
        while pg < fl.npages and _free(fl, pg):
            if (pg & 63) == 0 and fl.bits[pg >> 6] == <uint64_t>-1 and pg + 64 <= fl.npages:
                pg += 64
            else:
                pg += 1
        if pg >= fl.npages:
            break
        start = pg
        while pg < fl.npages and not _free(fl, pg):
            if (pg & 63) == 0 and fl.bits[pg >> 6] == 0 and pg + 64 <= fl.npages:
                pg += 64
            else:
                pg += 1
        end = pg
        if n and <size_t>(start * psize - <size_t>(v[2 * n - 2] + v[2 * n - 1])) < merge * psize:
            v[2 * n - 1] = <int64_t>(end * psize) - v[2 * n - 2]
            continue
        if n:
            gaps[0] += 1
        if n == cap:
            cap *= 2
            nv = <int64_t *>realloc(v, cap * 2 * sizeof(int64_t))
            if nv == NULL:
                free(v)
                return ENOMEM
            v = nv
        v[2 * n] = <int64_t>(start * psize)
        v[2 * n + 1] = <int64_t>((end - start) * psize)
        n += 1
    out[0] = v
    nout[0] = n
    return 0


cdef int walk_branches(int fd, size_t psize, uint64_t root, unsigned int depth,
                       const FreeList *fl, size_t *branches, size_t *leaves,
                       uint64_t *bad) noexcept nogil:
    """Read the branch pages of one tree, level by level from ``root`` (leaves
    are never read), counting its branch and leaf pages.  Returns 0, -3 when a
    page of the tree is listed free or lies past the last page, -4 when a
    branch page is not one (``bad`` holds the page), or a positive errno."""
    cdef uint64_t *cur = NULL
    cdef uint64_t *nxt = NULL
    cdef uint64_t *grown
    cdef size_t ncur = 1, nnxt, cap, i, k, n, off
    cdef unsigned int level
    cdef const unsigned char *node
    cdef unsigned char *buf = <unsigned char *>malloc(psize)
    cdef int rc = 0
    cur = <uint64_t *>malloc(sizeof(uint64_t))
    if buf == NULL or cur == NULL:
        free(buf)
        free(cur)
        return ENOMEM
    cur[0] = root
    for level in range(depth):
        for i in range(ncur):
            if cur[i] < 2 or cur[i] >= fl.npages or _free(fl, cur[i]):
                bad[0] = cur[i]
                rc = -3
                break
        if rc or level + 1 == depth:
            leaves[0] += ncur
            break
        branches[0] += ncur
        cap = ncur * 8
        nnxt = 0
        nxt = <uint64_t *>malloc(cap * sizeof(uint64_t))
        if nxt == NULL:
            rc = ENOMEM
            break
        for i in range(ncur):
            if pread(fd, buf, psize, <off_t>(cur[i] * psize)) != <ssize_t>psize:
                rc = errno or EIO
                break
            n = ((<unsigned short *>(buf + 12))[0] - 16) >> 1
            if _u64(buf) != cur[i] or not (<unsigned short *>(buf + 10))[0] & 0x01 or \
                    16 + 2 * n > psize:
                bad[0] = cur[i]
                rc = -4
                break
            for k in range(n):
                off = (<unsigned short *>(buf + 16))[k]
                if off + 8 > psize:
                    bad[0] = cur[i]
                    rc = -4
                    break
                node = buf + off
                if nnxt == cap:
                    cap *= 2
                    grown = <uint64_t *>realloc(nxt, cap * sizeof(uint64_t))
                    if grown == NULL:
                        rc = ENOMEM
                        break
                    nxt = grown
                nxt[nnxt] = ((<const unsigned short *>node)[0]
                             | (<uint64_t>(<const unsigned short *>node)[1] << 16)
                             | (<uint64_t>(<const unsigned short *>node)[2] << 32))
                nnxt += 1
            if rc:
                break
        free(cur)
        cur = nxt
        nxt = NULL
        ncur = nnxt
        if rc:
            break
    free(cur)
    free(nxt)
    free(buf)
    return rc


cdef int check_tree(int fd, path, size_t psize, uint64_t txnid, str name, uint64_t root,
                    MDB_stat *st, const FreeList *fl, bint dupsort) except -1:
    """Walk one tree's branch pages (walk_branches): every branch and leaf page
    must be in use at the snapshot, and as many as its statistics say (at
    most as many for a DUPSORT database, whose statistics count the pages of
    its duplicate subtrees too)."""
    cdef size_t branches = 0, leaves = 0
    cdef uint64_t bad = 0
    cdef int rc
    if st.ms_depth == 0:
        return 0
    with nogil:
        rc = walk_branches(fd, psize, root, st.ms_depth, fl, &branches, &leaves, &bad)
    if rc == -3:
        raise LmdbError(path, MDB_CORRUPTED,
                        f"the free database of txn {txnid} is damaged: page {bad} of the "
                        f"{name} database's tree is listed free or past the last page",
                        "read free pages")
    if rc == -4 or (rc == 0 and (
            branches > st.ms_branch_pages or leaves > st.ms_leaf_pages
            or (not dupsort and (branches != st.ms_branch_pages
                                 or leaves != st.ms_leaf_pages)))):
        raise LmdbError(path, MDB_CORRUPTED,
                        f"the {name} database's tree of txn {txnid} does not match its "
                        f"statistics ({branches} branch and {leaves} leaf pages found)",
                        "check meta")
    if rc:
        raise OSError(rc, _strerror(rc), path)
    return 0


cdef str _db_mismatch(const unsigned char *rec, MDB_stat *st, int flags):
    """What differs between a captured database record and the snapshot's own
    statistics of that database, or None.  ``flags`` -1 skips the flags (the
    free database's record holds LMDB's own, which mdb_dbi_flags does not
    report)."""
    cdef unsigned int rflags = (<const unsigned short *>(rec + 4))[0]
    cdef unsigned int depth = (<const unsigned short *>(rec + 6))[0]
    cdef uint64_t root = _u64(rec + 40)
    if depth != st.ms_depth:
        return f"depth {depth}, not {st.ms_depth}"
    if (_u64(rec + 8) != st.ms_branch_pages or _u64(rec + 16) != st.ms_leaf_pages
            or _u64(rec + 24) != st.ms_overflow_pages):
        return "page counts"
    if _u64(rec + 32) != st.ms_entries:
        return f"{_u64(rec + 32)} entries, not {st.ms_entries}"
    if flags >= 0 and rflags != <unsigned int>flags:
        return f"flags {rflags:#x}, not {flags:#x}"
    if (depth == 0) != (root == <uint64_t>-1):
        return f"root page {root} at depth {depth}"
    return None


cdef dict plan_pages(MDB_txn *txn, path, unsigned int page_size, const unsigned char *meta,
                     Job *j, size_t merge, int fd, off_t file_size):
    """Check the captured meta page against the snapshot, read its free
    database, and return the page plan (see Snapshot.page_plan).  ``j`` holds
    the snapshot's named databases (Snapshot._find_databases)."""
    cdef MDB_stat st
    cdef MDB_stat core[2]       # the free and main databases
    cdef unsigned int flags = 0, psize = (<const unsigned int *>(meta + MM_DBS))[0]
    cdef uint64_t last_pg = _u64(meta + MM_LAST_PG)
    cdef uint64_t txnid = _u64(meta + MM_TXNID)
    cdef uint64_t root
    cdef size_t used = 0, bad = 0, i, nruns = 0, gaps = 0
    cdef bint dupsort = False
    cdef FreeList fl
    cdef int64_t *runs = NULL
    cdef int rc
    cdef int d
    cdef MDB_val key, val
    cdef MDB_dbi dbi
    if psize != page_size or psize < 512 or psize > 65536 or psize & (psize - 1):
        raise LmdbError(path, MDB_INCOMPATIBLE,
                        f"page size {psize} in the meta page of txn {txnid} "
                        f"(LMDB opened it with {page_size}) is not one the pages engine "
                        f"copies", "check meta")
    if last_pg < 1 or (last_pg + 1) * psize > <uint64_t>file_size:
        raise LmdbError(path, MDB_CORRUPTED,
                        f"the meta page of txn {txnid} says {last_pg + 1} pages of {psize} "
                        f"bytes, but the data file holds {file_size} bytes", "check meta")
    for d in range(2):
        rc = mdb_stat(txn, d, &core[d])
        if rc:
            raise_lmdb(path, rc, "stat")
        mdb_dbi_flags(txn, d, &flags)
        problem = _db_mismatch(meta + MM_DBS + d * DB_REC, &core[d],
                               <int>(flags & 0xffff) if d else -1)
        if problem is not None:
            raise LmdbError(path, MDB_CORRUPTED,
                            f"the meta page of txn {txnid} does not match its snapshot: "
                            f"{'main' if d else 'free'} database {problem}", "check meta")
        used += core[d].ms_branch_pages + core[d].ms_leaf_pages + core[d].ms_overflow_pages
    if j.main_flags & MDB_DUPSORT:
        dupsort = True
    for i in range(j.n_named):
        rc = _open_named(j, i, &dbi)
        if rc:
            raise_lmdb(path, rc, "open database")
        rc = mdb_stat(txn, dbi, &st)
        _close_named(j, dbi)
        if rc:
            raise_lmdb(path, rc, "stat")
        used += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages
        if j.named[i].flags & MDB_DUPSORT:
            dupsort = True
    memset(&fl, 0, sizeof(fl))
    fl.npages = last_pg + 1
    fl.bits = <uint64_t *>calloc((fl.npages + 63) // 64, sizeof(uint64_t))
    if fl.bits == NULL:
        raise MemoryError()
    try:
        with nogil:
            rc = read_free_db(txn, &fl, &bad)
        if rc == -1:
            raise LmdbError(path, MDB_CORRUPTED,
                            f"the free database of txn {txnid} is damaged: its record "
                            f"{fl.records} is not a page list (count or size {bad})",
                            "read free pages")
        if rc == -2:
            raise LmdbError(path, MDB_CORRUPTED,
                            f"the free database of txn {txnid} is damaged: it lists page "
                            f"{bad}, outside pages 2-{last_pg} or twice", "read free pages")
        if rc:
            raise_lmdb(path, rc, "read free pages")
        for d in range(2):
            root = _u64(meta + MM_DBS + d * DB_REC + 40)
            if root != <uint64_t>-1 and (root < 2 or root > last_pg or _free(&fl, root)):
                raise LmdbError(path, MDB_CORRUPTED,
                                f"the meta page of txn {txnid} has its "
                                f"{'main' if d else 'free'} database's root at page {root}, "
                                f"which is free or past the last page", "check meta")
        # Every branch and leaf page of every tree is in use (its branch pages
        # are read; its leaves, the bulk, are not).
        for d in range(2):
            check_tree(fd, path, psize, txnid, "main" if d else "free",
                       _u64(meta + MM_DBS + d * DB_REC + 40), &core[d], &fl,
                       d == 1 and (j.main_flags & MDB_DUPSORT) != 0)
        for i in range(j.n_named):
            key.mv_size = j.named[i].len
            key.mv_data = j.named[i].name
            rc = mdb_get(txn, j.src_main, &key, &val)
            if rc:
                raise_lmdb(path, rc, "read named database record")
            rc = _open_named(j, i, &dbi)
            if rc:
                raise_lmdb(path, rc, "open database")
            mdb_stat(txn, dbi, &st)
            _close_named(j, dbi)
            check_tree(fd, path, psize, txnid, repr(j.named[i].name[:j.named[i].len]),
                       _u64(<const unsigned char *>val.mv_data + 40), &st, &fl,
                       (j.named[i].flags & MDB_DUPSORT) != 0)
        # Every page up to the last is a meta page, in a tree, or free: a free
        # database that accounts for more or fewer pages is damaged.  Where a
        # DUPSORT database exists this is a bound (how LMDB counts the pages of
        # duplicate subtrees is not something to rely on).
        if used + fl.count + 2 > fl.npages or (not dupsort and used + fl.count + 2 != fl.npages):
            raise LmdbError(path, MDB_CORRUPTED,
                            f"the free database of txn {txnid} is damaged: {fl.count} free "
                            f"pages and {used} in use do not add up to {fl.npages} pages",
                            "read free pages")
        with nogil:
            rc = used_runs(&fl, psize, merge, &runs, &nruns, &gaps)
        if rc:
            raise MemoryError()
        ranges = bytes((<char *>runs)[:nruns * 2 * sizeof(int64_t)]) if nruns else b""
        return {
            "txnid": txnid,
            "page_size": psize,
            "map_size": _u64(meta + MM_MAPSIZE),
            "last_pgno": last_pg,
            "used_pages": used,
            "free_pages": fl.count,
            "free_records": fl.records,
            "dupsort": dupsort,
            "ranges": ranges,
            "holes": gaps,
            "meta": bytes(meta[:META_BYTES]),
        }
    finally:
        free(fl.bits)
        free(runs)
