"""Running unattended on a fleet: one backup per source, prune never beside a
backup, signals, Prometheus metrics, the ``list --max-age`` health check and
the open-files limit.  Real processes, real locks, the real CLI."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from synfast.backup import hooks, locks, manifest, retention
from synfast.files import durable
from tests.backup.service import backup_ok, run_until_paused, service
from tests.conftest import assert_one_line_error, run_cli


def _metrics(path: Path) -> dict[str, tuple[dict, float]]:
    """Every sample of a metrics file, parsed by Prometheus' own parser."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[sample.name] = (sample.labels, sample.value)
    return out


def _resume(proc: subprocess.Popen, resume: Path) -> None:
    resume.touch()
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""


# ------------------------------------------------------------------ locks

def test_second_backup_of_a_source_is_refused_and_wait_waits(tmp_path: Path) -> None:
    svc = service(tmp_path)
    resume = tmp_path / "resume"
    first = run_until_paused("snapshots-taken", svc, tmp_path / "bk1",
                             env={hooks.RESUME_ENV: str(resume)})
    try:
        proc = run_cli("backup", svc, tmp_path / "bk2")
        assert_one_line_error(proc, str(svc), "already running", f"pid {first.pid}",
                              str(tmp_path / "bk1"), "--wait", code=75)
        assert not (tmp_path / "bk2").exists() and not (tmp_path / "bk2.partial").exists()
        # A stream of the same source is the same source.
        stream = subprocess.run([sys.executable, "-m", "synfast", "backup", str(svc), "-"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert stream.returncode == 75, stream.stderr
        # --wait: started while the first is held, finishes after it.
        waiting = subprocess.Popen([sys.executable, "-m", "synfast", "backup", "--quiet",
                                    "--wait", "120", str(svc), str(tmp_path / "bk3")],
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert waiting.poll() is None
            assert not (tmp_path / "bk3.partial").exists()
            _resume(first, resume)
            assert waiting.wait(timeout=120) == 0, waiting.stderr.read()
        finally:
            if waiting.poll() is None:
                waiting.kill()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    for name in ("bk1", "bk3"):
        assert run_cli("verify", tmp_path / name).returncode == 0


def test_lock_is_gone_after_sigkill(tmp_path: Path) -> None:
    svc = service(tmp_path)
    proc = run_until_paused("mid-file", svc, tmp_path / "bk1")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # No stale lock to clean: the kernel released it with the process.
    backup_ok(svc, tmp_path / "bk2")


def test_prune_and_backup_under_one_root_never_run_together(tmp_path: Path) -> None:
    svc = service(tmp_path)
    root = tmp_path / "backups"
    root.mkdir()
    backup_ok(svc, root / "old")
    resume = tmp_path / "resume"
    running = run_until_paused("snapshots-taken", svc, root / "new",
                               env={hooks.RESUME_ENV: str(resume)})
    try:
        proc = run_cli("prune", root, "--keep-last", "1")
        assert_one_line_error(proc, str(root), "backup into it is running",
                              f"pid {running.pid}", code=75)
        assert (root / "old").is_dir()     # nothing judged or removed meanwhile
        waiting = subprocess.Popen([sys.executable, "-m", "synfast", "prune", str(root),
                                    "--keep-last", "1", "--wait", "120"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _resume(running, resume)
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert "removed  old" in out
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert sorted(os.listdir(root)) == ["new"]
    # A backup under a root being pruned is refused the same way.
    with locks.root_lock(root, exclusive=True, wait=None,
                         note={"pid": os.getpid(), "root": str(root)}):
        proc = run_cli("backup", svc, root / "newer")
        assert_one_line_error(proc, str(root), "prune is running", f"pid {os.getpid()}",
                              code=75)
    assert sorted(os.listdir(root)) == ["new"]


def test_lock_files_are_outside_the_source(tmp_path: Path) -> None:
    svc = service(tmp_path)
    lockdir = tmp_path / "locks"
    proc = run_cli("backup", svc, tmp_path / "bk",
                   env={**os.environ, locks.LOCK_DIR_ENV: str(lockdir)})
    assert proc.returncode == 0, proc.stderr
    names = os.listdir(lockdir)
    assert any(n.startswith("source-") for n in names)
    assert any(n.startswith("root-") for n in names)
    assert not list(svc.rglob("*.lock"))


# ------------------------------------------------------------------ signals

def test_cleanup_is_not_cut_short_by_a_second_signal(tmp_path: Path) -> None:
    """``remove_unfinished`` holds SIGTERM off until the tree is gone: a signal
    aimed at the main thread all along the removal is delivered only after."""
    tree = tmp_path / "bk.partial"
    for d in range(40):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (tree / f"d{d}" / f"f{f}").write_bytes(b"x")
    manifest_file = tree / manifest.META_DIR / manifest.MANIFEST
    manifest_file.parent.mkdir()
    manifest_file.write_text("{}")
    received = []

    def handler(signum: int, _frame: object) -> None:
        received.append(tree.exists())
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    done = threading.Event()
    main = threading.get_ident()

    def pester() -> None:
        # From the moment the removal has begun (its manifest goes first) to
        # the moment it returned.
        while manifest_file.exists() and not done.is_set():
            pass
        while not done.is_set():
            signal.pthread_kill(main, signal.SIGTERM)
            done.wait(0.001)

    t = threading.Thread(target=pester)
    try:
        with pytest.raises(KeyboardInterrupt):
            t.start()
            durable.remove_unfinished(tree, manifest_file)
            done.set()
            t.join()
            signal.pthread_kill(main, signal.SIGTERM)  # the last one, surely after
            while not received:
                pass
    finally:
        done.set()
        t.join()
        signal.signal(signal.SIGTERM, old)
    assert received and not any(received)    # every handler ran after the removal
    assert not tree.exists()


# ------------------------------------------------------------------ metrics

def test_backup_verify_prune_metrics(tmp_path: Path) -> None:
    svc = service(tmp_path)
    root = tmp_path / "backups"
    root.mkdir()
    prom = tmp_path / "textfile"
    prom.mkdir()
    bm = prom / "synfast-backup.prom"
    proc = run_cli("backup", "--json", "--metrics-file", bm, svc, root / "one")
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout)["totals"]
    m = _metrics(bm)
    labels = {"source": str(svc), "root": str(root)}
    assert m["synfast_backup_last_attempt_success"] == (labels, 1.0)
    assert m["synfast_backup_last_attempt_exit_code"][1] == 0
    first = m["synfast_backup_last_attempt_timestamp_seconds"][1]
    assert m["synfast_backup_last_success_timestamp_seconds"][1] == first
    assert m["synfast_backup_files"][1] == totals["files"]
    assert m["synfast_backup_environments"][1] == totals["environments"] > 0
    assert m["synfast_backup_skipped_entries"][1] == totals["skipped"] > 0
    assert m["synfast_backup_read_bytes"][1] == totals["source_allocated_bytes"] > 0
    assert m["synfast_backup_written_bytes"][1] == totals["allocated_bytes"] > 0
    assert m["synfast_backup_duration_seconds"][1] > 0
    assert not [n for n in os.listdir(prom) if n != bm.name]   # no temporary left

    # A failed attempt: result and exit code of this one, last success carried over.
    proc = run_cli("backup", "--metrics-file", bm, svc, root / "one")
    assert proc.returncode == 1
    m = _metrics(bm)
    assert m["synfast_backup_last_attempt_success"][1] == 0
    assert m["synfast_backup_last_attempt_exit_code"][1] == 1
    assert m["synfast_backup_last_attempt_timestamp_seconds"][1] > first
    assert m["synfast_backup_last_success_timestamp_seconds"][1] == first
    assert "synfast_backup_files" not in m

    vm = prom / "synfast-verify.prom"
    assert run_cli("verify", "--metrics-file", vm, root / "one").returncode == 0
    m = _metrics(vm)
    assert m["synfast_verify_problems"] == (labels, 0.0)
    assert m["synfast_verify_last_attempt_success"][1] == 1
    assert m["synfast_verify_environments"][1] == totals["environments"]
    blob = next(p for p in (root / "one").rglob("*.yaml"))
    blob.write_text("damaged\n")
    assert run_cli("verify", "--metrics-file", vm, root / "one").returncode == 1
    m = _metrics(vm)
    assert m["synfast_verify_problems"][1] >= 1
    assert m["synfast_verify_last_attempt_success"][1] == 0

    backup_ok(svc, root / "two")
    pm = prom / "synfast-prune.prom"
    proc = run_cli("prune", "--metrics-file", pm, root, "--keep-last", "1")
    assert proc.returncode == 0, proc.stderr
    m = _metrics(pm)
    assert m["synfast_prune_removed_backups"] == ({"root": str(root)}, 1.0)
    assert m["synfast_prune_kept_backups"][1] == 1
    assert m["synfast_prune_last_attempt_success"][1] == 1


def test_metrics_file_in_a_missing_directory_is_refused_first(tmp_path: Path) -> None:
    svc = service(tmp_path)
    proc = run_cli("backup", "--metrics-file", tmp_path / "nope" / "m.prom", svc,
                   tmp_path / "bk")
    assert_one_line_error(proc, str(tmp_path / "nope"), "--metrics-file")
    assert not (tmp_path / "bk").exists()


# ------------------------------------------------------------------ list --max-age

def _age_backup(path: Path, seconds: float) -> None:
    """Make ``path`` a backup started ``seconds`` ago, as its manifest says."""
    mf = path / manifest.META_DIR / manifest.MANIFEST
    doc = json.loads(mf.read_text())
    doc["started"] = manifest.iso(manifest.parse_iso(doc["started"]) - seconds)
    mf.write_text(json.dumps(doc))


def test_list_max_age_and_verified(tmp_path: Path) -> None:
    svc = service(tmp_path)
    root = tmp_path / "backups"
    root.mkdir()
    proc = run_cli("list", root, "--max-age", "26h")
    assert_one_line_error(proc, str(root), "no complete backup", code=1)
    backup_ok(svc, root / "bk")
    proc = run_cli("list", root, "--max-age", "26h")
    assert proc.returncode == 0, proc.stderr
    assert "bk" in proc.stdout and len(proc.stdout.splitlines()) == 1
    proc = run_cli("list", root, "--max-age", "26h", "--verified")
    assert_one_line_error(proc, "not been verified", code=1)
    assert run_cli("verify", root / "bk").returncode == 0
    assert run_cli("list", root, "--max-age", "26h", "--verified").returncode == 0
    _age_backup(root / "bk", 2 * 86400)
    proc = run_cli("list", root, "--max-age", "26h")
    assert_one_line_error(proc, str(root), "bk", "2.0 days old", code=1)
    assert run_cli("list", root, "--max-age", "3d").returncode == 0
    assert run_cli("list", root, "--max-age", "1d12h").returncode == 1
    proc = run_cli("list", root, "--max-age", "soon")
    assert_one_line_error(proc, "--max-age", "26h", code=2)


def test_freshness_rule() -> None:
    b = retention.BackupInfo("n", Path("/x"), 1000.0, "s", 0, 0, None, {"ok": False})
    assert retention.freshness([b], "/x", max_age=100, now=1050).ok
    assert not retention.freshness([b], "/x", max_age=100, now=1101).ok
    assert not retention.freshness([b], "/x", max_age=100, verified=True, now=1050).ok
    assert retention.parse_duration("1d12h") == 36 * 3600
    assert retention.parse_duration("90m") == 5400


# ------------------------------------------------------------------ open files

def _limit(soft: int, hard: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


@pytest.fixture(scope="module")
def many_envs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 one-entry environments with 1 GiB maps, in 20 directories (made
    without writemap or fsync: 0.6 ms each instead of 14)."""
    import lmdb

    svc = tmp_path_factory.mktemp("many") / "svc"
    for i in range(2000):
        (svc / "layers" / f"{i // 100:02}").mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(svc / "layers" / f"{i // 100:02}" / f"{i:04}.lmdb"),
                        map_size=1 << 30, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            txn.put(b"k", str(i).encode())
        env.close()
    return svc


def test_thousands_of_environments_under_a_soft_limit(tmp_path: Path, many_envs: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4200:
        pytest.skip(f"the hard limit here ({hard}) cannot hold 2,000 environments")
    proc = run_cli("backup", "--quiet", many_envs, tmp_path / "bk",
                   preexec_fn=_limit(1024, hard))
    assert proc.returncode == 0, proc.stderr
    doc = manifest.read(tmp_path / "bk")
    assert doc["totals"]["environments"] == 2000
    proc = run_cli("verify", "--quiet", tmp_path / "bk", preexec_fn=_limit(1024, hard))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_too_small_a_hard_limit_is_refused_before_anything(tmp_path: Path,
                                                           many_envs: Path) -> None:
    proc = run_cli("backup", many_envs, tmp_path / "bk", preexec_fn=_limit(1024, 1024))
    assert_one_line_error(proc, str(many_envs), "2000 LMDB environments", "1024",
                          "LimitNOFILE=", "--lmdb-engine compact", code=1)
    assert os.listdir(tmp_path) == []
    # The engine that opens one environment at a time needs no more.
    proc = run_cli("backup", "--quiet", "--lmdb-engine", "compact", many_envs,
                   tmp_path / "bk", preexec_fn=_limit(1024, 1024))
    assert proc.returncode == 0, proc.stderr


def test_a_holders_note_is_untrusted_text(tmp_path: Path) -> None:
    """The lock file's note may be written by any local user: what it says is
    shown on one line, control characters replaced."""
    svc = service(tmp_path)
    note = {"pid": 4242, "destination": "/x\nsynfast: error: fake\x1b[2J", "started": 7}
    with locks.source_lock(svc, note, wait=None):
        proc = run_cli("backup", svc, tmp_path / "bk")
    assert_one_line_error(proc, "pid 4242", "into /x?synfast: error: fake?[2J", code=75)
    assert not (tmp_path / "bk").exists()
