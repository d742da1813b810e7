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
own copy (compacting or raw); this module holds the engine table (light, for
checking arguments); :mod:`~synfast.lmdb.engines` the one adapter that copy and
backup use;
:mod:`~synfast.lmdb.choose` is ``auto``'s rule.

Layering: this package uses :mod:`synfast.errors`, :mod:`synfast.workers` and
:mod:`synfast.files` only.  The extensions ``_lmdb`` and ``_rebuild`` (source
under ``ext/lmdb/``) are imported only by ``env`` and ``snapshot``.
"""

from synfast.errors import UsageError

#: The engines, in the order the command line lists them, and what each does.
ENGINES: dict[str, str] = {
    "auto": "pages where the destination shares blocks with the source; else rebuild where "
            "it saves 10% or more, else compact (a backup: rebuild, one moment)",
    "rebuild": "native, in key order, full pages: the smallest output",
    "compact": "mdb_env_copyfd2 with compaction: reachable pages only, renumbered",
    "raw": "mdb_env_copyfd2 without compaction: every page up to the last, numbers kept",
    "pages": "page for page from one snapshot: numbers kept, free pages as holes, "
             "blocks shared on reflink filesystems",
}

#: The engines that copy from snapshots begun together (one moment).
SNAPSHOT_ENGINES = ("rebuild", "pages")


def check_engine(name: str) -> str:
    """``name`` if it is an engine, else a usage error that lists them."""
    if name not in ENGINES:
        raise UsageError(None, f"--lmdb-engine takes {', '.join(ENGINES)}, not {name!r}")
    return name


__all__ = ["ENGINES", "SNAPSHOT_ENGINES", "check_engine"]
