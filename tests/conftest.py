"""Shared fixtures: real filesystems, real LMDB environments, the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0


def run_cli(*args: str | os.PathLike[str], drop_dac: bool = False, timeout: float = 300,
            **kw) -> subprocess.CompletedProcess[str]:
    """Run ``python -m synfast ARGS`` as a separate process.

    ``drop_dac`` removes root's permission-override capabilities, so file modes
    apply to root as they would to any user (tests of "permission denied").
    """
    cmd = [sys.executable, "-m", "synfast", *map(str, args)]
    if drop_dac:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str,
                          code: int | None = None) -> None:
    """The brief's rule for bad input: one line on stderr naming the problem, a
    non-zero exit, no traceback."""
    assert proc.returncode != 0, proc
    if code is not None:
        assert proc.returncode == code, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def leftovers(parent: Path) -> list[str]:
    """Temporary names a copy may have left beside its destination."""
    return [n for n in os.listdir(parent) if "synfast-partial" in n or "synfast-old" in n]


def write_layout(path: Path, size: int, chunks: list[tuple[int, bytes]]) -> None:
    """A sparse file of ``size`` bytes with ``chunks`` of data at their offsets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off, data in chunks:
            os.pwrite(fd, data, off)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def lseek_extents(path: Path) -> list[tuple[int, int]]:
    """Reference extent walk with os.lseek, independent of the native code."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            out.append((data, hole - data))
            pos = hole
    finally:
        os.close(fd)
    return out


def files_equal(a: Path, b: Path) -> bool:
    """Byte equality that reads no hole: outside the data extents of both files
    both read as zeros, so only the union of their extents is compared."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    merged: list[list[int]] = []
    for off, length in sorted(lseek_extents(a) + lseek_extents(b)):
        if merged and off <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off + length)
        else:
            merged.append([off, off + length])
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in merged:
            fa.seek(start)
            fb.seek(start)
            pos = start
            while pos < end:
                n = min(1 << 22, end - pos)
                if fa.read(n) != fb.read(n):
                    return False
                pos += n
    return True


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def mdb_dump(path: Path, subdir: bool = True) -> str:
    """``mdb_dump -a`` of an environment with the header lines that describe the
    file rather than the data (map size) removed."""
    cmd = ["mdb_dump", "-a"]
    if not subdir:
        cmd.append("-n")
    cmd.append(str(path))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("mapsize="))


def make_env(path: Path, dbs: dict[bytes | None, dict[bytes, bytes | list[bytes]]], *,
             map_size: int = 1 << 30, writemap: bool = True, subdir: bool = True,
             dupsort: tuple[bytes, ...] = ()) -> Path:
    """Create an LMDB environment with py-lmdb and close it again.

    ``dbs`` maps a database name (None: the main database) to its entries; a list
    value puts several duplicates (the database must be in ``dupsort``).
    """
    import lmdb

    env = lmdb.open(str(path), map_size=map_size, writemap=writemap, subdir=subdir,
                    max_dbs=max(1, len(dbs)) + 1, lock=True)
    try:
        for name, entries in dbs.items():
            db = env.open_db(name, dupsort=name in dupsort) if name is not None else None
            with env.begin(write=True, db=db) as txn:
                for k, v in entries.items():
                    for one in v if isinstance(v, list) else [v]:
                        txn.put(k, one, db=db, dupdata=True)
    finally:
        env.close()
    return path


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary directory outside pytest's 0700 tree, for processes that run
    with reduced privileges."""
    d = Path(tempfile.mkdtemp(prefix="synfast-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _mount_image(fs: str, size: int, mkfs: list[str], opts: str) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip(f"mounting a loop {fs} needs root")
    if shutil.which(mkfs[0]) is None:
        pytest.skip(f"{mkfs[0]} is not installed")
    base = Path(tempfile.mkdtemp(prefix=f"synfast-{fs}-", dir="/tmp"))
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        proc = subprocess.run(["mount", "-o", f"loop{',' + opts if opts else ''}", str(image),
                               str(mnt)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot loop-mount {fs}: {proc.stderr.strip()}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def xfs_reflink() -> Iterator[Path]:
    """A loop-mounted XFS made with reflink=1 (skipped without root or a loop device)."""
    yield from _mount_image("xfs", 1 << 30, ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "")


@pytest.fixture
def on_xfs(xfs_reflink: Path) -> Iterator[Path]:
    """A fresh directory on the session's reflink XFS, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="synfast-", dir=xfs_reflink))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def ramfs() -> Iterator[Path]:
    """A filesystem without SEEK_DATA/SEEK_HOLE support (generic llseek): the
    kernel reports every byte of a file as data."""
    if not IS_ROOT:
        pytest.skip("mounting ramfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="synfast-ramfs-", dir="/tmp"))
    proc = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount ramfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


@pytest.fixture(scope="session")
def tmpfs() -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("mounting tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="synfast-tmpfs-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 4 MiB tmpfs: a destination that runs out of space."""
    if not IS_ROOT:
        pytest.skip("mounting tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="synfast-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def fiemap(path: Path) -> list[tuple[int, int, bool]]:
    """The data extents of ``path`` as ``filefrag -v`` (FIEMAP) reports them:
    (offset, length, shared) in bytes; shared means the blocks are also another
    file's (a reflink)."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    block = int(out[1].split("blocks of ")[1].split()[0])
    extents = []
    for line in out[3:]:
        fields = line.split(":")
        if len(fields) < 5 or ".." not in fields[1]:
            continue
        first, last = (int(x) for x in fields[1].split(".."))
        extents.append((first * block, (last - first + 1) * block, "shared" in fields[-1]))
    return extents


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, server: subprocess.Popen, what: str) -> None:
    """Until ``server`` accepts connections on ``port``; fails if it exits first
    (the deadline only keeps a broken server from hanging the test)."""
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None, f"{what} exited"
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)
