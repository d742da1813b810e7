"""How well borg deduplicates two nightly backups of an LMDB service directory.

Measures, with the real programs (``synfast copy``, GNU tar, ``borg import-tar``),
what a second night adds to a borg repository when the LMDB environments of a
service directory are copied

- page for page, page numbers kept (``synfast copy --lmdb-engine pages``), or
- rebuilt, compacted and renumbered in key order (``--lmdb-engine rebuild``),

for several borg chunker params and compressions.

Steps:

1. Build (cached under ``bench/.cache/offsite-*``, deterministic seed) a service
   directory: three LMDB environments (``NAME/data.mdb``, writemap, map 1 GiB or
   more, two named databases each; random 16-byte keys, values of 100-2000
   bytes, some of several pages, half random and half text-like) holding about
   300 MB of data at ``--scale 1``, plus two small regular files.
2. Night 1: ``synfast copy --lmdb-engine ENGINE SERVICE COPY`` for each engine.
3. Night 2: mutate the service as a night would, in many small write
   transactions spread over the environments: 0.1% of the entries rewritten in
   place (same key, new value of the same size) and 0.1% new entries; one small
   file rewritten. Copy again with each engine. The copies of both nights are
   cached and shared by every borg combination.
4. For each combination (engine, chunker params, compression), in a fresh
   repository (``borg init -e repokey-blake2``, BORG_PASSPHRASE in the
   environment): ``tar --sparse --format=posix -cf - -C COPY . | borg import-tar
   --json --chunker-params P --compression C REPO::nightN -`` for night 1 then
   night 2. Recorded: borg's own stats of each archive (original, compressed,
   deduplicated size: the latter is what the archive added to the repository,
   after compression and with borg's per-chunk overhead), the wall time of each
   import (tar included), borg's peak RSS (``/usr/bin/time -f %M``), and the
   bytes of repository files that night 2 created or changed (what ``rclone
   sync`` of the repository to an offsite remote would upload: rclone compares
   size and modification time; segment files apart from index and hints). The
   repository is deleted right after.
5. For reference, per engine: the bytes of night 2's 4 KiB, 16 KiB and 64 KiB
   blocks (file-aligned, as borg's fixed chunker cuts; zero blocks and holes
   left out) not found among night 1's: what an ideal fixed-size
   deduplication would add, before compression and without borg's metadata.

Chunker params are first tried with ``lz4`` (borg's default compression); the
other compressions then run only with the chunker that added least on night 2
(per engine), unless ``--all-pairs``.

Also timed once per copy: ``synfast copy`` itself, ``tar ... | reader`` (the
stream borg reads) and ``tar ... > /dev/null`` (GNU tar notices that its archive
is /dev/null and skips reading file data, so that figure is not a read time).

``--via synfast`` instead sends both nights through ``synfast backup SVC
borg:REPO::nightN --json`` itself (the stream piped into borg import-tar by synfast,
``--lmdb-engine pages``, or ``rebuild`` with ``--scratch WORKDIR/scratch``), from a
second cached pair of service directories (``offsite-*-services/night1`` and
``night2``: built, copied with ``cp --sparse=always``, the copy mutated as above),
for the chunkers ``fixed,4096``, ``fixed,16384``, ``fixed,65536`` with ``lz4``
unless told otherwise.  synfast runs under a small in-process wrapper (``WRAPPER``)
that records at exit the synfast process's own CPU and peak RSS (RUSAGE_SELF) apart
from borg's (RUSAGE_CHILDREN, split between import-tar and the ``borg rename`` that
follows it); the synfast process's private and anonymous memory is polled from
/proc/PID/smaps_rollup every 20 ms.  Reported per night: borg's stats, wall time,
synfast's stream time, synfast and borg CPU, peak memory, the repository bytes
night 2 changed; and, for reference, ``synfast backup SVC - | cat > /dev/null``
(synfast without borg) per engine and night, ``--alone-rounds`` times.

``--probe-borg`` instead runs small, concrete probes of borg's behaviour when
import-tar fails (missing repository, wrong passphrase, lock held, SIGINT,
SIGTERM, SIGHUP, SIGKILL mid-stream, truncated tar streams) and prints each
exit code, the stderr lines and what is left in the repository.

Usage::

    cd /work/main && .venv/bin/python -m bench.offsite                  # scale 1
    .venv/bin/python -m bench.offsite --scale 0.3
    .venv/bin/python -m bench.offsite --chunkers "fixed,4096;buzhash,19,23,21,4095" \\
        --compression "lz4;zstd,3"
    .venv/bin/python -m bench.offsite --probe-borg --workdir /tmp/offsite-probe
    .venv/bin/python -m bench.offsite --via synfast --workdir /tmp/offsite-via

Lists (``--chunkers``, ``--compression``, ``--engines``) are separated by ``;``
or blanks, since borg's own values contain commas.  Repositories and borg's
cache go to ``--workdir`` (default ``bench/.cache/offsite-work``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
GENERATOR = 1                       # bump when the data generator changes
SEED = 20240917
MIB = 1 << 20
MB = 1e6

DEFAULT_ENGINES = ["pages", "rebuild"]
DEFAULT_CHUNKERS = ["fixed,4096", "fixed,16384", "fixed,65536", "buzhash,19,23,21,4095",
                    "buzhash,12,20,14,4095"]
DEFAULT_COMPRESSION = ["lz4", "none", "zstd,3"]
VIA_CHUNKERS = "fixed,4096;fixed,16384;fixed,65536"
TAR = ["tar", "--sparse", "--format=posix", "-cf", "-"]
PASSPHRASE = "offsite-bench"
ENCRYPTION = "repokey-blake2"

CHANGE_FRACTION = 0.001             # 0.1% rewritten, 0.1% added
OPS_PER_TXN = 8                     # a night's write transactions are small


@dataclass(frozen=True)
class EnvSpec:
    """One LMDB environment of the service directory."""

    name: str
    dbs: tuple[str, ...]
    share: float                    # of the total data bytes
    big_fraction: float             # of its values: several pages long
    big_range: tuple[int, int]      # bytes of those values


ENVS = (
    EnvSpec("events", ("events", "event_index"), 0.45, 0.02, (4096, 16384)),
    EnvSpec("state", ("accounts", "sessions"), 0.25, 0.0, (0, 0)),
    EnvSpec("media", ("blobs", "thumbs"), 0.30, 0.25, (4096, 40960)),
)


# --------------------------------------------------------------------------- data


def _text_pool(rng: random.Random) -> bytes:
    """64 KiB of text-like bytes (JSON-ish records from a small vocabulary)."""
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(200)]
    keys = [b"type", b"sender", b"room_id", b"ts", b"content", b"body", b"state_key"]
    out = bytearray()
    while len(out) < 65536:
        fields = [b'"%s":"%s"' % (rng.choice(keys), b" ".join(rng.choices(words, k=3)))
                  for _ in range(rng.randint(2, 5))]
        out += b"{" + b",".join(fields) + b"}\n"
    return bytes(out[:65536])


class ValueMaker:
    """Values half random, half text-like: compressible about 2:1 like real records."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pool = _text_pool(rng)

    def size(self, spec: EnvSpec) -> int:
        if spec.big_fraction and self.rng.random() < spec.big_fraction:
            return self.rng.randint(*spec.big_range)
        return self.rng.randint(100, 2000)

    def value(self, size: int) -> bytes:
        rand = size // 2
        text = size - rand
        start = self.rng.randrange(0, len(self.pool) - min(text, len(self.pool) - 1))
        filler = self.pool[start:start + text]
        while len(filler) < text:
            filler += self.pool[:text - len(filler)]
        return self.rng.randbytes(rand) + filler


def map_size(scale: float) -> int:
    """1 GiB, or more when the scale needs it (one environment holds up to 45%)."""
    need = int(300e6 * scale * 0.45 * 3)
    return max(1 << 30, (need + (1 << 30) - 1) >> 30 << 30)


def _open(path: Path, scale: float, spec: EnvSpec) -> Any:
    import lmdb

    return lmdb.open(os.fspath(path), map_size=map_size(scale), subdir=True, writemap=True,
                     max_dbs=len(spec.dbs) + 1, sync=False, metasync=False)


def build_service(svc: Path, scale: float) -> dict[str, Any]:
    """Write the night-1 service directory (its parent decides the cache key)."""
    rng = random.Random(SEED)
    maker = ValueMaker(rng)
    total = 300e6 * scale
    counts: dict[str, int] = {}
    svc.mkdir(parents=True)
    for spec in ENVS:
        env = _open(svc / spec.name, scale, spec)
        dbs = [env.open_db(name.encode()) for name in spec.dbs]
        budget = total * spec.share
        written = entries = 0
        while written < budget:
            with env.begin(write=True) as txn:
                for _ in range(5000):
                    size = maker.size(spec)
                    txn.put(rng.randbytes(16), maker.value(size), db=rng.choice(dbs))
                    written += size + 16
                    entries += 1
                    if written >= budget:
                        break
        env.sync(True)
        env.close()
        counts[spec.name] = entries
    (svc / "config.json").write_text(json.dumps(
        {"server_name": "example.org", "environments": [s.name for s in ENVS],
         "listeners": [{"port": 8008, "tls": False}]}, indent=2) + "\n")
    (svc / "state.json").write_text(json.dumps({"night": 1, "seed": SEED}) + "\n")
    return counts


def _all_keys(env: Any, dbs: list[Any]) -> list[list[bytes]]:
    with env.begin() as txn:
        return [list(txn.cursor(db=db).iternext(keys=True, values=False)) for db in dbs]


def mutate_service(svc: Path, scale: float) -> dict[str, Any]:
    """One night: rewrite 0.1% of the entries in place, add 0.1%, in small transactions."""
    rng = random.Random(SEED + 2)
    maker = ValueMaker(rng)
    envs: dict[str, tuple[Any, list[Any]]] = {}
    queues: dict[str, list[tuple[str, int, bytes]]] = {}
    for spec in ENVS:
        env = _open(svc / spec.name, scale, spec)
        dbs = [env.open_db(name.encode()) for name in spec.dbs]
        keys = _all_keys(env, dbs)
        flat = [(d, k) for d, ks in enumerate(keys) for k in ks]
        n = max(1, math.ceil(len(flat) * CHANGE_FRACTION))
        ops = [("rewrite", d, k) for d, k in rng.sample(flat, n)]
        ops += [("add", rng.randrange(len(dbs)), rng.randbytes(16)) for _ in range(n)]
        rng.shuffle(ops)
        envs[spec.name] = (env, dbs)
        queues[spec.name] = ops
    spec_by_name = {s.name: s for s in ENVS}
    txns = rewritten = added = 0
    while any(queues.values()):
        # the night's writers take turns: a small transaction on one environment at a time
        name = rng.choice([n for n, q in queues.items() if q])
        env, dbs = envs[name]
        batch, queues[name] = queues[name][:OPS_PER_TXN], queues[name][OPS_PER_TXN:]
        with env.begin(write=True) as txn:
            for kind, d, key in batch:
                if kind == "rewrite":
                    old = txn.get(key, db=dbs[d])
                    assert old is not None
                    txn.put(key, maker.value(len(old)), db=dbs[d])
                    rewritten += 1
                else:
                    txn.put(key, maker.value(maker.size(spec_by_name[name])), db=dbs[d])
                    added += 1
        txns += 1
    for env, _ in envs.values():
        env.sync(True)
        env.close()
    (svc / "state.json").write_text(json.dumps({"night": 2, "seed": SEED}) + "\n")
    return {"rewritten": rewritten, "added": added, "transactions": txns}


# --------------------------------------------------------------------------- copies


def synfast_exe() -> str:
    local = Path(sys.executable).parent / "synfast"
    if local.exists():
        return os.fspath(local)
    found = shutil.which("synfast")
    if not found:
        raise SystemExit("synfast not found (run from the project's venv)")
    return found


def disk_usage(path: Path) -> tuple[int, int]:
    """(apparent, allocated) bytes of a tree."""
    apparent = allocated = 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def time_tar(src: Path) -> tuple[float, int, float]:
    """Seconds of ``tar | reader``, bytes of the stream, seconds of ``tar > /dev/null``."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*TAR, "-C", os.fspath(src), "."], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    n = 0
    while chunk := proc.stdout.read(MIB):
        n += len(chunk)
    if proc.wait():
        raise SystemExit(f"tar of {src} failed: rc {proc.returncode}")
    piped = time.monotonic() - t0
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run([*TAR, "-C", os.fspath(src), "."], stdout=null, check=True)
    return piped, n, time.monotonic() - t0


def _blocks(path: Path, block: int) -> Any:
    """Digests of the non-zero BLOCK-sized blocks of every regular file (holes skipped)."""
    zero = bytes(block)
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            p = os.path.join(root, name)
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            with open(p, "rb") as f:
                fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
                while pos < size:
                    try:
                        data = os.lseek(fd, pos, os.SEEK_DATA)
                    except OSError:
                        break
                    hole = os.lseek(fd, data, os.SEEK_HOLE)
                    start, end = data // block * block, min(size, -(-hole // block) * block)
                    f.seek(start)
                    for _ in range(start, end, block):
                        chunk = f.read(block)
                        if chunk and chunk != zero[:len(chunk)]:
                            yield hashlib.blake2b(chunk, digest_size=16).digest(), len(chunk)
                    pos = end


def novel_bytes(old: Path, new: Path, block: int) -> int:
    """Bytes of NEW's blocks (file-aligned, as borg's fixed chunker cuts) absent from OLD:
    what an ideal fixed-size deduplication would store for NEW, before compression."""
    seen = {digest for digest, _ in _blocks(old, block)}
    novel = 0
    for digest, n in _blocks(new, block):
        if digest not in seen:
            novel += n
            seen.add(digest)
    return novel


def synfast_copy(src: Path, dst: Path, engine: str) -> dict[str, Any]:
    if dst.exists():
        shutil.rmtree(dst)
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    subprocess.run([synfast_exe(), "copy", "--lmdb-engine", engine, "-q",
                    os.fspath(src), os.fspath(dst)], check=True)
    seconds = time.monotonic() - t0
    apparent, allocated = disk_usage(dst)
    tar_s, tar_bytes, null_s = time_tar(dst)
    return {"copy_s": seconds, "apparent": apparent, "allocated": allocated,
            "tar_s": tar_s, "tar_bytes": tar_bytes, "tar_null_s": null_s}


def prepare(scale: float, engines: list[str], log: Any) -> tuple[Path, dict[str, Any]]:
    """The night-1 and night-2 copies for every engine, built or taken from the cache."""
    home = CACHE / f"offsite-scale{scale:g}-g{GENERATOR}"
    meta_path = home / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    svc = home / "service"

    def save() -> None:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    def have(engine: str, night: int) -> bool:
        return f"{engine}-night{night}" in meta.get("copies", {})

    if all(have(e, n) for e in engines for n in (1, 2)):
        return home, meta
    stage = meta.get("stage")
    missing1 = [e for e in engines if not have(e, 1)]
    if stage not in ("built", "mutated") or (missing1 and stage == "mutated"):
        # start over: the service must be in its night-1 state for the missing copies
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        log(f"building the service directory (scale {scale:g}) ...")
        t0 = time.monotonic()
        meta = {"scale": scale, "entries": build_service(svc, scale),
                "build_s": time.monotonic() - t0, "copies": {}, "stage": "built"}
        meta["service"] = dict(zip(("apparent", "allocated"), disk_usage(svc), strict=True))
        save()
        log(f"  built in {meta['build_s']:.1f} s: {meta['entries']}")
        missing1 = list(engines)
    for engine in missing1:
        log(f"night 1: synfast copy --lmdb-engine {engine} ...")
        meta["copies"][f"{engine}-night1"] = synfast_copy(
            svc, home / f"{engine}-night1", engine)
        save()
    if meta["stage"] == "built":
        log("mutating the service (a night's writes) ...")
        meta["mutation"] = mutate_service(svc, scale)
        meta["stage"] = "mutated"
        save()
        log(f"  {meta['mutation']}")
    for engine in engines:
        if not have(engine, 2):
            log(f"night 2: synfast copy --lmdb-engine {engine} ...")
            meta["copies"][f"{engine}-night2"] = synfast_copy(
                svc, home / f"{engine}-night2", engine)
            save()
    for engine in engines:
        c = meta["copies"][f"{engine}-night2"]
        if "novel" not in c:
            c["novel"] = {str(b): novel_bytes(home / f"{engine}-night1",
                                              home / f"{engine}-night2", b)
                          for b in (4096, 16384, 65536)}
            save()
    return home, meta


# --------------------------------------------------------------------------- borg


def borg_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BORG_PASSPHRASE=PASSPHRASE, BORG_BASE_DIR=os.fspath(base),
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")
    return env


def borg_init(repo: Path, env: dict[str, str]) -> str:
    """Create the repository: repokey-blake2, else repokey. Return the mode used."""
    for mode in (ENCRYPTION, "repokey"):
        proc = subprocess.run(["borg", "init", "-e", mode, os.fspath(repo)], env=env,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            return mode
        shutil.rmtree(repo, ignore_errors=True)
    raise SystemExit(f"borg init failed: {proc.stderr}")


def repo_files(repo: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, files in os.walk(repo):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, repo)] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass
class Import:
    seconds: float
    rss_kib: int
    stats: dict[str, int]
    upload: int                     # bytes of repository files created or changed
    upload_segments: int            # of which segment files (data/)


def borg_import(repo: Path, archive: str, src: Path, chunker: str, compression: str,
                env: dict[str, str], timefile: Path) -> Import:
    before = repo_files(repo)
    cmd = ["/usr/bin/time", "-f", "%M", "-o", os.fspath(timefile),
           "borg", "import-tar", "--json", "--chunker-params", chunker,
           "--compression", compression, f"{repo}::{archive}", "-"]
    t0 = time.monotonic()
    tar = subprocess.Popen([*TAR, "-C", os.fspath(src), "."], stdout=subprocess.PIPE)
    borg = subprocess.Popen(cmd, stdin=tar.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    assert tar.stdout is not None
    tar.stdout.close()
    out, err = borg.communicate()
    tar_rc = tar.wait()
    seconds = time.monotonic() - t0
    if borg.returncode or tar_rc:
        raise SystemExit(f"import {archive} failed: borg rc {borg.returncode}, "
                         f"tar rc {tar_rc}\n{err}")
    after = repo_files(repo)
    changed = {p: size for p, (size, mtime) in after.items() if before.get(p) != (size, mtime)}
    segments = sum(size for p, size in changed.items() if p.startswith("data" + os.sep))
    rss = int(timefile.read_text().split()[-1])
    return Import(seconds, rss, json.loads(out)["archive"]["stats"], sum(changed.values()),
                  segments)


@dataclass
class Result:
    engine: str
    chunker: str
    compression: str
    encryption: str
    nights: list[Import] = field(default_factory=list)

    @property
    def added_ratio(self) -> float:
        return (self.nights[1].stats["deduplicated_size"]
                / self.nights[0].stats["deduplicated_size"])


def run_combination(home: Path, workdir: Path, engine: str, chunker: str, compression: str,
                    log: Any) -> Result:
    tag = re.sub(r"[^A-Za-z0-9]+", "_", f"{engine}-{chunker}-{compression}")
    repo = workdir / f"repo-{tag}"
    base = workdir / f"base-{tag}"
    for p in (repo, base):
        if p.exists():
            shutil.rmtree(p)
    base.mkdir(parents=True)
    env = borg_env(base)
    try:
        res = Result(engine, chunker, compression, borg_init(repo, env))
        for night in (1, 2):
            imp = borg_import(repo, f"night{night}", home / f"{engine}-night{night}",
                              chunker, compression, env, base / "time.out")
            res.nights.append(imp)
        n1, n2 = res.nights
        log(f"  {engine:8} {chunker:22} {compression:7} night1 "
            f"{n1.stats['deduplicated_size'] / MB:8.1f} MB ({n1.seconds:5.1f} s)  night2 +"
            f"{n2.stats['deduplicated_size'] / MB:7.2f} MB ({n2.seconds:5.1f} s) = "
            f"{100 * res.added_ratio:5.2f}%")
        return res
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- via synfast

#: Runs ``synfast.cli.main`` in this process and, at its final ``os._exit``, writes
#: what the process used to the file named by argv[1]: RUSAGE_SELF (synfast alone,
#: every thread), RUSAGE_CHILDREN (the borg processes it waited for), and the moment
#: borg import-tar had exited (synfast then renames the archive with ``borg rename``).
WRAPPER = r"""
import json, os, resource, sys, time
t0 = time.monotonic()
out = sys.argv[1]
sys.argv = ["synfast", *sys.argv[2:]]
marks = {}

def ru(who):
    r = resource.getrusage(who)
    return {"user": r.ru_utime, "sys": r.ru_stime, "maxrss_kib": r.ru_maxrss}

from synfast.backup import borg as _borg
_real_rename = _borg._rename

def _rename(partial, target):
    marks["import_end_s"] = time.monotonic() - t0
    marks["children_at_import_end"] = ru(resource.RUSAGE_CHILDREN)
    try:
        return _real_rename(partial, target)
    finally:
        marks["rename_end_s"] = time.monotonic() - t0

_borg._rename = _rename
_real_exit = os._exit

def _exit(code):
    doc = {"self": ru(resource.RUSAGE_SELF), "children": ru(resource.RUSAGE_CHILDREN),
           "end_s": time.monotonic() - t0, **marks}
    with open(out, "w") as f:
        json.dump(doc, f)
    _real_exit(code)

os._exit = _exit
from synfast.cli import main
main()
"""


class MemPoll(threading.Thread):
    """Peak memory of one process, in KiB, polled every ``interval`` s: private
    (Private_Clean + Private_Dirty) and anonymous from /proc/PID/smaps_rollup, and
    VmHWM (peak RSS) from /proc/PID/status.  (``ru_maxrss`` of a child is no use
    here: Linux folds into it the RSS of the address space it had before exec, a
    copy of its parent's.)"""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.private = self.anon = self.hwm = self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open(f"/proc/{self.pid}/smaps_rollup") as f:
                    text = f.read()
                with open(f"/proc/{self.pid}/status") as f:
                    text += f.read()
            except OSError:
                return
            v: dict[str, int] = {}
            for line in text.splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    v[parts[0].rstrip(":")] = int(parts[1])
            if "Rss" not in v:                      # a zombie: the process is done
                return
            self.samples += 1
            self.private = max(self.private,
                               v.get("Private_Clean", 0) + v.get("Private_Dirty", 0))
            self.anon = max(self.anon, v.get("Anonymous", 0))
            self.hwm = max(self.hwm, v.get("VmHWM", 0))
            self.stop.wait(self.interval)


@dataclass
class SynfastRun:
    """One ``synfast backup`` run under :data:`WRAPPER`."""

    wall: float                     # seconds, process start to exit
    stream_s: float                 # synfast's own figure: the stream, start to end
    self_cpu: float                 # synfast process, user + sys
    self_user: float
    self_sys: float
    borg_cpu: float                 # borg import-tar (user + sys), 0 for a stream to cat
    rename_cpu: float               # borg rename afterwards
    import_end: float               # seconds from synfast's start until import-tar exited
    rename_s: float                 # seconds of borg rename
    synfast_rss_kib: int            # peak RSS of the synfast process (VmHWM, polled)
    synfast_private_kib: int        # peak private memory, polled
    synfast_anon_kib: int           # peak anonymous memory, polled
    borg_rss_kib: int               # borg import-tar's ru_maxrss (see below)
    bytes_streamed: int
    stats: dict[str, int] = field(default_factory=dict)
    upload: int = 0
    upload_segments: int = 0


def run_synfast(args: list[str], env: dict[str, str], runfile: Path,
                stdout_to_cat: bool = False) -> tuple[SynfastRun, str]:
    """Run ``synfast ARGS`` under :data:`WRAPPER`; its stdout is returned, or piped
    into ``cat > /dev/null`` when STDOUT_TO_CAT (a stream; --json then goes to stderr)."""
    runfile.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", WRAPPER, os.fspath(runfile), *args]
    t0 = time.monotonic()
    if stdout_to_cat:
        with open(os.devnull, "wb") as null:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            cat = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=null)
            assert proc.stdout is not None
            proc.stdout.close()
            poll = MemPoll(proc.pid)
            poll.start()
            assert proc.stderr is not None
            text = proc.stderr.read().decode(errors="replace")
            rc = proc.wait()
            cat.wait()
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        poll = MemPoll(proc.pid)
        poll.start()
        out, err = proc.communicate()
        text, rc = out.decode(errors="replace"), proc.returncode
        if rc:
            text += err.decode(errors="replace")
    wall = time.monotonic() - t0
    poll.stop.set()
    poll.join()
    if rc:
        raise SystemExit(f"synfast {' '.join(args)} failed: rc {rc}\n{text}")
    ru = json.loads(runfile.read_text())
    doc = json.loads(text[text.index("{"):])
    me, kids = ru["self"], ru["children"]
    at_import = ru.get("children_at_import_end", kids)
    borg = at_import["user"] + at_import["sys"]
    return SynfastRun(
        wall=wall, stream_s=doc["seconds"], self_cpu=me["user"] + me["sys"],
        self_user=me["user"], self_sys=me["sys"], borg_cpu=borg,
        rename_cpu=kids["user"] + kids["sys"] - borg,
        import_end=ru.get("import_end_s", ru["end_s"]),
        rename_s=ru.get("rename_end_s", 0.0) - ru.get("import_end_s", 0.0),
        synfast_rss_kib=poll.hwm, synfast_private_kib=poll.private,
        synfast_anon_kib=poll.anon, borg_rss_kib=at_import["maxrss_kib"],
        bytes_streamed=doc["bytes_streamed"], stats=doc.get("borg", {})), text


def prepare_services(scale: float, log: Any) -> tuple[Path, dict[str, Any]]:
    """The service directory in its night-1 state and in its night-2 state, side by
    side (built, copied with ``cp --sparse=always``, the copy mutated), cached."""
    home = CACHE / f"offsite-scale{scale:g}-g{GENERATOR}-services"
    meta_path = home / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("stage") == "mutated":
            return home, meta
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    log(f"building the service directory (scale {scale:g}) for --via synfast ...")
    t0 = time.monotonic()
    meta = {"scale": scale, "entries": build_service(home / "night1", scale),
            "build_s": time.monotonic() - t0}
    subprocess.run(["cp", "-a", "--sparse=always", os.fspath(home / "night1"),
                    os.fspath(home / "night2")], check=True)
    meta["mutation"] = mutate_service(home / "night2", scale)
    meta["service"] = dict(zip(("apparent", "allocated"), disk_usage(home / "night1"),
                               strict=True))
    meta["stage"] = "mutated"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    log(f"  {meta['entries']}, night 2: {meta['mutation']}")
    return home, meta


def engine_args(engine: str, scratch: Path) -> list[str]:
    args = ["--lmdb-engine", engine]
    if engine != "pages":
        scratch.mkdir(parents=True, exist_ok=True)
        args += ["--scratch", os.fspath(scratch)]
    return args


@dataclass
class ViaResult:
    engine: str
    chunker: str
    compression: str
    nights: list[SynfastRun] = field(default_factory=list)

    @property
    def added_ratio(self) -> float:
        return (self.nights[1].stats["deduplicated_size"]
                / self.nights[0].stats["deduplicated_size"])


def run_via_synfast(home: Path, workdir: Path, engine: str, chunker: str, compression: str,
                    log: Any) -> ViaResult:
    """Night 1 then night 2 with ``synfast backup SVC borg:REPO::nightN --json`` in a
    fresh repository."""
    tag = re.sub(r"[^A-Za-z0-9]+", "_", f"via-{engine}-{chunker}-{compression}")
    repo, base = workdir / f"repo-{tag}", workdir / f"base-{tag}"
    for p in (repo, base):
        if p.exists():
            shutil.rmtree(p)
    base.mkdir(parents=True)
    env = borg_env(base)
    try:
        borg_init(repo, env)
        res = ViaResult(engine, chunker, compression)
        for night in (1, 2):
            before = repo_files(repo)
            subprocess.run(["sync"], check=True)
            run, _ = run_synfast(
                ["backup", *engine_args(engine, workdir / "scratch"), "--chunker-params",
                 chunker, "--compression", compression, "--json",
                 os.fspath(home / f"night{night}"), f"borg:{repo}::night{night}"],
                env, base / "run.json")
            after = repo_files(repo)
            changed = {p: size for p, (size, mtime) in after.items()
                       if before.get(p) != (size, mtime)}
            run.upload = sum(changed.values())
            run.upload_segments = sum(size for p, size in changed.items()
                                      if p.startswith("data" + os.sep))
            res.nights.append(run)
        n1, n2 = res.nights
        log(f"  via synfast {engine:8} {chunker:12} {compression:5} night1 "
            f"{n1.stats['deduplicated_size'] / MB:7.1f} MB ({n1.wall:5.1f} s)  night2 +"
            f"{n2.stats['deduplicated_size'] / MB:7.2f} MB ({n2.wall:5.1f} s) = "
            f"{100 * res.added_ratio:5.2f}%")
        return res
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def streams_alone(home: Path, workdir: Path, engines: list[str], rounds: int,
                  log: Any) -> dict[str, list[SynfastRun]]:
    """``synfast backup [engine] SVC - | cat > /dev/null`` per engine and night, ROUNDS
    times (interleaved): synfast without borg."""
    env = dict(os.environ)
    out: dict[str, list[SynfastRun]] = {}
    for _ in range(rounds):
        for engine in engines:
            for night in (1, 2):
                run, _ = run_synfast(
                    ["backup", *engine_args(engine, workdir / "scratch"), "--json",
                     os.fspath(home / f"night{night}"), "-"],
                    env, workdir / "alone.json", stdout_to_cat=True)
                out.setdefault(f"{engine}-night{night}", []).append(run)
    for name, runs in out.items():
        log(f"  alone {name}: " + ", ".join(f"{r.wall:.2f} s" for r in runs))
    return out


def via_tables(results: list[ViaResult], alone: dict[str, list[SynfastRun]]) -> str:
    mib = 1024
    rows = ["| engine | chunker | compression | night1 dedup MB | night2 added MB | ratio % "
            "| night2 upload MB (segments) | wall s n1 / n2 | stream s n1 / n2 "
            "| borg commit + rename s n1 / n2 |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n1, n2 = r.nights
        rows.append(
            f"| {r.engine} | `{r.chunker}` | `{r.compression}` "
            f"| {n1.stats['deduplicated_size'] / MB:.1f} "
            f"| {n2.stats['deduplicated_size'] / MB:.2f} | {100 * r.added_ratio:.2f} "
            f"| {n2.upload / MB:.2f} ({n2.upload_segments / MB:.2f}) "
            f"| {n1.wall:.2f} / {n2.wall:.2f} | {n1.stream_s:.2f} / {n2.stream_s:.2f} "
            f"| {n1.wall - n1.stream_s:.2f} / {n2.wall - n2.stream_s:.2f} |")
    rows += ["", "| engine | chunker | night | wall s | synfast CPU s (user+sys) "
             "| borg import-tar CPU s | borg rename CPU s | rename s "
             "| synfast peak RSS / private / anon MiB | borg peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for i, n in enumerate(r.nights, 1):
            rows.append(
                f"| {r.engine} | `{r.chunker}` | {i} | {n.wall:.2f} "
                f"| {n.self_cpu:.2f} ({n.self_user:.2f}+{n.self_sys:.2f}) "
                f"| {n.borg_cpu:.2f} | {n.rename_cpu:.2f} | {n.rename_s:.2f} "
                f"| {n.synfast_rss_kib / mib:.0f} / {n.synfast_private_kib / mib:.0f} / "
                f"{n.synfast_anon_kib / mib:.0f} | {n.borg_rss_kib / mib:.0f} |")
    if alone:
        rows += ["", "synfast alone: `synfast backup [--lmdb-engine E --scratch D] SVC - --json "
                 "| cat > /dev/null`, median of the runs (each run's wall in brackets)", "",
                 "| engine-night | stream MB | wall s | synfast CPU s (user+sys) "
                 "| peak RSS / private / anon MiB |",
                 "|---|---:|---:|---:|---:|"]
        for name, runs in alone.items():
            med = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
            rows.append(
                f"| {name} | {med.bytes_streamed / MB:.1f} | {med.wall:.2f} "
                f"({', '.join(f'{r.wall:.2f}' for r in runs)}) "
                f"| {med.self_cpu:.2f} ({med.self_user:.2f}+{med.self_sys:.2f}) "
                f"| {max(r.synfast_rss_kib for r in runs) / mib:.0f} / "
                f"{max(r.synfast_private_kib for r in runs) / mib:.0f} / "
                f"{max(r.synfast_anon_kib for r in runs) / mib:.0f} |")
    return "\n".join(rows)


def main_via_synfast(args: argparse.Namespace, log: Any) -> int:
    engines, chunkers = split_list(args.engines), split_list(args.chunkers or VIA_CHUNKERS)
    compressions = split_list(args.compression or "lz4")
    t_start = time.monotonic()
    home, meta = prepare_services(args.scale, log)
    version = subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout
    alone = streams_alone(home, args.workdir, engines, args.alone_rounds, log)
    results = [run_via_synfast(home, args.workdir, engine, chunker, comp, log)
               for engine in engines for chunker in chunkers for comp in compressions]
    print(f"\n## synfast backup SVC borg:REPO::nightN, two nights (scale {args.scale:g}; "
          f"{version.strip()}, {ENCRYPTION})\n")
    print(f"Service: {meta['entries']} entries per environment, apparent / allocated "
          f"{meta['service']['apparent'] / MB:.0f} / {meta['service']['allocated'] / MB:.0f} MB;"
          f" night 2: {meta['mutation']}\n")
    print(via_tables(results, alone))
    print("\nwall = the whole `synfast backup` process (start-up, stream, borg's commit, "
          "borg rename); stream s = synfast's own report (start of the walk to the end of "
          "the stream); synfast CPU = RUSAGE_SELF of the synfast process; borg CPU = "
          "RUSAGE_CHILDREN when borg import-tar had exited (then borg rename's). synfast "
          "peak RSS = VmHWM, private = Private_Clean + Private_Dirty (file pages mapped by "
          "synfast alone count: rebuild's copy in --scratch), anon = Anonymous, polled "
          "every 20 ms; borg peak RSS = import-tar's ru_maxrss, which is at least synfast's "
          "RSS when it started borg (Linux counts the address space before exec).")
    print(f"\n(total {time.monotonic() - t_start:.0f} s)")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "via": "synfast", "scale": args.scale, "borg": version.strip(), "meta": meta,
            "alone": {k: [vars(r) for r in v] for k, v in alone.items()},
            "results": [{"engine": r.engine, "chunker": r.chunker, "compression": r.compression,
                         "nights": [vars(n) for n in r.nights]} for r in results]}, indent=2))
    return 0


# --------------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    head = ("| engine | chunker | compression | night1 orig MB | night1 dedup MB "
            "| night2 added MB | ratio % | night2 upload MB (segments) | import s n1/n2 "
            "| borg peak RSS MiB n1/n2 |")
    rows = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n1, n2 = r.nights
        rows.append(
            f"| {r.engine} | `{r.chunker}` | `{r.compression}` "
            f"| {n1.stats['original_size'] / MB:.1f} "
            f"| {n1.stats['deduplicated_size'] / MB:.1f} "
            f"| {n2.stats['deduplicated_size'] / MB:.2f} "
            f"| {100 * r.added_ratio:.2f} "
            f"| {n2.upload / MB:.2f} ({n2.upload_segments / MB:.2f}) "
            f"| {n1.seconds:.1f} / {n2.seconds:.1f} "
            f"| {n1.rss_kib / 1024:.0f} / {n2.rss_kib / 1024:.0f} |")
    return "\n".join(rows)


def copies_table(meta: dict[str, Any]) -> str:
    rows = ["| copy | synfast copy s | apparent MB | allocated MB | tar stream MB "
            "| tar\\|reader s | tar >/dev/null s | new vs night1 in 4K / 16K / 64K blocks MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in sorted(meta["copies"].items()):
        novel = " / ".join(f"{c['novel'][b] / MB:.2f}" for b in ("4096", "16384", "65536")
                           ) if "novel" in c else ""
        rows.append(f"| {name} | {c['copy_s']:.2f} | {c['apparent'] / MB:.1f} "
                    f"| {c['allocated'] / MB:.1f} | {c['tar_bytes'] / MB:.1f} "
                    f"| {c['tar_s']:.2f} | {c['tar_null_s']:.2f} | {novel} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- probes


def _stderr_lines(text: str, limit: int = 6) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith((" ", "Traceback", "Platform", "Linux",
                                                     "Borg:", "PID:", "sys.argv",
                                                     "SSH_ORIGINAL"))]
    return keep[:limit] + (["..."] if len(keep) > limit else [])


class Prober:
    """Runs borg in the situations a nightly job meets, reports rc, stderr and leftovers."""

    def __init__(self, workdir: Path, log: Any) -> None:
        self.dir = workdir / "probe"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.repo = self.dir / "repo"
        self.env = borg_env(self.dir / "base")
        self.log = log
        self.mode = borg_init(self.repo, self.env)
        src = self.dir / "src"
        src.mkdir()
        rng = random.Random(SEED)
        for name, size in (("a.bin", 160 * MIB), ("b.bin", 80 * MIB)):
            with open(src / name, "wb") as f:
                for _ in range(size // MIB):
                    f.write(rng.randbytes(MIB))
        self.tar = self.dir / "src.tar"
        with open(self.tar, "wb") as f:
            subprocess.run([*TAR, "-C", os.fspath(src), "."], stdout=f, check=True)
        with tarfile.open(self.tar) as t:
            self.members = [(m.name, m.offset, m.offset_data, m.size) for m in t.getmembers()]
        shutil.rmtree(src)

    def borg(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        p = subprocess.run(["borg", *args], env=env or self.env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr

    def leftovers(self) -> str:
        locks = sorted(p.name for p in self.repo.glob("lock*"))
        rc, out, err = self.borg("list", "--consider-checkpoints", "--short", "--lock-wait", "5",
                                 os.fspath(self.repo))
        extra = f"; next borg command said: {_stderr_lines(err)}" if err.strip() else ""
        return f"lock files {locks or 'none'}; archives {out.split()} (list rc {rc}){extra}"

    def feed(self, archive: str, *, rate: float, limit: int | None, opts: tuple[str, ...] = (),
             signals: tuple[tuple[float, int], ...] = (), env: dict[str, str] | None = None,
             ) -> tuple[int, str, str]:
        """Stream the probe tar into import-tar at RATE bytes/s (LIMIT bytes, then EOF)."""
        proc = subprocess.Popen(
            ["borg", "import-tar", "--show-rc", *opts, f"{self.repo}::{archive}", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env or self.env, text=False,
            # a nightly job's borg gets SIGINT's default action even if we were started
            # with SIGINT ignored (a background job of a non-interactive shell)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin = proc.stdin
        fed = [0]

        def writer() -> None:
            t0 = time.monotonic()
            try:
                with open(self.tar, "rb") as f:
                    while limit is None or fed[0] < limit:
                        want = MIB if limit is None else min(MIB, limit - fed[0])
                        block = f.read(want)
                        if not block:
                            break
                        stdin.write(block)
                        fed[0] += len(block)
                        delay = fed[0] / rate - (time.monotonic() - t0)
                        if delay > 0:
                            time.sleep(delay)
                stdin.close()
            except (BrokenPipeError, ValueError):
                pass

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        t0 = time.monotonic()
        for at, sig in signals:
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            if proc.poll() is None:
                proc.send_signal(sig)
        out = proc.stdout.read()
        err = proc.stderr.read()
        rc = proc.wait()
        thread.join(timeout=5)
        return rc, out.decode(errors="replace"), (
            err.decode(errors="replace") + f"\n[fed {fed[0]} of {self.tar.stat().st_size}]")

    def report(self, title: str, rc: int, err: str) -> None:
        self.log(f"\n### {title}\nrc {rc}")
        for ln in _stderr_lines(err, 8):
            self.log(f"    {ln}")
        self.log(f"  after: {self.leftovers()}")

    def clean(self) -> None:
        rc, out, _ = self.borg("list", "--consider-checkpoints", "--short", os.fspath(self.repo))
        for name in out.split():
            self.borg("delete", f"{self.repo}::{name}")
        self.borg("compact", os.fspath(self.repo))

    def run(self) -> None:
        size = self.tar.stat().st_size
        rate = 40 * MB
        version = subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout
        self.log(f"{version.strip()}, repository {self.mode}; probe tar {size / MB:.0f} MB: "
                 f"{self.members}; fed at {rate / MB:.0f} MB/s")

        rc, _, err = self.feed("ok", rate=1e12, limit=None, opts=("--json",))
        self.report("baseline import (--json)", rc, err)
        rc, _, err = self.borg("import-tar", "--show-rc", f"{self.dir}/no-such-repo::x",
                               os.fspath(self.tar))
        self.report("repository does not exist", rc, err)
        rc, _, err = self.borg("import-tar", "--log-json", f"{self.dir}/no-such-repo::x",
                               os.fspath(self.tar))
        self.report("repository does not exist, --log-json", rc, err)
        wrong = dict(self.env, BORG_PASSPHRASE="wrong")
        rc, _, err = self.borg("import-tar", "--show-rc", f"{self.repo}::x",
                               os.fspath(self.tar), env=wrong)
        self.report("wrong BORG_PASSPHRASE", rc, err)
        rc, _, err = self.borg("import-tar", "--log-json", f"{self.repo}::x",
                               os.fspath(self.tar), env=wrong)
        self.report("wrong BORG_PASSPHRASE, --log-json", rc, err)
        rc, _, err = self.borg("import-tar", "--show-rc", f"{self.repo}::ok",
                               os.fspath(self.tar))
        self.report("archive name already exists", rc, err)

        holder = subprocess.Popen(["borg", "with-lock", os.fspath(self.repo), "sleep", "30"],
                                  env=self.env, stderr=subprocess.PIPE)
        time.sleep(3)
        t0 = time.monotonic()
        rc, _, err = self.borg("import-tar", "--show-rc", "--lock-wait", "1",
                               f"{self.repo}::locked", os.fspath(self.tar))
        waited = time.monotonic() - t0
        self.log(f"\n### repository locked (borg with-lock ... sleep 30), --lock-wait 1 "
                 f"(returned after {waited:.1f} s)\nrc {rc}")
        for ln in _stderr_lines(err):
            self.log(f"    {ln}")
        rc, _, err = self.borg("import-tar", "--log-json", "--lock-wait", "1",
                               f"{self.repo}::locked", os.fspath(self.tar))
        self.log(f"  same with --log-json: rc {rc}: {_stderr_lines(err)}")
        holder.send_signal(signal.SIGTERM)
        holder.wait()
        self.clean()

        timeline = size / rate
        mid = min(4.0, timeline / 2)
        cases: list[tuple[str, tuple[str, ...], tuple[tuple[float, int], ...]]] = [
            ("one SIGINT mid-stream", (), ((mid, signal.SIGINT),)),
            ("two SIGINTs mid-stream (1.5 s apart)", (),
             ((mid, signal.SIGINT), (mid + 1.5, signal.SIGINT))),
            ("SIGTERM mid-stream (default checkpoint interval 1800 s)", (),
             ((mid, signal.SIGTERM),)),
            ("SIGTERM mid-stream with -c 1 (checkpoint every second)", ("-c", "1"),
             ((mid, signal.SIGTERM),)),
            ("SIGHUP mid-stream", (), ((mid, signal.SIGHUP),)),
            ("SIGKILL mid-stream", (), ((mid, signal.SIGKILL),)),
        ]
        for i, (title, opts, sigs) in enumerate(cases):
            rc, _, err = self.feed(f"sig{i}", rate=rate, limit=None, opts=opts, signals=sigs)
            self.report(f"{title}: archive sig{i}", rc, err)
            rc2, out, _ = self.borg("list", "--short", "--consider-part-files",
                                    f"{self.repo}::sig{i}")
            if rc2 == 0:
                self.log(f"  sig{i} holds (part files shown): {out.split()}")
            self.clean()

        name2, off2 = self.members[-1][0], self.members[-1][1]
        truncations = [
            ("tar truncated in the middle of a member's data", size // 3),
            (f"tar truncated exactly before the header of the last member {name2}", off2),
            ("tar truncated inside that member's first header block", off2 + 300),
            ("tar truncated inside its second header block", off2 + 700),
            ("tar without its end-of-archive blocks", self.members[-1][2] + self.members[-1][3]),
        ]
        for i, (title, cut) in enumerate(truncations):
            rc, _, err = self.feed(f"trunc{i}", rate=1e12, limit=cut)
            self.report(f"{title} (stdin closed after {cut} bytes): archive trunc{i}", rc, err)
            rc2, out, _ = self.borg("list", "--short", f"{self.repo}::trunc{i}")
            if rc2 == 0:
                self.log(f"  trunc{i} holds: {out.split()}")
            self.clean()

        rc, _, err = self.borg("import-tar", f"{self.repo}::names", os.fspath(self.tar))
        rc, out, _ = self.borg("list", "--short", f"{self.repo}::names")
        first = self.members[1][0]
        self.log(f"\n### member names from `tar -C DIR .`: stored as {out.split()}")
        for pattern in (first, first.removeprefix("./"), "re:^" + re.escape(first) + "$"):
            p = subprocess.run(["borg", "extract", "--stdout", f"{self.repo}::names", pattern],
                               env=self.env, capture_output=True)
            self.log(f"  borg extract --stdout ::names {pattern!r}: rc {p.returncode}, "
                     f"{len(p.stdout)} bytes, stderr {_stderr_lines(p.stderr.decode())}")
        self.clean()
        shutil.rmtree(self.dir)


# --------------------------------------------------------------------------- main


def split_list(text: str) -> list[str]:
    return [x for x in re.split(r"[;\s]+", text) if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.offsite", description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1: about 300 MB of LMDB data")
    ap.add_argument("--engines", default=";".join(DEFAULT_ENGINES))
    ap.add_argument("--chunkers", default=None,
                    help="borg --chunker-params values, separated by ';' or blanks (default: "
                    f"{';'.join(DEFAULT_CHUNKERS)}; with --via synfast {VIA_CHUNKERS})")
    ap.add_argument("--compression", default=None,
                    help="borg --compression values; the first is used with every chunker, "
                    "the others with the best chunker of each engine (default: "
                    f"{';'.join(DEFAULT_COMPRESSION)}; with --via synfast lz4, each used with "
                    "every chunker)")
    ap.add_argument("--via", choices=("tar", "synfast"), default="tar",
                    help="tar: synfast copy, then GNU tar | borg import-tar; synfast: "
                    "synfast backup SVC borg:REPO::nightN itself")
    ap.add_argument("--alone-rounds", type=int, default=3,
                    help="with --via synfast: runs of synfast backup SVC - | cat per engine "
                    "and night (synfast without borg)")
    ap.add_argument("--all-pairs", action="store_true",
                    help="every chunker with every compression")
    ap.add_argument("--workdir", type=Path, default=CACHE / "offsite-work",
                    help="where the repositories and borg's cache go (deleted as we go)")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--probe-borg", action="store_true",
                    help="only probe borg's failure behaviour (exit codes, locks, checkpoints)")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.probe_borg:
        Prober(args.workdir, log).run()
        return 0
    if args.via == "synfast":
        return main_via_synfast(args, log)
    engines = split_list(args.engines)
    chunkers = split_list(args.chunkers or ";".join(DEFAULT_CHUNKERS))
    compressions = split_list(args.compression or ";".join(DEFAULT_COMPRESSION))
    t_start = time.monotonic()
    home, meta = prepare(args.scale, engines, log)
    version = subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout
    results: list[Result] = []
    for engine in engines:
        first = [] if args.all_pairs else compressions[:1]
        plan = [(c, z) for c in chunkers for z in (compressions if args.all_pairs else first)]
        for chunker, comp in plan:
            results.append(run_combination(home, args.workdir, engine, chunker, comp, log))
        if not args.all_pairs and len(compressions) > 1:
            mine = [r for r in results if r.engine == engine]
            best = min(mine, key=lambda r: (r.nights[1].stats["deduplicated_size"],
                                            r.nights[0].stats["deduplicated_size"]))
            for comp in compressions[1:]:
                results.append(run_combination(home, args.workdir, engine, best.chunker, comp,
                                               log))
    print(f"\n## borg import-tar, two nights (scale {args.scale:g}; {version.strip()}, "
          f"{results[0].encryption if results else '-'})\n")
    print(f"Service: {meta['entries']} entries per environment, "
          f"night 2: {meta.get('mutation')}\n")
    print(table(results))
    print("\nnight2 added = deduplicated size of night2 (compressed, borg overhead included); "
          "ratio = that / night1's deduplicated size; upload = bytes of repository files "
          "night 2 created or changed (what rclone sync would send; in brackets the segment "
          "files, the rest is borg's index, hints and integrity files).\n")
    print(copies_table(meta))
    print(f"\n(total {time.monotonic() - t_start:.0f} s)")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "scale": args.scale, "borg": version.strip(), "meta": meta,
            "results": [{"engine": r.engine, "chunker": r.chunker, "compression": r.compression,
                         "encryption": r.encryption,
                         "nights": [vars(n) for n in r.nights]} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
