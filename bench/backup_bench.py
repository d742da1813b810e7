"""Benchmark of ``synfast backup`` on a whole service directory (issue 4).

The service directory holds dataset A and dataset B of docs/reference/lmdb-facts.md
(built and cached by ``bench/lmdb_engines.py``; here hard-linked, never
modified), eight small sparse environments (map 1 GiB each), the 16 GiB sparse
file of ``bench/sparse_copy.py`` (512 MiB of data), small files, a ``tmp/``
directory and a socket.

Contenders, each its own process (wall time and memory are the whole
process's, interpreter start included), page cache warm, ``sync`` before each:

- ``cp-a``        ``cp -a SRC OUT`` (fast, not safe on a live service)
- ``cp-a+sync``   ``cp -a`` then ``sync -f`` of the output's filesystem: the same
  copy made durable, as ``synfast backup`` makes its output by default
- ``pylmdb``      what the Synapse backup tool does: py-lmdb
  ``Environment.copy(compact=True)`` for each environment, one after another,
  and ``shutil.copy`` for the other files (tmp/ and backups/ skipped, sockets
  ignored)
- ``synfast``     ``synfast backup`` with its defaults (engine auto, checksums,
  fsync, page cache dropped), and variants with options after a colon, e.g.
  ``synfast:--no-checksum``, ``synfast:--no-fsync+--lmdb-engine=compact``
- ``floor``       ``dd`` writing as many zero bytes as the last ``synfast`` run's
  output holds (allocated) into one file and fsyncing it: the time this
  machine's disk needs to make that much data durable, a floor for any backup
  that fsyncs what it writes (``cp -a`` does not)

``cpu`` is the contender's user plus system time (``/usr/bin/time``).

Memory: ``maxrss`` is the kernel's peak RSS (which counts the pages of the
source environments mapped by LMDB: file pages, reclaimable), ``anon`` the peak
of private anonymous memory polled from ``/proc/PID/smaps_rollup``.

Usage::

    python -m bench.backup_bench                     # everything, full scale
    python -m bench.backup_bench --scale 0.05        # quick
    python -m bench.backup_bench --only cp-a,synfast,synfast:--no-checksum
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
SKIP_DIRS = {"tmp", "backups"}

DEFAULT = ["cp-a", "cp-a+sync", "pylmdb", "synfast", "synfast:--no-checksum",
           "synfast:--lmdb-engine=rebuild", "synfast:--lmdb-engine=compact",
           "synfast:--lmdb-engine=raw"]


def build_service(scale: float) -> Path:
    """Assemble (or reuse) the benchmark's service directory."""
    import lmdb

    sys.path.insert(0, os.fspath(ROOT))
    from bench.lmdb_engines import build_dataset
    from bench.sparse_copy import make_sparse

    svc = CACHE / f"backup-service-scale{scale:g}"
    if (svc / ".complete").exists():
        return svc
    if svc.exists():
        shutil.rmtree(svc)
    (svc / "layers").mkdir(parents=True)
    for name in ("A", "B"):
        src = build_dataset(name, scale)
        env = svc / "layers" / f"{name.lower()}.lmdb"
        env.mkdir()
        os.link(src / "data.mdb", env / "data.mdb")
    apparent, data = int((16 << 30) * scale), int((512 << 20) * scale)
    big = CACHE / f"sparse-{apparent}-{data}.bin"
    if not big.exists():
        make_sparse(big, apparent, data)
    (svc / "axon").mkdir()
    os.link(big, svc / "axon" / "spool.bin")
    for i in range(8):
        p = svc / "slabs" / f"small{i}.lmdb"
        p.mkdir(parents=True)
        env = lmdb.open(os.fspath(p), map_size=1 << 30, writemap=True, max_dbs=4)
        db = env.open_db(b"nodes")
        with env.begin(write=True) as txn:
            for k in range(2000):
                txn.put(b"%08d" % k, os.urandom(200), db=db)
        env.close()
        os.unlink(p / "lock.mdb")
    (svc / "cell.yaml").write_text("dmon:listen: tcp://0.0.0.0:27492\n")
    (svc / "cell.guid").write_text(os.urandom(16).hex())
    (svc / "tmp").mkdir()
    (svc / "tmp" / "scratch").write_bytes(os.urandom(1 << 20))
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fspath(svc / "sock"))
    s.close()
    (svc / ".complete").write_text("")
    return svc


def pylmdb_driver(src: str, dst: str) -> None:
    """The Synapse tool's way, as a baseline (run in a child process)."""
    import lmdb

    os.mkdir(dst)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        rel = os.path.relpath(dirpath, src)
        out = os.path.join(dst, rel)
        os.makedirs(out, exist_ok=True)
        if "data.mdb" in filenames:
            env = lmdb.open(dirpath, readonly=True, max_dbs=128, lock=True)
            env.copy(out, compact=True)
            env.close()
            continue
        for name in filenames:
            if name in (".complete",):
                continue
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                shutil.copy(p, os.path.join(out, name))


def command(contender: str, src: Path, dst: Path, floor_bytes: int = 0) -> list[str]:
    if contender == "floor":
        if not floor_bytes:
            raise SystemExit("the floor contender needs a synfast run before it")
        return ["sh", "-c", 'mkdir "$0" && exec dd if=/dev/zero of="$0/floor" bs=1M '
                'count="$1" conv=fsync status=none', os.fspath(dst),
                str(-(-floor_bytes // (1 << 20)))]
    if contender == "cp-a":
        return ["cp", "-a", os.fspath(src), os.fspath(dst)]
    if contender == "cp-a+sync":
        return ["sh", "-c", 'cp -a "$0" "$1" && exec sync -f "$1"', os.fspath(src),
                os.fspath(dst)]
    if contender == "pylmdb":
        return [sys.executable, "-m", "bench.backup_bench", "--drive", os.fspath(src),
                os.fspath(dst)]
    opts = contender.split(":", 1)[1].split("+") if ":" in contender else []
    return [sys.executable, "-m", "synfast", "backup", "-q", *opts, os.fspath(src),
            os.fspath(dst)]


def _anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(cmd: list[str]) -> dict:
    time_out = CACHE / "backup-bench-time.out"
    full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", os.fspath(time_out), *cmd]
    subprocess.run(["sync"], check=True)
    peak = [0]
    t0 = time.monotonic()
    proc = subprocess.Popen(full, cwd=ROOT)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            except OSError:
                kids = []
            for k in kids:
                peak[0] = max(peak[0], _anon(int(k)))
            time.sleep(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.monotonic() - t0
    stop.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {rc}")
    _, maxrss_kb, user, system = time_out.read_text().split()[-4:]
    return {"wall": wall, "maxrss": int(maxrss_kb) * 1024, "anon": peak[0],
            "cpu": float(user) + float(system)}


def allocated(path: Path) -> int:
    total = 0
    for dirpath, _d, names in os.walk(path):
        for n in names:
            total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description="synfast backup benchmark")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", default=",".join(DEFAULT))
    parser.add_argument("--unsteady", action="store_true",
                        help="leave free page reporting as it is (see bench/steady.py)")
    parser.add_argument("--drive", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        pylmdb_driver(*args.drive)
        return
    svc = build_service(args.scale)
    sys.path.insert(0, os.fspath(ROOT))
    from bench.steady import steady_memory

    with steady_memory(not args.unsteady) as how:
        print(f"# {how}", flush=True)
        measure(svc, args.only.split(","))


def measure(svc: Path, contenders: list[str]) -> None:
    """Run each contender once, in order, and print the table."""
    out_root = CACHE / "backup-bench-out"
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir()
    src_alloc = allocated(svc)
    print(f"# service {svc}: {src_alloc / 1e9:.2f} GB allocated", flush=True)
    rows = []
    floor_bytes = 0
    for contender in contenders:
        dst = out_root / "out"
        r = run(command(contender, svc, dst, floor_bytes))
        r["size"] = allocated(dst)
        if contender.startswith("synfast"):
            floor_bytes = r["size"]
        rows.append((contender, r))
        print(f"{contender:34s} {r['wall']:7.2f} s  cpu {r['cpu']:5.2f} s  "
              f"out {r['size'] / 1e9:6.2f} GB  "
              f"maxrss {r['maxrss'] / 2**20:7.1f} MiB  anon {r['anon'] / 2**20:7.1f} MiB",
              flush=True)
        shutil.rmtree(dst)
    # Ratios against the nearest cp-a / pylmdb run before the row (or the first
    # one after it), so that repeated rounds compare within their round.
    def ref(i: int, name: str) -> float | None:
        before = [r["wall"] for n, r in rows[:i + 1] if n == name]
        after = [r["wall"] for n, r in rows[i:] if n == name]
        return (before or after or [None])[-1 if before else 0]

    def x(wall: float, base: float | None) -> str:
        return f"{wall / base:.2f}" if base else "-"

    print("\n| contender | wall | cpu | x cp -a | x cp -a+sync | x pylmdb | output | maxrss "
          "| anon peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (name, r) in enumerate(rows):
        cp, cps, py = ref(i, "cp-a"), ref(i, "cp-a+sync"), ref(i, "pylmdb")
        print(f"| {name} | {r['wall']:.2f} s | {r['cpu']:.2f} s | {x(r['wall'], cp)} "
              f"| {x(r['wall'], cps)} "
              f"| {x(r['wall'], py)} | {r['size'] / 1e9:.2f} GB | "
              f"{r['maxrss'] / 2**20:.0f} MiB | {r['anon'] / 2**20:.0f} MiB |")

if __name__ == "__main__":
    main()
