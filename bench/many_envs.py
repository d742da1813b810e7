"""Benchmark: the cost per LMDB environment of ``synfast backup`` and ``synfast verify``.

A large deployment holds hundreds or thousands of environments, most of them
tiny.  This builds (and caches under ``bench/.cache/``) service directories of
N environments laid out like a Cortex's: ``layers/<iden>/layer_v2.lmdb`` and
``views/<iden>/view.lmdb``, each written by py-lmdb as Synapse writes its
slabs (``writemap=True``, map size 1 GiB, so every ``data.mdb`` is a sparse
file of 1 GiB apparent size holding a few pages), each with one named database
of one to three entries and its ``lock.mdb``, plus ``cell.yaml`` and
``cell.guid``.  N = 0 (the same directory without any environment) and N = 1
are the baselines: the first environment also brings costs paid once per
process (the LMDB modules, the worker threads).

Each command is its own process (wall time, CPU time and peak RSS are the
whole process's, interpreter start included): ``synfast backup SRC DST`` with
its defaults (engine auto, checksums, fsync, pages dropped) and then
``synfast verify DST`` of that backup (checksums and a full walk of every
environment).  Rounds are interleaved (every N in one round, the order
alternating), after one warm-up round; the source's data read into the page
cache and ``sync`` before each run; medians.  Peak RSS is GNU time's ``%M``;
``--poll`` also samples private anonymous memory from
``/proc/PID/smaps_rollup`` (costly for the measured process when it has
thousands of mappings, so off by default).

Each backup is written into a freshly made ext4 filesystem (a loop-mounted
image under ``--dir``, made again before every backup, untimed; root only).
Written beside the source instead (``--same-fs``), every run creates inodes
just after the previous one deleted thousands: ext4's inode allocator then
checks every recently deleted inode it passes (``recently_deleted``), and
creating the 10,000 directories of a backup of 5,000 environments took
4.7 s of a 12.4 s run.

The cost per environment is the slope between two sizes, ``(X(b) - X(a)) /
(b - a)``, for every pair of neighbouring sizes from 1 up and from the
smallest size above 0 to the largest.  Each source environment allocates
about 24 KB (its data file's pages); a backup maps every environment at once
(their snapshots are begun together), so those pages count in its RSS.

    python bench/many_envs.py [--sizes 0,1,100,1000,5000] [--runs 3] [--json FILE]
                              [--entries 3] [--poll] [--only backup|verify]
                              [--dir DIR] [--same-fs]
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
SYNFAST = [str(Path(sys.executable).parent / "synfast")]
if not Path(SYNFAST[0]).exists():
    SYNFAST = [sys.executable, "-m", "synfast"]
MAP_SIZE = 1 << 30


def env_paths(n: int, seed: int = 16) -> list[str]:
    """Relative paths of ``n`` environment directories, Cortex-like: three
    layers for every view, each under its own 32-hex-digit iden."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        iden = rng.randbytes(16).hex()
        out.append(f"views/{iden}/view.lmdb" if i % 4 == 3 else f"layers/{iden}/layer_v2.lmdb")
    return out


def build_service(n: int, entries: int) -> Path:
    """The service directory of ``n`` environments (cached; built under a
    temporary name and renamed, so a cached one is always whole)."""
    import lmdb

    svc = CACHE / f"many-envs-{n}-e{entries}"
    if svc.is_dir():
        return svc
    tmp = svc.with_name(svc.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "cell.yaml").write_text("dmon:listen: tcp://0.0.0.0:27492\n")
    (tmp / "cell.guid").write_text(random.Random(n).randbytes(16).hex())
    rng = random.Random(n * 7 + entries)
    for i, rel in enumerate(env_paths(n)):
        p = tmp / rel
        p.mkdir(parents=True)
        env = lmdb.open(os.fspath(p), map_size=MAP_SIZE, writemap=True, max_dbs=8)
        db = env.open_db(b"nodes")
        with env.begin(write=True) as txn:
            for k in range(i % entries + 1):
                txn.put(b"%08d" % k, rng.randbytes(100), db=db)
        env.close()
        if i % 500 == 499:
            print(f"  built {i + 1}/{n} environments", file=sys.stderr, flush=True)
    tmp.rename(svc)
    return svc


def allocated(root: Path, name: str | None = None) -> int:
    """Bytes allocated under ``root`` (only files called ``name`` when given)."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for f in names:
            if name is None or f == name:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def warm(root: Path) -> None:
    """Read every data extent of every file under ``root`` (holes are skipped:
    a 1 GiB sparse data file is read as the few pages it holds)."""
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))
    from bench.sparse_copy import warm as warm_file

    for dirpath, _dirs, names in os.walk(root):
        for f in names:
            warm_file(Path(dirpath) / f)


def fresh_fs(image: Path, mnt: Path) -> None:
    """A new, empty ext4 filesystem on ``image``, mounted on ``mnt``."""
    subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    mnt.mkdir(parents=True, exist_ok=True)
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(4 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_once(cmd: list[str], poll: bool) -> dict:
    """Wall and CPU time (wait4), peak RSS (GNU time), and with ``poll`` the
    peak of private anonymous memory, of one command."""
    rss_file = CACHE / "many-envs-time.out"
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd],
                            stdout=subprocess.DEVNULL)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            try:
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                peak[0] = max(peak[0], _anon_kib(int(k)))

    poller = threading.Thread(target=sample, daemon=True) if poll else None
    if poller:
        poller.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    if poller:
        poller.join()
    code = os.waitstatus_to_exitcode(status)
    rss = int(rss_file.read_text().split()[-1])
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime,
            "sys": ru.ru_stime, "maxrss_kib": rss, "anon_kib": peak[0] if poll else None,
            "rc": code}


def one_round(services: dict[int, Path], order: list[int], out_root: Path, what: list[str],
              poll: bool, image: Path | None) -> dict[int, dict[str, dict]]:
    """Back up (and verify) every service once, in ``order``, each backup into a
    fresh filesystem on ``image`` mounted on ``out_root`` (or, without one,
    into ``out_root`` itself)."""
    got: dict[int, dict[str, dict]] = {}
    for n in order:
        dst = out_root / f"backup-{n}"
        if image is not None:
            fresh_fs(image, out_root)
        else:
            shutil.rmtree(dst, ignore_errors=True)
        warm(services[n])
        os.sync()
        got[n] = {}
        # The backup runs in every round: verify needs one.
        b = run_once([*SYNFAST, "backup", "--quiet", str(services[n]), str(dst)], poll)
        if b["rc"] != 0:
            raise SystemExit(f"synfast backup of {services[n]} failed ({b['rc']})")
        with open(dst / ".synfast" / "manifest.json") as f:
            envs = len(json.load(f)["environments"])
        if envs != n:
            raise SystemExit(f"the backup of {services[n]} lists {envs} environments")
        if "backup" in what:
            got[n]["backup"] = b
        if "verify" in what:
            os.sync()
            v = run_once([*SYNFAST, "verify", "--quiet", str(dst)], poll)
            if v["rc"] != 0:
                raise SystemExit(f"synfast verify {dst} found problems ({v['rc']})")
            got[n]["verify"] = v
        if image is None:
            shutil.rmtree(dst, ignore_errors=True)
    return got


def slope(a: tuple[int, float], b: tuple[int, float]) -> float:
    return (b[1] - a[1]) / (b[0] - a[0])


def report(sizes: list[int], med: dict[str, dict[int, dict[str, float]]],
           data_kib: dict[int, float], runs: int) -> dict:
    """Print the tables; return the per-environment figures."""
    print(f"\n{runs} counted rounds (medians); one named database of a few entries per "
          "environment, map size 1 GiB\n")
    print("| command | N | wall | CPU | peak RSS | anon peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for cmd, by_n in med.items():
        for n in sizes:
            m = by_n[n]
            anon = f"{m['anon_kib'] / 1024:.0f} MiB" if m.get("anon_kib") else "-"
            print(f"| {cmd} | {n} | {m['wall']:.3f} s | {m['cpu']:.3f} s | "
                  f"{m['maxrss_kib'] / 1024:.0f} MiB | {anon} |")
    nonzero = [n for n in sizes if n > 0]
    pairs = list(zip(nonzero, nonzero[1:], strict=False))
    if len(nonzero) >= 3:
        pairs.append((nonzero[0], nonzero[-1]))
    if not pairs and len(sizes) == 2:
        pairs = [(sizes[0], sizes[1])]
    per: dict = {}
    print("\n| command | between N | wall ms/env | CPU ms/env | peak RSS KB/env |")
    print("|---|---|---:|---:|---:|")
    for cmd, by_n in med.items():
        per[cmd] = {}
        for a, b in pairs:
            w = slope((a, by_n[a]["wall"]), (b, by_n[b]["wall"])) * 1000
            c = slope((a, by_n[a]["cpu"]), (b, by_n[b]["cpu"])) * 1000
            r = slope((a, by_n[a]["maxrss_kib"]), (b, by_n[b]["maxrss_kib"])) * 1.024
            per[cmd][f"{a}-{b}"] = {"wall_ms": w, "cpu_ms": c, "rss_kb": r}
            print(f"| {cmd} | {a} to {b} | {w:.2f} | {c:.2f} | {r:.1f} |")
    if nonzero:
        per_env = data_kib[nonzero[-1]] / nonzero[-1] * 1.024
        print(f"\neach source environment allocates {per_env:.1f} KB (its data file)")
    for n in (0, 1):
        if n in sizes:
            print(f"baseline (N = {n}): " + "; ".join(
                f"{cmd} {by_n[n]['wall']:.3f} s, {by_n[n]['maxrss_kib'] / 1024:.0f} MiB"
                for cmd, by_n in med.items()))
    return per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,1,100,1000,5000",
                    help="comma-separated numbers of environments (0: the baseline)")
    ap.add_argument("--runs", type=int, default=3, help="counted rounds, after one warm-up")
    ap.add_argument("--entries", type=int, default=3,
                    help="environment i holds i %% ENTRIES + 1 entries")
    ap.add_argument("--only", choices=("backup", "verify"), default=None)
    ap.add_argument("--poll", action="store_true",
                    help="also sample anonymous memory from /proc/PID/smaps_rollup")
    ap.add_argument("--dir", type=Path, default=CACHE,
                    help="where the filesystem image and its mount point are made")
    ap.add_argument("--same-fs", action="store_true",
                    help="write the backups beside the sources, not into a fresh ext4 each run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    what = [args.only] if args.only else ["backup", "verify"]
    CACHE.mkdir(parents=True, exist_ok=True)
    services = {n: build_service(n, args.entries) for n in sizes}
    data_kib = {n: allocated(services[n], "data.mdb") / 1024 for n in sizes}
    if args.same_fs:
        image, out = None, CACHE / "many-envs-out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    else:
        if os.geteuid() != 0:
            raise SystemExit("a fresh filesystem per run needs root (mount); or pass --same-fs")
        image, out = args.dir / "many-envs.ext4", args.dir / "many-envs-mnt"
    results: dict[str, dict[int, list[dict]]] = {c: {n: [] for n in sizes} for c in what}
    try:
        for rnd in range(args.runs + 1):  # round 0 is the warm-up
            order = sizes if rnd % 2 == 0 else sizes[::-1]
            got = one_round(services, order, out, what, args.poll, image)
            line = []
            for n in order:
                for c in what:
                    line.append(f"{c} {n} {got[n][c]['wall']:.2f}s "
                                f"{got[n][c]['maxrss_kib'] / 1024:.0f}MiB")
                    if rnd:
                        results[c][n].append(got[n][c])
            print(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: " + ", ".join(line),
                  file=sys.stderr, flush=True)
    finally:
        if image is not None:
            subprocess.run(["umount", str(out)], stderr=subprocess.DEVNULL, check=False)
            image.unlink(missing_ok=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
    med = {c: {n: {k: statistics.median(r[k] for r in rs)
                   for k in ("wall", "cpu", "maxrss_kib")} for n, rs in by_n.items()}
           for c, by_n in results.items()}
    if args.poll:
        for c, by_n in results.items():
            for n, rs in by_n.items():
                med[c][n]["anon_kib"] = statistics.median(r["anon_kib"] for r in rs)
    per = report(sizes, med, data_kib, args.runs)
    if args.json:
        args.json.write_text(json.dumps({
            "sizes": sizes, "entries": args.entries, "runs": args.runs,
            "data_kib": data_kib, "medians": med, "per_environment": per,
            "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
