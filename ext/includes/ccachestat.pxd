# "cachestat.h": pages of a file range in the page cache (cachestat(2)).  Declarations only.

from libc.stdint cimport int64_t, uint64_t

cdef extern from "cachestat.h" nogil:
    int64_t sf_cached_pages(int fd, uint64_t off, uint64_t length)
