"""The certdir on disk: paths, listing, loading, and writing files into it.

:class:`CertStore` knows where each file of a certdir is, loads certificates
and keys by kind and name (a CA only with the key that matches it), finds the CA
of the certdir that issued a certificate, and writes files into the certdir:
new files all or none, never replacing a name (:meth:`CertStore.write_new`),
and a CRL atomically in place of the old one (:meth:`CertStore.write_replacing`).
Both go through :mod:`synfast.files.durable`; directories are created 0700.

What is made and checked with those files lives in :mod:`synfast.tls.issue`,
:mod:`synfast.tls.crl` and :mod:`synfast.tls.inspect`; :class:`synfast.tls.certdir.CertDir`
gathers them as methods.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from synfast.errors import convert_error
from synfast.files.durable import write_all_or_none, write_atomic
from synfast.tls.layout import (
    CERTDIR_HINTS,
    CertError,
    CertFileExists,
    default_certdir,
    kind_dir,
    kind_name,
    validate_name,
)
from synfast.tls.x509 import (
    common_name,
    is_ca,
    key_matches,
    load_cert_file,
    load_key_file,
    signed_by,
)

__all__ = ["CertDirLike", "CertStore", "as_store"]


class CertStore:
    """A certdir on disk.  Nothing is created until something is written."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_certdir()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # -- paths -------------------------------------------------------------
    def file(self, kind: str, name: str, ext: str) -> Path:
        """``<certdir>/<kind dir>/<name>.<ext>`` after validating the name."""
        return self.path / kind_dir(kind) / f"{validate_name(name)}.{ext}"

    def cert_path(self, kind: str, name: str) -> Path:
        return self.file(kind, name, "crt")

    def key_path(self, kind: str, name: str) -> Path:
        return self.file(kind, name, "key")

    def crl_paths(self, ca: str) -> list[Path]:
        """Where a CA's CRL may be: ``crls/CA.crl`` (written here) or ``cas/CA.crl``."""
        validate_name(ca)
        return [self.path / "crls" / f"{ca}.crl", self.path / "cas" / f"{ca}.crl"]

    def crl_path(self, ca: str) -> Path | None:
        """The CRL of ``ca`` that exists, or None."""
        for p in self.crl_paths(ca):
            if p.is_file():
                return p
        return None

    def names(self, kind: str) -> list[str]:
        d = self.path / kind_dir(kind)
        try:
            return sorted(p.name[:-4] for p in d.iterdir()
                          if p.name.endswith(".crt") and p.is_file())
        except FileNotFoundError:
            return []
        except OSError as err:
            raise convert_error(err, d, cls=CertError, hints=CERTDIR_HINTS) from None

    # -- loading -----------------------------------------------------------
    def load_cert(self, kind: str, name: str) -> x509.Certificate:
        return load_cert_file(self.cert_path(kind, name), kind=kind_name(kind), name=name)

    def load_key(self, kind: str, name: str):
        return load_key_file(self.key_path(kind, name), kind=kind_name(kind), name=name)

    def load_ca(self, name: str) -> tuple[x509.Certificate, object]:
        """A CA's certificate and key, refusing a key that is not the certificate's."""
        cert = self.load_cert("ca", name)
        key = self.load_key("ca", name)
        if not key_matches(key, cert):
            raise CertError(self.key_path("ca", name),
                            f"key does not match the certificate of CA {name}",
                            "restore the CA's own key; a CA can only sign with its key")
        if not is_ca(cert):
            raise CertError(self.cert_path("ca", name), f"{name} is not a CA certificate",
                            "its BasicConstraints does not say ca=True")
        return cert, key

    def find_issuer(self, cert: x509.Certificate) -> str | None:
        """The name of the certdir CA that signed ``cert``, or None."""
        issuer = common_name(cert.issuer)
        candidates = []
        if issuer:
            try:
                validate_name(issuer)
                candidates.append(issuer)
            except CertError:
                pass
        candidates += [n for n in self.names("ca") if n not in candidates]
        for name in candidates:
            path = self.path / "cas" / f"{name}.crt"
            if not path.is_file():
                continue
            try:
                ca = load_cert_file(path)
            except CertError:
                continue
            if ca.subject == cert.issuer and signed_by(cert, ca):
                return name
        return None

    # -- writing -----------------------------------------------------------
    def _ensure_dir(self, kind: str) -> Path:
        sub = self.path / kind
        try:
            if not self.path.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.mkdir(mode=0o700, exist_ok=True)
            sub.mkdir(mode=0o700, exist_ok=True)
        except FileExistsError:
            raise CertError(sub, "exists and is not a directory",
                            "choose another --certdir") from None
        except OSError as err:
            raise convert_error(err, err.filename or sub, cls=CertError,
                                hints=CERTDIR_HINTS) from None
        return sub

    def write_new(self, files: Sequence[tuple[Path, bytes, int]]) -> None:
        """Write every ``(path, data, mode)`` under its final name, or none of them.

        :func:`~synfast.files.durable.write_all_or_none` writes each under a
        temporary name with its mode from the start, fsyncs it and places it
        without replacing anything, so a file that appeared meanwhile is never
        replaced: :class:`CertFileExists` names it.
        """
        for path, _, _ in files:
            self._ensure_dir(path.parent.name)
        try:
            write_all_or_none(files, replace=False)
        except OSError as err:
            raise _write_error(err, [path for path, _, _ in files]) from None

    def write_replacing(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace ``path`` (only for CRLs, which exist to be updated)."""
        self._ensure_dir(path.parent.name)
        try:
            write_atomic(path, data, mode=mode, replace=True)
        except OSError as err:
            raise _write_error(err, [path]) from None


#: What the API takes for a certdir: a path, a store, or None for the default.
CertDirLike = str | os.PathLike[str] | CertStore | None


def as_store(certdir: CertDirLike) -> CertStore:
    """``certdir`` itself when it is a store already, else the store at that path."""
    return certdir if isinstance(certdir, CertStore) else CertStore(certdir)


def _write_error(err: OSError, paths: list[Path]) -> CertError:
    """Word a failed write naming what the user knows: the file being written, or
    its directory when no temporary name could be made there."""
    if isinstance(err, FileExistsError) and err.filename is not None \
            and Path(os.fsdecode(err.filename)) in paths:
        return CertFileExists(err.filename)
    if err.filename2 is not None:       # a rename: the final name is the second
        where = Path(os.fsdecode(err.filename2))
    elif err.filename is not None:      # a temporary name stands for its directory
        where = Path(os.fsdecode(err.filename))
        if where not in paths and where.parent in {p.parent for p in paths}:
            where = where.parent
    else:                               # a write or fsync of the data
        where = paths[0]
    return convert_error(err, where, cls=CertError, hints=CERTDIR_HINTS)
