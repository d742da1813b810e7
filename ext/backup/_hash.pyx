# cython: language_level=3
"""XXH3-128 from the system's libxxhash: the segment digests of synfast's
canonical checksum, and an incremental hasher.

The checksum (``xxh3-128-sparse-v3``, defined in ``synfast.backup.checksum``)
hashes each 64 MiB segment of a file on its own.  :func:`segment_digests`
(segments.pxi) reads a segment's data blocks through a mapping of the file
where they are cached, with pread elsewhere (blocks inside holes are never
read), feeds the canonical form (``D`` + block, ``Z`` + length of a run of zero
blocks, ``E`` + segment length) to XXH3-128, and runs without the GIL, so the
caller hashes segments on every core.  :class:`XXH3` is the same hash for
bytes already in memory (a stream); it releases the GIL on large updates.
No hash code of synfast's own: the rounds are the library's.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from libc.errno cimport errno
from posix.types cimport off_t
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE

from cerrno cimport EINTR, EIO, EFBIG
from cfcntl cimport openat, O_RDONLY, O_NOFOLLOW, O_CLOEXEC
from cunistd cimport pread, read, close
from cmman cimport mmap, munmap, MAP_FAILED, MAP_SHARED, PROT_READ
from csigbus_guard cimport sf_guard_install, sf_guarded
from ccachestat cimport sf_cached_pages
from posix.unistd cimport sysconf, _SC_PAGESIZE

cdef extern from "xxh_shim.h" nogil:
    ctypedef struct XXH3_state_t:
        pass
    ctypedef struct XXH128_hash_t:
        uint64_t low64
        uint64_t high64
    ctypedef struct XXH128_canonical_t:
        unsigned char digest[16]
    XXH3_state_t *XXH3_createState()
    int XXH3_freeState(XXH3_state_t *state)
    int XXH3_128bits_reset(XXH3_state_t *state)
    int sf_xxh3_128_update(XXH3_state_t *state, const void *data, size_t n)
    XXH128_hash_t XXH3_128bits_digest(const XXH3_state_t *state)
    void XXH128_canonicalFromHash(XXH128_canonical_t *dst, XXH128_hash_t h)
    unsigned XXH_versionNumber()

cdef enum:
    # The canonical form's block (must match synfast.backup.checksum.BLOCK).
    BLOCK = 65536
    # The canonical form's segment (must match synfast.backup.checksum.SEGMENT).
    SEGMENT = 64 * 1024 * 1024
    # Bytes read per pread: 16 blocks.
    CAP = 16 * 65536
    # Data ranges at least this long whose pages are all in the page cache
    # are hashed through a mapping of the file (no copy out of the cache: a
    # third of pread's CPU time here); shorter ones are read (a mapping costs
    # two system calls and a TLB flush), and so are ranges not cached, since a
    # fault's read-ahead (8 MiB here) would also fill the cache from the
    # holes around the range.
    MAP_MIN = 1024 * 1024
    DIGEST = 16

cdef long PAGE = sysconf(_SC_PAGESIZE)

# Updates smaller than this keep the GIL (releasing it costs more).
cdef size_t NOGIL_MIN = 4096


cdef struct Seg:
    off_t start
    off_t end
    const off_t *ranges      # (first, end) pairs: block ranges that touch data
    Py_ssize_t nranges
    uint8_t digest[DIGEST]


cdef inline bint _all_zero(const uint8_t *p, size_t n) noexcept nogil:
    if n == 0:
        return True
    return p[0] == 0 and memcmp(p, p + 1, n - 1) == 0


cdef inline void _tag(XXH3_state_t *st, uint8_t tag, uint64_t value, bint with_value) noexcept nogil:
    cdef uint8_t rec[9]
    cdef int i
    rec[0] = tag
    if not with_value:
        sf_xxh3_128_update(st, rec, 1)
        return
    for i in range(8):
        rec[1 + i] = <uint8_t>(value >> (8 * i))
    sf_xxh3_128_update(st, rec, 9)


cdef uint64_t _feed_blocks(XXH3_state_t *st, const uint8_t *p, size_t n,
                          uint64_t zero_run) noexcept nogil:
    """Feed ``n`` bytes that start on a block boundary to the canonical form,
    a block at a time: a zero block extends the run of zeros, any other is
    ``D`` + its bytes after the run's ``Z``.  Returns the run left open."""
    cdef size_t b = 0, m
    while b < n:
        m = n - b if n - b < BLOCK else BLOCK
        if _all_zero(p + b, m):
            zero_run += m
        else:
            if zero_run:
                _tag(st, 90, zero_run, True)        # 'Z'
                zero_run = 0
            _tag(st, 68, 0, False)                 # 'D'
            sf_xxh3_128_update(st, p + b, m)
        b += m
    return zero_run


include "segments.pxi"


cdef void _whole(const uint8_t *p, uint64_t n, XXH3_state_t *st, uint8_t *out) noexcept nogil:
    """The file checksum of ``n`` bytes in memory, ``n`` at most one segment:
    the segment's canonical digest, then ``S`` + it + ``E`` + size."""
    cdef uint64_t zero_run
    cdef XXH128_canonical_t seg, whole
    XXH3_128bits_reset(st)
    zero_run = _feed_blocks(st, p, <size_t>n, 0)
    if zero_run:
        _tag(st, 90, zero_run, True)
    _tag(st, 69, n, True)                          # 'E'
    XXH128_canonicalFromHash(&seg, XXH3_128bits_digest(st))
    XXH3_128bits_reset(st)
    _tag(st, 83, 0, False)                         # 'S'
    sf_xxh3_128_update(st, seg.digest, DIGEST)
    _tag(st, 69, n, True)
    XXH128_canonicalFromHash(&whole, XXH3_128bits_digest(st))
    memcpy(out, whole.digest, DIGEST)


def whole_digests(list contents):
    """The ``xxh3-128-sparse-v3`` checksum (16 bytes) of each of ``contents``,
    whole small files in memory (buffers of at most one segment, 64 MiB),
    hashed one after another with the GIL released."""
    cdef Py_ssize_t n = len(contents), i, got = 0
    cdef Py_buffer *views = <Py_buffer *>calloc(n if n else 1, sizeof(Py_buffer))
    cdef uint8_t *out = <uint8_t *>calloc(n * DIGEST if n else 1, 1)
    cdef XXH3_state_t *st = XXH3_createState()
    try:
        if views == NULL or out == NULL or st == NULL:
            raise MemoryError()
        for i in range(n):
            PyObject_GetBuffer(contents[i], &views[i], PyBUF_SIMPLE)
            got += 1
            if views[i].len > SEGMENT:
                raise ValueError("whole_digests: a content longer than a segment")
        with nogil:
            for i in range(n):
                _whole(<const uint8_t *>views[i].buf, <uint64_t>views[i].len, st,
                       out + i * DIGEST)
        return [(<char *>out)[i * DIGEST:(i + 1) * DIGEST] for i in range(n)]
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        if st != NULL:
            XXH3_freeState(st)
        free(views)
        free(out)


def file_digests(int dir_fd, list names, Py_ssize_t cap):
    """The ``xxh3-128-sparse-v3`` checksum of each small file ``names`` (bytes)
    of the directory open on ``dir_fd``, read whole (a hole reads as zeros,
    which the canonical form does not tell apart), one after another with the
    GIL released.  Each result is the 16-byte digest, or an errno (``EFBIG``
    for a file longer than ``cap`` bytes, at most one segment)."""
    cdef Py_ssize_t n = len(names), i
    cdef const char **pn = <const char **>calloc(n if n else 1, sizeof(char *))
    cdef int *codes = <int *>calloc(n if n else 1, sizeof(int))
    cdef uint8_t *out = <uint8_t *>calloc(n * DIGEST if n else 1, 1)
    cdef uint8_t *buf = NULL
    cdef XXH3_state_t *st = XXH3_createState()
    cdef int fd
    cdef ssize_t k
    cdef size_t got
    if cap < 0 or cap > SEGMENT:
        raise ValueError("file_digests: cap is at most one segment")
    buf = <uint8_t *>calloc(<size_t>cap + 1, 1)
    try:
        if pn == NULL or codes == NULL or out == NULL or buf == NULL or st == NULL:
            raise MemoryError()
        for i in range(n):
            if type(names[i]) is not bytes:
                raise TypeError("file_digests: names are bytes")
            pn[i] = <const char *>(<bytes>names[i])
        with nogil:
            for i in range(n):
                fd = openat(dir_fd, pn[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                if fd < 0:
                    codes[i] = errno
                    continue
                got = 0
                while got <= <size_t>cap:
                    k = read(fd, buf + got, <size_t>cap + 1 - got)
                    if k < 0:
                        if errno == EINTR:
                            continue
                        codes[i] = errno
                        break
                    if k == 0:
                        break
                    got += <size_t>k
                close(fd)
                if codes[i] == 0 and got > <size_t>cap:
                    codes[i] = EFBIG
                if codes[i] == 0:
                    _whole(buf, got, st, out + i * DIGEST)
        return [codes[i] if codes[i] else (<char *>out)[i * DIGEST:(i + 1) * DIGEST]
                for i in range(n)]
    finally:
        if st != NULL:
            XXH3_freeState(st)
        free(pn)
        free(codes)
        free(out)
        free(buf)


cdef class XXH3:
    """An incremental XXH3-128 (the ``hashlib`` way: update, digest, hexdigest)."""

    cdef XXH3_state_t *st

    def __cinit__(self):
        self.st = XXH3_createState()
        if self.st == NULL:
            raise MemoryError()
        XXH3_128bits_reset(self.st)

    def __dealloc__(self):
        if self.st != NULL:
            XXH3_freeState(self.st)

    def update(self, data):
        """Add ``data`` (any contiguous buffer: bytes, bytearray, memoryview)."""
        # The buffer protocol, not a typed memoryview: Cython's memoryview
        # support registers its types at import inside a bare "except: pass"
        # that would swallow a Ctrl-C or SIGTERM arriving then.
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if <size_t>view.len >= NOGIL_MIN:
                with nogil:
                    sf_xxh3_128_update(self.st, view.buf, <size_t>view.len)
            else:
                sf_xxh3_128_update(self.st, view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)

    def digest(self):
        """The 16-byte canonical (big-endian) digest of what was added so far."""
        cdef XXH128_canonical_t out
        XXH128_canonicalFromHash(&out, XXH3_128bits_digest(self.st))
        return (<char *>out.digest)[:DIGEST]

    def hexdigest(self):
        return self.digest().hex()


cdef class Canonical:
    """The canonical digest (XXH3-128) of one segment starting at ``start``,
    whose bytes arrive in order from a stream: what is skipped is a hole.  The
    zero test, the tags and the hash run in C without the GIL, a whole buffer
    per call (a stream's segments are hashed on threads of their own)."""

    cdef XXH3_state_t *st
    cdef off_t start, pos, zrun
    cdef uint8_t *block
    cdef size_t fill

    def __cinit__(self, off_t start):
        self.st = XXH3_createState()
        self.block = <uint8_t *>calloc(BLOCK, 1)
        if self.st == NULL or self.block == NULL:
            raise MemoryError()
        XXH3_128bits_reset(self.st)
        self.start = self.pos = start
        self.zrun = 0
        self.fill = 0

    def __dealloc__(self):
        if self.st != NULL:
            XXH3_freeState(self.st)
        free(self.block)

    cdef void _block(self, const uint8_t *p, size_t m) noexcept nogil:
        if _all_zero(p, m):
            self.zrun += m
            return
        if self.zrun:
            _tag(self.st, 90, <uint64_t>self.zrun, True)
            self.zrun = 0
        _tag(self.st, 68, 0, False)
        sf_xxh3_128_update(self.st, p, m)

    cdef void _zeros(self, off_t n) noexcept nogil:
        cdef size_t take
        cdef off_t whole
        if n and self.fill:
            take = BLOCK - self.fill
            if <off_t>take > n:
                take = <size_t>n
            memset(self.block + self.fill, 0, take)
            self.fill += take
            self.pos += take
            n -= take
            if self.fill == BLOCK:
                self._block(self.block, BLOCK)
                self.fill = 0
        whole = n // BLOCK * BLOCK
        self.zrun += whole
        self.pos += whole
        if n - whole:
            memset(self.block, 0, <size_t>(n - whole))
            self.fill = <size_t>(n - whole)
            self.pos += n - whole

    cdef void _data(self, const uint8_t *p, size_t n) noexcept nogil:
        cdef size_t take
        while n:
            if self.fill or n < BLOCK:
                take = BLOCK - self.fill
                if take > n:
                    take = n
                memcpy(self.block + self.fill, p, take)
                self.fill += take
                p += take
                n -= take
                self.pos += take
                if self.fill == BLOCK:
                    self._block(self.block, BLOCK)
                    self.fill = 0
            else:
                self._block(p, BLOCK)
                p += BLOCK
                n -= BLOCK
                self.pos += BLOCK

    def data(self, off_t offset, buf):
        """Add the bytes of ``buf`` at ``offset`` (at or after what came before)."""
        cdef Py_buffer view
        if offset < self.pos:
            raise ValueError("canonical digest fed out of order")
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            with nogil:
                self._zeros(offset - self.pos)
                self._data(<const uint8_t *>view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)

    def finish(self, off_t end):
        """The segment's digest, the segment ending at ``end`` (the rest a hole)."""
        cdef XXH128_canonical_t out
        if end < self.pos:
            raise ValueError("canonical digest given more bytes than its segment")
        self._zeros(end - self.pos)
        if self.fill:
            self._block(self.block, self.fill)
            self.fill = 0
        if self.zrun:
            _tag(self.st, 90, <uint64_t>self.zrun, True)
            self.zrun = 0
        _tag(self.st, 69, <uint64_t>(end - self.start), True)
        XXH128_canonicalFromHash(&out, XXH3_128bits_digest(self.st))
        return (<char *>out.digest)[:DIGEST]


def library_version():
    """libxxhash's version, as major * 10000 + minor * 100 + release."""
    return XXH_versionNumber()
