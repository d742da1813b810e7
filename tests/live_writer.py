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

import textwrap
from pathlib import Path

import lmdb

WINDOW = 40


WRITER = textwrap.dedent("""
    import hashlib, lmdb, sys
    path, window = sys.argv[1], int(sys.argv[2])
    env = lmdb.open(path, map_size=1 << 30, writemap=True, max_dbs=4)
    a, b = env.open_db(b"a"), env.open_db(b"b")
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        key = b"%08d" % i
        value = hashlib.sha256(key).digest() * (200 + i % 300)
        with env.begin(write=True) as txn:
            for db in (a, b):
                txn.put(b"counter", key, db=db)
                txn.put(key, value, db=db)
                if i > window:
                    txn.delete(b"%08d" % (i - window), db=db)
""")


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


#: The same transactions as WRITER, committed to several environments in turn:
#: transaction ``i`` in the first, then in the second, and so on.  Arguments:
#: the window, then the environments' paths.
TWO_ENV_WRITER = textwrap.dedent("""
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
