"""``synfast backup``: real service directories, real processes, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synfast.backup import checksum as cks
from synfast.backup import hooks, manifest, partials, retention
from synfast.lmdb import ENGINES
from synfast.lmdb import meta as lmdbmeta
from tests.backup.service import ENVS, backup_ok, run_until_paused, service
from tests.conftest import (
    IS_ROOT,
    allocated,
    assert_one_line_error,
    files_equal,
    make_env,
    mdb_dump,
    run_cli,
    write_layout,
)
from tests.live_writer import check_snapshot, start_writer, wait_for_txnid


@pytest.mark.parametrize("engine", list(ENGINES))
def test_backup_verify_restore_round_trip(tmp_path: Path, engine: str) -> None:
    svc = service(tmp_path)
    if IS_ROOT:
        os.chown(svc / "cell.yaml", 4321, 8765)
    dumps = {rel: mdb_dump(svc / rel) for rel in ENVS}
    dumps["store.mdb"] = mdb_dump(svc / "store.mdb", subdir=False)
    proc = backup_ok(svc, tmp_path / "bk", "--lmdb-engine", engine, "--json")
    summary = json.loads(proc.stdout)
    assert summary["totals"]["environments"] == 3 and summary["totals"]["files"] == 3
    assert sorted(s["path"] for s in summary["skipped"]) == ["fifo", "sock"]
    assert sorted(summary["excluded"]) == ["backups", "layers/abc123/tmp", "tmp"]
    bk = tmp_path / "bk"
    assert not (tmp_path / "bk.partial").exists()
    assert not (bk / "tmp").exists() and not (bk / "layers/abc123/tmp").exists()
    assert not (bk / "sock").exists() and not (bk / "fifo").exists()
    for rel in ENVS:
        assert sorted(os.listdir(bk / rel)) == ["data.mdb"]       # no lock.mdb
    doc = manifest.read(bk)
    assert {e["path"] for e in doc["environments"]} == {*ENVS, "store.mdb"}
    cell = next(e for e in doc["environments"] if e["path"] == "slabs/cell.lmdb")
    assert cell["databases"] == {"meta": 1, "nodes": 400, "tags": 4}
    assert cell["named_databases"] == 3 and cell["page_size"] == 4096
    together = engine in ("auto", "rebuild", "pages")
    assert doc["snapshots"]["method"] == ("begun together" if together
                                          else "one per environment, when its copy starts")
    if together:   # one moment for all environments, bounded by two clock reads
        assert len({e["snapshot_time"] for e in doc["environments"]}) == 1
        assert 0 <= doc["snapshots"]["spread_seconds"] < 1
    # auto takes the rebuild here: tmp_path cannot share blocks with itself (not XFS or btrfs)
    assert {e["engine"] for e in doc["environments"]} == {"rebuild" if engine == "auto"
                                                           else engine}

    proc = run_cli("verify", bk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (bk / "slabs/cell.lmdb/lock.mdb").exists()       # verify opened it NOLOCK

    restored = tmp_path / "restored"
    proc = run_cli("restore", bk, restored)
    assert proc.returncode == 0, proc.stderr
    assert "start the service again" in proc.stdout
    for rel in ENVS:
        assert mdb_dump(restored / rel) == dumps[rel]
    assert mdb_dump(restored / "store.mdb", subdir=False) == dumps["store.mdb"]
    assert files_equal(svc / "sparse.bin", restored / "sparse.bin")
    assert os.stat(restored / "sparse.bin").st_blocks * 512 < 1 << 20
    assert (restored / "cell.yaml").read_text() == (svc / "cell.yaml").read_text()
    st = os.stat(restored / "cell.yaml")
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    if IS_ROOT:
        assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert os.stat(restored / "layers").st_mode & 0o7777 == 0o750
    assert os.readlink(restored / "cell.guid") == "cell.yaml"
    assert (restored / "slabs" / "empty").read_bytes() == b""
    assert not (restored / "tmp").exists() and not (restored / "sock").exists()
    assert not (restored / manifest.META_DIR).exists()


def test_strftime_destination_exclude_and_include_tmp(tmp_path: Path) -> None:
    svc = service(tmp_path)
    proc = backup_ok(svc, tmp_path / "c_%Y%m%d", "--exclude", "slabs/cell.lmdb",
                     "--exclude", "*.bin", "--no-checksum", "-q")
    assert proc.stdout == ""
    day = time.strftime("%Y%m%d")
    bk = tmp_path / f"c_{day}"
    assert bk.is_dir()
    assert not (bk / "slabs" / "cell.lmdb").exists() and not (bk / "sparse.bin").exists()
    assert (bk / "layers" / "abc123" / "layer_v2.lmdb" / "data.mdb").exists()
    doc = manifest.read(bk)
    assert doc["checksum"] is None
    assert all(e.get("checksum") is None for e in doc["entries"])
    assert run_cli("verify", bk).returncode == 0
    backup_ok(svc, tmp_path / "all", "--include-tmp", "--jobs", "1", "--lmdb-engine", "compact")
    assert (tmp_path / "all" / "tmp" / "junk").exists()
    assert (tmp_path / "all" / "layers" / "abc123" / "tmp" / "junk").exists()
    assert (tmp_path / "all" / "backups" / "junk").exists()


def test_checksum_ignores_how_holes_are_laid_out(tmp_path: Path) -> None:
    # 130 MiB: three 64 MiB segments, data in the first two, hashed in parallel
    size, data = 130 << 20, os.urandom(100_000)
    at = [(3 << 20, data), (100 << 20, data[:5000])]
    a, b, c, d = (tmp_path / n for n in "abcd")
    write_layout(a, size, at)
    with open(b, "wb") as f:                        # the same content, written densely
        f.truncate(size)
        for off, chunk in [(0, bytes(size)), *at]:
            f.seek(off)
            f.write(chunk)
    write_layout(c, size, [(0, bytes(1 << 20)), (64 << 20, bytes(65536)), *at])  # zeros as data
    write_layout(d, size, [at[0], (100 << 20, data[:4999] + b"!")])
    sums = {p.name: cks.checksum_file(p) for p in (a, b, c, d)}
    assert sums["a"] == sums["b"] == sums["c"] != sums["d"]
    assert allocated(a) < 1 << 20
    write_layout(tmp_path / "e", size + 1, at)     # one more zero byte
    assert cks.checksum_file(tmp_path / "e") != sums["a"]
    write_layout(tmp_path / "f", size, [(3 << 20, data), (90 << 20, data[:5000])])  # moved
    assert cks.checksum_file(tmp_path / "f") != sums["a"]


def test_bwlimit_ionice_and_hooks(tmp_path: Path) -> None:
    svc = service(tmp_path)
    write_layout(svc / "blob", 40 << 20, [(0, os.urandom(3 << 20)), (20 << 20, b"end")])
    log = tmp_path / "hooks.log"
    backup_ok(svc, tmp_path / "bk", "--bwlimit", "500", "--ionice", "idle",
                     "--pre-cmd", f"echo pre >> {log}", "--post-cmd", f"echo post >> {log}")
    assert log.read_text() == "pre\npost\n"
    assert files_equal(svc / "blob", tmp_path / "bk" / "blob")
    assert files_equal(svc / "sparse.bin", tmp_path / "bk" / "sparse.bin")
    assert os.stat(tmp_path / "bk" / "blob").st_blocks * 512 < 8 << 20
    assert run_cli("verify", tmp_path / "bk").returncode == 0


def test_ionice_sets_the_idle_class() -> None:
    if not shutil.which("ionice"):
        pytest.skip("ionice (util-linux) is not installed")
    code = ("import os, subprocess; from synfast.backup.pacing import set_ionice; "
            "set_ionice('idle');"
            "print(subprocess.run(['ionice', '-p', str(os.getpid())], capture_output=True,"
            " text=True).stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "idle", out


def test_post_cmd_runs_when_the_backup_fails(tmp_path: Path) -> None:
    svc = service(tmp_path)
    bad = svc / "slabs" / "cell.lmdb" / "data.mdb"
    with open(bad, "r+b") as f:
        f.write(os.urandom(8192))
    log = tmp_path / "hooks.log"
    proc = run_cli("backup", svc, tmp_path / "bk", "--post-cmd", f"echo post >> {log}")
    assert_one_line_error(proc, str(bad), "not an LMDB data file", code=1)
    assert log.read_text() == "post\n"
    assert not (tmp_path / "bk").exists() and not (tmp_path / "bk.partial").exists()
    proc = run_cli("backup", svc, tmp_path / "bk2", "--pre-cmd", "exit 3",
                   "--post-cmd", f"echo post2 >> {log}")
    assert_one_line_error(proc, "pre command failed with exit code 3", code=1)
    assert log.read_text() == "post\npost2\n"
    assert not (tmp_path / "bk2").exists()


# ------------------------------------------------------------------ live

@pytest.fixture
def live_service(tmp_path: Path):
    """A service directory with two environments, each written continuously by its
    own process keeping the invariant of tests/live_writer.py."""
    svc = tmp_path / "live"
    svc.mkdir()
    (svc / "cell.yaml").write_text("x: 1\n")
    write_layout(svc / "blob", 200 << 20, [(0, os.urandom(16 << 20))])
    procs = []
    try:
        for name in ("a.lmdb", "sub/b.lmdb"):
            (svc / name).parent.mkdir(exist_ok=True)
            procs.append(start_writer(svc / name))
        for name in ("a.lmdb", "sub/b.lmdb"):
            wait_for_txnid(svc / name, 200, seconds=15)
        yield svc, procs
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def test_backup_of_a_live_service_is_consistent(tmp_path: Path, live_service) -> None:
    svc, writers = live_service
    txnids = []
    for n, engine in enumerate(list(ENGINES)):
        bk = tmp_path / f"bk{n}"
        backup_ok(svc, bk, "--lmdb-engine", engine, "-q")
        assert all(w.poll() is None for w in writers)
        assert run_cli("verify", bk).returncode == 0
        for name in ("a.lmdb", "sub/b.lmdb"):
            check_snapshot(bk / name)
        doc = manifest.read(bk)
        txnids.append(sorted(e["txnid"] for e in doc["environments"]))
    # the writers really were writing while we copied
    assert len({tuple(t) for t in txnids}) == len(txnids)


# ------------------------------------------------------------------ killed

@pytest.mark.parametrize("point", hooks.PAUSE_POINTS)
def test_killed_backup_leaves_no_destination(tmp_path: Path, point: str) -> None:
    svc = service(tmp_path)
    write_layout(svc / "blob", 8 << 20, [(0, os.urandom(4 << 20))])
    dst = tmp_path / "bk"
    proc = run_until_paused(point, svc, dst)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not dst.exists()
    assert (tmp_path / "bk.partial").is_dir()
    partial = partials.read_partial(tmp_path / "bk.partial")
    assert partial is not None and not partial.active
    # the next run reports it; the same name is refused until cleaned
    proc = run_cli("backup", svc, tmp_path / "next")
    assert proc.returncode == 0, proc.stderr
    assert f"{tmp_path / 'bk.partial'}: unfinished backup" in proc.stderr
    proc = run_cli("backup", svc, dst)
    assert_one_line_error(proc, str(tmp_path / "bk.partial"), "--clean-partial", code=1)
    proc = run_cli("backup", svc, dst, "--clean-partial")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "bk.partial").exists()
    assert run_cli("verify", dst).returncode == 0


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                         (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("point", hooks.PAUSE_POINTS)
def test_interrupted_backup_stops_promptly_and_removes_its_partial(
        tmp_path: Path, point: str, signum: int, code: int) -> None:
    # Ctrl-C reaches only the main thread; a copy thread in the middle of a
    # file (here held there by the test hook, which never resumes) must stop
    # too, or the interrupted backup waits for the file, forever here.
    # SIGTERM (systemd, Kubernetes) and SIGHUP are handled as Ctrl-C, each with
    # its own code (128 + the signal's number).
    svc = service(tmp_path)
    write_layout(svc / "blob", 8 << 20, [(0, os.urandom(4 << 20))])
    dst = tmp_path / "bk"
    proc = run_until_paused(point, svc, dst, env={"PYTHONFAULTHANDLER": "1"})
    proc.send_signal(signum)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # faulthandler prints every thread's stack on SIGABRT: where it hangs
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        raise AssertionError(f"no exit 30 s after the signal:\n{proc.stderr.read()}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == code and "Traceback" not in err, (rc, err)
    assert not dst.exists() and not (tmp_path / "bk.partial").exists(), err


def test_running_backup_partial_is_left_alone(tmp_path: Path) -> None:
    svc = service(tmp_path)
    proc = run_until_paused("snapshots-taken", svc, tmp_path / "bk")
    try:
        p = partials.read_partial(tmp_path / "bk.partial")
        assert p is not None and p.active and p.pid == proc.pid
        # Another source's backup beside it (one of the same source waits its turn).
        other = service(tmp_path, "cortex01")
        out = run_cli("backup", other, tmp_path / "other", "--clean-partial")
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "bk.partial").is_dir()
        # A prune waits for running backups; what it would do keeps the partial.
        report = retention.prune(tmp_path, keep_last=5, now=time.time() + 3 * 86400,
                                 dry_run=True)
        assert [x.path for x, _ in report.partials_kept] == [tmp_path / "bk.partial"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    report = retention.prune(tmp_path, keep_last=5, now=time.time() + 3 * 86400)
    assert [x.path for x in report.partials_removed] == [tmp_path / "bk.partial"]
    assert not (tmp_path / "bk.partial").exists() and (tmp_path / "other").is_dir()


# ------------------------------------------------------------------ bad input

def test_bad_sources_and_destinations(tmp_path: Path) -> None:
    svc = service(tmp_path)
    proc = run_cli("backup", tmp_path / "nope", tmp_path / "bk")
    assert_one_line_error(proc, str(tmp_path / "nope"), "does not exist", code=1)
    proc = run_cli("backup", svc / "cell.yaml", tmp_path / "bk")
    assert_one_line_error(proc, str(svc / "cell.yaml"), "not a directory", code=2)
    (tmp_path / "exists").mkdir()
    proc = run_cli("backup", svc, tmp_path / "exists")
    assert_one_line_error(proc, str(tmp_path / "exists"), "already exists", code=1)
    proc = run_cli("backup", svc, svc / "slabs" / "bk")
    assert_one_line_error(proc, "inside the source", code=2)
    # inside the source, in directories that do not exist yet: still that mistake
    proc = run_cli("backup", svc, svc / "new" / "dir" / "bk_%Y")
    assert_one_line_error(proc, "inside the source", code=2)
    proc = run_cli("backup", svc, tmp_path / "no" / "parent")
    assert_one_line_error(proc, str(tmp_path / "no"), "does not exist", code=1)
    proc = run_cli("backup", svc, tmp_path / "bk", "--lmdb-engine", "magic")
    assert_one_line_error(proc, "--lmdb-engine", code=2)
    assert sorted(os.listdir(tmp_path)) == ["cortex00", "exists"]


def test_options_that_could_only_mislead_are_refused(tmp_path: Path) -> None:
    svc = service(tmp_path)
    bk = tmp_path / "bk"
    for value in ("nan", "inf"):   # NaN would also make the manifest invalid JSON
        assert_one_line_error(run_cli("backup", "--bwlimit", value, svc, bk), "--bwlimit",
                              code=2)
    # an empty SRC is not the current directory
    assert_one_line_error(run_cli("backup", "", bk), "SRC is empty", code=2)
    # --exclude patterns that can never match a path relative to SRC
    assert_one_line_error(run_cli("backup", "--exclude", "../cortex00/cell.yaml", svc, bk),
                          "climbs out", code=2)
    proc = run_cli("backup", "--exclude", str(svc / "slabs" / "empty"), svc, bk)
    assert_one_line_error(proc, "full path", "relative to the source: slabs/empty", code=2)
    # --clean-partial does not remove what is not a synfast partial, and says so
    (tmp_path / "bk.partial").mkdir()
    (tmp_path / "bk.partial" / "mine").write_text("z")
    proc = run_cli("backup", "--clean-partial", svc, bk)
    assert_one_line_error(proc, str(tmp_path / "bk.partial"), "not an unfinished synfast",
                          code=1)
    assert (tmp_path / "bk.partial").is_dir() and not bk.exists()


def test_source_through_a_symlink_and_with_its_own_synfast_directory(tmp_path: Path) -> None:
    svc = service(tmp_path)
    # a backup of a directory restored with cp -a, or of a backup, has a .synfast
    (svc / ".synfast").mkdir()
    (svc / ".synfast" / "notes").write_text("x")
    (svc / "slabs" / ".synfast").mkdir()                  # only the top one is ours
    (svc / "slabs" / ".synfast" / "keep").write_text("y")
    link = tmp_path / "svclink"
    link.symlink_to(svc)
    bk = tmp_path / "bk"
    out = json.loads(backup_ok(link, bk, "--json").stdout)
    assert ".synfast" in out["excluded"]
    assert out["skipped"] and all(s["reason"] for s in out["skipped"])
    assert (bk / "slabs" / ".synfast" / "keep").read_text() == "y"
    assert not (bk / ".synfast" / "notes").exists()
    proc = run_cli("verify", bk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert manifest.read(bk)["source"] == str(svc)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_unreadable_file_in_source(world_tmp: Path) -> None:
    svc = service(world_tmp)
    secret = svc / "secret.key"
    secret.write_text("key")
    os.chmod(secret, 0)
    proc = run_cli("backup", svc, world_tmp / "bk", drop_dac=True)
    assert_one_line_error(proc, str(secret), "permission denied", code=1)
    assert sorted(os.listdir(world_tmp)) == ["cortex00"]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_unreadable_environment_is_not_called_corrupt(world_tmp: Path) -> None:
    # An environment's data.mdb that cannot be read is a permission problem,
    # not a damaged store (whose advice would be "restore it from a backup").
    svc = service(world_tmp)
    data = svc / "slabs" / "cell.lmdb" / "data.mdb"
    os.chmod(data, 0)
    proc = run_cli("backup", svc, world_tmp / "bk", drop_dac=True)
    assert_one_line_error(proc, str(data), "permission denied", code=1)
    assert "restore it from a backup" not in proc.stderr
    os.chmod(data, 0o644)
    # A directory that cannot be searched is named itself, not a file in it.
    logs = svc / "logs"
    logs.mkdir()
    os.chmod(logs, 0)
    proc = run_cli("backup", svc, world_tmp / "bk", drop_dac=True)
    assert_one_line_error(proc, f"{logs}: ", "permission denied", code=1)
    assert f"{logs}/" not in proc.stderr
    assert sorted(os.listdir(world_tmp)) == ["cortex00"]


def test_manifest_times_read_back_exactly() -> None:
    # iso() and parse_iso() must round-trip: the manifest's snapshots.first is
    # computed from the environments' parsed snapshot times and must print as
    # the earliest of them (truncating the float once printed it 1 us early).
    import random

    rng = random.Random(7)
    for _ in range(20000):
        t = 1.7e9 + rng.random() * 1e8
        text = manifest.iso(t)
        assert manifest.iso(manifest.parse_iso(text)) == text
        assert abs(manifest.parse_iso(text) - t) <= 0.5e-6 + 1e-6


def test_corrupt_environment_in_source(tmp_path: Path) -> None:
    svc = service(tmp_path)
    data = svc / "layers" / "abc123" / "layer_v2.lmdb" / "data.mdb"

    os.truncate(data, lmdbmeta.read_meta(data).used_size - 8192)
    proc = run_cli("backup", svc, tmp_path / "bk")
    assert_one_line_error(proc, str(data.parent), "truncated", code=1)
    assert sorted(os.listdir(tmp_path)) == ["cortex00"]


def test_destination_full(tmp_path: Path, small_tmpfs: Path) -> None:
    svc = tmp_path / "svc"
    svc.mkdir()
    make_env(svc / "a.lmdb", {b"d": {b"k%d" % i: os.urandom(3000) for i in range(300)}})
    write_layout(svc / "big", 64 << 20, [(0, os.urandom(6 << 20))])
    proc = run_cli("backup", svc, small_tmpfs / "bk")
    assert_one_line_error(proc, "no space left", code=1)
    assert str(small_tmpfs / "bk") in proc.stderr
    assert os.listdir(small_tmpfs) == []


@pytest.mark.skipif(not shutil.which("fincore"), reason="fincore (util-linux) is not installed")
def test_written_pages_are_dropped_from_the_page_cache(tmp_path: Path) -> None:
    svc = service(tmp_path)
    write_layout(svc / "blob", 16 << 20, [(0, os.urandom(16 << 20))])
    # Outputs over 1 MiB are dropped as they are finished; smaller ones are
    # left to the kernel (made durable together, by one syncfs).
    make_env(svc / "slabs" / "big.lmdb", {b"d": {b"k%d" % i: os.urandom(3000)
                                               for i in range(600)}})

    def resident(path: Path) -> int:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])

    backup_ok(svc, tmp_path / "dropped", "-q")
    backup_ok(svc, tmp_path / "kept", "-q", "--no-drop-cache")
    assert resident(tmp_path / "kept" / "blob") > 8 << 20
    assert resident(tmp_path / "dropped" / "blob") == 0
    assert resident(tmp_path / "dropped" / "slabs" / "big.lmdb" / "data.mdb") == 0
    assert resident(tmp_path / "kept" / "slabs" / "big.lmdb" / "data.mdb") > 1 << 20


@pytest.mark.parametrize("how", ["removed", "replaced by a directory"])
def test_file_removed_by_the_service_during_the_backup_is_listed(tmp_path: Path,
                                                                 how: str) -> None:
    svc = service(tmp_path)
    resume = tmp_path / "resume"
    env = {**os.environ, hooks.PAUSE_ENV: "snapshots-taken",
           hooks.RESUME_ENV: str(resume)}
    proc = subprocess.Popen([sys.executable, "-m", "synfast", "backup", "--json", str(svc),
                             str(tmp_path / "bk")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:          # the walk is done: cell.yaml is in the plan
            if "paused at snapshots-taken" in line:
                break
        (svc / "cell.yaml").unlink()
        if how == "replaced by a directory":
            (svc / "cell.yaml").mkdir()
        resume.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert {"path": "cell.yaml", "type": "file removed during the backup",
            "reason": "removed during the backup"} in json.loads(out)["skipped"]
    assert "cell.yaml: skipped file removed during the backup" in err
    assert not (tmp_path / "bk" / "cell.yaml").exists()
    assert run_cli("verify", tmp_path / "bk").returncode == 0
