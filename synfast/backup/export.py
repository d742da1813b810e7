"""An existing backup directory streamed as ``synfast backup SRC -`` would have
streamed it (local backups every night, then off-site).

Members come in the stream's order (directories, files and environments,
symlinks, the manifest last), written by :mod:`synfast.backup.stream`'s
writer.  Every file's checksum is computed as it passes and compared with the
manifest; a mismatch stops the stream before the manifest, so what was
written is not a backup, and the backup's own manifest is streamed byte for
byte.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from synfast.backup import checksum as cks
from synfast.backup import manifest
from synfast.backup import tarformat as tf
from synfast.backup.stream import ProgressFn, StreamReport
from synfast.backup.tarwriter import MemberWriter, Sink, file_runs
from synfast.errors import CopyFailed, convert_error


def export_stream(backup: str | os.PathLike[str], fd: int, *, label: str = "-",
                  progress: ProgressFn | None = None) -> StreamReport:
    """Stream the backup directory ``backup`` as :func:`backup_stream` would
    have; each file's checksum is checked as it passes, and a mismatch stops
    the stream before its manifest."""
    t0 = time.monotonic()
    b = Path(os.path.abspath(backup))
    doc = manifest.read(b)
    report = StreamReport(b, label, manifest=doc)
    sink = Sink(fd, label)
    algorithm = doc.get("checksum")
    w = MemberWriter(sink, algorithm if algorithm in cks.ALGORITHMS else None)
    try:
        entries = [e for e in doc["entries"]
                   if e["path"].split("/")[0] != manifest.META_DIR]
        for e in _in_order(entries):
            path = b / e["path"] if e["path"] else b
            if e["type"] == "dir":
                if e["path"]:
                    w.directory(e["path"], _lstat(path))
            elif e["type"] == "symlink":
                w.symlink(e["path"], e["target"], _lstat(path))
            else:
                _export_file(w, b, e)
                if progress:
                    progress("item", {"path": e["path"], "bytes": e["size"], "kind": e["type"],
                                      "written": e.get("allocated", 0)})
        _finish_export(w, b)
    finally:
        w.close()
    report.bytes_streamed = sink.bytes
    report.seconds = time.monotonic() - t0
    return report


def _in_order(entries: list[dict]) -> Iterator[dict]:
    """Directories, then files and environments, then symlinks (as streamed)."""
    order = {"dir": 0, "file": 1, "env": 1, "symlink": 2}
    yield from sorted(entries, key=lambda e: (order[e["type"]], e["path"]))


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as err:
        raise convert_error(err, path) from err


def _export_file(w: MemberWriter, b: Path, e: dict) -> None:
    path = b / e["path"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as err:
        raise convert_error(err, path) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != e["size"]:
            raise CopyFailed(path, "does not match the backup's manifest",
                             "run synfast verify on the backup")
        digest, _ = w.file(e["path"], fd, st, file_runs(fd, st.st_size), st.st_size)
    except OSError as err:
        raise convert_error(err, path) from err
    finally:
        os.close(fd)
    if e.get("checksum") and digest != e["checksum"]:
        raise CopyFailed(path, "content differs from the manifest (checksum mismatch); the "
                         "stream was stopped before its manifest",
                         "run synfast verify on the backup, and export another one")


def _finish_export(w: MemberWriter, b: Path) -> None:
    """The backup's own manifest, byte for byte, as the last member."""
    mpath = manifest.manifest_path(b)
    try:
        data = mpath.read_bytes()
    except OSError as err:
        raise convert_error(err, mpath) from err
    w.directory(manifest.META_DIR, _lstat(mpath.parent))
    w.small(f"{manifest.META_DIR}/{manifest.MANIFEST}", data)
    w.sink.write(tf.END)
