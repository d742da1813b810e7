"""`make demo`: generate a small service directory and copy it with synfast.

The directory looks like a Synapse Cortex: several LMDB environments opened
with ``writemap=True`` and maps of several GiB (so their data files are sparse),
a sparse non-LMDB file, small files, a tmp/ directory and a UNIX socket.  The
demo copies it with ``synfast copy`` and shows apparent and allocated sizes of
the source and the copy.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_service(path: Path, seed: int = 7) -> Path:
    """Build the demo service directory at ``path`` (replacing an old one)."""
    import lmdb

    if path.exists():
        shutil.rmtree(path)
    rng = random.Random(seed)
    envs = {
        "slabs/cell.lmdb": (4 << 30, 2_000, (100, 400)),
        "slabs/nexuslog/seqn0000000000000000.lmdb": (2 << 30, 5_000, (60, 300)),
        "layers/7b0a8c2f/layer_v2.lmdb": (8 << 30, 20_000, (100, 5_000)),
        "axon/blob.lmdb": (2 << 30, 300, (20_000, 60_000)),
    }
    for rel, (map_size, count, (lo, hi)) in envs.items():
        env_path = path / rel
        env_path.mkdir(parents=True)
        env = lmdb.open(str(env_path), map_size=map_size, writemap=True, max_dbs=8)
        dbs = [env.open_db(name) for name in (b"byprop", b"bybuid", b"meta")]
        with env.begin(write=True) as txn:
            for i in range(count):
                db = dbs[i % len(dbs)]
                txn.put(rng.randbytes(16), rng.randbytes(rng.randint(lo, hi)), db=db)
        env.close()
    sparse = path / "axon" / "spool.bin"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)
        for _ in range(40):
            f.seek(rng.randrange(0, (3 << 30) - (1 << 20)))
            f.write(rng.randbytes(64 << 10))
    (path / "cell.yaml").write_text("aha:name: cortex00\ndmon:listen: tcp://0.0.0.0:27492\n")
    (path / "cell.guid").write_text(rng.randbytes(16).hex() + "\n")
    (path / "tmp").mkdir()
    (path / "tmp" / "scratch").write_bytes(rng.randbytes(4096))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path / "sock"))
    sock.close()
    return path


def usage(path: Path) -> tuple[int, int]:
    """Apparent and allocated bytes of every regular file under ``path``."""
    apparent = allocated = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)) and st.st_nlink >= 1:
                if (st.st_mode & 0o170000) == 0o100000:
                    apparent += st.st_size
                    allocated += st.st_blocks * 512
    return apparent, allocated


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "demo",
                        help="where to build the demo (default: ./demo)")
    args = parser.parse_args()
    base: Path = args.dir
    base.mkdir(exist_ok=True)
    src = base / "cortex00"
    dst = base / "cortex00-copy"
    print(f"building a demo service directory at {src} ...")
    make_service(src)
    if dst.exists():
        shutil.rmtree(dst)
    cmd = [sys.executable, "-m", "synfast", "copy", str(src), str(dst)]
    print("$ synfast copy", src, dst)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - t0
    print()
    print(f"{'':14}{'apparent':>12}{'allocated':>12}")
    for label, p in (("source", src), ("synfast copy", dst)):
        a, b = usage(p)
        print(f"{label:14}{human(a):>12}{human(b):>12}")
    print(f"\nsynfast copy took {wall:.2f} s (whole process); lock files and the socket were "
          "left out, every LMDB environment was copied as a consistent snapshot.")
    print(f"Inspect it: {sys.executable} -m synfast scan {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
