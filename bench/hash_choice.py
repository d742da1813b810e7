"""Benchmark: which hash the backup checksum should use (Python-level figures).

Hashes random data held in memory (and, for synfast's own native hasher, a file
in the page cache) with each candidate and prints throughput in GB/s (10^9
bytes/s), the median of ``--runs`` runs (5) after one warm-up run, each run over
``--size`` MiB (1024):

- ``stream 64K``: one hasher fed 64 KiB ``update`` calls, one thread;
- ``stream D+64K``: the canonical form's per-block pattern, ``update(b"D")``
  then ``update(block)`` for every 64 KiB block, one thread;
- ``stream 1M``: one hasher fed 1 MiB ``update`` calls (the per-call overhead
  is the difference from ``stream 64K``), one thread;
- ``2T seg 64K``: the data cut into 64 MiB segments, each hashed by its own
  hasher with 64 KiB updates, the segments dealt to 2 threads (the work runs in
  parallel only where the binding releases the GIL); aggregate GB/s;
- ``2T seg 1x``: the same, each segment given to its hasher in one ``update``.

Candidates (each skipped, with a note, when it cannot be imported):

- ``xxh3-128``: ``xxhash.xxh3_128`` from the PyPI ``xxhash`` package (which
  bundles its own copy of libxxhash; the production path would be a Cython
  extension linking the system libxxhash found by pkg-config, measured from C
  separately);
- ``blake3``: ``blake3.blake3(max_threads=1)`` from the PyPI ``blake3``
  package; plus ``blake3 mt``: one ``update`` of each whole 64 MiB segment with
  ``max_threads=blake3.AUTO`` (its own threads), one segment at a time;
- ``blake2b-256``, ``sha256``: :mod:`hashlib` (OpenSSL; SHA-256 uses the SHA
  extensions where the CPU has ``sha_ni``);
- reference, synfast's current hasher: ``synfast native`` is
  ``_hash.segment_digests`` (one thread, four segments at a time, AVX2) and
  ``checksum.checksum_fd`` (its thread pool, 2 threads here) on a file of the
  same random bytes in the page cache (so it includes the ``pread`` copies);
  ``synfast stream`` is :class:`synfast.backup.checksum.StreamChecksum` (hashlib
  BLAKE2b with the zero-block test) on the in-memory bytes, inline and with two
  single-thread executors.

Set up the candidates in a venv of their own, so the project's venv is left
alone, and reach synfast through ``PYTHONPATH``::

    python3 -m venv /work/hash-scratch/venv
    /work/hash-scratch/venv/bin/pip install xxhash blake3
    cd /work/main && PYTHONPATH=/work/main /work/hash-scratch/venv/bin/python \\
        bench/hash_choice.py [--size 1024] [--runs 5] [--dir DIR] [--only NAMES]

(``.venv/bin/python bench/hash_choice.py`` also runs, with only the hashlib and
synfast rows.)  ``--dir`` is where the page-cache file for the synfast native
rows is written (the system's temporary directory by default; removed at the
end).  Run nothing else heavy at the same time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = 1 << 16
MIB = 1 << 20
SEGMENT = 64 * MIB
THREADS = 2


def cpu_info() -> str:
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "sha_ni", "avx512f", "avx512vl", "vaes"]
    have = " ".join(f"{w}={'yes' if w in flags else 'no'}" for w in wanted)
    return f"{model}, {os.cpu_count()} CPUs; {have}"


def candidates() -> tuple[dict[str, Callable[[], Any]], list[str]]:
    """Hasher factories by name, and notes on what was skipped."""
    found: dict[str, Callable[[], Any]] = {}
    notes: list[str] = []
    try:
        import xxhash

        found["xxh3-128"] = xxhash.xxh3_128
        notes.append(f"xxhash {xxhash.VERSION} (bundled libxxhash {xxhash.XXHASH_VERSION})")
    except ImportError:
        notes.append("skipped xxh3-128: `pip install xxhash` (not importable)")
    try:
        import blake3

        found["blake3"] = lambda: blake3.blake3(max_threads=1)
        notes.append(f"blake3 {getattr(blake3, '__version__', '?')}")
    except ImportError:
        notes.append("skipped blake3: `pip install blake3` (not importable)")
    found["blake2b-256"] = lambda: hashlib.blake2b(digest_size=32)
    found["sha256"] = hashlib.sha256
    notes.append(f"hashlib on {ssl.OPENSSL_VERSION}")
    return found, notes


def gbps(nbytes: int, fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times) / 1e9


def stream(make: Callable[[], Any], mv: memoryview, chunk: int, prefix: bool) -> bytes:
    h = make()
    if prefix:
        for i in range(0, len(mv), chunk):
            h.update(b"D")
            h.update(mv[i:i + chunk])
    else:
        for i in range(0, len(mv), chunk):
            h.update(mv[i:i + chunk])
    return h.digest()


def segments(mv: memoryview) -> list[memoryview]:
    return [mv[i:i + SEGMENT] for i in range(0, len(mv), SEGMENT)]


def parallel(pool: ThreadPoolExecutor, make: Callable[[], Any], mv: memoryview,
             chunk: int) -> list[bytes]:
    return list(pool.map(lambda seg: stream(make, seg, chunk, False), segments(mv)))


def bench_candidates(names: dict[str, Callable[[], Any]], mv: memoryview, runs: int,
                     pool: ThreadPoolExecutor) -> list[tuple[str, str, float]]:
    rows = []
    n = len(mv)
    patterns: list[tuple[str, Callable[[Callable[[], Any]], object]]] = [
        ("stream 64K", lambda m: stream(m, mv, BLOCK, False)),
        ("stream D+64K", lambda m: stream(m, mv, BLOCK, True)),
        ("stream 1M", lambda m: stream(m, mv, MIB, False)),
        ("2T seg 64K", lambda m: parallel(pool, m, mv, BLOCK)),
        ("2T seg 1x", lambda m: parallel(pool, m, mv, SEGMENT)),
    ]
    for name, make in names.items():
        for label, fn in patterns:
            rows.append((name, label, gbps(n, lambda f=fn, m=make: f(m), runs)))
        print(*(f"{r[0]:16} {r[1]:18} {r[2]:7.2f}" for r in rows[-len(patterns):]),
              sep="\n", flush=True)
    return rows


def bench_blake3_mt(mv: memoryview, runs: int) -> list[tuple[str, str, float]]:
    import blake3

    rows = []
    for label, threads in (("1x64M AUTO", blake3.blake3.AUTO), ("1x64M max 2", 2)):
        def run(t: int = threads) -> list[bytes]:
            return [blake3.blake3(seg, max_threads=t).digest() for seg in segments(mv)]
        rows.append(("blake3 mt", label, gbps(len(mv), run, runs)))
        print(f"{rows[-1][0]:16} {rows[-1][1]:18} {rows[-1][2]:7.2f}", flush=True)
    return rows


def bench_synfast(mv: memoryview, runs: int, where: str) -> list[tuple[str, str, float]]:
    from synfast.backup import _hash, checksum

    rows = []
    n = len(mv)
    fd, path = tempfile.mkstemp(prefix="hash_choice.", dir=where)
    try:
        view = mv
        while view:
            view = view[os.write(fd, view):]
        segs = checksum.segments_of(fd, n)

        def one() -> object:
            return _hash.segment_digests(fd, segs)

        def pooled() -> str:
            return checksum.checksum_fd(fd)

        rows.append(("synfast native", "file 1T", gbps(n, one, runs)))
        rows.append(("synfast native", "file checksum_fd", gbps(n, pooled, runs)))
    finally:
        os.close(fd)
        os.unlink(path)

    def inline() -> str:
        s = checksum.StreamChecksum()
        s.data(0, mv)
        return s.finish(n)

    pools = [ThreadPoolExecutor(1) for _ in range(THREADS)]

    def threaded() -> str:
        s = checksum.StreamChecksum(lambda i, fn, *a: pools[i % THREADS].submit(fn, *a))
        for f in s.data(0, mv):
            f.result()
        return s.finish(n)

    try:
        rows.append(("synfast stream", "StreamChecksum 1T", gbps(n, inline, runs)))
        rows.append(("synfast stream", "StreamChecksum 2T", gbps(n, threaded, runs)))
    finally:
        for p in pools:
            p.shutdown()
    for r in rows:
        print(f"{r[0]:16} {r[1]:18} {r[2]:7.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", type=int, default=1024, help="MiB of data (a multiple of 64)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the page-cache file goes")
    ap.add_argument("--only", default="", help="comma-separated candidate names to keep")
    args = ap.parse_args(argv)
    if args.size <= 0 or args.size % 64:
        ap.error("--size must be a positive multiple of 64")

    names, notes = candidates()
    only = {s for s in args.only.split(",") if s}
    print(f"CPU: {cpu_info()}")
    print(f"Python {platform.python_version()}; " + "; ".join(notes))
    data = os.urandom(args.size * MIB)
    mv = memoryview(data)
    print(f"{args.size} MiB random in memory, median of {args.runs} runs, GB/s\n")
    print(f"{'candidate':16} {'pattern':18} {'GB/s':>7}")

    def keep(name: str) -> bool:
        return not only or name in only

    rows = []
    with ThreadPoolExecutor(THREADS) as pool:
        rows += bench_candidates({k: v for k, v in names.items() if keep(k)}, mv, args.runs, pool)
    if keep("blake3 mt"):
        if "blake3" in names:
            rows += bench_blake3_mt(mv, args.runs)
        else:
            print("skipped blake3 mt: blake3 not importable")
    if keep("synfast"):
        try:
            rows += bench_synfast(mv, args.runs, args.dir)
        except ImportError as e:
            print(f"skipped synfast reference: {e} (run with PYTHONPATH at the project root)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
