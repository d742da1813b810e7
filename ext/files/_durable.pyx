# cython: language_level=3
"""Durable, atomic placement primitives (mechanism only; policy lives in
synfast.files.durable): renames that never replace, or that swap, and hints to
the page cache about when to write back and what to drop.  Each call runs with
the GIL released."""

from libc.errno cimport errno

from cfcntl cimport (
    AT_FDCWD, POSIX_FADV_DONTNEED, SYNC_FILE_RANGE_WRITE, posix_fadvise, sync_file_range,
)
from cstdio cimport renameat2
from cunistd cimport syncfs
from clinux_fs cimport RENAME_NOREPLACE, RENAME_EXCHANGE

include "pyos.pxi"


def rename_noreplace(src, dst):
    """rename(2) that fails with EEXIST instead of replacing an existing ``dst``."""
    _rename(src, dst, RENAME_NOREPLACE)


def rename_exchange(a, b):
    """Atomically swap two existing paths (renameat2 RENAME_EXCHANGE)."""
    _rename(a, b, RENAME_EXCHANGE)


cdef _rename(src, dst, unsigned int flags):
    cdef bytes a = _fs(src)
    cdef bytes b = _fs(dst)
    cdef const char *pa = a
    cdef const char *pb = b
    cdef int rc
    with nogil:
        rc = renameat2(AT_FDCWD, pa, AT_FDCWD, pb, flags)
    if rc != 0:
        raise OSError(errno, _strerror(errno), src, None, dst)


def start_writeback(int fd):
    """Start writing ``fd``'s dirty pages to disk without waiting
    (sync_file_range SYNC_FILE_RANGE_WRITE); a later fsync waits for less."""
    cdef int rc
    with nogil:
        rc = sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
    if rc != 0:
        raise OSError(errno, _strerror(errno))


def drop_cache(int fd, long long offset=0, long long length=0):
    """Ask the kernel to drop the cached pages of ``fd`` (POSIX_FADV_DONTNEED)."""
    cdef int rc
    with nogil:
        rc = posix_fadvise(fd, offset, length, POSIX_FADV_DONTNEED)
    if rc:
        raise OSError(rc, _strerror(rc))


def sync_filesystem(int fd):
    """Write out everything dirty on the filesystem holding ``fd`` and wait
    for it (syncfs), reporting a writeback error met since ``fd`` was opened."""
    cdef int rc
    with nogil:
        rc = syncfs(fd)
    if rc != 0:
        raise OSError(errno, _strerror(errno))
