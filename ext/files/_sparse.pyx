# cython: language_level=3
"""Sparse-safe file copy primitives (mechanism only; policy lives in synfast.files.sparse).

Everything that can block runs with the GIL released.  Long loops re-take the GIL
every few tens of MiB only to let a pending signal (Ctrl-C) interrupt the copy.
"""

from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcmp, memset
from libc.errno cimport errno, ENOMEM
from cpython.exc cimport PyErr_CheckSignals
from posix.types cimport off_t

from cerrno cimport EINTR, EINVAL, ENXIO, EXDEV, ENOSYS, EOPNOTSUPP, EIO, ENOTTY
from cunistd cimport (
    SEEK_SET, SEEK_CUR, SEEK_DATA, SEEK_HOLE,
    lseek, pread, pwrite, read, ftruncate, close, pipe2, copy_file_range,
)
from cfcntl cimport O_CLOEXEC, F_SETPIPE_SZ, F_GETPIPE_SZ, SPLICE_F_MOVE, fcntl, splice
from clinux_fs cimport FICLONE
from cioctl cimport ioctl
from cstat cimport stat, fstat
from cvfs cimport statfs, fstatfs

include "pyos.pxi"

# Modes shared by reflink= and sparse=.
cdef enum:
    C_NEVER = 0
    C_AUTO = 1
    C_ALWAYS = 2

NEVER = C_NEVER
AUTO = C_AUTO
ALWAYS = C_ALWAYS

# How much work happens between two looks at pending signals.
cdef off_t SIGNAL_CHECK_BYTES = 64 * 1024 * 1024
# Largest single copy_file_range request; the kernel caps one call near 2 GiB anyway.
cdef size_t CFR_CHUNK = 64 * 1024 * 1024


cdef struct ExtentList:
    off_t *v          # start, length pairs
    Py_ssize_t n
    Py_ssize_t cap


cdef struct CopyStats:
    off_t data_bytes          # bytes inside the source's data extents
    off_t bytes_written       # bytes written through copy_file_range or pwrite
    off_t bytes_cloned        # bytes shared through FICLONE
    off_t zero_bytes_skipped  # all-zero blocks inside data extents left as holes
    off_t since_signal_check
    int used_reflink
    int used_cfr
    int used_splice
    int used_rw
    int cfr_refused_errno
    int clone_errno           # why FICLONE was refused (0: not tried or it worked)
    int short_read            # the source ended before the size seen at the start


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


cdef inline bint all_zero(const char *p, size_t n) noexcept nogil:
    cdef size_t i
    cdef size_t head = 16 if n > 16 else n
    for i in range(head):
        if p[i]:
            return False
    if n <= 16:
        return True
    # The first 16 bytes are zero and every byte equals the one 16 before it.
    return memcmp(p, p + 16, n - 16) == 0


cdef int write_all(int fd, const char *buf, size_t n, off_t off) noexcept nogil:
    """pwrite all n bytes, retrying short writes and EINTR.  Returns 0 or an errno."""
    cdef ssize_t w
    while n > 0:
        w = pwrite(fd, buf, n, off)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return EIO
        buf += w
        n -= <size_t>w
        off += w
    return 0


cdef int maybe_check_signals(CopyStats *st, off_t done) except -1 nogil:
    st.since_signal_check += done
    if st.since_signal_check >= SIGNAL_CHECK_BYTES:
        st.since_signal_check = 0
        with gil:
            PyErr_CheckSignals()
    return 0


cdef int copy_range_rw(int src, int dst, off_t *pos, off_t end, char *buf, size_t bufsize,
                       size_t blk, bint punch_zeros, CopyStats *st) except -1 nogil:
    """Copy [pos, end) with pread/pwrite; with punch_zeros, skip all-zero blocks.

    Returns 0 or a positive errno; -1 only when a signal handler raised.
    """
    cdef ssize_t r
    cdef size_t want, i, chunk, run_start
    cdef bint in_run
    cdef int rc
    while pos[0] < end:
        want = bufsize if <off_t>bufsize < end - pos[0] else <size_t>(end - pos[0])
        r = pread(src, buf, want, pos[0])
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        if r == 0:
            st.short_read = 1
            return 0
        if punch_zeros:
            # Blocks are aligned to absolute file offsets so holes land on block
            # boundaries of the destination filesystem.
            i = 0
            in_run = False
            run_start = 0
            while i < <size_t>r:
                chunk = blk - <size_t>((pos[0] + <off_t>i) % <off_t>blk)
                if chunk > <size_t>r - i:
                    chunk = <size_t>r - i
                if all_zero(buf + i, chunk):
                    if in_run:
                        rc = write_all(dst, buf + run_start, i - run_start, pos[0] + <off_t>run_start)
                        if rc:
                            return rc
                        st.bytes_written += <off_t>(i - run_start)
                        in_run = False
                    st.zero_bytes_skipped += <off_t>chunk
                elif not in_run:
                    in_run = True
                    run_start = i
                i += chunk
            if in_run:
                rc = write_all(dst, buf + run_start, <size_t>r - run_start, pos[0] + <off_t>run_start)
                if rc:
                    return rc
                st.bytes_written += <off_t>(<size_t>r - run_start)
        else:
            rc = write_all(dst, buf, <size_t>r, pos[0])
            if rc:
                return rc
            st.bytes_written += r
        pos[0] += r
        st.used_rw = 1
        maybe_check_signals(st, r)
    return 0


cdef int copy_range_cfr(int src, int dst, off_t *pos, off_t end, CopyStats *st,
                        bint *refused) except -1 nogil:
    """Copy [pos, end) with copy_file_range.  On a refusal (EXDEV, ENOSYS,
    EOPNOTSUPP, EINVAL) set *refused and return with *pos at the first byte not
    copied, so the caller can finish with pread/pwrite."""
    cdef off_t out_off = pos[0]
    cdef ssize_t n
    cdef size_t want
    while pos[0] < end:
        want = CFR_CHUNK if <off_t>CFR_CHUNK < end - pos[0] else <size_t>(end - pos[0])
        out_off = pos[0]
        n = copy_file_range(src, pos, dst, &out_off, want, 0)
        if n < 0:
            if errno == EINTR:
                continue
            if (errno == EXDEV or errno == ENOSYS or errno == EOPNOTSUPP
                    or errno == EINVAL):
                refused[0] = True
                st.cfr_refused_errno = errno
                return 0
            return errno
        if n == 0:
            st.short_read = 1
            return 0
        st.bytes_written += n
        st.used_cfr = 1
        maybe_check_signals(st, n)
    return 0


cdef int drain_pipe(int pipe_r, int dst, off_t *out_off, size_t n, char *buf, size_t bufsize,
                    CopyStats *st) noexcept nogil:
    """Move the n bytes left in the pipe to dst with read/pwrite (the
    destination refused splice after the source had filled the pipe)."""
    cdef ssize_t r
    cdef int rc
    while n > 0:
        r = read(pipe_r, buf, bufsize if bufsize < n else n)
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        if r == 0:
            return EIO
        rc = write_all(dst, buf, <size_t>r, out_off[0])
        if rc:
            return rc
        out_off[0] += r
        st.bytes_written += r
        n -= <size_t>r
    return 0


cdef int copy_range_splice(int src, int dst, off_t *pos, off_t end, int pipe_r, int pipe_w,
                           size_t pipe_size, char *buf, size_t bufsize, CopyStats *st,
                           bint *refused) except -1 nogil:
    """Copy [pos, end) through a pipe with splice(2): the source's page-cache
    pages go into the pipe by reference and are copied once, into the
    destination, in writes as large as the pipe (1 MiB), which large
    page-cache folios reward.  On EINVAL (a filesystem without splice) set
    *refused and return with *pos at the first byte not yet in the
    destination, so the caller can finish with pread/pwrite."""
    cdef ssize_t n, w
    cdef size_t want, left
    cdef off_t out_off
    cdef int rc
    while pos[0] < end:
        want = pipe_size if <off_t>pipe_size < end - pos[0] else <size_t>(end - pos[0])
        out_off = pos[0]
        n = splice(src, pos, pipe_w, NULL, want, SPLICE_F_MOVE)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EINVAL:
                refused[0] = True
                return 0
            return errno
        if n == 0:
            st.short_read = 1
            return 0
        left = <size_t>n
        while left > 0:
            w = splice(pipe_r, NULL, dst, &out_off, left, SPLICE_F_MOVE)
            if w < 0:
                if errno == EINTR:
                    continue
                if errno == EINVAL:
                    refused[0] = True
                    return drain_pipe(pipe_r, dst, &out_off, left, buf, bufsize, st)
                return errno
            if w == 0:
                return EIO
            left -= <size_t>w
            st.bytes_written += w
        st.used_splice = 1
        maybe_check_signals(st, n)
    return 0


cdef int fill_zeros(int dst, off_t start, off_t end, const char *zeros, size_t bufsize,
                    CopyStats *st) except -1 nogil:
    """Write explicit zeros over [start, end) (sparse=never never leaves a hole)."""
    cdef size_t want
    cdef int rc
    while start < end:
        want = bufsize if <off_t>bufsize < end - start else <size_t>(end - start)
        rc = write_all(dst, zeros, want, start)
        if rc:
            return rc
        st.bytes_written += <off_t>want
        start += <off_t>want
        maybe_check_signals(st, want)
    return 0


cdef int do_copy(int src, int dst, off_t size, int reflink, int sparse, bint allow_cfr,
                 bint try_clone, int pipe_r, int pipe_w, size_t pipe_size,
                 char *rbuf, size_t rsize, const char *zeros, size_t zsize, size_t blk,
                 ExtentList *ext, CopyStats *st) except -1 nogil:
    cdef int rc
    cdef Py_ssize_t k
    cdef off_t start, length, pos, prev_end = 0
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
        pos = start
        if use_cfr and not refused:
            rc = copy_range_cfr(src, dst, &pos, start + length, st, &refused)
            if rc:
                return rc
        if pos < start + length and not st.short_read and not splice_refused:
            rc = copy_range_splice(src, dst, &pos, start + length, pipe_r, pipe_w, pipe_size,
                                   rbuf, rsize, st, &splice_refused)
            if rc:
                return rc
        if pos < start + length and not st.short_read:
            rc = copy_range_rw(src, dst, &pos, start + length, rbuf, rsize, blk,
                               sparse == C_ALWAYS, st)
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
    if bufsize < 65536:
        bufsize = 65536
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
    # Buffers no larger than the file: a tree of small files must not pay for
    # a megabyte (zeroed, for calloc) per file.  The read buffer serves the
    # pread/pwrite path and the drain of a refused splice; the zeroed one only
    # sparse=never's hole fills.
    rsize = bufsize if <off_t>bufsize < size else <size_t>((size + 4095) // 4096 * 4096)
    if rsize < 65536:
        rsize = 65536
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
        if pipe2(pipefd, O_CLOEXEC) == 0:
            # As large as the buffer (a pipe holds 64 KiB to start with); an
            # unprivileged user past the pipe quota keeps a smaller pipe, which
            # still works.
            if size > 65536:
                fcntl(pipefd[1], F_SETPIPE_SZ, <int>rsize)
            psize = fcntl(pipefd[1], F_GETPIPE_SZ)
            if psize <= 0:
                close(pipefd[0])
                close(pipefd[1])
                pipefd[0] = -1
                pipefd[1] = -1
        else:
            pipefd[0] = -1
            pipefd[1] = -1
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
            "extents": ext.n,
            "data_bytes": cs.data_bytes,
            "hole_bytes": size - cs.data_bytes,
            "bytes_written": cs.bytes_written,
            "bytes_cloned": cs.bytes_cloned,
            "zero_bytes_skipped": cs.zero_bytes_skipped,
            "copy_file_range_refused": cs.cfr_refused_errno,
        }
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
