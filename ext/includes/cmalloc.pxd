# <malloc.h>: glibc's mallopt, to tune when freed heap goes back to the kernel.
# Declarations only.

cdef extern from "<malloc.h>" nogil:
    enum:
        M_TRIM_THRESHOLD
        M_MMAP_THRESHOLD
    int mallopt(int param, int value)
