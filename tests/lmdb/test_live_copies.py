"""Copies of an environment that another process is writing to are consistent
snapshots.

The writer keeps an invariant that a torn copy breaks: every transaction ``i``
sets ``counter = i`` in two databases, adds key ``i`` with a value larger than a
page (overflow pages, so freed pages are reused all the time) to both, and
deletes key ``i - WINDOW``.  A consistent snapshot therefore holds, in each
database, exactly the keys ``counter - WINDOW + 1 .. counter``, each value
matching its key, and both counters equal.  A copy that mixed pages of two
transactions would show a wrong key set, a stale counter, a value of another
key, or fail to open at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synfast.copy import tree
from synfast.lmdb import env as lmdbenv
from synfast.lmdb import meta as lmdbmeta
from tests.live_writer import check_snapshot


@pytest.mark.parametrize("engine", ["compact", "raw"])
def test_copies_under_continuous_commits_are_consistent(tmp_path: Path, live_env, engine) -> None:
    path, writer = live_env
    counters = []
    for n in range(12):
        out = tmp_path / f"copy-{engine}-{n}"
        out.mkdir()
        r = lmdbenv.copy_environment(lmdbmeta.locate(path), out / "data.mdb", engine=engine)
        assert writer.poll() is None
        counter = check_snapshot(out)
        if engine == "raw":
            # the raw copy's meta page names the snapshot's transaction exactly
            assert r.txnid_exact
        assert r.txnid_min <= r.txnid_max
        counters.append(counter)
    # The writer really was writing while we copied.
    assert len(set(counters)) > 1, counters


@pytest.mark.parametrize("engine", ["auto", "rebuild", "compact", "raw"])
def test_tree_copy_of_a_live_service(tmp_path: Path, live_env, engine: str) -> None:
    path, writer = live_env
    (path.parent / "cell.yaml").write_text("name: test\n")
    dst = tmp_path.parent / (tmp_path.name + "-copy")
    report = tree.copy(path.parent, dst, lmdb_engine=engine)
    assert writer.poll() is None
    assert len(report.environments) == 1
    if engine == "rebuild":
        assert report.environments[0].engine == "rebuild"
        assert report.environments[0].txnid_exact
    assert not (dst / "live.lmdb" / "lock.mdb").exists()
    check_snapshot(dst / "live.lmdb")
    assert (dst / "cell.yaml").read_text() == "name: test\n"
