# <linux/fs.h>: renameat2's flags and the FICLONE ioctl (used with cioctl's
# ioctl).  Declarations only.

cdef extern from "<linux/fs.h>" nogil:
    enum:
        RENAME_NOREPLACE
        RENAME_EXCHANGE
        FICLONE
