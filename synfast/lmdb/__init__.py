"""LMDB environments: recognised by content, opened safely, copied consistently.

The rules every module here keeps, because a copy that breaks one is corrupt
or hides us from a live writer:

- an environment is recognised by its meta page, never its name
  (:mod:`~synfast.lmdb.meta`, which reads two small blocks and opens nothing);
- a source is opened read-only *with* its lock file, so a live writer sees our
  read transaction and keeps every page we may read (:mod:`~synfast.lmdb.env`);
  ``MDB_NOLOCK`` only on private copies;
- a process never opens one environment twice (closing either handle drops
  the other's POSIX locks);
- nothing is ever committed to a source; ``lock.mdb`` is never copied.

Copies: :mod:`~synfast.lmdb.snapshot` opens snapshots and begins their read
transactions back to back (one moment across a service's environments) and
rebuilds a snapshot natively in key order; :mod:`~synfast.lmdb.env` wraps LMDB's
own copy (compacting or raw); :mod:`~synfast.lmdb.engines` holds the engine
table and the one adapter that copy and backup use;
:mod:`~synfast.lmdb.choose` is ``auto``'s rule.

Layering: this package uses :mod:`synfast.errors`, :mod:`synfast.workers` and
:mod:`synfast.files` only.  The extensions ``_lmdb`` and ``_rebuild`` (source
under ``ext/lmdb/``) are imported only by ``env`` and ``snapshot``.
"""
