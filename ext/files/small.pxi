# Small dense files copied in batches (included by _sparse.pyx).
#
# A tree of many small files spends its time per file, not per byte: in
# Python between the system calls, and in calls that only matter for large or
# sparse files (extent probing, filesystem facts).  copy_small copies a whole
# batch of files of one directory with the GIL released and the fewest calls a
# file needs: open the source, fstat, read it whole, fstat again (a file that
# changed meanwhile is left to the general path), create the copy
# exclusively, write it, give it the planned owner, mode and times, fstat it
# for its allocation, close.  Which files qualify is policy
# (synfast.files.small); here a file that no longer matches its plan (size,
# mtime, type, or fewer blocks than bytes, so it might hold a hole) is only
# reported back as not copied.

from libc.stdint cimport int64_t, uint8_t
from posix.types cimport mode_t, uid_t, gid_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from cerrno cimport ENOENT, ELOOP
from cfcntl cimport openat, O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW
from cunistd cimport fchown, unlinkat, write, read, fsync
from cstat cimport fchmod, futimens, timespec, S_ISREG

cdef enum:
    SMALL_PRESERVE = 1      # give the copy the planned mode and times
    SMALL_CHOWN = 2         # and owner (root only)
    SMALL_FSYNC = 4         # fsync each copy
    # int64 fields per file in ``expected``, and in the result.
    SMALL_IN = 6
    SMALL_OUT = 2

PRESERVE = SMALL_PRESERVE
CHOWN = SMALL_CHOWN
FSYNC = SMALL_FSYNC
SMALL_FIELDS_IN = SMALL_IN
SMALL_FIELDS_OUT = SMALL_OUT


cdef inline int64_t _ns(timespec t) noexcept nogil:
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


cdef inline bint _as_planned(stat *st, const int64_t *x) noexcept nogil:
    return (S_ISREG(st.st_mode) and st.st_size == x[0] and _ns(st.st_mtim) == x[1]
            and <int64_t>st.st_blocks * 512 >= st.st_size)


cdef int _copy_small_one(int sdir, int ddir, const char *name, const int64_t *x, int flags,
                         uint8_t *buf, int64_t *out, int *side) noexcept nogil:
    """Copy one file; ``out`` gets (status, allocated bytes of the copy),
    status 0 copied, 1 left to the general path.  Returns 0 or an errno,
    ``side`` 0 for the source and 1 for the copy (already removed)."""
    cdef int s, d, rc = 0
    cdef stat st
    cdef int64_t size = x[0], got = 0
    cdef ssize_t k
    cdef timespec ts[2]
    out[0] = 1
    out[1] = 0
    side[0] = 0
    s = openat(sdir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    if s < 0:
        # Gone, or replaced by a symlink: the general path words it.
        return 0 if errno == ENOENT or errno == ELOOP else errno
    if fstat(s, &st) != 0:
        rc = errno
        close(s)
        return rc
    if not _as_planned(&st, x):
        close(s)
        return 0
    while got < size:
        k = read(s, buf + got, <size_t>(size - got))
        if k < 0:
            if errno == EINTR:
                continue
            rc = errno
            close(s)
            return rc
        if k == 0:
            break
        got += k
    if fstat(s, &st) != 0:
        rc = errno
        close(s)
        return rc
    close(s)
    if got != size or not _as_planned(&st, x):
        return 0
    side[0] = 1
    d = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    if d < 0:
        return errno
    got = 0
    while got < size:
        k = write(d, buf + got, <size_t>(size - got))
        if k < 0:
            if errno == EINTR:
                continue
            rc = errno
            break
        got += k
    if rc == 0 and flags & SMALL_PRESERVE:
        # Owner first: chown clears set-id bits, so the mode comes after it.
        if flags & SMALL_CHOWN and fchown(d, <uid_t>x[4], <gid_t>x[5]) != 0:
            rc = errno
        elif fchmod(d, <mode_t>(x[3] & 0o7777)) != 0:
            rc = errno
        else:
            ts[0].tv_sec = x[2] // 1000000000
            ts[0].tv_nsec = x[2] % 1000000000
            ts[1].tv_sec = x[1] // 1000000000
            ts[1].tv_nsec = x[1] % 1000000000
            if futimens(d, ts) != 0:
                rc = errno
    if rc == 0 and flags & SMALL_FSYNC and fsync(d) != 0:
        rc = errno
    if rc == 0 and fstat(d, &st) != 0:
        rc = errno
    if close(d) != 0 and rc == 0:
        rc = errno
    if rc:
        unlinkat(ddir, name, 0)
        return rc
    out[0] = 0
    out[1] = <int64_t>st.st_blocks * 512
    return 0


def copy_small(int src_dir, int dst_dir, list names, bytes expected, int flags,
               bint keep_data=False):
    """Copy the small dense files ``names`` (bytes) of the directory open on
    ``src_dir`` to new files of the same names in ``dst_dir``.

    ``expected`` holds SMALL_FIELDS_IN native int64 per file: the planned size,
    mtime and atime (ns), mode, uid and gid.  ``flags``: PRESERVE, CHOWN,
    FSYNC.  Returns ``(results, data, error)``: SMALL_FIELDS_OUT int64 per file
    (status 0 copied or 1 left to the general path, and the copy's allocated
    bytes); with ``keep_data`` the files' bytes back to back at the offsets
    their planned sizes give (a slot of a file not copied is undefined), else
    None; and None, or ``(index, errno, side)`` for the file that failed (side
    0 the source, 1 the copy, which is removed), the files after it untried.
    """
    cdef Py_ssize_t n = len(names), i
    cdef const int64_t *x
    cdef const char **pn = NULL
    cdef uint8_t *scratch = NULL
    cdef uint8_t *dst
    cdef int64_t total = 0, largest = 0, off = 0
    cdef int64_t *res
    cdef int rc = 0, side = 0
    cdef bytes data = None
    if len(expected) != n * SMALL_IN * 8:
        raise ValueError("copy_small: expected holds the wrong number of fields")
    x = <const int64_t *>PyBytes_AS_STRING(expected)
    for i in range(n):
        if x[i * SMALL_IN] < 0:
            raise ValueError("copy_small: a negative size")
        total += x[i * SMALL_IN]
        if x[i * SMALL_IN] > largest:
            largest = x[i * SMALL_IN]
    results = PyBytes_FromStringAndSize(NULL, n * SMALL_OUT * 8)
    res = <int64_t *>PyBytes_AS_STRING(results)
    if keep_data:
        data = PyBytes_FromStringAndSize(NULL, total)
        dst = <uint8_t *>PyBytes_AS_STRING(data)
    else:
        scratch = <uint8_t *>malloc(<size_t>largest if largest else 1)
        dst = scratch
    pn = <const char **>malloc(<size_t>(n if n else 1) * sizeof(char *))
    try:
        if pn == NULL or dst == NULL:
            raise MemoryError()
        for i in range(n):
            if type(names[i]) is not bytes:
                raise TypeError("copy_small: names are bytes")
            pn[i] = PyBytes_AS_STRING(names[i])
        with nogil:
            for i in range(n):
                rc = _copy_small_one(src_dir, dst_dir, pn[i], x + i * SMALL_IN, flags,
                                     dst + off if keep_data else dst, res + i * SMALL_OUT,
                                     &side)
                if rc:
                    break
                off += x[i * SMALL_IN]
        return results, data, ((i, rc, side) if rc else None)
    finally:
        free(pn)
        free(scratch)
