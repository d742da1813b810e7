"""Everything a backup can be asked to do, in one object that the manifest records.

Like coreutils' ``struct cp_options``: the command line fills one
:class:`BackupOptions`, the API checks it once (:meth:`BackupOptions.check`),
every stage of the backup reads it, and the manifest stores it
(:meth:`BackupOptions.as_manifest`), so a backup says how it was made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from synfast.errors import UsageError
from synfast.lmdb import check_engine

#: Directory names skipped at any depth unless ``include_tmp`` (as the Synapse tool does).
DEFAULT_SKIP_DIRS = ("tmp", "backups")
#: ``--ionice`` classes: ``idle`` (class 3) or ``low`` (best effort, level 7).
IONICE = ("idle", "low")


@dataclass
class BackupOptions:
    """How to back up a service directory; every field has the command line's default.

    ``lmdb_engine``: see :mod:`synfast.lmdb.engines` (``auto`` rebuilds every
    environment from snapshots begun together).  ``jobs``: parallel copies
    (None: one per core, at most four).  ``exclude``: globs on the relative
    path, or on the name when they hold no ``/``.  ``include_tmp``: also copy
    ``tmp/`` and ``backups/`` directories.  ``fsync``: make every file and
    directory durable.  ``checksum``: record the canonical checksum of every
    file.  ``bwlimit``: MB/s (10^6 bytes) of copying, shared by all threads.
    ``ionice``: lower the I/O priority (``idle`` or ``low``).  ``drop_cache``:
    drop the backup's pages from the page cache after each file.
    ``clean_partial``: remove unfinished backups beside the destination.
    ``pre_cmd``/``post_cmd``: shell commands run first and last (``post_cmd``
    even when the backup fails).  ``reflink``: share blocks with the source
    where the filesystem can (``auto``, ``never``, ``always``).
    ``checksum_algorithm``: ``xxh3`` (damage) or ``sha256`` (for manifests
    that are signed or published).  ``wait``: seconds to wait for another
    backup of the same source (or a prune of the same root) to finish; None
    fails at once (:mod:`synfast.backup.locks`).
    """

    lmdb_engine: str = "auto"
    jobs: int | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)
    include_tmp: bool = False
    fsync: bool = True
    checksum: bool = True
    bwlimit: float | None = None
    ionice: str | None = None
    drop_cache: bool = True
    clean_partial: bool = False
    pre_cmd: str | None = None
    post_cmd: str | None = None
    reflink: str = "auto"
    checksum_algorithm: str = "xxh3"
    wait: float | None = None

    def check(self) -> BackupOptions:
        """Refuse values that cannot work (exit code 2); return self."""
        check_engine(self.lmdb_engine)
        from synfast.backup.checksum import CHOICES

        if self.checksum_algorithm not in CHOICES:
            raise UsageError(None, f"--checksum takes {' or '.join(CHOICES)}, not "
                             f"{self.checksum_algorithm!r}")
        if self.ionice is not None and self.ionice not in IONICE:
            raise UsageError(None, f"--ionice takes idle or low, not {self.ionice!r}")
        if self.bwlimit is not None and not (math.isfinite(self.bwlimit) and self.bwlimit > 0):
            raise UsageError(None, "--bwlimit must be a positive number of MB/s")
        if self.wait is not None and not (math.isfinite(self.wait) and self.wait >= 0):
            raise UsageError(None, "--wait must be a number of seconds, 0 or more")
        self.exclude = tuple(self.exclude)
        return self

    @property
    def skip_dirs(self) -> tuple[str, ...]:
        """Directory names left out at any depth."""
        return () if self.include_tmp else DEFAULT_SKIP_DIRS

    def as_manifest(self) -> dict:
        """The options as the manifest records them."""
        return {
            "lmdb_engine": self.lmdb_engine, "jobs": self.jobs, "exclude": list(self.exclude),
            "include_tmp": self.include_tmp, "fsync": self.fsync, "checksum": self.checksum,
            "bwlimit_mb_s": self.bwlimit, "ionice": self.ionice, "drop_cache": self.drop_cache,
            "pre_cmd": self.pre_cmd, "post_cmd": self.post_cmd, "reflink": self.reflink,
            "checksum_algorithm": self.checksum_algorithm,
        }

    @property
    def algorithm(self) -> str | None:
        """The manifest's name of the checksum, or None without checksums."""
        from synfast.backup.checksum import CHOICES

        return CHOICES[self.checksum_algorithm] if self.checksum else None
