"""`make demo`: back up a live Cortex-like service directory three ways and compare.

The generated directory looks like a Synapse Cortex: seven LMDB environments
opened with ``writemap=True`` and maps of 1 to 8 GiB (so their data files are
sparse), named databases, over 200 MB of data in all, a sparse non-LMDB file,
small files, a ``tmp/`` directory and a UNIX socket.  One more environment is
written continuously by a separate process during the whole demo, keeping an
invariant that a torn copy breaks (each transaction sets a counter and adds
and deletes keys in two databases together).

Then it runs ``synfast backup``, ``synfast verify`` and ``cp -a`` and prints,
for each, the wall time, the apparent and allocated size of the result, and
whether the method is safe on a live service, with the measured check of the
live environment in the result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent("""
    import hashlib, lmdb, sys
    env = lmdb.open(sys.argv[1], map_size=1 << 30, writemap=True, max_dbs=4)
    a, b = env.open_db(b"a"), env.open_db(b"b")
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        key = b"%08d" % i
        value = hashlib.sha256(key).digest() * (100 + i % 200)
        with env.begin(write=True) as txn:
            for db in (a, b):
                txn.put(b"counter", key, db=db)
                txn.put(key, value, db=db)
                if i > 40:
                    txn.delete(b"%08d" % (i - 40), db=db)
""")


def make_service(path: Path, seed: int = 7) -> Path:
    """Build the demo service directory at ``path`` (replacing an old one)."""
    import lmdb

    if path.exists():
        shutil.rmtree(path)
    rng = random.Random(seed)
    # rel: (map size, entries, value sizes)
    envs = {
        "slabs/cell.lmdb": (4 << 30, 20_000, (100, 400)),
        "slabs/nexuslog/seqn0000000000000000.lmdb": (2 << 30, 40_000, (60, 300)),
        "layers/7b0a8c2f/layer_v2.lmdb": (8 << 30, 30_000, (100, 5_000)),
        "layers/7b0a8c2f/nodeedits.lmdb": (2 << 30, 20_000, (200, 1_200)),
        "layers/c91e02aa/layer_v2.lmdb": (4 << 30, 10_000, (100, 3_000)),
        "axon/blob.lmdb": (2 << 30, 2_200, (20_000, 60_000)),
        "jsonstor/jsonstor.lmdb": (1 << 30, 5_000, (50, 500)),
    }
    for rel, (map_size, count, (lo, hi)) in envs.items():
        env_path = path / rel
        env_path.mkdir(parents=True)
        env = lmdb.open(str(env_path), map_size=map_size, writemap=True, max_dbs=8)
        dbs = [env.open_db(name) for name in (b"byprop", b"bybuid", b"meta")]
        blob = rng.randbytes(hi * 2)
        done = 0
        while done < count:
            with env.begin(write=True) as txn:
                for i in range(done, min(count, done + 5000)):
                    n = rng.randint(lo, hi)
                    off = rng.randrange(0, hi)
                    txn.put(rng.randbytes(16), blob[off:off + n], db=dbs[i % len(dbs)])
            done += 5000
        env.close()
    sparse = path / "axon" / "spool.bin"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)
        for _ in range(40):
            f.seek(rng.randrange(0, (3 << 30) - (1 << 20)))
            f.write(rng.randbytes(64 << 10))
    (path / "cell.yaml").write_text("aha:name: cortex00\ndmon:listen: tcp://0.0.0.0:27492\n")
    (path / "cell.guid").write_text(rng.randbytes(16).hex() + "\n")
    (path / "cell.mods.yaml").write_text("[]\n")
    (path / "tmp").mkdir()
    (path / "tmp" / "scratch").write_bytes(rng.randbytes(1 << 20))
    (path / "sockets").mkdir()
    for name in ("sock", "sockets/drive"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path / name))
        s.close()
    return path


def sizes(path: Path) -> tuple[int, int]:
    """Apparent and allocated bytes of the regular files under ``path``."""
    apparent = allocated = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_mode & 0o170000) == 0o100000:
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return apparent, allocated


def live_check(env_dir: Path) -> str:
    """Check the live writer's invariant in a copy of its environment."""
    import lmdb

    try:
        env = lmdb.open(str(env_dir), readonly=True, lock=False, max_dbs=4)
    except lmdb.Error as err:
        return f"BROKEN ({type(err).__name__})"
    try:
        counters = []
        for name in (b"a", b"b"):
            db = env.open_db(name, create=False)
            with env.begin(db=db) as txn:
                counter = int(txn.get(b"counter"))
                keys = [k for k, _ in txn.cursor() if k != b"counter"]
                want = [b"%08d" % i for i in range(max(1, counter - 39), counter + 1)]
                if keys != want:
                    return "TORN (key set)"
                for k in keys:
                    if txn.get(k) != hashlib.sha256(k).digest() * (100 + int(k) % 200):
                        return "TORN (value)"
                counters.append(counter)
        return "consistent" if counters[0] == counters[1] else "TORN (counters)"
    except Exception as err:  # noqa: BLE001 - any failure to read means a torn copy
        return f"TORN ({type(err).__name__})"
    finally:
        env.close()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"demo: {' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "demo",
                        help="where to build the demo (default: ./demo)")
    args = parser.parse_args()
    base = args.dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    svc = base / "cortex00"
    print(f"demo: generating {svc} ...", flush=True)
    t0 = time.monotonic()
    make_service(svc)
    src_apparent, src_allocated = sizes(svc)
    print(f"demo: generated in {time.monotonic() - t0:.1f} s: apparent {human(src_apparent)}, "
          f"allocated {human(src_allocated)}", flush=True)
    for old in ("backup", "cp-a"):
        shutil.rmtree(base / old, ignore_errors=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(svc / "live.lmdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        synfast = [sys.executable, "-m", "synfast"]
        t_backup = timed([*synfast, "backup", "-q", str(svc), str(base / "backup")])
        t_verify = timed([*synfast, "verify", "-q", str(base / "backup")])
        t_cp = timed(["cp", "-a", str(svc), str(base / "cp-a")])
    finally:
        writer.kill()
        writer.wait()
    b_app, b_alloc = sizes(base / "backup")
    c_app, c_alloc = sizes(base / "cp-a")
    rows = [
        ["source (live)", "-", human(src_apparent), human(src_allocated), "-", "-"],
        ["synfast backup", f"{t_backup:.2f} s", human(b_app), human(b_alloc),
         "yes: LMDB read snapshots, lock.mdb, tmp/ and sockets left out",
         live_check(base / "backup" / "live.lmdb")],
        ["synfast verify", f"{t_verify:.2f} s", "-", "-", "read-only", "-"],
        ["cp -a", f"{t_cp:.2f} s", human(c_app), human(c_alloc),
         "no: copies data.mdb bytes while the writer changes them",
         live_check(base / "cp-a" / "live.lmdb")],
    ]
    headers = ["what", "wall", "apparent", "allocated", "safe on a live service",
               "live env in the result"]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    print()
    for r in [headers, *rows]:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    print("\n(cp -a may come out consistent by luck on a given run; a torn copy is "
          "what it risks every time. synfast also checksums and verifies every file.)")


if __name__ == "__main__":
    main()
