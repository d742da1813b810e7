"""``synfast copy`` and ``synfast scan`` as a user runs them: a separate process,
real files, exit codes and stderr checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synfast.lmdb import meta as lmdbmeta
from tests.conftest import (
    IS_ROOT,
    allocated,
    assert_one_line_error,
    files_equal,
    leftovers,
    make_env,
    mdb_dump,
    run_cli,
    write_layout,
)


def service_dir(root: Path) -> Path:
    """A small Cortex-like directory: writemap environments with big maps, a
    single-file environment, a sparse file, small files, a symlink, a socket."""
    svc = root / "cortex00"
    (svc / "slabs").mkdir(parents=True)
    (svc / "layers" / "abc123").mkdir(parents=True)
    make_env(svc / "slabs" / "cell.lmdb", {b"meta": {b"k": b"v"}, b"nodes": {
        f"n{i:04}".encode(): os.urandom(200) for i in range(500)}}, map_size=4 << 30)
    make_env(svc / "layers" / "abc123" / "layer_v2.lmdb", {b"big": {
        f"b{i}".encode(): os.urandom(20000) for i in range(30)}}, map_size=2 << 30)
    make_env(svc / "store.mdb", {None: {b"x": b"y"}}, subdir=False)
    write_layout(svc / "sparse.bin", 5 << 30, [(1 << 20, os.urandom(65536))])
    (svc / "cell.yaml").write_text("dmon:listen: tcp://0.0.0.0:27492\n")
    os.chmod(svc / "cell.yaml", 0o600)
    os.utime(svc / "cell.yaml", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (svc / "cell.guid").symlink_to("cell.yaml")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(svc / "sock"))
    sock.close()
    os.mkfifo(svc / "fifo")
    return svc


def test_copy_of_a_service_directory(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    if IS_ROOT:
        os.chown(svc / "cell.yaml", 4321, 8765)
    dst = tmp_path / "copy"
    proc = run_cli("copy", svc, dst)
    assert proc.returncode == 0, proc.stderr
    # special files: skipped, with a warning each
    assert "sock: skipped socket" in proc.stderr and "fifo: skipped fifo" in proc.stderr
    assert not (dst / "sock").exists() and not (dst / "fifo").exists()
    # environments: copied through LMDB, same data, no lock files
    for rel in ("slabs/cell.lmdb", "layers/abc123/layer_v2.lmdb"):
        assert sorted(os.listdir(dst / rel)) == ["data.mdb"]
        assert mdb_dump(svc / rel) == mdb_dump(dst / rel)
        assert os.path.getsize(dst / rel / "data.mdb") < 10 << 20
    assert not (dst / "store.mdb-lock").exists()
    assert mdb_dump(svc / "store.mdb", subdir=False) == mdb_dump(dst / "store.mdb", subdir=False)
    # sparse stays sparse
    assert files_equal(svc / "sparse.bin", dst / "sparse.bin")
    assert allocated(dst / "sparse.bin") <= allocated(svc / "sparse.bin") + 8192
    # symlink copied as a symlink, metadata kept
    assert os.readlink(dst / "cell.guid") == "cell.yaml"
    s, d = os.stat(svc / "cell.yaml"), os.stat(dst / "cell.yaml")
    assert (d.st_mode, d.st_mtime_ns) == (s.st_mode, s.st_mtime_ns)
    if IS_ROOT:
        assert (d.st_uid, d.st_gid) == (4321, 8765)
    assert os.stat(dst / "slabs").st_mtime_ns == os.stat(svc / "slabs").st_mtime_ns
    assert leftovers(tmp_path) == []


def test_copy_json_summary(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    proc = run_cli("copy", "--json", svc, tmp_path / "copy")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["environments"] == 3
    assert {s["type"] for s in summary["skipped"]} == {"socket", "fifo"}
    assert summary["copy_allocated"] < summary["source_apparent"] // 100


@pytest.mark.parametrize("engine", ["auto", "rebuild", "compact", "raw"])
def test_copy_of_one_environment_with_each_engine(tmp_path: Path, engine: str) -> None:
    env = make_env(tmp_path / "e.lmdb", {b"d": {f"k{i}".encode(): b"b" * (i * 37 % 9000)
                                               for i in range(400)}, None: {b"plain": b"x"}})
    proc = run_cli("copy", "--json", "--lmdb-engine", engine, env, tmp_path / "e2.lmdb")
    assert proc.returncode == 0, proc.stderr
    used = json.loads(proc.stdout)["environment_copies"][0]["engine"]
    assert used == engine or (engine == "auto" and used in ("rebuild", "compact"))
    assert sorted(os.listdir(tmp_path / "e2.lmdb")) == ["data.mdb"]
    assert mdb_dump(env) == mdb_dump(tmp_path / "e2.lmdb")


def test_copy_of_one_environment_and_one_data_file(tmp_path: Path) -> None:
    env = make_env(tmp_path / "e.lmdb", {b"d": {b"a": b"b" * 5000}})
    assert run_cli("copy", env, tmp_path / "e2.lmdb").returncode == 0
    assert mdb_dump(env) == mdb_dump(tmp_path / "e2.lmdb")
    # Naming the data file copies the environment through its own lock file.
    assert run_cli("copy", env / "data.mdb", tmp_path / "one.mdb").returncode == 0
    assert mdb_dump(env) == mdb_dump(tmp_path / "one.mdb", subdir=False)


def test_copy_reflink_and_sparse_options(tmp_path: Path) -> None:
    src = tmp_path / "dense"
    src.write_bytes(os.urandom(4096) + bytes(1 << 20) + os.urandom(4096))
    assert run_cli("copy", "--sparse=always", src, tmp_path / "a").returncode == 0
    assert allocated(tmp_path / "a") < 64 << 10
    assert run_cli("copy", "--sparse", "never", "--reflink", "never", src,
                   tmp_path / "b").returncode == 0
    assert allocated(tmp_path / "b") >= os.path.getsize(src)
    proc = run_cli("copy", "--reflink=always", "--sparse=never", src, tmp_path / "c")
    assert_one_line_error(proc, "--reflink=always", code=2)
    proc = run_cli("copy", "--sparse=sometimes", src, tmp_path / "c")
    assert_one_line_error(proc, "--sparse", code=2)


def test_scan_reports_files_and_environments(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    proc = run_cli("scan", "--json", svc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_path = {e["path"]: e for e in report["entries"]}
    sparse = by_path["sparse.bin"]
    assert (sparse["apparent"], sparse["data_bytes"], sparse["extents"]) == (5 << 30, 65536, 1)
    cell = by_path["slabs/cell.lmdb"]
    meta = lmdbmeta.read_meta(svc / "slabs/cell.lmdb/data.mdb")
    assert cell["kind"] == "env" and cell["map_size"] == 4 << 30
    assert cell["used_size"] == meta.used_size
    totals = report["totals"]
    assert totals["environments"] == 3
    assert totals["apparent"] == sum(e["apparent"] for e in report["entries"])
    # scanning must not open environments: no lock file appears
    (svc / "slabs/cell.lmdb/lock.mdb").unlink()
    table = run_cli("scan", svc)
    assert table.returncode == 0
    assert "slabs/cell.lmdb" in table.stdout and "4.0 GiB" in table.stdout
    assert not (svc / "slabs/cell.lmdb/lock.mdb").exists()


# ---- bad input: one line on stderr naming the path, non-zero exit, nothing left


def test_missing_source(tmp_path: Path) -> None:
    proc = run_cli("copy", tmp_path / "nope", tmp_path / "dst")
    assert_one_line_error(proc, str(tmp_path / "nope"), "does not exist", code=1)
    assert not (tmp_path / "dst").exists()


def test_destination_exists_refused_then_forced(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep").write_text("precious")
    proc = run_cli("copy", svc, dst)
    assert_one_line_error(proc, str(dst), "already exists", "--force", code=1)
    assert (dst / "keep").read_text() == "precious"
    assert run_cli("copy", "--force", svc, dst).returncode == 0
    assert not (dst / "keep").exists() and (dst / "cell.yaml").exists()
    assert leftovers(tmp_path) == []


def test_destination_inside_source(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    proc = run_cli("copy", svc, svc / "backups" / "x")
    assert proc.returncode != 0
    (svc / "backups").mkdir()
    proc = run_cli("copy", svc, svc / "backups" / "x")
    assert_one_line_error(proc, "inside the source", code=2)
    assert os.listdir(svc / "backups") == []


def test_source_is_a_socket(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    proc = run_cli("copy", svc / "sock", tmp_path / "s")
    assert_one_line_error(proc, str(svc / "sock"), "socket", code=1)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_permission_denied_on_read(world_tmp: Path) -> None:
    svc = service_dir(world_tmp)
    secret = svc / "secret.key"
    secret.write_text("key")
    os.chmod(secret, 0)
    proc = run_cli("copy", svc, world_tmp / "dst", drop_dac=True)
    assert_one_line_error(proc, str(secret), "permission denied", code=1)
    assert not (world_tmp / "dst").exists() and leftovers(world_tmp) == []


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_permission_denied_on_write(world_tmp: Path) -> None:
    src = world_tmp / "f"
    src.write_text("data")
    ro = world_tmp / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    proc = run_cli("copy", src, ro / "f", drop_dac=True)
    assert_one_line_error(proc, str(ro), "permission denied", code=1)
    assert os.listdir(ro) == []


def test_corrupt_data_mdb(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    bad = svc / "slabs" / "cell.lmdb" / "data.mdb"
    with open(bad, "r+b") as f:
        f.write(os.urandom(8192))  # both meta pages destroyed
    proc = run_cli("copy", svc, tmp_path / "dst")
    assert_one_line_error(proc, str(bad), "not an LMDB data file", code=1)
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_truncated_data_mdb(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    data = svc / "layers" / "abc123" / "layer_v2.lmdb" / "data.mdb"
    os.truncate(data, lmdbmeta.read_meta(data).used_size - 8192)
    for engine in ("compact", "rebuild"):
        proc = run_cli("copy", "--lmdb-engine", engine, svc, tmp_path / "dst")
        # names the environment (its directory or its data file)
        assert_one_line_error(proc, str(data.parent), "truncated", code=1)
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_lmdb_named_directory_without_environment(tmp_path: Path) -> None:
    svc = service_dir(tmp_path)
    (svc / "slabs" / "empty.lmdb").mkdir()
    proc = run_cli("copy", svc, tmp_path / "dst")
    assert_one_line_error(proc, str(svc / "slabs" / "empty.lmdb"), "holds none", code=1)
    assert not (tmp_path / "dst").exists()


def test_destination_full(tmp_path: Path, small_tmpfs: Path) -> None:
    src = tmp_path / "big"
    write_layout(src, 64 << 20, [(0, os.urandom(8 << 20))])
    proc = run_cli("copy", src, small_tmpfs / "big")
    assert_one_line_error(proc, "no space left", code=1)
    assert os.listdir(small_tmpfs) == []


def test_killed_copy_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    src = tmp_path / "huge"
    write_layout(src, 64 << 30, [(0, b"x")])
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "synfast", "copy", "--sparse=never",
                             str(src), str(dst)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not leftovers(tmp_path):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not dst.exists()
    for name in leftovers(tmp_path):
        (tmp_path / name).unlink()


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_interrupted_copy_cleans_up(tmp_path: Path, signum: int, code: int) -> None:
    src = tmp_path / "huge"
    write_layout(src, 64 << 30, [(0, b"x")])
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "synfast", "copy", "--sparse=never",
                             str(src), str(dst)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not dst.exists() and leftovers(tmp_path) == []
