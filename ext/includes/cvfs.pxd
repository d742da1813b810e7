# <sys/vfs.h>: fstatfs, for the filesystem type.  Declarations only.

cdef extern from "<sys/vfs.h>" nogil:
    struct statfs:
        long f_type
    int fstatfs(int fd, statfs *buf)
