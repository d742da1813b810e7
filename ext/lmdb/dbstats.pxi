# Per-database statistics, written once for _lmdb (env_databases) and
# _rebuild (Snapshot.stats): the database record's counts and flags, and an
# optional sample of leaf-node sizes that predicts a rebuild's leaf pages.
# Included textually; mechanism only.

from clmdb cimport (
    MDB_txn, MDB_cursor, MDB_dbi, MDB_val, MDB_stat, MDB_FIRST, MDB_NEXT, MDB_NOTFOUND,
    MDB_REVERSEKEY, MDB_DUPSORT, MDB_INTEGERKEY, MDB_DUPFIXED, MDB_INTEGERDUP, MDB_REVERSEDUP,
    mdb_stat, mdb_dbi_flags, mdb_cursor_open, mdb_cursor_close, mdb_cursor_get,
)

# Database flags that describe a database's order and layout; they are stored
# in the database record and must be given again when the database is created.
cdef unsigned int DB_LAYOUT_FLAGS = (
    MDB_REVERSEKEY | MDB_DUPSORT | MDB_INTEGERKEY | MDB_DUPFIXED
    | MDB_INTEGERDUP | MDB_REVERSEDUP
)


cdef int _sample(MDB_txn *txn, MDB_dbi dbi, size_t limit, unsigned int psize,
                 size_t *count, size_t *node_bytes, double *node_sq) noexcept nogil:
    """Read up to ``limit`` entries from the start of a (non-DUPSORT) database and
    add up the room their nodes take on a leaf page, as LMDB lays them out: an
    8-byte node header, the key, the value (or an overflow page number when
    the node would exceed LMDB's node size limit), padded to an even size, plus
    a 2-byte slot in the page's index.  Used to predict a rebuild's leaf pages."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val key, val
    cdef size_t sz
    cdef size_t nodemax = (((psize - 16) // 2) & ~(<size_t>1)) - 2
    cdef int rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        return rc
    rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST)
    while rc == 0 and count[0] < limit:
        sz = 8 + key.mv_size + val.mv_size
        if sz > nodemax:
            sz = 8 + key.mv_size + sizeof(size_t)
        sz = sz + (sz & 1) + 2
        node_bytes[0] += sz
        node_sq[0] += <double>sz * <double>sz
        count[0] += 1
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)
    mdb_cursor_close(cur)
    return 0 if rc == MDB_NOTFOUND or rc == 0 else rc


cdef dict _dbstat(MDB_txn *txn, MDB_dbi dbi, size_t sample=0, unsigned int psize=4096):
    """One database's record as seen by ``txn``: its layout flags (raw bits),
    entries, depth and branch, leaf and overflow pages; with ``sample`` > 0,
    _sample's figures for a non-DUPSORT database (else zeros)."""
    cdef MDB_stat st
    cdef unsigned int flags = 0
    cdef size_t count = 0, node_bytes = 0
    cdef double node_sq = 0
    mdb_stat(txn, dbi, &st)
    mdb_dbi_flags(txn, dbi, &flags)
    if sample and not (flags & MDB_DUPSORT):
        with nogil:
            _sample(txn, dbi, sample, psize, &count, &node_bytes, &node_sq)
    return {
        "sampled_entries": count,
        "sampled_node_bytes": node_bytes,
        "sampled_node_sq": node_sq,
        "flags": flags & DB_LAYOUT_FLAGS,
        "entries": st.ms_entries,
        "depth": st.ms_depth,
        "branch_pages": st.ms_branch_pages,
        "leaf_pages": st.ms_leaf_pages,
        "overflow_pages": st.ms_overflow_pages,
    }
