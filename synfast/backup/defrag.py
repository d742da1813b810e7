"""``synfast defrag SERVICEDIR``: rebuild every LMDB environment of a stopped
service in place, the Synapse guide's "restore from a cold backup" in one step.

An LMDB file never shrinks: pages freed by deletes stay in the file, and
inserts in random key order leave leaf pages part full.  A rebuild (the
``rebuild`` engine: every database read in key order and appended into a new
file) writes full pages and nothing else.

The algorithm, one environment at a time, so that the room needed is that of
the largest rebuilt environment, not of the whole service:

1. ``--pre-cmd`` runs (it stops the service), then every environment is checked
   to be closed by every other process (LMDB's lock on each lock file, as
   ``restore`` checks).  There is no ``--force``.
2. Leftovers of an interrupted run (our temporary names beside a data file) are
   removed.
3. For each environment, ``auto``'s prediction (:mod:`synfast.lmdb.choose`) says
   how much a rebuild would leave out; below ``min_saving`` it is left alone.
4. Otherwise it is rebuilt into a temporary sibling of its data file, fsynced,
   and the copy is opened and walked in full: every database must hold the
   entries the snapshot counted.  Mode and owner are set to the old file's; the
   map size is the environment's own.
5. With SIGINT, SIGTERM and SIGHUP held off, the old data file is hard-linked
   under ``SERVICEDIR.defrag-old-YYYYmmddTHHMMSS/`` (same relative path), and
   the new one renamed over it: the data file's name always holds the old
   environment or the new one, whole.  The directory is fsynced.
6. ``--post-cmd`` runs, even after a failure.

A run killed at any point leaves each environment old or new; its temporary
file is removed by the next run, which rebuilds only what still pays.  A
signal during a rebuild removes that rebuild and stops before the swap.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from synfast import workers
from synfast.backup import hooks
from synfast.backup.restore import check_not_in_use
from synfast.copy.walk import walk_tree
from synfast.errors import CopyFailed, SourceMissing, SynfastError, UsageError, convert_error
from synfast.files import durable
from synfast.lmdb import env as lmdbenv
from synfast.lmdb.choose import engine_facts
from synfast.lmdb.meta import EnvLocation
from synfast.lmdb.snapshot import open_snapshot, rebuild_data_file

#: --min-saving's default: the share of pages a rebuild must be predicted to
#: leave out (auto's own threshold for choosing a rebuild).
MIN_SAVING = 0.10
#: Bytes of rebuilt output per second, rebuild + fsync + full walk of the copy,
#: measured on datasets A and B (docs/bench/defrag.md); for --dry-run's estimate.
REBUILD_RATE = 400e6
_LEFTOVER = re.compile(r"^\.(.+)\.[0-9a-f]{12}\.synfast-partial$")
#: Where the test hook (:func:`synfast.backup.hooks.pause_point`) can hold a defrag:
#: an environment rebuilt and checked but not swapped in, and one swapped in.
PAUSE_POINTS = ("defrag-rebuilt", "defrag-swapped")


@dataclass
class EnvDefrag:
    """One environment: what it takes now, what a rebuild is predicted to take,
    and what was done."""

    rel: str
    location: EnvLocation
    allocated: int
    predicted: int = 0
    saving: float = 0.0
    action: str = "rebuild"     # rebuild, skip, rebuilt
    reason: str = ""
    after: int | None = None

    def as_dict(self) -> dict:
        return {"path": self.rel, "allocated_bytes": self.allocated,
                "predicted_bytes": self.predicted, "predicted_saving": round(self.saving, 4),
                "action": self.action, "reason": self.reason, "after_bytes": self.after}


@dataclass
class DefragReport:
    service: Path
    dry_run: bool
    environments: list[EnvDefrag] = field(default_factory=list)
    old_dir: Path | None = None
    leftovers_removed: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rebuilt(self) -> list[EnvDefrag]:
        return [e for e in self.environments if e.action == "rebuilt"]

    @property
    def to_rebuild(self) -> list[EnvDefrag]:
        return [e for e in self.environments if e.action in ("rebuild", "rebuilt")]

    @property
    def expected_seconds(self) -> float:
        return sum(e.predicted for e in self.to_rebuild) / REBUILD_RATE

    def as_dict(self) -> dict:
        before = sum(e.allocated for e in self.environments)
        after = sum(e.after if e.after is not None else
                    (e.predicted if e.action == "rebuild" else e.allocated)
                    for e in self.environments)
        return {"service": str(self.service), "dry_run": self.dry_run,
                "old_dir": str(self.old_dir) if self.old_dir else None,
                "environments": [e.as_dict() for e in self.environments],
                "allocated_before_bytes": before,
                ("predicted_after_bytes" if self.dry_run else "allocated_after_bytes"): after,
                "expected_seconds": round(self.expected_seconds, 3),
                "leftovers_removed": [str(p) for p in self.leftovers_removed],
                "seconds": round(self.seconds, 6)}


def defrag(service: str | os.PathLike[str], *, min_saving: float = MIN_SAVING,
           dry_run: bool = False, keep: bool = True, pre_cmd: str | None = None,
           post_cmd: str | None = None, progress=None,
           now: float | None = None) -> DefragReport:
    """Rebuild the environments of the stopped service ``service`` in place (see
    the module docstring).  ``dry_run`` only predicts (and may run beside a
    live service: it reads what ``auto`` reads, from read snapshots).  ``keep``
    False drops the old data files instead of keeping them beside the service.
    ``progress`` gets backup's ``plan``/``item`` events.  Raises a
    :class:`SynfastError`; environments already swapped stay rebuilt."""
    if not 0 <= min_saving < 1:
        raise UsageError(None, "--min-saving takes a percentage from 0 to 99")
    t0 = time.monotonic()
    svc = Path(os.path.abspath(service))
    if not svc.is_dir():
        raise SourceMissing(svc, "is not a directory", "give the service's directory")
    report = DefragReport(svc, dry_run)
    with hooks.around(None if dry_run else pre_cmd, None if dry_run else post_cmd):
        if not dry_run:
            check_not_in_use(svc, "defragmenting", "stop the service first (--pre-cmd can)")
            report.leftovers_removed = _remove_leftovers(svc)
        _plan(svc, report, min_saving)
        if not dry_run:
            _check_same_filesystem(svc, report, keep)
            _run(report, keep, progress, time.time() if now is None else now)
    report.seconds = time.monotonic() - t0
    return report


def _remove_leftovers(svc: Path) -> list[Path]:
    """Our temporary names beside a data file, left by a run that was killed."""
    removed = []
    for dirpath, _dirs, names in os.walk(svc):
        for name in names:
            m = _LEFTOVER.match(name)
            if m and m.group(1) in names:
                path = Path(dirpath) / name
                durable.remove_path(path)
                removed.append(path)
    return removed


def _plan(svc: Path, report: DefragReport, min_saving: float) -> None:
    """Every environment with its prediction, in path order."""
    the_plan = walk_tree(svc, vanished_ok=True)
    for e in the_plan.of_kind("env"):
        assert e.env is not None
        st = os.stat(e.env.data_path)
        item = EnvDefrag(os.path.relpath(e.env.path, svc), e.env, st.st_blocks * 512)
        snap = open_snapshot(e.env.path)
        try:
            facts = engine_facts(snap)
        finally:
            snap.close()
        item.predicted = facts["rebuild_pages"] * facts["page_size"]
        item.saving = facts["rebuild_saving"]
        if item.saving < min_saving:
            item.action = "skip"
            item.reason = (f"predicted saving {item.saving:.0%} is under "
                           f"{min_saving:.0%}")
        report.environments.append(item)


def _check_same_filesystem(svc: Path, report: DefragReport, keep: bool) -> None:
    """The old data files are kept by hard links: beside the service, on its filesystem."""
    if not keep or not report.to_rebuild:
        return
    parent_dev = os.stat(svc.parent).st_dev
    for e in report.to_rebuild:
        if os.stat(e.location.data_path).st_dev != parent_dev:
            raise UsageError(e.location.data_path, f"is on another filesystem than "
                             f"{svc.parent}, so its old data file cannot be kept beside "
                             "the service without a copy",
                             "pass --no-keep (with a backup at hand)")


def _run(report: DefragReport, keep: bool, progress, now: float) -> None:
    todo = report.to_rebuild
    if progress is not None and todo:
        progress("plan", {"bytes": sum(e.predicted for e in todo), "items": len(todo),
                          "environments": len(todo)})
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))

    def keep_dir() -> Path:
        # Made at the first swap: a run that rebuilds nothing leaves nothing.
        # Another run of the same second gets "-2" and so on.
        for n in range(1, 100):
            if report.old_dir is not None:
                break
            name = f"{report.service.name}.defrag-old-{stamp}" + (f"-{n}" if n > 1 else "")
            try:
                os.mkdir(report.service.with_name(name), 0o700)
            except FileExistsError:
                continue
            report.old_dir = report.service.with_name(name)
        if report.old_dir is None:
            raise CopyFailed(report.service.with_name(f"{report.service.name}.defrag-old-"
                                                      f"{stamp}"), "exists, and 98 more",
                             "remove old defrag-old directories")
        return report.old_dir

    cancel = workers.Cancel()
    for e in todo:
        _rebuild_one(report.service, e, keep_dir if keep else None, cancel)
        if progress is not None:
            progress("item", {"bytes": e.predicted, "path": e.rel or ".", "kind": "env"})
        hooks.pause_point("defrag-swapped", cancel)


def _rebuild_one(svc: Path, e: EnvDefrag, keep_dir, cancel: workers.Cancel) -> None:
    """Rebuild one environment beside itself, check it, swap it in."""
    data = e.location.data_path
    st = os.stat(data)
    tmp = durable.temp_sibling(data)
    snap = open_snapshot(e.location.path)
    counts = _counts(snap.stats(0))
    try:
        rebuild_data_file(snap, tmp, data, e.location.path)  # fsynced before it returns
    except SynfastError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CopyFailed(data, f"no room to rebuild it beside itself (about "
                             f"{e.predicted // 2**20} MiB needed); it was left as it was",
                             "free space on its filesystem, then run defrag again") from err
        raise
    try:
        walked = lmdbenv.walk(tmp, False, nolock=True, full=True)
        got = _counts(walked)
        if got != counts:
            raise CopyFailed(data, f"its rebuilt copy does not hold the same entries "
                             f"({got} against {counts}); it was left as it was",
                             "report this; the environment is unchanged")
        os.chmod(tmp, st.st_mode & 0o7777)
        tst = os.stat(tmp)
        if (tst.st_uid, tst.st_gid) != (st.st_uid, st.st_gid):
            os.chown(tmp, st.st_uid, st.st_gid)
        hooks.pause_point("defrag-rebuilt", cancel)
        with workers.signals_blocked():
            if keep_dir is not None:
                old_dir = keep_dir()
                rel = data.relative_to(svc)
                (old_dir / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.link(data, old_dir / rel)
                durable.fsync_dir((old_dir / rel).parent)
            os.rename(tmp, data)
            durable.fsync_dir(data.parent)
    except lmdbenv.LmdbError as err:
        durable.remove_path(tmp)
        raise convert_error(err, data) from err
    except OSError as err:
        durable.remove_path(tmp)
        raise convert_error(err, data) from err
    except BaseException:
        durable.remove_path(tmp)
        raise
    e.action = "rebuilt"
    e.after = os.stat(data).st_blocks * 512


def _counts(stats: dict) -> tuple[int, list[tuple[str, int]]]:
    """Entries of the main database and of each named one, by name, from a
    snapshot's stats (bytes names) or a walk (text names)."""
    named = []
    for name, d in stats["named"].items():
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                name = "0x" + name.hex()
        named.append((name, int(d["entries"])))
    return int(stats["main"]["entries"]), sorted(named)
