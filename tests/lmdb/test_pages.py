"""The ``pages`` engine against real LMDB environments, real processes and real
filesystems.

What a copy must be is checked with LMDB's own tools, never with the engine's
report: ``mdb_dump`` (the same data), ``mdb_stat`` (the same snapshot: pages
used, last transaction; the copy's own page accounting; the copy's free page
numbers, read from its free database by ``mdb_stat -fff``), and
SEEK_DATA/SEEK_HOLE and FIEMAP (which pages are data, holes or shared blocks).
Damaged environments are made by patching a closed environment's pages on disk.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from synfast.errors import CorruptEnvironment
from synfast.lmdb.pages import MERGE_PAGES_CLONE, copy_pages
from synfast.lmdb.snapshot import open_snapshot, open_snapshots
from tests.conftest import (
    allocated,
    assert_one_line_error,
    fiemap,
    lseek_extents,
    mdb_dump,
    run_cli,
)
from tests.live_writer import check_snapshot, start_writer, wait_for_txnid

PS = 4096                    # the page size of every environment made here
MAP_SIZE = 1 << 30


# ------------------------------------------------------------------ reading environments

def mdb_stat(path: Path, *flags: str, subdir: bool = True) -> str:
    args = ["mdb_stat", *flags] + ([] if subdir else ["-n"]) + [os.fspath(path)]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def env_info(path: Path, subdir: bool = True) -> dict[str, int]:
    """``mdb_stat -e``: map size, pages used (last page + 1), last transaction."""
    text = mdb_stat(path, "-e", subdir=subdir)

    def get(label: str) -> int:
        return int(re.search(rf"{label}: (\d+)", text).group(1))

    return {"map_size": get("Map size"), "pages_used": get("Number of pages used"),
            "txnid": get("Last transaction ID")}


def page_accounting(path: Path, subdir: bool = True) -> tuple[int, int, int]:
    """From ``mdb_stat -ef -a``: the pages of every tree (the free database, the
    main database and every named one: branch + leaf + overflow), the free
    pages, and the pages used."""
    text = mdb_stat(path, "-ef", "-a", subdir=subdir)
    sections = re.split(r"^(?=Freelist Status|Status of )", text, flags=re.M)
    trees = [s for s in sections if s.startswith(("Freelist Status", "Status of "))]
    assert trees[0].startswith("Freelist Status") and trees[1].startswith("Status of Main DB")
    in_trees = sum(int(n) for s in trees
                   for n in re.findall(r"(?:Branch|Leaf|Overflow) pages: (\d+)", s))
    free = int(re.search(r"Free pages: (\d+)", text).group(1))
    used = int(re.search(r"Number of pages used: (\d+)", text).group(1))
    return in_trees, free, used


def free_page_numbers(path: Path, subdir: bool = True) -> set[int]:
    """Every page number the environment's free database lists (``mdb_stat
    -fff`` prints them per record, runs as ``first[count]``)."""
    text = mdb_stat(path, "-fff", subdir=subdir)
    pages: set[int] = set()
    for first, span in re.findall(r"^\s+(\d+)(?:\[(\d+)\])?$", text, flags=re.M):
        run = range(int(first), int(first) + int(span or 1))
        assert pages.isdisjoint(run), "a page listed twice"
        pages.update(run)
    total = int(re.search(r"Free pages: (\d+)", text).group(1))
    assert len(pages) == total, (len(pages), total)
    return pages


def data_pages(path: Path) -> set[int]:
    """The pages of ``path`` that SEEK_DATA/SEEK_HOLE report as data."""
    pages: set[int] = set()
    for off, length in lseek_extents(path):
        assert off % PS == 0 and length % PS == 0, (off, length)
        pages.update(range(off // PS, (off + length) // PS))
    return pages


def data_file(path: Path, subdir: bool = True) -> Path:
    return path / "data.mdb" if subdir else path


def copy(src: Path, dst: Path, subdir: bool = True, **options) -> dict:
    """Copy the environment ``src`` into the new environment ``dst`` (same
    layout) with the API: one snapshot, copy_pages."""
    snap = open_snapshot(src)
    if subdir:
        dst.mkdir()
    out = data_file(dst, subdir)
    return copy_pages(snap, out, out, data_file(src, subdir), **options)


def assert_same_snapshot(src: Path, dst: Path, subdir: bool = True) -> None:
    assert mdb_dump(dst, subdir=subdir) == mdb_dump(src, subdir=subdir)
    a, b = env_info(src, subdir), env_info(dst, subdir)
    assert (b["pages_used"], b["txnid"]) == (a["pages_used"], a["txnid"])


def assert_holes_exactly_free(dst: Path, subdir: bool = True) -> set[int]:
    """Every page of the copy up to its last is data unless its free database
    lists it; free pages and everything past the last page are holes.
    Returns the free pages."""
    free = free_page_numbers(dst, subdir)
    last = env_info(dst, subdir)["pages_used"] - 1
    assert free and max(free) <= last and min(free) >= 2
    assert data_pages(data_file(dst, subdir)) == set(range(last + 1)) - free
    return free


# ------------------------------------------------------------------ making environments

def quiet_source(path: Path, *, writemap: bool = True, subdir: bool = True) -> Path:
    """Several named databases, plain keys in the main database, values of
    several pages (overflow), then deletes in later transactions that leave
    free pages (no reader, so the last transactions' frees stay free)."""
    rng = random.Random(7)
    env = lmdb.open(os.fspath(path), map_size=MAP_SIZE, writemap=writemap, subdir=subdir,
                    max_dbs=8)
    try:
        nodes, blobs, tags = (env.open_db(n) for n in (b"nodes", b"blobs", b"tags"))
        with env.begin(write=True) as txn:
            for i in range(1500):
                txn.put(b"n%05d" % i, rng.randbytes(rng.choice([40, 150, 600])), db=nodes)
            for i in range(300):
                txn.put(b"b%05d" % i, rng.randbytes(rng.choice([3000, 9000, 30000])), db=blobs)
            for i in range(200):
                txn.put(b"t%04d" % i, b"%d" % i, db=tags)
            for i in range(100):
                txn.put(b"plain%03d" % i, rng.randbytes(100))
        with env.begin(write=True) as txn:
            for i in range(0, 300, 3):
                txn.delete(b"b%05d" % i, db=blobs)
            for i in range(0, 1500, 2):
                txn.delete(b"n%05d" % i, db=nodes)
        with env.begin(write=True) as txn:
            for i in range(1, 300, 7):
                txn.delete(b"b%05d" % i, db=blobs)
            txn.put(b"b%05d" % 5, rng.randbytes(20000), db=blobs)
    finally:
        env.close()
    return path


# ------------------------------------------------------------------ quiet sources

def test_copy_is_the_snapshot_and_its_pages_add_up(tmp_path: Path) -> None:
    src = quiet_source(tmp_path / "src.lmdb")
    dst = tmp_path / "dst.lmdb"
    proc = run_cli("copy", "--json", "--lmdb-engine", "pages", src, dst)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["environment_copies"][0]
    assert report["engine"] == "pages" and report["txnid_exact"]
    assert sorted(os.listdir(dst)) == ["data.mdb"]          # no lock file
    assert_same_snapshot(src, dst)
    info = env_info(dst)
    assert report["txnid"] == info["txnid"] and report["last_pgno"] == info["pages_used"] - 1
    # LMDB's own accounting of the copy: every page up to the last is a meta
    # page, in a tree, or free (no DUPSORT database here: the sum is exact)
    in_trees, free, used = page_accounting(dst)
    assert free > 100
    assert in_trees + free + 2 == used
    assert_holes_exactly_free(dst)
    # and the copy still reads: every value, through LMDB
    env = lmdb.open(os.fspath(dst), readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            blobs = env.open_db(b"blobs", txn=txn, create=False)
            assert txn.stat(blobs)["entries"] == 300 - 100 - 29
            assert sum(len(v) for _, v in txn.cursor(db=blobs)) > 2 << 20
    finally:
        env.close()


def test_free_pages_and_the_tail_are_holes(tmp_path: Path) -> None:
    src = quiet_source(tmp_path / "src")
    report = copy(src, tmp_path / "dst", merge_pages=0)
    free = assert_holes_exactly_free(tmp_path / "dst")
    assert report["free_pages"] == len(free)
    assert report["holes"] > 0 and report["bytes_cloned"] == 0
    # the same pages are free in the source, which holds them all as data
    assert free_page_numbers(src) == free
    last = env_info(src)["pages_used"] - 1
    assert data_pages(src / "data.mdb") >= set(range(last + 1))
    assert os.path.getsize(tmp_path / "dst" / "data.mdb") == os.path.getsize(src / "data.mdb")
    # the copy allocates its pages in use (and a few blocks of the extent tree)
    in_use = (last + 1 - len(free)) * PS
    assert in_use <= allocated(tmp_path / "dst" / "data.mdb") <= in_use + (64 << 10)
    assert allocated(tmp_path / "dst" / "data.mdb") < allocated(src / "data.mdb") - (2 << 20)


def test_short_free_gaps_are_merged_into_their_runs(tmp_path: Path) -> None:
    src = quiet_source(tmp_path / "src")
    copy(src, tmp_path / "dst", merge_pages=4)
    free = free_page_numbers(tmp_path / "dst")
    last = env_info(tmp_path / "dst")["pages_used"] - 1
    expect_holes = holes_after_merge(free, last, 4)
    merged = free - expect_holes
    assert merged and expect_holes                     # the source has both kinds
    assert data_pages(tmp_path / "dst" / "data.mdb") == set(range(last + 1)) - expect_holes
    assert_same_snapshot(src, tmp_path / "dst")


def test_copy_takes_writes_with_writemap(tmp_path: Path) -> None:
    src = quiet_source(tmp_path / "src")
    dst = tmp_path / "dst"
    copy(src, dst)
    free = free_page_numbers(dst)
    map_size = env_info(src)["map_size"]
    before = mdb_dump(dst)
    env = lmdb.open(os.fspath(dst), map_size=map_size, writemap=True, max_dbs=8)
    try:
        assert env.info()["map_size"] == map_size
        blobs, nodes = env.open_db(b"blobs"), env.open_db(b"nodes")
        new = env.open_db(b"new")
        with env.begin(write=True) as txn:
            for i in range(60):
                txn.put(b"w%03d" % i, bytes([i]) * 9000, db=blobs)
                txn.put(b"n%03d" % i, b"fresh", db=new)
            assert txn.delete(b"n%05d" % 1, db=nodes)
            assert txn.delete(b"b%05d" % 2, db=blobs)
    finally:
        env.close()
    env = lmdb.open(os.fspath(dst), map_size=map_size, writemap=True, max_dbs=8)
    try:
        with env.begin() as txn:
            blobs = env.open_db(b"blobs", txn=txn, create=False)
            new = env.open_db(b"new", txn=txn, create=False)
            assert txn.get(b"w059", db=blobs) == bytes([59]) * 9000
            assert txn.stat(new)["entries"] == 60
    finally:
        env.close()
    after = mdb_dump(dst)
    assert after != before
    assert "database=new" in after and (b"w059".hex() in after)
    assert b"n00001".hex() not in after and b"n00001".hex() in before
    # LMDB reused free pages of the snapshot (holes in the copy) for the writes
    assert free & data_pages(dst / "data.mdb")
    in_trees, nfree, used = page_accounting(dst)
    assert in_trees + nfree + 2 == used


def test_source_written_without_writemap(tmp_path: Path) -> None:
    src = quiet_source(tmp_path / "src", writemap=False)
    report = copy(src, tmp_path / "dst")
    assert_same_snapshot(src, tmp_path / "dst")
    assert_holes_exactly_free(tmp_path / "dst")
    # the copy is as long as the source file, which ends at the last page
    assert report["size"] == os.path.getsize(src / "data.mdb") == (report["last_pgno"] + 1) * PS
    in_trees, free, used = page_accounting(tmp_path / "dst")
    assert in_trees + free + 2 == used


def test_single_file_environment(tmp_path: Path) -> None:
    src = quiet_source(tmp_path / "src.mdb", subdir=False)
    copy(src, tmp_path / "dst.mdb", subdir=False)
    assert_same_snapshot(src, tmp_path / "dst.mdb", subdir=False)
    assert_holes_exactly_free(tmp_path / "dst.mdb", subdir=False)
    # the command line keeps the layout and writes no lock file
    proc = run_cli("copy", "--lmdb-engine", "pages", src, tmp_path / "cli.mdb")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli.mdb").is_file() and not (tmp_path / "cli.mdb-lock").exists()
    assert_same_snapshot(src, tmp_path / "cli.mdb", subdir=False)


def test_dupsort_database_with_sub_databases(tmp_path: Path) -> None:
    src = tmp_path / "src"
    env = lmdb.open(os.fspath(src), map_size=MAP_SIZE, writemap=True, max_dbs=4)
    try:
        dups = env.open_db(b"dups", dupsort=True)
        plain = env.open_db(b"plain")
        with env.begin(write=True) as txn:
            for k in range(6):                  # thousands of duplicates: sub-databases
                for d in range(3000):
                    txn.put(b"key%d" % k, b"%08d-%d" % (d, k), db=dups)
            for k in range(200):                # a few duplicates: inline sub-pages
                for d in range(3):
                    txn.put(b"few%04d" % k, b"%d" % d, db=dups)
            for i in range(100):
                txn.put(b"p%03d" % i, os.urandom(5000), db=plain)
        with env.begin(write=True) as txn:      # free pages, inside sub-databases too
            cur = txn.cursor(db=dups)
            for k in range(0, 6, 2):
                assert cur.set_key(b"key%d" % k)
                for _ in range(2000):
                    cur.delete()
            for i in range(0, 100, 2):
                txn.delete(b"p%03d" % i, db=plain)
    finally:
        env.close()
    report = copy(src, tmp_path / "dst")
    assert report["dupsort"]
    assert_same_snapshot(src, tmp_path / "dst")
    free = assert_holes_exactly_free(tmp_path / "dst")
    assert len(free) == report["free_pages"]
    # with sub-databases the trees' statistics are only a bound
    in_trees, nfree, used = page_accounting(tmp_path / "dst")
    assert in_trees + nfree + 2 <= used


def _mdb_load_main_dupsort(path: Path) -> None:
    path.mkdir()
    items = [(b"k%d" % (i % 3), b"%06d" % i) for i in range(6000)]
    text = "\n".join(["VERSION=3", "format=bytevalue", "type=btree", "dupsort=1",
                      "HEADER=END", *(f" {x.hex()}" for kv in items for x in kv),
                      "DATA=END", ""])
    subprocess.run(["mdb_load", os.fspath(path)], input=text, text=True, check=True)


def test_main_database_with_dupsort_sub_databases(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _mdb_load_main_dupsort(src)
    main = subprocess.run(["mdb_dump", os.fspath(src)], capture_output=True, text=True,
                          check=True).stdout
    assert "dupsort=1" in main
    report = copy(src, tmp_path / "dst")
    assert report["dupsort"]
    assert subprocess.run(["mdb_dump", os.fspath(tmp_path / "dst")], capture_output=True,
                          text=True, check=True).stdout == main


# ------------------------------------------------------------------ damaged environments

def _newer_meta(fd: int) -> int:
    """The slot (0 or 1) of the meta page with the larger txnid."""
    t0, t1 = (struct.unpack("<Q", os.pread(fd, 8, slot * PS + 144))[0] for slot in (0, 1))
    return 0 if t0 > t1 else 1


def free_db_values(data: Path) -> tuple[list[tuple[int, int]], int]:
    """Where the page lists of the free database's records are in ``data``:
    (file offset, size) of each value, and the meta page's last page.

    The newer meta page (MDB_meta after the 16-byte page header: its free
    database record at +24, md_depth at +6, md_root at +40; mm_last_pg at +120)
    names the free database's root, a leaf page here; the leaf's node offsets
    follow its 16-byte header (mp_lower at +12), and each node is data size
    (lo, hi), flags, key size, the key (a txnid), then the value inline."""
    fd = os.open(data, os.O_RDONLY)
    try:
        meta = os.pread(fd, 152, _newer_meta(fd) * PS)
        depth, = struct.unpack_from("<H", meta, 16 + 24 + 6)
        root, = struct.unpack_from("<Q", meta, 16 + 24 + 40)
        last, = struct.unpack_from("<Q", meta, 16 + 120)
        assert depth == 1, "the free database should be one leaf page"
        page = os.pread(fd, PS, root * PS)
        flags, lower = struct.unpack_from("<HH", page, 10)
        assert flags & 0x02, "not a leaf page"
        values = []
        for k in range((lower - 16) // 2):
            ptr, = struct.unpack_from("<H", page, 16 + 2 * k)
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, ptr)
            assert nflags == 0, "a page list in overflow pages"
            values.append((root * PS + ptr + 8 + ksize, lo | hi << 16))
        return values, last
    finally:
        os.close(fd)


def small_free_db_env(path: Path) -> Path:
    """An environment whose free database is one leaf with several short page lists."""
    env = lmdb.open(os.fspath(path), map_size=1 << 28, writemap=True, max_dbs=4)
    try:
        db = env.open_db(b"d")
        with env.begin(write=True) as txn:
            for i in range(2000):
                txn.put(b"k%05d" % i, b"v" * 300, db=db)
        for j in range(4):
            with env.begin(write=True) as txn:
                for i in range(j, 2000, 9):
                    txn.delete(b"k%05d" % i, db=db)
    finally:
        env.close()
    return path


def assert_refused_and_nothing_left(tmp_path: Path, src: Path, *needles: str) -> None:
    before = sorted(os.listdir(tmp_path))
    proc = run_cli("copy", "--lmdb-engine", "pages", src, tmp_path / "dst")
    assert_one_line_error(proc, str(src), "rebuild", *needles, code=1)
    assert sorted(os.listdir(tmp_path)) == before      # no destination, no temporary
    # the hint holds: the rebuild reads only the trees and copies the data
    proc = run_cli("copy", "--lmdb-engine", "rebuild", src, tmp_path / "rebuilt")
    assert proc.returncode == 0, proc.stderr
    assert mdb_dump(tmp_path / "rebuilt") == mdb_dump(src)


@pytest.mark.parametrize("damage", ["past the last page", "listed twice", "wrong count"])
def test_damaged_free_database_is_refused(tmp_path: Path, damage: str) -> None:
    src = small_free_db_env(tmp_path / "src")
    values, last = free_db_values(src / "data.mdb")
    assert len(values) >= 2 and all(size > 16 for _, size in values)
    (first, _), (second, _) = values[0], values[1]
    with open(src / "data.mdb", "r+b") as f:
        if damage == "past the last page":
            f.seek(first + 8)
            f.write(struct.pack("<Q", last + 5))
        elif damage == "listed twice":
            f.seek(first + 8)
            page = f.read(8)
            f.seek(second + 8)
            f.write(page)
        else:
            f.seek(first)
            count, = struct.unpack("<Q", f.read(8))
            f.seek(first)
            f.write(struct.pack("<Q", count + 1))
    assert_refused_and_nothing_left(tmp_path, src, "free database", "damaged")
    with pytest.raises(CorruptEnvironment, match="free database of txn .* is damaged"):
        copy(src, tmp_path / "api")
    assert not (tmp_path / "api" / "data.mdb").exists()


def test_free_database_listing_a_page_in_use_is_refused(tmp_path: Path) -> None:
    src = small_free_db_env(tmp_path / "src")
    values, last = free_db_values(src / "data.mdb")
    free = free_page_numbers(src)
    with open(src / "data.mdb", "r+b") as f:
        meta = os.pread(f.fileno(), 152, _newer_meta(f.fileno()) * PS)
        roots = {struct.unpack_from("<Q", meta, 16 + 24 + 40 + d * 48)[0] for d in (0, 1)}
        # a leaf of database d (its root is a branch page): in use, not free
        leaf = next(pg for pg in range(2, last + 1) if pg not in free | roots
                    and struct.unpack_from("<QHH", os.pread(f.fileno(), 12, pg * PS))
                    [::2] == (pg, 0x02))
        os.pwrite(f.fileno(), struct.pack("<Q", leaf), values[0][0] + 8)
    assert mdb_dump(src)                              # the source still reads
    assert_refused_and_nothing_left(tmp_path, src, "free database")


def test_meta_page_whose_page_counts_do_not_match_the_tree_is_refused(tmp_path: Path) -> None:
    src = small_free_db_env(tmp_path / "src")
    with open(src / "data.mdb", "r+b") as f:
        slot = _newer_meta(f.fileno())
        at = slot * PS + 16 + 24 + 48 + 16             # main database's md_leaf_pages
        leaves, = struct.unpack("<Q", os.pread(f.fileno(), 8, at))
        os.pwrite(f.fileno(), struct.pack("<Q", leaves + 3), at)
    assert_refused_and_nothing_left(tmp_path, src, "does not match its statistics")


HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], map_size=1 << 28, max_dbs=4)
print("ready", flush=True)
sys.stdin.read()
"""


def test_meta_page_that_is_not_the_snapshots_is_refused(tmp_path: Path) -> None:
    """An environment open in another process keeps its last transaction in the
    lock file; LMDB's readers take the txnid from there.  The meta page of
    that txnid, patched on disk to claim a later txnid, never matches the
    snapshot: the engine must refuse it, not copy a meta page of another
    transaction."""
    src = small_free_db_env(tmp_path / "src")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, os.fspath(src)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with open(src / "data.mdb", "r+b") as f:
            at = _newer_meta(f.fileno()) * PS + 144
            txnid, = struct.unpack("<Q", os.pread(f.fileno(), 8, at))
            os.pwrite(f.fileno(), struct.pack("<Q", txnid + 2), at)
        before = sorted(os.listdir(tmp_path))
        proc = run_cli("copy", "--lmdb-engine", "pages", src, tmp_path / "dst")
        assert_one_line_error(proc, str(src), "rebuild", "meta page", code=1)
        assert sorted(os.listdir(tmp_path)) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# ------------------------------------------------------------------ a live writer

def pages_in_use(path: Path) -> set[int]:
    """The pages a live environment uses now (mdb_stat's own read transaction)."""
    free = free_page_numbers(path)
    return set(range(2, env_info(path)["pages_used"])) - free


def test_copies_under_continuous_commits_are_each_one_snapshot(tmp_path: Path,
                                                               live_env) -> None:
    path, writer = live_env
    counters, reused = [], 0
    for n in range(24):
        snap = open_snapshot(path)
        held = n % 2 == 1
        if held:
            # the writer commits on while the snapshot is held, reusing the
            # pages freed just before it (holes in this copy)
            wait_for_txnid(path, snap.txnid + 8, writer)
            in_use_now = pages_in_use(path)
        out = tmp_path / f"copy{n}"
        out.mkdir()
        report = copy_pages(snap, out / "data.mdb", out / "data.mdb", path / "data.mdb")
        assert writer.poll() is None
        counter = check_snapshot(out)
        # the writer's transaction i sets counter i; two transactions made its databases
        assert report["txnid"] == counter + 2 == env_info(out)["txnid"]
        in_trees, free, used = page_accounting(out)
        assert in_trees + free + 2 == used
        free_at_snapshot = assert_holes_exactly_free(out)
        if held:
            reused += bool(free_at_snapshot & in_use_now)
        counters.append(counter)
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    # the scenario happened: pages free at the snapshot were in use again
    # before the copy read the source
    assert reused >= 6, reused


def test_two_environments_copied_together_under_one_writer(tmp_path: Path) -> None:
    paths = [tmp_path / "a.lmdb", tmp_path / "b.lmdb"]
    writer = start_writer(*paths)
    try:
        for p in paths:
            wait_for_txnid(p, 200, writer)
        for n in range(6):
            snaps = open_snapshots(paths)
            counters = []
            for p, snap in zip(paths, snaps, strict=True):
                out = tmp_path / f"copy{n}-{p.name}"
                out.mkdir()
                report = copy_pages(snap, out / "data.mdb", out / "data.mdb", p / "data.mdb")
                counters.append(check_snapshot(out))
                assert report["txnid"] == counters[-1] + 2
            assert writer.poll() is None
            # the writer commits round i to a, then to b; b's snapshot was begun
            # after a's, so it holds at least every round but the last a held
            assert counters[1] >= counters[0] - 1, counters
    finally:
        writer.kill()
        writer.wait(timeout=30)


# ------------------------------------------------------------------ XFS with reflinks

def big_source(path: Path) -> Path:
    """About 50 MB of data: values of 8 pages and small keys, then every fourth
    value deleted (free pages)."""
    blob = os.urandom(33000)
    env = lmdb.open(os.fspath(path), map_size=MAP_SIZE, writemap=True, max_dbs=4)
    try:
        big, small = env.open_db(b"big"), env.open_db(b"small")
        with env.begin(write=True) as txn:
            for i in range(1500):
                txn.put(b"b%05d" % i, blob[i % 997:] + b"%d" % i, db=big)
                txn.put(b"s%05d" % i, b"%d" % i * 20, db=small)
        with env.begin(write=True) as txn:
            for i in range(0, 1500, 4):
                txn.delete(b"b%05d" % i, db=big)
    finally:
        env.close()
    return path


def digest(path: Path) -> str:
    """A hash of every key and value of an environment whose main database
    holds only named databases, read with py-lmdb (mdb_dump takes seconds on
    50 MB)."""
    import hashlib

    h = hashlib.sha256()
    env = lmdb.open(os.fspath(path), readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
            for db in [None, *(env.open_db(n, txn=txn, create=False) for n in names)]:
                for k, v in txn.cursor(db=db):
                    h.update(b"%d:%s%d:%s" % (len(k), k, len(v), v))
                h.update(b"|")
    finally:
        env.close()
    return h.hexdigest()


def holes_after_merge(free: set[int], last: int, merge: int) -> set[int]:
    """The free pages a copy with ``merge_pages=merge`` leaves as holes: free
    runs between two used pages shorter than ``merge`` pages are copied; the
    rest, and free runs before the first or after the last used page, are holes."""
    used = set(range(2, last + 1)) - free
    holes: set[int] = set()
    run: list[int] = []
    for pg in range(2, last + 2):
        if pg in free:
            run.append(pg)
            continue
        if run and (len(run) >= merge or run[0] - 1 not in used or pg > last):
            holes.update(run)
        run = []
    return holes


def assert_shares_every_page_in_use(dst: Path) -> None:
    """Every page in use is shared with the source, and so are the free gaps
    shorter than MERGE_PAGES_CLONE (cloned with their neighbours: one clone
    instead of two, and nothing allocated); longer free runs are holes."""
    free = holes_after_merge(free_page_numbers(dst), env_info(dst)["pages_used"] - 1,
                             MERGE_PAGES_CLONE)
    last = env_info(dst)["pages_used"] - 1
    shared: set[int] = set()
    for off, length, is_shared in fiemap(dst / "data.mdb"):
        pages = set(range(off // PS, (off + length) // PS))
        if is_shared:
            shared |= pages
        else:
            assert pages <= {0, 1}, "only the meta pages are written"
    assert shared == set(range(2, last + 1)) - free
    assert data_pages(dst / "data.mdb") == set(range(last + 1)) - free


@pytest.mark.parametrize("engine", ["pages", "auto"])
def test_copy_on_xfs_shares_the_source_blocks(on_xfs: Path, engine: str) -> None:
    src = big_source(on_xfs / "src.lmdb")
    dst = on_xfs / "dst.lmdb"
    fd = os.open(src / "data.mdb", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    free_before = _free_bytes(on_xfs)
    proc = run_cli("copy", "--json", "--lmdb-engine", engine, src, dst)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["environment_copies"][0]["engine"] == "pages"
    assert digest(dst) == digest(src)
    assert env_info(dst) == env_info(src)
    assert_shares_every_page_in_use(dst)
    # about 40 MB in use, shared: the filesystem lost little more than the meta pages
    assert allocated(dst / "data.mdb") > 30 << 20
    assert free_before - _free_bytes(on_xfs) < 4 << 20


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def test_reflink_never_writes_its_own_blocks_on_xfs(on_xfs: Path) -> None:
    src = big_source(on_xfs / "src.lmdb")
    dst = on_xfs / "dst.lmdb"
    proc = run_cli("copy", "--lmdb-engine", "pages", "--reflink", "never", src, dst)
    assert proc.returncode == 0, proc.stderr
    assert digest(dst) == digest(src)
    assert not any(shared for _, _, shared in fiemap(dst / "data.mdb"))


# ------------------------------------------------------------------ a lock file nobody can write

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a read-only bind mount")
@pytest.mark.parametrize("engine", ["pages", "rebuild", "raw"])
def test_lock_file_on_a_read_only_mount(tmp_path: Path, engine: str) -> None:
    """LMDB opens an environment whose lock file is on a read-only filesystem
    without its reader table: our read transaction would not be registered.
    With a live process holding it open the copy is refused; with none it is safe."""
    src = quiet_source(tmp_path / "src")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", os.fspath(src), os.fspath(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", os.fspath(ro)], check=True)
        proc = run_cli("copy", "--lmdb-engine", engine, ro, tmp_path / "quiet")
        assert proc.returncode == 0, proc.stderr
        assert mdb_dump(tmp_path / "quiet") == mdb_dump(src)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, os.fspath(src)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
            proc = run_cli("copy", "--lmdb-engine", engine, ro, tmp_path / "held")
            assert_one_line_error(proc, f"process {holder.pid} has it open", "read-only",
                                  code=1)
            assert not (tmp_path / "held").exists()
            assert [n for n in os.listdir(tmp_path) if "synfast" in n] == []
        finally:
            holder.kill()
            holder.wait(timeout=30)
    finally:
        subprocess.run(["umount", os.fspath(ro)], check=True)


def test_reflink_always_where_blocks_cannot_be_shared(tmp_path: Path) -> None:
    """``--reflink always`` with the pages engine on a filesystem without
    reflinks (tmp_path is not XFS or btrfs): one line, nothing copied or left."""
    src = quiet_source(tmp_path / "src")
    proc = run_cli("copy", "--lmdb-engine", "pages", "--reflink", "always", src,
                   tmp_path / "dst")
    assert_one_line_error(proc, "cannot reflink", "--reflink=auto", code=1)
    assert sorted(os.listdir(tmp_path)) == ["src"]
