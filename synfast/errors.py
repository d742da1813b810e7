"""Errors that synfast reports to people.

Every failure a user can cause or fix is a :class:`SynfastError`: it names the
path involved and, where there is one, the fix.  The CLI prints it as one line
on stderr and exits with :attr:`SynfastError.exit_code`; only ``--debug`` shows
a traceback.  Anything else escaping the API is a bug.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping


class SynfastError(Exception):
    """A failure with a path and an optional hint on how to fix it."""

    exit_code = 1
    #: The OS error number it was translated from (:func:`convert_error`), if any:
    #: what a caller tests to word a full disk its own way.
    errno: int | None = None

    def __init__(self, path: str | os.PathLike[str] | None, message: str, hint: str = "") -> None:
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (what systemd and Kubernetes send) or SIGHUP (a closed terminal),
    raised in the main thread where Ctrl-C raises ``KeyboardInterrupt``, so that
    everything that cleans up after Ctrl-C cleans up after them too.  The
    command line installs the handler that raises it and exits 128 + the
    signal's number (143, 129); a program that embeds the API keeps its own
    signal policy."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class UsageError(SynfastError):
    """The arguments cannot work together; exit code 2 like other usage errors."""

    exit_code = 2


class SourceMissing(SynfastError):
    pass


class DestinationExists(SynfastError):
    pass


class UnsupportedFileType(SynfastError):
    pass


class NotAnEnvironment(SynfastError):
    pass


class CorruptEnvironment(SynfastError):
    pass


class SourceChanged(SynfastError):
    """A file changed size or content while it was being copied."""


class CopyFailed(SynfastError):
    pass


#: Fixes for the errno values a user can do something about.
_HINTS = {
    errno.EACCES: "check the permissions, or run as a user who may access it",
    errno.EPERM: "the operation is not permitted here; check permissions and mount options",
    errno.ENOSPC: "the destination filesystem is full; free space or choose another place",
    errno.EDQUOT: "the disk quota is exhausted; free space or raise the quota",
    errno.EROFS: "the filesystem is mounted read-only; choose a writable destination",
    errno.ENOENT: "check the path",
    errno.EFBIG: "the file is too large for the destination (file size limit)",
    errno.ENOTDIR: "a component of the path is not a directory",
}

#: errno values that can only come from the side being written (the destination).
DESTINATION_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})

# LMDB's own return codes (lmdb.h; stable since 0.9) that decide the wording.
# Errno values that LMDB passes through are positive; its own codes are not.
MDB_PAGE_NOTFOUND = -30797
MDB_CORRUPTED = -30796
MDB_PANIC = -30795
MDB_VERSION_MISMATCH = -30794
MDB_INVALID = -30793
MDB_READERS_FULL = -30790
_LMDB_DAMAGED = frozenset({MDB_PAGE_NOTFOUND, MDB_CORRUPTED, MDB_PANIC, MDB_VERSION_MISMATCH,
                           MDB_INVALID})


def convert_error(err: BaseException, path: str | os.PathLike[str] | None = None, *,
                  cls: type[SynfastError] = CopyFailed,
                  hints: Mapping[int, str] | None = None) -> SynfastError:
    """The one translation of an OS or LMDB failure into a one-line SynfastError.

    ``err`` is an :class:`OSError`, or an LMDB error raised by synfast's LMDB
    extension (it carries ``path``, ``code``, ``message`` and ``operation``).
    ``path`` names what failed when the error's own path is not the one to show
    (a temporary name, or no name at all).  ``cls`` and ``hints`` let a domain
    word its own errors (the certdir points at ``--certdir``); a damaged LMDB
    environment is always a :class:`CorruptEnvironment`.
    """
    if isinstance(err, SynfastError):
        return err
    code = getattr(err, "code", None)
    if not isinstance(err, OSError) and isinstance(code, int) and hasattr(err, "operation"):
        where = path if path is not None else getattr(err, "path", None)
        message = str(getattr(err, "message", err))
        what = f"{err.operation}: {message}" if err.operation else f"LMDB: {message}"
        if code in _LMDB_DAMAGED:
            return CorruptEnvironment(where, what, "the environment is damaged; restore it "
                                      "from a backup, or check it with mdb_stat")
        if code == MDB_READERS_FULL:
            return cls(where, what, "every reader slot is taken; retry when the service has "
                       "fewer readers")
        # A positive code is an errno that LMDB passed through.
        hint = ((hints or {}).get(code) or _HINTS.get(code, "")) if code > 0 else ""
        out = cls(where, what, hint)
        out.errno = code if code > 0 else None
        return out
    if not isinstance(err, OSError):
        return cls(path, str(err))
    where = path if path is not None else (err.filename or None)
    reason = err.strerror or str(err)
    number = err.errno or 0
    hint = (hints or {}).get(number) or _HINTS.get(number, "")
    out = cls(where, reason.lower() if reason[:1].isupper() else reason, hint)
    out.errno = number or None
    return out
