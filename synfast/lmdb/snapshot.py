"""Read snapshots of live environments, begun together, and the native rebuild.

A :class:`Snapshot` is an environment opened read-only with its lock file and
one read transaction begun in it; a live writer keeps every page the snapshot
can reach until it is closed.  :func:`open_snapshots` opens every environment
first (the slow part: files, locks, maps) and then begins all the read
transactions back to back without the GIL (:func:`begin_together`), so that
the environments of a service reflect one moment as closely as separate
environments allow: their transactions begin within microseconds of each other.

The rebuild (:meth:`Snapshot.rebuild`, native) reads every database of a
snapshot with a cursor and writes a new environment in key order with
``MDB_APPEND``: pages come out full and renumbered.  It cannot see custom
comparators (``mdb_set_compare`` / ``mdb_set_dupsort``), which LMDB does not
record: such an environment fails to rebuild (``MDB_KEYEXIST``) or would come
out in an order its owner does not expect.  py-lmdb (and so Synapse) cannot set
them; for environments written by programs that do, use ``raw`` or ``compact``.

This module is the only importer of the extension :mod:`synfast.lmdb._rebuild`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from synfast.errors import CopyFailed, DestinationExists, SynfastError, convert_error
from synfast.files.durable import fsync_dir, place, remove_path
from synfast.lmdb._rebuild import Snapshot, begin_all
from synfast.lmdb.env import LmdbError, destination_errno
from synfast.lmdb.meta import EnvLocation, env_layout

__all__ = [
    "Snapshot",
    "begin_together",
    "open_snapshot",
    "open_snapshots",
    "rebuild_data_file",
    "rebuild_environment",
]


def open_snapshot(path: str | os.PathLike[str] | EnvLocation, *,
                  begin: bool = True) -> Snapshot:
    """Open the environment at ``path`` read-only, with its lock file, and begin
    one read transaction (unless ``begin`` is false).

    ``path`` is checked first (:func:`~synfast.lmdb.meta.env_layout`: a
    directory holding a data file, or a data file, with an LMDB meta page),
    unless it is the :class:`~synfast.lmdb.meta.EnvLocation` a walk found by
    that same check: a tree of thousands of environments is not checked twice.

    The snapshot holds the transaction until ``close()``: a live writer keeps
    every page it can reach, so the environment's file may grow meanwhile.
    Never open the same environment twice in one process (with this module or
    py-lmdb): closing either handle would drop the other's locks.
    """
    p, subdir = (path.path, path.subdir) if isinstance(path, EnvLocation) else env_layout(path)
    try:
        return Snapshot(os.fspath(p), subdir=subdir, begin=begin)
    except LmdbError as err:
        raise convert_error(err) from None
    except OSError as err:
        raise convert_error(err, p) from None


def begin_together(snaps: Sequence[Snapshot]) -> tuple[float, float]:
    """Begin the read transactions of the opened ``snaps`` back to back, without
    the GIL.  Returns the wall-clock times just before and just after: every
    snapshot's moment lies between them."""
    before = time.time()
    try:
        begin_all(list(snaps))
    except LmdbError as err:
        raise convert_error(err) from None
    return before, time.time()


def open_snapshots(paths: Iterable[str | os.PathLike[str]]) -> list[Snapshot]:
    """Open every environment first, then begin all their read transactions back
    to back (without the GIL), so that the snapshots reflect one moment.

    Opening is the slow part (files, locks, maps); beginning a read transaction
    takes microseconds, so the snapshots are as close in time as separate
    environments allow.  On error every snapshot opened so far is closed.
    """
    snaps: list[Snapshot] = []
    try:
        for path in paths:
            snaps.append(open_snapshot(path, begin=False))
        begin_together(snaps)
    except BaseException:
        for s in snaps:
            s.close()
        raise
    return snaps


def rebuild_environment(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    snapshot: Snapshot | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Rebuild the environment at ``src`` into a new environment at ``dst``.

    The output is written under a temporary sibling name
    (``.NAME.synfast-tmp-XXXXXXXX``), fsynced, and renamed to ``dst`` only when
    complete, without replacing anything: an existing ``dst`` is an error, and
    on any error (or Ctrl-C) the temporary output is removed.  ``dst`` takes
    the source's layout (a directory holding ``data.mdb``, or a single file);
    no lock file is written (LMDB creates it when the copy is opened).

    ``snapshot`` is a snapshot of ``src`` begun earlier (see
    :func:`open_snapshots`); it stays open for the caller to close.  Without
    it, a snapshot is taken now and closed afterwards.  ``options`` go to
    :meth:`Snapshot.rebuild` (``txn_bytes``, ``txn_entries``).

    Returns the engine's report: ``engine``, ``txnid``, ``page_size``,
    ``map_size``, ``entries``, ``named_databases``, ``bytes_written``,
    ``last_pgno`` (the copy's), ``elapsed`` (seconds) and ``path``.
    """
    dst = Path(dst)
    if os.path.lexists(dst):
        raise DestinationExists(dst, "destination exists",
                                "remove it or choose another destination")
    parent = dst.parent
    if not parent.is_dir():
        raise CopyFailed(dst, "destination's parent directory does not exist",
                         "create it first")
    own = snapshot is None
    snap = open_snapshot(src) if own else snapshot
    tmp = parent / f".{dst.name}.synfast-tmp-{secrets.token_hex(4)}"
    try:
        try:
            report = snap.rebuild(os.fspath(tmp), **options)
            if report["subdir"]:
                fsync_dir(tmp)
            place(tmp, dst)
        except LmdbError as err:
            mine = _output_error(err, tmp, dst)    # judged while the output exists
            remove_path(tmp)
            if mine is not None:
                raise mine from None
            raise
        except BaseException:
            remove_path(tmp)
            raise
        fsync_dir(parent)
    except LmdbError as err:
        raise convert_error(err) from None
    except FileExistsError:
        raise DestinationExists(dst, "destination exists",
                                "remove it or choose another destination") from None
    except OSError as err:
        raise convert_error(err) from None
    finally:
        if own:
            snap.close()
    report["path"] = os.fspath(dst)
    return report


def _destination_error(err: LmdbError, out: Path, display: Path) -> SynfastError | None:
    """``err`` as a failure to write the output ``out``, named ``display``, when
    its code is the destination's (LMDB's EIO on a full disk becomes the full
    disk it is), else None.  Must be judged before ``out`` is removed: removing
    it frees the space that tells a full disk from another EIO."""
    code = destination_errno(err.code, out)
    if code is None:
        return None
    return convert_error(OSError(code, os.strerror(code)), display)


def _output_error(err: LmdbError, tmp: Path, dst: Path) -> SynfastError | None:
    """A failure of the output being written at ``tmp``, named as ``dst``, the
    destination the caller asked for.  None when ``err`` is the source's."""
    if err.path != os.fspath(tmp):
        return None
    return _destination_error(err, tmp, dst) or convert_error(err, dst)


def rebuild_data_file(snap: Snapshot, out: Path, display: Path,
                      source: str | os.PathLike[str], *, sync: bool = True) -> dict[str, Any]:
    """Rebuild ``snap`` into the new single data file ``out`` of a tree being
    built (copy and backup), then close the snapshot.  Returns the engine's report.

    The file is fsynced before this returns, unless ``sync`` is false: for a
    caller that fsyncs it afterwards anyway (a backup applies the file's
    metadata, takes its checksum and fsyncs it), a second fsync per
    environment is one more journal commit for nothing.

    On any failure ``out`` is removed.  An LMDB failure of the destination
    (a full disk, which LMDB reports as EIO) becomes that OS error naming
    ``display``, the final name; any other LMDB failure names ``source``;
    OS errors name ``display``.
    """

    try:
        return snap.rebuild(os.fspath(out), subdir=False, sync=sync)
    except LmdbError as err:
        mine = _destination_error(err, out, display)
        remove_path(out)
        if mine is not None:
            raise mine from err
        raise convert_error(err, source) from err
    except OSError as err:
        remove_path(out)
        raise convert_error(err, display) from err
    except BaseException:
        remove_path(out)
        raise
    finally:
        snap.close()
