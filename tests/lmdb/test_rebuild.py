"""The native rebuild engine against real LMDB environments.

Environments are made with py-lmdb (and with ``mdb_load`` for the one flag
py-lmdb cannot set, REVERSEDUP, and for flags on the main database); copies are
checked with ``mdb_dump``: equal output means equal data.  Live-writer tests run
the writer in another process, as a service would.  This process never has the
same environment open with py-lmdb and with the native module at once.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.errors import CorruptEnvironment, DestinationExists, NotAnEnvironment, SynfastError
from synfast.lmdb import choose, snapshot

MAXKEY = 511          # mdb_env_get_maxkeysize of a default LMDB build
MAP_SIZE = 1 << 28


# ------------------------------------------------------------------ helpers

def _dump(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mdb_dump", *args], capture_output=True, text=True)


def _pairs(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Split one mdb_dump (bytevalue) database section into header lines and
    (key, value) hex pairs."""
    lines = text.splitlines()
    end = lines.index("HEADER=END")
    data = lines[end + 1:lines.index("DATA=END")]
    return lines[:end], list(zip(data[0::2], data[1::2], strict=True))


def dump_env(path: Path, subdir: bool, names: set[bytes]) -> tuple[str, list[str], list]:
    """What mdb_dump prints for an environment: every named database (``-a``),
    and the main database's header and plain entries (its records of named
    databases hold page numbers, which differ between equal environments)."""
    n = [] if subdir else ["-n"]
    every = _dump(["-a", *n, os.fspath(path)])
    if every.returncode != 0:
        assert "does not contain multiple databases" in every.stderr, every.stderr
        named = ""
    else:
        named = every.stdout
    main = _dump([*n, os.fspath(path)])
    assert main.returncode == 0, main.stderr
    header, pairs = _pairs(main.stdout)
    hex_names = {" " + name.hex() for name in names}
    plain = [(k, v) for k, v in pairs if k not in hex_names]
    return named, header, plain


def assert_same_data(src: Path, dst: Path, subdir: bool, names: set[bytes]) -> None:
    a = dump_env(src, subdir, names)
    b = dump_env(dst, subdir, names)
    assert a[0] == b[0], "named databases differ"
    assert a[1] == b[1], "main database header differs"
    assert a[2] == b[2], "main database plain keys differ"


def open_db(env: lmdb.Environment, txn: lmdb.Transaction, name: bytes, flags: set[str]):
    return env.open_db(
        name, txn=txn,
        dupsort="dupsort" in flags, dupfixed="dupfixed" in flags,
        integerkey="integerkey" in flags, integerdup="integerdup" in flags,
        reverse_key="reversekey" in flags,
    )


def mdb_load(path: Path, subdir: bool, name: bytes | None, flags: set[str],
             items: list[tuple[bytes, bytes]]) -> None:
    """Load a database with mdb_load, which can set every LMDB flag."""
    head = ["VERSION=3", "format=bytevalue", "type=btree"]
    head += [f"{f}=1" for f in sorted(flags)]
    body = [f" {x.hex()}" for kv in items for x in kv]
    text = "\n".join([*head, "HEADER=END", *body, "DATA=END", ""])
    args = ["mdb_load"] + ([] if subdir else ["-n"])
    if name is not None:
        args += ["-s", name.decode()]
    subprocess.run([*args, os.fspath(path)], input=text, text=True, check=True)


def rebuild(src: Path, dst: Path) -> dict:
    return snapshot.rebuild_environment(src, dst)


# ------------------------------------------------------------------ generated environments

keys = st.one_of(st.binary(min_size=1, max_size=8), st.binary(min_size=MAXKEY, max_size=MAXKEY))
values = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.binary(min_size=48, max_size=48),           # the size of a database record
    st.binary(min_size=3000, max_size=9000),       # overflow pages
)
db_names = st.text("abcdefgh_", min_size=1, max_size=6).map(str.encode)


@st.composite
def databases(draw):
    """One named database: flags, and its entries as (key, value) pairs in the
    order a writer puts them (dupsort keys repeat)."""
    flags: set[str] = set()
    if draw(st.booleans()):
        flags.add("integerkey")
    if draw(st.booleans()):
        flags.add("reversekey")
    if draw(st.booleans()):
        flags.add("dupsort")
        if draw(st.booleans()):
            flags.add("reversedup")
        if draw(st.booleans()):
            flags |= {"integerdup", "dupfixed"}
        elif draw(st.booleans()):
            flags.add("dupfixed")
    if "integerkey" in flags:
        width = draw(st.sampled_from([4, 8]))
        ints = draw(st.lists(st.integers(0, 2 ** (8 * width) - 1), unique=True, max_size=12))
        ks = [struct.pack("=I" if width == 4 else "=Q", i) for i in ints]
    else:
        ks = draw(st.lists(keys, unique=True, max_size=12))
    items: list[tuple[bytes, bytes]] = []
    if "dupsort" in flags:
        if "integerdup" in flags:
            w = draw(st.sampled_from([4, 8]))
            dup = st.integers(0, 2 ** (8 * w) - 1).map(
                lambda i, w=w: struct.pack("=I" if w == 4 else "=Q", i))
        elif "dupfixed" in flags:
            size = draw(st.sampled_from([1, 7, 64, MAXKEY]))
            dup = st.binary(min_size=size, max_size=size)
        else:
            # LMDB refuses empty duplicates (MDB_BAD_VALSIZE): they are sub-DB keys
            dup = st.one_of(st.binary(min_size=1, max_size=8),
                            st.binary(min_size=MAXKEY, max_size=MAXKEY))
        for k in ks:
            for v in draw(st.lists(dup, unique=True, min_size=1, max_size=6)):
                items.append((k, v))
    else:
        items = [(k, draw(values)) for k in ks]
    return flags, items


@st.composite
def environments(draw):
    names = draw(st.lists(db_names, unique=True, max_size=5))
    dbs = {name: draw(databases()) for name in names}
    plain = draw(st.dictionaries(st.one_of(db_names, keys), values, max_size=8))
    plain = {k: v for k, v in plain.items() if k not in dbs}
    # small write transactions make the rebuild commit inside databases and
    # between the duplicates of one key
    txn_entries = draw(st.sampled_from([1, 2, 7, 200_000]))
    return draw(st.booleans()), plain, dbs, txn_entries


def make_env(path: Path, subdir: bool, plain: dict[bytes, bytes], dbs: dict) -> None:
    env = lmdb.open(os.fspath(path), subdir=subdir, max_dbs=len(dbs) + 2, map_size=MAP_SIZE)
    with env.begin(write=True) as txn:
        for k, v in plain.items():
            txn.put(k, v)
        for name, (flags, items) in dbs.items():
            if "reversedup" in flags:
                continue
            db = open_db(env, txn, name, flags)
            for k, v in items:
                txn.put(k, v, db=db)
    env.close()
    for name, (flags, items) in dbs.items():
        if "reversedup" in flags:
            mdb_load(path, subdir, name, flags, items)


@settings(max_examples=45, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(environments())
def test_generated_environments_rebuild_to_the_same_data(spec):
    subdir, plain, dbs, txn_entries = spec
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        if subdir:
            src.mkdir()
        make_env(src, subdir, plain, dbs)
        report = snapshot.rebuild_environment(src, dst, txn_entries=txn_entries)
        assert report["named_databases"] == len(dbs)
        expected = len(plain) + sum(len({kv for kv in items}) for _, items in dbs.values())
        assert report["entries"] == expected
        # the output is private until renamed: LMDB made no lock file for it
        if subdir:
            assert sorted(os.listdir(dst)) == ["data.mdb"]
        else:
            assert dst.is_file() and not Path(f"{dst}-lock").exists()
        assert_same_data(src, dst, subdir, set(dbs))


def test_main_database_mixes_plain_keys_and_named_databases(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    env = lmdb.open(os.fspath(src), max_dbs=4, map_size=MAP_SIZE)
    with env.begin(write=True) as txn:
        for name in (b"b", b"n"):
            db = env.open_db(name, txn=txn)
            txn.put(b"in-" + name, b"x" * 100, db=db)
        # plain keys before, between and after the names, one of them with a
        # value exactly as long as a database record
        txn.put(b"a", b"plain")
        txn.put(b"c", b"\0" * 48)
        txn.put(b"m", b"")
        txn.put(b"zz", b"y" * 5000)
    env.close()
    report = rebuild(src, dst)
    assert report["named_databases"] == 2
    assert report["entries"] == 6
    assert_same_data(src, dst, True, {b"b", b"n"})
    env = lmdb.open(os.fspath(dst), max_dbs=4, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"c") == b"\0" * 48
        assert txn.get(b"in-n", db=env.open_db(b"n", txn=txn)) == b"x" * 100
    env.close()


def test_main_database_flags_are_kept(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    items = [(b"k%d" % (i % 7), b"%03d" % i) for i in range(300)]
    mdb_load(src, True, None, {"dupsort", "reversedup", "reversekey"}, items)
    rebuild(src, dst)
    a = _dump([os.fspath(src)]).stdout
    b = _dump([os.fspath(dst)]).stdout
    assert "reversedup=1" in a and "reversekey=1" in a
    assert a == b


def test_empty_environment(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    lmdb.open(os.fspath(src), map_size=MAP_SIZE).close()
    report = rebuild(src, dst)
    assert report["entries"] == 0 and report["named_databases"] == 0
    assert_same_data(src, dst, True, set())
    out = subprocess.run(["mdb_stat", os.fspath(dst)], capture_output=True, text=True, check=True)
    assert "Entries: 0" in out.stdout


def test_max_size_keys_and_large_values(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    env = lmdb.open(os.fspath(src), max_dbs=4, map_size=1 << 30)
    assert env.max_key_size() == MAXKEY
    big = os.urandom(9 << 20)
    with env.begin(write=True) as txn:
        plain = env.open_db(b"plain", txn=txn)
        dups = env.open_db(b"dups", txn=txn, dupsort=True)
        txn.put(b"k" * MAXKEY, big, db=plain)
        txn.put(b"j" * MAXKEY, b"", db=plain)
        txn.put(b"e", b"", db=plain)
        txn.put(b"m", big[: 3 << 20], db=plain)
        for i in range(50):
            txn.put(b"d" * MAXKEY, bytes([i]) * MAXKEY, db=dups)
    env.close()
    report = rebuild(src, dst)
    assert report["entries"] == 54
    assert report["data_bytes"] >= (12 << 20)
    assert_same_data(src, dst, True, {b"plain", b"dups"})


def test_two_thousand_named_databases(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    env = lmdb.open(os.fspath(src), max_dbs=2100, map_size=MAP_SIZE)
    names = {b"db%04d" % i for i in range(2000)}
    total = 0
    with env.begin(write=True) as txn:
        for i, name in enumerate(sorted(names)):
            db = env.open_db(name, txn=txn, dupsort=(i % 3 == 0))
            for j in range(i % 4):          # a quarter of them stay empty
                txn.put(b"key%d" % j, b"v%d" % i, db=db)
                total += 1
    env.close()
    report = rebuild(src, dst)
    assert report["named_databases"] == 2000
    assert report["entries"] == total
    assert_same_data(src, dst, True, names)


# ------------------------------------------------------------------ the copy is usable

CONTINUE_WRITING = r"""
import sys, lmdb
path, mapsize = sys.argv[1], int(sys.argv[2])
env = lmdb.open(path, writemap=True, map_size=mapsize, max_dbs=8)
db = env.open_db(b"data")
new = env.open_db(b"new")
with env.begin(write=True) as txn:
    assert txn.get(b"k00000", db=db) == b"v" * 700
    for i in range(2000):
        txn.put(b"added%05d" % i, b"w" * 3000, db=db)
        txn.put(b"n%05d" % i, b"x", db=new)
with env.begin() as txn:
    print(txn.stat(db)["entries"], txn.stat(new)["entries"], env.info()["map_size"])
"""


def test_copy_opens_and_a_writer_continues_on_it(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    env = lmdb.open(os.fspath(src), max_dbs=4, map_size=MAP_SIZE, writemap=True)
    db = env.open_db(b"data")
    with env.begin(write=True) as txn:
        for i in range(3000):
            txn.put(b"k%05d" % i, b"v" * 700, db=db)
    env.close()
    rebuild(src, dst)
    info = subprocess.run(["mdb_stat", "-e", os.fspath(dst)], capture_output=True, text=True,
                          check=True).stdout
    mapsize = int(info.split("Map size:")[1].split()[0])
    assert mapsize == MAP_SIZE
    out = subprocess.run([sys.executable, "-c", CONTINUE_WRITING, os.fspath(dst), str(mapsize)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["5000", "2000", str(MAP_SIZE)]
    stat = subprocess.run(["mdb_stat", "-a", os.fspath(dst)], capture_output=True, text=True,
                          check=True).stdout
    assert "Status of data" in stat and "Status of new" in stat
    assert "Entries: 5000" in stat


# ------------------------------------------------------------------ live writers

class Writer:
    """A writer process; the last line it printed is kept in ``latest``."""

    def __init__(self, script: str, *args: str) -> None:
        self.stop_file = Path(tempfile.mktemp(prefix="synfast-stop-"))
        self.proc = subprocess.Popen([sys.executable, "-c", script, os.fspath(self.stop_file),
                                      *args], stdout=subprocess.PIPE, text=True)
        self.first = self.proc.stdout.readline().strip()
        self.latest = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.latest = int(line)

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.latest < n:
            assert self.proc.poll() is None, "writer died"
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.002)

    def stop(self) -> None:
        self.stop_file.touch()
        try:
            assert self.proc.wait(30) == 0
        finally:
            self.stop_file.unlink()


ONE_ENV_WRITER = r"""
import os, sys, lmdb
stop, path = sys.argv[1:3]
env = lmdb.open(path, max_dbs=4, map_size=1 << 30, writemap=True)
a, b, c = (env.open_db(n) for n in (b"a", b"b", b"c"))
print(env.info()["last_txnid"], flush=True)
pad = os.urandom(3000)
n = 0
while not os.path.exists(stop):
    n += 1
    with env.begin(write=True) as txn:       # one txn: counters and the key agree
        txn.put(b"counter", b"%d" % n, db=a)
        txn.put(b"k%08d" % n, pad, db=c)
        txn.put(b"counter", b"%d" % n, db=b)
    print(n, flush=True)
"""


def read_counters(path: Path) -> tuple[int, int, int]:
    env = lmdb.open(os.fspath(path), max_dbs=4, readonly=True)
    try:
        with env.begin() as txn:
            a = int(txn.get(b"counter", b"0", db=env.open_db(b"a", txn=txn)))
            b = int(txn.get(b"counter", b"0", db=env.open_db(b"b", txn=txn)))
            c = txn.stat(env.open_db(b"c", txn=txn))["entries"]
        return a, b, c
    finally:
        env.close()


def test_rebuild_under_a_live_writer_is_one_snapshot(tmp_path):
    src = tmp_path / "src"
    env = lmdb.open(os.fspath(src), max_dbs=4, map_size=1 << 30, writemap=True)
    with env.begin(write=True) as txn:
        for name in (b"a", b"b", b"c"):
            env.open_db(name, txn=txn)
        pad = env.open_db(b"pad", txn=txn)
        for i in range(4000):                 # makes each rebuild take a while
            txn.put(b"p%06d" % i, os.urandom(2500), db=pad)
    env.close()
    writer = Writer(ONE_ENV_WRITER, os.fspath(src))
    base_txnid = int(writer.first)
    try:
        seen = []
        for i in range(4):
            writer.wait_for(writer.latest + 3)
            report = rebuild(src, tmp_path / f"copy{i}")
            a, b, c = read_counters(tmp_path / f"copy{i}")
            assert a == b == c, f"torn copy: counters {a}, {b}, keys {c}"
            # the snapshot's txn id is exact: the writer commits once per count
            assert report["txnid"] - base_txnid == a
            seen.append(a)
    finally:
        writer.stop()
    assert seen == sorted(seen) and seen[0] >= 1


MULTI_ENV_WRITER = r"""
import os, sys, time, lmdb
stop, paths = sys.argv[1], sys.argv[2:]
envs = [lmdb.open(p, map_size=1 << 28) for p in paths]
print(0, flush=True)
r = 0
while not os.path.exists(stop):
    r += 1
    for env in envs:                          # always in this order
        with env.begin(write=True) as txn:
            txn.put(b"round", b"%d" % r)
        # Far longer than beginning four read transactions takes, even on a
        # loaded machine that preempts the begins for a few time slices.
        time.sleep(0.05)
    print(r, flush=True)
"""


def read_round(path: Path) -> int:
    env = lmdb.open(os.fspath(path), readonly=True)
    try:
        with env.begin() as txn:
            return int(txn.get(b"round", b"0"))
    finally:
        env.close()


def one_moment(rounds: list[int]) -> bool:
    """At any one moment the writer has finished round r in the first
    environments and round r-1 (or r) in the rest: non-increasing, and spread by
    at most one."""
    steps = zip(rounds, rounds[1:], strict=False)
    return all(x >= y for x, y in steps) and rounds[0] - rounds[-1] <= 1


def test_snapshots_begun_together_reflect_one_moment(tmp_path):
    paths = [tmp_path / f"env{i}" for i in range(4)]
    for p in paths:
        env = lmdb.open(os.fspath(p), map_size=1 << 28)
        with env.begin(write=True) as txn:
            for i in range(1500):
                txn.put(b"pad%05d" % i, os.urandom(2500))
        env.close()
    writer = Writer(MULTI_ENV_WRITER, *map(os.fspath, paths))
    try:
        for attempt in range(3):
            writer.wait_for(writer.latest + 2)
            snaps = snapshot.open_snapshots(paths)
            try:
                for i, (p, snap) in enumerate(zip(paths, snaps, strict=True)):
                    snapshot.rebuild_environment(p, tmp_path / f"b{attempt}-{i}", snapshot=snap)
            finally:
                for snap in snaps:
                    snap.close()
            rounds = [read_round(tmp_path / f"b{attempt}-{i}") for i in range(len(paths))]
            assert rounds[0] >= 1
            assert one_moment(rounds), f"backup mixes moments: {rounds}"

        # The invariant does catch a mixed-moment backup: one snapshot per
        # environment taken when its copy starts, the writer moving on between.
        rounds = []
        for i, p in enumerate(paths):
            snapshot.rebuild_environment(p, tmp_path / f"late-{i}")
            rounds.append(read_round(tmp_path / f"late-{i}"))
            writer.wait_for(rounds[-1] + 2)
        assert not one_moment(rounds)
    finally:
        writer.stop()


# ------------------------------------------------------------------ errors and the API

def _small_env(path: Path, n: int = 100) -> None:
    env = lmdb.open(os.fspath(path), max_dbs=2, map_size=MAP_SIZE)
    db = env.open_db(b"d")
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(b"k%06d" % i, b"v" * 200, db=db)
    env.close()


def test_existing_destination_is_refused_and_kept(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _small_env(src)
    dst.mkdir()
    (dst / "keep").write_text("mine")
    with pytest.raises(DestinationExists):
        rebuild(src, dst)
    assert os.listdir(dst) == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_interrupt_removes_the_partial_output(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _small_env(src, 20000)

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop()

    def poke() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(n.startswith(".dst.synfast-tmp-") for n in os.listdir(tmp_path)):
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.0005)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=poke)
        t.start()
        with pytest.raises(Stop) as caught:
            # one entry per transaction: the rebuild runs long enough to be
            # interrupted between commits
            snapshot.rebuild_environment(src, dst, txn_entries=1)
        t.join()
        # the native loop itself noticed the signal (not Python after it returned)
        assert any("_rebuild.pyx" in str(entry.path) for entry in caught.traceback)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_full_destination_is_named_and_leaves_nothing(tmp_path, small_tmpfs):
    src = tmp_path / "src"
    _small_env(src, 40000)                  # about 9 MB of values; the tmpfs holds 4 MiB
    with pytest.raises(SynfastError) as caught:
        rebuild(src, small_tmpfs / "dst")
    message = str(caught.value)
    assert message.startswith(f"{small_tmpfs / 'dst'}: ") and "no space left" in message.lower()
    assert os.listdir(small_tmpfs) == []


def test_not_an_environment(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAnEnvironment):
        snapshot.open_snapshot(tmp_path / "empty")
    (tmp_path / "file").write_bytes(b"not lmdb" * 1000)
    with pytest.raises(NotAnEnvironment):
        snapshot.rebuild_environment(tmp_path / "file", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_source_is_refused(tmp_path):
    src = tmp_path / "src"
    _small_env(src, 2000)
    with open(src / "data.mdb", "r+b") as f:
        f.truncate(8 * 4096)
    with pytest.raises(CorruptEnvironment, match="truncated"):
        snapshot.open_snapshot(src)


def test_single_file_environment_keeps_its_layout(tmp_path):
    src, dst = tmp_path / "env.db", tmp_path / "copy.db"
    env = lmdb.open(os.fspath(src), subdir=False, max_dbs=2, map_size=MAP_SIZE)
    db = env.open_db(b"x", dupsort=True)
    with env.begin(write=True) as txn:
        for i in range(500):
            txn.put(b"k%d" % (i % 10), b"%05d" % i, db=db)
    env.close()
    snap = snapshot.open_snapshot(src)
    assert not snap.subdir
    snap.close()
    report = rebuild(src, dst)
    assert not report["subdir"] and dst.is_file()
    assert sorted(os.listdir(tmp_path)) == ["copy.db", "env.db", "env.db-lock"]
    assert_same_data(src, dst, False, {b"x"})


def test_auto_rebuilds_a_loose_environment_and_compacts_a_compact_one(tmp_path):
    import random

    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = random.Random(5)
    env = lmdb.open(os.fspath(src), max_dbs=4, map_size=MAP_SIZE)
    db = env.open_db(b"d")
    with env.begin(write=True) as txn:
        for _ in range(20000):                # random order: pages split half full
            txn.put(rng.randbytes(16), rng.randbytes(rng.choice([60, 120, 400])), db=db)
    env.close()
    loose = snapshot.open_snapshot(src)
    try:
        facts = choose.engine_facts(loose)
        assert choose.choose_engine(loose) == "rebuild"
        report = snapshot.rebuild_environment(src, dst, snapshot=loose)
    finally:
        loose.close()
    # the prediction is close to what the rebuild wrote
    written = report["bytes_written"] // report["page_size"]
    assert abs(facts["rebuild_pages"] - written) <= 0.08 * written
    assert facts["rebuild_saving"] >= choose.AUTO_MIN_REBUILD_SAVING
    # a rebuilt environment is compact: nothing left to gain; with no overflow
    # values LMDB's compacting copy is the fastest
    assert choose.choose_engine(dst) == "compact"


def test_auto_rebuilds_a_compact_environment_of_overflow_values(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    env = lmdb.open(os.fspath(src), max_dbs=4, map_size=MAP_SIZE)
    db = env.open_db(b"d")
    with env.begin(write=True) as txn:
        for i in range(3000):                 # in key order: pages full, nothing to gain
            txn.put(b"k%08d" % i, os.urandom(5000 if i % 4 == 0 else 100), db=db)
    env.close()
    snapshot.rebuild_environment(src, dst)
    snap = snapshot.open_snapshot(dst)
    try:
        facts = choose.engine_facts(snap)
        assert facts["rebuild_saving"] < choose.AUTO_MIN_REBUILD_SAVING
        assert facts["overflow_pages"] > choose.AUTO_COMPACT_MAX_OVERFLOW * facts["entries"]
        # compact hands every overflow value between two threads: rebuild instead
        assert choose.choose_engine(snap) == "rebuild"
    finally:
        snap.close()


def _mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    ino, total, mine = os.stat(path).st_ino, 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                mine = len(parts) >= 5 and parts[4] == str(ino)
            elif mine and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_release_bytes_unmaps_the_source_as_it_goes(tmp_path):
    # 64 MiB of values in key order: without releases the whole source stays
    # mapped while the snapshot is open; releasing every 1 MiB leaves little.
    src = tmp_path / "src"
    make_env(src, True, {b"%08d" % i: os.urandom(1000) for i in range(64 * 1024)}, {})
    resident = {}
    for release in (0, 1 << 20):
        snap = snapshot.open_snapshot(src)
        try:
            snapshot.rebuild_environment(src, tmp_path / f"out{release}", snapshot=snap,
                                        release_bytes=release)
            resident[release] = _mapped_rss(src / "data.mdb")
        finally:
            snap.close()
    assert resident[0] > 48 << 20
    assert resident[1 << 20] < resident[0] // 4
