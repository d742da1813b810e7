"""Benchmark: ``synfast defrag`` against the Synapse guide's way, a cold backup
deployed in place (``synfast backup`` then ``synfast restore``).

The service directory holds datasets A and B of docs/reference/lmdb-facts.md
(built and cached by ``bench/lmdb_engines.py``), copied afresh (``cp -a``,
holes kept) before every run, so that an old data file the contender lets go
is really freed, as it would be on a service.  Measured per run, each
contender in its own process, page cache warm:

- wall and CPU time (``/usr/bin/time``);
- peak extra space: the filesystem's used blocks (``statvfs``), polled every
  10 ms, above what they were before the run;
- the environments' allocated size before and after.

Contenders: ``defrag`` (old data files kept beside the service, the default),
``defrag --no-keep``, and ``backup+restore`` (``synfast backup SVC BK`` then
``synfast restore --no-verify BK SVC``, the old directory moved aside).

    python bench/defrag.py [--runs 3] [--scale 1.0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
SYNFAST = str(Path(sys.executable).parent / "synfast")


def build(scale: float) -> Path:
    """The pristine service directory (links to the cached datasets)."""
    sys.path.insert(0, os.fspath(ROOT))
    from bench.lmdb_engines import build_dataset

    base = CACHE / f"defrag-base-scale{scale:g}"
    if not (base / ".complete").exists():
        shutil.rmtree(base, ignore_errors=True)
        for name in ("A", "B"):
            src = build_dataset(name, scale)
            env = base / "layers" / f"{name.lower()}.lmdb"
            env.mkdir(parents=True)
            os.link(src / "data.mdb", env / "data.mdb")
        (base / "cell.yaml").write_text("name: bench\n")
        (base / ".complete").write_text("")
    return base


def fresh(base: Path, work: Path) -> Path:
    """A copy of ``base`` (the service) in an empty ``work``, made durable."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    svc = work / "svc"
    subprocess.run(["cp", "-a", "--sparse=always", str(base), str(svc)], check=True)
    (svc / ".complete").unlink()
    subprocess.run(["sync"], check=True)
    return svc


def env_bytes(svc: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in svc.rglob("data.mdb"))


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def timed(cmds: list[list[str]], where: Path) -> dict:
    """Run ``cmds`` one after another; wall, CPU and peak extra space."""
    base, peak, stop = used(where), [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], used(where) - base)
            stop.wait(0.01)

    t = threading.Thread(target=poll)
    t.start()
    wall = cpu = 0.0
    try:
        for cmd in cmds:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            _, status, ru = os.wait4(proc.pid, 0)
            wall += time.perf_counter() - t0
            cpu += ru.ru_utime + ru.ru_stime
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{cmd} failed with {status}")
    finally:
        stop.set()
        t.join()
    return {"wall": wall, "cpu": cpu, "peak_extra": max(peak[0], used(where) - base)}


def contenders(svc: Path) -> dict[str, list[list[str]]]:
    bk = svc.with_name("bk")
    return {
        "defrag": [[SYNFAST, "defrag", "--quiet", str(svc)]],
        "defrag --no-keep": [[SYNFAST, "defrag", "--quiet", "--no-keep", str(svc)]],
        "backup+restore": [[SYNFAST, "backup", "--quiet", str(svc), str(bk)],
                           [SYNFAST, "restore", "--no-verify", str(bk), str(svc)]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    base = build(args.scale)
    work = CACHE / "defrag-work"
    before = env_bytes(base)
    results: dict[str, list[dict]] = {}
    for rnd in range(args.runs):
        names = list(contenders(work / "svc"))
        if rnd % 2:
            names.reverse()
        for name in names:
            svc = fresh(base, work)
            r = timed(contenders(svc)[name], work)
            r["after"] = env_bytes(svc)
            results.setdefault(name, []).append(r)
            print(f"round {rnd + 1}: {name}: {r['wall']:.2f} s, cpu {r['cpu']:.2f} s, "
                  f"peak extra {r['peak_extra'] / 1e9:.2f} GB, after {r['after'] / 1e9:.2f} GB",
                  file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nservice: datasets A and B at scale {args.scale:g}, environments "
          f"{before / 1e9:.2f} GB allocated; medians of {args.runs} rounds\n")
    print("| way | wall | CPU | peak extra space | environments after |")
    print("|---|---:|---:|---:|---:|")
    table = {}
    for name, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        table[name] = med
        print(f"| {name} | {med['wall']:.2f} s | {med['cpu']:.2f} s | "
              f"{med['peak_extra'] / 1e9:.2f} GB | {med['after'] / 1e9:.2f} GB |")
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "before": before,
                                         "results": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
