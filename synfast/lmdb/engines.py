"""LMDB copy engines: snapshots, the native rebuild, and the automatic choice.

Three ways to copy a live LMDB environment, all from a consistent read snapshot:

``raw``
    ``mdb_env_copyfd2`` without compaction: every page up to the last one used,
    free pages included.  As fast as a file copy; the output is as large as
    the source's used part.
``compact``
    ``mdb_env_copyfd2`` with ``MDB_CP_COMPACT``: only reachable pages,
    renumbered.  Slow on environments with many values larger than a page
    (LMDB hands each one between two threads), and pages keep the source's fill.
``rebuild``
    this module's native engine (:mod:`synfast.lmdb._rebuild`): every database read
    with a cursor inside one read transaction and written into a new
    environment in key order with ``MDB_APPEND``.  Pages come out full, so the
    output is the smallest of the three, and on overflow-heavy data it is
    many times faster than LMDB's ``mdb_copy -c``.  It cannot see custom
    comparators (see below).

Why the caller controls snapshots: :func:`open_snapshots` begins the read
transactions of several environments back to back before anything is copied,
so a backup of a whole service directory reflects one moment across all of its
environments (as far as separate environments allow: their transactions are
separate, but they begin within microseconds of each other).

Custom comparators (``mdb_set_compare`` / ``mdb_set_dupsort``) are not recorded
in an environment and cannot be detected through LMDB's API.  The rebuild
writes keys in the order the source's cursor returns them and LMDB checks each
append against the default order of the database's flags, so such an
environment fails to rebuild (``MDB_KEYEXIST``) or, worse, would come out in
an order its owner does not expect.  py-lmdb (and so Synapse) cannot set custom
comparators; for environments written by other programs that do, use ``raw``
or ``compact``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from synfast.errors import (
    CopyFailed,
    DestinationExists,
    NotAnEnvironment,
    SourceMissing,
    SynfastError,
    convert_error,
)
from synfast.files.durable import fsync_dir, place, remove_path
from synfast.lmdb._lmdb import LmdbError
from synfast.lmdb._rebuild import Snapshot, begin_all

__all__ = [
    "ENGINES",
    "Snapshot",
    "choose_engine",
    "engine_facts",
    "env_layout",
    "open_snapshot",
    "open_snapshots",
    "rebuild_environment",
]

ENGINES = ("auto", "rebuild", "compact", "raw")

# The first meta page starts with a 16-byte page header followed by the meta
# record, whose first field is LMDB's magic number (little-endian on the
# platforms synfast runs on).
_META_MAGIC = (0xBEEFC0DE).to_bytes(4, "little")
_META_MAGIC_OFFSET = 16


# The ``auto`` rule's thresholds; see choose_engine() and the README's "How auto chooses"
# for the measurements behind them.
AUTO_MIN_REBUILD_SAVING = 0.10
# An already compact environment goes to LMDB's compacting copy when it has at
# most this many overflow pages per entry (each overflow value costs that copy a
# hand-off between its threads: about 37 us each on dataset Ac, against 0.27 us
# per entry that it saves over a rebuild on dataset C; break-even near 0.7%).
AUTO_COMPACT_MAX_OVERFLOW = 0.005
AUTO_SAMPLE_ENTRIES = 2000


def env_layout(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Return ``(path, subdir)`` for the environment at ``path``.

    A directory environment holds ``data.mdb`` (and ``lock.mdb``); a single-file
    (``MDB_NOSUBDIR``) environment is the data file itself, with its lock file
    beside it as ``NAME-lock``.  A file is accepted only when it starts with an
    LMDB meta page, so a wrong path fails here with a clear message instead of
    LMDB creating a lock file next to something that is not an environment.
    """
    p = Path(path)
    if not p.exists():
        raise SourceMissing(p, "no such environment", "check the path")
    if p.is_dir():
        data = p / "data.mdb"
        if not data.is_file():
            raise NotAnEnvironment(
                p, "directory holds no data.mdb, so it is not an LMDB environment",
                "give the environment's directory (the one holding data.mdb)")
        _check_magic(data)
        return p, True
    if p.is_file():
        _check_magic(p)
        return p, False
    raise NotAnEnvironment(p, "not a directory or a regular file",
                           "give an LMDB environment directory or data file")


def _check_magic(data: Path) -> None:
    try:
        with open(data, "rb") as f:
            head = f.read(_META_MAGIC_OFFSET + 4)
    except OSError as err:
        raise convert_error(err, data) from None
    if head[_META_MAGIC_OFFSET:_META_MAGIC_OFFSET + 4] != _META_MAGIC:
        raise NotAnEnvironment(data, "not an LMDB data file (no LMDB meta page)",
                               "give an LMDB environment directory or data file")


def open_snapshot(path: str | os.PathLike[str], *, begin: bool = True) -> Snapshot:
    """Open the environment at ``path`` read-only, with its lock file, and begin
    one read transaction (unless ``begin`` is false).

    The snapshot holds the transaction until ``close()``: a live writer keeps
    every page it can reach, so the environment's file may grow meanwhile.
    Never open the same environment twice in one process (with this module or
    py-lmdb): closing either handle would drop the other's locks.
    """
    p, subdir = env_layout(path)
    try:
        return Snapshot(os.fspath(p), subdir=subdir, begin=begin)
    except LmdbError as err:
        raise convert_error(err) from None
    except OSError as err:
        raise convert_error(err, p) from None


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
        begin_all(snaps)
    except LmdbError as err:
        for s in snaps:
            s.close()
        raise convert_error(err) from None
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
    ``elapsed`` (seconds) and ``path``.
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
    from synfast.lmdb import env as lmdbenv

    code = lmdbenv.destination_errno(err.code, out)
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
                      source: str | os.PathLike[str]) -> dict[str, Any]:
    """Rebuild ``snap`` into the new single data file ``out`` of a tree being
    built (copy and backup), then close the snapshot.  Returns the engine's report.

    On any failure ``out`` is removed.  An LMDB failure of the destination
    (a full disk, which LMDB reports as EIO) becomes that OS error naming
    ``display``, the final name; any other LMDB failure names ``source``;
    OS errors name ``display``.
    """

    try:
        return snap.rebuild(os.fspath(out), subdir=False)
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


def engine_facts(snapshot: Snapshot, sample: int = AUTO_SAMPLE_ENTRIES) -> dict[str, Any]:
    """The cheap facts the ``auto`` rule looks at, from the database records of
    ``snapshot`` and the first ``sample`` entries of each database.

    ``total_pages`` is the environment's used extent (last page + 1), which a
    raw copy writes in full; ``db_pages`` the pages its databases' trees hold;
    ``free_fraction`` the rest over the extent.  ``rebuild_pages`` predicts a
    rebuild's output: overflow pages as they are, and leaf pages as full as
    appends make them, from the leaf room of the sampled entries (DUPSORT
    databases are counted as they are: no saving is claimed for them).
    ``rebuild_saving`` is the predicted share of ``total_pages`` a rebuild
    leaves out.
    """
    stats = snapshot.stats(sample)
    dbs = [stats["main"], *stats["named"].values()]
    psize = stats["page_size"]
    total = stats["last_pgno"] + 1
    used = sum(d["branch_pages"] + d["leaf_pages"] + d["overflow_pages"] for d in dbs) + 2
    predicted = 2
    for d in dbs:
        pages = d["branch_pages"] + d["leaf_pages"] + d["overflow_pages"]
        if d["sampled_entries"] == 0 or d["leaf_pages"] == 0:
            predicted += pages
            continue
        mean_node = d["sampled_node_bytes"] / d["sampled_entries"]
        # A full page still ends with a gap where the next node did not fit:
        # about half a node, weighted by size (E[X^2] / 2E[X]).  Without this
        # the prediction for dataset B was 0.92 GB against 1.04 GB written.
        gap = d["sampled_node_sq"] / (2 * d["sampled_node_bytes"])
        room = max(psize - 16 - gap, (psize - 16) / 2)
        leaf = -(-int(d["entries"] * mean_node) // int(room))
        ratio = min(1.0, leaf / d["leaf_pages"])
        predicted += min(leaf, d["leaf_pages"]) + int(d["branch_pages"] * ratio + 0.999)
        predicted += d["overflow_pages"]
    free = max(total - used, 0)
    return {
        "total_pages": total,
        "db_pages": used,
        "free_pages": free,
        "free_fraction": free / total if total else 0.0,
        "overflow_pages": sum(d["overflow_pages"] for d in dbs),
        "entries": sum(d["entries"] for d in dbs),
        "named_databases": len(stats["named"]),
        "page_size": psize,
        "rebuild_pages": predicted,
        "rebuild_saving": 1 - predicted / total if total else 0.0,
    }


def choose_engine(source: str | os.PathLike[str] | Snapshot) -> str:
    """Pick the engine for ``auto`` in ``synfast copy``: ``"rebuild"`` or ``"compact"``.

    ``source`` is an environment's path or a begun :class:`Snapshot` of it
    (pass the snapshot when you hold one: opening the environment a second
    time in this process would drop the snapshot's locks when it is closed).

    Rule: ``rebuild`` when it is predicted to leave out at least
    AUTO_MIN_REBUILD_SAVING (10%) of the pages a raw copy would write (free
    pages, and leaf pages left part full by random inserts).  Otherwise the
    environment is already compact and every engine writes the same pages;
    then ``compact`` when it has few overflow values (at most
    AUTO_COMPACT_MAX_OVERFLOW overflow pages per entry), else ``rebuild``.
    ``raw`` is never chosen: it was the slower of the two on both compact
    datasets.

    Measured with bench/lmdb_engines.py (steady memory, medians of 3):
    dataset A (overflow-heavy, deletes): predicted saving 27.9%, rebuild
    1.96 GB in 2.49 s against raw's 2.72 GB in 4.20 s and compact's 2.25 GB
    in 9.96 s; dataset B (small values, random inserts, 4% free pages):
    predicted saving 33.2%, rebuild 1.04 GB against 1.55 GB raw.  Compact
    datasets: C (B rebuilt; no overflow pages) compact 1.01 s, rebuild 1.53,
    raw 1.69; Ac (A rebuilt; 0.5 overflow pages per entry) rebuild 1.54 s,
    raw 2.89, compact 8.38.  Free pages alone would get B wrong.
    """
    if isinstance(source, Snapshot):
        facts = engine_facts(source)
    else:
        snap = open_snapshot(source)
        try:
            facts = engine_facts(snap)
        finally:
            snap.close()
    return _rule(facts)


def _rule(facts: dict[str, Any]) -> str:
    if facts["rebuild_saving"] >= AUTO_MIN_REBUILD_SAVING:
        return "rebuild"
    if facts["overflow_pages"] <= AUTO_COMPACT_MAX_OVERFLOW * facts["entries"]:
        return "compact"
    return "rebuild"
