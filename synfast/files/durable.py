"""Putting files in place so that a final name never holds half of anything.

Every writer in synfast builds under a hidden temporary name beside its target
(same directory, same filesystem), makes the data durable, and only then moves
it to the final name in one rename:

- :func:`write_atomic` and :func:`write_all_or_none` for small files written
  from memory (manifests, markers, keys and certificates): temporary name,
  write, fsync, rename into place, fsync of the directory;
- :func:`temp_sibling` and :func:`place` for what a copy builds (a file, a tree,
  an LMDB environment): the builder writes under the temporary name, then
  :func:`place` renames it without replacing anything (``RENAME_NOREPLACE``), or
  swaps it in when asked to replace (``RENAME_EXCHANGE`` for a directory);
- :func:`fsync_dir`, :func:`sync_filesystem`, :func:`start_writeback` and
  :func:`drop_cache` for the durability steps around them, and
  :func:`remove_path` to clean up our own temporary output.

Errors are raised as :class:`OSError` (an existing name as
:class:`FileExistsError` carrying the final name); callers word them with
:func:`synfast.errors.convert_error`.  This module is the only importer of its
extension, :mod:`synfast.files._durable`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from synfast import workers
from synfast.errors import convert_error
from synfast.files import _durable

__all__ = [
    "drop_cache",
    "fsync_dir",
    "place",
    "remove_path",
    "start_writeback",
    "sync_filesystem",
    "temp_sibling",
    "write_all_or_none",
    "write_atomic",
]


def temp_sibling(dst: str | os.PathLike[str], directory: bool = False) -> Path:
    """A fresh hidden name beside ``dst`` for building it (same filesystem, so the
    final rename is atomic).  A directory is created (mode 0700); for a file only
    the name is reserved, since the builder creates it exclusively itself.  Not
    :mod:`tempfile`: importing it costs the command line 7 ms of start-up."""
    dst = Path(dst)
    for _ in range(100):
        name = dst.parent / f".{dst.name}.{os.urandom(6).hex()}.synfast-partial"
        if directory:
            try:
                os.mkdir(name, 0o700)
            except FileExistsError:
                continue
            return name
        if not os.path.lexists(name):
            return name
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(dst.parent))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so the names created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def new_file(path: str | os.PathLike[str], mode: int = 0o600, *,
             display: str | os.PathLike[str] | None = None) -> Iterator[int]:
    """Create ``path`` exclusively (never replacing anything) and yield its
    descriptor, open for reading and writing.  If the body fails the file is
    removed, so a failed copy never leaves a file behind; the descriptor is
    closed either way.  A failure to create it names ``display`` when given
    (the final name of a temporary file), else it is raised as it is."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as err:
        if display is None:
            raise
        raise convert_error(err, display) from err
    try:
        yield fd
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, a symlink or a whole directory tree; a missing path is fine
    (used to clean up our own temporary output)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


#: How long :func:`remove_unfinished` keeps removing a tree that workers still
#: write into.
UNFINISHED_PATIENCE = 5.0


def remove_unfinished(tree: str | os.PathLike[str],
                      first: str | os.PathLike[str] | None = None) -> None:
    """Remove the unfinished output ``tree`` after a failure or a signal, with
    SIGINT, SIGTERM and SIGHUP held off until it is gone: a second Ctrl-C or
    SIGTERM (systemd and Kubernetes send another before SIGKILL) does not cut
    the removal short.  ``first`` (a backup's manifest) goes before anything
    else, so that what a SIGKILL leaves never looks complete.

    After a signal the workers are not waited for, and one may still create a
    file in a directory of the tree while it is removed (that directory's
    removal then fails); the removal is repeated until the tree is gone, for
    up to :data:`UNFINISHED_PATIENCE` seconds.  Once its top directory is gone
    nothing can be created in it again."""
    with workers.signals_blocked():
        if first is not None:
            with contextlib.suppress(OSError):
                os.unlink(first)
        give_up = time.monotonic() + UNFINISHED_PATIENCE
        remove_path(tree)
        while os.path.lexists(tree) and time.monotonic() < give_up:
            time.sleep(0.01)
            remove_path(tree)


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Make everything written on the filesystem holding the directory
    ``path`` durable, names included, in one call (syncfs).  What one backup
    writes as thousands of small files costs one wait instead of one fsync
    each; the price is that other dirty data on that filesystem is written out
    with it.  A writeback error since the directory was opened is raised."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _durable.sync_filesystem(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int) -> None:
    """Start writing ``fd``'s dirty pages to disk without waiting for them, so a
    later fsync finds little left to do."""
    _durable.start_writeback(fd)


def drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to drop ``fd``'s cached pages (a backup's output is not
    read again; keeping it would evict the service's own pages)."""
    _durable.drop_cache(fd, offset, length)


def place(tmp: str | os.PathLike[str], dst: str | os.PathLike[str], *,
          replace: bool = False) -> None:
    """Move the finished ``tmp`` to ``dst`` in one step.

    Without ``replace`` an existing ``dst`` is never replaced, even one that
    appeared while ``tmp`` was built: :class:`FileExistsError` naming ``dst``.
    With ``replace`` a file (or symlink) is replaced atomically; an existing
    directory is swapped with ``RENAME_EXCHANGE`` and the old one removed
    afterwards, so ``dst`` never holds a partial result.
    """
    tmp, dst = os.fspath(tmp), os.fspath(dst)
    if not replace:
        try:
            _durable.rename_noreplace(tmp, dst)
            return
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
        # A filesystem without RENAME_NOREPLACE: a file is linked (link never
        # replaces); a directory can only be checked first.
        if not os.path.isdir(tmp) or os.path.islink(tmp):
            try:
                os.link(tmp, dst, follow_symlinks=False)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
            os.unlink(tmp)
            return
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
        os.rename(tmp, dst)
        return
    if os.path.isdir(dst) and not os.path.islink(dst):
        try:
            _durable.rename_exchange(tmp, dst)
        except OSError:
            old = os.path.join(os.path.dirname(dst),
                               f".{os.path.basename(dst)}.synfast-old-{os.getpid()}")
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
            return
        remove_path(tmp)     # now the old directory
        return
    os.replace(tmp, dst)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                 replace: bool = False, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all (see :func:`write_all_or_none`)."""
    write_all_or_none([(Path(path), data, mode)], replace=replace, fsync=fsync)


def write_all_or_none(items: Sequence[tuple[Path, bytes, int]], *, replace: bool = False,
                      fsync: bool = True) -> None:
    """Write every ``(path, data, mode)`` under its final name, or none of them.

    Each file is written under a temporary sibling name with its mode from the
    start (a key is never readable by others, not even for an instant),
    fsynced, then placed with :func:`place`; the directories are fsynced last.
    Without ``replace`` an existing name is refused before anything is written,
    and one that appears meanwhile is never replaced; with it, a directory in
    the way is still refused.  If any file cannot be placed, those already
    placed are removed again.
    """
    for path, _, _ in items:
        if not replace and os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        if replace and os.path.isdir(path) and not os.path.islink(path):
            # A file replaces no directory (place() would swap it out).
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    staged: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for path, data, mode in items:
            tmp = temp_sibling(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            staged.append((tmp, Path(path)))
            try:
                os.fchmod(fd, mode)     # whatever the umask took away
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in staged:
            place(tmp, path, replace=replace)
            placed.append(path)
    except BaseException:
        if not replace:
            for path in placed:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    if fsync:
        for parent in dict.fromkeys(path.parent for _, path in staged):
            fsync_dir(parent)
