# "sigbus_guard.h": reading a mapped file without dying of SIGBUS.  Declarations only.

cdef extern from "sigbus_guard.h" nogil:
    int sf_guard_install()
    int sf_guarded(void (*fn)(void *) noexcept nogil, void *arg)
