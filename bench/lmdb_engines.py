"""Benchmark of the LMDB copy engines on the datasets of docs/reference/lmdb-facts.md.

Contenders, each run as its own process so that wall time is the whole
process's (interpreter start and imports included) and memory is the process's:

- ``rebuild``   synfast.lmdb.snapshot.rebuild_environment (native rebuild, fsynced)
- ``compact``   synfast.lmdb.env.copy_environment(engine="compact") with writeback
  started during the copy, then fsync (as a backup does)
- ``raw``       the same with engine="raw" (mdb_env_copyfd2 without compaction)
- ``pages``     synfast.lmdb.pages.copy_pages (page for page from one snapshot,
  free pages as holes, fsynced)
- ``mdb_copy-c`` ``mdb_copy -c`` (LMDB's tool; writes with O_DIRECT, no fsync)
- ``cp-a``      ``cp -a`` of the environment directory (no fsync; not safe on a
  live environment, here only as the speed reference)
- ``cp-a+sync`` ``cp -a`` then ``sync -f`` of the output's filesystem: the same copy
  made durable, as every synfast engine's output is
- ``floor``     ``dd`` writing as many zero bytes as the output of the pages engine
  (allocated) or else of the rebuild, of the same round, and fsyncing them: the
  time this machine's disk needs to make that output durable, a floor for any
  engine that fsyncs it
- ``floor-layout`` zeros written at exactly the pages engine's runs (its holes
  left as holes), writeback started every 64 MiB as the engine does, fsynced:
  the time this machine's filesystem and disk need for the pages engine's
  layout, with no source read at all

Runs are interleaved (each round runs every contender once) with the page cache
warm (one unmeasured round first), ``sync`` before each run so that one
contender's writeback does not land in the next one's time, and each output
deleted right after its run (so outputs do not push the source out of the page
cache).  The table shows the median of the timed rounds.

Memory: in one extra, untimed round the parent polls ``/proc/PID/smaps_rollup``
of the running contender (and its descendants, summed) every 20 ms and keeps
the peak of ``Anonymous`` (private memory that is not a mapped file: the heap,
LMDB's dirty pages, malloc'd buffers).  ``maxrss`` is the kernel's
peak RSS from wait4(2), the figure ``/usr/bin/time -v`` prints.

Usage::

    python -m bench.lmdb_engines                 # full scale, datasets A, B and C
    python -m bench.lmdb_engines --scale 0.05    # quick run
    python -m bench.lmdb_engines --dataset A --runs 5 --only rebuild,cp-a

Datasets are cached under ``bench/.cache/`` (deterministic seed); delete it to
rebuild them.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"

GiB = 1 << 30
MAP_SIZE = 16 * GiB


def map_size(scale: float) -> int:
    """The datasets' map: 16 GiB at scale 1, scaled with the data (at least
    256 MiB), so that a quick run's contenders that read every hole read a
    map the size of its data, not 16 GiB."""
    return max(256 << 20, int(MAP_SIZE * scale) >> 20 << 20)

BATCH = 5000
SEED = 20240501

DATASETS = {
    # name: (value sizes, total value bytes at scale 1, DBs with 40% of keys deleted)
    "A": ((100, 400, 1500, 5000), int(1.5 * GiB), 2),
    "B": ((60, 120, 400, 1200), int(0.8 * GiB), 0),
    # B with A's deletion step.  docs/reference/lmdb-facts.md says B had "no deletes", but
    # its measured B held 1,548,509 entries and its rebuild was 0.83 GB: 80% of
    # what B's recipe gives here (1,931,788 entries, 1.04 GB), which is what
    # deleting 40% of the keys of two of four DBs leaves.  Same seed as B, so
    # the insert phase is B's exactly.
    "Bd": ((60, 120, 400, 1200), int(0.8 * GiB), 2),
}
SEED_OF = {"Bd": "B"}
# C and Ac: datasets B and A rebuilt (compact, no free pages; C has only small
# values, Ac mostly overflow values).
REBUILT_FROM = {"C": "B", "Ac": "A"}
DB_NAMES = [b"db0", b"db1", b"db2", b"db3"]

CONTENDERS = ["rebuild", "compact", "raw", "mdb_copy-c", "cp-a", "cp-a+sync", "pages", "floor",
              "floor-layout"]
DEFAULT_CONTENDERS = CONTENDERS[:5]


# ---------------------------------------------------------------- datasets

def build_dataset(name: str, scale: float) -> Path:
    """Build (or reuse) dataset ``name`` at ``scale``: one environment opened
    with writemap=True and a 16 GiB map, 4 named DBs, random 16-byte keys,
    values of sizes drawn uniformly from the dataset's set, transactions of
    5,000 puts; for A, about 40% of the keys of two DBs deleted afterwards."""
    import lmdb

    path = CACHE / f"{name}-scale{scale:g}"
    done = path / ".complete"
    if done.exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    if name in REBUILT_FROM:
        # A dataset after a rebuild: already compact, the case where ``auto``
        # must not rebuild.  Not in docs/reference/lmdb-facts.md; used for the auto rule.
        from synfast.lmdb.snapshot import rebuild_environment

        rep = rebuild_environment(build_dataset(REBUILT_FROM[name], scale), path)
        done.write_text(f"last_pgno={rep['bytes_written'] // rep['page_size'] - 1} "
                        f"entries={rep['entries']}\n")
        return path
    sizes, total, deleted_dbs = DATASETS[name]
    path.mkdir(parents=True)
    rng = random.Random(f"{SEED}-{SEED_OF.get(name, name)}")
    target = int(total * scale)
    t0 = time.monotonic()
    env = lmdb.open(os.fspath(path), map_size=map_size(scale), writemap=True, max_dbs=8)
    dbs = [env.open_db(n) for n in DB_NAMES]
    keys: list[list[bytes]] = [[] for _ in dbs]
    written = 0
    while written < target:
        with env.begin(write=True) as txn:
            for _ in range(BATCH):
                i = rng.randrange(len(dbs))
                key = rng.randbytes(16)
                size = rng.choice(sizes)
                txn.put(key, rng.randbytes(size), db=dbs[i])
                if i < deleted_dbs:
                    keys[i].append(key)
                written += size
                if written >= target:
                    break
    for i in range(deleted_dbs):
        doomed = [k for k in keys[i] if rng.random() < 0.4]
        for start in range(0, len(doomed), BATCH):
            with env.begin(write=True) as txn:
                for k in doomed[start:start + BATCH]:
                    txn.delete(k, db=dbs[i])
    info = env.info()
    stat_entries = 0
    with env.begin() as txn:
        for db in dbs:
            stat_entries += txn.stat(db)["entries"]
    env.close()
    done.write_text(f"last_pgno={info['last_pgno']} entries={stat_entries}\n")
    st = os.stat(path / "data.mdb")
    print(f"# built dataset {name} scale {scale:g} in {time.monotonic() - t0:.1f} s: "
          f"{st.st_size / 1e9:.1f} GB apparent, {st.st_blocks * 512 / 1e9:.2f} GB allocated, "
          f"last page {info['last_pgno']}, {stat_entries} entries", file=sys.stderr)
    return path


# ---------------------------------------------------------------- drivers

def driver(engine: str, src: str, dst: str) -> None:
    """The CLI-free body of one contender run (executed in a child process)."""
    if engine == "rebuild":
        from synfast.lmdb.snapshot import rebuild_environment

        rebuild_environment(src, dst)
        return
    if engine == "pages":
        from synfast.lmdb.pages import copy_pages
        from synfast.lmdb.snapshot import open_snapshot

        os.mkdir(dst)
        out = Path(dst, "data.mdb")
        copy_pages(open_snapshot(src), out, out, src)
        return
    if engine == "floor-layout":
        write_layout(src, dst)
        return
    from synfast.lmdb import env as lmdbenv
    from synfast.lmdb import meta as lmdbmeta

    # As a backup copies with these engines: writeback started during the
    # copy, then fsync.
    os.mkdir(dst)
    out = os.path.join(dst, "data.mdb")
    lmdbenv.copy_environment(lmdbmeta.locate(src), out, engine=engine, writeback=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_layout(src: str, dst: str) -> None:
    """Zeros written where the pages engine writes the snapshot's runs."""
    from array import array

    from synfast.files.durable import start_writeback
    from synfast.lmdb.pages import MERGE_PAGES_COPY, WRITEBACK_BYTES
    from synfast.lmdb.snapshot import open_snapshot

    snap = open_snapshot(src)
    try:
        plan = snap.page_plan(MERGE_PAGES_COPY)
        size = os.fstat(snap.fileno()).st_size
    finally:
        snap.close()
    runs = array("q")
    runs.frombytes(plan["ranges"])
    zeros = memoryview(bytes(1 << 20))
    os.mkdir(dst)
    fd = os.open(os.path.join(dst, "data.mdb"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        pending = 0
        for off, length in zip(runs[0::2], runs[1::2], strict=True):
            while length:
                n = os.pwrite(fd, zeros[:min(length, len(zeros))], off)
                off, length, pending = off + n, length - n, pending + n
            if pending >= WRITEBACK_BYTES:
                start_writeback(fd)
                pending = 0
        os.fsync(fd)
    finally:
        os.close(fd)


# GNU time reports the peak RSS of the command it runs (kernel's ru_maxrss of
# that process), unpolluted by this large parent; "%M" is in KiB.
TIME_OUT = CACHE / "time.out"
TIME = ["/usr/bin/time", "-f", "%M", "-o", os.fspath(TIME_OUT)]


def command(engine: str, src: Path, dst: Path, floor_bytes: int = 0) -> list[str]:
    if engine in ("rebuild", "compact", "raw", "pages", "floor-layout"):
        return [*TIME, sys.executable, "-m", "bench.lmdb_engines", "--drive", engine,
                os.fspath(src), os.fspath(dst)]
    if engine == "mdb_copy-c":
        return [*TIME, "sh", "-c", 'mkdir "$1" && exec mdb_copy -c "$0" "$1"',
                os.fspath(src), os.fspath(dst)]
    if engine == "cp-a":
        return [*TIME, "cp", "-a", os.fspath(src), os.fspath(dst)]
    if engine == "cp-a+sync":
        return [*TIME, "sh", "-c", 'cp -a "$0" "$1" && exec sync -f "$1"',
                os.fspath(src), os.fspath(dst)]
    if engine == "floor":
        if not floor_bytes:
            raise SystemExit("the floor contender needs a rebuild run before it in the round")
        return [*TIME, "sh", "-c", 'mkdir "$0" && exec dd if=/dev/zero of="$0/data.mdb" '
                'bs=1M count="$1" conv=fsync status=none', os.fspath(dst),
                str(-(-floor_bytes // (1 << 20)))]
    raise ValueError(engine)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the contender runs under /usr/bin/time)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    except OSError:
        pass
    return out


def _rollup(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return 0, 0
    anon = rss = 0
    for line in text.splitlines():
        if line.startswith("Anonymous:"):
            anon = int(line.split()[1]) * 1024
        elif line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
    return anon, rss


def run_one(engine: str, src: Path, dst: Path, poll: float = 0.0,
            floor_bytes: int = 0) -> dict[str, float]:
    """Run one contender as a process; with ``poll`` > 0, sample its memory every
    ``poll`` seconds (reading smaps_rollup walks the page tables under the
    process's mmap lock, so timed runs do not poll)."""
    if dst.exists():
        shutil.rmtree(dst)
    subprocess.run(["sync"], check=True)
    env = dict(os.environ, PYTHONPATH=os.fspath(ROOT))
    t0 = time.monotonic()
    proc = subprocess.Popen(command(engine, src, dst, floor_bytes), cwd=ROOT, env=env)
    peak_anon = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if poll:
            sizes = [_rollup(p) for p in _tree(proc.pid)]
            peak_anon = max(peak_anon, sum(a for a, _ in sizes))
            time.sleep(poll)
        else:
            time.sleep(0.002)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed with exit code {proc.returncode}")
    st = os.stat(dst / "data.mdb")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss": int(TIME_OUT.read_text().split()[-1]) * 1024,
        "anon": peak_anon,
        "apparent": st.st_size,
        "allocated": st.st_blocks * 512,
    }


def check_same(src: Path, dst: Path) -> bool:
    """mdb_dump -a of source and output print the same named databases (streamed
    and hashed: a dump of dataset A is gigabytes of hex)."""
    import hashlib

    def digest(p: Path) -> str:
        h = hashlib.sha256()
        with subprocess.Popen(["mdb_dump", "-a", os.fspath(p)], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith((b"mapsize=", b"maxreaders=")):
                    h.update(line)
        if proc.returncode != 0:
            raise SystemExit(f"mdb_dump -a {p} failed")
        return h.hexdigest()

    return digest(src) == digest(dst)


def bench(name: str, scale: float, runs: int, only: list[str], verify: bool,
          on: Path | None = None) -> None:
    src = build_dataset(name, scale)
    out = CACHE / "out"
    if on is not None:
        # Source and outputs on the filesystem at ``on`` (a reflink XFS, say):
        # the dataset is copied there once, sparse, with its own blocks.
        placed = on / f"{name}-scale{scale:g}"
        if not (placed / ".complete").exists():
            subprocess.run(["rm", "-rf", os.fspath(placed)], check=True)
            subprocess.run(["cp", "-a", "--reflink=never", os.fspath(src), os.fspath(placed)],
                           check=True)
        src, out = placed, on / "out"
    out.mkdir(exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {e: [] for e in only}
    memory: dict[str, dict[str, float]] = {}
    for rnd in range(runs + 2):
        # round 0 warms the page cache; the last round samples memory (untimed)
        floor_bytes = 0
        for engine in only:
            dst = out / f"{name}-{engine}"
            r = run_one(engine, src, dst, poll=0.02 if rnd == runs + 1 else 0.0,
                        floor_bytes=floor_bytes)
            if engine == "pages":
                floor_bytes = int(r["allocated"])
            elif engine == "rebuild" and "pages" not in only:
                floor_bytes = int(r["apparent"])
            shutil.rmtree(dst)            # frees its page cache before the next run
            if rnd == runs + 1:
                memory[engine] = r
            elif rnd:
                results[engine].append(r)
            print(f"# {name} round {rnd} {engine}: {r['wall']:.2f} s", file=sys.stderr)
    if verify and "rebuild" in only:
        run_one("rebuild", src, out / f"{name}-rebuild")
        print(f"# {name}: mdb_dump -a of rebuild == source: "
              f"{check_same(src, out / f'{name}-rebuild')}", file=sys.stderr)
        shutil.rmtree(out / f"{name}-rebuild")
    st = os.stat(src / "data.mdb")
    from synfast.lmdb import choose, snapshot

    snap = snapshot.open_snapshot(src)
    try:
        facts = choose.engine_facts(snap)
        choice = choose.choose_engine(snap)
    finally:
        snap.close()
    print(f"\n# auto facts for {name}: free_fraction={facts['free_fraction']:.3f} "
          f"rebuild_pages={facts['rebuild_pages']} of total_pages={facts['total_pages']} "
          f"(predicted saving {facts['rebuild_saving']:.1%}) -> auto picks {choice}")
    print(f"\n### Dataset {name} (scale {scale:g}): source {st.st_size / 1e9:.1f} GB apparent, "
          f"{st.st_blocks * 512 / 1e9:.2f} GB allocated; "
          f"{(src / '.complete').read_text().strip()}; median of {runs} runs\n")
    print("| engine | wall s (median) | min..max | CPU s | output GB (allocated) "
          "| peak Anonymous MB (polled) | max RSS MB (time -v, incl. mapped file) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for engine in only:
        rs = results[engine]
        walls = [r["wall"] for r in rs]
        med = statistics.median
        print(f"| {engine} | {med(walls):.2f} | {min(walls):.2f}..{max(walls):.2f} "
              f"| {med([r['cpu'] for r in rs]):.2f} "
              f"| {med([r['allocated'] for r in rs]) / 1e9:.3f} "
              f"| {memory[engine]['anon'] / 1e6:.0f} "
              f"| {max(r['maxrss'] for r in [*rs, memory[engine]]) / 1e6:.0f} |")
    # Per-round ratios: contenders of one round ran back to back, so their
    # ratio moves less than the medians do between rounds.
    print()
    for mine in ("rebuild", "pages"):
        for ref in ("cp-a", "cp-a+sync", "mdb_copy-c", "floor", "floor-layout", "rebuild"):
            if mine in only and ref in only and ref != mine:
                pairs = zip(results[mine], results[ref], strict=True)
                ratios = [r["wall"] / c["wall"] for r, c in pairs]
                print(f"# {name}: {mine} / {ref} per round: "
                      + " ".join(f"{x:.2f}" for x in ratios)
                      + f" (median {statistics.median(ratios):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["A", "B", "Bd", "C", "Ac", "both", "all"],
                    default="all",
                    help="A and B as in docs/reference/lmdb-facts.md; Bd is B with A's "
                    "deletes (what "
                    "the facts' measured B figures imply); C and Ac are B and A rebuilt "
                    "(compact); all = A, B, C, Ac")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(DEFAULT_CONTENDERS),
                    help=f"comma-separated contenders of {', '.join(CONTENDERS)} "
                    "(default: the first five)")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--on", type=Path, metavar="DIR",
                    help="put the source and the outputs under DIR (e.g. a reflink XFS mount)")
    ap.add_argument("--build-only", action="store_true", help="only build the datasets")
    ap.add_argument("--unsteady", action="store_true",
                    help="leave free page reporting as it is (see bench/steady.py)")
    ap.add_argument("--drive", nargs=3, metavar=("ENGINE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        driver(*args.drive)
        return
    only = [e for e in args.only.split(",") if e]
    for e in only:
        if e not in CONTENDERS:
            ap.error(f"unknown contender {e!r}; choose from {', '.join(CONTENDERS)}")
    names = {"both": ["A", "B"], "all": ["A", "B", "C", "Ac"]}.get(args.dataset,
                                                                  [args.dataset])
    if args.build_only:
        for name in names:
            build_dataset(name, args.scale)
        return
    from bench.steady import steady_memory

    with steady_memory(not args.unsteady) as how:
        print(f"# {how}", file=sys.stderr)
        for name in names:
            bench(name, args.scale, args.runs, only, not args.no_verify, args.on)


if __name__ == "__main__":
    main()
