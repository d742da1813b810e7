# Included by _hash.pyx: the segment digests of a file on disk, read through
# a mapping of the file where its pages are cached and with pread elsewhere.

cdef struct Mapped:
    XXH3_state_t *st
    const uint8_t *p
    size_t n
    uint64_t zero_run


cdef void _feed_mapped(void *arg) noexcept nogil:
    cdef Mapped *m = <Mapped *>arg
    m.zero_run = _feed_blocks(m.st, m.p, m.n, m.zero_run)


cdef int _feed_range(int fd, XXH3_state_t *st, off_t pos, off_t n, uint64_t *zero_run) noexcept nogil:
    """Feed ``n`` bytes at ``pos`` (block-aligned) through a mapping of the
    file.  1 when the range is not all in the page cache or cannot be mapped
    (the caller reads it instead), 0, or an errno: EIO when the file ended
    inside the range (SIGBUS, caught)."""
    cdef void *p
    cdef Mapped m
    cdef int rc
    if sf_cached_pages(fd, <uint64_t>pos, <uint64_t>n) != (n + PAGE - 1) // PAGE:
        return 1
    p = mmap(NULL, <size_t>n, PROT_READ, MAP_SHARED, fd, pos)
    if p == MAP_FAILED:
        return 1
    m.st, m.p, m.n, m.zero_run = st, <const uint8_t *>p, <size_t>n, zero_run[0]
    rc = sf_guarded(_feed_mapped, &m)
    munmap(p, <size_t>n)
    zero_run[0] = m.zero_run
    return rc


cdef int _segment(int fd, Seg *s, XXH3_state_t *st, uint8_t *buf) noexcept nogil:
    """The digest of one segment into ``s.digest``.  0 or an errno."""
    cdef off_t pos = s.start, rs, re, n, got
    cdef uint64_t zero_run = 0
    cdef ssize_t k
    cdef Py_ssize_t i
    cdef int rc
    cdef XXH128_canonical_t out
    XXH3_128bits_reset(st)
    for i in range(s.nranges):
        rs = s.ranges[2 * i]
        re = s.ranges[2 * i + 1]
        if pos < rs:
            zero_run += <uint64_t>(rs - pos)
            pos = rs
        if re - pos >= MAP_MIN:
            rc = _feed_range(fd, st, pos, re - pos, &zero_run)
            if rc == 0:
                pos = re
            elif rc != 1:
                return rc
        while pos < re:
            n = re - pos
            if n > CAP:
                n = CAP
            got = 0
            while got < n:
                k = pread(fd, buf + got, <size_t>(n - got), pos + got)
                if k < 0:
                    if errno == EINTR:
                        continue
                    return errno
                if k == 0:
                    return EIO          # the file shrank under us
                got += k
            zero_run = _feed_blocks(st, buf, <size_t>n, zero_run)
            pos += n
    zero_run += <uint64_t>(s.end - pos)
    if zero_run:
        _tag(st, 90, zero_run, True)
    _tag(st, 69, <uint64_t>(s.end - s.start), True)                # 'E'
    XXH128_canonicalFromHash(&out, XXH3_128bits_digest(st))
    for i in range(DIGEST):
        s.digest[i] = out.digest[i]
    return 0


def segment_digests(int fd, list segments):
    """XXH3-128 of the canonical stream of each segment of the file open on ``fd``.

    ``segments`` is a list of ``(start, end, ranges)``, ``ranges`` the sorted
    block-aligned ``(first, end)`` ranges inside the segment that touch data.
    Returns one 16-byte digest (canonical, big-endian) per segment, in order.
    """
    cdef Py_ssize_t nseg = len(segments)
    cdef Py_ssize_t i, j, total = 0
    cdef Seg *segs = NULL
    cdef off_t *pairs = NULL
    cdef uint8_t *buf = NULL
    cdef XXH3_state_t *st = NULL
    cdef int rc = 0
    for seg in segments:
        total += len(seg[2])
    rc = sf_guard_install()
    if rc:
        import os
        raise OSError(rc, os.strerror(rc))
    segs = <Seg *>calloc(nseg if nseg else 1, sizeof(Seg))
    pairs = <off_t *>calloc(2 * total if total else 1, sizeof(off_t))
    buf = <uint8_t *>calloc(CAP, 1)
    st = XXH3_createState()
    try:
        if segs == NULL or pairs == NULL or buf == NULL or st == NULL:
            raise MemoryError()
        total = 0
        for i, (start, end, ranges) in enumerate(segments):
            segs[i].start = start
            segs[i].end = end
            segs[i].ranges = pairs + 2 * total
            segs[i].nranges = len(ranges)
            for j, (first, last) in enumerate(ranges):
                pairs[2 * (total + j)] = first
                pairs[2 * (total + j) + 1] = last
            total += len(ranges)
        with nogil:
            for i in range(nseg):
                rc = _segment(fd, &segs[i], st, buf)
                if rc:
                    break
        if rc:
            import os
            raise OSError(rc, os.strerror(rc) if rc != EIO else
                          "file shrank while being checksummed")
        return [(<char *>segs[i].digest)[:DIGEST] for i in range(nseg)]
    finally:
        if st != NULL:
            XXH3_freeState(st)
        free(buf)
        free(segs)
        free(pairs)
