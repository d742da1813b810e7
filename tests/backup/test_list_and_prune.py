"""``synfast prune`` and ``synfast list``: hand-made backups with chosen manifest
times; exactly the right set is kept, and nothing else is ever touched."""

from __future__ import annotations

import calendar
import json
import os
import time
from pathlib import Path

import pytest

from synfast.backup import manifest, retention
from tests.backup.service import backup_ok, service
from tests.conftest import assert_one_line_error, run_cli


def fake_backup(root: Path, name: str, when: str) -> Path:
    """A minimal complete backup whose manifest says it started at ``when``
    (local time, "YYYY-mm-dd HH:MM")."""
    t = time.mktime(time.strptime(when, "%Y-%m-%d %H:%M"))
    d = root / name
    (d / manifest.META_DIR).mkdir(parents=True)
    (d / "data").write_text(name)
    doc = {"format": manifest.FORMAT, "version": manifest.VERSION,
           "tool": {"name": "synfast", "version": "0"}, "source": "/srv/cortex00",
           "host": "h", "started": manifest.iso(t), "finished": manifest.iso(t + 5),
           "options": {}, "checksum": None, "snapshots": {}, "entries": [
               {"path": "", "type": "dir", "mode": 0o755},
               {"path": "data", "type": "file", "mode": 0o644, "size": len(name)}],
           "environments": [], "skipped": [], "totals": {"files": 1, "environments": 0}}
    (d / manifest.META_DIR / manifest.MANIFEST).write_text(json.dumps(doc))
    return d


# Names deliberately do not sort in time order: only the manifest time counts.
TIMES = {
    "a": "2026-03-01 02:00", "b": "2026-03-15 02:00", "c": "2026-03-31 02:00",
    "d": "2026-04-01 02:00", "e": "2026-04-06 02:00", "f": "2026-04-12 02:00",
    "g": "2026-04-13 01:00", "h": "2026-04-13 02:00", "i": "2026-04-14 02:00",
    "j": "2026-04-15 02:00", "k": "2026-04-15 03:00",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "backups"
    r.mkdir()
    for name, when in TIMES.items():
        fake_backup(r, f"x{ord('z') - ord(name):02d}", when)
    # things that are not complete synfast backups
    (r / "notes").mkdir()
    (r / "notes" / "keep.txt").write_text("mine")
    (r / "half").mkdir()
    (r / "half" / manifest.META_DIR).mkdir()
    (r / "file.txt").write_text("mine too")
    return r


def name(letter: str) -> str:
    return f"x{ord('z') - ord(letter):02d}"


def kept(report: retention.PruneReport) -> set[str]:
    return {b.name for b, _ in report.kept}


@pytest.mark.parametrize(("rules", "expect"), [
    ({"keep_last": 3}, "ijk"),
    ({"keep_daily": 3}, "hik"),                  # newest of 04-15, 04-14, 04-13
    ({"keep_weekly": 2}, "fk"),                  # ISO weeks: 04-13..19 -> k, 04-06..12 -> f
    ({"keep_monthly": 2}, "ck"),                 # April -> k, March -> c
    ({"keep_last": 1, "keep_daily": 2, "keep_monthly": 3}, "cik"),   # only 2 months
])
def test_prune_keeps_exactly_the_right_set(root: Path, rules: dict, expect: str) -> None:
    report = retention.prune(root, dry_run=True, **rules)
    assert kept(report) == {name(c) for c in expect}
    assert {b.name for b in report.removed} == {name(c) for c in TIMES} - kept(report)
    assert len(os.listdir(root)) == len(TIMES) + 3          # dry run: nothing removed


def test_prune_removes_only_complete_backups(root: Path) -> None:
    proc = run_cli("prune", root, "--keep-last", "2", "--keep-monthly", "1")
    assert proc.returncode == 0, proc.stderr
    left = sorted(os.listdir(root))
    assert left == sorted([name("j"), name("k"), "notes", "half", "file.txt"])
    assert (root / "notes" / "keep.txt").read_text() == "mine"
    assert f"removed  {name('a')}" in proc.stdout and f"keep    {name('k')}" in proc.stdout
    proc = run_cli("prune", root)
    assert_one_line_error(proc, "no retention rule", code=2)


def test_prefix_and_stale_partials(root: Path) -> None:
    fake_backup(root, "other_1", "2026-01-01 00:00")
    stale = root / "x99.partial"
    (stale / manifest.META_DIR).mkdir(parents=True)
    old = calendar.timegm((2026, 1, 1, 0, 0, 0))
    (stale / manifest.META_DIR / manifest.PARTIAL_MARKER).write_text(json.dumps(
        {"pid": 999999999, "host": manifest.hostname(), "started": manifest.iso(old)}))
    fresh = root / "x98.partial"
    (fresh / manifest.META_DIR).mkdir(parents=True)
    (fresh / manifest.META_DIR / manifest.PARTIAL_MARKER).write_text(json.dumps(
        {"pid": 999999999, "host": manifest.hostname(), "started": manifest.iso(time.time())}))
    (root / "foreign.partial").mkdir()
    (root / "foreign.partial" / "f").write_text("not ours")
    report = retention.prune(root, keep_last=100, prefix="x")
    assert "other_1" not in kept(report) and (root / "other_1").exists()
    assert [p.path for p in report.partials_removed] == [stale]
    assert [p.path for p, _ in report.partials_kept] == [fresh]
    assert not stale.exists() and fresh.exists() and (root / "foreign.partial" / "f").exists()


def test_list_shows_backups_and_verification(tmp_path: Path) -> None:
    svc = service(tmp_path)
    root = tmp_path / "bks"
    root.mkdir()
    backup_ok(svc, root / "cortex00_1", "-q")
    backup_ok(svc, root / "cortex00_2", "-q")
    assert run_cli("verify", root / "cortex00_2").returncode == 0
    (root / "junk").mkdir()
    proc = run_cli("list", root, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["cortex00_1", "cortex00_2"]
    assert rows[0]["source"] == str(svc) and rows[0]["environments"] == 3
    assert rows[0]["files"] == 3 and rows[0]["size_on_disk"] > 0
    assert rows[0]["verified"] is None and rows[1]["verified"]["ok"] is True
    text = run_cli("list", root).stdout.splitlines()
    assert text[0].split()[:2] == ["name", "time"]
    assert text[1].startswith("cortex00_1") and text[1].rstrip().endswith("no")
    assert "yes" in text[2]
