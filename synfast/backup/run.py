"""A backup of a live service directory, made so that it is whole or absent.

``backup(SRC, DST)`` builds the backup under ``DST.partial`` (a sibling, so the
final rename is atomic; see :mod:`synfast.backup.stage` for what happens in
it), writes the manifest last and renames the directory to ``DST``: a ``DST``
that exists is always complete.  A backup killed at any moment leaves only
``DST.partial``, recognisable by its marker (:mod:`synfast.backup.partials`);
the next run reports it, and ``--clean-partial`` or ``prune`` removes it.

Every LMDB environment is copied from a read snapshot, through LMDB, with the
source opened with its lock file (a live writer sees us and keeps our pages).
With the ``rebuild`` engine (and ``auto``) the snapshots of all environments
are begun back to back before anything is copied, so the backup reflects one
moment across all of them as closely as separate environments allow; the
manifest records each snapshot's transaction id and time, and their spread.

Before anything is written the arguments are checked: the source must be a
directory, the destination must not exist, must not lie inside the source nor
contain it, and its parent must exist; ``--exclude`` globs that can never match
are refused.  ``--pre-cmd`` runs before the walk and ``--post-cmd`` at the end,
even when the backup fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synfast import limits, workers
from synfast.backup import hooks, locks, manifest
from synfast.backup.options import BackupOptions
from synfast.backup.pacing import set_ionice
from synfast.backup.partials import Partial, find_partials
from synfast.backup.stage import ProgressFn, Stage
from synfast.copy.walk import Entry, Plan, inside, matches, walk_tree
from synfast.errors import DestinationExists, SourceMissing, UsageError, convert_error
from synfast.files import durable
from synfast.files.sparse import source_stat
from synfast.lmdb import SNAPSHOT_ENGINES


def _skipped_record(path: str, kind: str) -> dict:
    """How a skipped entry appears in the manifest and in ``--json``."""
    return {"path": path, "type": kind, "reason": "removed during the backup"
            if kind.startswith("file removed") else "not a regular file"}


@dataclass
class BackupReport:
    """What a backup did; ``manifest`` is the manifest as written."""

    source: Path
    destination: Path
    manifest: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    stale_partials: list[Partial] = field(default_factory=list)
    removed_partials: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    checksum_seconds: float = 0.0

    def as_dict(self) -> dict:
        m = self.manifest
        return {
            "ok": True,
            "source": str(self.source),
            "destination": str(self.destination),
            "seconds": round(self.seconds, 6),
            "checksum_seconds": round(self.checksum_seconds, 6),
            "totals": m.get("totals", {}),
            "snapshots": m.get("snapshots", {}),
            "environments": [
                {k: e[k] for k in ("path", "engine", "txnid", "snapshot_time", "entries",
                                   "bytes_written")}
                for e in m.get("environments", [])
            ],
            "skipped": [_skipped_record(p, t) for p, t in self.skipped],
            "excluded": self.excluded,
            "stale_partials": [p.as_dict() for p in self.stale_partials],
            "removed_partials": [str(p) for p in self.removed_partials],
        }


def resolve_destination(dst: str | os.PathLike[str], when: float | None = None) -> Path:
    """Expand strftime fields (``%Y%m%d`` ...) in ``dst`` with the local time."""
    text = os.fspath(dst)
    if "%" in text:
        text = time.strftime(text, time.localtime(when if when is not None else time.time()))
    return Path(os.path.abspath(text))


def _check_excludes(src: Path, patterns: tuple[str, ...]) -> None:
    """Refuse --exclude patterns that can never match a path relative to SRC
    (a user who gave one would believe the path was left out)."""
    for p in patterns:
        if not p.strip("/"):
            raise UsageError(None, f"--exclude {p!r} matches nothing",
                             "give a path or glob relative to the source")
        if ".." in p.split("/"):
            raise UsageError(None, f"--exclude {p!r} climbs out of the source with ..",
                             "give a path or glob relative to the source")
        if p.startswith("/") and (p == str(src) or p.startswith(str(src) + "/")):
            raise UsageError(None, f"--exclude {p!r} is a full path",
                             f"give it relative to the source: {p[len(str(src)) + 1:] or '.'}")


def _walk(src: Path, exclude: tuple[str, ...],
          skip_dirs: tuple[str, ...]) -> tuple[Plan, list[str]]:
    """Classify everything under ``src`` like :func:`synfast.copy.tree.plan`, leaving
    out directories named in ``skip_dirs`` at any depth and paths matching
    ``exclude`` (a glob on the relative path, or on the name when it has no
    ``/``).  Returns the plan and the relative paths left out.  Entries the
    live service removes while we walk are passed over."""
    left_out: list[str] = []

    def excluded(rel: str) -> bool:
        # The source's own .synfast (a backup, or a directory restored with
        # cp -a) would collide with the backup's manifest directory.
        return rel == manifest.META_DIR or matches(rel, exclude)

    the_plan = walk_tree(src, excluded=excluded,
                         skip_dirs=frozenset(skip_dirs), vanished_ok=True, left_out=left_out)
    return the_plan, left_out


def backup(source: str | os.PathLike[str], destination: str | os.PathLike[str],
           options: BackupOptions | None = None, *, progress: ProgressFn | None = None,
           **fields: Any) -> BackupReport:
    """Back up the service directory ``source`` to the new directory ``destination``.

    ``destination`` may hold strftime fields.  ``options`` says how (see
    :class:`BackupOptions`); keyword ``fields`` are a shorthand for its fields.
    ``progress`` is called with ``("plan", {...})`` once and ``("item", {...})``
    after every file and environment.  Raises a :class:`SynfastError` on any
    failure, leaving no ``destination`` and removing the partial directory it
    made.
    """
    opts = (options or BackupOptions(**fields)).check()
    if options is not None and fields:
        raise TypeError("give either options or option fields, not both")
    if not os.fspath(source):
        raise UsageError(None, "SRC is empty", "give the service's directory")
    if not os.fspath(destination):
        raise UsageError(None, "DST is empty", "give the backup's directory")
    started = time.time()
    t0 = time.monotonic()
    src, dst = _check_paths(source, destination, opts, started)
    partial = dst.with_name(dst.name + ".partial")
    report = BackupReport(src, dst)
    with contextlib.ExitStack() as held:
        held.enter_context(locks.source_lock(src, {
            "pid": os.getpid(), "destination": str(dst), "started": manifest.iso(started)},
            opts.wait))
        held.enter_context(locks.root_lock(dst.parent, exclusive=False, wait=opts.wait))
        _sweep_partials(dst, partial, opts.clean_partial, report)
        if opts.ionice:
            set_ionice(opts.ionice)
        _run_locked(src, partial, report, opts, progress, started)
    report.seconds = time.monotonic() - t0
    return report


def _run_locked(src: Path, partial: Path, report: BackupReport, opts: BackupOptions,
                progress: ProgressFn | None, started: float) -> None:
    """The backup proper, with the source and root locks held."""
    with hooks.around(opts.pre_cmd, opts.post_cmd):
        the_plan, report.excluded = _walk(src, opts.exclude, opts.skip_dirs)
        check_descriptors(the_plan, opts)
        try:
            os.mkdir(partial, 0o700)
        except FileExistsError as err:
            raise DestinationExists(partial, "appeared while the backup was starting",
                                    "is another backup running?") from err
        except OSError as err:
            raise convert_error(err, partial) from err
        try:
            _build(the_plan, partial, report, opts, progress, started)
        except BaseException:
            durable.remove_unfinished(partial, partial / manifest.META_DIR / manifest.MANIFEST)
            raise


def check_descriptors(the_plan: Plan, opts: BackupOptions) -> None:
    """Refuse before anything is copied when the environments whose snapshots
    are begun together (two descriptors each) cannot all be open at once."""
    envs = len(the_plan.of_kind("env"))
    if opts.lmdb_engine in ("auto", *SNAPSHOT_ENGINES):
        limits.require_descriptors(
            2 * envs, f"{the_plan.source}: a backup of its {envs} LMDB environments",
            "raise the limit: LimitNOFILE= in the systemd unit, or ulimit -n; or pass "
            "--lmdb-engine compact, which opens one environment at a time")


def _check_paths(source: str | os.PathLike[str], destination: str | os.PathLike[str],
                 opts: BackupOptions, started: float) -> tuple[Path, Path]:
    """The source directory and the destination, checked; see the module docstring."""
    src = Path(os.path.abspath(source))
    if src.is_symlink():
        # Back up what it points to: the backup's root then records the
        # directory's mode and times, not the link's.
        src = Path(os.path.realpath(src))
    dst = resolve_destination(destination, started)
    sst = source_stat(src, follow=True)
    if not stat.S_ISDIR(sst.st_mode):
        raise UsageError(src, "is not a directory", "give the service's directory")
    _check_excludes(src, opts.exclude)
    # Where the destination would be, judged before its parent must exist: a
    # destination inside the source is the mistake to name, even when the
    # directories it needs are missing too.
    real_src, real_dst = src.resolve(), Path(os.path.realpath(dst.parent)) / dst.name
    if real_dst == real_src or inside(real_dst, real_src):
        raise UsageError(dst, f"is inside the source {src}", "choose a destination outside it")
    if inside(real_src, real_dst):
        raise UsageError(dst, f"contains the source {src}", "choose another destination")
    if not dst.parent.is_dir():
        raise SourceMissing(dst.parent, "does not exist (the destination's parent directory)",
                            "create it first")
    if os.path.lexists(dst):
        raise DestinationExists(dst, "already exists", "choose a new name; backups are never "
                                "overwritten")
    return src, dst


def _sweep_partials(dst: Path, partial: Path, clean: bool, report: BackupReport) -> None:
    """Report (or with ``clean`` remove) the unfinished backups beside ``dst``;
    refuse when ``partial`` itself is taken."""
    for p in find_partials(dst.parent):
        if p.active:
            if p.path == partial:
                raise DestinationExists(partial, f"is being written by a running backup "
                                        f"(pid {p.pid})", "wait for it to finish")
            continue
        if clean:
            shutil.rmtree(p.path, ignore_errors=True)
            report.removed_partials.append(p.path)
        else:
            report.stale_partials.append(p)
    if os.path.lexists(partial):
        if clean:
            # --clean-partial removes only what a synfast backup left.
            raise DestinationExists(partial, "exists and is not an unfinished synfast backup",
                                    "move it away or choose another destination")
        raise DestinationExists(partial, "exists (left by an interrupted backup)",
                                "pass --clean-partial to remove it")


def _build(the_plan: Plan, partial: Path, report: BackupReport, opts: BackupOptions,
           progress: ProgressFn | None, started: float) -> None:
    """Copy into ``partial``, write the manifest, rename ``partial`` to the destination."""
    cancel = workers.Cancel()
    stage = Stage(the_plan, partial, report.destination, opts, cancel, progress)
    work = stage.run(started)
    report.skipped = stage.skipped
    # Larger files were fsynced one by one as they were finished; one syncfs
    # writes out the batched small files and every name and directory, while
    # the manifest is built.  The manifest is written only once it returned.
    synced = (workers.shared_executor().submit(durable.sync_filesystem, partial)
              if opts.fsync else None)
    doc = _manifest(stage, work, report, opts, started)
    text = manifest.dumps(doc)
    if synced is not None:
        try:
            synced.result()
        except OSError as err:
            raise convert_error(err, report.destination) from err
    meta = partial / manifest.META_DIR
    manifest.write_json_durably(meta / manifest.MANIFEST, doc, fsync=opts.fsync, text=text)
    os.utime(meta, ns=(time.time_ns(), time.time_ns()))
    if opts.fsync:
        durable.fsync_dir(partial)
    report.manifest = doc
    report.checksum_seconds = stage.checksum_seconds
    hooks.pause_point("manifest-written", cancel)
    dst = report.destination
    try:
        durable.place(partial, dst)
    except FileExistsError as err:
        raise DestinationExists(dst, "appeared while the backup was running",
                                "choose a new name") from err
    except OSError as err:
        raise convert_error(err, dst) from err
    # The marker stays until the rename, so that a partial with a manifest is
    # still recognised as unfinished.
    os.unlink(dst / manifest.META_DIR / manifest.PARTIAL_MARKER)
    if opts.fsync:
        durable.fsync_dir(dst.parent)


def _manifest(stage: Stage, work: list[Entry], report: BackupReport, opts: BackupOptions,
              started: float) -> dict:
    """The manifest document of a finished stage (schema: docs/reference/manifest.md)."""
    return manifest.document(
        source=stage.src, destination=str(report.destination), started=started, opts=opts,
        records=stage.records, env_records=stage.env_records,
        together=stage.copier.snapshot_time is not None, times=stage.snapshot_times,
        skipped=[_skipped_record(p, t) for p, t in report.skipped],
        excluded=report.excluded, directories=len(stage.plan.of_kind("dir")), work=work)


__all__ = ["BackupOptions", "BackupReport", "Partial", "backup", "resolve_destination"]
