# <sys/mman.h>: mapping files, and madvise to release mapped pages.  Declarations only.

from posix.types cimport off_t

cdef extern from "<sys/mman.h>" nogil:
    enum:
        MADV_DONTNEED
        PROT_READ
        MAP_SHARED
    void *MAP_FAILED
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
