# copy_ranges: chosen byte ranges of one file copied to the same offsets of a
# new one, by clone where the filesystem shares blocks, else by the movers of
# movers.pxi over the source's data extents only (a hole is never read).  The
# ranges are the caller's policy (the LMDB pages engine: the pages in use).
# Included textually at the end of _sparse.pyx, after everything it uses.

from libc.stdint cimport int64_t
from clinux_fs cimport FICLONERANGE, file_clone_range
from cfcntl cimport SYNC_FILE_RANGE_WRITE, sync_file_range

# How copy_ranges may clone: never, or one FICLONERANGE per range.  (One clone
# of the whole span with the gaps punched out afterwards was measured too: as
# fast with few ranges, twice as slow with many.)
cdef enum:
    C_CLONE_NONE = 0
    C_CLONE_RANGES = 1

CLONE_NONE = C_CLONE_NONE
CLONE_RANGES = C_CLONE_RANGES


cdef int clone_each(int src, int dst, const int64_t *r, Py_ssize_t n,
                    CopyStats *st) noexcept nogil:
    """FICLONERANGE every range.  Returns 0 or the errno of the first refusal
    (only the first range can be refused for want of support)."""
    cdef file_clone_range fcr
    cdef Py_ssize_t k
    fcr.src_fd = src
    for k in range(n):
        fcr.src_offset = <unsigned long long>r[2 * k]
        fcr.src_length = <unsigned long long>r[2 * k + 1]
        fcr.dest_offset = <unsigned long long>r[2 * k]
        if ioctl(dst, FICLONERANGE, &fcr) != 0:
            return errno
        st.bytes_cloned += r[2 * k + 1]
    return 0


cdef int move_ranges(int src, int dst, const int64_t *r, Py_ssize_t n, ExtentList *ext,
                     bint use_cfr, int pipe_r, int pipe_w, size_t pipe_size, char *rbuf,
                     size_t rsize, size_t blk, off_t writeback_every,
                     CopyStats *st) except -1 nogil:
    """Copy the parts of every range that lie in the source's data extents
    ``ext`` with move_extent, starting the destination's writeback after every
    ``writeback_every`` bytes (0: never).  Returns 0 or a positive errno."""
    cdef Py_ssize_t k, e = 0
    cdef off_t a, b, lo, hi, kicked = 0, pending = 0
    cdef bint cfr_refused = False
    cdef bint splice_refused = pipe_r < 0
    cdef int rc
    for k in range(n):
        a = r[2 * k]
        b = a + r[2 * k + 1]
        # Extents and ranges are both sorted: skip the extents that end before a.
        while e < ext.n and ext.v[2 * e] + ext.v[2 * e + 1] <= a:
            e += 1
        while e < ext.n and ext.v[2 * e] < b:
            lo = ext.v[2 * e] if ext.v[2 * e] > a else a
            hi = ext.v[2 * e] + ext.v[2 * e + 1]
            if hi > b:
                hi = b
            st.data_bytes += hi - lo
            rc = move_extent(src, dst, lo, hi, use_cfr, &cfr_refused, &splice_refused,
                             pipe_r, pipe_w, pipe_size, rbuf, rsize, blk, False, st)
            if rc:
                return rc
            if st.short_read:
                return 0
            pending += hi - lo
            if writeback_every > 0 and pending >= writeback_every:
                sync_file_range(dst, kicked, hi - kicked, SYNC_FILE_RANGE_WRITE)
                kicked = hi
                pending = 0
            if ext.v[2 * e] + ext.v[2 * e + 1] > b:
                break
            e += 1
    return 0


def copy_ranges(int src_fd, int dst_fd, ranges, *, int clone=C_CLONE_RANGES,
                bint allow_copy_file_range=True, size_t bufsize=1 << 20,
                long long writeback_every=0):
    """Copy the byte ranges ``ranges`` of the file open on ``src_fd`` to the same
    offsets of ``dst_fd``, a new file the caller has already sized.

    ``ranges`` is bytes of native int64 (offset, length) pairs, sorted and
    not overlapping.  With ``clone`` (CLONE_RANGES) the data is shared by
    FICLONERANGE where both files are on one filesystem that can;
    where it cannot (ext4, tmpfs, two filesystems) or with CLONE_NONE, the
    parts of each range inside the source's data extents move by
    copy_file_range, splice or pread/pwrite, and holes are never read.  The
    destination is not synced.  Returns a dict of what was done.
    """
    # bytes, not a typed memoryview: Cython's memoryview support registers its
    # types with collections.abc when the module is imported, inside a bare
    # "except: pass" that would swallow a Ctrl-C or SIGTERM arriving then.
    cdef bytes packed = ranges
    cdef Py_ssize_t n = len(packed) // 16
    cdef const int64_t *r = <const int64_t *><const char *>packed
    if len(packed) % 16:
        raise ValueError("ranges must be whole (offset, length) int64 pairs")
    cdef CopyStats cs
    cdef ExtentList ext
    cdef stat sst, dst_st
    cdef int rc = 0
    cdef char *buf = NULL
    cdef size_t rsize, blk = 4096
    cdef int pipefd[2]
    cdef int psize = 0
    cdef bint use_cfr = allow_copy_file_range
    cdef Py_ssize_t k
    if clone not in (CLONE_NONE, CLONE_RANGES):
        raise ValueError("clone takes CLONE_NONE or CLONE_RANGES")
    for k in range(n):
        if r[2 * k] < 0 or r[2 * k + 1] <= 0 or (k and r[2 * k] < r[2 * k - 2] + r[2 * k - 1]):
            raise ValueError("ranges must be sorted, positive and not overlapping")
    memset(&cs, 0, sizeof(cs))
    memset(&ext, 0, sizeof(ext))
    pipefd[0] = -1
    pipefd[1] = -1
    with nogil:
        if fstat(src_fd, &sst) != 0 or fstat(dst_fd, &dst_st) != 0:
            rc = errno
    if rc:
        raise OSError(rc, _strerror(rc))
    if dst_st.st_blksize > 0 and dst_st.st_blksize <= 1 << 20:
        blk = <size_t>dst_st.st_blksize
    if n and clone != C_CLONE_NONE:
        with nogil:
            rc = clone_each(src_fd, dst_fd, r, n, &cs)
        if rc == 0:
            return _ranges_report(&cs, n, "reflink")
        if cs.bytes_cloned or rc not in (EOPNOTSUPP, ENOTTY, EXDEV, EINVAL):
            raise OSError(rc, _strerror(rc))
        cs.clone_errno = rc
        rc = 0
    rsize = _buffer_size(bufsize, sst.st_size)
    buf = <char *>malloc(rsize)
    if buf == NULL:
        raise MemoryError()
    try:
        psize = _open_pipe(pipefd, rsize, sst.st_size)
        with nogil:
            rc = scan_extents(src_fd, sst.st_size, &ext)
            if rc == 0:
                rc = move_ranges(src_fd, dst_fd, r, n, &ext, use_cfr, pipefd[0], pipefd[1],
                                 <size_t>psize, buf, rsize, blk, writeback_every, &cs)
        if rc:
            raise OSError(rc, _strerror(rc))
        used = [name for name, flag in (("copy_file_range", cs.used_cfr),
                                        ("splice", cs.used_splice),
                                        ("read-write", cs.used_rw)) if flag]
        return _ranges_report(&cs, n, "+".join(used) or "none")
    finally:
        free(buf)
        free(ext.v)
        if pipefd[0] >= 0:
            close(pipefd[0])
            close(pipefd[1])


cdef dict _ranges_report(CopyStats *cs, Py_ssize_t n, str method):
    return {
        "method": method,
        "ranges": n,
        "data_bytes": cs.data_bytes if not cs.bytes_cloned else cs.bytes_cloned,
        "bytes_written": cs.bytes_written,
        "bytes_cloned": cs.bytes_cloned,
        "clone_refused": cs.clone_errno,
        "copy_file_range_refused": cs.cfr_refused_errno,
        "short_read": bool(cs.short_read),
    }
