"""Benchmark: copying one big sparse file (the foundation issue's target).

A file of 16 GiB apparent size holding 512 MiB of data in extents of 64 KiB to
1 MiB, copied by ``synfast copy``, ``cp --sparse=auto``, ``cp --sparse=never``
and Python's ``shutil.copyfile``.  Whole-process wall time (the interpreter's
start-up counts against synfast, as it would for a user), page cache warm,
contenders interleaved round by round (order alternating, ``sync`` before each
run so that one contender's writeback does not slow the next) after a warm-up
round, medians, and the ratio against cp computed within each round.  Every output is checked for
byte equality (through SEEK_DATA extents, so no hole is read) and its allocated
size reported.

As root it first drops the clean page cache (``sync``, then ``1`` into
``/proc/sys/vm/drop_caches``; ``--keep-caches`` skips that) and then warms the
source: with memory full of other files' pages every allocation has to reclaim
first, which slows each contender by a different amount and makes the ratios
depend on what ran before.

    python bench/sparse_copy.py [--runs 3] [--scale 1.0] [--dir DIR] [--json FILE]
                                [--skip NAMES] [--keep-caches]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNFAST = [str(Path(sys.executable).parent / "synfast")]
if not Path(SYNFAST[0]).exists():
    SYNFAST = [sys.executable, "-m", "synfast"]


def make_sparse(path: Path, apparent: int, data: int, seed: int = 2) -> None:
    """Random extents of 64 KiB..1 MiB (4 KiB aligned) spread over the file."""
    if path.exists() and path.stat().st_size == apparent:
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written, sizes = 0, []
        while written < data:
            n = min(rng.randrange(64 << 10, (1 << 20) + 1, 4096), data - written)
            sizes.append(n)
            written += n
        slot = apparent // len(sizes)
        for i, n in enumerate(sizes):
            off = i * slot + rng.randrange(0, max(1, slot - n), 4096)
            os.pwrite(fd, rng.randbytes(n), off)
        os.ftruncate(fd, apparent)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def data_extents(path: Path) -> list[tuple[int, int]]:
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            h = min(os.lseek(fd, d, os.SEEK_HOLE), size)
            out.append((d, h))
            pos = h
    finally:
        os.close(fd)
    return out


def warm(path: Path) -> None:
    """Read every data extent of ``path`` into the page cache."""
    with open(path, "rb") as f:
        for s, e in data_extents(path):
            f.seek(s)
            while s < e:
                n = len(f.read(min(8 << 20, e - s)))
                if not n:
                    break
                s += n


def same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    spans: list[list[int]] = []
    for s, e in sorted(data_extents(a) + data_extents(b)):
        if spans and s <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for s, e in spans:
            fa.seek(s)
            fb.seek(s)
            while s < e:
                n = min(8 << 20, e - s)
                if fa.read(n) != fb.read(n):
                    return False
                s += n
    return True


def contenders(src: Path, dst: Path) -> dict[str, list[str]]:
    return {
        "synfast copy": [*SYNFAST, "copy", "--quiet", str(src), str(dst)],
        "synfast copy --copy-file-range=always": [
            *SYNFAST, "copy", "--quiet", "--copy-file-range=always", str(src), str(dst)],
        "cp --sparse=auto": ["cp", "--sparse=auto", str(src), str(dst)],
        "cp --sparse=never": ["cp", "--sparse=never", str(src), str(dst)],
        "shutil.copyfile": [sys.executable, "-c",
                            "import shutil,sys; shutil.copyfile(sys.argv[1], sys.argv[2])",
                            str(src), str(dst)],
    }


def run_once(cmd: list[str]) -> dict[str, float]:
    """Wall and CPU time of ``cmd`` (wait4), and its peak RSS as GNU time reports
    it: the RSS wait4 gives for a child of this process counts this process's
    own pages from before the child's exec."""
    rss_file = ROOT / "bench" / ".cache" / "sparse-copy-time.out"
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd])
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with {status}")
    rss = int(rss_file.read_text().split()[-1])
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of the 16 GiB / 512 MiB file to use (0.01 for a quick run)")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench" / ".cache")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip", default="", help="comma-separated contender names to leave out")
    ap.add_argument("--keep-caches", action="store_true",
                    help="do not drop the page cache first (it is dropped only as root)")
    ap.add_argument("--unsteady", action="store_true",
                    help="leave free page reporting as it is (see bench/steady.py)")
    args = ap.parse_args()
    sys.path.insert(0, os.fspath(ROOT))
    from bench.steady import drop_page_cache, steady_memory

    if not args.keep_caches and os.geteuid() == 0:
        drop_page_cache()
    with steady_memory(not args.unsteady, drop_caches=False) as how:
        print(f"# {how}", file=sys.stderr)
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    """Build the source file if needed, run the rounds, print the table."""
    args.dir.mkdir(parents=True, exist_ok=True)
    apparent, data = int((16 << 30) * args.scale), int((512 << 20) * args.scale)
    src = args.dir / f"sparse-{apparent}-{data}.bin"
    make_sparse(src, apparent, data)
    dst = args.dir / "sparse-copy.bin"
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    cmds = {n: c for n, c in contenders(src, dst).items() if n not in skip}
    results: dict[str, list[dict]] = {name: [] for name in cmds}
    ratios: dict[str, list[float]] = {name: [] for name in cmds}
    for rnd in range(args.runs + 1):  # round 0 is the warm-up
        walls = {}
        names = list(cmds)
        if rnd % 2:  # alternate the order so no contender always follows the same one
            names.reverse()
        for name in names:
            cmd = cmds[name]
            if dst.exists():
                dst.unlink()
            # Flush the previous run's writes first (untimed): otherwise its
            # writeback throttles whoever runs next.  Then re-read the source's
            # data: 16 GiB written by the dense contenders evicts it otherwise,
            # and "page cache warm" would hold only for some runs.
            os.sync()
            warm(src)
            m = run_once(cmd)
            st = dst.stat()
            m["allocated"] = st.st_blocks * 512
            m["correct"] = same_content(src, dst)
            dst.unlink()
            walls[name] = m["wall"]
            if rnd:
                results[name].append(m)
        if rnd:
            for name in cmds:
                ratios[name].append(walls[name] / walls["cp --sparse=auto"])
        print(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: " +
              ", ".join(f"{n} {w:.2f}s" for n, w in walls.items()), file=sys.stderr)
    src_alloc = src.stat().st_blocks * 512
    print(f"\nsource: {apparent / 2**30:.2f} GiB apparent, {data / 2**20:.0f} MiB data, "
          f"{src_alloc / 2**20:.0f} MiB allocated; {args.runs} counted runs, warm cache\n")
    print("| contender | median wall | vs cp | median CPU | peak RSS | allocated | correct |")
    print("|---|---:|---:|---:|---:|---:|---|")
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        ratio = statistics.median(ratios[name])
        cpu = statistics.median(r["cpu"] for r in runs)
        rss = max(r["maxrss_kib"] for r in runs)
        alloc = max(r["allocated"] for r in runs)
        ok = all(r["correct"] for r in runs)
        summary[name] = {"median_wall": wall, "ratio_vs_cp": ratio, "median_cpu": cpu,
                         "peak_rss_kib": rss, "allocated": alloc, "correct": ok, "runs": runs}
        print(f"| {name} | {wall:.3f} s | {ratio:.2f}x | {cpu:.3f} s | {rss / 1024:.0f} MiB | "
              f"{alloc / 2**20:.0f} MiB | {'yes' if ok else 'WRONG'} |")
    if args.json:
        args.json.write_text(json.dumps({"apparent": apparent, "data": data,
                                         "source_allocated": src_alloc, "results": summary},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
