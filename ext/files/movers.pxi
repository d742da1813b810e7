# The movers of _sparse.copy_fd: each copies one range of a data extent by one
# method (copy_file_range, splice through a pipe, pread/pwrite with zero-block
# skipping), or writes explicit zeros, and adds what it did to a CopyStats.
# All run without the GIL and return 0 or a positive errno (-1 only when a
# signal handler raised); a mover the kernel or filesystem refuses says so
# and leaves the position at the first byte not copied, for the next one.
# Included textually by _sparse.pyx only.

from libc.string cimport memcmp
from libc.errno cimport errno
from cpython.exc cimport PyErr_CheckSignals
from posix.types cimport off_t

from cerrno cimport EINTR, EINVAL, EXDEV, ENOSYS, EOPNOTSUPP, EIO
from cunistd cimport pread, pwrite, read, copy_file_range
from cfcntl cimport SPLICE_F_MOVE, splice

# How much work happens between two looks at pending signals.
cdef off_t SIGNAL_CHECK_BYTES = 64 * 1024 * 1024
# Largest single copy_file_range request; the kernel caps one call near 2 GiB anyway.
cdef size_t CFR_CHUNK = 64 * 1024 * 1024


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


cdef int move_extent(int src, int dst, off_t start, off_t end, bint use_cfr, bint *cfr_refused,
                     bint *splice_refused, int pipe_r, int pipe_w, size_t pipe_size,
                     char *rbuf, size_t rsize, size_t blk, bint punch_zeros,
                     CopyStats *st) except -1 nogil:
    """Copy the data range [start, end) to the same offsets of dst by the first
    mover that takes it: copy_file_range (if ``use_cfr`` and not refused
    before), splice through the pipe (unless refused before), else pread and
    pwrite.  A mover's refusal is remembered in ``cfr_refused`` /
    ``splice_refused`` for the next range.  Returns 0 or a positive errno;
    st.short_read says the source ended early."""
    cdef off_t pos = start
    cdef int rc
    if use_cfr and not cfr_refused[0]:
        rc = copy_range_cfr(src, dst, &pos, end, st, cfr_refused)
        if rc:
            return rc
    if pos < end and not st.short_read and not splice_refused[0]:
        rc = copy_range_splice(src, dst, &pos, end, pipe_r, pipe_w, pipe_size,
                               rbuf, rsize, st, splice_refused)
        if rc:
            return rc
    if pos < end and not st.short_read:
        rc = copy_range_rw(src, dst, &pos, end, rbuf, rsize, blk, punch_zeros, st)
        if rc:
            return rc
    return 0
