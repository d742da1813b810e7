"""Errors that synfast reports to people.

Every failure a user can cause or fix is a :class:`SynfastError`: it names the
path involved and, where there is one, the fix.  The CLI prints it as one line
on stderr and exits with :attr:`SynfastError.exit_code`; only ``--debug`` shows
a traceback.  Anything else escaping the API is a bug.
"""

from __future__ import annotations

import os


class SynfastError(Exception):
    """A failure with a path and an optional hint on how to fix it."""

    exit_code = 1

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


def from_oserror(err: OSError, path: str | os.PathLike[str] | None = None) -> SynfastError:
    """Turn an OSError into a one-line SynfastError with a fix where one is known."""
    import errno

    where = path if path is not None else (err.filename or None)
    reason = err.strerror or str(err)
    hints = {
        errno.EACCES: "check the permissions, or run as a user who may access it",
        errno.EPERM: "the operation is not permitted here; check permissions and mount options",
        errno.ENOSPC: "the destination filesystem is full; free space or choose another place",
        errno.EDQUOT: "the disk quota is exhausted; free space or raise the quota",
        errno.EROFS: "the filesystem is mounted read-only; choose a writable destination",
        errno.ENOENT: "check the path",
        errno.EFBIG: "the file is too large for the destination (file size limit)",
        errno.ENOTDIR: "a component of the path is not a directory",
    }
    return CopyFailed(where, reason.lower() if reason[:1].isupper() else reason,
                      hints.get(err.errno or 0, ""))
