# cython: language_level=3
"""Segment digests of synfast's canonical file checksum, four segments at a time.

The checksum (``blake2b-256-sparse-v2``, defined in ``synfast.backup.checksum``) hashes
each 64 MiB segment of a file on its own.  Here one thread hashes four segments
side by side: each lane reads its segment's data blocks with pread straight
into its own buffer, in the canonical form (``D`` + block, ``Z`` + length of a
run of zero blocks, ``E`` + segment length), and the lanes' 128-byte BLAKE2b
blocks are compressed together in AVX2 registers.  Blocks inside holes are
never read.  Everything runs without the GIL.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove, memset, memcmp
from libc.errno cimport errno
from posix.types cimport off_t

from cerrno cimport EINTR, EIO
from cunistd cimport pread

cdef extern from "blake2b4.h" nogil:
    void sf_b2_init(uint64_t *h, unsigned outlen)
    void sf_b2_compress(uint64_t *h, const uint8_t *block, uint64_t t, int last)
    void sf_b2_compress4_portable(uint64_t *h, const uint8_t **blocks, const uint64_t *t)
    void sf_b2_compress4_avx2(uint64_t *h, const uint8_t **blocks, const uint64_t *t)
    int sf_b2_have_avx2()

cdef enum:
    # The canonical form's block (must match synfast.backup.checksum.BLOCK).
    BLOCK = 65536
    # A lane's buffer: a few blocks between refills.  Small on purpose: the
    # four lanes' buffers (1 MiB) stay in the CPU's caches between pread
    # filling them and the hash reading them; with 2 MiB per lane the hash of
    # a file in the page cache ran 1.0-1.28 GB/s per thread, with 256 KiB
    # 1.31-1.38 (2 x 64 KiB: 1.26-1.36, 8 x 64 KiB: 1.10-1.32).
    CAP = 4 * 65536
    LANES = 4

cdef bint HAVE_AVX2 = sf_b2_have_avx2() != 0

# The block an idle lane compresses (its result is thrown away).
cdef uint8_t DUMMY[128]

cdef enum:
    C_ONE_LANE = 0
    C_FOUR_LANES = 1
    C_FOUR_LANES_PORTABLE = 2

ONE_LANE = C_ONE_LANE
FOUR_LANES = C_FOUR_LANES
FOUR_LANES_PORTABLE = C_FOUR_LANES_PORTABLE


cdef struct Seg:
    off_t start
    off_t end
    const off_t *ranges      # (first, end) pairs: block ranges that touch data
    Py_ssize_t nranges
    uint8_t digest[32]


cdef struct Lane:
    uint64_t h[8]
    uint64_t t               # bytes compressed so far
    uint8_t *buf
    size_t r                 # next byte to compress
    size_t w                 # end of the bytes produced
    Seg *seg                 # NULL: idle
    Py_ssize_t ri            # next range of seg
    off_t pos                # next offset of the segment not yet accounted for
    off_t zero_run           # zero bytes pending before the next data block
    bint done                # the whole stream is in buf


cdef inline bint _all_zero(const uint8_t *p, size_t n) noexcept nogil:
    if n == 0:
        return True
    return p[0] == 0 and memcmp(p, p + 1, n - 1) == 0


cdef inline void _put_u64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (8 * i))


cdef int _fill(Lane *ln, int fd) noexcept nogil:
    """Produce as much of the lane's canonical stream as fits.  0 or an errno."""
    cdef Seg *s = ln.seg
    cdef off_t rs, re, n, got
    cdef size_t at
    cdef ssize_t k
    cdef size_t hdr
    while not ln.done:
        if ln.ri < s.nranges:
            rs = s.ranges[2 * ln.ri]
            re = s.ranges[2 * ln.ri + 1]
            if ln.pos < rs:
                ln.zero_run += rs - ln.pos
                ln.pos = rs
            if ln.pos >= re:
                ln.ri += 1
                continue
            n = re - ln.pos
            if n > BLOCK:
                n = BLOCK
            hdr = 10 if ln.zero_run else 1
            if ln.w + hdr + <size_t>n > CAP:
                return 0
            at = ln.w + hdr
            got = 0
            while got < n:
                k = pread(fd, ln.buf + at + got, <size_t>(n - got), ln.pos + got)
                if k < 0:
                    if errno == EINTR:
                        continue
                    return errno
                if k == 0:
                    return EIO          # the file shrank under us
                got += k
            if _all_zero(ln.buf + at, <size_t>n):
                ln.zero_run += n
            else:
                if ln.zero_run:
                    ln.buf[ln.w] = 90   # 'Z'
                    _put_u64(ln.buf + ln.w + 1, <uint64_t>ln.zero_run)
                    ln.w += 9
                    ln.zero_run = 0
                ln.buf[ln.w] = 68       # 'D'
                ln.w += 1 + <size_t>n
            ln.pos += n
        else:
            ln.zero_run += s.end - ln.pos
            ln.pos = s.end
            if ln.w + 18 > CAP:
                return 0
            if ln.zero_run:
                ln.buf[ln.w] = 90
                _put_u64(ln.buf + ln.w + 1, <uint64_t>ln.zero_run)
                ln.w += 9
                ln.zero_run = 0
            ln.buf[ln.w] = 69           # 'E'
            _put_u64(ln.buf + ln.w + 1, <uint64_t>(s.end - s.start))
            ln.w += 9
            ln.done = True
    return 0


cdef void _start(Lane *ln, Seg *s) noexcept nogil:
    sf_b2_init(ln.h, 32)
    ln.t = 0
    ln.r = 0
    ln.w = 0
    ln.seg = s
    ln.ri = 0
    ln.pos = s.start
    ln.zero_run = 0
    ln.done = False


cdef void _finish(Lane *ln) noexcept nogil:
    """Compress the last (1..128) bytes with the final flag; store the digest."""
    cdef uint8_t last[128]
    cdef size_t n = ln.w - ln.r
    memset(last, 0, 128)
    memcpy(last, ln.buf + ln.r, n)
    ln.t += n
    sf_b2_compress(ln.h, last, ln.t, 1)
    memcpy(ln.seg.digest, <uint8_t *>ln.h, 32)   # little-endian words
    ln.seg = NULL


cdef int _ready(Lane *ln, int fd) noexcept nogil:
    """Make the lane hold more than one block, or its whole remaining stream."""
    cdef int rc
    if ln.w - ln.r > 128 or ln.done:
        return 0
    if ln.r:
        memmove(ln.buf, ln.buf + ln.r, ln.w - ln.r)
        ln.w -= ln.r
        ln.r = 0
    return _fill(ln, fd)


cdef int _run(int fd, Seg *segs, Py_ssize_t nseg, int mode, Lane *lanes) noexcept nogil:
    cdef Py_ssize_t next_seg = 0
    cdef int i, active, rc
    cdef size_t k, blocks
    cdef const uint8_t *ptrs[LANES]
    cdef uint64_t ts[LANES]
    cdef uint64_t hs[LANES * 8]
    while True:
        active = 0
        for i in range(LANES):
            if lanes[i].seg == NULL and next_seg < nseg:
                _start(&lanes[i], &segs[next_seg])
                next_seg += 1
            if lanes[i].seg != NULL:
                rc = _ready(&lanes[i], fd)
                if rc:
                    return rc
                if lanes[i].done and lanes[i].w - lanes[i].r <= 128:
                    _finish(&lanes[i])
                else:
                    active += 1
        if active == 0:
            if next_seg >= nseg:
                return 0
            continue
        if active >= 2 and mode != C_ONE_LANE:
            # Two or more lanes have more than one block: compress the blocks
            # they can all spare (each keeps at least one byte for its final
            # block) side by side.  An idle lane compresses a dummy block into
            # scratch state: with two or three lanes busy the four-lane kernel
            # still beats one lane at a time (the tail of every file whose
            # segment count is not a multiple of four).
            blocks = 0
            for i in range(LANES):
                if lanes[i].seg == NULL:
                    continue
                k = (lanes[i].w - lanes[i].r - 1) // 128
                if blocks == 0 or k < blocks:
                    blocks = k
            for i in range(LANES):
                if lanes[i].seg != NULL:
                    memcpy(hs + 8 * i, lanes[i].h, 64)
                else:
                    ptrs[i] = DUMMY
                    ts[i] = 128
            while blocks:
                for i in range(LANES):
                    if lanes[i].seg == NULL:
                        continue
                    ptrs[i] = lanes[i].buf + lanes[i].r
                    lanes[i].t += 128
                    ts[i] = lanes[i].t
                    lanes[i].r += 128
                if mode == C_FOUR_LANES and HAVE_AVX2:
                    sf_b2_compress4_avx2(hs, ptrs, ts)
                else:
                    sf_b2_compress4_portable(hs, ptrs, ts)
                blocks -= 1
            for i in range(LANES):
                if lanes[i].seg != NULL:
                    memcpy(lanes[i].h, hs + 8 * i, 64)
        else:
            for i in range(LANES):
                if lanes[i].seg == NULL:
                    continue
                while lanes[i].w - lanes[i].r > 128:
                    lanes[i].t += 128
                    sf_b2_compress(lanes[i].h, lanes[i].buf + lanes[i].r, lanes[i].t, 0)
                    lanes[i].r += 128


def segment_digests(int fd, list segments, int mode=C_FOUR_LANES):
    """BLAKE2b-256 of the canonical stream of each segment of the file open on ``fd``.

    ``segments`` is a list of ``(start, end, ranges)``, ``ranges`` the sorted
    block-aligned ``(first, end)`` ranges inside the segment that touch data.
    ``mode``: FOUR_LANES (AVX2 where the CPU has it), FOUR_LANES_PORTABLE (the
    path of CPUs without AVX2) or ONE_LANE; all give the same digests (the
    last two are for tests).  Returns one 32-byte digest per segment, in order.
    """
    if mode not in (C_ONE_LANE, C_FOUR_LANES, C_FOUR_LANES_PORTABLE):
        raise ValueError("mode is ONE_LANE, FOUR_LANES or FOUR_LANES_PORTABLE")
    cdef Py_ssize_t nseg = len(segments)
    cdef Py_ssize_t i, j, total = 0
    cdef Seg *segs = NULL
    cdef off_t *pairs = NULL
    cdef Lane lanes[LANES]
    cdef int rc = 0
    for seg in segments:
        total += len(seg[2])
    segs = <Seg *>calloc(nseg if nseg else 1, sizeof(Seg))
    pairs = <off_t *>calloc(2 * total if total else 1, sizeof(off_t))
    memset(lanes, 0, sizeof(lanes))
    try:
        if segs == NULL or pairs == NULL:
            raise MemoryError()
        for i in range(LANES):
            lanes[i].buf = <uint8_t *>calloc(CAP, 1)
            if lanes[i].buf == NULL:
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
            rc = _run(fd, segs, nseg, mode, lanes)
        if rc:
            import os
            raise OSError(rc, os.strerror(rc) if rc != EIO else
                          "file shrank while being checksummed")
        return [(<char *>segs[i].digest)[:32] for i in range(nseg)]
    finally:
        for i in range(LANES):
            free(lanes[i].buf)
        free(segs)
        free(pairs)


def blake2b_256(data):
    """BLAKE2b-256 of ``data`` by this module's own compression (for tests)."""
    # bytes, not a typed memoryview: Cython's memoryview support registers its
    # types with collections.abc at import, inside a bare "except: pass" that
    # would swallow a Ctrl-C or SIGTERM arriving then.
    cdef bytes raw = bytes(data)
    cdef const uint8_t *view = <const uint8_t *><const char *>raw
    cdef uint64_t h[8]
    cdef uint8_t block[128]
    cdef size_t n = len(raw), off = 0
    cdef uint64_t t = 0
    sf_b2_init(h, 32)
    while n - off > 128:
        t += 128
        sf_b2_compress(h, &view[off], t, 0)
        off += 128
    memset(block, 0, 128)
    if n - off:
        memcpy(block, &view[off], n - off)
    t += n - off
    sf_b2_compress(h, block, t, 1)
    return (<char *>h)[:32]


def have_avx2():
    """Whether the four-lane compression uses AVX2 on this CPU."""
    return bool(HAVE_AVX2)
