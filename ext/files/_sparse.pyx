# cython: language_level=3
"""Sparse-safe file copy primitives (mechanism only; policy lives in synfast.files.sparse).

Everything that can block runs with the GIL released.  Long loops re-take the GIL
every few tens of MiB only to let a pending signal (Ctrl-C) interrupt the copy.
Here: data extents, the choice of method per extent (do_copy) and copy_fd; the
movers that copy one range by one method are in movers.pxi, the batch copy of
small dense files in small.pxi.
"""

from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset
from libc.errno cimport errno, ENOMEM
from posix.types cimport off_t

from cerrno cimport EINTR, EINVAL, ENXIO, EXDEV, EOPNOTSUPP, ENOTTY
from cunistd cimport SEEK_SET, SEEK_CUR, SEEK_DATA, SEEK_HOLE, lseek, ftruncate, close, pipe2
from cfcntl cimport O_CLOEXEC, F_SETPIPE_SZ, F_GETPIPE_SZ, fcntl
from clinux_fs cimport FICLONE
from cioctl cimport ioctl
from cstat cimport stat, fstat
from cvfs cimport statfs, fstatfs

include "pyos.pxi"
include "movers.pxi"
include "small.pxi"

# Modes shared by reflink= and sparse=.
cdef enum:
    C_NEVER = 0
    C_AUTO = 1
    C_ALWAYS = 2

NEVER = C_NEVER
AUTO = C_AUTO
ALWAYS = C_ALWAYS


cdef struct ExtentList:
    off_t *v          # start, length pairs
    Py_ssize_t n
    Py_ssize_t cap


cdef int ext_push(ExtentList *e, off_t start, off_t length) noexcept nogil:
    cdef off_t *nv
    cdef Py_ssize_t newcap
    if length <= 0:
        return 0
    if e.n > 0 and e.v[2 * (e.n - 1)] + e.v[2 * (e.n - 1) + 1] == start:
        e.v[2 * (e.n - 1) + 1] += length
        return 0
    if e.n == e.cap:
        newcap = e.cap * 2 if e.cap else 64
        nv = <off_t *>realloc(e.v, <size_t>newcap * 2 * sizeof(off_t))
        if nv == NULL:
            return ENOMEM
        e.v = nv
        e.cap = newcap
    e.v[2 * e.n] = start
    e.v[2 * e.n + 1] = length
    e.n += 1
    return 0


cdef int scan_extents(int fd, off_t size, ExtentList *e) noexcept nogil:
    """Fill e with the data extents of fd in [0, size).  Returns 0 or an errno.

    A filesystem without SEEK_DATA support (EINVAL/EOPNOTSUPP) has no holes we
    can see, so the rest of the file is one extent, as coreutils treats it.
    """
    cdef off_t pos = 0
    cdef off_t data, hole
    while pos < size:
        data = lseek(fd, pos, SEEK_DATA)
        if data < 0:
            if errno == ENXIO:          # no data at or after pos: the rest is hole
                return 0
            if errno == EINVAL or errno == EOPNOTSUPP:
                return ext_push(e, pos, size - pos)
            return errno
        if data >= size:
            return 0
        hole = lseek(fd, data, SEEK_HOLE)
        if hole < 0:
            if errno == ENXIO:          # the file shrank under us
                return 0
            return errno
        if hole > size:
            hole = size
        if ext_push(e, data, hole - data):
            return ENOMEM
        pos = hole
    return 0


cdef int do_copy(int src, int dst, off_t size, int reflink, int sparse, bint allow_cfr,
                 bint try_clone, int pipe_r, int pipe_w, size_t pipe_size,
                 char *rbuf, size_t rsize, const char *zeros, size_t zsize, size_t blk,
                 ExtentList *ext, CopyStats *st) except -1 nogil:
    cdef int rc
    cdef Py_ssize_t k
    cdef off_t start, length, prev_end = 0
    cdef bint refused = False
    cdef bint splice_refused = pipe_r < 0 or sparse == C_ALWAYS
    cdef bint use_cfr = allow_cfr and sparse != C_ALWAYS and reflink != C_NEVER

    rc = scan_extents(src, size, ext)
    if rc:
        return rc
    for k in range(ext.n):
        st.data_bytes += ext.v[2 * k + 1]

    # A clone shares the source's exact layout, holes included, which is only
    # what the user asked for when sparse handling is left on auto.
    if reflink != C_NEVER and sparse == C_AUTO and (try_clone or reflink == C_ALWAYS):
        if ioctl(dst, FICLONE, src) == 0:
            st.used_reflink = 1
            st.bytes_cloned = st.data_bytes
            return 0
        st.clone_errno = errno
        if reflink == C_ALWAYS:
            return errno

    for k in range(ext.n):
        start = ext.v[2 * k]
        length = ext.v[2 * k + 1]
        if sparse == C_NEVER and start > prev_end:
            rc = fill_zeros(dst, prev_end, start, zeros, zsize, st)
            if rc:
                return rc
        rc = move_extent(src, dst, start, start + length, use_cfr, &refused, &splice_refused,
                         pipe_r, pipe_w, pipe_size, rbuf, rsize, blk, sparse == C_ALWAYS, st)
        if rc:
            return rc
        if st.short_read:
            return 0
        prev_end = start + length
    if sparse == C_NEVER and prev_end < size:
        rc = fill_zeros(dst, prev_end, size, zeros, zsize, st)
        if rc:
            return rc
    # Trailing holes: give the copy the source's exact size.
    while prev_end < size and ftruncate(dst, size) != 0:
        if errno != EINTR:
            return errno
    return 0


cdef object _extent_list(ExtentList *e):
    return [(e.v[2 * k], e.v[2 * k + 1]) for k in range(e.n)]


def extents(int fd):
    """Return the data extents of open file ``fd`` as a list of (offset, length).

    Uses SEEK_DATA/SEEK_HOLE, so holes are never read.  The file offset of ``fd``
    is left where it was.
    """
    cdef ExtentList e
    cdef stat st
    cdef off_t saved
    cdef int rc = 0
    memset(&e, 0, sizeof(e))
    try:
        with nogil:
            if fstat(fd, &st) != 0:
                rc = errno
            else:
                saved = lseek(fd, 0, SEEK_CUR)
                rc = scan_extents(fd, st.st_size, &e)
                if saved >= 0:
                    lseek(fd, saved, SEEK_SET)
        if rc:
            raise OSError(rc, _strerror(rc))
        return _extent_list(&e)
    finally:
        free(e.v)


cdef size_t _buffer_size(size_t bufsize, off_t size) noexcept nogil:
    """copy_fd's buffer size: ``bufsize`` (at least 64 KiB) but no larger than
    the file, in whole 4 KiB pages: a tree of small files must not pay for a
    megabyte (zeroed, for calloc) per file.  The read buffer serves the
    pread/pwrite path and the drain of a refused splice; a zeroed one of the
    same size only sparse=never's hole fills."""
    cdef size_t rsize
    if bufsize < 65536:
        bufsize = 65536
    rsize = bufsize if <off_t>bufsize < size else <size_t>((size + 4095) // 4096 * 4096)
    if rsize < 65536:
        rsize = 65536
    return rsize


cdef int _open_pipe(int *pipefd, size_t rsize, off_t size) noexcept nogil:
    """Open copy_fd's splice pipe in ``pipefd``, as large as the read buffer
    ``rsize`` (a pipe holds 64 KiB to start with); an unprivileged user past
    the pipe quota keeps a smaller pipe, which still works.  Returns the pipe's
    size; without a pipe ``pipefd`` is -1, -1."""
    cdef int psize
    if pipe2(pipefd, O_CLOEXEC) != 0:
        pipefd[0] = -1
        pipefd[1] = -1
        return 0
    if size > 65536:
        fcntl(pipefd[1], F_SETPIPE_SZ, <int>rsize)
    psize = fcntl(pipefd[1], F_GETPIPE_SZ)
    if psize <= 0:
        close(pipefd[0])
        close(pipefd[1])
        pipefd[0] = -1
        pipefd[1] = -1
    return psize


cdef dict _copy_report(CopyStats *cs, Py_ssize_t n_extents, stat *st0, stat *st1,
                       long long expected_size, long long expected_mtime_ns):
    """copy_fd's result: what was done, by which methods, and whether the source
    changed (``st0`` before the copy, ``st1`` after it)."""
    cdef off_t size = st0.st_size
    changed = bool(
        cs.short_read
        or st1.st_size != size
        or st1.st_mtim.tv_sec != st0.st_mtim.tv_sec
        or st1.st_mtim.tv_nsec != st0.st_mtim.tv_nsec
        or (expected_size >= 0 and expected_size != size)
        or (expected_mtime_ns >= 0
            and expected_mtime_ns != st0.st_mtim.tv_sec * 1000000000 + st0.st_mtim.tv_nsec)
    )
    if cs.used_reflink:
        method = "reflink"
    else:
        used = [name for name, flag in (("copy_file_range", cs.used_cfr),
                                        ("splice", cs.used_splice),
                                        ("read-write", cs.used_rw)) if flag]
        method = "+".join(used) or "none"
    return {
        "size": size,
        "size_after": st1.st_size,
        "changed": changed,
        "method": method,
        "extents": n_extents,
        "data_bytes": cs.data_bytes,
        "hole_bytes": size - cs.data_bytes,
        "bytes_written": cs.bytes_written,
        "bytes_cloned": cs.bytes_cloned,
        "zero_bytes_skipped": cs.zero_bytes_skipped,
        "copy_file_range_refused": cs.cfr_refused_errno,
    }


# The last pair of filesystems (st_dev of source, destination) where FICLONE
# was refused as unsupported: a tree of many files on ext4 does not ask again
# for every file.  Read and written with the GIL held.
cdef unsigned long noclone_src_dev = 0
cdef unsigned long noclone_dst_dev = 0
cdef bint noclone_known = False


def copy_fd(int src_fd, int dst_fd, *, int reflink=AUTO, int sparse=AUTO,
            bint allow_copy_file_range=True, bint allow_splice=True, size_t bufsize=1 << 20,
            long long expected_size=-1, long long expected_mtime_ns=-1):
    """Copy the regular file open on ``src_fd`` into the empty file ``dst_fd``.

    reflink and sparse take NEVER, AUTO or ALWAYS.  Data moves by FICLONE,
    else copy_file_range (if allowed), else splice through a pipe of
    ``bufsize`` (if allowed; not with sparse=ALWAYS, which must see the
    bytes), else pread/pwrite with a ``bufsize`` buffer.  Returns a dict of what was
    done; ``changed`` is true when the source's size or mtime moved during the
    copy (or differs from the expected values the caller saw earlier), in which
    case the destination must not be trusted.
    """
    cdef stat st0, st1, dst_st
    cdef CopyStats cs
    cdef ExtentList ext
    cdef char *buf = NULL
    cdef int rc = 0
    cdef size_t blk = 4096
    cdef off_t size
    cdef int pipefd[2]
    cdef int psize
    cdef size_t rsize
    cdef char *zeros = NULL
    cdef size_t zsize = 0
    cdef bint try_clone
    if reflink not in (NEVER, AUTO, ALWAYS) or sparse not in (NEVER, AUTO, ALWAYS):
        raise ValueError("reflink and sparse take NEVER, AUTO or ALWAYS")
    if reflink == ALWAYS and sparse != AUTO:
        raise ValueError("reflink=always requires sparse=auto")
    memset(&cs, 0, sizeof(cs))
    memset(&ext, 0, sizeof(ext))
    with nogil:
        if fstat(src_fd, &st0) != 0 or fstat(dst_fd, &dst_st) != 0:
            rc = errno
    if rc:
        raise OSError(rc, _strerror(rc))
    size = st0.st_size
    if dst_st.st_blksize > 0 and dst_st.st_blksize <= 1 << 20:
        blk = <size_t>dst_st.st_blksize
    rsize = _buffer_size(bufsize, size)
    buf = <char *>malloc(rsize)
    if buf == NULL:
        raise MemoryError()
    if sparse == NEVER:
        zsize = rsize
        zeros = <char *>calloc(1, zsize)
        if zeros == NULL:
            free(buf)
            raise MemoryError()
    pipefd[0] = -1
    pipefd[1] = -1
    psize = 0
    global noclone_src_dev, noclone_dst_dev, noclone_known
    try_clone = not (noclone_known and noclone_src_dev == st0.st_dev
                     and noclone_dst_dev == dst_st.st_dev)
    # A file that fits in the buffer goes through it (one pread, one pwrite):
    # a pipe would cost four more system calls per file.
    if allow_splice and sparse != ALWAYS and size > <off_t>rsize:
        psize = _open_pipe(pipefd, rsize, size)
    try:
        with nogil:
            rc = do_copy(src_fd, dst_fd, size, reflink, sparse, allow_copy_file_range,
                         try_clone, pipefd[0], pipefd[1], <size_t>psize,
                         buf, rsize, zeros, zsize, blk, &ext, &cs)
            if rc == 0 and fstat(src_fd, &st1) != 0:
                rc = errno
        if cs.clone_errno == EOPNOTSUPP or cs.clone_errno == ENOTTY or cs.clone_errno == EXDEV:
            noclone_src_dev = st0.st_dev
            noclone_dst_dev = dst_st.st_dev
            noclone_known = True
        if rc:
            raise OSError(rc, _strerror(rc))
        return _copy_report(&cs, ext.n, &st0, &st1, expected_size, expected_mtime_ns)
    finally:
        free(buf)
        free(zeros)
        free(ext.v)
        if pipefd[0] >= 0:
            close(pipefd[0])
            close(pipefd[1])


def fs_magic(int fd):
    """The filesystem type (``statfs.f_type``, e.g. 0xEF53 for ext4) of ``fd``."""
    cdef statfs sfs
    cdef int rc
    with nogil:
        rc = fstatfs(fd, &sfs)
    if rc != 0:
        raise OSError(errno, _strerror(errno))
    return <unsigned long>sfs.f_type & 0xFFFFFFFF


include "ranges.pxi"
