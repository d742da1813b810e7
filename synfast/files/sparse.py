"""Sparse-safe copies of regular files, and how much of a file is really there.

The copy engine (``synfast.files._sparse``) finds data with SEEK_DATA/SEEK_HOLE and
never reads a hole; it clones with FICLONE where it may, moves data inside the
kernel with copy_file_range where it can, and falls back to pread/pwrite.  This
module adds the policy: argument checking, temporary names and atomic renames,
metadata, and turning "the source changed while we copied it" into an error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from synfast.errors import (
    DESTINATION_ERRNOS,
    CopyFailed,
    DestinationExists,
    SourceChanged,
    SourceMissing,
    UnsupportedFileType,
    UsageError,
    convert_error,
)
from synfast.files import durable

Mode = Literal["never", "auto", "always"]
MODES: tuple[str, ...] = ("never", "auto", "always")
_MODE_CODE = {"never": 0, "auto": 1, "always": 2}
IS_ROOT = os.geteuid() == 0


def check_modes(reflink: str, sparse: str, copy_file_range: str = "auto") -> None:
    """Reject option combinations that cannot mean anything (as cp does)."""
    if copy_file_range not in MODES:
        raise UsageError(None, "--copy-file-range takes never, auto or always, not "
                         f"{copy_file_range!r}")
    if reflink not in MODES:
        raise UsageError(None, f"--reflink takes never, auto or always, not {reflink!r}")
    if sparse not in MODES:
        raise UsageError(None, f"--sparse takes never, auto or always, not {sparse!r}")
    if reflink == "always" and sparse != "auto":
        raise UsageError(
            None, "--reflink=always shares the source's blocks and cannot honour "
            f"--sparse={sparse}", "drop --sparse or use --reflink=auto")


#: Filesystems where copy_file_range is a server-side copy (the data never
#: crosses the network twice): NFS, SMB2, CIFS, Ceph.
SERVER_SIDE_COPY_FS = frozenset({0x6969, 0xFE534D42, 0xFF534D42, 0x00C36400})


def use_copy_file_range(mode: str, reflink: str, dst_fd: int | None = None) -> bool:
    """Whether data moves with copy_file_range instead of splice.

    ``auto`` uses it only where it does something a splice cannot: a
    server-side copy on a network filesystem (:data:`SERVER_SIDE_COPY_FS`,
    judged by ``dst_fd``'s filesystem).  Block sharing, its other advantage, is
    already tried first with FICLONE.  On a local filesystem copy_file_range is
    the kernel's own splice through a 64 KiB pipe; our splice through a 1 MiB
    pipe measured faster (512 MiB of extents on ext4, Linux 6.18: 0.26 s
    against 0.34 s; pread/pwrite 0.28 s), as large writes get large page-cache
    folios.  ``--reflink=never`` always rules it out: on XFS and btrfs it may
    share blocks.  Where the kernel refuses it the copy falls back by itself."""
    if mode != "auto":
        return mode == "always"
    if reflink == "never" or dst_fd is None:
        return False
    from synfast.files import _sparse

    try:
        return _sparse.fs_magic(dst_fd) in SERVER_SIDE_COPY_FS
    except OSError:
        return False


@dataclass(frozen=True)
class FileCopyResult:
    """What one file copy did.

    ``hole_bytes`` were never read (holes of the source); ``zero_bytes_skipped``
    were read but left as holes because they were all zero (``sparse=always``).
    """

    source: Path
    destination: Path
    size: int
    method: str
    extents: int
    data_bytes: int
    hole_bytes: int
    bytes_written: int
    bytes_cloned: int
    zero_bytes_skipped: int


@dataclass(frozen=True)
class FileUsage:
    """A file's apparent size, what it allocates on disk and where its data is."""

    apparent: int
    allocated: int
    data_bytes: int
    extents: int


def extents(path: int | str | os.PathLike[str]) -> list[tuple[int, int]]:
    """Data extents of the file at ``path`` (or of the open file ``path``) as
    (offset, length) pairs, found with SEEK_DATA/SEEK_HOLE: no hole is read."""
    from synfast.files import _sparse

    if isinstance(path, int):
        return _sparse.extents(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _sparse.extents(fd)
    finally:
        os.close(fd)


def usage(path: str | os.PathLike[str]) -> FileUsage:
    """Apparent size, allocated bytes, data bytes and extent count of a regular file."""
    from synfast.files import _sparse

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        ext = _sparse.extents(fd)
    finally:
        os.close(fd)
    return FileUsage(st.st_size, st.st_blocks * 512, sum(n for _, n in ext), len(ext))


def source_stat(path: Path, *, follow: bool = False) -> os.stat_result:
    """The stat of a source the user named: a missing one is
    :class:`SourceMissing`, any other failure one line naming it."""
    try:
        return os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError as err:
        raise SourceMissing(path, "does not exist", "check the path") from err
    except OSError as err:
        raise convert_error(err, path) from err


def apply_metadata(target: int | str | os.PathLike[str], st: os.stat_result) -> None:
    """Give ``target`` (an fd or a path, not followed) the owner, mode and times of ``st``.

    Ownership first (as root only): chown clears set-id bits, so the mode must
    come after it.  Times last, since nothing after them may touch the file.
    """
    if isinstance(target, int):
        if IS_ROOT:
            os.fchown(target, st.st_uid, st.st_gid)
        os.fchmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return
    if IS_ROOT:
        os.lchown(target, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_open_file(
    src_path: Path, src_fd: int, dst_path: Path, dst_fd: int, *, reflink: str = "auto",
    sparse: str = "auto", copy_file_range: str = "auto",
    expected: os.stat_result | None = None, display_dst: Path | None = None,
) -> FileCopyResult:
    """Copy the contents of ``src_fd`` into the new, empty ``dst_fd``.

    ``expected`` is the stat the caller planned with; if the file is no longer
    that size or mtime, or changes during the copy, :class:`SourceChanged` is
    raised and the destination must be discarded.
    """
    from synfast.files import _sparse

    try:
        raw = _sparse.copy_fd(
            src_fd, dst_fd, reflink=_MODE_CODE[reflink], sparse=_MODE_CODE[sparse],
            allow_copy_file_range=use_copy_file_range(copy_file_range, reflink, dst_fd),
            expected_size=expected.st_size if expected is not None else -1,
            expected_mtime_ns=expected.st_mtime_ns if expected is not None else -1,
        )
    except OSError as err:
        if reflink == "always" and raw_is_clone_refusal(err):
            raise reflink_refused(src_path, dst_path, err.strerror) from err
        side = (display_dst or dst_path) if err.errno in DESTINATION_ERRNOS else src_path
        raise convert_error(err, side) from err
    if raw["changed"]:
        before = expected.st_size if expected is not None else raw["size"]
        raise SourceChanged(
            src_path, f"changed while being copied (size {before} -> {raw['size_after']})",
            "copy it again when it is quiet; LMDB environments are copied safely by content",
        )
    return FileCopyResult(
        source=src_path, destination=dst_path, size=raw["size"], method=raw["method"],
        extents=raw["extents"], data_bytes=raw["data_bytes"], hole_bytes=raw["hole_bytes"],
        bytes_written=raw["bytes_written"], bytes_cloned=raw["bytes_cloned"],
        zero_bytes_skipped=raw["zero_bytes_skipped"],
    )


def reflink_refused(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                    why: str) -> CopyFailed:
    """The error of ``--reflink=always`` where the destination cannot share
    blocks with the source."""
    return CopyFailed(dst, f"cannot reflink from {src}: {why}",
                      "use --reflink=auto, or copy within one filesystem that supports "
                      "reflinks (XFS, btrfs)")


def raw_is_clone_refusal(err: OSError) -> bool:
    return err.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EPERM)


#: What a source file that vanished after planning is called, per job.
_VANISHED = {
    "copy": ("disappeared while the copy was running", "copy again when the source is quiet"),
    "backup": ("disappeared while the backup was running",
               "run the backup again when the source is quiet"),
}


@contextlib.contextmanager
def new_copy_fds(src: Path, dst: Path, display_dst: Path | None = None,
                 job: str = "copy") -> Iterator[tuple[int, int]]:
    """Open ``src`` for reading and create ``dst`` exclusively; yield both fds.

    If the body raises, ``dst`` is removed; both fds are closed either way.  A
    source gone since it was planned is :class:`SourceChanged`; other errors
    name the source or ``display_dst`` (the final name, not a temporary one).
    """
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError as err:
        raise SourceChanged(src, *_VANISHED[job]) from err
    except OSError as err:
        raise convert_error(err, src) from err
    try:
        with durable.new_file(dst, display=display_dst or dst) as dst_fd:
            yield src_fd, dst_fd
    finally:
        os.close(src_fd)


def copy_file_new(
    src: Path, dst: Path, st: os.stat_result, *, reflink: str = "auto", sparse: str = "auto",
    copy_file_range: str = "auto", preserve: bool = True, fsync: bool = False,
    display_dst: Path | None = None,
) -> FileCopyResult:
    """Copy regular file ``src`` (planned with stat ``st``) to the new path ``dst``.

    ``dst`` is created exclusively; on any failure it is removed.  Used inside a
    temporary tree, where no rename per file is needed.  ``display_dst`` is the
    name errors use for the destination (the final name, not the temporary one).
    """
    with new_copy_fds(src, dst, display_dst) as (src_fd, dst_fd):
        result = copy_open_file(src, src_fd, dst, dst_fd, reflink=reflink, sparse=sparse,
                                copy_file_range=copy_file_range, expected=st,
                                display_dst=display_dst)
        if preserve:
            apply_metadata(dst_fd, st)
        if fsync:
            os.fsync(dst_fd)
    return result


def place_copy(tmp: Path, dst: Path, *, force: bool) -> None:
    """Move a finished copy to ``dst`` (:func:`synfast.files.durable.place`),
    wording a refusal for the command line: without ``force`` an existing
    ``dst``, even one that appeared while we copied, is never replaced."""
    if not force and os.path.lexists(dst):
        raise DestinationExists(dst, "already exists", "pass --force to replace it")
    try:
        durable.place(tmp, dst, replace=force)
    except FileExistsError as err:
        raise DestinationExists(dst, "appeared while the copy was running",
                                "pass --force to replace it") from err


def copy_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, reflink: str = "auto",
    sparse: str = "auto", force: bool = False, preserve: bool = True, fsync: bool = False,
    copy_file_range: str = "auto",
) -> FileCopyResult:
    """Copy one regular file, sparse-safe, atomically (temporary name, then rename).

    ``reflink`` and ``sparse`` mean what they mean to ``cp``;
    ``copy_file_range`` is explained at :func:`use_copy_file_range`.  An
    existing ``dst`` is refused unless ``force``.
    """
    check_modes(reflink, sparse, copy_file_range)
    src_p, dst_p = Path(src), Path(dst)
    st = source_stat(src_p)
    if not stat.S_ISREG(st.st_mode):
        raise UnsupportedFileType(src_p, "is not a regular file")
    if os.path.lexists(dst_p) and not force:
        raise DestinationExists(dst_p, "already exists", "pass --force to replace it")
    tmp = durable.temp_sibling(dst_p, directory=False)
    try:
        result = copy_file_new(src_p, tmp, st, reflink=reflink, sparse=sparse,
                               copy_file_range=copy_file_range, preserve=preserve,
                               fsync=fsync, display_dst=dst_p)
        place_copy(tmp, dst_p, force=force)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return FileCopyResult(**{**result.__dict__, "destination": dst_p})


def copy_small(src_dir: int, dst_dir: int, names: list[bytes], expected: bytes, *,
               preserve: bool, fsync: bool, keep_data: bool,
               ) -> tuple[bytes, bytes | None, tuple[int, int, int] | None]:
    """The native batch copy of small dense files (``_sparse.copy_small``; the
    policy around it is :func:`synfast.files.small.copy_batch`).  ``expected``
    holds six native int64 per file: size, mtime and atime (ns), mode, uid,
    gid.  Owners are given only as root."""
    from synfast.files import _sparse

    flags = ((_sparse.PRESERVE | (_sparse.CHOWN if IS_ROOT else 0) if preserve else 0)
             | (_sparse.FSYNC if fsync else 0))
    return _sparse.copy_small(src_dir, dst_dir, names, expected, flags, keep_data)


#: How :func:`copy_ranges` may share blocks with the source: never, or one
#: clone per range.
CLONE_MODES = ("never", "ranges")


def copy_ranges(src_fd: int, dst_fd: int, ranges: bytes, *, clone: str = "ranges",
                copy_file_range: bool = True, writeback_every: int = 0) -> dict:
    """Copy byte ranges of ``src_fd`` to the same offsets of ``dst_fd``, a new
    file already at its final size, so that everything outside them stays a hole.

    ``ranges`` holds native int64 (offset, length) pairs, sorted and apart.
    Where both files are on one filesystem that shares blocks the ranges are
    cloned (``clone``); else the parts of each range inside the source's data
    extents move by copy_file_range, splice or pread/pwrite, with the
    destination's writeback started every ``writeback_every`` bytes.  The
    caller fsyncs.  Returns what was done (``method``, ``bytes_written``,
    ``bytes_cloned``, ``data_bytes``, ``short_read``...).  OSError passes through.
    """
    from synfast.files import _sparse

    return _sparse.copy_ranges(src_fd, dst_fd, ranges, clone=CLONE_MODES.index(clone),
                               allow_copy_file_range=copy_file_range,
                               writeback_every=writeback_every)


def shares_blocks(src_fd: int, dst_dir: str | os.PathLike[str]) -> bool:
    """Whether a new file in ``dst_dir`` can share blocks with the open file
    ``src_fd`` (one filesystem with reflinks: XFS, btrfs), found by cloning the
    source's first block into an unnamed file there (O_TMPFILE), which
    vanishes when closed."""
    st = os.fstat(src_fd)
    try:
        if os.stat(dst_dir).st_dev != st.st_dev or st.st_size < 4096:
            return False
        fd = os.open(dst_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.ftruncate(fd, 4096)
        raw = copy_ranges(src_fd, fd, struct.pack("=qq", 0, 4096), copy_file_range=False)
        return raw["method"] == "reflink"
    except OSError:
        return False
    finally:
        os.close(fd)
