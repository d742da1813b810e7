"""How fast ``synfast backup SRC -`` streams a service directory, against GNU tar.

Measures, on service directories whose files are in the page cache, interleaved
rounds of

- ``a``: ``synfast backup SRC - -q | cat > /dev/null``
- ``b``: ``synfast backup SRC - -q --no-checksum | cat > /dev/null``
- ``c``: ``tar --sparse --format=posix -cf - -C SRC . | cat > /dev/null``
- ``t``: ``tar --sparse --format=posix -cf - -C SRC . > /dev/null``, the "tar
  shortcut": GNU tar notices that its archive is /dev/null and reads no file data
  (it still walks the holes), so this is not a read time
- ``d``: ``synfast backup SRC - -q > /dev/null`` (no pipe: synfast's writes cost
  nothing, the rest is reading, hashing and Python)

Round 0 is a warm-up (its piped variants read into ``wc -c`` to count the stream's
bytes) and is discarded; each later round runs every variant once, the order
rotated by one from round to round.  Per run: the wall time (first process
started to last one reaped), the CPU (user + sys) of the producer (synfast or tar)
and of ``cat`` from ``os.wait4``, and the producer's peak RSS (VmHWM, from
``/proc/PID/status``), peak private (Private_Clean + Private_Dirty) and anonymous
memory (``/proc/PID/smaps_rollup``), polled every ``--poll-ms`` ms (20).  Reported: medians
over the rounds, and per round the ratios a/c, b/c, d/c (synfast against tar) and
a/b (the checksums' cost).

synfast leaves out ``tmp/`` directories, sockets and LMDB lock files, which tar
keeps (sockets apart); the stream sizes are printed so the difference shows.

Usage::

    cd /work/main && .venv/bin/python -m bench.stream_speed                # the cached dirs
    .venv/bin/python -m bench.stream_speed --rounds 7 SRC [SRC ...]
    .venv/bin/python -m bench.stream_speed --variants a,c --json-out out.json SRC

Without SRC it uses ``bench/.cache/offsite-scale1-g1/service`` and
``bench/.cache/backup-service-scale1``, those that exist (``python -m bench.offsite``
and ``python -m bench.backup_bench`` build them).  Run nothing else heavy meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
DEFAULT_SOURCES = [CACHE / "offsite-scale1-g1" / "service", CACHE / "backup-service-scale1"]
TAR = ["tar", "--sparse", "--format=posix", "-cf", "-"]
MB = 1e6
MIB = 1 << 20

#: name: (description, piped into cat?)
VARIANTS: dict[str, tuple[str, bool]] = {
    "a": ("synfast | cat", True),
    "b": ("synfast --no-checksum | cat", True),
    "c": ("tar | cat", True),
    "t": ("tar > /dev/null (shortcut)", False),
    "d": ("synfast > /dev/null", False),
}
RATIOS = (("a", "c"), ("b", "c"), ("d", "c"), ("a", "b"))


def synfast_exe() -> str:
    local = Path(sys.executable).parent / "synfast"
    return os.fspath(local) if local.exists() else "synfast"


def producer(variant: str, src: Path) -> list[str]:
    if variant in ("c", "t"):
        return [*TAR, "-C", os.fspath(src), "."]
    extra = ["--no-checksum"] if variant == "b" else []
    return [synfast_exe(), "backup", os.fspath(src), "-", "-q", *extra]


def command_line(variant: str, src: Path) -> str:
    cmd = shlex.join(producer(variant, src))
    return cmd + (" | cat > /dev/null" if VARIANTS[variant][1] else " > /dev/null")


class MemPoll(threading.Thread):
    """Peak memory (KiB) of one process, polled every ``interval`` seconds until it
    exits: private (Private_Clean + Private_Dirty) and anonymous from
    /proc/PID/smaps_rollup, and VmHWM from /proc/PID/status.

    VmHWM is the peak RSS of the process's own address space.  ``ru_maxrss`` from
    wait4 is not: Linux folds into it the RSS of the address space the child had
    before exec, here a copy of this Python process's."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.private = self.anon = self.hwm = self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with open(f"/proc/{self.pid}/smaps_rollup") as f:
                    rollup = f.read()
                with open(f"/proc/{self.pid}/status") as f:
                    status = f.read()
            except OSError:
                return
            values: dict[str, int] = {}
            for line in rollup.splitlines()[1:] + status.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    values[parts[0].rstrip(":")] = int(parts[1])
            if "Rss" not in values:             # a zombie
                return
            self.samples += 1
            self.private = max(self.private, values.get("Private_Clean", 0)
                               + values.get("Private_Dirty", 0))
            self.anon = max(self.anon, values.get("Anonymous", 0))
            self.hwm = max(self.hwm, values.get("VmHWM", 0))
            self.done.wait(self.interval)


@dataclass
class Run:
    variant: str
    round: int
    wall: float
    cpu_user: float                 # producer
    cpu_sys: float
    cat_cpu: float                  # the reader (cat or wc), 0 without a pipe
    hwm_kib: int                    # producer's peak RSS (VmHWM), polled
    private_kib: int                # producer's peak Private_Clean + Private_Dirty, polled
    anon_kib: int                   # producer's peak Anonymous, polled
    samples: int
    stream_bytes: int | None = None

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage]:
    """Wait for PROC with wait4: its exit code and its own resource usage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def run_once(variant: str, src: Path, rnd: int, poll_s: float, count: bool = False) -> Run:
    """One run of VARIANT on SRC; with COUNT the pipe's reader is ``wc -c``."""
    piped = VARIANTS[variant][1]
    argv = producer(variant, src)
    with open(os.devnull, "wb") as null:
        t0 = time.monotonic()
        if piped:
            prod = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            reader = subprocess.Popen(["wc", "-c"] if count else ["cat"], stdin=prod.stdout,
                                      stdout=subprocess.PIPE if count else null)
            assert prod.stdout is not None
            prod.stdout.close()
        else:
            prod = subprocess.Popen(argv, stdout=null, stderr=subprocess.PIPE)
            reader = None
        poll = MemPoll(prod.pid, poll_s) if poll_s > 0 else None
        if poll is not None:
            poll.start()
        assert prod.stderr is not None
        err = prod.stderr.read().decode(errors="replace")
        prod.stderr.close()
        rc, usage = _reap(prod)
        counted = None
        cat_cpu = 0.0
        if reader is not None:
            out = reader.stdout.read() if reader.stdout is not None else b""
            rrc, rusage = _reap(reader)
            cat_cpu = rusage.ru_utime + rusage.ru_stime
            if rrc:
                raise SystemExit(f"reader of {variant} failed: rc {rrc}")
            if count:
                counted = int(out.split()[0])
        wall = time.monotonic() - t0
    if poll is not None:
        poll.done.set()
        poll.join()
    noise = [ln for ln in err.splitlines() if "socket ignored" not in ln]
    if rc or noise:
        raise SystemExit(f"{command_line(variant, src)}: rc {rc}\n{err}")
    return Run(variant, rnd, wall, usage.ru_utime, usage.ru_stime, cat_cpu,
               poll.hwm if poll else 0, poll.private if poll else 0, poll.anon if poll else 0,
               poll.samples if poll else 0, counted)


def disk_usage(path: Path) -> tuple[int, int]:
    """(apparent, allocated) bytes of a tree (regular files)."""
    apparent = allocated = 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if not os.path.islink(os.path.join(root, f)):
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return apparent, allocated


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(src: Path, variants: list[str], rounds: int, poll_s: float,
            log: Callable[[str], None]) -> tuple[list[Run], dict[str, int]]:
    """The warm-up round (counting the streams' bytes), then ROUNDS rounds."""
    runs: list[Run] = []
    sizes: dict[str, int] = {}
    for rnd in range(rounds + 1):
        k = rnd % len(variants)
        order = variants[k:] + variants[:k]
        done = {}
        for v in order:
            done[v] = r = run_once(v, src, rnd, poll_s, count=rnd == 0 and VARIANTS[v][1])
            if rnd == 0:
                if r.stream_bytes is not None:
                    kind = "tar" if v in ("c", "t") else "synfast"
                    sizes[kind] = max(sizes.get(kind, 0), r.stream_bytes)
            else:
                runs.append(r)
        log(f"  round {rnd}{' (warm-up)' if rnd == 0 else ''} ({','.join(order)}): "
            + ", ".join(f"{v} {done[v].wall:.2f}s" for v in variants))
    return runs, sizes


def tables(src: Path, variants: list[str], runs: list[Run], sizes: dict[str, int]) -> str:
    med = statistics.median
    out = ["| | command | wall s median (min-max) | MB/s | producer CPU s user+sys "
           "| reader CPU s | peak RSS (VmHWM) MiB | peak private MiB | peak anon MiB |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        rs = [r for r in runs if r.variant == v]
        walls = [r.wall for r in rs]
        size = sizes.get("tar" if v in ("c", "t") else "synfast", 0)
        rate = f"{size / MB / med(walls):.0f}" if size and v != "t" else "-"
        out.append(
            f"| {v} | `{command_line(v, src)}` | {med(walls):.2f} ({min(walls):.2f}-"
            f"{max(walls):.2f}) | {rate} | {med(r.cpu for r in rs):.2f} "
            f"({med(r.cpu_user for r in rs):.2f}+{med(r.cpu_sys for r in rs):.2f}) "
            f"| {med(r.cat_cpu for r in rs):.2f} | {max(r.hwm_kib for r in rs) / 1024:.1f} "
            f"| {max(r.private_kib for r in rs) / 1024:.1f} "
            f"| {max(r.anon_kib for r in rs) / 1024:.1f} |")
    ratios = [(x, y) for x, y in RATIOS if x in variants and y in variants]
    rounds = sorted({r.round for r in runs})
    wall = {(r.round, r.variant): r.wall for r in runs}
    out += ["", "| round | " + " | ".join(f"{v} s" for v in variants) + " | "
            + " | ".join(f"{x}/{y}" for x, y in ratios) + " |",
            "|---:|" + "---:|" * (len(variants) + len(ratios))]
    per: dict[tuple[str, str], list[float]] = {p: [] for p in ratios}
    for rnd in rounds:
        cells = [f"{wall[rnd, v]:.2f}" for v in variants]
        for x, y in ratios:
            per[x, y].append(wall[rnd, x] / wall[rnd, y])
        out.append(f"| {rnd} | " + " | ".join(cells) + " | "
                   + " | ".join(f"{per[p][-1]:.2f}" for p in ratios) + " |")
    out.append("| median | " + " | ".join(
        f"{med(wall[r, v] for r in rounds):.2f}" for v in variants) + " | "
        + " | ".join(f"{med(per[p]):.2f}" for p in ratios) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_speed",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("sources", nargs="*", type=Path, help="service directories")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, of {','.join(VARIANTS)}")
    ap.add_argument("--poll-ms", type=float, default=20.0,
                    help="smaps_rollup polling interval; 0: no polling")
    ap.add_argument("--json-out", type=Path, help="also write every run as JSON here")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.rounds < 1:
        ap.error(f"unknown variants {unknown}" if unknown else "--rounds must be 1 or more")
    sources = args.sources or [p for p in DEFAULT_SOURCES if p.is_dir()]
    if not sources:
        ap.error("no service directory given and none cached under bench/.cache")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    version = subprocess.run(["tar", "--version"], capture_output=True, text=True
                             ).stdout.splitlines()[0]
    dump: list[dict[str, object]] = []
    t_start = time.monotonic()
    for src in sources:
        src = src.resolve()
        apparent, allocated = disk_usage(src)
        if allocated > mem_available():
            log(f"warning: {src} allocates {allocated / MB:.0f} MB, more than MemAvailable: "
                "the page cache cannot stay warm")
        log(f"{src}: apparent {apparent / MB:.0f} MB, allocated {allocated / MB:.0f} MB")
        runs, sizes = measure(src, variants, args.rounds, args.poll_ms / 1000, log)
        print(f"\n## {src}\n\napparent {apparent / MB:.1f} MB, allocated "
              f"{allocated / MB:.1f} MB; stream bytes: synfast "
              f"{sizes.get('synfast', 0) / MB:.1f} MB, tar {sizes.get('tar', 0) / MB:.1f} MB; "
              f"{args.rounds} rounds after a warm-up, order rotated; {version}; "
              f"{os.cpu_count()} CPUs\n")
        print(tables(src, variants, runs, sizes))
        dump.append({"source": os.fspath(src), "apparent": apparent, "allocated": allocated,
                     "stream_bytes": sizes, "runs": [asdict(r) for r in runs]})
    print(f"\nMB/s = stream bytes / median wall. CPU and memory are the producer's "
          f"(synfast or tar): CPU from wait4; VmHWM (/proc/PID/status), private = "
          f"Private_Clean + Private_Dirty and anon = Anonymous (smaps_rollup) polled every "
          f"{args.poll_ms:g} ms. (total {time.monotonic() - t_start:.0f} s)")
    if args.json_out:
        args.json_out.write_text(json.dumps(dump, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
