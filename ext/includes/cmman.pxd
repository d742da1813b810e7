# <sys/mman.h>: madvise, to release mapped pages.  Declarations only.

cdef extern from "<sys/mman.h>" nogil:
    enum:
        MADV_DONTNEED
    int madvise(void *addr, size_t length, int advice)
