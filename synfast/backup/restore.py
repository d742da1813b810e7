"""Restoring a backup as a service directory, without ever losing the old one.

``restore(BACKUP, SERVICEDIR)`` verifies the backup (every checksum, every
environment walked), refuses while any environment in SERVICEDIR is open by a
process (by LMDB's lock files: a dead process holds no lock), copies the backup
into ``SERVICEDIR.partial`` (sparse files stay sparse; every file fsynced),
checks again that the service has not started meanwhile, moves an existing
SERVICEDIR aside to ``SERVICEDIR.old-YYYYmmddTHHMMSS`` and renames the copy into
place.  Any failure removes ``SERVICEDIR.partial`` and leaves SERVICEDIR as it was.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from synfast import workers
from synfast.backup import manifest
from synfast.copy.walk import deepest_first, inside
from synfast.errors import DestinationExists, SourceMissing, SynfastError, UsageError, convert_error
from synfast.files import durable
from synfast.files import sparse as files
from synfast.lmdb.env import environments_in_use


class ServiceInUse(SynfastError):
    """A process has an LMDB environment of the target open."""


class BackupDamaged(SynfastError):
    """The backup failed verification."""


@dataclass
class RestoreReport:
    backup: Path
    service_dir: Path
    moved_aside: Path | None
    files: int = 0
    environments: int = 0
    verified: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"ok": True, "backup": str(self.backup), "service_dir": str(self.service_dir),
                "moved_aside": str(self.moved_aside) if self.moved_aside else None,
                "files": self.files, "environments": self.environments,
                "verified": self.verified, "seconds": round(self.seconds, 6)}


def check_not_in_use(service: Path, doing: str = "restoring",
                     hint: str = "stop the service first, or pass --force") -> None:
    """Refuse (:class:`ServiceInUse`) while another live process has an
    environment under ``service`` open; ``doing`` and ``hint`` word it."""
    if not service.is_dir():
        return
    busy = environments_in_use(service)
    if busy:
        env, pid = busy[0]
        more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
        who = f"process {pid}" if pid else "a process in another PID namespace (a container?)"
        raise ServiceInUse(env, f"is open by {who}{more}; {doing} under a running "
                           "service destroys it", hint)


def restore(
    backup_dir: str | os.PathLike[str],
    service_dir: str | os.PathLike[str],
    *,
    verify: bool = True,
    force: bool = False,
    jobs: int | None = None,
    fsync: bool = True,
) -> RestoreReport:
    """Restore the backup ``backup_dir`` as ``service_dir`` (see the module docstring)."""
    t0 = time.monotonic()
    bdir = Path(os.path.abspath(backup_dir))
    service = Path(os.path.abspath(service_dir))
    doc = manifest.read(bdir)
    if verify:
        from synfast.backup import verify as verify_mod

        vr = verify_mod.verify(bdir, jobs=jobs)
        if vr.problems:
            first = vr.problems[0]
            raise BackupDamaged(bdir, f"fails verification ({len(vr.problems)} problems; "
                                f"first: {first.path}: {first.message})",
                                "run synfast verify for the list, and restore another backup")
    _check_target(service)
    if inside(service.resolve(), bdir.resolve()) or inside(bdir.resolve(), service.resolve()):
        raise UsageError(service, "overlaps the backup", "restore to another place")
    partial = _start_partial(service, force)
    report = RestoreReport(bdir, service, None, verified=verify)
    try:
        entries = [e for e in doc["entries"] if e["path"].split("/")[0] != manifest.META_DIR]
        _build(bdir, entries, partial, service, jobs=jobs, fsync=fsync)
        if not force:
            check_not_in_use(service)   # again: the service may have started meanwhile
        report.moved_aside = _swap_in(partial, service, fsync=fsync)
    except BaseException:
        durable.remove_unfinished(partial)
        raise
    report.files = sum(1 for e in entries if e["type"] == "file")
    report.environments = len(doc["environments"])
    report.seconds = time.monotonic() - t0
    return report


def _check_target(service: Path) -> None:
    """The service directory may be replaced: a directory or nothing, in an existing parent."""
    if os.path.lexists(service) and not service.is_dir():
        raise UsageError(service, "exists and is not a directory", "give a service directory")
    if not service.parent.is_dir():
        raise SourceMissing(service.parent, "does not exist (the service directory's parent)",
                            "create it first")


def _start_partial(service: Path, force: bool) -> Path:
    """Refuse a service in use (unless ``force``), then make ``SERVICEDIR.partial``."""
    if not force:
        check_not_in_use(service)
    partial = service.with_name(service.name + ".partial")
    try:
        os.mkdir(partial, 0o700)
    except FileExistsError as err:
        raise DestinationExists(partial, "exists (left by an interrupted restore?)",
                                "remove it first") from err
    except OSError as err:
        raise convert_error(err, partial) from err
    return partial


def restore_stream(stream: IO[bytes], label: str, service_dir: str | os.PathLike[str], *,
                   force: bool = False, fsync: bool = True) -> RestoreReport:
    """Restore the backup stream ``stream`` (named ``label`` in messages) as
    ``service_dir``: extracted into ``SERVICEDIR.partial`` with every check of
    :func:`synfast.backup.unstream.extract`, every environment walked, then
    swapped in as :func:`restore` does.  Any failure removes the partial
    directory and leaves SERVICEDIR as it was."""
    from synfast.backup import unstream
    from synfast.backup import verify as verify_mod

    t0 = time.monotonic()
    service = Path(os.path.abspath(service_dir))
    _check_target(service)
    partial = _start_partial(service, force)
    report = RestoreReport(Path(label), service, None, verified=True)
    try:
        doc = unstream.extract(stream, partial, label, fsync=fsync)
        vr = verify_mod.verify(partial, checksums=False, record=False)
        if vr.problems:
            first = vr.problems[0]
            raise BackupDamaged(label, f"fails verification ({len(vr.problems)} problems; "
                                f"first: {first.path.replace(str(partial), '', 1).lstrip('/')}"
                                f": {first.message})", "restore another backup")
        shutil.rmtree(partial / manifest.META_DIR)
        if not force:
            check_not_in_use(service)   # again: the service may have started meanwhile
        report.moved_aside = _swap_in(partial, service, fsync=fsync)
    except BaseException:
        durable.remove_unfinished(partial)
        raise
    report.files = doc["totals"].get("files", 0)
    report.environments = len(doc["environments"])
    report.seconds = time.monotonic() - t0
    return report


def _build(bdir: Path, entries: list[dict], partial: Path, service: Path, *,
           jobs: int | None, fsync: bool) -> None:
    """Copy the backup's ``entries`` into ``partial``: directories, then files and
    environments in parallel (largest first), symlinks, directory metadata."""
    dirs = [e for e in entries if e["type"] == "dir"]
    for d in sorted(dirs, key=lambda d: d["path"]):
        if d["path"]:
            os.mkdir(partial / d["path"], 0o700)
    regular = [e for e in entries if e["type"] in ("file", "env")]
    regular.sort(key=lambda e: e.get("allocated", 0), reverse=True)

    def do(e: dict) -> None:
        src = bdir / e["path"]
        try:
            st = os.lstat(src)
        except OSError as err:
            raise convert_error(err, src) from err
        files.copy_file_new(src, partial / e["path"], st, preserve=True, fsync=fsync,
                            display_dst=service / e["path"])

    workers.run_all(do, regular, workers.default_workers(jobs), "synfast-rs",
                    cancel=workers.Cancel())
    for e in entries:
        if e["type"] == "symlink":
            link = partial / e["path"]
            os.symlink(os.readlink(bdir / e["path"]), link)
            files.apply_metadata(link, os.lstat(bdir / e["path"]))
    for d in deepest_first(dirs, lambda d: d["path"]):
        target = partial / d["path"] if d["path"] else partial
        files.apply_metadata(target, os.lstat(bdir / d["path"] if d["path"] else bdir))
        if fsync:
            durable.fsync_dir(target)


def _swap_in(partial: Path, service: Path, *, fsync: bool) -> Path | None:
    """Move an existing ``service`` aside (``.old-STAMP``), then ``partial`` into
    its place; return where the old one went."""
    old: Path | None = None
    if os.path.lexists(service):
        stamp = time.strftime("%Y%m%dT%H%M%S")
        old = service.with_name(f"{service.name}.old-{stamp}")
        n = 1
        while os.path.lexists(old):
            n += 1
            old = service.with_name(f"{service.name}.old-{stamp}-{n}")
        durable.place(service, old)
    durable.place(partial, service)
    if fsync:
        durable.fsync_dir(service.parent)
    return old
