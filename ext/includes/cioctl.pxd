# <sys/ioctl.h>.  Declarations only.

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)
