"""Backups of live service directories, and restoring them.

``backup(SRC, DST)`` builds the backup under ``DST.partial`` (a sibling, so the
final rename is atomic), writes the manifest last and renames the directory to
``DST``: a ``DST`` that exists is always complete.  A backup killed at any
moment leaves only ``DST.partial``, recognisable by its marker
``.synfast/partial.json``; the next run reports it, and ``--clean-partial`` or
``prune`` removes it.

Every LMDB environment is copied from a read snapshot, through LMDB, with the
source opened with its lock file (a live writer sees us and keeps our pages).
With the ``rebuild`` engine (and ``auto``) the snapshots of all environments
are begun back to back before anything is copied, so the backup reflects one
moment across all of them as closely as separate environments allow; the
manifest records each snapshot's transaction id and time, and their spread.

``restore(BACKUP, SERVICEDIR)`` verifies the backup, refuses while any
environment in SERVICEDIR is open by a process, copies the backup into
``SERVICEDIR.partial``, moves an existing SERVICEDIR aside to
``SERVICEDIR.old-YYYYmmddTHHMMSS`` and renames the copy into place.

Test hook: when the environment variable ``SYNFAST_TEST_PAUSE_AT`` names one
of :data:`PAUSE_POINTS`, the backup prints ``paused at POINT`` on stderr when
it gets there and waits (forever, or until the file named by
``SYNFAST_TEST_RESUME_FILE`` exists), so a test can kill it, or change the
source, at that exact moment.
"""

from __future__ import annotations

import ctypes
import fnmatch
import math
import os
import platform
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synfast import __version__
from synfast.backup import manifest
from synfast.copy.tree import SMALL_FILE, Entry, Plan, run_all, walk_tree
from synfast.errors import (
    CopyFailed,
    DestinationExists,
    SourceChanged,
    SourceMissing,
    SynfastError,
    UsageError,
    convert_error,
)
from synfast.files import durable
from synfast.files import sparse as files
from synfast.lmdb import env as lmdbenv

#: Directory names skipped at any depth unless ``include_tmp`` (as the Synapse tool does).
DEFAULT_SKIP_DIRS = ("tmp", "backups")
PAUSE_POINTS = ("partial-created", "snapshots-taken", "mid-file", "manifest-written")
PAUSE_ENV = "SYNFAST_TEST_PAUSE_AT"
RESUME_ENV = "SYNFAST_TEST_RESUME_FILE"
IONICE = ("idle", "low")
_CHUNK = 1 << 20
#: How often a regular file that changes while it is copied is tried.
FILE_ATTEMPTS = 3

ProgressFn = Callable[[str, dict], None]


class ServiceInUse(SynfastError):
    """A process has an LMDB environment of the target open."""


class BackupDamaged(SynfastError):
    """The backup failed verification."""


# ------------------------------------------------------------------ engines

def available_engines() -> tuple[str, ...]:
    """The LMDB engines this installation offers (``rebuild``/``auto`` need
    :mod:`synfast.lmdb.engines`)."""
    try:
        from synfast.lmdb import engines  # noqa: F401
    except ImportError:
        return lmdbenv.ENGINES
    return ("auto", "rebuild", "compact", "raw")


def default_engine() -> str:
    return "auto" if "auto" in available_engines() else "compact"


class _EnvCopier:
    """The one place where LMDB engines plug into a backup.

    ``prepare`` runs before any copy: for ``rebuild`` and ``auto`` it opens every
    environment and begins all read transactions back to back
    (:func:`synfast.lmdb.engines.open_snapshots`); each environment is then rebuilt
    from its snapshot.  In a backup ``auto`` means exactly that: the per
    environment choice of ``compact`` that :func:`synfast.lmdb.engines.choose_engine`
    makes for ``synfast copy`` is not used, because ``mdb_env_copyfd2`` takes
    its own snapshot when it starts (stock LMDB cannot copy from a read
    transaction we hold), which would break the single moment across
    environments.  ``compact`` and ``raw`` copy each environment with
    ``mdb_env_copyfd2`` and so take each snapshot when its copy starts; the
    manifest records every snapshot's time and the spread.
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.snapshots: dict[str, Any] = {}
        self.chosen: dict[str, str] = {}
        self.snapshot_time: float | None = None
        self.snapshot_bound: float | None = None

    def prepare(self, envs: list[Entry]) -> None:
        for e in envs:
            self.chosen[e.rel] = self.engine
        if self.engine not in ("rebuild", "auto") or not envs:
            return
        from synfast.lmdb import _lmdb, engines
        from synfast.lmdb._rebuild import begin_all

        # Open everything first (slow: files, locks, maps), then begin all the
        # read transactions back to back without the GIL; the two clock reads
        # around begin_all bound the moment of every snapshot.
        for e in envs:
            assert e.env is not None
            self.snapshots[e.rel] = engines.open_snapshot(e.env.path, begin=False)
        snaps = [self.snapshots[e.rel] for e in envs]
        before = time.time()
        try:
            begin_all(snaps)
        except _lmdb.LmdbError as err:
            raise convert_error(err) from err
        after = time.time()
        self.snapshot_time = before
        self.snapshot_bound = after
        for e in envs:
            self.chosen[e.rel] = "rebuild"

    def close(self) -> None:
        for snap in self.snapshots.values():
            snap.close()
        self.snapshots.clear()

    def copy(self, e: Entry, out: Path, display: Path) -> dict:
        """Copy environment ``e`` into the new data file ``out``; return the
        manifest's facts about it (without the database counts)."""
        assert e.env is not None
        engine = self.chosen[e.rel]
        t0 = time.time()
        snap = self.snapshots.pop(e.rel, None)
        if snap is not None:
            from synfast.lmdb.engines import rebuild_data_file

            raw = rebuild_data_file(snap, out, display, e.env.data_path)
            return {
                "engine": "rebuild", "page_size": raw["page_size"], "map_size": raw["map_size"],
                "txnid": raw["txnid"], "txnid_exact": True, "txnid_min": raw["txnid"],
                "txnid_max": raw["txnid"], "snapshot_time": manifest.iso(self.snapshot_time or t0),
                "bytes_written": raw["bytes_written"],
            }
        r = lmdbenv.copy_environment(e.env, out, engine=engine, mode=0o600, display_dst=display,
                                     writeback=True)
        return {
            "engine": engine, "page_size": r.page_size, "map_size": r.map_size, "txnid": r.txnid,
            "txnid_exact": r.txnid_exact, "txnid_min": r.txnid_min, "txnid_max": r.txnid_max,
            "snapshot_time": manifest.iso(t0), "bytes_written": r.bytes_written,
        }


# ------------------------------------------------------------------ walking

def _skipped_record(path: str, kind: str) -> dict:
    """How a skipped entry appears in the manifest and in ``--json``."""
    return {"path": path, "type": kind, "reason": "removed during the backup"
            if kind.startswith("file removed") else "not a regular file"}


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
        return rel == manifest.META_DIR or _matches(rel, exclude)

    the_plan = walk_tree(src, excluded=excluded,
                         skip_dirs=frozenset(skip_dirs), vanished_ok=True, left_out=left_out)
    return the_plan, left_out


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for p in patterns:
        p = p.strip("/")
        if fnmatch.fnmatchcase(rel, p) or ("/" not in p and fnmatch.fnmatchcase(name, p)):
            return True
    return False


# ------------------------------------------------------------------ helpers

#: Set when the backup is interrupted (Ctrl-C reaches the main thread only):
#: copy threads that check it stop at their next chunk instead of finishing a
#: file that may take hours at a low --bwlimit.
_CANCEL = threading.Event()


class Cancelled(Exception):
    """A copy thread stopped because the backup was interrupted."""


def check_cancelled() -> None:
    if _CANCEL.is_set():
        raise Cancelled()


class Throttle:
    """A token bucket shared by all copy threads: callers ``consume`` the bytes
    they wrote and sleep as long as it takes to keep to ``rate`` bytes/s on
    average (bursts of up to a quarter of a second are allowed)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.lock = threading.Lock()
        self.clock = time.monotonic()

    def consume(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.clock = max(self.clock, now - 0.25) + n / self.rate
            delay = self.clock - now
        if delay > 0 and _CANCEL.wait(delay):
            raise Cancelled()


def set_ionice(level: str) -> None:
    """Lower this process's I/O priority (inherited by threads created later):
    ``idle`` (class 3) or ``low`` (best effort, level 7).  Uses the ioprio_set
    system call, which Python's os module does not wrap."""
    value = (3 << 13) if level == "idle" else ((2 << 13) | 7)
    nr = {"x86_64": 251, "aarch64": 30, "i686": 289, "i386": 289}.get(platform.machine())
    if nr is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(nr, 1, 0, value) == 0:
            return
    proc = subprocess.run(["ionice", "-c", "3" if level == "idle" else "2",
                           *(() if level == "idle" else ("-n", "7")), "-p", str(os.getpid())],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CopyFailed(None, f"cannot set the I/O priority: {proc.stderr.strip()}",
                         "run without --ionice")


def pause_point(name: str) -> None:
    """Test hook (see the module docstring): stop here when asked to, for good,
    or until the file named by ``SYNFAST_TEST_RESUME_FILE`` exists."""
    if os.environ.get(PAUSE_ENV) == name:
        sys.stderr.write(f"synfast: test hook: paused at {name}\n")
        sys.stderr.flush()
        resume = os.environ.get(RESUME_ENV)
        while not (resume and os.path.exists(resume)):
            if _CANCEL.wait(0.05 if resume else 3600):
                raise Cancelled()


def _drop_cache(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        durable.drop_cache(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_file_chunked(src: Path, dst: Path, st: os.stat_result, *, throttle: Throttle | None,
                      display_dst: Path, on_chunk: Callable[[int], None] | None = None) -> int:
    """Copy a regular file chunk by chunk, data extents only (holes stay holes),
    charging ``throttle`` for every chunk.  Used when ``--bwlimit`` is set (the
    native copy cannot be paced); creates ``dst`` exclusively and removes it on
    failure; raises :class:`SourceChanged` when the source changed meanwhile.
    Returns the data bytes copied."""
    done = 0
    with files.new_copy_fds(src, dst, display_dst, job="backup") as (sfd, dfd):
        for off, length in files.extents(sfd):
            end = off + length
            while off < end:
                try:
                    chunk = os.pread(sfd, min(_CHUNK, end - off), off)
                except OSError as err:
                    raise convert_error(err, src) from err
                if not chunk:
                    break
                try:
                    view = memoryview(chunk)
                    pos = off
                    while view:
                        n = os.pwrite(dfd, view, pos)
                        view, pos = view[n:], pos + n
                except OSError as err:
                    raise convert_error(err, display_dst) from err
                off += len(chunk)
                done += len(chunk)
                check_cancelled()
                if throttle is not None:
                    throttle.consume(len(chunk))
                if on_chunk is not None:
                    on_chunk(done)
        after = os.fstat(sfd)
        if after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
            raise SourceChanged(src, f"changed while being copied (size {st.st_size} -> "
                                f"{after.st_size})", "run the backup again when it is quiet")
        try:
            os.ftruncate(dfd, st.st_size)
        except OSError as err:
            raise convert_error(err, display_dst) from err
    return done


# ------------------------------------------------------------------ partials

@dataclass
class Partial:
    """An unfinished backup directory (``*.partial`` holding our marker)."""

    path: Path
    pid: int
    host: str
    started: float
    active: bool

    def as_dict(self) -> dict:
        return {"path": str(self.path), "pid": self.pid, "host": self.host,
                "started": manifest.iso(self.started), "active": self.active}


def read_partial(path: Path) -> Partial | None:
    """The marker of the unfinished backup ``path``, or None if it is not one of ours."""
    import json

    marker = path / manifest.META_DIR / manifest.PARTIAL_MARKER
    if path.is_symlink() or not path.is_dir():
        return None
    try:
        obj = json.loads(marker.read_text())
        pid, host = int(obj["pid"]), str(obj["host"])
        started = manifest.parse_iso(obj["started"])
    except FileNotFoundError:
        # Killed before the marker was written: the directory is empty, or
        # holds only an empty .synfast.
        try:
            names = os.listdir(path)
            if names == [manifest.META_DIR]:
                names = os.listdir(path / manifest.META_DIR)
        except OSError:
            return None
        if names:
            return None
        return Partial(path, 0, "", os.lstat(path).st_mtime, False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == manifest.hostname():
        active = pid_alive(pid) and _is_synfast(pid)
    else:
        # Another host's backup (a shared filesystem): we cannot see its
        # process, so it counts as running until it is a day old.
        active = time.time() - started < 24 * 3600
    return Partial(path, pid, host, started, active)


def _is_synfast(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"synfast" in f.read()
    except OSError:
        return True  # cannot tell: assume it is, never remove a running backup's files


def find_partials(root: Path) -> list[Partial]:
    """Every unfinished synfast backup directly under ``root``."""
    out = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        if name.endswith(".partial"):
            p = read_partial(root / name)
            if p is not None:
                out.append(p)
    return out


# ------------------------------------------------------------------ backup

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


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _run_hook(cmd: str, what: str) -> None:
    """Run a --pre-cmd/--post-cmd with the shell; its output goes to our stderr
    (stdout is kept for --json)."""
    proc = subprocess.run(["/bin/sh", "-c", cmd], stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise CopyFailed(None, f"the {what} command failed with exit code {proc.returncode}: "
                         f"{cmd}", f"fix the command or drop --{what}-cmd")


def backup(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    lmdb_engine: str | None = None,
    jobs: int | None = None,
    exclude: tuple[str, ...] = (),
    include_tmp: bool = False,
    fsync: bool = True,
    checksum: bool = True,
    bwlimit: float | None = None,
    ionice: str | None = None,
    drop_cache: bool = True,
    clean_partial: bool = False,
    pre_cmd: str | None = None,
    post_cmd: str | None = None,
    reflink: str = "auto",
    progress: ProgressFn | None = None,
) -> BackupReport:
    """Back up the service directory ``source`` to the new directory ``destination``.

    ``destination`` may hold strftime fields.  ``bwlimit`` is in MB/s (10^6
    bytes).  ``post_cmd`` runs even when the backup fails.  Raises a
    :class:`SynfastError` on any failure, leaving no ``destination`` and
    removing the partial directory it made.
    """
    engine = lmdb_engine or default_engine()
    if engine not in available_engines():
        raise UsageError(None, f"--lmdb-engine takes {', '.join(available_engines())}, "
                         f"not {engine!r}")
    if ionice is not None and ionice not in IONICE:
        raise UsageError(None, f"--ionice takes idle or low, not {ionice!r}")
    if bwlimit is not None and not (math.isfinite(bwlimit) and bwlimit > 0):
        raise UsageError(None, "--bwlimit must be a positive number of MB/s")
    if not os.fspath(source):
        raise UsageError(None, "SRC is empty", "give the service's directory")
    if not os.fspath(destination):
        raise UsageError(None, "DST is empty", "give the backup's directory")
    _CANCEL.clear()
    started = time.time()
    t0 = time.monotonic()
    src = Path(os.path.abspath(source))
    if src.is_symlink():
        # Back up what it points to: the backup's root then records the
        # directory's mode and times, not the link's.
        src = Path(os.path.realpath(src))
    dst = resolve_destination(destination, started)
    try:
        sst = os.stat(src)
    except FileNotFoundError as err:
        raise SourceMissing(src, "does not exist", "check the path") from err
    except OSError as err:
        raise convert_error(err, src) from err
    if not stat.S_ISDIR(sst.st_mode):
        raise UsageError(src, "is not a directory", "give the service's directory")
    _check_excludes(src, exclude)
    # Where the destination would be, judged before its parent must exist: a
    # destination inside the source is the mistake to name, even when the
    # directories it needs are missing too.
    real_src, real_dst = src.resolve(), Path(os.path.realpath(dst.parent)) / dst.name
    if real_dst == real_src or _inside(real_dst, real_src):
        raise UsageError(dst, f"is inside the source {src}", "choose a destination outside it")
    if _inside(real_src, real_dst):
        raise UsageError(dst, f"contains the source {src}", "choose another destination")
    if not dst.parent.is_dir():
        raise SourceMissing(dst.parent, "does not exist (the destination's parent directory)",
                            "create it first")
    if os.path.lexists(dst):
        raise DestinationExists(dst, "already exists", "choose a new name; backups are never "
                                "overwritten")
    partial = dst.with_name(dst.name + ".partial")
    report = BackupReport(src, dst)
    for p in find_partials(dst.parent):
        if p.active:
            if p.path == partial:
                raise DestinationExists(partial, f"is being written by a running backup "
                                        f"(pid {p.pid})", "wait for it to finish")
            continue
        if clean_partial:
            shutil.rmtree(p.path, ignore_errors=True)
            report.removed_partials.append(p.path)
        else:
            report.stale_partials.append(p)
    if os.path.lexists(partial):
        if clean_partial:
            # --clean-partial removes only what a synfast backup left.
            raise DestinationExists(partial, "exists and is not an unfinished synfast backup",
                                    "move it away or choose another destination")
        raise DestinationExists(partial, "exists (left by an interrupted backup)",
                                "pass --clean-partial to remove it")
    if ionice:
        set_ionice(ionice)
    throttle = Throttle(bwlimit * 1e6) if bwlimit else None
    failed = True
    try:
        if pre_cmd:
            _run_hook(pre_cmd, "pre")
        the_plan, report.excluded = _walk(src, exclude, () if include_tmp else DEFAULT_SKIP_DIRS)
        try:
            os.mkdir(partial, 0o700)
        except FileExistsError as err:
            raise DestinationExists(partial, "appeared while the backup was starting",
                                    "is another backup running?") from err
        except OSError as err:
            raise convert_error(err, partial) from err
        try:
            _execute(the_plan, partial, report, engine=engine, jobs=jobs, fsync=fsync,
                     checksum=checksum, throttle=throttle, drop=drop_cache, reflink=reflink,
                     progress=progress, started=started, options={
                         "lmdb_engine": engine, "jobs": jobs, "exclude": list(exclude),
                         "include_tmp": include_tmp, "fsync": fsync, "checksum": checksum,
                         "bwlimit_mb_s": bwlimit, "ionice": ionice, "drop_cache": drop_cache,
                         "pre_cmd": pre_cmd, "post_cmd": post_cmd, "reflink": reflink,
                     })
            pause_point("manifest-written")
            try:
                durable.place(partial, dst)
            except FileExistsError as err:
                raise DestinationExists(dst, "appeared while the backup was running",
                                        "choose a new name") from err
            except OSError as err:
                raise convert_error(err, dst) from err
            # The marker stays until the rename, so that a partial with a
            # manifest is still recognised as unfinished.
            os.unlink(dst / manifest.META_DIR / manifest.PARTIAL_MARKER)
            if fsync:
                durable.fsync_dir(dst.parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        failed = False
    finally:
        if post_cmd:
            try:
                _run_hook(post_cmd, "post")
            except SynfastError:
                if not failed:
                    raise
    report.seconds = time.monotonic() - t0
    return report


def _execute(the_plan: Plan, tmp: Path, report: BackupReport, *, engine: str,
             jobs: int | None, fsync: bool, checksum: bool, throttle: Throttle | None,
             drop: bool, reflink: str, progress: ProgressFn | None, started: float,
             options: dict) -> None:
    src = the_plan.source
    meta = tmp / manifest.META_DIR
    os.mkdir(meta, 0o755)
    manifest.write_json_durably(meta / manifest.PARTIAL_MARKER, {
        "pid": os.getpid(), "host": manifest.hostname(), "started": manifest.iso(started),
        "source": str(src), "destination": str(report.destination)}, fsync=fsync)
    pause_point("partial-created")
    dirs = the_plan.of_kind("dir")
    for d in dirs:
        if d.rel:
            os.mkdir(tmp / d.rel, 0o700)
    work = [e for e in the_plan.entries if e.kind in ("file", "env")]
    work.sort(key=lambda e: e.weight, reverse=True)
    envs = [e for e in work if e.kind == "env"]
    total = sum(e.weight for e in work)
    if progress:
        progress("plan", {"bytes": total, "items": len(work), "environments": len(envs)})
    copier = _EnvCopier(engine)
    records: dict[str, dict] = {}
    env_records: dict[str, dict] = {}
    lock = threading.Lock()
    cks_time = [0.0]
    vanished: list[str] = []
    try:
        copier.prepare(envs)
        pause_point("snapshots-taken")
        mid_file_hook = os.environ.get(PAUSE_ENV) == "mid-file"

        def finish(e: Entry, out: Path, written: int) -> None:
            fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                files.apply_metadata(fd, e.st)
                if fsync:
                    # Writeback runs while the checksum reads the pages from the
                    # cache; the fsync after it then has little left to wait for.
                    durable.start_writeback(fd)
                ost = os.fstat(fd)
                c0 = time.monotonic()
                digest = manifest.checksum_fd(fd) if checksum else None
                c1 = time.monotonic()
                if fsync:
                    os.fsync(fd)
                if drop:
                    durable.drop_cache(fd)
            finally:
                os.close(fd)
            rec = {"path": e.rel, "type": e.kind, "size": ost.st_size,
                   "allocated": ost.st_blocks * 512, "mode": stat.S_IMODE(e.st.st_mode),
                   "uid": e.st.st_uid, "gid": e.st.st_gid, "mtime_ns": e.st.st_mtime_ns,
                   "checksum": digest}
            with lock:
                records[e.rel] = rec
                cks_time[0] += c1 - c0
            if progress:
                progress("item", {"path": e.rel, "bytes": e.weight, "kind": e.kind,
                                  "written": written})

        def do_file(e: Entry) -> None:
            # A file the service changes while we copy it is copied again (it may
            # be a log being appended to); only a file that keeps changing fails.
            # A file the service removed meanwhile, or replaced with something
            # that is not a regular file, is left out and listed.
            for attempt in range(FILE_ATTEMPTS):
                try:
                    return copy_one(e)
                except SynfastError as err:
                    try:
                        st: os.stat_result | None = os.lstat(src / e.rel)
                    except FileNotFoundError:
                        st = None
                    except OSError:
                        raise err from None
                    if st is None or not stat.S_ISREG(st.st_mode):
                        with lock:
                            vanished.append(e.rel)
                        return None
                    if not isinstance(err, SourceChanged) or attempt == FILE_ATTEMPTS - 1:
                        raise
                    e.st = st

        def copy_one(e: Entry) -> None:
            check_cancelled()
            out = tmp / e.rel
            display = report.destination / e.rel
            if throttle is not None or mid_file_hook:
                def on_chunk(done: int) -> None:
                    if mid_file_hook and done < e.st.st_size:
                        pause_point("mid-file")
                written = copy_file_chunked(src / e.rel, out, e.st, throttle=throttle,
                                            display_dst=display, on_chunk=on_chunk)
            else:
                r = files.copy_file_new(src / e.rel, out, e.st, reflink=reflink, sparse="auto",
                                        preserve=False, fsync=False, display_dst=display)
                written = r.bytes_written + r.bytes_cloned
            finish(e, out, written)

        def do_env(e: Entry) -> None:
            check_cancelled()
            out = tmp / e.rel
            display = report.destination / e.rel
            facts = copier.copy(e, out, display)
            if throttle is not None:
                throttle.consume(facts["bytes_written"])
            from synfast.lmdb import _lmdb

            try:
                counts = _lmdb.env_walk(os.fspath(out), False, True, False)
            except _lmdb.LmdbError as err:
                raise CopyFailed(display, f"the copy does not open: {err.message}",
                                 "report this as a bug; the source may be damaged") from err
            dbs = {name: d["entries"] for name, d in counts["named"].items()}
            env_rel = e.rel[: -len("/data.mdb")] if e.env.subdir else e.rel
            rec = {"path": env_rel, "data": e.rel,
                   "layout": "directory" if e.env.subdir else "file", **facts,
                   "named_databases": len(dbs), "main_entries": counts["main"]["entries"],
                   "databases": dbs,
                   "entries": counts["main"]["entries"] - len(dbs) + sum(dbs.values()),
                   "source_apparent": e.st.st_size, "source_allocated": e.st.st_blocks * 512}
            with lock:
                env_records[e.rel] = rec
            finish(e, out, facts["bytes_written"])

        workers = max(1, jobs or min(4, os.cpu_count() or 1))
        run_all(lambda e: (do_env if e.kind == "env" else do_file)(e), work, workers,
                "synfast-bk", serial=lambda e: e.kind == "file" and e.weight < SMALL_FILE,
                cancel=_CANCEL)
    finally:
        copier.close()

    for e in the_plan.of_kind("symlink"):
        target = os.readlink(src / e.rel)
        os.symlink(target, tmp / e.rel)
        files.apply_metadata(tmp / e.rel, e.st)
        records[e.rel] = {"path": e.rel, "type": "symlink", "size": e.st.st_size,
                          "allocated": 0, "mode": stat.S_IMODE(e.st.st_mode), "uid": e.st.st_uid,
                          "gid": e.st.st_gid, "mtime_ns": e.st.st_mtime_ns, "target": target}
    report.skipped = [(e.rel, e.special) for e in the_plan.of_kind("special")]
    report.skipped += [(rel, "file removed during the backup") for rel in sorted(vanished)]
    for d in dirs:
        records[d.rel] = {"path": d.rel, "type": "dir", "mode": stat.S_IMODE(d.st.st_mode),
                          "uid": d.st.st_uid, "gid": d.st.st_gid, "mtime_ns": d.st.st_mtime_ns}
    # Directories last, deepest first: creating entries in a directory changes its mtime.
    for d in sorted(dirs, key=lambda d: d.rel.count("/") + (1 if d.rel else 0), reverse=True):
        files.apply_metadata(tmp / d.rel if d.rel else tmp, d.st)
        if fsync:
            durable.fsync_dir(tmp / d.rel if d.rel else tmp)

    envs_out = [env_records[k] for k in sorted(env_records)]
    times = [manifest.parse_iso(e["snapshot_time"]) for e in envs_out]
    if copier.snapshot_bound is not None and times:
        times.append(copier.snapshot_bound)
    finished = time.time()
    entries = [records[k] for k in sorted(records)]
    regular = [r for r in entries if r["type"] in ("file", "env")]
    doc = {
        "format": manifest.FORMAT,
        "version": manifest.VERSION,
        "tool": {"name": "synfast", "version": __version__},
        "source": str(src),
        "destination": str(report.destination),
        "host": manifest.hostname(),
        "started": manifest.iso(started),
        "finished": manifest.iso(finished),
        "seconds": round(finished - started, 6),
        "options": options,
        "checksum": manifest.CHECKSUM_ALGORITHM if checksum else None,
        "checksum_block": manifest.BLOCK,
        "checksum_segment": manifest.SEGMENT,
        "snapshots": {
            "method": "begun together" if copier.snapshot_time is not None
            else "one per environment, when its copy starts",
            "first": manifest.iso(min(times)) if times else None,
            "last": manifest.iso(max(times)) if times else None,
            "spread_seconds": round(max(times) - min(times), 6) if times else 0.0,
        },
        "entries": entries,
        "environments": envs_out,
        "skipped": [_skipped_record(p, t) for p, t in report.skipped],
        "excluded": report.excluded,
        "totals": {
            "files": sum(1 for r in regular if r["type"] == "file"),
            "environments": len(envs_out),
            "directories": len(dirs),
            "symlinks": sum(1 for r in entries if r["type"] == "symlink"),
            "skipped": len(report.skipped),
            "excluded": len(report.excluded),
            "apparent_bytes": sum(r["size"] for r in regular),
            "allocated_bytes": sum(r["allocated"] for r in regular),
            "source_apparent_bytes": sum(e.st.st_size for e in work),
            "source_allocated_bytes": sum(e.st.st_blocks * 512 for e in work),
            "environment_bytes_written": sum(e["bytes_written"] for e in envs_out),
            "entries": sum(e["entries"] for e in envs_out),
        },
    }
    manifest.write_json_durably(meta / manifest.MANIFEST, doc, fsync=fsync)
    os.utime(meta, ns=(time.time_ns(), time.time_ns()))
    if fsync:
        durable.fsync_dir(tmp)
    report.manifest = doc
    report.checksum_seconds = cks_time[0]


# ------------------------------------------------------------------ restore

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


def environments_in_use(root: Path) -> list[tuple[Path, int]]:
    """LMDB environments under ``root`` that another live process has open, with
    that process's pid.  Found by their lock files: every process that has an
    environment open holds LMDB's shared lock on it, and a dead process holds
    none, so stale reader slots never count."""
    from synfast.lmdb import _lmdb

    found: list[tuple[Path, int]] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name == "lock.mdb" or name.endswith("-lock"):
                lock_path = Path(dirpath) / name
                if name.endswith("-lock") and not (Path(dirpath) / name[:-5]).is_file():
                    continue
                try:
                    held, pid = _lmdb.lock_state(os.fspath(lock_path))
                except OSError:
                    continue
                # A lock is released when its process dies, so a held lock means
                # a live process; pid 0 is one in another PID namespace.
                if held and pid != os.getpid():
                    env = lock_path.parent if name == "lock.mdb" else lock_path.with_name(name[:-5])
                    found.append((env, pid))
    return found


def _check_not_in_use(service: Path) -> None:
    if not service.is_dir():
        return
    busy = environments_in_use(service)
    if busy:
        env, pid = busy[0]
        more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
        who = f"process {pid}" if pid else "a process in another PID namespace (a container?)"
        raise ServiceInUse(env, f"is open by {who}{more}; restoring under a running "
                           "service destroys it", "stop the service first, or pass --force")


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
    if os.path.lexists(service) and not service.is_dir():
        raise UsageError(service, "exists and is not a directory", "give a service directory")
    if not service.parent.is_dir():
        raise SourceMissing(service.parent, "does not exist (the service directory's parent)",
                            "create it first")
    if _inside(service.resolve(), bdir.resolve()) or _inside(bdir.resolve(), service.resolve()):
        raise UsageError(service, "overlaps the backup", "restore to another place")
    if not force:
        _check_not_in_use(service)
    partial = service.with_name(service.name + ".partial")
    if os.path.lexists(partial):
        raise DestinationExists(partial, "exists (left by an interrupted restore?)",
                                "remove it first")
    report = RestoreReport(bdir, service, None, verified=verify)
    os.mkdir(partial, 0o700)
    try:
        entries = [e for e in doc["entries"] if e["path"].split("/")[0] != manifest.META_DIR]
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

        workers = max(1, jobs or min(4, os.cpu_count() or 1))
        run_all(do, regular, workers, "synfast-rs")
        for e in entries:
            if e["type"] == "symlink":
                link = partial / e["path"]
                os.symlink(os.readlink(bdir / e["path"]), link)
                files.apply_metadata(link, os.lstat(bdir / e["path"]))
        for d in sorted(dirs, key=lambda d: d["path"].count("/") + (1 if d["path"] else 0),
                        reverse=True):
            target = partial / d["path"] if d["path"] else partial
            files.apply_metadata(target, os.lstat(bdir / d["path"] if d["path"] else bdir))
            if fsync:
                durable.fsync_dir(target)
        if not force:
            _check_not_in_use(service)   # again: the service may have started meanwhile
        if os.path.lexists(service):
            stamp = time.strftime("%Y%m%dT%H%M%S")
            old = service.with_name(f"{service.name}.old-{stamp}")
            n = 1
            while os.path.lexists(old):
                n += 1
                old = service.with_name(f"{service.name}.old-{stamp}-{n}")
            durable.place(service, old)
            report.moved_aside = old
        durable.place(partial, service)
        if fsync:
            durable.fsync_dir(service.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.files = sum(1 for e in regular if e["type"] == "file")
    report.environments = len(doc["environments"])
    report.seconds = time.monotonic() - t0
    return report
