"""The certdir's layout and names, and the errors of certdir operations.

What lives where (``cas/``, ``hosts/``, ``users/``, ``code/``, ``crls/``; a file is
named after the certificate's common name), where the certdir is by default, which
names may become file names, which key types can be made, and
:class:`CertError`/:class:`CertFileExists`, raised by every certdir module (URL
errors are :class:`synfast.tls.url.UrlError`).  It imports neither ``ssl`` nor
``cryptography``, so the command line can name key types and kinds without
paying for them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from synfast.errors import SynfastError

__all__ = [
    "CERTDIR_HINTS",
    "DEFAULT_DAYS",
    "KEY_TYPES",
    "KINDS",
    "SOON_DAYS",
    "CertError",
    "CertFileExists",
    "default_certdir",
    "kind_dir",
    "kind_name",
    "validate_name",
]

#: Certificate kinds and the certdir subdirectory each lives in.
KINDS: dict[str, str] = {"ca": "cas", "host": "hosts", "user": "users", "code": "code"}
_DIR_KIND = {v: k for k, v in KINDS.items()}
#: Key types synfast can make; the first is the default.
KEY_TYPES = ("rsa4096", "rsa2048", "ecdsa-p256")
DEFAULT_DAYS = 3650
#: Certificates expiring sooner than this are marked by ``certs list``.
SOON_DAYS = 30
#: How to fix the OS errors a certdir meets (for :func:`synfast.errors.convert_error`).
CERTDIR_HINTS: dict[int, str] = {
    errno.EACCES: "check the certdir's permissions, or choose another with --certdir",
    errno.EPERM: "check the certdir's permissions, or choose another with --certdir",
    errno.EROFS: "the certdir is on a read-only filesystem; choose another with --certdir",
    errno.ENOTDIR: "a component of the certdir path is not a directory",
    errno.ENOSPC: "the filesystem is full",
    errno.ENOENT: "check the path",
}


class CertError(SynfastError):
    """A certdir operation that cannot be done as asked."""


class CertFileExists(CertError):
    """A file would be overwritten; easycert reports it as ``file exists: PATH``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, "file exists", "remove it first if you really mean to replace it")


def default_certdir() -> Path:
    """``$SYN_CERT_DIR`` if set, else ``~/.syn/certs``, as Synapse resolves it."""
    env = os.environ.get("SYN_CERT_DIR")
    return Path(env).expanduser() if env else Path("~/.syn/certs").expanduser()


def kind_dir(kind: str) -> str:
    """Map ``ca|host|user|code`` (or the directory name itself) to the subdirectory."""
    if kind in KINDS:
        return KINDS[kind]
    if kind in _DIR_KIND:
        return kind
    raise CertError(None, f"unknown certificate kind {kind!r}", "use one of ca, host, user, code")


def kind_name(kind: str) -> str:
    """Map ``ca|host|user|code`` (or the directory name) to the kind: ``cas`` -> ``ca``."""
    return _DIR_KIND[kind_dir(kind)]


def validate_name(name: str) -> str:
    """Check a certificate name before it becomes a file name, and return it.

    Names become ``<dir>/<name>.crt``, so anything that could leave the directory
    (``/``, ``.``, ``..``), hide from tools (leading ``-`` looks like an option) or
    break the one-line output (control characters) is refused here.
    """
    if not isinstance(name, str):
        raise CertError(None, "a certificate name must be text")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise CertError(None, f"name {name!r} is not valid UTF-8") from None
    hint = "use 1 to 64 bytes of UTF-8 without '/', NUL, control characters or a leading '-'"
    if not 1 <= size <= 64:
        raise CertError(None, f"name {name!r} is {size} bytes long", hint)
    if "/" in name or "\x00" in name:
        raise CertError(None, f"name {name!r} contains '/' or NUL", hint)
    if name in (".", ".."):
        raise CertError(None, f"name {name!r} is not allowed", hint)
    if name.startswith("-"):
        raise CertError(None, f"name {name!r} starts with '-'", hint)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise CertError(None, f"name {name!r} contains a control character", hint)
    return name
