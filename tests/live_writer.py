"""A writer process that keeps an invariant a torn copy breaks, and its check.

Every transaction ``i`` sets ``counter = i`` in two databases, adds key ``i``
with a value larger than a page (overflow pages, so freed pages are reused all
the time) to both, and deletes key ``i - WINDOW``.  A consistent snapshot
therefore holds, in each database, exactly the keys ``counter - WINDOW + 1 ..
counter``, each value matching its key, and both counters equal.  A copy that
mixed pages of two transactions would show a wrong key set, a stale counter, a
value of another key, or fail to open at all.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb

from synfast.lmdb.meta import read_meta

WINDOW = 40


#: The writer, for one environment or several.  Arguments: the window, then the
#: environments' paths.  Transaction ``i`` is committed in the first, then in
#: the second, and so on.
WRITER = textwrap.dedent("""
    import hashlib, lmdb, sys
    window, paths = int(sys.argv[1]), sys.argv[2:]
    envs = [lmdb.open(p, map_size=1 << 30, writemap=True, max_dbs=4) for p in paths]
    dbs = [(env.open_db(b"a"), env.open_db(b"b")) for env in envs]
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        key = b"%08d" % i
        value = hashlib.sha256(key).digest() * (200 + i % 300)
        for env, pair in zip(envs, dbs):
            with env.begin(write=True) as txn:
                for db in pair:
                    txn.put(b"counter", key, db=db)
                    txn.put(key, value, db=db)
                    if i > window:
                        txn.delete(b"%08d" % (i - window), db=db)
""")


def start_writer(*paths: Path) -> subprocess.Popen:
    """Start WRITER on ``paths`` and return once it has opened them."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(WINDOW), *map(str, paths)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def wait_for_txnid(path: Path, txnid: int, *writers: subprocess.Popen,
                   seconds: float = 60) -> None:
    """Until the environment's newest meta page says ``txnid`` (no timing is
    asserted: the deadline only keeps a dead writer from hanging the test)."""
    deadline = time.monotonic() + seconds
    while True:
        meta = read_meta(path / "data.mdb") if (path / "data.mdb").exists() else None
        if meta is not None and meta.txnid >= txnid:
            return
        assert all(w.poll() is None for w in writers), "writer died"
        assert time.monotonic() < deadline, "writer made no progress"
        time.sleep(0.002)


def check_snapshot(path: Path) -> int:
    """Open the copy with py-lmdb and check the writer's invariant; return the counter."""
    import hashlib

    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=4)
    try:
        counters = []
        for name in (b"a", b"b"):
            db = env.open_db(name, create=False)
            with env.begin(db=db) as txn:
                counter = int(txn.get(b"counter"))
                keys = [k for k, _ in txn.cursor() if k != b"counter"]
                expect = [b"%08d" % i for i in range(max(1, counter - WINDOW + 1), counter + 1)]
                assert keys == expect, (name, counter, keys[:3], len(keys))
                for k in keys:
                    v = txn.get(k)
                    assert v == hashlib.sha256(k).digest() * (200 + int(k) % 300), k
                counters.append(counter)
        assert counters[0] == counters[1]
        return counters[0]
    finally:
        env.close()
