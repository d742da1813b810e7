"""Which backups under a root to keep, and listing them.

Only complete synfast backups count: directories directly under ROOT that hold
a valid ``.synfast/manifest.json``.  Their time is the manifest's ``started``
(when the backup began, close to its snapshots), never the directory's mtime,
which a copy or a restore of the backup changes.  Anything else under ROOT is
never touched, except unfinished backups (``*.partial`` with our marker) older
than a day whose process is gone.

Retention rules (each backup may be kept by several; the union is kept):

- ``keep_last N``: the N newest;
- ``keep_daily D``: the newest backup of each of the D most recent days that
  have a backup (local time); likewise ``keep_weekly`` (ISO weeks) and
  ``keep_monthly`` (calendar months).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from synfast.backup import locks, manifest
from synfast.backup.partials import Partial, find_partials
from synfast.errors import SourceMissing, UsageError

PARTIAL_MAX_AGE = 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class BackupInfo:
    name: str
    path: Path
    time: float
    source: str
    files: int
    environments: int
    size_on_disk: int | None
    verified: dict | None

    def as_dict(self) -> dict:
        v = self.verified
        return {"name": self.name, "path": str(self.path), "time": manifest.iso(self.time),
                "source": self.source, "files": self.files, "environments": self.environments,
                "size_on_disk": self.size_on_disk,
                "verified": None if v is None else {"time": v.get("time"), "ok": v.get("ok")}}


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk by everything under ``path`` (as ``du`` counts, without
    following symlinks)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def list_backups(root: str | os.PathLike[str], *, prefix: str = "",
                 sizes: bool = True) -> list[BackupInfo]:
    """Complete synfast backups directly under ``root``, oldest first."""
    r = Path(root)
    if not r.is_dir():
        raise SourceMissing(r, "is not a directory", "give the directory that holds the backups")
    out = []
    for name in sorted(os.listdir(r)):
        if not name.startswith(prefix) or name.endswith(".partial"):
            continue
        path = r / name
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            doc = manifest.read(path)
            when = manifest.parse_iso(doc["started"])
        except (manifest.ManifestError, ValueError, OSError):
            continue
        totals = doc.get("totals", {})
        out.append(BackupInfo(name, path, when, doc["source"], int(totals.get("files", 0)),
                              int(totals.get("environments", 0)),
                              disk_usage(path) if sizes else None,
                              manifest.read_verified(path)))
    out.sort(key=lambda b: (b.time, b.name))
    return out


def select(backups: list[BackupInfo], *, keep_last: int = 0, keep_daily: int = 0,
           keep_weekly: int = 0, keep_monthly: int = 0) -> dict[str, list[str]]:
    """Map each kept backup's name to the rules that keep it."""
    newest_first = sorted(backups, key=lambda b: (b.time, b.name), reverse=True)
    reasons: dict[str, list[str]] = {}
    for b in newest_first[:keep_last]:
        reasons.setdefault(b.name, []).append("last")

    def bucket(rule: str, count: int, key) -> None:
        seen: set = set()
        for b in newest_first:
            if len(seen) >= count:
                break
            k = key(time.localtime(b.time))
            if k not in seen:
                seen.add(k)
                reasons.setdefault(b.name, []).append(rule)

    bucket("daily", keep_daily, lambda t: (t.tm_year, t.tm_yday))
    bucket("weekly", keep_weekly,
           lambda t: __import__("datetime").date(t.tm_year, t.tm_mon, t.tm_mday).isocalendar()[:2])
    bucket("monthly", keep_monthly, lambda t: (t.tm_year, t.tm_mon))
    return reasons


@dataclass
class PruneReport:
    root: Path
    dry_run: bool
    kept: list[tuple[BackupInfo, list[str]]] = field(default_factory=list)
    removed: list[BackupInfo] = field(default_factory=list)
    partials_removed: list[Partial] = field(default_factory=list)
    partials_kept: list[tuple[Partial, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "root": str(self.root), "dry_run": self.dry_run,
            "kept": [{**b.as_dict(), "reasons": r} for b, r in self.kept],
            "removed": [b.as_dict() for b in self.removed],
            "partials_removed": [p.as_dict() for p in self.partials_removed],
            "partials_kept": [{**p.as_dict(), "reason": why} for p, why in self.partials_kept],
        }


def prune(root: str | os.PathLike[str], *, keep_last: int = 0, keep_daily: int = 0,
          keep_weekly: int = 0, keep_monthly: int = 0, prefix: str = "",
          dry_run: bool = False, now: float | None = None,
          wait: float | None = None) -> PruneReport:
    """Remove the backups under ``root`` that no rule keeps, and stale partials.

    At least one rule must be given: pruning with none would remove every backup.
    A backup is removed by deleting its manifest first (so that, if interrupted,
    it no longer looks complete) and then the directory.  Unless ``dry_run``,
    the root's lock is held exclusively (:mod:`synfast.backup.locks`): a prune
    never runs beside a backup into ``root``; ``wait`` seconds are waited for
    them, or none.
    """
    if min(keep_last, keep_daily, keep_weekly, keep_monthly) < 0:
        raise UsageError(None, "--keep-* counts cannot be negative")
    if not any((keep_last, keep_daily, keep_weekly, keep_monthly)):
        raise UsageError(None, "no retention rule given; pruning would remove every backup",
                         "give at least one of --keep-last, --keep-daily, --keep-weekly, "
                         "--keep-monthly")
    r = Path(os.path.abspath(root))
    if not r.is_dir():
        raise SourceMissing(r, "is not a directory", "give the directory that holds the backups")
    if dry_run:
        return _prune(r, keep_last, keep_daily, keep_weekly, keep_monthly, prefix, dry_run, now)

    def running() -> str:
        active = [p for p in find_partials(r) if p.active]
        return "".join(f" (pid {p.pid}: {p.path.name})" for p in active[:3])

    with locks.root_lock(r, exclusive=True, wait=wait, running=running, note={
            "pid": os.getpid(), "root": str(r), "started": manifest.iso(time.time())}):
        return _prune(r, keep_last, keep_daily, keep_weekly, keep_monthly, prefix, dry_run, now)


def _prune(r: Path, keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int,
           prefix: str, dry_run: bool, now: float | None) -> PruneReport:
    backups = list_backups(r, prefix=prefix, sizes=False)
    keep = select(backups, keep_last=keep_last, keep_daily=keep_daily,
                  keep_weekly=keep_weekly, keep_monthly=keep_monthly)
    report = PruneReport(r, dry_run)
    for b in backups:
        if b.name in keep:
            report.kept.append((b, keep[b.name]))
            continue
        report.removed.append(b)
        if not dry_run:
            os.unlink(b.path / manifest.META_DIR / manifest.MANIFEST)
            shutil.rmtree(b.path)
    now = time.time() if now is None else now
    for p in find_partials(r):
        if not p.path.name.startswith(prefix):
            continue
        if p.active:
            report.partials_kept.append((p, f"a running backup (pid {p.pid})"))
        elif now - p.started < PARTIAL_MAX_AGE:
            report.partials_kept.append((p, "less than a day old"))
        else:
            report.partials_removed.append(p)
            if not dry_run:
                shutil.rmtree(p.path)
    return report


def parse_duration(text: str) -> float:
    """Seconds in ``26h``, ``2d``, ``90m``, ``1d12h`` or ``3600`` (seconds)."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", t)
    if not t or not parts or "".join(n + u for n, u in parts) != t:
        raise UsageError(None, f"--max-age takes a duration such as 26h, 2d, 90m or 1d12h, "
                         f"not {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class Freshness:
    """The answer of ``list --max-age``: is the newest complete backup recent
    enough (and verified, when asked)?"""

    ok: bool
    line: str
    newest: BackupInfo | None


def freshness(backups: list[BackupInfo], root: str, *, max_age: float, verified: bool = False,
              now: float | None = None) -> Freshness:
    """Judge the newest of ``backups`` (oldest first, as :func:`list_backups`
    returns them); ``line`` says why in one line either way."""
    now = time.time() if now is None else now
    if not backups:
        return Freshness(False, f"{root}: no complete backup", None)
    newest = backups[-1]
    age = now - newest.time
    what = f"{root}: newest backup {newest.name} is {_age(age)} old"
    if age > max_age:
        return Freshness(False, f"{what}, more than {_age(max_age)}", newest)
    if verified:
        v = newest.verified
        if v is None:
            return Freshness(False, f"{what} and has not been verified", newest)
        if not v.get("ok"):
            return Freshness(False, f"{what} and FAILED verify", newest)
        return Freshness(True, f"{what} and verified", newest)
    return Freshness(True, what, newest)


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{s / 3600:.1f} hours"
    return f"{s // 60} minutes"
