"""Reading a backup stream back: restore from it, or verify it, trusting nothing in it.

A stream (from ``synfast backup SRC -``, a tar file, ``borg export-tar``) is
untrusted input.  :func:`extract` writes it into a new, empty directory and
nowhere else:

- member names are read with Python's :mod:`tarfile` (sparse members included);
  a name that is absolute or holds a ``..`` component, a hard link, a device or
  FIFO, a member that would be written through a symlink (every directory on
  its way is opened with ``O_NOFOLLOW``) or over an earlier member is refused;
- a file's data is written where the stream puts it; holes stay holes, and
  all-zero blocks of a dense stream become holes too; its canonical checksum
  is computed as the data arrives (:class:`~synfast.backup.checksum.StreamChecksum`);
- the manifest must be the last member.  A stream that ends without one is cut
  short.  Then every member must be in the manifest and every manifest entry in
  the stream, with its type, size, symlink target and checksum; modes, owners
  and times are taken from the manifest.

Any refusal is one :class:`StreamRejected` naming the stream and the member;
the caller removes the directory.  :func:`restore_stream` and
:func:`verify_stream` then walk every environment (:func:`synfast.backup.verify.verify`
without re-reading the checksums) before the restore's swap
(:mod:`synfast.backup.restore`) or the verdict.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from synfast.backup import checksum as cks
from synfast.backup import manifest
from synfast.backup import tarformat as tf
from synfast.errors import SynfastError, convert_error
from synfast.files import durable
from synfast.files.sparse import apply_metadata

#: The largest manifest read from a stream.
MANIFEST_LIMIT = 256 << 20

#: Data is read this many bytes at a time ...
READ = 1 << 20
#: ... and written in pieces of this many; a piece that is all zeros is left
#: as a hole.
PIECE = 1 << 16

_ZERO = bytes(PIECE)
_ZERO_READ = bytes(READ)


class StreamRejected(SynfastError):
    """A stream that is damaged, cut short, or not safe to extract."""


def _reject(label: str, message: str) -> StreamRejected:
    return StreamRejected(label, message, "nothing was written outside the staging "
                          "directory, which was removed; use another backup")


class _Dest:
    """The directory a stream is extracted into, reached only through ``O_NOFOLLOW``."""

    def __init__(self, root: Path, label: str) -> None:
        self.root, self.label = root, label
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def parent(self, rel: str) -> tuple[int, str]:
        """An fd of ``rel``'s directory (made 0700 where missing) and its last name."""
        *dirs, name = rel.split("/")
        fd = os.dup(self.fd)
        try:
            for d in dirs:
                try:
                    nfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(d, 0o700, dir_fd=fd)
                    nfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _reject(self.label, f"member {rel!r} would be written through "
                                      "a symlink or a file") from err
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, name


def _write_data(src: Any, fd: int, runs: list[tuple[int, int]], hasher: Any) -> None:
    """Copy a member's data segments ``runs`` (offset, length), stored back to
    back in ``src``, to their offsets in ``fd``; all-zero pieces stay holes."""
    for off, length in runs:
        end = off + length
        while off < end:
            data = src.read(min(READ, end - off))
            if not data:
                raise EOFError("member data ends early")
            if data != (_ZERO_READ if len(data) == READ else bytes(len(data))):
                for i in range(0, len(data), PIECE):
                    piece = data[i:i + PIECE]
                    if piece != (_ZERO if len(piece) == PIECE else bytes(len(piece))):
                        os.pwrite(fd, piece, off + i)
            if hasher is not None:
                hasher.data(off, data)
            off += len(data)


def extract(stream: IO[bytes], into: Path, label: str, *, fsync: bool = True) -> dict:
    """Extract the backup stream ``stream`` into the empty directory ``into``
    (see the module docstring); return its manifest, also written to
    ``into/.synfast/manifest.json``."""
    dest = _Dest(into, label)
    seen: dict[str, dict[str, Any]] = {}
    doc: dict | None = None
    raw_manifest = b""
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*", bufsize=READ)  # noqa: SIM115
        except tarfile.TarError as err:
            raise _reject(label, f"is not a tar stream ({err})") from err
        try:
            for m in tar:
                if doc is not None:
                    raise _reject(label, f"member {m.name!r} follows the manifest")
                if m.isdir() and m.name.strip("/") in (".", ""):
                    continue                          # the root: its metadata is the manifest's
                rel = tf.safe_name(m.name)
                if rel is None:
                    raise _reject(label, f"member {m.name!r} has an absolute name or a '..' "
                                  "component")
                if rel == manifest.META_DIR and m.isdir():
                    continue
                if rel == f"{manifest.META_DIR}/{manifest.MANIFEST}" and m.isreg():
                    if m.size > MANIFEST_LIMIT:
                        raise _reject(label, "the manifest member is implausibly large")
                    f = tar.extractfile(m)
                    assert f is not None
                    raw_manifest = f.read()
                    doc = _parse_manifest(raw_manifest, label)
                    continue
                if rel in seen or rel.split("/")[0] == manifest.META_DIR:
                    raise _reject(label, f"member {rel!r} is not in the manifest"
                                  if rel not in seen else f"member {rel!r} appears twice")
                seen[rel] = _member(tar, m, rel, dest, label, fsync)
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise _reject(label, f"is damaged or cut short ({err})") from err
        if doc is None:
            raise _reject(label, "ended without its manifest (cut short, or not a synfast "
                          "backup stream)")
        _compare(doc, seen, label, into)
        _apply_metadata(doc, into, fsync)
        meta = into / manifest.META_DIR
        meta.mkdir(mode=0o755, exist_ok=True)
        durable.write_atomic(meta / manifest.MANIFEST, raw_manifest, mode=0o644, fsync=fsync)
    except OSError as err:
        raise convert_error(err, into) from err
    finally:
        dest.close()
    return doc


def _parse_manifest(raw: bytes, label: str) -> dict:
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise _reject(label, "its manifest is not valid JSON") from err
    return manifest.validate(obj, Path(f"{label}:{manifest.META_DIR}/{manifest.MANIFEST}"))


def _member(tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str, dest: _Dest, label: str,
            fsync: bool) -> dict[str, Any]:
    """Write one member (a directory, file or symlink); return what it was."""
    if m.islnk():
        raise _reject(label, f"member {rel!r} is a hard link; synfast streams hold none")
    if not (m.isdir() or m.isreg() or m.issym()):
        raise _reject(label, f"member {rel!r} is a device, FIFO or other special file")
    pfd, name = dest.parent(rel)
    try:
        if m.isdir():
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise _reject(label, f"member {rel!r} appears twice") from None
            return {"type": "dir"}
        if m.issym():
            try:
                os.symlink(m.linkname, name, dir_fd=pfd)
            except FileExistsError:
                raise _reject(label, f"member {rel!r} appears twice") from None
            return {"type": "symlink", "target": m.linkname}
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        except FileExistsError:
            raise _reject(label, f"member {rel!r} appears twice") from None
        try:
            hasher = cks.StreamChecksum()
            # The data segments are read straight from the stream (tarfile's
            # own reader would produce every hole as zeros).
            src = tar.fileobj
            if src.tell() != m.offset_data:
                src.seek(m.offset_data)
            runs = list(m.sparse) if m.sparse is not None else [(0, m.size)]
            _write_data(src, fd, runs, hasher)
            os.ftruncate(fd, m.size)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return {"type": "file", "size": m.size, "checksum": hasher.finish(m.size)}
    finally:
        os.close(pfd)


def _compare(doc: dict, seen: dict[str, dict[str, Any]], label: str, into: Path) -> None:
    """Every member listed, every listed entry present and as the manifest says.

    Checksums were computed with the default algorithm as the data arrived (the
    manifest, which names the algorithm, comes last); a stream whose manifest
    names another is checked again from the extracted files."""
    listed = {e["path"]: e for e in doc["entries"] if e["path"]}
    for rel in seen:
        if rel not in listed:
            raise _reject(label, f"member {rel!r} is not in the manifest")
    algorithm = doc.get("checksum")
    if algorithm is not None and algorithm not in cks.ALGORITHMS:
        raise _reject(label, f"its manifest names the checksum {algorithm!r}, which this "
                      "synfast does not know")
    with_checksums = algorithm is not None
    for rel, e in listed.items():
        got = seen.get(rel)
        if got is None:
            raise _reject(label, f"{rel!r} is in the manifest but not in the stream")
        want = "file" if e["type"] in ("file", "env") else e["type"]
        if got["type"] != want:
            raise _reject(label, f"member {rel!r} is a {got['type']}, the manifest says "
                          f"{e['type']}")
        if want == "symlink" and got["target"] != e.get("target"):
            raise _reject(label, f"symlink {rel!r} points elsewhere than the manifest says")
        if want == "file":
            if got["size"] != e["size"]:
                raise _reject(label, f"member {rel!r} has {got['size']} bytes, the manifest "
                              f"says {e['size']}")
            if with_checksums and algorithm != cks.CHECKSUM_ALGORITHM:
                got["checksum"] = cks.checksum_file(into / rel, algorithm)
            if with_checksums and got["checksum"] != e.get("checksum"):
                raise _reject(label, f"member {rel!r} differs from the manifest (checksum "
                              "mismatch)")


def _apply_metadata(doc: dict, into: Path, fsync: bool) -> None:
    """Modes, owners and times from the manifest; directories deepest first."""
    entries = sorted(doc["entries"], key=lambda e: (e["type"] == "dir", -e["path"].count("/"),
                                                     e["path"]))
    for e in entries:
        kind = e["type"]
        mode = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(kind, stat.S_IFREG)
        st = SimpleNamespace(st_mode=mode | e["mode"], st_uid=e.get("uid", os.getuid()),
                             st_gid=e.get("gid", os.getgid()),
                             st_mtime_ns=e.get("mtime_ns", time.time_ns()),
                             st_atime_ns=e.get("mtime_ns", time.time_ns()))
        path = into / e["path"] if e["path"] else into
        apply_metadata(path, st)  # type: ignore[arg-type]
        if fsync and kind == "dir":
            durable.fsync_dir(path)


def stream_label(source: str) -> str:
    """How a stream is named in messages: ``-`` is standard input."""
    return "standard input" if source == "-" else source


def open_stream(source: str) -> IO[bytes]:
    """Standard input for ``-``, else the tar file ``source``, opened for reading."""
    if source == "-":
        return os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    try:
        return open(source, "rb", buffering=1 << 20)  # noqa: SIM115
    except OSError as err:
        raise convert_error(err, source) from err


def verify_stream(stream: IO[bytes], label: str, *,
                  scratch: str | os.PathLike[str] | None = None) -> Any:
    """Verify a backup stream: extract it into a temporary directory under
    ``scratch`` (default: the system's), check it there, remove it.  Returns a
    :class:`synfast.backup.verify.VerifyReport` naming the stream."""
    from synfast.backup import verify as verify_mod

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="synfast-verify-", dir=scratch))
    try:
        try:
            doc = extract(stream, tmp, label, fsync=False)
        except SynfastError as err:
            report = verify_mod.VerifyReport(Path(label))
            report.problems.append(verify_mod.Problem(str(err.path or label), err.message))
            report.seconds = time.monotonic() - t0
            return report
        report = verify_mod.verify(tmp, checksums=False, record=False)
        report.backup = Path(label)
        report.problems = [verify_mod.Problem(p.path.replace(str(tmp), label, 1), p.message)
                           for p in report.problems]
        # checked as the stream arrived, by extract
        report.checksums_checked = sum(1 for e in doc["entries"] if e.get("checksum"))
        report.seconds = time.monotonic() - t0
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
