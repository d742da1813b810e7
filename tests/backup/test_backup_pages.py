"""Backups made with the ``pages`` engine: a restored service takes writes, and
``auto`` picks ``pages`` where the backup can share blocks with the service.

(The basic backup -> verify -> restore round trip with every engine, pages
included, is test_backup_command.py's.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import lmdb

from synfast.backup import manifest
from tests.backup.service import ENVS, backup_ok, service
from tests.conftest import fiemap, mdb_dump, run_cli


def map_size(path: Path, subdir: bool = True) -> int:
    args = ["mdb_stat", "-e"] + ([] if subdir else ["-n"]) + [os.fspath(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return int(re.search(r"Map size: (\d+)", out).group(1))


#: The named databases of each environment of the service (tests/backup/service.py).
NAMES = {"slabs/cell.lmdb": [b"meta", b"nodes", b"tags"],
         "layers/abc123/layer_v2.lmdb": [b"big"], "store.mdb": []}


def write_to(path: Path, subdir: bool, size: int, names: list[bytes],
             tag: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Open ``path`` with writemap at the map size its owner uses, delete the
    first entry of every named database, add a named database with values of
    a few bytes and of several pages, and close it.  Returns what was deleted."""
    deleted = []
    env = lmdb.open(os.fspath(path), map_size=size, writemap=True, subdir=subdir, max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            for name in names:
                cur = txn.cursor(db=env.open_db(name, txn=txn, create=False))
                assert cur.first()
                deleted.append((name, *cur.item()))
                assert cur.delete()
            new = env.open_db(b"after-restore", txn=txn)
            for i in range(50):
                txn.put(b"%s-%03d" % (tag, i), tag * 3000, db=new)
            txn.put(b"small-" + tag, b"x", db=new)
    finally:
        env.close()
    return deleted


def test_restored_service_takes_writes_with_writemap(tmp_path: Path) -> None:
    svc = service(tmp_path)
    envs = [(rel, True) for rel in ENVS] + [("store.mdb", False)]
    sizes = {rel: map_size(svc / rel, subdir) for rel, subdir in envs}
    bk, restored = tmp_path / "bk", tmp_path / "restored"
    backup_ok(svc, bk, "--lmdb-engine", "pages", "-q")
    assert {e["engine"] for e in manifest.read(bk)["environments"]} == {"pages"}
    proc = run_cli("verify", bk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli("restore", bk, restored)
    assert proc.returncode == 0, proc.stderr
    for rel, subdir in envs:
        before = mdb_dump(restored / rel, subdir=subdir)
        assert before == mdb_dump(svc / rel, subdir=subdir)
        tag = rel.split("/")[-1].split(".")[0].encode()
        deleted = write_to(restored / rel, subdir, sizes[rel], NAMES[rel], tag)
        # reopened: the new database is there and the deleted entries are gone
        env = lmdb.open(os.fspath(restored / rel), map_size=sizes[rel], writemap=True,
                        subdir=subdir, max_dbs=8)
        try:
            assert env.info()["map_size"] == sizes[rel]
            with env.begin() as txn:
                new = env.open_db(b"after-restore", txn=txn, create=False)
                assert txn.stat(new)["entries"] == 51
                assert txn.get(b"%s-049" % tag, db=new) == tag * 3000
                for name, key, value in deleted:
                    db = env.open_db(name, txn=txn, create=False)
                    assert (key, value) not in set(txn.cursor(db=db)), (rel, name, key)
        finally:
            env.close()
        after = mdb_dump(restored / rel, subdir=subdir)
        assert "database=after-restore" in after and after != before
    # the backup itself was not touched by the writes to the restored copy
    assert run_cli("verify", bk).returncode == 0


def test_auto_backs_up_with_pages_where_blocks_can_be_shared(on_xfs: Path) -> None:
    svc = service(on_xfs)
    bk = on_xfs / "bk"
    backup_ok(svc, bk, "-q")                       # --lmdb-engine auto
    doc = manifest.read(bk)
    assert {e["path"] for e in doc["environments"]} == {*ENVS, "store.mdb"}
    assert {e["engine"] for e in doc["environments"]} == {"pages"}
    assert doc["snapshots"]["method"] == "begun together"
    proc = run_cli("verify", bk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rel in ENVS:
        assert mdb_dump(bk / rel) == mdb_dump(svc / rel)
        # every page but the two meta pages is the service's own block, shared
        for off, length, shared in fiemap(bk / rel / "data.mdb"):
            assert shared or off + length <= 2 * 4096, (rel, off, length)
