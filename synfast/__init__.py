"""synfast: fast, safe copies and backups of LMDB environments and sparse files.

The API lives in the domain packages, lowest layer first: :mod:`synfast.errors`
and :mod:`synfast.workers` (shared by all), :mod:`synfast.files` (one file:
extents, sparse copies, atomic placement), :mod:`synfast.lmdb` (environments,
snapshots, engines), :mod:`synfast.copy` (trees), :mod:`synfast.backup`
(backups, verify, restore, retention) and, beside them, :mod:`synfast.tls`
(certdirs and TLS URLs); :mod:`synfast.cli` is the command line on top.  A
lower layer never imports a higher one.  Importing the package itself stays
cheap so that the command line starts fast.
"""

__version__ = "0.1.0"
