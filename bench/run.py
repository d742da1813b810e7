"""``make bench``: copy known data with every contender, check every copy, and
report who is faster than ``cp -a`` by how much.

    python bench/run.py                          # everything, full scale (long)
    python bench/run.py --scale 0.01             # a quick run
    python bench/run.py --only sparse,lmdb-b --contenders synfast,cp-a --runs 5
    python -m bench --list                       # datasets and contenders

Method, chosen so that the figures survive a shared, noisy machine:

- each run is a whole process (``/usr/bin/time`` wraps it for the peak RSS of
  the contender alone; wall time from here; CPU = user + sys from wait4(2));
- contenders are interleaved, each round running every contender once, in
  alternating order, so drift on the machine hits all alike; the first
  ``--warmup`` round(s) warm the page cache and are not counted;
- ``sync`` before every run, so one contender's writeback is not charged to
  the next; its duration after the run is recorded as ``sync_after``;
- ratios against ``cp -a`` are taken pair by pair within a round, then the
  median is reported (more robust than a ratio of medians under drift);
- every output, warm-up included, is checked against the source (byte-equal
  through the data extents of both files; ``mdb_dump -a`` equal for LMDB
  environments); a wrong or failed copy is a loss whatever its time.

Results: a markdown table on stdout, and in ``--out`` (default bench/out):
``bench-<stamp>.json`` with every raw figure and the machine, ``latest.json``,
``latest.md`` and ``latest.png`` (a chart of the ratios; needs the ``bench``
extra, matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if os.fspath(ROOT) not in sys.path:
    sys.path.insert(0, os.fspath(ROOT))

from bench import checks  # noqa: E402
from bench import contenders as C  # noqa: E402
from bench import datasets as D  # noqa: E402
from bench import report as R  # noqa: E402
from bench.steady import drop_page_cache, steady_memory  # noqa: E402

GNU_TIME = "/usr/bin/time"
BASELINE = "cp-a"


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench", description="Benchmark synfast against cp -a and its peers.",
        epilog="Environment: SYNFAST_BENCH_SYNAPSE_PYTHON=/path/to/python adds Synapse's "
        "backup tool as a contender.")
    ap.add_argument("--only", default=",".join(D.NAMES), metavar="DATASET,...",
                    help=f"datasets to run (default: all of {','.join(D.NAMES)})")
    ap.add_argument("--contenders", default="", metavar="NAME,...",
                    help="contenders to run (default: all that apply; cp-a is always added "
                    "as the baseline unless --no-baseline)")
    ap.add_argument("--skip", default="", metavar="NAME,...",
                    help="contenders to leave out (e.g. the slow dense ones on big data)")
    ap.add_argument("--no-baseline", action="store_true", help="do not add cp-a")
    ap.add_argument("--runs", type=int, default=3, help="counted runs per contender (3)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted warm-up rounds (1)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="dataset size factor (1 = the issue's sizes; 0.01 for a quick run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                    help="where the JSON, markdown and chart go (bench/out)")
    ap.add_argument("--cache", type=Path, default=D.DEFAULT_CACHE,
                    help="dataset cache (bench/.cache)")
    ap.add_argument("--work", type=Path, default=None,
                    help="where copies are written (default: CACHE/work, same filesystem "
                    "as the sources)")
    ap.add_argument("--unsteady", action="store_true",
                    help="leave free page reporting as it is (see bench/steady.py)")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before every run (root only)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds before a run is killed and counted as failed (900)")
    ap.add_argument("--min-free-gib", type=float, default=8.0,
                    help="skip a run that would leave less free disk than this (8)")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    ap.add_argument("--list", action="store_true", help="list datasets and contenders")
    ap.add_argument("--from-json", default="", metavar="FILE,...",
                    help="run nothing: merge earlier JSON results and redo table, JSON, chart")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.scale <= 0:
        ap.error("--runs must be >= 1, --warmup >= 0 and --scale > 0")
    return args


# ----------------------------------------------------------------- machine

def _first_line(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


def describe_machine(work: Path) -> dict:
    """What a reader needs to judge the figures: hardware, kernel, the
    filesystem the copies land on, and the versions of every tool measured."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = _first_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", os.fspath(work)])
    try:
        from synfast.lmdb._lmdb import version as lmdb_version

        from synfast import __version__ as synfast_version

        lmdb_v = lmdb_version()[3]
    except Exception as err:  # noqa: BLE001 - describe, never fail here
        synfast_version, lmdb_v = None, f"unknown ({err})"
    try:
        import lmdb as py_lmdb

        py_lmdb_v = f"py-lmdb {py_lmdb.__version__} (bundled LMDB {py_lmdb.version()})"
    except Exception:  # noqa: BLE001
        py_lmdb_v = None
    git = _first_line(["git", "-C", os.fspath(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", os.fspath(ROOT), "status", "--porcelain", "--", "synfast"])
    usage = shutil.disk_usage(work)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_bytes": mem,
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "filesystem": fs,
        "work_dir": os.fspath(work),
        "disk_free_bytes": usage.free,
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "synfast": synfast_version,
        "synfast_git": f"{git}{' (synfast/ modified)' if dirty else ''}" if git else None,
        "lmdb": lmdb_v,
        "py_lmdb": py_lmdb_v,
        "cp": _first_line(["cp", "--version"]),
        "rsync": _first_line(["rsync", "--version"]),
        "mdb_copy": _first_line(["mdb_copy", "-V"]),
        "shared_machine_note": "other jobs may have been running; interleaving protects ratios",
    }


# ----------------------------------------------------------------- one run

def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def drop_caches() -> str | None:
    """sync, then drop the page cache; None when done, else why not."""
    try:
        drop_page_cache(3)
    except OSError as err:
        return str(err)
    return None


def space_needed(c: C.Contender, sizes: dict[str, int]) -> int:
    """A pessimistic estimate of the bytes a contender's output will take."""
    if c.space == "dense":
        return sizes["apparent"]
    if c.space == "dense-files":
        return sizes["apparent"] - sizes["env_apparent"] + sizes["env_allocated"]
    return int(sizes["allocated"] * 1.1)


def run_once(c: C.Contender, ds: D.Dataset, sizes: dict[str, int], work: Path,
             verifier: checks.Verifier, args: argparse.Namespace) -> dict:
    """Run contender ``c`` on ``ds`` once, measure it, check its output, clean up."""
    dst = work / f"{ds.name}--{c.name.replace(':', '-')}"
    _remove(dst)
    argv = c.argv(ds.path, dst, ds.kind)
    rec: dict = {"argv": argv}
    need = space_needed(c, sizes)
    free = shutil.disk_usage(work).free
    if free - need < args.min_free_gib * D.GiB:
        rec.update(status="skipped", detail=f"would need {need / D.GiB:.1f} GiB of "
                   f"{free / D.GiB:.1f} GiB free (--min-free-gib {args.min_free_gib:g})")
        return rec
    subprocess.run(["sync"], check=False)
    if args.cold:
        why = drop_caches()
        rec["cache_dropped"] = why is None
        if why:
            rec["cache_drop_error"] = why
    tfile = work / f".{dst.name}.time"
    tfile.unlink(missing_ok=True)
    wrapped = [GNU_TIME, "-f", "%M", "-o", os.fspath(tfile), *argv] if _HAVE_TIME else argv
    logpath = work / f".{dst.name}.log"
    timed_out = threading.Event()
    with open(logpath, "wb") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(args.timeout, kill)
        timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    t1 = time.perf_counter()
    subprocess.run(["sync"], check=False)
    rec.update(wall=wall, user=ru.ru_utime, sys=ru.ru_stime, cpu=ru.ru_utime + ru.ru_stime,
               sync_after=time.perf_counter() - t1, returncode=rc)
    maxrss = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        maxrss = int(tfile.read_text().split()[-1]) * 1024
    rec["maxrss"] = maxrss if maxrss is not None else ru.ru_maxrss * 1024
    rec["maxrss_source"] = "time(1)" if maxrss is not None else "wait4 (includes parent image)"
    tfile.unlink(missing_ok=True)
    out_sizes = checks.tree_sizes(dst)
    rec.update(out_apparent=out_sizes["apparent"], out_allocated=out_sizes["allocated"])
    output = logpath.read_text(errors="replace").strip()
    logpath.unlink(missing_ok=True)
    if timed_out.is_set():
        rec.update(status="failed", detail=f"killed after {args.timeout:g} s (--timeout)")
    elif rc != 0:
        rec.update(status="failed", detail=f"exit {rc}: {output[-300:]}")
    elif not os.path.lexists(dst):
        rec.update(status="wrong", detail="no output")
    else:
        ok, detail = verifier.verify(ds, dst)
        rec.update(status="ok" if ok else "wrong", detail=detail)
        if output:
            rec["output"] = output[-300:]
    _remove(dst)
    return rec


_HAVE_TIME = os.access(GNU_TIME, os.X_OK)


# ----------------------------------------------------------------- a dataset

def run_dataset(ds: D.Dataset, chosen: list[C.Contender], work: Path,
                verifier: checks.Verifier, args: argparse.Namespace,
                on_round=lambda partial: None) -> dict:
    """Interleaved rounds of every applicable contender on one dataset.
    ``on_round`` gets the results so far after every round, so that a long run
    that is interrupted still leaves its figures behind."""
    sizes = ds.sizes()
    applicable = [c for c in chosen if c.applies(ds.kind, ds.has_envs)]
    runs: dict[str, list[dict]] = {c.name: [] for c in applicable}
    dropped: set[str] = set()
    rounds = args.warmup + args.runs
    log(f"{ds.name}: {len(applicable)} contenders x {rounds} rounds "
        f"({args.warmup} warm-up): {', '.join(runs)}")
    for rnd in range(rounds):
        order = applicable if rnd % 2 == 0 else applicable[::-1]
        for c in order:
            if c.name in dropped:
                continue
            rec = run_once(c, ds, sizes, work, verifier, args)
            rec.update(round=rnd, warmup=rnd < args.warmup)
            runs[c.name].append(rec)
            wall = f"{rec['wall']:.3f} s" if "wall" in rec else "-"
            log(f"{ds.name} round {rnd}{' (warm-up)' if rec['warmup'] else ''} {c.name}: "
                f"{wall} {rec['status']}{': ' + rec['detail'] if rec.get('detail') else ''}")
            if rec["status"] in ("failed", "skipped"):
                dropped.add(c.name)       # a broken or impossible contender costs one run
        on_round(_dataset_doc(ds, sizes, applicable, runs, rounds_done=rnd + 1))
    return _dataset_doc(ds, sizes, applicable, runs, rounds_done=rounds)


def _dataset_doc(ds: D.Dataset, sizes: dict[str, int], applicable: list[C.Contender],
                 runs: dict[str, list[dict]], rounds_done: int) -> dict:
    return {
        "name": ds.name,
        "kind": ds.kind,
        "scale": ds.scale,
        "path": os.fspath(ds.path),
        "key": ds.key,
        "build_seconds": ds.build_seconds,
        "meta": ds.meta,
        "source": sizes,
        "rounds_done": rounds_done,
        "contenders": {c.name: {"note": c.note, "runs": list(runs[c.name])}
                       for c in applicable},
    }


# ----------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender([Path(p) for p in args.from_json.split(",") if p], args)
    every = C.available()
    if args.list:
        print("datasets:", ", ".join(D.NAMES))
        for c in every:
            print(f"{c.name:24} {'/'.join(sorted(c.kinds)):15} {c.note}")
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in D.SPECS]
    if unknown:
        print(f"unknown dataset(s) {unknown}; choose from {', '.join(D.NAMES)}",
              file=sys.stderr)
        return 2
    by_name = {c.name: c for c in every}
    wanted = [n for n in args.contenders.split(",") if n] or list(by_name)
    wanted = [n for n in wanted if n not in args.skip.split(",")]
    if not args.no_baseline and BASELINE not in wanted:
        wanted.insert(0, BASELINE)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        print(f"unknown or unavailable contender(s) {unknown}; available: "
              f"{', '.join(by_name)}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in by_name if n in wanted]
    if args.cold and os.geteuid() != 0:
        log("--cold needs root to drop the page cache; running warm")
        args.cold = False
    work = args.work or args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.UTC)
    doc: dict = {
        "command": "python bench/run.py " + shlex.join(argv if argv is not None
                                                        else sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "options": {"only": names, "contenders": [c.name for c in chosen], "runs": args.runs,
                    "warmup": args.warmup, "scale": args.scale, "cold": args.cold,
                    "timeout": args.timeout, "baseline": BASELINE},
        "machine": describe_machine(work),
        "contenders": {c.name: {"note": c.note, "kinds": sorted(c.kinds)} for c in chosen},
        "datasets": {},
    }
    verifier = checks.Verifier(args.cache)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    # A full-scale run uses most of the memory (sources, outputs, their page
    # cache); a quick one a few percent of it, and touching all of it first
    # would take longer than the quick run itself.
    most = None if args.scale >= 0.5 else int((1 + 40 * args.scale) * 2**30)
    with steady_memory(not args.unsteady, prefault_most=most) as how:
        log(how)
        doc["options"]["memory"] = how
        for name in names:
            run_one_dataset(name, doc, chosen, work, verifier, args, stamp)
    doc["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    paths = _write(doc, args.out, stamp, chart=not args.no_chart)
    print(R.footer(doc, paths))
    return 0


def run_one_dataset(name: str, doc: dict, chosen: list, work: Path, verifier: checks.Verifier,
                    args: argparse.Namespace, stamp: str) -> None:
    """Build dataset ``name``, run every contender on it, print and save its table."""
    ds = D.build(name, args.scale, args.cache, log)

    def partial(result: dict, name: str = name) -> None:
        doc["datasets"][name] = dict(result, command=doc["command"],
                                     options=doc["options"], partial=True)
        R.summarize(doc)
        _write(doc, args.out, stamp, chart=False)

    doc["datasets"][name] = run_dataset(ds, chosen, work, verifier, args, partial)
    doc["datasets"][name].update(command=doc["command"], options=doc["options"])
    R.summarize(doc)
    print(R.dataset_table(doc, name), flush=True)
    _write(doc, args.out, stamp, chart=False)    # keep partial results of long runs


def rerender(paths: list[Path], args: argparse.Namespace) -> int:
    """Merge the datasets of earlier runs (say, a long one per dataset) into
    one report; the first file's machine and options head it, and each
    dataset keeps the command that measured it."""
    docs = [json.loads(p.read_text()) for p in paths]
    doc = docs[0]
    commands = []
    for d in docs:
        commands.append(d["command"])
        for name, ds in d["datasets"].items():
            ds.setdefault("command", d["command"])
            ds.setdefault("options", d["options"])
            if d is not doc and name in doc["datasets"]:
                # The same dataset measured again (say, fewer contenders, more
                # runs): keep both, the later one under a telling name.
                name = f"{name}, {ds['options']['runs']} runs"
            doc["datasets"][name] = ds
    doc["command"] = " ; ".join(dict.fromkeys(commands))
    doc["merged_from"] = [os.fspath(p) for p in paths]
    R.summarize(doc)
    for name in doc["datasets"]:
        print(R.dataset_table(doc, name))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    print(R.footer(doc, _write(doc, args.out, stamp, chart=not args.no_chart)))
    return 0


def _write(doc: dict, out: Path, stamp: str, chart: bool) -> dict[str, str]:
    """JSON (stamped and latest), markdown and, at the end, the chart."""
    paths = {"json": os.fspath(out / f"bench-{stamp}.json")}
    text = json.dumps(doc, indent=1, default=str)
    Path(paths["json"]).write_text(text)
    (out / "latest.json").write_text(text)
    (out / "latest.md").write_text(R.markdown(doc))
    paths["markdown"] = os.fspath(out / "latest.md")
    if chart:
        png, note = R.chart(doc, out / "latest.png")
        if png:
            paths["chart"] = png
            shutil.copyfile(png, out / f"bench-{stamp}.png")
        else:
            paths["chart_note"] = note or ""
            log(note or "no chart")
    return paths


if __name__ == "__main__":
    sys.exit(main())
