"""Benchmark: a directory of many small files, copied and backed up.

20,000 files of 200 to 8,000 bytes (random content) in 200 subdirectories,
about 118 MB allocated: the per-file cost of ``synfast copy`` against ``cp -a``,
and of ``synfast backup`` (checksums, durable) against ``cp -a`` followed by
``sync``.  Whole-process wall and CPU time (start-up counts), source warm in
the page cache, contenders interleaved round by round with the order
alternating, one warm-up round, medians, and ratios computed within each round.

Each run writes into a freshly made ext4 filesystem (a loop-mounted image
under ``--dir``, made again before every run, untimed).  Written into the same
directory run after run, ext4's inode allocator slows down with every tree
deleted before (``find_inode_bit``, ``recently_deleted``): ``cp -a`` of this
tree measured anywhere from 0.7 s to 15 s on one disk, which drowns any
comparison.  ``--same-fs`` writes beside the source instead.  Every copy is compared with
the source (content, mode, mtime) and every backup verified by
``synfast verify``.

    python bench/small_files.py [--runs 7] [--files 20000] [--dir DIR] [--json FILE]
                                [--same-fs]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNFAST = str(Path(sys.executable).parent / "synfast")


def make_tree(root: Path, files: int, dirs: int, seed: int = 15) -> None:
    """``files`` files of 200..8000 random bytes dealt over ``dirs`` directories."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.dat")) == files:
        return
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    for d in range(dirs):
        (tmp / f"d{d:03}").mkdir(parents=True)
    for i in range(files):
        (tmp / f"d{i % dirs:03}" / f"f{i:05}.dat").write_bytes(rng.randbytes(
            rng.randrange(200, 8001)))
    tmp.rename(root)


def warm(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            p.read_bytes()


def same_tree(a: Path, b: Path) -> bool:
    for p in a.rglob("*"):
        q = b / p.relative_to(a)
        sa, sb = p.lstat(), q.lstat()
        if (sa.st_mode, sa.st_mtime_ns) != (sb.st_mode, sb.st_mtime_ns):
            return False
        if p.is_file() and p.read_bytes() != q.read_bytes():
            return False
    return True


def fresh_fs(image: Path, mnt: Path) -> None:
    """A new, empty ext4 filesystem on ``image``, mounted on ``mnt``."""
    subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    mnt.mkdir(exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(2 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)


def run_once(cmd: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {status}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime,
            "sys": ru.ru_stime}


def contenders(src: Path, out: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (what its output is, command)."""
    return {
        "cp -a": ("copy", ["cp", "-a", str(src), str(out)]),
        "synfast copy": ("copy", [SYNFAST, "copy", "--quiet", str(src), str(out)]),
        "cp -a + sync": ("copy", ["sh", "-c", f"cp -a '{src}' '{out}' && sync"]),
        "synfast backup": ("backup", [SYNFAST, "backup", "--quiet", str(src), str(out)]),
        "synfast backup --no-fsync --no-checksum": (
            "backup", [SYNFAST, "backup", "--quiet", "--no-fsync", "--no-checksum", str(src),
                       str(out)]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--dirs", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=ROOT / "bench" / ".cache")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip", default="", help="comma-separated contender names to leave out")
    ap.add_argument("--same-fs", action="store_true",
                    help="write beside the source instead of into a fresh ext4 each run")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / f"small-files-{args.files}"
    make_tree(src, args.files, args.dirs)
    image, mnt = args.dir / "small-files.ext4", args.dir / "small-files-mnt"
    out = args.dir / "small-files-out" if args.same_fs else mnt / "out"
    try:
        return measure(args, src, out, image, mnt)
    finally:
        if not args.same_fs:
            subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL, check=False)
            image.unlink(missing_ok=True)


def measure(args: argparse.Namespace, src: Path, out: Path, image: Path, mnt: Path) -> int:
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    cmds = {n: c for n, c in contenders(src, out).items() if n not in skip}
    results: dict[str, list[dict]] = {n: [] for n in cmds}
    ratios: dict[str, list[float]] = {n: [] for n in cmds}
    peer = {"synfast copy": "cp -a", "synfast backup": "cp -a + sync",
            "synfast backup --no-fsync --no-checksum": "cp -a + sync"}
    for rnd in range(args.runs + 1):
        names = list(cmds)
        if rnd % 2:
            names.reverse()
        walls: dict[str, float] = {}
        for name in names:
            kind, cmd = cmds[name]
            if args.same_fs:
                shutil.rmtree(out, ignore_errors=True)
            else:
                fresh_fs(image, mnt)
            os.sync()
            warm(src)
            m = run_once(cmd)
            if kind == "copy":
                m["correct"] = same_tree(src, out)
            else:
                m["correct"] = subprocess.run([SYNFAST, "verify", "--quiet", str(out)],
                                              stdout=subprocess.DEVNULL).returncode == 0
            walls[name] = m["wall"]
            if rnd:
                results[name].append(m)
        shutil.rmtree(out, ignore_errors=True)
        if rnd:
            for name, other in peer.items():
                if name in walls and other in walls:
                    ratios[name].append(walls[name] / walls[other])
        print(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: "
              + ", ".join(f"{n} {w:.2f}s" for n, w in walls.items()), file=sys.stderr)
    where = "beside the source" if args.same_fs else "into a fresh ext4 each run"
    print(f"\n{args.files} files in {args.dirs} directories, {args.runs} counted rounds, "
          f"written {where}\n")
    print("| contender | median wall | vs peer | median CPU (user+sys) | CPU per file | correct |")
    print("|---|---:|---:|---:|---:|---|")
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        user = statistics.median(r["user"] for r in runs)
        sys_ = statistics.median(r["sys"] for r in runs)
        ratio = statistics.median(ratios[name]) if ratios[name] else None
        ok = all(r["correct"] for r in runs)
        summary[name] = {"median_wall": wall, "median_cpu": cpu, "ratio": ratio,
                         "peer": peer.get(name), "correct": ok, "runs": runs}
        vs = f"{ratio:.2f}x {peer[name]}" if ratio is not None else ""
        print(f"| {name} | {wall:.2f} s | {vs} | {cpu:.2f} s ({user:.2f}+{sys_:.2f}) | "
              f"{cpu / args.files * 1000:.3f} ms | {'yes' if ok else 'WRONG'} |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
