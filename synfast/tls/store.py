"""The certdir on disk: paths, listing, loading, and writing files into it.

:class:`CertStore` knows where each file of a certdir is, loads certificates
and keys by kind and name (a CA only with the key that matches it), finds the CA
of the certdir that issued a certificate, finds the user certificate a client
URL presents (:meth:`CertStore.user_cert_for`), and writes files into the certdir:
new files all or none, never replacing a name (:meth:`CertStore.write_new`),
and a CRL atomically in place of the old one (:meth:`CertStore.write_replacing`).
Both go through :mod:`synfast.files.durable`; directories are created 0700.

What is made and checked with those files lives in :mod:`synfast.tls.issue`,
:mod:`synfast.tls.crl` and :mod:`synfast.tls.inspect`; :class:`synfast.tls.certdir.CertDir`
gathers them as methods.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
from synfast.tls.url import TlsUrl, client_cert_candidates
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

    # -- the certificates a URL asks for -----------------------------------
    def user_cert_for(self, url: TlsUrl) -> str | None:
        """The user certificate a client of ``url`` presents, or None if it asks for none.

        A URL asks for one with ``certname=NAME``, or with a user and no password
        (who has nothing else to authenticate with): then the first of
        ``USER@HOSTNAME`` and ``USER@`` each parent domain whose ``.crt`` and
        ``.key`` are both in ``users/`` is the one.  When the URL asks for a
        certificate that is not there, :class:`CertError` names what was looked
        for, where, and the ``synfast easycert`` command that makes it, before
        anything is sent on the network: Synapse's client refuses the same way
        (``NoSuchCert``), and connecting without it would only earn the server's
        refusal, or an anonymous session nobody asked for.

        It is the store's so that :mod:`synfast.tls.context`, which makes the
        context, and :mod:`synfast.tls.check`, which must not import ``ssl``,
        share one lookup and one wording.
        """
        names = client_cert_candidates(url)
        if not names:
            return None
        explicit = "certname" in url.query
        valid: list[str] = []
        keyless = None
        first_error = None
        for name in names:
            try:
                crt, key = self.cert_path("user", name), self.key_path("user", name)
            except CertError as err:  # a name too long (or else unfit) to be a file name
                if explicit:
                    raise
                first_error = first_error or err
                continue
            valid.append(name)
            if crt.is_file() and key.is_file():
                return name
            if crt.is_file() and keyless is None:
                keyless = name
        if keyless is not None:
            key = self.key_path("user", keyless)
            raise CertError(key, f"users/{keyless}.crt is here but not its private key",
                            "import the key with `synfast easycert --certdir "
                            f"{shlex.quote(str(self.path))} --importfile users "
                            f"{shlex.quote(key.name)}`")
        if not valid and first_error is not None:
            raise first_error  # no candidate can even be a file name: say why
        if explicit:
            self._missing("user", valid[0], f"certname={valid[0]}")
        self._missing("user", valid[0], f"no client certificate for user {url.user}: "
                      f"looked for {', '.join(valid)}", dir_only=True,
                      also="or name another one with ?certname=NAME")

    def host_cert_for(self, name: str) -> str:
        """``name`` if ``hosts/NAME.crt`` and its key are here, else a :class:`CertError`
        with the command that makes them: what a listener checks before it binds."""
        crt, key = self.cert_path("host", name), self.key_path("host", name)
        if not crt.is_file():
            self._missing("host", name, f"hostname={name}")
        if not key.is_file():
            raise CertError(key, f"hosts/{name}.crt is here but not its private key",
                            "import the key with `synfast easycert --certdir "
                            f"{shlex.quote(str(self.path))} --importfile hosts "
                            f"{shlex.quote(key.name)}`")
        return name

    def _missing(self, kind: str, name: str, what: str, *, dir_only: bool = False,
                 also: str = "") -> NoReturn:
        """Raise the error of a missing ``kind/NAME`` certificate, with how to make it."""
        crt = self.cert_path(kind, name)
        where = crt.parent if dir_only else crt
        message = what if dir_only else f"{what}: {crt.name} not found"
        hint = self.how_to_make(kind, name)
        raise CertError(where, message, f"{hint}; {also}" if also else hint)

    def how_to_make(self, kind: str, name: str) -> str:
        """The ``synfast easycert`` commands that put ``kind/NAME`` (host or user) here.

        Signed by the certdir's CA when exactly one CA has its key here; with
        several, the command says ``--signas CA`` and names them; with none, the
        certificate must come from elsewhere: a CSR to be signed by the CA that
        the peers trust, then imported.  A key already waiting for its
        certificate (from ``--csr``) is not made again: ``easycert`` would refuse
        to overwrite it.
        """
        kind = kind_name(kind)
        flag = {"host": "--server ", "user": ""}[kind]
        d = shlex.quote(str(self.path))
        q = shlex.quote(name)
        sub = kind_dir(kind)
        signers = [ca for ca in self.names("ca") if self.key_path("ca", ca).is_file()]
        importing = (f"`synfast easycert --certdir {d} --importfile {sub} "
                     f"{shlex.quote(name + '.crt')}`")
        if self.key_path(kind, name).is_file():
            csr = self.file(kind, name, "csr")
            if not csr.is_file():
                return f"{sub}/{name}.key waits for its certificate: import it with {importing}"
            if len(signers) == 1:
                return (f"its key waits for a certificate: sign {sub}/{name}.csr with "
                        f"`synfast easycert --certdir {d} --sign-csr {flag}--signas "
                        f"{signers[0]} {shlex.quote(str(csr))}`")
            return (f"its key waits for a certificate: have {sub}/{name}.csr signed by the "
                    f"CA, then import it with {importing}")
        if len(signers) == 1:
            return f"make it with `synfast easycert --certdir {d} {flag}{q} --signas {signers[0]}`"
        peer = "its clients trust" if kind == "host" else "the server trusts"
        if signers:
            return (f"make it with `synfast easycert --certdir {d} {flag}{q} --signas CA`, "
                    f"CA being whichever of {', '.join(signers)} {peer}")
        return (f"no CA key here to sign it: request it with `synfast easycert --certdir {d} "
                f"--csr {flag}{q}`, have {sub}/{name}.csr signed by the CA {peer}, "
                f"then import the certificate with {importing}")

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
