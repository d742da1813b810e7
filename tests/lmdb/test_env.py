"""LMDB environment copies and info through the system's liblmdb, checked with
py-lmdb fixtures and lmdb-utils' mdb_dump."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from synfast.copy import walk
from synfast.errors import CorruptEnvironment, NotAnEnvironment
from synfast.lmdb import _lmdb
from synfast.lmdb import env as lmdbenv
from synfast.lmdb import meta as lmdbmeta
from tests.conftest import make_env, mdb_dump


def rich_env(path: Path, subdir: bool = True) -> Path:
    """Several named databases, a DUPSORT one, values larger than a page, plain
    keys in the main database, and deletes that leave free pages behind."""
    big = {f"big{i:03}".encode(): os.urandom(9000 + i) for i in range(40)}
    small = {f"k{i:05}".encode(): f"v{i}".encode() * 3 for i in range(3000)}
    dups = {f"d{i:03}".encode(): [f"x{j:03}".encode() for j in range(i % 7 + 1)]
            for i in range(200)}
    make_env(path, {None: {b"plain-key": b"plain-value"}, b"big": big, b"small": small,
                    b"dups": dups}, dupsort=(b"dups",), subdir=subdir)
    import lmdb

    env = lmdb.open(str(path), max_dbs=8, subdir=subdir, map_size=1 << 30, writemap=True)
    db = env.open_db(b"small")
    with env.begin(write=True, db=db) as txn:
        for i in range(0, 3000, 3):
            txn.delete(f"k{i:05}".encode())
    env.close()
    return path


@pytest.mark.parametrize("engine", ["compact", "raw"])
def test_directory_environment_copy_holds_the_same_data(tmp_path: Path, engine: str) -> None:
    src = rich_env(tmp_path / "src.lmdb")
    out = tmp_path / "out"
    out.mkdir()
    r = lmdbenv.copy_environment(lmdbmeta.locate(src), out / "data.mdb", engine=engine)
    assert os.listdir(out) == ["data.mdb"]  # no lock file is copied or made
    assert mdb_dump(src) == mdb_dump(out)
    assert r.page_size == os.sysconf("SC_PAGE_SIZE")
    assert r.bytes_written == os.path.getsize(out / "data.mdb")
    info = lmdbmeta.read_meta(src / "data.mdb")
    assert r.txnid == info.txnid and r.txnid_exact
    if engine == "compact":
        assert r.bytes_written < os.path.getsize(src / "data.mdb")


def test_single_file_environment_copy(tmp_path: Path) -> None:
    src = rich_env(tmp_path / "store.mdb", subdir=False)
    loc = lmdbmeta.locate(src)
    assert loc is not None and not loc.subdir
    lmdbenv.copy_environment(loc, tmp_path / "copy.mdb")
    assert mdb_dump(src, subdir=False) == mdb_dump(tmp_path / "copy.mdb", subdir=False)


def test_environments_are_found_by_content_not_name(tmp_path: Path) -> None:
    make_env(tmp_path / "store", {None: {b"a": b"b"}})
    (tmp_path / "notes.lmdb.txt").write_bytes(b"\0" * 8192)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "data.mdb.bak").write_bytes(b"x" * 8192)
    assert lmdbmeta.locate(tmp_path / "store") == lmdbmeta.EnvLocation(tmp_path / "store", True)
    assert lmdbmeta.locate(tmp_path / "store" / "data.mdb").subdir  # part of the dir env
    assert lmdbmeta.locate(tmp_path / "notes.lmdb.txt") is None
    assert lmdbmeta.locate(tmp_path / "fake") is None
    kinds = {e.rel: e.kind for e in walk.plan(tmp_path).entries}
    assert kinds["store/data.mdb"] == "env"
    assert "store/lock.mdb" not in kinds
    assert kinds["notes.lmdb.txt"] == "file"


def test_garbage_data_mdb_is_reported_as_corrupt(tmp_path: Path) -> None:
    d = tmp_path / "cell.lmdb"
    d.mkdir()
    (d / "data.mdb").write_bytes(os.urandom(16384))
    with pytest.raises(CorruptEnvironment, match="data.mdb"):
        walk.plan(tmp_path)


def test_lmdb_named_directory_without_environment(tmp_path: Path) -> None:
    (tmp_path / "cell.lmdb").mkdir()
    with pytest.raises(NotAnEnvironment, match="cell.lmdb"):
        walk.plan(tmp_path)


def test_truncated_data_mdb_is_an_error_not_a_crash(tmp_path: Path) -> None:
    src = rich_env(tmp_path / "t.lmdb")
    meta = lmdbmeta.read_meta(src / "data.mdb")
    os.truncate(src / "data.mdb", meta.used_size // 2)
    out = tmp_path / "copy.mdb"
    with pytest.raises(CorruptEnvironment, match="truncated"):
        lmdbenv.copy_environment(lmdbmeta.locate(src), out)
    assert not out.exists()


def test_lmdb_errors_carry_path_and_lmdb_message(tmp_path: Path) -> None:
    f = tmp_path / "notlmdb"
    f.write_bytes(os.urandom(8192))
    with pytest.raises(_lmdb.LmdbError) as info:
        _lmdb.env_info(str(f), False)
    assert info.value.path == str(f)
    assert "MDB_INVALID" in info.value.message
    assert str(f) in str(info.value)


def test_info_reports_map_pages_and_live_readers(tmp_path: Path) -> None:
    env = make_env(tmp_path / "e.lmdb", {b"db": {b"k": b"v" * 100}}, map_size=3 << 30)
    # Another process holds a read transaction open.
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import lmdb, sys
            env = lmdb.open({str(env)!r}, readonly=True, max_dbs=2)
            txn = env.begin()
            print("ready", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        info = lmdbenv.environment_info(env)
        assert info.map_size == 3 << 30
        assert info.page_size == os.sysconf("SC_PAGE_SIZE")
        assert info.last_pgno == lmdbmeta.read_meta(env / "data.mdb").last_pgno
        assert [r["pid"] for r in info.readers] == [reader.pid]
        assert info.readers[0]["txnid"] == info.last_txnid
        assert info.open_by_pid == reader.pid
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
    after = lmdbenv.environment_info(env)
    assert after.readers == [] and after.open_by_pid == 0


def test_databases_lists_named_and_plain(tmp_path: Path) -> None:
    env = rich_env(tmp_path / "e.lmdb")
    dbs = lmdbenv.databases(env)
    assert set(dbs["named"]) == {"big", "small", "dups"}
    assert dbs["named"]["small"]["entries"] == 2000
    assert dbs["named"]["dups"]["flags"] == ["dupsort"]
    assert dbs["main_plain_keys"] == 1


def test_copy_matches_mdb_copy(tmp_path: Path) -> None:
    """Our compact copy and LMDB's own tool hold the same data."""
    src = rich_env(tmp_path / "src.lmdb")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    subprocess.run(["mdb_copy", "-c", str(src), str(theirs)], check=True)
    ours = tmp_path / "ours"
    ours.mkdir()
    lmdbenv.copy_environment(lmdbmeta.locate(src), ours / "data.mdb")
    assert mdb_dump(ours) == mdb_dump(theirs)
    shutil.rmtree(theirs)
