# <errno.h>: the error numbers synfast's extensions tell apart.  Declarations
# only.  (errno itself and ENOMEM come from Cython's libc.errno.)

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
        ENOENT
        ELOOP
        EFBIG
