"""Checking a contender's output against its source: sizes, and equality that
knows what a copy must keep.

Plain files are compared byte for byte through the data extents of both files
(SEEK_DATA/SEEK_HOLE), so a 16 GiB sparse file costs its 512 MiB of data, not
16 GiB of zeros: where the source has a hole the copy must read as zeros.
LMDB environments are compared by ``mdb_dump -a`` (without the ``mapsize`` and
``maxreaders`` header lines, which a rebuild may choose differently), since a
compacting copy changes the bytes but not the data.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.datasets import Dataset

MiB = 1 << 20


# ----------------------------------------------------------------- sizes

def tree_sizes(path: Path) -> dict[str, int]:
    """Apparent and allocated bytes of a file or tree (each inode once), split
    so that LMDB data files (``data.mdb``) can be told apart."""
    out = {"apparent": 0, "allocated": 0, "env_apparent": 0, "env_allocated": 0, "files": 0}
    seen: set[tuple[int, int]] = set()
    for p, st in _walk(path):
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out["files"] += 1
        out["apparent"] += st.st_size
        out["allocated"] += st.st_blocks * 512
        if p.name == "data.mdb":
            out["env_apparent"] += st.st_size
            out["env_allocated"] += st.st_blocks * 512
    return out


def _walk(path: Path) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    yield path, st
    if stat.S_ISDIR(st.st_mode):
        for child in sorted(path.iterdir()):
            yield from _walk(child)


# ----------------------------------------------------------------- checking

def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The data extents of an open file, by SEEK_DATA/SEEK_HOLE (a filesystem
    without them reports one extent: the whole file)."""
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:                     # ENXIO: no data after pos
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def _union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for s, e in sorted(a + b):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def same_file(a: Path, b: Path) -> str | None:
    """None when the two files hold the same bytes, else why not.  Only the
    union of both files' data extents is read: outside it both are holes."""
    sa, sb = a.stat(), b.stat()
    if sa.st_size != sb.st_size:
        return f"size {sb.st_size} != {sa.st_size}"
    fa = os.open(a, os.O_RDONLY)
    try:
        fb = os.open(b, os.O_RDONLY)
        try:
            src_data = _extents(fa, sa.st_size)
            for start, end in _union(src_data, _extents(fb, sb.st_size)):
                for lo, hi, is_data in _split(start, end, src_data):
                    pos = lo
                    while pos < hi:
                        n = min(hi - pos, 4 * MiB)
                        got = os.pread(fb, n, pos)
                        # Where the source is a hole the copy must read as zeros:
                        # compare with zeros instead of reading the source's hole.
                        want = os.pread(fa, n, pos) if is_data else _ZEROS[:n]
                        if got != want:
                            return f"bytes differ in [{pos}, {pos + n})"
                        pos += n
        finally:
            os.close(fb)
    finally:
        os.close(fa)
    return None


_ZEROS = bytes(4 * MiB)


def _split(start: int, end: int,
           data: list[tuple[int, int]]) -> Iterator[tuple[int, int, bool]]:
    """Cut [start, end) into pieces that are wholly data or wholly hole in the
    extent list ``data``."""
    pos = start
    for s, e in data:
        if e <= pos:
            continue
        if s >= end:
            break
        if s > pos:
            yield pos, s, False
            pos = s
        hi = min(e, end)
        yield pos, hi, True
        pos = hi
    if pos < end:
        yield pos, end, False


_DUMP_CMD = ("set -o pipefail; mdb_dump -a \"$0\" | grep -Ev '^(mapsize|maxreaders)=' "
             "| sha256sum")


def dump_digest(env_dir: Path) -> str:
    """SHA-256 of ``mdb_dump -a`` of an environment, without the map size and
    reader slots (settings of the file, not data: a rebuild may choose them)."""
    r = subprocess.run(["bash", "-c", _DUMP_CMD, os.fspath(env_dir)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"mdb_dump -a failed: {r.stderr.strip()[:200]}")
    return r.stdout.split()[0]


class Verifier:
    """Checks copies of one dataset; remembers the source's dump digests (in
    the cache, keyed by the data file's identity) so each is computed once."""

    def __init__(self, cache: Path) -> None:
        self.store = cache / "dump-digests.json"
        try:
            self.known: dict[str, str] = json.loads(self.store.read_text())
        except (OSError, ValueError):
            self.known = {}

    def _source_digest(self, env_dir: Path) -> str:
        st = (env_dir / "data.mdb").stat()
        ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        if ident not in self.known:
            self.known[ident] = dump_digest(env_dir)
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self.store.write_text(json.dumps(self.known, indent=1))
        return self.known[ident]

    def verify(self, ds: Dataset, out: Path) -> tuple[bool, str]:
        """(equal, detail) for the copy ``out`` of dataset ``ds``."""
        try:
            problems, notes = self._compare(ds.path, out, "")
        except Exception as err:  # noqa: BLE001 - any failure to read the copy is a wrong copy
            return False, f"check failed: {err}"
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            return False, "; ".join(problems[:3]) + more
        return True, "; ".join(notes[:3])

    def _compare(self, src: Path, dst: Path, rel: str) -> tuple[list[str], list[str]]:
        problems: list[str] = []
        notes: list[str] = []
        name = rel or "."
        st = src.lstat()
        try:
            dt = dst.lstat()
        except FileNotFoundError:
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                notes.append(f"{name}: {_kind(st.st_mode)} not copied")
                return problems, notes
            return [f"{name}: missing"], notes
        if stat.S_IFMT(st.st_mode) != stat.S_IFMT(dt.st_mode):
            return [f"{name}: is a {_kind(dt.st_mode)}, not a {_kind(st.st_mode)}"], notes
        if stat.S_ISREG(st.st_mode):
            why = same_file(src, dst)
            if why:
                problems.append(f"{name}: {why}")
        elif stat.S_ISLNK(st.st_mode):
            if os.readlink(src) != os.readlink(dst):
                problems.append(f"{name}: symlink target differs")
        elif stat.S_ISDIR(st.st_mode):
            if (src / "data.mdb").is_file():
                if not (dst / "data.mdb").is_file():
                    return [f"{name}: no data.mdb in the copy"], notes
                if self._source_digest(src) != dump_digest(dst):
                    problems.append(f"{name}: mdb_dump -a differs")
                skip = {"data.mdb", "lock.mdb"}
            else:
                skip = {"lock.mdb"}
            names = {p.name for p in src.iterdir()} - skip
            for child in sorted(names):
                p, n = self._compare(src / child, dst / child, f"{rel}/{child}".lstrip("/"))
                problems += p
                notes += n
            extra = sorted({p.name for p in dst.iterdir()} - names - skip)
            if extra:
                notes.append(f"{name}: extra entries {extra[:3]}")
        return problems, notes


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return word
    return "special file"
