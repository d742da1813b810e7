"""Small dense files copied in batches, a directory at a time.

A tree of many small files costs per file, not per byte.  Copied one at a
time through the general path (:func:`synfast.files.sparse.copy_file_new`), a
file of a few KiB costs a dozen Python calls and system calls that only large
or sparse files need: extent probing, filesystem facts, a second stat.  Here
the files of one directory are copied as a batch by
:func:`synfast.files.sparse.copy_small` with the GIL released: per file one open
of each side, a read and a write of the whole file, the planned owner, mode
and times, and the stats that prove the source did not change while read.

A file qualifies (:func:`qualifies`) when it is a regular file of at most
:data:`SMALL_MAX` bytes that allocates at least as many bytes as it holds (so
it has no hole to keep), and the options ask for nothing a plain read and
write cannot do (``--reflink=always``, ``--sparse=always``,
``--copy-file-range=always``).  A file that no longer matches its plan when
the batch reaches it (size, mtime, type) is handed back, to be copied by the
general path, which words the change or the removal as it always does.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TypeVar

from synfast.errors import convert_error
from synfast.files.sparse import copy_small

T = TypeVar("T")

#: The largest file copied in a batch: read whole into memory, and one
#: checksum segment.
SMALL_MAX = 1 << 20
#: A batch is at most this many files, or this many bytes: the GIL is released
#: for the whole batch, and a Ctrl-C waits for it.
BATCH_FILES = 512
BATCH_BYTES = 16 << 20


def qualifies(st: os.stat_result, *, reflink: str = "auto", sparse: str = "auto",
              copy_file_range: str = "auto") -> bool:
    """Whether the file planned with ``st`` is copied in a batch."""
    return (stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_MAX
            and st.st_blocks * 512 >= st.st_size
            and "always" not in (reflink, sparse, copy_file_range))


@dataclass
class Copied:
    """One file a batch copied: its relative path, plan, the copy's allocated
    bytes and, when asked for, its content."""

    rel: str
    st: os.stat_result
    allocated: int
    data: memoryview | None


def batches(items: Sequence[T], *, rel: Callable[[T], str] = itemgetter(0),
            size: Callable[[T], int] = lambda item: item[1].st_size) -> list[list[T]]:
    """Group items (by default ``(rel, st)`` pairs) by the directory of
    ``rel(item)``, in order, into batches of at most :data:`BATCH_FILES`
    files and :data:`BATCH_BYTES` bytes (``size(item)``)."""
    by_dir: dict[str, list[T]] = {}
    for item in items:
        by_dir.setdefault(rel(item).rpartition("/")[0], []).append(item)
    out: list[list[T]] = []
    for group in by_dir.values():
        batch: list[T] = []
        total = 0
        for item in group:
            n = size(item)
            if batch and (len(batch) == BATCH_FILES or total + n > BATCH_BYTES):
                out.append(batch)
                batch, total = [], 0
            batch.append(item)
            total += n
        if batch:
            out.append(batch)
    return out


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def copy_batch(src_root: Path, dst_root: Path, batch: Sequence[tuple[str, os.stat_result]], *,
               preserve: bool = True, fsync: bool = False, keep_data: bool = False,
               display_root: Path | None = None,
               ) -> tuple[list[Copied], list[tuple[str, os.stat_result]]]:
    """Copy one batch (files of one directory, see :func:`batches`) from
    ``src_root`` to the same relative paths under ``dst_root``, whose
    directory must exist and hold none of them.

    Returns what was copied and what is left to the general path (changed or
    removed since the plan).  An error is raised as one line naming the source
    file, or the copy by its name under ``display_root`` (the final name of a
    temporary tree); the copies made before it stay, the rest are not tried.
    """
    if not batch:
        return [], []
    dir_rel = batch[0][0].rpartition("/")[0]
    src_dir = src_root / dir_rel if dir_rel else src_root
    dst_dir = dst_root / dir_rel if dir_rel else dst_root
    try:
        sfd = _open_dir(src_dir)
    except (FileNotFoundError, NotADirectoryError):
        return [], list(batch)
    except OSError as err:
        raise convert_error(err, src_dir) from err
    try:
        try:
            dfd = _open_dir(dst_dir)
        except OSError as err:
            raise convert_error(err, (display_root or dst_root) / dir_rel) from err
        try:
            fields: list[int] = []
            for _, st in batch:
                fields += (st.st_size, st.st_mtime_ns, st.st_atime_ns, st.st_mode, st.st_uid,
                           st.st_gid)
            names = [os.fsencode(rel.rpartition("/")[2]) for rel, _ in batch]
            raw, data, error = copy_small(
                sfd, dfd, names, struct.pack(f"={len(fields)}q", *fields), preserve=preserve,
                fsync=fsync, keep_data=keep_data)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    results = struct.unpack(f"={len(raw) // 8}q", raw)
    upto = error[0] if error else len(batch)
    view = memoryview(data) if data is not None else None
    copied: list[Copied] = []
    left: list[tuple[str, os.stat_result]] = []
    off = 0
    for i in range(upto):
        rel, st = batch[i]
        if results[2 * i] == 0:
            piece = view[off:off + st.st_size] if view is not None else None
            copied.append(Copied(rel, st, results[2 * i + 1], piece))
        else:
            left.append((rel, st))
        off += st.st_size
    if error:
        index, code, side = error
        rel = batch[index][0]
        where = (display_root or dst_root) / rel if side else src_root / rel
        raise convert_error(OSError(code, os.strerror(code)), where)
    return copied, left


__all__ = ["BATCH_BYTES", "BATCH_FILES", "SMALL_MAX", "Copied", "batches", "copy_batch",
           "qualifies"]
