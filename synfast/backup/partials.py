"""Unfinished backups: ``DST.partial`` directories that hold our marker.

A backup builds under ``DST.partial`` and writes ``.synfast/partial.json`` (pid,
host, start time, source, destination) first, so that a backup killed at any
moment leaves a directory that can be recognised as ours and judged: still
being written (its process is alive and is synfast; on another host, for a
day), or stale.  ``backup --clean-partial`` and ``prune`` remove stale ones;
nothing else is ever removed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from synfast.backup import manifest


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
