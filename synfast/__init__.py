"""synfast: fast, safe copies and backups of LMDB environments and sparse files.

The public API lives in the submodules (``synfast.files.sparse``, ``synfast.lmdb.env``,
``synfast.copy.tree``, ``synfast.copy.scan``); importing the package itself stays cheap so
that the command line starts fast.
"""

__version__ = "0.1.0"
