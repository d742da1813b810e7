"""The certdir API in one class: :class:`CertDir`, a store with every operation as a method.

A certdir is what Synapse services and their clients read their TLS material
from (``cas/``, ``hosts/``, ``users/``, ``code/``, ``crls/``; a file is named after
the certificate's common name).  Everything made here must load where a cert made
by Synapse's ``easycert`` would, so the certificate profiles follow
docs/reference/synapse-compat.md.  Where easycert was careless, this package is
not: names are validated so that none can escape the certdir, every file is
written under a temporary name and placed without replacing anything (except a
CRL, whose whole point is to be updated), private keys are created with mode
0600 in 0700 directories, and a CA signs only with a key that matches its
certificate.

The API is small on purpose::

    cd = CertDir("/tmp/certs")
    cd.ca("vertex")                                  # cas/vertex.crt|key
    cd.host("cortex.vertex.link", signas="vertex")   # hosts/...
    cd.user("visi@vertex.link", signas="vertex")     # users/...
    cd.p12("visi@vertex.link")                       # users/...p12
    cd.revoke("vertex", "user", "visi@vertex.link")  # crls/vertex.crl

Each maker returns the list of :class:`~synfast.tls.issue.Saved` files, which the
CLI prints as ``key saved: PATH`` lines.  Only RSA and P-256 keys are made; RSA
4096 stays the default because Synapse peers verify chains of RSA CAs only.

The methods are thin: the work is done by :mod:`synfast.tls.issue`,
:mod:`synfast.tls.crl` and :mod:`synfast.tls.inspect` on the
:class:`~synfast.tls.store.CertStore` this class extends.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from cryptography import x509

from synfast.tls import crl, inspect, issue
from synfast.tls.inspect import CertInfo, VerifyReport
from synfast.tls.issue import Saved
from synfast.tls.layout import DEFAULT_DAYS
from synfast.tls.store import CertStore

__all__ = ["CertDir"]


class CertDir(CertStore):
    """A certdir on disk.  Nothing is created until something is written."""

    # -- making certificates (synfast.tls.issue) ----------------------------
    def ca(self, name: str, *, signas: str | None = None, days: int = DEFAULT_DAYS,
           key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a CA: self-signed, or signed by the certdir CA ``signas``."""
        return issue.make(self, "ca", name, signas=signas, sans=None, days=days,
                          key_type=key_type, valid_from=valid_from)

    def host(self, name: str, *, signas: str | None = None, sans=None, days: int = DEFAULT_DAYS,
             key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a server certificate with SAN ``DNS:name`` plus ``sans``."""
        return issue.make(self, "host", name, signas=signas, sans=sans, days=days,
                          key_type=key_type, valid_from=valid_from)

    def user(self, name: str, *, signas: str | None = None, sans=None, days: int = DEFAULT_DAYS,
             key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a client certificate (``clientAuth``), the user's TLS identity."""
        return issue.make(self, "user", name, signas=signas, sans=sans, days=days,
                          key_type=key_type, valid_from=valid_from)

    def code(self, name: str, *, signas: str | None = None, days: int = DEFAULT_DAYS,
             key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a code-signing certificate."""
        return issue.make(self, "code", name, signas=signas, sans=None, days=days,
                          key_type=key_type, valid_from=valid_from)

    def csr(self, kind: str, name: str, *, key_type: str = "rsa4096", sans=None) -> list[Saved]:
        """Make a key and a CSR for it (to be signed elsewhere): :func:`issue.csr`."""
        return issue.csr(self, kind, name, key_type=key_type, sans=sans)

    def sign_csr(self, kind: str, csr_path: str | os.PathLike[str], signas: str, *,
                 days: int = DEFAULT_DAYS, sans=None) -> list[Saved]:
        """Sign a CSR file as CA ``signas``: :func:`issue.sign_csr`."""
        return issue.sign_csr(self, kind, csr_path, signas, days=days, sans=sans)

    def p12(self, name: str) -> list[Saved]:
        """Bundle a user's key, certificate and CA certificate: :func:`issue.p12`."""
        return issue.p12(self, name)

    def import_file(self, kind: str, src: str | os.PathLike[str]) -> Path:
        """Copy a ``.crt``, ``.key`` or ``.p12`` file in: :func:`issue.import_file`."""
        return issue.import_file(self, kind, src)

    # -- revocation (synfast.tls.crl) ---------------------------------------
    def gen_crl(self, ca: str, *, days: int = DEFAULT_DAYS) -> Path:
        """(Re)issue the CRL of ``ca`` as ``crls/CA.crl``, keeping its revoked entries."""
        return crl.gen_crl(self, ca, days=days)

    def revoke(self, ca: str, kind: str, name: str, *, days: int = DEFAULT_DAYS) -> Path:
        """Revoke certificate ``kind/name`` in the CRL of ``ca`` (which must have issued it)."""
        return crl.revoke(self, ca, kind, name, days=days)

    def is_revoked(self, cert: x509.Certificate, ca: str) -> bool | None:
        """True/False by the CRL of ``ca``; None when that CA has no CRL."""
        return crl.is_revoked(self, cert, ca)

    # -- inspection (synfast.tls.inspect) ------------------------------------
    def inventory(self, *, now: _dt.datetime | None = None) -> list[CertInfo]:
        """Every certificate of the certdir with its state, CAs first."""
        return inspect.inventory(self, now=now)

    def locate(self, name: str, kind: str | None = None) -> str:
        """The kind of certificate ``name``, searching all kinds when ``kind`` is None."""
        return inspect.locate(self, name, kind)

    def verify(self, name: str, kind: str | None = None, *,
               now: _dt.datetime | None = None, need_key: bool | None = None) -> VerifyReport:
        """Check a certificate as a peer would, plus what only the certdir knows:
        :func:`synfast.tls.inspect.verify`."""
        return inspect.verify(self, name, kind, now=now, need_key=need_key)
