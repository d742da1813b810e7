"""Named databases opened one at a time, and what the rebuild leaves to a caller.

A snapshot, and the walks of ``synfast.lmdb.env``, give LMDB a single slot for
named database handles and open every named database in turn (the slot is
freed with ``mdb_dbi_close`` before the next).  They used to reserve 32,767
slots, which cost every environment opened 3.3 MB of address space, and an
environment with more named databases than that could not be copied at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from synfast.lmdb import env as lmdbenv
from synfast.lmdb import meta, snapshot

MAP_SIZE = 1 << 28


def make_many(path: Path, count: int, every: int) -> int:
    """An environment of ``count`` named databases, one key in every
    ``every``-th; returns how many entries it holds.  Made in rounds of 1,000
    (LMDB looks a name up among the open handles, so one round of all of them
    would take time in the square of ``count``)."""
    path.mkdir()
    entries = 0
    for start in range(0, count, 1000):
        env = lmdb.open(os.fspath(path), max_dbs=1000, map_size=MAP_SIZE)
        with env.begin(write=True) as txn:
            for i in range(start, min(count, start + 1000)):
                db = env.open_db(b"db%05d" % i, txn=txn)
                if i % every == 0:
                    txn.put(b"k", b"v%d" % i, db=db)
                    entries += 1
            txn.put(b"plain", b"\0" * 48)     # a plain key as long as a database record
        env.close()
    os.unlink(path / "lock.mdb")
    return entries + 1


def test_more_named_databases_than_the_slots_once_reserved(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    count = 32_800
    entries = make_many(src, count, 997)
    with snapshot.open_snapshot(src) as snap:
        assert snap.maxdbs == 1
        stats = snap.stats()
        assert len(stats["named"]) == count
        assert sum(d["entries"] for d in stats["named"].values()) == entries - 1
        plan = snap.page_plan()
        assert plan["used_pages"] + plan["free_pages"] + 2 == plan["last_pgno"] + 1
    report = snapshot.rebuild_environment(src, dst)
    assert report["named_databases"] == count
    assert report["entries"] == entries
    walked = lmdbenv.walk(dst, True, nolock=True, full=True)
    assert len(walked["named"]) == count
    assert walked["named"]["db31904"]["entries"] == 1           # 31904 = 997 * 32
    assert sum(d["entries"] for d in walked["named"].values()) == entries - 1
    listed = lmdbenv.databases(dst)
    assert len(listed["named"]) == count and listed["main_plain_keys"] == 1
    env = lmdb.open(os.fspath(dst), max_dbs=4, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"k", db=env.open_db(b"db31904", txn=txn, create=False)) == b"v31904"
        assert txn.get(b"plain") == b"\0" * 48
    env.close()


def test_rebuild_data_file_can_leave_the_fsync_to_its_caller(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_many(src, 3, 1)
    loc = meta.locate(src)
    assert loc is not None
    reports = {}
    for sync in (True, False):
        out = tmp_path / f"out-{sync}"
        # A location found by a walk is opened as found, without checking it again.
        snap = snapshot.open_snapshot(loc)
        reports[sync] = snapshot.rebuild_data_file(snap, out, out, loc.data_path, sync=sync)
        assert snap.closed
        copied = meta.read_meta(out)
        assert copied is not None and reports[sync]["last_pgno"] == copied.last_pgno
        walked = lmdbenv.walk(out, False, nolock=True)
        assert sorted(walked["named"]) == ["db00000", "db00001", "db00002"]
    assert reports[True]["sync_seconds"] > 0
    assert reports[False]["sync_seconds"] == 0
