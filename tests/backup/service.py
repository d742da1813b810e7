"""What the backup tests share: a Cortex-like service directory and a backup
that must succeed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from synfast.backup import hooks
from tests.conftest import make_env, run_cli, write_layout


def run_until_paused(point: str, *args: object, env: dict | None = None) -> subprocess.Popen:
    """``synfast backup ARGS`` started with the test hook that holds it at
    ``point``; returned once it says it is there (its stderr is a text pipe)."""
    env = {**os.environ, **(env or {}), hooks.PAUSE_ENV: point}
    proc = subprocess.Popen([sys.executable, "-m", "synfast", "backup", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:       # progress lines come first
        seen.append(line)
        if f"paused at {point}" in line:
            return proc
    proc.wait(timeout=30)
    raise AssertionError("".join(seen))


def service(root: Path, name: str = "cortex00") -> Path:
    """A Cortex-like service directory: writemap environments with big maps and
    named databases (one with duplicates), a single-file environment, a sparse
    file, small files with odd modes, a symlink, a socket, a FIFO, and the
    scratch directories a backup leaves out (tmp/, backups/ at any depth)."""
    svc = root / name
    (svc / "slabs").mkdir(parents=True)
    (svc / "layers" / "abc123").mkdir(parents=True)
    make_env(svc / "slabs" / "cell.lmdb", {
        b"meta": {b"k": b"v"},
        b"nodes": {f"n{i:04}".encode(): os.urandom(200) for i in range(400)},
        b"tags": {b"t1": [b"a", b"b", b"c"], b"t2": [b"d"]},
    }, map_size=2 << 30, dupsort=(b"tags",))
    make_env(svc / "layers" / "abc123" / "layer_v2.lmdb", {b"big": {
        f"b{i}".encode(): os.urandom(9000) for i in range(40)}}, map_size=1 << 30)
    make_env(svc / "store.mdb", {None: {b"x": b"y", b"z": b"w" * 5000}}, subdir=False)
    write_layout(svc / "sparse.bin", 3 << 30, [(1 << 20, os.urandom(70000)),
                                               (2 << 30, os.urandom(5000))])
    (svc / "cell.yaml").write_text("dmon:listen: tcp://0.0.0.0:27492\n")
    os.chmod(svc / "cell.yaml", 0o640)
    os.utime(svc / "cell.yaml", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (svc / "slabs" / "empty").write_bytes(b"")
    (svc / "cell.guid").symlink_to("cell.yaml")
    os.chmod(svc / "layers", 0o750)
    for scratch in ("tmp", "layers/abc123/tmp", "backups"):
        (svc / scratch).mkdir()
        (svc / scratch / "junk").write_bytes(os.urandom(1000))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(svc / "sock"))
    sock.close()
    os.mkfifo(svc / "fifo")
    return svc


ENVS = ("slabs/cell.lmdb", "layers/abc123/layer_v2.lmdb")


def backup_ok(*args) -> subprocess.CompletedProcess[str]:
    proc = run_cli("backup", *args)
    assert proc.returncode == 0, proc.stderr
    return proc
