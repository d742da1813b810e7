# <unistd.h>: seeking (with SEEK_DATA/SEEK_HOLE), positioned I/O,
# copy_file_range, pipes, usleep, ownership, unlinking and syncfs.
# Declarations only.  Built with _GNU_SOURCE (see setup.py) so that SEEK_DATA,
# copy_file_range, pipe2 and syncfs are visible.

from posix.types cimport off_t, uid_t, gid_t

cdef extern from "<unistd.h>" nogil:
    enum:
        SEEK_SET
        SEEK_CUR
        SEEK_END
        SEEK_DATA
        SEEK_HOLE
    off_t lseek(int fd, off_t offset, int whence)
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int fchown(int fd, uid_t owner, gid_t group)
    int unlinkat(int dirfd, const char *path, int flags)
    int syncfs(int fd)
    int ftruncate(int fd, off_t length)
    int fsync(int fd)
    int close(int fd)
    int pipe2(int pipefd[2], int flags)
    int usleep(unsigned int usec)
    ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out,
                            size_t len, unsigned int flags)
