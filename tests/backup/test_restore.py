"""``synfast restore``: verified first, never under a running service, the old
directory moved aside."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from synfast.backup import manifest
from tests.backup.service import backup_ok, service
from tests.conftest import IS_ROOT, assert_one_line_error, mdb_dump, run_cli

HOLDER = textwrap.dedent("""
    import lmdb, os, sys, time
    env = lmdb.open(sys.argv[1], max_dbs=8, readonly=sys.argv[2] == "ro")
    txn = env.begin()
    print("ready", flush=True)
    if sys.argv[3] == "die":
        os.kill(os.getpid(), 9)   # leaves its reader slot behind in lock.mdb
    time.sleep(600)
""")


def hold(env: Path, mode: str = "rw", then: str = "wait") -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(env), mode, then],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "ready"
    return p


def test_restore_refuses_a_directory_in_use_and_moves_the_old_one_aside(tmp_path: Path) -> None:
    svc = service(tmp_path)
    bk = tmp_path / "bk"
    backup_ok(svc, bk, "-q")
    before = mdb_dump(svc / "slabs" / "cell.lmdb")
    # The service writes on after the backup; the backup is what comes back.
    import lmdb

    env = lmdb.open(str(svc / "slabs" / "cell.lmdb"), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"nodes")) as txn:
        txn.put(b"after-backup", b"1")
    env.close()
    holder = hold(svc / "slabs" / "cell.lmdb")
    try:
        proc = run_cli("restore", bk, svc)
        assert_one_line_error(proc, str(svc / "slabs" / "cell.lmdb"),
                              f"is open by process {holder.pid}", code=1)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "cortex00"]
    finally:
        holder.kill()
        holder.wait()
    proc = run_cli("restore", bk, svc)
    assert proc.returncode == 0, proc.stderr
    old = [p for p in tmp_path.iterdir() if p.name.startswith("cortex00.old-")]
    assert len(old) == 1 and f"the previous directory is now {old[0]}" in proc.stdout
    assert mdb_dump(svc / "slabs" / "cell.lmdb") == before
    assert b"after-backup".hex() in mdb_dump(old[0] / "slabs" / "cell.lmdb")
    assert not (tmp_path / "cortex00.partial").exists()


def test_stale_reader_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    svc = service(tmp_path)
    bk = tmp_path / "bk"
    backup_ok(svc, bk, "-q")
    dead = hold(svc / "slabs" / "cell.lmdb", then="die")
    assert dead.wait(timeout=30) == -signal.SIGKILL
    proc = run_cli("restore", bk, svc, "--json")
    assert proc.returncode == 0, proc.stderr


def test_restore_force_and_damaged_backup(tmp_path: Path) -> None:
    svc = service(tmp_path)
    bk = tmp_path / "bk"
    backup_ok(svc, bk, "-q")
    (bk / "cell.yaml").write_text("tampered\n")
    proc = run_cli("restore", bk, tmp_path / "new")
    assert_one_line_error(proc, str(bk), "fails verification", code=1)
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()
    # --no-verify restores what is there
    proc = run_cli("restore", bk, tmp_path / "new", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "new" / "cell.yaml").read_text() == "tampered\n"
    holder = hold(tmp_path / "new" / "slabs" / "cell.lmdb", mode="ro")
    try:
        proc = run_cli("restore", bk, tmp_path / "new", "--no-verify", "--force")
        assert proc.returncode == 0, proc.stderr
    finally:
        holder.kill()
        holder.wait()
    proc = run_cli("restore", tmp_path / "nope", tmp_path / "x")
    assert_one_line_error(proc, str(tmp_path / "nope"), "does not exist", code=1)
    proc = run_cli("restore", svc, tmp_path / "x")
    assert_one_line_error(proc, str(svc / manifest.META_DIR / manifest.MANIFEST), "missing",
                          code=1)


def test_holder_in_another_pid_namespace_is_seen(tmp_path: Path) -> None:
    """Run restore inside a new PID namespace: the kernel reports the holder's
    pid as 0 there; the lock still counts."""
    if not IS_ROOT or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux)")
    svc = service(tmp_path)
    bk = tmp_path / "bk"
    backup_ok(svc, bk, "-q")
    holder = hold(svc / "slabs" / "cell.lmdb")
    try:
        proc = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-m", "synfast",
                               "restore", str(bk), str(svc)], capture_output=True, text=True,
                              timeout=120)
        if "unshare failed" in proc.stderr:
            pytest.skip(proc.stderr.strip())
        assert_one_line_error(proc, str(svc / "slabs" / "cell.lmdb"),
                              "another PID namespace", code=1)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "cortex00"]
