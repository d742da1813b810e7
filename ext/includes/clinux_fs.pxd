# <linux/fs.h>: renameat2's flags and the FICLONE / FICLONERANGE ioctls (used
# with cioctl's ioctl).  Declarations only.

cdef extern from "<linux/fs.h>" nogil:
    enum:
        RENAME_NOREPLACE
        RENAME_EXCHANGE
        FICLONE
        FICLONERANGE
    struct file_clone_range:
        long long src_fd
        unsigned long long src_offset
        unsigned long long src_length
        unsigned long long dest_offset
