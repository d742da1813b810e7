"""The benchmark's datasets: built deterministically and cached.

Every dataset is generated from a fixed seed, so two machines (or two runs a
month apart) measure the same bytes.  Building the large ones takes minutes,
so each is cached under ``bench/.cache/`` in a directory named after the
dataset, the scale and a hash of its generator's source code and parameters:
editing a generator changes the hash, and the stale copy is rebuilt (and the
old one removed) instead of being silently reused.

Datasets A and B of ``docs/reference/lmdb-facts.md`` are not generated here: the
issue-5 engine benchmark (``bench/lmdb_engines.py``) already builds them, and
two builders of "the same" dataset would drift apart.  Its builder is called
with its cache directory pointed into ours, and its source is part of our key.

The check of a copy against its dataset is in :mod:`bench.checks`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.checks import tree_sizes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CACHE = HERE / ".cache"

SEED = 20261126
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4 * KiB

# Parameters at scale 1 (the figures).
SPARSE_APPARENT = 16 * GiB
SPARSE_DATA = 512 * MiB
SPARSE_EXTENT = (64 * KiB, 1 * MiB)
SMALL_FILES = 50_000
SMALL_DIRS = 500
SMALL_MAX = 16 * KiB
# A Cortex keeps a handful of small environments (cell, hive, auth, ...), each
# with a map of about a gibibyte and a few MiB of data: sparse, mostly holes.
CORTEX_ENVS = ("cell", "hive", "auth", "nexus", "jsonstor", "axon", "trigger", "cron")
CORTEX_MAP = 1 * GiB
CORTEX_ENTRIES = 5_000
SERVICE_SMALL_FRACTION = 0.1

NAMES = ("sparse", "lmdb-a", "lmdb-b", "small-files", "service")


@dataclass
class Dataset:
    """A built dataset: what to copy, and the facts a report needs about it."""

    name: str
    kind: str                     # "file", "env" (an LMDB environment dir) or "tree"
    path: Path
    scale: float
    key: str
    build_seconds: float          # 0.0 when it came from the cache
    has_envs: bool
    meta: dict = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Apparent and allocated bytes, and the same for LMDB data files only
        (dense contenders need the first, sparse-aware ones the second)."""
        return tree_sizes(self.path)


# ----------------------------------------------------------------- generators

def _fill(f, rng: random.Random, size: int) -> None:
    """Write ``size`` random bytes in pieces, so memory stays small."""
    while size:
        n = min(size, 4 * MiB)
        f.write(rng.randbytes(n))
        size -= n


def build_sparse(dest: Path, scale: float, deps: dict[str, Dataset]) -> dict:
    """One file of 16 GiB apparent size holding 512 MiB of random data in
    extents of 64 KiB to 1 MiB, at block-aligned random offsets (the rest holes)."""
    apparent = max(MiB, int(SPARSE_APPARENT * scale) // BLOCK * BLOCK)
    data = max(SPARSE_EXTENT[0], int(SPARSE_DATA * scale) // BLOCK * BLOCK)
    rng = random.Random(f"{SEED}-sparse")
    sizes: list[int] = []
    left = data
    while left:
        size = min(left, rng.randrange(SPARSE_EXTENT[0], SPARSE_EXTENT[1] + 1, BLOCK))
        sizes.append(size)
        left -= size
    # Spread the holes: cut the hole space at len(sizes) random block offsets.
    hole_blocks = (apparent - data) // BLOCK
    cuts = sorted(rng.randrange(hole_blocks + 1) for _ in sizes)
    gaps = [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    offset = 0
    with open(dest, "wb") as f:
        for gap, size in zip(gaps, sizes, strict=True):
            offset += gap * BLOCK
            f.seek(offset)
            _fill(f, rng, size)
            offset += size
        f.truncate(apparent)
    return {"apparent": apparent, "data": data, "extents": len(sizes)}


def build_small_files(dest: Path, scale: float, deps: dict[str, Dataset]) -> dict:
    """50,000 files of 0 to 16 KiB (uniform) of random bytes in 500 directories."""
    files = max(10, round(SMALL_FILES * scale))
    dirs = max(1, round(SMALL_DIRS * scale))
    rng = random.Random(f"{SEED}-small-files")
    for d in range(dirs):
        (dest / f"d{d:03d}").mkdir(parents=True)
    total = 0
    for i in range(files):
        size = rng.randrange(SMALL_MAX + 1)
        with open(dest / f"d{i % dirs:03d}" / f"f{i:05d}.bin", "wb") as f:
            f.write(rng.randbytes(size))
        total += size
    return {"files": files, "dirs": dirs, "bytes": total}


def _lmdb_builder(letter: str) -> Callable[[Path, float, dict[str, Dataset]], dict]:
    """Dataset A or B, built by bench/lmdb_engines.py's own builder (see module doc)."""

    def build(dest: Path, scale: float, deps: dict[str, Dataset]) -> dict:
        le = _lmdb_engines()
        scratch = dest.parent / "lmdb-engines-cache"
        saved = le.CACHE
        le.CACHE = scratch        # its builder writes to CACHE / f"{name}-scale{scale:g}"
        try:
            built = le.build_dataset(letter, scale)
        finally:
            le.CACHE = saved
        facts = (built / ".complete").read_text().split()
        (built / ".complete").unlink()
        built.rename(dest)
        shutil.rmtree(scratch, ignore_errors=True)
        return dict(f.split("=", 1) for f in facts)

    return build


def _lmdb_engines():
    """Import the issue-5 benchmark module that owns the A/B generators."""
    if os.fspath(ROOT) not in sys.path:
        sys.path.insert(0, os.fspath(ROOT))
    from bench import lmdb_engines

    return lmdb_engines


def _lmdb_key_material(letter: str) -> str:
    le = _lmdb_engines()
    return inspect.getsource(le.build_dataset) + inspect.getsource(le.map_size) + repr(
        (le.DATASETS[letter], le.MAP_SIZE, le.BATCH, le.SEED, le.DB_NAMES))


def _cortex_env(path: Path, rng: random.Random, entries: int, scale: float) -> None:
    """A small environment as a Cortex opens them (writemap, so the data file is
    as large as the map and sparse): two named databases of modest values.  The
    map scales with the data (at least 64 MiB), so that a quick run's hole
    readers do not read 1 GiB per environment."""
    import lmdb

    path.mkdir(parents=True)
    env = lmdb.open(os.fspath(path), map_size=max(64 << 20, int(CORTEX_MAP * scale) >> 20 << 20),
                    writemap=True, max_dbs=4)
    try:
        dbs = [env.open_db(b"meta"), env.open_db(b"items")]
        with env.begin(write=True) as txn:
            for i in range(entries):
                txn.put(rng.randbytes(16), rng.randbytes(rng.randrange(50, 2000)),
                        db=dbs[i % 2])
    finally:
        env.close()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (free, shares the cached bytes) or, across filesystems, copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        subprocess.run(["cp", "-a", "--reflink=auto", os.fspath(src), os.fspath(dst)],
                       check=True)


def build_service(dest: Path, scale: float, deps: dict[str, Dataset]) -> dict:
    """A service directory like a Cortex's: datasets A and B as two layers, eight
    small sparse environments, the sparse file, a slice of the small files, a
    config file and a UNIX socket (which a naive tree copy trips over)."""
    rng = random.Random(f"{SEED}-service")
    dest.mkdir()
    (dest / "cell.yaml").write_text("nexslog:en: true\nhttps:port: 4443\naha:name: cortex\n")
    for letter, ds in (("a", deps["lmdb-a"]), ("b", deps["lmdb-b"])):
        layer = dest / "layers" / f"layer-{letter}" / "layer_v2.lmdb"
        _link_or_copy(ds.path / "data.mdb", layer / "data.mdb")
        if (ds.path / "lock.mdb").exists():
            shutil.copy2(ds.path / "lock.mdb", layer / "lock.mdb")
    entries = max(10, round(CORTEX_ENTRIES * scale))
    for name in CORTEX_ENVS:
        _cortex_env(dest / "slabs" / f"{name}.lmdb", rng, entries, scale)
    _link_or_copy(deps["sparse"].path, dest / "axon" / "blobs" / "disk.img")
    small = deps["small-files"].path
    subdirs = sorted(p.name for p in small.iterdir())
    take = subdirs[: max(1, round(len(subdirs) * SERVICE_SMALL_FRACTION))]
    for sub in take:
        for f in sorted((small / sub).iterdir()):
            _link_or_copy(f, dest / "files" / sub / f.name)
    (dest / "sock").mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(os.fspath(dest / "sock" / "cell.sock"))
    finally:
        s.close()
    return {"cortex_envs": len(CORTEX_ENVS), "cortex_entries": entries,
            "small_dirs": len(take)}


@dataclass(frozen=True)
class Spec:
    kind: str
    build: Callable[[Path, float, dict[str, Dataset]], dict]
    deps: tuple[str, ...] = ()
    key_material: Callable[[], str] = lambda: ""
    payload: str = ""             # file name of the dataset inside its cache dir


def _own_source(*funcs: Callable) -> Callable[[], str]:
    """Key material: the source of the generator and its helpers, plus the
    module-level parameters they read."""
    params = repr((SEED, SPARSE_APPARENT, SPARSE_DATA, SPARSE_EXTENT, SMALL_FILES, SMALL_DIRS,
                   SMALL_MAX, CORTEX_ENVS, CORTEX_MAP, CORTEX_ENTRIES, SERVICE_SMALL_FRACTION))
    return lambda: params + "".join(inspect.getsource(f) for f in funcs)


SPECS: dict[str, Spec] = {
    "sparse": Spec("file", build_sparse, key_material=_own_source(build_sparse, _fill),
                   payload="sparse.img"),
    "lmdb-a": Spec("env", _lmdb_builder("A"), key_material=lambda: _lmdb_key_material("A"),
                   payload="lmdb-a"),
    "lmdb-b": Spec("env", _lmdb_builder("B"), key_material=lambda: _lmdb_key_material("B"),
                   payload="lmdb-b"),
    "small-files": Spec("tree", build_small_files, key_material=_own_source(build_small_files),
                        payload="small-files"),
    "service": Spec("tree", build_service, deps=("lmdb-a", "lmdb-b", "sparse", "small-files"),
                    key_material=_own_source(build_service, _cortex_env, _link_or_copy),
                    payload="service"),
}


def build(name: str, scale: float, cache: Path = DEFAULT_CACHE,
          log: Callable[[str], None] = lambda m: None) -> Dataset:
    """Return dataset ``name`` at ``scale``, building it (and what it is made
    of) only when the cache holds no copy made by the current generator."""
    spec = SPECS[name]
    deps = {d: build(d, scale, cache, log) for d in spec.deps}
    h = hashlib.sha256()
    h.update(json.dumps([name, scale, spec.kind, spec.payload]).encode())
    h.update(spec.key_material().encode())
    for d in spec.deps:
        h.update(deps[d].key.encode())
    key = h.hexdigest()[:16]
    stem = f"{name}-s{scale:g}"
    home = cache / f"{stem}-{key}"
    done = home / "complete.json"
    has_envs = name in ("lmdb-a", "lmdb-b", "service")
    if done.exists():
        meta = json.loads(done.read_text())
        return Dataset(name, spec.kind, home / spec.payload, scale, key, 0.0, has_envs, meta)
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"{stem}-*"):
        if stale.name.count("-") == stem.count("-") + 1:   # not e.g. "sparse-s1-x" vs longer
            log(f"removing stale dataset {stale.name} (generator changed)")
            shutil.rmtree(stale, ignore_errors=True)
    tmp = cache / f".{stem}-{key}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"building dataset {name} at scale {scale:g} ...")
    t0 = time.monotonic()
    meta = spec.build(tmp / spec.payload, scale, deps)
    seconds = time.monotonic() - t0
    meta["build_seconds"] = seconds
    (tmp / "complete.json").write_text(json.dumps(meta, indent=1))
    tmp.rename(home)
    ds = Dataset(name, spec.kind, home / spec.payload, scale, key, seconds, has_envs, meta)
    sz = ds.sizes()
    log(f"built {name} in {seconds:.1f} s: apparent {sz['apparent'] / GiB:.2f} GiB, "
        f"allocated {sz['allocated'] / GiB:.3f} GiB")
    return ds
