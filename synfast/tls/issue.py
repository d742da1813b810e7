"""Issuing: CA, host, user and code-signing certificates, CSRs, p12 bundles, imports.

Each function takes a :class:`~synfast.tls.store.CertStore` and places what it
makes with :meth:`~synfast.tls.store.CertStore.write_new`: key and certificate
together or nothing, never over an existing file (checked before a key is paid
for, and again when placing).  A certificate signed by a CA of the certdir
(``signas``) is signed only with a key that matches that CA's certificate.
Each maker returns the list of :class:`Saved` files, which the CLI prints as
``key saved: PATH`` lines.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from synfast.errors import convert_error
from synfast.tls.layout import (
    CERTDIR_HINTS,
    DEFAULT_DAYS,
    CertError,
    CertFileExists,
    kind_dir,
    kind_name,
    validate_name,
)
from synfast.tls.store import CertStore
from synfast.tls.x509 import (
    build_certificate,
    build_csr,
    common_name,
    extension,
    generate_key,
    key_matches,
    key_pem,
    load_cert_bytes,
    load_csr_bytes,
    load_key_bytes,
    parse_sans,
    utc_now,
)

__all__ = ["Saved", "csr", "import_file", "make", "p12", "sign_csr"]


@dataclass(frozen=True)
class Saved:
    """One file written: ``label`` is easycert's word for it (``key``, ``cert``...)."""

    label: str
    path: Path

    def line(self) -> str:
        return f"{self.label} saved: {self.path}"


def _refuse_existing(*paths: Path) -> None:
    for p in paths:
        if os.path.lexists(p):
            raise CertFileExists(p)


def _build(store: CertStore, kind: str, name: str, pub, *, signas: str | None, sans: Iterable,
           days: int, valid_from: _dt.datetime | None, self_key=None) -> x509.Certificate:
    if days < 1:
        raise CertError(None, f"--days must be at least 1, not {days}")
    start = valid_from or utc_now()
    if signas is not None:
        issuer, sign_key = store.load_ca(validate_name(signas))
    else:
        issuer, sign_key = None, self_key
    return build_certificate(kind, name, pub, sign_key, issuer=issuer, sans=sans, start=start,
                             days=days)


def make(store: CertStore, kind: str, name: str, *, signas: str | None = None, sans=None,
         days: int = DEFAULT_DAYS, key_type: str = "rsa4096",
         valid_from: _dt.datetime | None = None) -> list[Saved]:
    """Make a key and a certificate of ``kind`` (ca, host, user, code) for ``name``.

    Self-signed, or signed by the certdir CA ``signas``.  A host gets SAN
    ``DNS:name`` plus ``sans``; a user ``sans`` when given; a CA takes none.
    """
    validate_name(name)
    sans = parse_sans(sans)
    if kind == "ca" and sans:
        raise CertError(None, "a CA certificate takes no subject alternative names")
    keyp, crtp = store.key_path(kind, name), store.cert_path(kind, name)
    _refuse_existing(keyp, crtp)  # before paying for a key
    if signas is not None:
        store.load_ca(validate_name(signas))  # fail fast, before the key
    key = generate_key(key_type)
    cert = _build(store, kind, name, key.public_key(), signas=signas, sans=sans, days=days,
                  valid_from=valid_from, self_key=key)
    store.write_new([(keyp, key_pem(key), 0o600),
                     (crtp, cert.public_bytes(serialization.Encoding.PEM), 0o644)])
    return [Saved("key", keyp), Saved("cert", crtp)]


def csr(store: CertStore, kind: str, name: str, *, key_type: str = "rsa4096",
        sans=None) -> list[Saved]:
    """Make a key and a CSR for it (to be signed elsewhere), saved side by side."""
    kind = kind_name(kind)
    if kind == "ca":
        raise CertError(None, "a CSR for a CA certificate is not supported",
                        "make the CA here with --ca, optionally --signas another CA")
    validate_name(name)
    sans = parse_sans(sans)
    keyp, csrp = store.key_path(kind, name), store.file(kind, name, "csr")
    _refuse_existing(keyp, csrp)
    key = generate_key(key_type)
    req = build_csr(name, key, sans)
    store.write_new([(keyp, key_pem(key), 0o600),
                     (csrp, req.public_bytes(serialization.Encoding.PEM), 0o644)])
    return [Saved("key", keyp), Saved("csr", csrp)]


def sign_csr(store: CertStore, kind: str, csr_path: str | os.PathLike[str], signas: str, *,
             days: int = DEFAULT_DAYS, sans=None) -> list[Saved]:
    """Sign a CSR file as CA ``signas``; the certificate takes the CSR's CN as name.

    Only the subject and public key are taken from the request: the profile
    (usages, SANs) is the one of ``kind``, so a request cannot ask for more.
    SANs that the request carries are kept for host and user certificates.
    """
    kind = kind_name(kind)
    if kind == "ca":
        raise CertError(None, "signing a CSR as a CA certificate is not supported")
    path = Path(csr_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertError(path, "csr not found", "give the path of a .csr file") from None
    except OSError as err:
        raise convert_error(err, path, cls=CertError, hints=CERTDIR_HINTS) from None
    req = load_csr_bytes(data, path)
    if not req.is_signature_valid:
        raise CertError(path, "the CSR's signature does not verify", "the request is corrupt")
    name = common_name(req.subject)
    if name is None:
        raise CertError(path, "the CSR has no common name")
    validate_name(name)
    extra = parse_sans(sans)
    req_sans = extension(req, x509.SubjectAlternativeName)
    if req_sans is not None and kind in ("host", "user"):
        extra += [g for g in req_sans if isinstance(
            g, x509.DNSName | x509.RFC822Name | x509.UniformResourceIdentifier)]
    crtp = store.cert_path(kind, name)
    _refuse_existing(crtp)
    cert = _build(store, kind, name, req.public_key(), signas=signas, sans=extra,
                  days=days, valid_from=None)
    store.write_new([(crtp, cert.public_bytes(serialization.Encoding.PEM), 0o644)])
    return [Saved("cert", crtp)]


def p12(store: CertStore, name: str) -> list[Saved]:
    """Bundle a user's key, certificate and CA certificate as ``users/NAME.p12``.

    Unencrypted, like easycert's, so browsers and tools import it without a
    prompt; it is a private key, so it is written 0600.
    """
    cert = store.load_cert("user", name)
    key = store.load_key("user", name)
    if not key_matches(key, cert):
        raise CertError(store.key_path("user", name), "key does not match the certificate",
                        "make the user certificate again")
    cas = []
    ca_name = store.find_issuer(cert)
    if ca_name is not None:
        cas.append(store.load_cert("ca", ca_name))
    elif cert.issuer != cert.subject:
        raise CertError(store.cert_path("user", name),
                        f"the issuing CA {common_name(cert.issuer)!r} is not in the certdir",
                        "import the CA certificate with --importfile cas")
    p12p = store.file("user", name, "p12")
    _refuse_existing(p12p)
    data = pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"), key, cert, cas, serialization.NoEncryption())
    store.write_new([(p12p, data, 0o600)])
    return [Saved("client cert", p12p)]


def import_file(store: CertStore, kind: str, src: str | os.PathLike[str]) -> Path:
    """Copy a ``.crt``, ``.key`` or ``.p12`` file into ``cas/``, ``hosts/`` or ``users/``."""
    sub = kind_dir(kind)
    if sub not in ("cas", "hosts", "users"):
        raise CertError(None, f"cannot import into {sub}", "use cas, hosts or users")
    src = Path(src)
    if not src.is_file():
        raise CertError(src, "file does not exist", "check the path")
    stem, dot, ext = src.name.rpartition(".")
    if not dot or ext not in ("crt", "key", "p12"):
        raise CertError(src, "only .crt, .key and .p12 files can be imported")
    validate_name(stem)
    try:
        data = src.read_bytes()
    except OSError as err:
        raise convert_error(err, src, cls=CertError, hints=CERTDIR_HINTS) from None
    if ext == "crt":
        load_cert_bytes(data, src)
    elif ext == "key":
        load_key_bytes(data, src)
    dest = store.path / sub / src.name
    store.write_new([(dest, data, 0o644 if ext == "crt" else 0o600)])
    return dest
