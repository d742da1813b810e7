# C declarations for the Linux file I/O calls that synfast's copy engine uses and
# that Cython's bundled posix/*.pxd files do not declare.  Built with _GNU_SOURCE
# (see setup.py) so that SEEK_DATA, copy_file_range and renameat2 are visible.

from posix.types cimport off_t, mode_t, pid_t

cdef extern from "<errno.h>" nogil:
    enum:
        ENOTSUP
        EOPNOTSUPP
        ETXTBSY
        ENOTTY
        EXDEV
        ENOSYS
        ENXIO
        EINVAL
        EINTR
        EIO
        ENOSPC
        EPERM
        EBADF
        EAGAIN
        EACCES

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
    int ftruncate(int fd, off_t length)
    int fsync(int fd)
    ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out,
                            size_t len, unsigned int flags)

cdef extern from "<fcntl.h>" nogil:
    enum:
        AT_FDCWD
        POSIX_FADV_DONTNEED
        POSIX_FADV_SEQUENTIAL
        F_GETLK
        F_WRLCK
        F_RDLCK
        F_UNLCK
        O_RDONLY
        O_RDWR
        O_CLOEXEC
    struct flock:
        short l_type
        short l_whence
        off_t l_start
        off_t l_len
        pid_t l_pid
    int fcntl(int fd, int cmd, ...)
    int posix_fadvise(int fd, off_t offset, off_t len, int advice)
    int open(const char *path, int flags, ...)

cdef extern from "<stdio.h>" nogil:
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)

cdef extern from "<linux/fs.h>" nogil:
    enum:
        RENAME_NOREPLACE
        RENAME_EXCHANGE
        FICLONE

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

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
    int fstat(int fd, stat *buf)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t count)
    int pipe2(int pipefd[2], int flags)

cdef extern from "<fcntl.h>" nogil:
    enum:
        F_SETPIPE_SZ
        F_GETPIPE_SZ
        SPLICE_F_MOVE
    ssize_t splice(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len,
                   unsigned int flags)

cdef extern from "<fcntl.h>" nogil:
    enum:
        SYNC_FILE_RANGE_WRITE
        SYNC_FILE_RANGE_WAIT_BEFORE
        SYNC_FILE_RANGE_WAIT_AFTER
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)

cdef extern from "<malloc.h>" nogil:
    enum:
        M_TRIM_THRESHOLD
        M_MMAP_THRESHOLD
    int mallopt(int param, int value)

cdef extern from "<sys/vfs.h>" nogil:
    struct statfs:
        long f_type
    int fstatfs(int fd, statfs *buf)

cdef extern from "<sys/mman.h>" nogil:
    enum:
        MADV_DONTNEED
    int madvise(void *addr, size_t length, int advice)
