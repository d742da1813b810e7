# An LMDB environment opened read-only with its lock file, and the refusal of a
# data file shorter than its meta page says: written once for _lmdb (_ReadEnv)
# and _rebuild (Snapshot).  Included textually after pyos.pxi and errors.pxi,
# whose _fs and raise_lmdb it calls.

from libc.errno cimport errno
from posix.types cimport off_t

from clmdb cimport (
    MDB_env, MDB_envinfo, MDB_stat, MDB_RDONLY, MDB_NOTLS, MDB_NOSUBDIR, MDB_NOLOCK,
    MDB_CORRUPTED, mdb_env_create, mdb_env_set_maxdbs, mdb_env_open, mdb_env_get_fd,
)
from cstat cimport stat, fstat


cdef int open_read_only(MDB_env **env, path, bint subdir, unsigned int maxdbs,
                        bint nolock) except -1:
    """Create ``env[0]`` and open the environment at ``path`` in it read-only,
    with its lock file, so that a read transaction is registered in the reader
    table.  ``nolock`` (MDB_NOLOCK) is only for a private copy no other process
    writes (a backup), never for a live environment.  ``maxdbs`` 0 leaves LMDB's
    default (no named databases).  On failure ``env[0]`` is NULL or an
    environment the caller closes."""
    cdef bytes bpath = _fs(path)
    cdef const char *cpath = bpath
    cdef unsigned int flags = MDB_RDONLY | MDB_NOTLS
    cdef int rc
    if not subdir:
        flags |= MDB_NOSUBDIR
    if nolock:
        flags |= MDB_NOLOCK
    rc = mdb_env_create(env)
    if rc:
        env[0] = NULL
        raise_lmdb(path, rc, "create")
    if maxdbs:
        rc = mdb_env_set_maxdbs(env[0], maxdbs)
        if rc:
            raise_lmdb(path, rc, "set_maxdbs")
    with nogil:
        rc = mdb_env_open(env[0], cpath, flags, 0o644)
    if rc:
        raise_lmdb(path, rc, "open")
    return 0


cdef object truncation_error(MDB_env *env, path, MDB_envinfo *info, MDB_stat *st):
    """An LmdbError (not raised) when the data file is shorter than its meta page
    says, else None: mapping pages past the end of a file would kill the process
    with SIGBUS, not raise.  ``info`` and ``st`` are the caller's mdb_env_info
    and mdb_env_stat of ``env``."""
    cdef int fd
    cdef stat fst
    cdef off_t need
    cdef int rc = mdb_env_get_fd(env, &fd)
    if rc:
        raise_lmdb(path, rc, "get_fd")
    if fstat(fd, &fst) != 0:
        raise OSError(errno, "cannot stat data file", path)
    need = <off_t>(info.me_last_pgno + 1) * <off_t>st.ms_psize
    if fst.st_size < need:
        return LmdbError(
            path, MDB_CORRUPTED,
            f"data file is truncated: {fst.st_size} bytes, but its meta page "
            f"needs {need} ({info.me_last_pgno + 1} pages of {st.ms_psize})",
            "check",
        )
    return None
