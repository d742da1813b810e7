# <sys/stat.h>: fstat, fchmod, futimens and the fields of struct stat that synfast reads.
# Declarations only.

from posix.types cimport off_t, mode_t

cdef extern from "<sys/stat.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    struct stat:
        unsigned long st_dev
        unsigned long st_ino
        off_t st_size
        long st_blocks
        long st_blksize
        mode_t st_mode
        timespec st_mtim
        timespec st_ctim
    bint S_ISREG(mode_t mode)
    int fstat(int fd, stat *buf)
    int fchmod(int fd, mode_t mode)
    int futimens(int fd, const timespec times[2])
