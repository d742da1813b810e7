# <fcntl.h>: open and openat, record locks, pipe sizes, splice, sync_file_range and
# posix_fadvise.  Declarations only.  Built with _GNU_SOURCE (see setup.py) so
# that splice, sync_file_range and F_SETPIPE_SZ are visible.

from posix.types cimport off_t, pid_t

cdef extern from "<fcntl.h>" nogil:
    enum:
        AT_FDCWD
        O_RDONLY
        O_RDWR
        O_WRONLY
        O_CREAT
        O_EXCL
        O_NOFOLLOW
        O_DIRECTORY
        O_CLOEXEC
        F_GETLK
        F_WRLCK
        F_RDLCK
        F_UNLCK
        F_SETPIPE_SZ
        F_GETPIPE_SZ
        SPLICE_F_MOVE
        SYNC_FILE_RANGE_WRITE
        SYNC_FILE_RANGE_WAIT_BEFORE
        SYNC_FILE_RANGE_WAIT_AFTER
        POSIX_FADV_DONTNEED
        POSIX_FADV_SEQUENTIAL
    struct flock:
        short l_type
        short l_whence
        off_t l_start
        off_t l_len
        pid_t l_pid
    int open(const char *path, int flags, ...)
    int openat(int dirfd, const char *path, int flags, ...)
    int fcntl(int fd, int cmd, ...)
    ssize_t splice(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len,
                   unsigned int flags)
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    int posix_fadvise(int fd, off_t offset, off_t len, int advice)
