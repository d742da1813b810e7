# LMDB failures raised as LmdbError, written once for the modules under
# ext/lmdb/ (_lmdb and _rebuild include it).  The includer must have the name
# LmdbError in its globals: _lmdb.pyx defines the class and _rebuild.pyx
# imports it from synfast.lmdb._lmdb, so there is one class.

from clmdb cimport mdb_strerror


cdef raise_lmdb(path, int rc, operation):
    """Raise LmdbError for LMDB's return code ``rc`` with LMDB's own message."""
    raise LmdbError(path, rc, mdb_strerror(rc).decode("utf-8", "replace"), operation)
