"""The backup manifest: its schema, its checksums, writing it durably and reading it back.

A backup is complete exactly when ``DST/.synfast/manifest.json`` exists: it is
written last (temporary name, fsync, rename, fsync of the directory), and only
then is the partial directory renamed to its final name.  ``verify`` and
``restore`` trust nothing else: every file, directory, symlink and LMDB
environment of the backup is listed here with what it must look like.

Checksums (``blake2b-256-sparse-v2``) are BLAKE2b (32-byte digest) over a
canonical form of a file's content that does not depend on where its holes
are, so a sparse source, a dense copy and a copy with zero blocks punched out
all agree, and a 16 GiB sparse file is hashed by reading only its data:

- the file is cut into aligned segments of :data:`SEGMENT` bytes (64 MiB; the
  last may be shorter), and each segment into aligned blocks of :data:`BLOCK`
  bytes (64 KiB; the last may be shorter);
- a block that lies wholly in a hole, or whose bytes are all zero, is a *zero
  block*; it is never fed to the hash by content;
- a segment's digest is BLAKE2b-256 of: for every maximal run of zero blocks
  ``b"Z" + <run length in bytes, u64 LE>``, for every other block
  ``b"D" + <its bytes>``, in order, then ``b"E" + <segment length, u64 LE>``;
- the file's checksum is BLAKE2b-256 of ``b"S" + <segment digest>`` for every
  segment in order, then ``b"E" + <file size, u64 LE>``.

Only blocks that touch a data extent (SEEK_DATA/SEEK_HOLE) are read.  Segments
are hashed natively, four at a time per thread and on every core (see
:func:`checksum_fd`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from synfast.errors import SynfastError, convert_error
from synfast.files import durable

FORMAT = "synfast-backup"
VERSION = 1
CHECKSUM_ALGORITHM = "blake2b-256-sparse-v2"
BLOCK = 1 << 16
SEGMENT = 1 << 26
META_DIR = ".synfast"
MANIFEST = "manifest.json"
PARTIAL_MARKER = "partial.json"
VERIFIED = "verified.json"

_U64 = struct.Struct("<Q")


class ManifestError(SynfastError):
    """A manifest that is missing, unreadable or not of our format."""


_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One process-wide pool for segment hashing (the native hasher releases the
    GIL), so a large file is hashed on every core even when it is the last one left."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                       thread_name_prefix="synfast-hash")
        return _POOL


def segments_of(fd: int, size: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The file's segments as ``(start, end, ranges)``: ``ranges`` are the
    block-aligned ranges inside the segment that touch a data extent (merged,
    in order); only they are read."""
    from synfast.files.sparse import extents

    merged: list[tuple[int, int]] = []
    for off, length in extents(fd):
        first = off // BLOCK * BLOCK
        end = min(size, -(-(off + length) // BLOCK) * BLOCK)
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    per_seg: dict[int, list[tuple[int, int]]] = {}
    for first, end in merged:
        while first < end:
            seg = first // SEGMENT
            cut = min(end, (seg + 1) * SEGMENT)
            per_seg.setdefault(seg, []).append((first, cut))
            first = cut
    return [(seg * SEGMENT, min(size, (seg + 1) * SEGMENT), per_seg.get(seg, []))
            for seg in range(max(1, -(-size // SEGMENT)))]


def checksum_fd(fd: int) -> str:
    """Canonical BLAKE2b of the open regular file ``fd`` (see the module docstring).

    Segment digests come from :mod:`synfast.backup._hash`, which hashes four segments
    at once per thread (AVX2 where the CPU has it); the segments are dealt out
    round-robin to the pool's threads when there are more than four with data.
    """
    from synfast.backup import _hash

    size = os.fstat(fd).st_size
    segments = segments_of(fd, size)
    with_data = sum(1 for s in segments if s[2])
    workers = min(os.cpu_count() or 1, -(-with_data // 4))
    if workers <= 1:
        digests = _hash.segment_digests(fd, segments)
    else:
        parts = [segments[i::workers] for i in range(workers)]
        futures = [_pool().submit(_hash.segment_digests, fd, part) for part in parts]
        digests = [b""] * len(segments)
        for i, f in enumerate(futures):
            digests[i::workers] = f.result()
    h = hashlib.blake2b(digest_size=32)
    for d in digests:
        h.update(b"S" + d)
    h.update(b"E" + _U64.pack(size))
    return h.hexdigest()


def checksum_file(path: str | os.PathLike[str]) -> str:
    """Canonical BLAKE2b of the regular file at ``path`` (not followed if a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return checksum_fd(fd)
    finally:
        os.close(fd)


def iso(t: float) -> str:
    """A UTC timestamp with microseconds, as the manifest writes times."""
    # Rounded to the microsecond in integers: truncating the float's fraction
    # could print a time read back by parse_iso one microsecond early.
    sec, usec = divmod(round(t * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{usec:06d}Z"


def parse_iso(text: str) -> float:
    """The inverse of :func:`iso` (also accepts times without fractions)."""
    import calendar

    text = text.rstrip("Z")
    frac = 0.0
    if "." in text:
        text, f = text.split(".", 1)
        frac = float("0." + f)
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) + frac


def hostname() -> str:
    return socket.gethostname()


def write_json_durably(path: Path, obj: Any, *, fsync: bool = True) -> None:
    """Write ``obj`` as JSON to ``path``, whole or not at all
    (:func:`synfast.files.durable.write_atomic`)."""
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()
    try:
        durable.write_atomic(path, data, mode=0o644, replace=True, fsync=fsync)
    except OSError as err:
        raise convert_error(err, path) from err


def manifest_path(backup: str | os.PathLike[str]) -> Path:
    return Path(backup) / META_DIR / MANIFEST


_REQUIRED = {
    "format": str, "version": int, "tool": dict, "source": str, "host": str,
    "started": str, "finished": str, "options": dict, "checksum": (str, type(None)),
    "snapshots": dict, "entries": list, "environments": list, "skipped": list,
    "totals": dict,
}
_ENTRY_REQUIRED = {"path": str, "type": str, "mode": int}
_ENV_REQUIRED = {"path": str, "data": str, "layout": str, "databases": dict,
                 "main_entries": int, "entries": int}


def validate(obj: Any, where: Path) -> dict:
    """Check that ``obj`` is a manifest of a format this version understands."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ManifestError(where, "is not a synfast backup manifest",
                            "give a directory made by synfast backup")
    if obj.get("version") != VERSION:
        raise ManifestError(where, f"has manifest version {obj.get('version')!r}; this "
                            f"synfast reads version {VERSION}", "use a matching synfast")
    for key, kind in _REQUIRED.items():
        if not isinstance(obj.get(key), kind):
            raise ManifestError(where, f"is incomplete: field {key!r} missing or wrong",
                                "the backup is damaged; use another one")
    def incomplete(what: str) -> ManifestError:
        return ManifestError(where, f"is incomplete: {what}",
                             "the backup is damaged; use another one")

    def has(d: Any, key: str, kind: Any) -> bool:
        # bool is an int in Python; no count or size of ours is a bool
        v = d.get(key) if isinstance(d, dict) else None
        return isinstance(v, kind) and not isinstance(v, bool)

    seen: set[str] = set()
    with_checksums = isinstance(obj["checksum"], str)
    for i, entry in enumerate(obj["entries"]):
        for key, kind in _ENTRY_REQUIRED.items():
            if not has(entry, key, kind):
                raise incomplete(f"entry {i} lacks {key!r}")
        kind_ = entry["type"]
        if kind_ not in ("dir", "file", "env", "symlink"):
            raise incomplete(f"entry {i} has an unknown type {kind_!r}")
        if entry["path"] in seen:
            raise incomplete(f"entry {i} lists {entry['path']!r} a second time")
        seen.add(entry["path"])
        if kind_ in ("file", "env"):
            if not has(entry, "size", int):
                raise incomplete(f"entry {i} lacks 'size'")
            # A backup made with checksums has one for every file.
            if with_checksums and not has(entry, "checksum", str):
                raise incomplete(f"entry {i} lacks 'checksum'")
        if kind_ == "symlink" and not has(entry, "target", str):
            raise incomplete(f"entry {i} lacks 'target'")
    for i, env in enumerate(obj["environments"]):
        for key, kind in _ENV_REQUIRED.items():
            if not has(env, key, kind):
                raise incomplete(f"environment {i} lacks {key!r}")
        if not all(has(env["databases"], name, int) for name in env["databases"]):
            raise incomplete(f"environment {i} has bad 'databases'")
    return obj


def read(backup: str | os.PathLike[str]) -> dict:
    """Read and validate the manifest of the backup directory ``backup``."""
    b = Path(backup)
    if not b.is_dir():
        if not os.path.lexists(b):
            raise ManifestError(b, "does not exist", "check the path")
        raise ManifestError(b, "is not a directory", "give a backup directory")
    path = manifest_path(b)
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        hint = ("it is an unfinished backup (interrupted); remove it with prune or "
                "backup --clean-partial" if (b / META_DIR / PARTIAL_MARKER).exists()
                else "not a complete synfast backup")
        raise ManifestError(path, "is missing", hint) from err
    except OSError as err:
        raise convert_error(err, path) from err
    try:
        obj = json.loads(text)
    except ValueError as err:
        raise ManifestError(path, f"is not valid JSON ({err.msg} at line {err.lineno})",
                            "the backup is damaged; use another one") from err
    return validate(obj, path)


def read_verified(backup: str | os.PathLike[str]) -> dict | None:
    """The record of the last ``synfast verify`` of this backup, if any."""
    try:
        obj = json.loads((Path(backup) / META_DIR / VERIFIED).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
