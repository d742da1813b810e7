"""The backup manifest: its schema, its checksums, writing it durably and reading it back.

A backup is complete exactly when ``DST/.synfast/manifest.json`` exists: it is
written last (temporary name, fsync, rename, fsync of the directory), and only
then is the partial directory renamed to its final name.  ``verify`` and
``restore`` trust nothing else: every file, directory, symlink and LMDB
environment of the backup is listed here with what it must look like.

Checksums are defined in :mod:`synfast.backup.checksum` (and
docs/reference/manifest.md); the manifest names the algorithm.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from synfast.errors import SynfastError, convert_error
from synfast.files import durable

FORMAT = "synfast-backup"
VERSION = 1
META_DIR = ".synfast"
MANIFEST = "manifest.json"
PARTIAL_MARKER = "partial.json"
VERIFIED = "verified.json"


class ManifestError(SynfastError):
    """A manifest that is missing, unreadable or not of our format."""


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


def document(*, source: Path, destination: str, started: float, opts: Any,
             records: dict[str, dict], env_records: dict[str, dict], together: bool,
             times: list[float], skipped: list[dict], excluded: list[str], directories: int,
             work: list[Any]) -> dict:
    """The manifest of a finished backup (schema: docs/reference/manifest.md), from
    the records of its entries (``records``, by path) and environments, the
    snapshots' times, what was left out, and the planned files and environments
    (``work``: walk entries, for the source's sizes).  ``opts`` is the
    :class:`~synfast.backup.options.BackupOptions` it was made with."""
    from synfast import __version__
    from synfast.backup import checksum as cks

    envs_out = [env_records[k] for k in sorted(env_records)]
    finished = time.time()
    entries = [records[k] for k in sorted(records)]
    regular = [r for r in entries if r["type"] in ("file", "env")]
    return {
        "format": FORMAT,
        "version": VERSION,
        "tool": {"name": "synfast", "version": __version__},
        "source": str(source),
        "destination": destination,
        "host": hostname(),
        "started": iso(started),
        "finished": iso(finished),
        "seconds": round(finished - started, 6),
        "options": opts.as_manifest(),
        "checksum": opts.algorithm,
        "checksum_block": cks.BLOCK,
        "checksum_segment": cks.SEGMENT,
        "snapshots": {
            "method": "begun together" if together
            else "one per environment, when its copy starts",
            "first": iso(min(times)) if times else None,
            "last": iso(max(times)) if times else None,
            "spread_seconds": round(max(times) - min(times), 6) if times else 0.0,
        },
        "entries": entries,
        "environments": envs_out,
        "skipped": skipped,
        "excluded": excluded,
        "totals": {
            "files": sum(1 for r in regular if r["type"] == "file"),
            "environments": len(envs_out),
            "directories": directories,
            "symlinks": sum(1 for r in entries if r["type"] == "symlink"),
            "skipped": len(skipped),
            "excluded": len(excluded),
            "apparent_bytes": sum(r["size"] for r in regular),
            "allocated_bytes": sum(r["allocated"] for r in regular),
            "source_apparent_bytes": sum(e.st.st_size for e in work),
            "source_allocated_bytes": sum(e.st.st_blocks * 512 for e in work),
            "environment_bytes_written": sum(e["bytes_written"] for e in envs_out),
            "entries": sum(e["entries"] for e in envs_out),
        },
    }


def dumps(obj: Any) -> str:
    """``obj`` as JSON a person can read: a line per key of a top-level
    object and per item of its lists.  Each line comes from json's C encoder;
    an indented ``json.dumps`` runs the pure-Python one, which took longer
    than copying a tree of 20,000 small files whose manifest it wrote."""
    if not isinstance(obj, dict) or not obj:
        return json.dumps(obj)
    enc = json.JSONEncoder().encode
    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value:
            items = ",\n  ".join(enc(v) for v in value)
            lines.append(f" {enc(key)}: [\n  {items}\n ]")
        else:
            lines.append(f" {enc(key)}: {enc(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def write_json_durably(path: Path, obj: Any, *, fsync: bool = True,
                       text: str | None = None) -> None:
    """Write ``obj`` as JSON (:func:`dumps`, or ``text`` when the caller
    encoded it already) to ``path``, whole or not at all
    (:func:`synfast.files.durable.write_atomic`)."""
    data = ((dumps(obj) if text is None else text) + "\n").encode()
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

    def invalid(what: str) -> ManifestError:
        return ManifestError(where, f"is invalid: {what}",
                             "it was not written by synfast; do not trust this backup")

    seen: set[str] = set()
    with_checksums = isinstance(obj["checksum"], str)
    for i, entry in enumerate(obj["entries"]):
        for key, kind in _ENTRY_REQUIRED.items():
            if not has(entry, key, kind):
                raise incomplete(f"entry {i} lacks {key!r}")
        kind_ = entry["type"]
        if kind_ not in ("dir", "file", "env", "symlink"):
            raise incomplete(f"entry {i} has an unknown type {kind_!r}")
        if not _inside(entry["path"], root_ok=kind_ == "dir"):
            raise invalid(f"entry {i} names {entry['path']!r}, which is not a path inside "
                          "the backup")
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
        if not (_inside(env["path"], root_ok=False) and _inside(env["data"], root_ok=False)):
            raise invalid(f"environment {i} names a path outside the backup")
        if not all(has(env["databases"], name, int) for name in env["databases"]):
            raise incomplete(f"environment {i} has bad 'databases'")
    return obj


def _inside(path: str, *, root_ok: bool) -> bool:
    """Whether a manifest's ``path`` stays inside the backup: relative, no ``..``,
    ``.`` or empty components (only the root directory's entry is ``""``)."""
    if path == "":
        return root_ok
    return not path.startswith("/") and "\0" not in path and all(
        part not in ("", ".", "..") for part in path.split("/"))


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
