# Python's os functions that several extensions call (_durable, _sparse,
# _lmdb, _rebuild), written once and compiled into each module that includes
# this file: ``include "pyos.pxi"`` (ext/common is on setup.py's include_path).
#
# ``cdef inline`` because an includer may use only one of them, and gcc -Wall
# warns about an unused static function but not about an unused static inline
# one.


cdef inline bytes _fs(path):
    """``path`` (str, bytes or os.PathLike) as the bytes the kernel takes."""
    import os
    return os.fsencode(path)


cdef inline str _strerror(int code):
    """The C library's message for errno ``code``, as OSError carries it."""
    import os
    return os.strerror(code)
