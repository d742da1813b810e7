"""One backup per source at a time, and never a prune under a root being written.

Two kinds of lock, both ``flock`` locks on small files in one directory
(:func:`lock_dir`: ``$SYNFAST_LOCK_DIR``, else ``/run/lock/synfast``, else
``/tmp/synfast-locks``), never inside the service's directory (the service
owns it) nor inside a backup:

- the **source lock**, exclusive, held by a backup of a source directory for
  its whole run (``--pre-cmd`` to ``--post-cmd``); its file names the source's
  real path and holds the holder's pid, destination and start time, so a second
  backup can say which one is running;
- the **root lock** of a directory that holds backups: shared by the backups
  writing into it, exclusive for ``prune``, so a prune never removes or judges
  anything while a backup under the same root runs, and a backup never starts
  under a root being pruned.

A lock that cannot be taken fails at once with :class:`Busy` (exit 75, as
``EX_TEMPFAIL``), or is waited for up to ``wait`` seconds.  The kernel releases
a ``flock`` when its process dies, however it dies: there are no stale locks to
clean.  The lock files themselves stay (they are empty or hold the last
holder's note; ``/run`` is emptied at boot); removing them would let two
processes lock two different files of one name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from synfast.errors import SynfastError, convert_error

LOCK_DIR_ENV = "SYNFAST_LOCK_DIR"
_DEFAULT_DIRS = ("/run/lock/synfast", "/tmp/synfast-locks")
#: How often a waiting process tries the lock again.
POLL_SECONDS = 0.1
_NOTE_MAX = 4096


class Busy(SynfastError):
    """Another synfast process holds the lock; try again later (``EX_TEMPFAIL``)."""

    exit_code = 75


def lock_dir() -> Path:
    """The directory of the lock files, made (sticky and writable by all, like
    ``/run/lock`` itself) when it does not exist yet."""
    configured = os.environ.get(LOCK_DIR_ENV)
    candidates = (configured,) if configured else _DEFAULT_DIRS
    last: OSError | None = None
    for d in candidates:
        try:
            os.mkdir(d, 0o1777)
            os.chmod(d, 0o1777)  # the umask took bits off; other users lock here too
        except FileExistsError:
            pass
        except OSError as err:
            last = err
            continue
        if os.access(d, os.W_OK | os.X_OK):
            return Path(d)
    raise convert_error(last or PermissionError(errno.EACCES, "not writable"),
                        candidates[0], hints={errno.EACCES: f"set {LOCK_DIR_ENV} to a "
                                              "directory this user may write"})


def lock_path(kind: str, target: str | os.PathLike[str]) -> Path:
    """The lock file of ``kind`` (``source`` or ``root``) for the directory
    ``target``, named after its real path (readable, plus a hash of the whole)."""
    real = os.path.realpath(target)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    readable = real.strip("/").replace("/", "_")[-80:] or "root"
    return lock_dir() / f"{kind}-{readable}-{digest}.lock"


def _open(path: Path) -> tuple[int, bool]:
    """A descriptor of the lock file, and whether it may be written (a file
    another user created can still be locked through a read-only descriptor)."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd, writable = os.open(path, os.O_RDWR | flags, 0o644), True
    except PermissionError:
        fd, writable = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), False
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise SynfastError(path, "is not a plain lock file",
                           f"remove it, or set {LOCK_DIR_ENV} to another directory")
    return fd, writable


def read_note(path: Path) -> dict:
    """What the holder of an exclusive lock wrote about itself (untrusted: any
    local user may have written the file); ``{}`` when unreadable."""
    try:
        with open(path, "rb") as f:
            note = json.loads(f.read(_NOTE_MAX))
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def describe(note: dict) -> str:
    """``pid 123, into /backups/x, since 2026-...`` from a holder's note."""
    parts = []
    if isinstance(note.get("pid"), int):
        parts.append(f"pid {note['pid']}")
    for key, word in (("destination", "into"), ("root", "of"), ("started", "since")):
        if isinstance(note.get(key), str):
            text = "".join(c if c.isprintable() else "?" for c in note[key][:300])
            parts.append(f"{word} {text}")
    return ", ".join(parts) or "holder unknown"


@contextlib.contextmanager
def held(path: Path, *, exclusive: bool, wait: float | None, note: dict | None,
         refuse: Callable[[dict], Exception]) -> Iterator[None]:
    """Hold the lock ``path`` for the body.  ``wait`` None fails at once,
    otherwise it is tried again until ``wait`` seconds have passed.  ``refuse``
    is called with the holder's note and must return the :class:`Busy` to
    raise.  The exclusive holder writes ``note`` into the file."""
    fd, writable = _open(path)
    try:
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, op)
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    raise refuse(read_note(path)) from None
                time.sleep(POLL_SECONDS)
        if exclusive and writable and note is not None:
            data = json.dumps(note).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def source_lock(source: Path, note: dict, wait: float | None) -> contextlib.AbstractContextManager:
    """The exclusive lock of one source directory, for a backup of it."""

    def refuse(holder: dict) -> Busy:
        return Busy(source, f"a backup of it is already running ({describe(holder)})",
                    "wait for it to finish, or pass --wait SECONDS")

    return held(lock_path("source", source), exclusive=True, wait=wait, note=note,
                refuse=refuse)


def root_lock(root: Path, *, exclusive: bool, wait: float | None,
              note: dict | None = None, running: Callable[[], str] | None = None
              ) -> contextlib.AbstractContextManager:
    """The lock of a directory of backups: shared by backups, exclusive for prune.
    ``running`` (a callable) names the backups running under ``root`` for a
    prune's refusal."""

    def refuse(holder: dict) -> Busy:
        if exclusive:
            who = running() if running is not None else ""
            return Busy(root, f"a backup into it is running{who}; prune waits for backups "
                        "to finish", "run it later, or pass --wait SECONDS")
        return Busy(root, f"synfast prune is running on it ({describe(holder)})",
                    "wait for it to finish, or pass --wait SECONDS")

    return held(lock_path("root", root), exclusive=exclusive, wait=wait, note=note,
                refuse=refuse)
